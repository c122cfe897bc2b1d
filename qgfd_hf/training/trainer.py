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

Batch sizes: `batch_size` is the *global* batch of one micro-step; with N processes each
process gets `batch_size / N` rows (accelerate's `split_batches=True`). So a run on 1 process and
on N processes with the same `batch_size` see the same examples per step, and the learning-rate
schedule advances once per optimizer step on any number of processes.
"""

from __future__ import annotations

import json
import logging as py_logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    set_seed,
)
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.utils import logging

from .attention_qgfd import set_qgfd_step, value_checks, value_checks_enabled

logger = logging.get_logger(__name__)


class _TiedWeightsNote(py_logging.Filter):
    """Drops accelerate's per-checkpoint "Removed shared tensor ..." warning: tied weights (T5's
    shared embedding) are written once and tied again on load; resuming a text model gives the
    same weights (tests/test_cli.py checks it)."""

    def filter(self, record):
        return "Removed shared tensor" not in str(record.getMessage())


py_logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())

def _check_report_to(report_to) -> str:
    """`"none"` or a comma-separated list of accelerate's trackers that are installed."""
    from accelerate.utils import LoggerType
    from accelerate.tracking import get_available_trackers

    if not isinstance(report_to, str) or not report_to.strip():
        raise ValueError(f"`report_to` must be 'none' or a comma-separated list of trackers, got {report_to!r}.")
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names == ["none"]:
        return "none"
    allowed = sorted(t.value for t in LoggerType)
    for n in names:
        if n not in allowed:
            raise ValueError(f"Unknown tracker {n!r} in `report_to`; allowed: none, {', '.join(allowed)}.")
    available = {str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()}
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        hint = {"tensorboard": "pip install tensorboard"}.get(missing[0], f"pip install {missing[0]}")
        raise ValueError(f"The tracker(s) {missing} in `report_to` are not installed ({hint}).")
    return ",".join(names)


class CheckpointWriteError(OSError):
    """A checkpoint or the final model could not be written (a full disk, a lost mount); the
    earlier checkpoints are intact, and the message says which one `--resume` continues from."""


class LossDivergedError(FloatingPointError):
    """The training loss became non-finite, or exploded to more than `DIVERGENCE_FACTOR` times
    its first step's (a learning rate far too high); the run stops without a final model, and
    the message names the step, the loss, the learning rate and the newest checkpoint."""


# A loss this many times the first step's (at least 1) is a diverged run, not a noisy one: a
# diffusion loss starts near the data's variance (about 1 for normalised latents) and a healthy
# run only goes down from there. The first step's loss is the one measure of the initial
# weights: with a learning rate far too high, the second step's loss may already be 1e20.
DIVERGENCE_FACTOR = 1e3

LR_SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
CHECKPOINT_PREFIX = "checkpoint-"
_TMP_PREFIX = ".tmp-"


# ----------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------


@dataclass
class QGFDTrainingArguments:
    """Every training hyperparameter, validated in one place.

    Args:
        output_dir (`str`): where checkpoints, the model, `loss.png` and `metrics.json` go.
        max_steps (`int`, defaults to 1000): optimizer steps to train for.
        batch_size (`int`, defaults to 64): the global batch of one micro-step (split across
            processes; must be divisible by the number of processes).
        gradient_accumulation_steps (`int`, defaults to 1): micro-steps per optimizer step.
        learning_rate (`float`, defaults to 1e-3): peak AdamW learning rate.
        weight_decay (`float`, defaults to 0.0): AdamW weight decay, on matrices only (not on
            biases, norms or 1-d parameters).
        adam_beta1, adam_beta2 (`float`, defaults to 0.9, 0.999): AdamW betas.
        lr_schedule (`str`, defaults to `"cosine"`): `"cosine"`, `"linear"` or `"constant"`, after
            a linear warm-up of `warmup_steps`.
        warmup_steps (`int`, defaults to 0): learning-rate warm-up, in optimizer steps.
        max_grad_norm (`float`, defaults to 1.0): gradient clipping; 0 turns it off.
        mixed_precision (`str`, defaults to `"no"`): `"no"`, `"fp16"` or `"bf16"` (accelerate's).
        ema_decay (`float`, defaults to 0.999): decay of the EMA of the trainable weights, in
            [0, 1); 0 turns EMA off (the saved model then has the raw weights). The decay used
            at step s is `min(ema_decay, (1 + s) / (10 + s))`, so early averages are not
            dominated by the random initialisation.
        checkpoint_every (`int`, defaults to 500): optimizer steps between checkpoints; 0 = none.
        keep_last (`int`, defaults to 2): how many checkpoints to keep (>= 1).
        log_every (`int`, defaults to 10): optimizer steps between loss records (the PNG's points).
        seed (`int`, defaults to 0): seeds Python, NumPy, torch, the data order and the noise.
        num_workers (`int`, defaults to 0): DataLoader workers.
        progress (`bool`, defaults to `True`): a tqdm progress bar on the main process.
        stop_after (`int`, *optional*): pause after this many optimizer steps: write a checkpoint
            and return, without the final model (`train(resume=True)` continues). The learning
            rate schedule still runs to `max_steps`, so a paused and resumed run equals an
            uninterrupted one.
        overwrite_output_dir (`bool`, defaults to `False`): a new run into a folder that holds an
            earlier run is refused unless this is set; then the earlier run's checkpoints,
            `model/`, `metrics.json`, `loss.png` and `run.json` are removed first (as Trainer's
            `overwrite_output_dir`).
        resume_from_checkpoint (`str`, *optional*): resume from this checkpoint folder instead of
            the newest one in `output_dir/checkpoints` (`train(resume=True)` is implied).
        report_to (`str`, defaults to `"none"`): experiment trackers, through accelerate's
            `log_with`: `"tensorboard"` (logs in `output_dir/logs`), `"wandb"`, ..., comma-separated,
            or `"none"`. The loss, its parts and the learning rate are logged every `log_every` steps.
        sample_every (`int`, defaults to 0): optimizer steps between validation samples (written by
            the trainer's `sample_fn` into `output_dir/samples/`, from the EMA weights); 0 = none.
        push_to_hub (`bool`, defaults to `False`): upload the final `model/` folder (weights, code,
            processor, model card) to the Hub repo `hub_model_id`; the repo is created before
            training starts, so a bad id or missing login fails before any step is spent.
        hub_model_id (`str`, *optional*): the repo (`user/name`); default: the name of `output_dir`.
        hub_private (`bool`, *optional*): create the repo private.
    """

    output_dir: str
    max_steps: int = 1000
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    stop_after: Optional[int] = None
    overwrite_output_dir: bool = False
    resume_from_checkpoint: Optional[str] = None
    report_to: str = "none"
    sample_every: int = 0
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    hub_private: Optional[bool] = None

    def __post_init__(self):
        if not isinstance(self.output_dir, (str, os.PathLike)) or not str(self.output_dir):
            raise ValueError(f"`output_dir` must be a path, got {self.output_dir!r}.")
        self.output_dir = str(self.output_dir)
        for name, low in (
            ("max_steps", 1),
            ("batch_size", 1),
            ("gradient_accumulation_steps", 1),
            ("warmup_steps", 0),
            ("checkpoint_every", 0),
            ("keep_last", 1),
            ("log_every", 1),
            ("seed", 0),
            ("num_workers", 0),
            ("sample_every", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
        if self.seed >= 2**32:
            raise ValueError(f"`seed` must be an int in [0, 2**32) (NumPy's range), got {self.seed!r}.")
        # `not (finite and in range)`: NaN fails every comparison, so it is refused, not let through.
        for name in ("learning_rate",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0 (0 = off), got {value!r}.")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"`{name}` must lie in [0, 1), got {value!r}.")
        self.report_to = _check_report_to(self.report_to)
        if self.hub_model_id is not None and (not isinstance(self.hub_model_id, str) or not self.hub_model_id.strip()):
            raise ValueError(f"`hub_model_id` must be a repo id such as 'user/name', got {self.hub_model_id!r}.")
        if self.hub_model_id is not None and not self.push_to_hub:
            raise ValueError("`hub_model_id` is given but `push_to_hub` is False; set push_to_hub=True (--push-to-hub) to upload.")
        for name in ("overwrite_output_dir", "progress", "push_to_hub"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.resume_from_checkpoint is not None:
            self.resume_from_checkpoint = str(self.resume_from_checkpoint)
        if self.stop_after is not None and (isinstance(self.stop_after, bool) or not isinstance(self.stop_after, int) or self.stop_after < 1):
            raise ValueError(f"`stop_after` must be None or an int >= 1, got {self.stop_after!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Unknown lr_schedule {self.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"Unknown mixed_precision {self.mixed_precision!r}; allowed: {', '.join(MIXED_PRECISIONS)}.")

    @property
    def repo_id(self) -> str:
        """The Hub repo `push_to_hub` uploads to."""
        return self.hub_model_id or os.path.basename(os.path.abspath(self.output_dir))

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.output_dir, "checkpoints")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.output_dir, "model")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# EMA of the trainable weights
# ----------------------------------------------------------------------------------------


class EMAModel:
    """Exponential moving average of a model's trainable parameters (float32 shadow copies).

    Frozen parameters (a pretrained encoder that produces x0) never change, so only the
    trainable ones, the denoiser and any decoder trained beside it, are averaged. The EMA
    weights are the ones used for sampling and saving.

    `state_dict` / `load_state_dict` make it checkpointable with
    `accelerator.register_for_checkpointing`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone().float() for n in self.names}
        self.num_updates = 0
        self._backup: Optional[Dict[str, torch.Tensor]] = None

    def current_decay(self) -> float:
        s = self.num_updates
        return min(self.decay, (1 + s) / (10 + s))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        for n in self.names:
            p = params[n].detach().float()
            self.shadow[n].mul_(d).add_(p, alpha=1 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into `model`, keeping the live weights to `restore` later."""
        params = dict(model.named_parameters())
        self._backup = {n: params[n].detach().clone() for n in self.names}
        for n in self.names:
            params[n].copy_(self.shadow[n].to(params[n].dtype))

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        if self._backup is None:
            raise RuntimeError("`restore` called without a preceding `copy_to`.")
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(self._backup[n])
        self._backup = None

    def to(self, device) -> "EMAModel":
        self.shadow = {n: v.to(device) for n, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": {n: v.cpu() for n, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise ValueError(f"The EMA state lacks parameters {sorted(missing)[:5]}...; was it saved from another model?")
        device = next(iter(self.shadow.values())).device if self.shadow else "cpu"
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {n: state["shadow"][n].to(device).float() for n in self.names}


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
# Checkpoints: atomic writes, newest complete one
# ----------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(checkpoint_dir: str) -> List[str]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are skipped)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for name in os.listdir(checkpoint_dir):
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", name)
        if m and os.path.isdir(os.path.join(checkpoint_dir, name)):
            found.append((int(m.group(1)), os.path.join(checkpoint_dir, name)))
    return [path for _, path in sorted(found)]


def _checkpoint_step(path: str) -> int:
    """The optimizer step of a `list_checkpoints` path."""
    return int(os.path.basename(path)[len(CHECKPOINT_PREFIX):])


def last_checkpoint(checkpoint_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(checkpoint_dir)
    return ckpts[-1] if ckpts else None


def _replace_dir(tmp: str, final: str) -> None:
    """Move the finished folder `tmp` to `final`. A rename is atomic; an existing `final` is
    moved aside first and removed only after the new one is in place."""
    old = None
    if os.path.exists(final):
        old = os.path.join(os.path.dirname(final), _TMP_PREFIX + "old-" + os.path.basename(final))
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_replace(parent: str) -> None:
    """Finish what a kill inside `_replace_dir` left behind in `parent`: a folder moved aside
    (`.tmp-old-X`) whose replacement never arrived is moved back to `X`; one whose replacement
    is in place is removed."""
    if not os.path.isdir(parent):
        return
    prefix = _TMP_PREFIX + "old-"
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        old, final = os.path.join(parent, name), os.path.join(parent, name[len(prefix):])
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
            logger.warning(f"Restored {final} (a save was interrupted between its two renames).")


# ----------------------------------------------------------------------------------------
# A run's folder belongs to one run
# ----------------------------------------------------------------------------------------

RUN_FILE = "run.json"
RUN_OUTPUTS = ("checkpoints", "model", "metrics.json", "loss.png", RUN_FILE)
# Training settings a resumed run must share with the run it continues: each one changes the
# optimisation (the learning-rate schedule, the batches, the noise streams, the averaged weights).
# (`max_steps` may change, to extend a run: the schedule then runs to the new end, with a warning.)
RESUME_LOCKED_ARGS = (
    "batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2",
    "lr_schedule", "warmup_steps", "max_grad_norm", "mixed_precision", "ema_decay", "seed",
)
# Config entries that say nothing about the model itself.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "architectures", "auto_map", "custom_pipelines", "dtype", "torch_dtype"}


def check_output_dir(output_dir: str, resume: bool = False, overwrite: bool = False, resume_from_checkpoint: Optional[str] = None) -> None:
    """Before any data is loaded or model built: `output_dir` can be written, and a new run does
    not land on an earlier one. Raises `ValueError` saying what to do."""
    if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
        raise ValueError(f"--output-dir must be a folder path, got {output_dir!r}.")
    path = os.path.abspath(str(output_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output-dir {str(output_dir)!r} is a file, not a folder; choose a folder.")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--output-dir {str(output_dir)!r} cannot be created: {probe!r} is a file.")
    try:  # a real write: os.access says yes to root on a read-only mount
        import tempfile

        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ValueError(f"--output-dir {str(output_dir)!r} cannot be written ({probe!r}: {e.strerror or e}); choose another folder.") from e
    if resume and overwrite:
        raise ValueError("--resume and --overwrite-output-dir contradict each other: choose one.")
    if resume_from_checkpoint is not None:
        if not os.path.isdir(resume_from_checkpoint):
            raise ValueError(f"--resume-from-checkpoint {resume_from_checkpoint!r} is not a checkpoint folder.")
        return
    if resume:
        if not list_checkpoints(os.path.join(path, "checkpoints")):
            raise ValueError(f"--resume: no complete checkpoint in {os.path.join(path, 'checkpoints')}; start without --resume.")
        return
    earlier = [n for n in RUN_OUTPUTS if os.path.exists(os.path.join(path, n))]
    if earlier and not overwrite:
        raise ValueError(
            f"--output-dir {str(output_dir)!r} holds an earlier run ({', '.join(earlier)}); pass --resume to continue it, "
            "--overwrite-output-dir to replace it, or choose another --output-dir."
        )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_signature(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {"parameters": {n: list(p.shape) for n, p in model.named_parameters()}}
    return {k: v for k, v in _flatten(config.to_dict()).items() if k.split(".")[-1] not in _VOLATILE_CONFIG_KEYS}


def run_record(args: "QGFDTrainingArguments", model: nn.Module) -> dict:
    """What `run.json` keeps of a run: the settings a resume must share, and the model's config."""
    return {"args": {k: getattr(args, k) for k in RESUME_LOCKED_ARGS}, "model": _model_signature(model), "max_steps": args.max_steps}


def compare_runs(saved: dict, current: dict) -> List[str]:
    """The settings that differ between a saved `run_record` and the current one, as 'name: old -> new'."""
    diffs = []
    for section in ("args", "model"):
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            old, new = a.get(key, "<absent>"), b.get(key, "<absent>")
            if json.loads(json.dumps(old)) != json.loads(json.dumps(new)):  # tuples vs lists, as JSON has them
                diffs.append(f"{'model ' if section == 'model' else ''}{key}: {old!r} -> {new!r}")
    return diffs


# ----------------------------------------------------------------------------------------
# Loss curve
# ----------------------------------------------------------------------------------------


def save_loss_plot(log_history: List[dict], path: str, title: str = "QGFD diffusion training") -> str:
    """Write the loss curve (log scale) and learning rate to a PNG with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log_history]
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(steps, [r["loss"] for r in log_history], "-", label="loss")
    if any(r.get("recon_loss") for r in log_history):  # a learned decoder: show the two parts too
        for key, style in (("diffusion_loss", "--"), ("recon_loss", ":")):
            ax.plot(steps, [r.get(key, math.nan) for r in log_history], style, label=key)
    ax.set_yscale("log")
    ax.set_ylabel("loss (mean over the logging window)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax_lr.plot(steps, [r.get("lr", math.nan) for r in log_history], color="gray")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------


def write_model_card(model: nn.Module, folder: str, training_info: dict) -> Optional[str]:
    """Write the library's README.md model card, with what training recorded, into `folder`.
    Models without a QGFD config (no `modality`) get none."""
    from .modelcard_qgfd import save_model_card

    if getattr(getattr(model, "config", None), "modality", None) is None:
        return None
    try:
        return str(save_model_card(model, folder, training_info=training_info))
    except ValueError as e:  # e.g. a modality the card template does not know: the weights still count
        logger.warning(f"No model card written: {e}")
        return None


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


def _has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.current_accelerator() is not None
    return torch.cuda.is_available()


def _to_float(v) -> Optional[float]:
    if v is None:
        return None
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


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

    def _make_accelerator(self) -> Accelerator:
        a = self.args
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
        asked = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"]
        if "DEEPSPEED" in asked and not _has_accelerator_device():
            # DeepSpeed on CPUs: accelerate 1.15 finds no process-group backend without a GPU-type device,
            # and then gives every process num_processes=1 and rank 0 while DeepSpeed's own group
            # has them all; with the backend named, both agree (DeepSpeed's CPU accelerator uses gloo).
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        accelerator = Accelerator(
            mixed_precision=a.mixed_precision,
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=a.gradient_accumulation_steps, sync_with_dataloader=False),
            # split_batches: `batch_size` is global, and the LR scheduler steps once per optimizer step.
            dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=a.seed),
            kwargs_handlers=handlers,
            log_with=None if a.report_to == "none" else a.report_to.split(","),
            project_dir=os.path.join(a.output_dir, "logs"),
        )
        if asked and str(accelerator.distributed_type).split(".")[-1] not in asked:
            # accelerate 1.15 builds FSDP only on GPU-type devices, and DeepSpeed not with ACCELERATE_USE_CPU=1;
            # it runs DDP instead, without a word.
            raise ValueError(
                f"`accelerate launch` asked for {asked[0]} but accelerate set up {accelerator.distributed_type} on {accelerator.device.type} "
                "(it builds FSDP only on GPUs, and DeepSpeed not with ACCELERATE_USE_CPU=1 / `--cpu`). Launch with a DDP config "
                "(`distributed_type: MULTI_GPU`, or `--multi_gpu` with ACCELERATE_USE_CPU=1 on CPUs); see docs/distributed.md."
            )
        if str(accelerator.distributed_type).endswith("DEEPSPEED"):
            # DeepSpeed clips inside its engine (accelerate's clip_grad_norm_ then does nothing) and
            # accelerate takes the config's accumulation over ours (with a warning): the config gets
            # the trainer's values where it says "auto", and a config that says otherwise is refused.
            ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
            for key, ours, flag in (
                ("gradient_clipping", float(a.max_grad_norm), "--max-grad-norm"),
                ("gradient_accumulation_steps", a.gradient_accumulation_steps, "--gradient-accumulation-steps"),
            ):
                theirs = ds_config.get(key, "auto")
                if theirs == "auto":
                    ds_config[key] = ours
                elif float(theirs) != ours:
                    raise ValueError(
                        f"The DeepSpeed config has {key}={theirs} but the trainer's {flag} is {ours}; "
                        f"make them equal, or set {key} to 'auto' in the DeepSpeed config."
                    )
        if a.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            # accelerate would train in float32 without a word (fp16 autocast there needs a GPU).
            raise ValueError("mixed_precision='fp16' needs a GPU; on the CPU accelerate would silently train in float32. Use 'bf16' or 'no'.")
        return accelerator

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
        accelerator = self.accelerator = self._make_accelerator()
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
            self._check_same_run(record)
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
            self._claim_output_dir(record, new_run=not resume)
            os.makedirs(a.checkpoint_dir, exist_ok=True)
            for name in os.listdir(a.checkpoint_dir):  # leftovers of a save that was killed
                if name.startswith(_TMP_PREFIX):
                    shutil.rmtree(os.path.join(a.checkpoint_dir, name), ignore_errors=True)
        accelerator.wait_for_everyone()
        if a.push_to_hub and accelerator.is_main_process:
            self._create_hub_repo()  # a bad id or a missing login fails now, not after training
        if resume:
            self._load_newest_intact_checkpoint()
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
                    record.update(self._read_window(window))
                    self.state.log_history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    if a.report_to != "none":
                        accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
                    window = {}
                if a.checkpoint_every and self.state.global_step % a.checkpoint_every == 0:
                    self._read_window(window)  # never checkpoint weights a non-finite or diverged loss has stepped
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

    def _read_window(self, window: Dict[str, List[torch.Tensor]]) -> Dict[str, float]:
        """The logging window's mean losses over its steps and over the processes, read on the host
        (one read per log or checkpoint, not per step); `LossDivergedError` on the first step whose
        loss is non-finite or above `DIVERGENCE_FACTOR` x the first step's (`_stop_diverged`)."""
        if not window:
            return {}
        keys = list(window)
        per_step = torch.stack([torch.stack(window[key]) for key in keys])  # (keys, steps)
        per_step = self.accelerator.reduce(per_step, reduction="mean")  # mean over processes
        values = per_step.double().cpu()
        loss = values[keys.index("loss")] if "loss" in keys else None  # (steps,)
        if loss is not None and self.state.initial_loss is None and math.isfinite(float(loss[0])):
            self.state.initial_loss = float(loss[0])  # the first step's: the loss of the initial weights
        bad = ~torch.isfinite(values).all(0)  # (steps,)
        limit = None
        if loss is not None and self.state.initial_loss is not None:
            limit = DIVERGENCE_FACTOR * max(abs(self.state.initial_loss), 1.0)
            bad |= loss > limit
        if bad.any():
            first = int(bad.nonzero()[0])
            step = self.state.global_step - values.shape[1] + 1 + first
            self._stop_diverged(step, {key: float(values[i, first]) for i, key in enumerate(keys)}, limit)
        return {key: float(values[i].mean()) for i, key in enumerate(keys)}

    def _stop_diverged(self, step: int, losses: Dict[str, float], limit: Optional[float]) -> None:
        """Stop a run whose loss at `step` is non-finite or above `limit`: record the event in
        `run.json` (and in `metrics.json` where an earlier part of the run wrote one), then raise
        `LossDivergedError` naming the step, the loss, the learning rate and the newest checkpoint.
        No final model is saved; every checkpoint was written after a check of the losses before it."""
        a = self.args
        finite = all(math.isfinite(v) for v in losses.values())
        if finite:
            what = (f"The training loss diverged: {losses['loss']:.4g} at step {step}, more than {DIVERGENCE_FACTOR:g} times "
                    f"the first step's ({self.state.initial_loss:.4g})")
        else:
            what = f"Non-finite loss {losses} at step {step}"
        # The loss at step s measures the weights after s - 1 updates: checkpoint s - 1 holds the
        # weights that gave the bad loss, and those before it weights whose loss was checked.
        checkpoints = list_checkpoints(a.checkpoint_dir)
        before = [p for p in checkpoints if _checkpoint_step(p) <= step - 2]
        last = before[-1] if before else None
        where = f"the newest checkpoint from before it is {last}" if last else "no checkpoint was written before it"
        after = [os.path.basename(p) for p in checkpoints if _checkpoint_step(p) > step - 2]
        if after:
            where += f" ({', '.join(after)} hold{'s' if len(after) == 1 else ''} the weights that gave this loss)"
        message = (f"{what}, with learning rate {a.learning_rate:g} ({a.lr_schedule}, {a.warmup_steps} warm-up steps). "
                   f"Training stopped and no final model was saved; {where}. Lower the learning rate (--learning-rate) "
                   "or check the data, and start a new run (another --output-dir, or --overwrite-output-dir).")
        event = {"step": step, "losses": losses, "reason": "non-finite loss" if not finite else "loss diverged",
                 "initial_loss": self.state.initial_loss, "limit": limit, "learning_rate": a.learning_rate,
                 "last_checkpoint": last, "message": message}
        if self.accelerator.is_main_process:
            for name in (RUN_FILE, "metrics.json"):
                path = os.path.join(a.output_dir, name)
                if not os.path.isfile(path):
                    continue
                try:
                    with open(path) as f:
                        record = json.load(f)
                    record["stopped"] = event
                    with open(path + ".tmp", "w") as f:
                        json.dump(record, f, indent=2, default=str)
                    os.replace(path + ".tmp", path)
                except (OSError, ValueError) as e:  # the error below matters more than the record
                    logger.warning(f"Could not record the stop in {path}: {e}")
        raise LossDivergedError(message)

    def _claim_output_dir(self, record: dict, new_run: bool) -> None:
        """A new run: remove an earlier run's outputs when `overwrite_output_dir` is set (the
        checks refused otherwise), then write `run.json`; a resumed one records its `max_steps`."""
        a = self.args
        path = os.path.join(a.output_dir, RUN_FILE)
        if not new_run:
            if os.path.isfile(path):
                with open(path) as f:
                    saved = json.load(f)
                if saved.get("max_steps") != a.max_steps or "stopped" in saved:
                    saved["max_steps"] = a.max_steps
                    saved.pop("stopped", None)  # an earlier stop (`_stop_diverged`) no longer describes the run
                    with open(path + ".tmp", "w") as f:
                        json.dump(saved, f, indent=2)
                    os.replace(path + ".tmp", path)
            return
        if a.overwrite_output_dir:
            for name in RUN_OUTPUTS:
                path = os.path.join(a.output_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        os.makedirs(a.output_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({**record, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metadata": self.metadata}, f, indent=2)
        os.replace(path + ".tmp", path)

    def _check_same_run(self, record: dict) -> None:
        """Resuming: the settings that change the model or the optimisation must be the run's own."""
        path = os.path.join(self.args.output_dir, RUN_FILE)
        if not os.path.isfile(path):
            logger.warning(f"{path} is missing (a run from qgfd_hf 0.1.0?): the resumed settings cannot be checked against the run's.")
            return
        with open(path) as f:
            saved = json.load(f)
        diffs = compare_runs(saved, record)
        if saved.get("max_steps") not in (None, record["max_steps"]):
            logger.warning(
                f"max_steps changed from {saved['max_steps']} to {record['max_steps']}: the learning-rate schedule now runs to "
                f"step {record['max_steps']}, so this run differs from one trained to {record['max_steps']} from the start."
            )
        if diffs:
            raise ValueError(
                f"--resume with settings that differ from the run in {self.args.output_dir}: " + "; ".join(diffs)
                + ". Resume with the run's own settings, or start a new run (another --output-dir, or --overwrite-output-dir)."
            )

    def _load_newest_intact_checkpoint(self) -> str:
        """Load `resume_from_checkpoint`, or the newest checkpoint that loads; a broken newer one
        (a truncated file, a full disk) is reported and skipped for the one before it."""
        a = self.args
        candidates = [a.resume_from_checkpoint] if a.resume_from_checkpoint else list(reversed(list_checkpoints(a.checkpoint_dir)))
        failures = []
        for path in candidates:
            try:
                self.accelerator.load_state(path)
            except Exception as e:  # safetensors, torch.load and shape errors: each names only its own file
                failures.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                if a.resume_from_checkpoint is None:
                    logger.warning(f"Checkpoint {path} cannot be loaded ({type(e).__name__}: {e}); trying the one before it.")
                continue
            if failures:
                logger.warning(f"Resumed from {path}, the newest intact checkpoint; skipped: {'; '.join(failures)}.")
            logger.info(f"Resumed from {path} at step {self.state.global_step}.")
            return path
        raise ValueError(f"No checkpoint could be loaded to resume: {'; '.join(failures)}. Start a new run (--overwrite-output-dir).")

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
        from .modelcard_qgfd import push_folder_to_hub

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
        tmp = os.path.join(a.checkpoint_dir, _TMP_PREFIX + name)
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
            _replace_dir(tmp, final)
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
        tmp = os.path.join(os.path.dirname(os.path.abspath(model_dir)), _TMP_PREFIX + os.path.basename(model_dir))
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
        _replace_dir(tmp, model_dir)
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
