# coding=utf-8
"""When a run has diverged: the checks `QGFDTrainer` makes on its losses at every log and before
every checkpoint.

The losses stay on the device between logs; `read_loss_window` reads a window of them on the host
(one read per log or checkpoint, not per step), averaged over the processes. A non-finite loss, or
one above `DIVERGENCE_FACTOR` times the first step's, stops the run (`stop_diverged`): the event is
recorded in `run.json` (and `metrics.json`), and `LossDivergedError` names the step, the loss, the
learning rate and the newest checkpoint from before it. No final model is saved.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Dict, List, Optional

import torch
from accelerate import Accelerator
from transformers.utils import logging

from .checkpoints import RUN_FILE, checkpoint_step, list_checkpoints

if TYPE_CHECKING:
    from .arguments import QGFDTrainingArguments

logger = logging.get_logger(__name__)


class LossDivergedError(FloatingPointError):
    """The training loss became non-finite, or exploded to more than `DIVERGENCE_FACTOR` times
    its first step's (a learning rate far too high); the run stops without a final model, and
    the message names the step, the loss, the learning rate and the newest checkpoint."""


# A loss this many times the first step's (at least 1) is a diverged run, not a noisy one: a
# diffusion loss starts near the data's variance (about 1 for normalised latents) and a healthy
# run only goes down from there. The first step's loss is the one measure of the initial
# weights: with a learning rate far too high, the second step's loss may already be 1e20.
DIVERGENCE_FACTOR = 1e3


def read_loss_window(window: Dict[str, List[torch.Tensor]], state, args: "QGFDTrainingArguments", accelerator: Accelerator) -> Dict[str, float]:
    """The logging window's mean losses over its steps and over the processes, read on the host
    (one read per log or checkpoint, not per step); `LossDivergedError` on the first step whose
    loss is non-finite or above `DIVERGENCE_FACTOR` x the first step's (`stop_diverged`). `state`
    is the trainer's `TrainerState`: its `initial_loss` is set from the first finite step."""
    if not window:
        return {}
    keys = list(window)
    per_step = torch.stack([torch.stack(window[key]) for key in keys])  # (keys, steps)
    per_step = accelerator.reduce(per_step, reduction="mean")  # mean over processes
    values = per_step.double().cpu()
    loss = values[keys.index("loss")] if "loss" in keys else None  # (steps,)
    if loss is not None and state.initial_loss is None and math.isfinite(float(loss[0])):
        state.initial_loss = float(loss[0])  # the first step's: the loss of the initial weights
    bad = ~torch.isfinite(values).all(0)  # (steps,)
    limit = None
    if loss is not None and state.initial_loss is not None:
        limit = DIVERGENCE_FACTOR * max(abs(state.initial_loss), 1.0)
        bad |= loss > limit
    if bad.any():
        first = int(bad.nonzero()[0])
        step = state.global_step - values.shape[1] + 1 + first
        stop_diverged(step, {key: float(values[i, first]) for i, key in enumerate(keys)}, limit, state, args, accelerator)
    return {key: float(values[i].mean()) for i, key in enumerate(keys)}


def stop_diverged(step: int, losses: Dict[str, float], limit: Optional[float], state, args: "QGFDTrainingArguments",
                  accelerator: Accelerator) -> None:
    """Stop a run whose loss at `step` is non-finite or above `limit`: record the event in
    `run.json` (and in `metrics.json` where an earlier part of the run wrote one), then raise
    `LossDivergedError` naming the step, the loss, the learning rate and the newest checkpoint.
    No final model is saved; every checkpoint was written after a check of the losses before it."""
    finite = all(math.isfinite(v) for v in losses.values())
    if finite:
        what = (f"The training loss diverged: {losses['loss']:.4g} at step {step}, more than {DIVERGENCE_FACTOR:g} times "
                f"the first step's ({state.initial_loss:.4g})")
    else:
        what = f"Non-finite loss {losses} at step {step}"
    # The loss at step s measures the weights after s - 1 updates: checkpoint s - 1 holds the
    # weights that gave the bad loss, and those before it weights whose loss was checked.
    checkpoints = list_checkpoints(args.checkpoint_dir)
    before = [p for p in checkpoints if checkpoint_step(p) <= step - 2]
    last = before[-1] if before else None
    where = f"the newest checkpoint from before it is {last}" if last else "no checkpoint was written before it"
    after = [os.path.basename(p) for p in checkpoints if checkpoint_step(p) > step - 2]
    if after:
        where += f" ({', '.join(after)} hold{'s' if len(after) == 1 else ''} the weights that gave this loss)"
    message = (f"{what}, with learning rate {args.learning_rate:g} ({args.lr_schedule}, {args.warmup_steps} warm-up steps). "
               f"Training stopped and no final model was saved; {where}. Lower the learning rate (--learning-rate) "
               "or check the data, and start a new run (another --output-dir, or --overwrite-output-dir).")
    event = {"step": step, "losses": losses, "reason": "non-finite loss" if not finite else "loss diverged",
             "initial_loss": state.initial_loss, "limit": limit, "learning_rate": args.learning_rate,
             "last_checkpoint": last, "message": message}
    if accelerator.is_main_process:
        for name in (RUN_FILE, "metrics.json"):
            path = os.path.join(args.output_dir, name)
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
