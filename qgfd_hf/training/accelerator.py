# coding=utf-8
"""The `Accelerator` that `QGFDTrainer` trains on: `make_accelerator(args)`.

accelerate sets up DDP, FSDP or DeepSpeed from `accelerate launch`, and in a few cases sets up
something else than what was asked, or trains otherwise than asked, without a word; the checks
here turn those into a `ValueError` (docs/distributed.md). Importing this module also quiets
accelerate's per-checkpoint note about tied weights (`_TiedWeightsNote`).
"""

from __future__ import annotations

import logging as py_logging
import os
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
)

if TYPE_CHECKING:
    from .arguments import QGFDTrainingArguments


class _TiedWeightsNote(py_logging.Filter):
    """Drops accelerate's per-checkpoint "Removed shared tensor ..." warning: tied weights (T5's
    shared embedding) are written once and tied again on load; resuming a text model gives the
    same weights (tests/cli/test_cli.py checks it)."""

    def filter(self, record):
        return "Removed shared tensor" not in str(record.getMessage())


py_logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def _has_accelerator_device() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6
        return torch.accelerator.current_accelerator() is not None
    return torch.cuda.is_available()


def make_accelerator(args: "QGFDTrainingArguments") -> Accelerator:
    """The `Accelerator` a run trains on, from the training arguments, after the checks that
    accelerate does not make (see the comments).

    - `split_batches=True`: `batch_size` is the global batch of one micro-step, and the
      learning-rate scheduler steps once per optimizer step on any number of processes;
    - `accelerate launch` with FSDP or DeepSpeed on a setup where accelerate would run DDP
      instead is refused; DeepSpeed's config gets the trainer's clipping and accumulation;
    - `mixed_precision="fp16"` on the CPU is refused (accelerate would train in float32).
    """
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    asked = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() == "true"]
    if "DEEPSPEED" in asked and not _has_accelerator_device():
        # DeepSpeed on CPUs: accelerate 1.15 finds no process-group backend without a GPU-type device,
        # and then gives every process num_processes=1 and rank 0 while DeepSpeed's own group
        # has them all; with the backend named, both agree (DeepSpeed's CPU accelerator uses gloo).
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False),
        # split_batches: `batch_size` is global, and the LR scheduler steps once per optimizer step.
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=handlers,
        log_with=None if args.report_to == "none" else args.report_to.split(","),
        project_dir=os.path.join(args.output_dir, "logs"),
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
            ("gradient_clipping", float(args.max_grad_norm), "--max-grad-norm"),
            ("gradient_accumulation_steps", args.gradient_accumulation_steps, "--gradient-accumulation-steps"),
        ):
            theirs = ds_config.get(key, "auto")
            if theirs == "auto":
                ds_config[key] = ours
            elif float(theirs) != ours:
                raise ValueError(
                    f"The DeepSpeed config has {key}={theirs} but the trainer's {flag} is {ours}; "
                    f"make them equal, or set {key} to 'auto' in the DeepSpeed config."
                )
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate would train in float32 without a word (fp16 autocast there needs a GPU).
        raise ValueError("mixed_precision='fp16' needs a GPU; on the CPU accelerate would silently train in float32. Use 'bf16' or 'no'.")
    return accelerator
