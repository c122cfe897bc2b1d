# coding=utf-8
"""Training QGFD diffusion models on `accelerate`.

One trainer for every modality: it only needs a model with
`compute_loss(batch, generator=None) -> dict(loss=...)` and a dataset whose rows a collator
turns into that `batch`. What it does each optimizer step, in order:

1. `set_qgfd_step(model, global_step)`: the QGFD alpha warm-up is driven by optimizer steps.
2. For each of `gradient_accumulation_steps` micro-batches (inside `accelerator.accumulate`):
   draw the step's noise from a generator seeded by (seed, micro-step, process), compute the
   loss, backward.
3. Clip the gradient norm, step AdamW and the warmup + cosine learning rate, zero the grads.
4. Update the EMA of the trainable weights (the denoiser, and any decoder trained beside it).
5. Every `checkpoint_every` steps: `accelerator.save_state` into a temporary folder that is
   then renamed into place, so a kill never leaves a half-written checkpoint; keep the last N.

At every log and before every checkpoint the losses of the steps since are read on the host: a
non-finite loss, or one above `DIVERGENCE_FACTOR` times the first step's, stops the run with a
`LossDivergedError` (recorded in `run.json`), and no final model is saved.

At the end the EMA weights are copied into the model and saved with `save_pretrained`
(also written to a temporary folder, then renamed), beside `metrics.json` and `loss.png`.

Layout of `output_dir`::

    output_dir/
      checkpoints/checkpoint-00000200/   accelerate state: weights, optimizer, LR scheduler,
                                         RNG states, EMA, trainer state (step, loss history)
      model/                             save_pretrained of the EMA weights (Hub-ready)
      loss.png                           loss curve (and learning rate)
      metrics.json                       summary and the loss history

Resuming (`train(resume=True)`) loads the newest complete checkpoint and continues at the same
optimizer step, with the same data order (`skip_first_batches` into the same shuffled epoch) and
the same noise, so a killed and resumed run ends with the same weights as an uninterrupted one.

Beside this file: `QGFDTrainingArguments` (`arguments.py`), the `Accelerator` and its checks
(`accelerator.py`), the run folder's checkpoints, `run.json`, resume checks, loss curve and model
card (`checkpoints.py`), the divergence checks (`divergence.py`), and `EMAModel` (`ema.py`).

Batch sizes: `batch_size` is the *global* batch of one micro-step; with N processes each
process gets `batch_size / N` rows (accelerate's `split_batches=True`). So a run on 1 process and
on N processes with the same `batch_size` see the same examples per step, and the learning-rate
schedule advances once per optimizer step on any number of processes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.utils import logging

from ..attention_qgfd import value_checks, value_checks_enabled
from ..modeling_qgfd_attention import set_qgfd_step
from .accelerator import make_accelerator
from .arguments import QGFDTrainingArguments
from .checkpoints import (
    TMP_PREFIX,
    CheckpointWriteError,
    check_output_dir,
    check_same_run,
    checkpoint_name,
    claim_output_dir,
    last_checkpoint,
    list_checkpoints,
    load_newest_intact_checkpoint,
    recover_interrupted_replace,
    replace_dir,
    run_record,
    save_loss_plot,
    write_model_card,
)
from .divergence import DIVERGENCE_FACTOR, LossDivergedError, read_loss_window  # noqa: F401  (re-exported: qgfd_hf.training.trainer.LossDivergedError)
from .ema import EMAModel

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# Trainer state (checkpointed beside the weights)
# ----------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """The bookkeeping a resumed run needs: the optimizer step, the loss history, and the
    first step's loss (the scale `DIVERGENCE_FACTOR` is measured against)."""

    global_step: int = 0
    log_history: List[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    initial_loss: Optional[float] = None

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.log_history = list(state["log_history"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        initial = state.get("initial_loss")  # absent in earlier checkpoints: the next step's loss is taken
        self.initial_loss = None if initial is None else float(initial)


class _LossModule(nn.Module):
    """Routes `forward` to `model.compute_loss`, so that DistributedDataParallel sees the forward
    pass it needs (its gradient hooks are armed in `forward`, not in other methods)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None):
        return self.model.compute_loss(batch, generator=generator)


# ----------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------


def _stderr_is_a_terminal() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _noise_seed(seed: int, micro_step: int, process_index: int, num_processes: int) -> int:
    # A distinct, reproducible stream for every (micro-step, process): resuming needs no RNG
    # state for the diffusion noise and timesteps.
    return (seed * 1_000_003 + micro_step * num_processes + process_index) % (2**63 - 1)


class QGFDTrainer:
    """Train a QGFD diffusion model with `accelerate`.

    Args:
        model: a model with `compute_loss(batch, generator=None) -> dict(loss=...)` and
            `save_pretrained` (every QGFD diffusion model has both).
        args (`QGFDTrainingArguments`): the hyperparameters.
        train_dataset: a map-style dataset (e.g. a `datasets.Dataset`); `len` >= `batch_size`.
        data_collator: turns a list of rows into the `batch` dict `compute_loss` takes.
        processing_class: a tokenizer or processor saved beside the model (optional).
        metadata (`dict`, optional): anything to record in `metrics.json` (dataset name, ...).

    Example:
        >>> args = QGFDTrainingArguments("out", max_steps=200, batch_size=32)  # doctest: +SKIP
        >>> trainer = QGFDTrainer(model, args, train_dataset, data_collator=collate)  # doctest: +SKIP
        >>> metrics = trainer.train()        # or trainer.train(resume=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        args: QGFDTrainingArguments,
        train_dataset,
        data_collator: Optional[Callable[[list], dict]] = None,
        processing_class=None,
        metadata: Optional[dict] = None,
        sample_fn: Optional[Callable[[nn.Module, int, str], object]] = None,
    ):
        if not hasattr(model, "compute_loss"):
            raise ValueError(f"The model ({type(model).__name__}) has no `compute_loss(batch, generator=None)`; QGFDTrainer needs one.")
        if not isinstance(args, QGFDTrainingArguments):
            raise ValueError(f"`args` must be QGFDTrainingArguments, got {type(args).__name__}.")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("The model has no trainable parameters.")
        n = len(train_dataset)
        if n < args.batch_size:
            raise ValueError(
                f"The training set has {n} rows, fewer than one batch (batch_size={args.batch_size}); "
                "lower --batch-size or add data."
            )
        self.model = model
        self.args = args
        self.train_dataset = train_dataset
        self.data_collator = data_collator
        self.processing_class = processing_class
        self.metadata = dict(metadata or {})
        if args.sample_every and sample_fn is None:
            raise ValueError("`sample_every` is set but the trainer has no `sample_fn(model, step, folder)` to write samples with.")
        self.sample_fn = sample_fn
        self.state = TrainerState()
        self.accelerator: Optional[Accelerator] = None
        self.ema: Optional[EMAModel] = None

    # -- setup -----------------------------------------------------------------------------

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        a = self.args
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2))

    def _make_dataloader(self) -> torch.utils.data.DataLoader:
        a = self.args
        return torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=a.batch_size,
            shuffle=True,
            drop_last=True,  # equal batches: every step weighs the same, and splits evenly across processes
            collate_fn=self.data_collator,
            num_workers=a.num_workers,
            # Its own generator: starting an iterator (e.g. after `skip_first_batches` on resume)
            # then draws nothing from the global torch RNG, which dropout uses.
            generator=torch.Generator().manual_seed(a.seed),
        )

    # -- the loop --------------------------------------------------------------------------

    def train(self, resume: bool = False) -> dict:
        """Train to `args.max_steps` optimizer steps; with `resume=True`, continue from the newest
        complete checkpoint in `output_dir/checkpoints` (an error if there is none). Returns the
        metrics also written to `metrics.json`."""
        a = self.args
        accelerator = self.accelerator = make_accelerator(a)
        if a.batch_size % accelerator.num_processes:
            raise ValueError(
                f"batch_size={a.batch_size} is the global batch and must be divisible by the number of processes "
                f"({accelerator.num_processes})."
            )
        if not accelerator.is_main_process:
            # One voice: the other ranks would repeat every library warning once each.
            logging.set_verbosity_error()
        resume = resume or a.resume_from_checkpoint is not None
        recover_interrupted_replace(a.checkpoint_dir)  # before the checks: a kill may have moved one aside
        check_output_dir(a.output_dir, resume=resume, overwrite=a.overwrite_output_dir, resume_from_checkpoint=a.resume_from_checkpoint)
        record = run_record(a, self.model)
        if resume:
            check_same_run(a.output_dir, record)
        set_seed(a.seed)

        base = self.model
        base.train()
        loss_module = _LossModule(base)
        optimizer = self._make_optimizer(base)
        scheduler = get_scheduler(
            {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[a.lr_schedule],
            optimizer,
            num_warmup_steps=a.warmup_steps,
            num_training_steps=a.max_steps,
        )
        dataloader = self._make_dataloader()
        loss_module, optimizer, dataloader, scheduler = accelerator.prepare(loss_module, optimizer, dataloader, scheduler)
        model = accelerator.unwrap_model(loss_module).model
        self.ema = EMAModel(model, a.ema_decay).to(accelerator.device) if a.ema_decay > 0 else None
        self.state = TrainerState()
        accelerator.register_for_checkpointing(self.state)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)

        if accelerator.is_main_process:
            recover_interrupted_replace(a.output_dir)
            claim_output_dir(a, record, self.metadata, new_run=not resume)
            os.makedirs(a.checkpoint_dir, exist_ok=True)
            for name in os.listdir(a.checkpoint_dir):  # leftovers of a save that was killed
                if name.startswith(TMP_PREFIX):
                    shutil.rmtree(os.path.join(a.checkpoint_dir, name), ignore_errors=True)
        accelerator.wait_for_everyone()
        if a.push_to_hub and accelerator.is_main_process:
            self._create_hub_repo()  # a bad id or a missing login fails now, not after training
        if resume:
            load_newest_intact_checkpoint(accelerator, a, self.state)
        if a.report_to != "none":
            accelerator.init_trackers("qgfd", config={k: v for k, v in a.to_dict().items() if isinstance(v, (int, float, str, bool))})
        if self.state.global_step >= a.max_steps:
            logger.warning(f"Already at step {self.state.global_step} >= max_steps={a.max_steps}; nothing to train.")

        steps_per_epoch = len(dataloader)  # micro-batches per epoch (drop_last)
        k = a.gradient_accumulation_steps
        micro_step = self.state.global_step * k
        epoch, skip = divmod(micro_step, steps_per_epoch)
        generator = torch.Generator(device=accelerator.device)
        # The losses stay on the device until a log or a checkpoint reads them (a host read per
        # step would be a device sync per step): per optimizer step, the mean of its micro-steps.
        window: Dict[str, List[torch.Tensor]] = {}
        step_losses: Dict[str, List[torch.Tensor]] = {}
        # The first micro-batch is checked where it enters (NaN / inf, ids, masks, timesteps); the
        # steps after run without value checks, and a bad batch shows as a non-finite loss.
        checks, first_micro_step = value_checks_enabled(), micro_step
        bar = tqdm(
            total=a.max_steps,
            initial=self.state.global_step,
            desc="training",
            unit="step",
            disable=not (a.progress and accelerator.is_local_main_process),
            dynamic_ncols=True,
            # Written to a file (a log, CI), a bar redraws as a new line: a few lines a minute, not thousands.
            mininterval=0.1 if _stderr_is_a_terminal() else 30.0,
        )
        t_start = time.time() - self.state.train_seconds
        while self.state.global_step < a.max_steps:
            dataloader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            skip = 0
            for batch in batches:
                # 1. QGFD alpha warm-up follows the optimizer step.
                set_qgfd_step(model, self.state.global_step)
                with accelerator.accumulate(loss_module), value_checks(checks and micro_step == first_micro_step):
                    # 2. The loss with this micro-step's own noise stream; backward.
                    generator.manual_seed(_noise_seed(a.seed, micro_step, accelerator.process_index, accelerator.num_processes))
                    out = loss_module(batch, generator=generator)
                    loss = out["loss"]
                    accelerator.backward(loss)
                    # 3. Clip, step the optimizer and the learning rate.
                    if accelerator.sync_gradients and a.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(loss_module.parameters(), a.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_step += 1
                for key in ("loss", "diffusion_loss", "recon_loss"):
                    if out.get(key) is not None:
                        step_losses.setdefault(key, []).append(out[key].detach().float().reshape(()))
                if not accelerator.sync_gradients:
                    continue
                # 4. One optimizer step done: EMA, bookkeeping, logs, checkpoint.
                if self.ema is not None:
                    self.ema.update(model)
                self.state.global_step += 1
                for key, vals in step_losses.items():
                    window.setdefault(key, []).append(torch.stack(vals).mean())
                step_losses = {}
                bar.update(1)
                if self.state.global_step % a.log_every == 0 or self.state.global_step == a.max_steps:
                    record = {"step": self.state.global_step, "lr": scheduler.get_last_lr()[0]}
                    record.update(read_loss_window(window, self.state, a, accelerator))
                    self.state.log_history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    if a.report_to != "none":
                        accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
                    window = {}
                if a.checkpoint_every and self.state.global_step % a.checkpoint_every == 0:
                    read_loss_window(window, self.state, a, accelerator)  # never checkpoint weights a non-finite or diverged loss has stepped
                    self.state.train_seconds = time.time() - t_start
                    self.save_checkpoint()
                if a.sample_every and self.state.global_step % a.sample_every == 0:
                    self.write_validation_samples(model)
                if self.state.global_step >= a.max_steps or self.state.global_step == a.stop_after:
                    break
            if self.state.global_step == a.stop_after and a.stop_after < a.max_steps:
                break
            epoch += 1
        bar.close()
        if a.report_to != "none":
            accelerator.end_training()
        self.state.train_seconds = time.time() - t_start
        if self.state.global_step == a.stop_after and a.stop_after < a.max_steps:
            return self._pause()
        return self._finish()

    def write_validation_samples(self, model: nn.Module) -> None:
        """`sample_fn(model, step, folder)` with the EMA weights (the ones that get saved), in eval mode."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            folder = os.path.join(self.args.output_dir, "samples")
            os.makedirs(folder, exist_ok=True)
            if self.ema is not None:
                self.ema.copy_to(model)
            model.eval()
            try:
                self.sample_fn(model, self.state.global_step, folder)
            finally:
                model.train()
                if self.ema is not None:
                    self.ema.restore(model)
        accelerator.wait_for_everyone()

    def _create_hub_repo(self) -> str:
        from huggingface_hub import HfApi

        try:
            return HfApi(library_name="qgfd_hf").create_repo(self.args.repo_id, private=self.args.hub_private, exist_ok=True).repo_id
        except Exception as e:  # bad id, no login, no network
            raise ValueError(
                f"--push-to-hub: could not create the Hub repo {self.args.repo_id!r} ({type(e).__name__}: {e}). "
                "Log in with `hf auth login` (or set HF_TOKEN), or fix --hub-model-id."
            ) from e

    def _push_model(self) -> str:
        from ..modelcard_qgfd import push_folder_to_hub

        a = self.args
        model = self.accelerator.unwrap_model(self.accelerator._models[0]).model
        commit = push_folder_to_hub(model, a.model_dir, a.repo_id, training_info=self.training_info(),
                                    commit_message=f"Training step {self.state.global_step}")
        logger.info(f"Pushed {a.model_dir} to the Hub: {a.repo_id}")
        return getattr(commit, "commit_url", a.repo_id)

    def _pause(self) -> dict:
        """`stop_after` reached: make sure the newest checkpoint is this step's, and return."""
        a = self.args
        if last_checkpoint(a.checkpoint_dir) != os.path.join(a.checkpoint_dir, checkpoint_name(self.state.global_step)):
            self.save_checkpoint()
        logger.info(f"Paused at step {self.state.global_step} of {a.max_steps}; continue with resume=True.")
        return {"global_step": self.state.global_step, "paused": True, "checkpoint": last_checkpoint(a.checkpoint_dir), "log_history": self.state.log_history}

    # -- saving ----------------------------------------------------------------------------

    def save_checkpoint(self) -> str:
        """`accelerator.save_state` into `.tmp-checkpoint-N`, then rename to `checkpoint-N`; keep the last N."""
        accelerator, a = self.accelerator, self.args
        name = checkpoint_name(self.state.global_step)
        tmp = os.path.join(a.checkpoint_dir, TMP_PREFIX + name)
        final = os.path.join(a.checkpoint_dir, name)
        if accelerator.is_main_process and os.path.exists(tmp):
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(tmp)  # every process writes its RNG state; the main one the rest
        except (OSError, RuntimeError) as e:  # a full disk: OSError, or torch's "unexpected pos" RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._write_error(f"checkpoint {name}", a.checkpoint_dir, e) from e
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            replace_dir(tmp, final)
            for old in list_checkpoints(a.checkpoint_dir)[: -a.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
            if self.state.log_history:
                save_loss_plot(self.state.log_history, os.path.join(a.output_dir, "loss.png"))
        accelerator.wait_for_everyone()
        logger.info(f"Saved checkpoint {final}")
        return final

    def _finish(self) -> dict:
        accelerator, a = self.accelerator, self.args
        model = accelerator.unwrap_model(accelerator._models[0]).model
        metrics = {
            "global_step": self.state.global_step,
            "final_loss": self.state.log_history[-1]["loss"] if self.state.log_history else None,
            "train_runtime_s": round(self.state.train_seconds, 2),
            "num_processes": accelerator.num_processes,
            "examples_seen": self.state.global_step * a.batch_size * a.gradient_accumulation_steps,
            "ema": self.ema is not None,
            "args": a.to_dict(),
            **self.metadata,
            "log_history": self.state.log_history,
        }
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.save_model(model, a.model_dir)
            if self.state.log_history:
                metrics["loss_png"] = save_loss_plot(self.state.log_history, os.path.join(a.output_dir, "loss.png"))
            metrics["model_dir"] = a.model_dir
            if a.push_to_hub:
                metrics["hub_commit"] = self._push_model()
            path = os.path.join(a.output_dir, "metrics.json")
            with open(path + ".tmp", "w") as f:
                json.dump(metrics, f, indent=2)
            os.replace(path + ".tmp", path)
        accelerator.wait_for_everyone()
        return metrics

    def save_model(self, model: nn.Module, model_dir: str) -> str:
        """`save_pretrained` with the EMA weights (and the processor), atomically; the live weights
        are put back afterwards, so training state is untouched."""
        tmp = os.path.join(os.path.dirname(os.path.abspath(model_dir)), TMP_PREFIX + os.path.basename(model_dir))
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        if self.ema is not None:
            self.ema.copy_to(model)
        try:
            model.save_pretrained(tmp)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(tmp)
            write_model_card(model, tmp, self.training_info())
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._write_error("the final model", os.path.dirname(os.path.abspath(model_dir)), e) from e
        finally:
            if self.ema is not None:
                self.ema.restore(model)
        replace_dir(tmp, model_dir)
        return model_dir

    def _write_error(self, what: str, folder: str, err: Exception) -> CheckpointWriteError:
        last = last_checkpoint(self.args.checkpoint_dir)
        free = ""
        try:
            free = f" ({shutil.disk_usage(folder).free / 2**20:.0f} MiB free there)"
        except OSError:
            pass
        intact = f"the newest intact checkpoint is {last}: " if last else "no checkpoint was written yet: "
        return CheckpointWriteError(
            f"Could not write {what} into {folder}{free}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            f"Is the disk full? {intact}free some space and rerun with --resume" + ("" if last else " (or without it)") + "."
        )

    def training_info(self, metrics: Optional[dict] = None) -> dict:
        """What the model card records about this training run (`render_model_card`'s training_info)."""
        a = self.args
        info = {
            "steps": self.state.global_step,
            "batch size (global, per micro-step)": a.batch_size,
            "gradient accumulation steps": a.gradient_accumulation_steps,
            "learning rate": f"{a.learning_rate:g} ({a.lr_schedule}, {a.warmup_steps} warm-up steps)",
            "EMA decay": a.ema_decay if a.ema_decay > 0 else "off",
            "mixed precision": a.mixed_precision,
            "processes": self.accelerator.num_processes if self.accelerator is not None else 1,
            "seed": a.seed,
        }
        if self.metadata.get("dataset"):
            info["datasets"] = self.metadata["dataset"]
        recorded = {}
        if self.state.log_history:
            recorded["final training loss"] = round(self.state.log_history[-1]["loss"], 5)
        recorded.update(metrics or {})
        if recorded:
            info["metrics"] = recorded
        return info

    def ema_model_state(self) -> Dict[str, torch.Tensor]:
        """The weights the saved model has: the EMA of the trainable ones and the frozen rest."""
        model = self.accelerator.unwrap_model(self.accelerator._models[0]).model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.ema is not None:
            for n in self.ema.names:
                state[n] = self.ema.shadow[n].clone()
        return state
