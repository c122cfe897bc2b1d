# coding=utf-8
"""The run folder of `QGFDTrainer`: checkpoints written atomically, the newest complete one,
`run.json` (what a resume must share), the loss curve and the model card. The trainer claims the
folder for a new run (`claim_output_dir`); a resumed run is checked against it (`check_same_run`)
and continues from the newest checkpoint that loads (`load_newest_intact_checkpoint`).

Layout of `output_dir`::

    output_dir/
      checkpoints/checkpoint-00000200/   accelerate state (written to `.tmp-...`, then renamed)
      model/                             save_pretrained of the EMA weights, with README.md
      run.json                           the run's settings and the model's config
      loss.png                           loss curve (and learning rate)
      metrics.json                       summary and the loss history
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from typing import TYPE_CHECKING, List, Optional

import torch.nn as nn
from transformers.utils import logging

if TYPE_CHECKING:
    from .arguments import QGFDTrainingArguments

logger = logging.get_logger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint or the final model could not be written (a full disk, a lost mount); the
    earlier checkpoints are intact, and the message says which one `--resume` continues from."""


CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"


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


def checkpoint_step(path: str) -> int:
    """The optimizer step of a `list_checkpoints` path."""
    return int(os.path.basename(path)[len(CHECKPOINT_PREFIX):])


def last_checkpoint(checkpoint_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(checkpoint_dir)
    return ckpts[-1] if ckpts else None


def replace_dir(tmp: str, final: str) -> None:
    """Move the finished folder `tmp` to `final`. A rename is atomic; an existing `final` is
    moved aside first and removed only after the new one is in place."""
    old = None
    if os.path.exists(final):
        old = os.path.join(os.path.dirname(final), TMP_PREFIX + "old-" + os.path.basename(final))
        if os.path.exists(old):
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_replace(parent: str) -> None:
    """Finish what a kill inside `replace_dir` left behind in `parent`: a folder moved aside
    (`.tmp-old-X`) whose replacement never arrived is moved back to `X`; one whose replacement
    is in place is removed."""
    if not os.path.isdir(parent):
        return
    prefix = TMP_PREFIX + "old-"
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


def claim_output_dir(args: "QGFDTrainingArguments", record: dict, metadata: dict, new_run: bool) -> None:
    """A new run: remove an earlier run's outputs when `overwrite_output_dir` is set (the
    checks refused otherwise), then write `run.json`; a resumed one records its `max_steps`."""
    path = os.path.join(args.output_dir, RUN_FILE)
    if not new_run:
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("max_steps") != args.max_steps or "stopped" in saved:
                saved["max_steps"] = args.max_steps
                saved.pop("stopped", None)  # an earlier stop (`divergence.stop_diverged`) no longer describes the run
                with open(path + ".tmp", "w") as f:
                    json.dump(saved, f, indent=2)
                os.replace(path + ".tmp", path)
        return
    if args.overwrite_output_dir:
        for name in RUN_OUTPUTS:
            path = os.path.join(args.output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({**record, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metadata": metadata}, f, indent=2)
    os.replace(path + ".tmp", path)


def check_same_run(output_dir: str, record: dict) -> None:
    """Resuming: the settings that change the model or the optimisation must be the run's own."""
    path = os.path.join(output_dir, RUN_FILE)
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
            f"--resume with settings that differ from the run in {output_dir}: " + "; ".join(diffs)
            + ". Resume with the run's own settings, or start a new run (another --output-dir, or --overwrite-output-dir)."
        )


def load_newest_intact_checkpoint(accelerator, args: "QGFDTrainingArguments", state) -> str:
    """Load `resume_from_checkpoint`, or the newest checkpoint that loads; a broken newer one
    (a truncated file, a full disk) is reported and skipped for the one before it. `state` is the
    trainer's `TrainerState`, loaded with the checkpoint (registered for checkpointing)."""
    candidates = [args.resume_from_checkpoint] if args.resume_from_checkpoint else list(reversed(list_checkpoints(args.checkpoint_dir)))
    failures = []
    for path in candidates:
        try:
            accelerator.load_state(path)
        except Exception as e:  # safetensors, torch.load and shape errors: each names only its own file
            failures.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            if args.resume_from_checkpoint is None:
                logger.warning(f"Checkpoint {path} cannot be loaded ({type(e).__name__}: {e}); trying the one before it.")
            continue
        if failures:
            logger.warning(f"Resumed from {path}, the newest intact checkpoint; skipped: {'; '.join(failures)}.")
        logger.info(f"Resumed from {path} at step {state.global_step}.")
        return path
    raise ValueError(f"No checkpoint could be loaded to resume: {'; '.join(failures)}. Start a new run (--overwrite-output-dir).")


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
    from ..modelcard_qgfd import save_model_card

    if getattr(getattr(model, "config", None), "modality", None) is None:
        return None
    try:
        return str(save_model_card(model, folder, training_info=training_info))
    except ValueError as e:  # e.g. a modality the card template does not know: the weights still count
        logger.warning(f"No model card written: {e}")
        return None
