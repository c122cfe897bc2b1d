# coding=utf-8
"""`QGFDTrainingArguments`: every hyperparameter of `QGFDTrainer`, validated in one place.

No torch at import: `qgfd-hf --help` reads these defaults (tests/cli/test_cli_startup.py checks
that the CLI shows the dataclass's own).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Optional


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


LR_SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


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
