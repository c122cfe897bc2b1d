# coding=utf-8
"""Training QGFD diffusion models: the installed package's side, never imported by a saved model.

| module | holds |
|---|---|
| `arguments.py` | `QGFDTrainingArguments`, the trainer's one set of hyperparameters |
| `checkpoints.py` | the run folder: checkpoints written atomically, resume, `run.json`, `loss.png`, the model card |
| `ema.py` | `EMAModel`, the moving average of the trainable weights that is saved and sampled |
| `trainer.py` | `QGFDTrainer`: the optimizer-step loop on `accelerate` |
| `accelerator.py` | `make_accelerator`: the trainer's `Accelerator` (DDP, FSDP, DeepSpeed, mixed precision), with the checks accelerate does not make |
| `divergence.py` | `LossDivergedError`, `DIVERGENCE_FACTOR`: the loss checks at every log and checkpoint, and the stop of a diverged run |
| `callbacks.py` | `QGFDWarmupCallback`: the QGFD alpha warm-up under `transformers.Trainer` |
| `finetune.py` | fine-tuning a pretrained encoder + classification head, softmax against QGFD arms over seeds, with paired tests |

The names below come from their modules on first use, so `import qgfd_hf.training.callbacks`
does not import `accelerate`.
"""

import importlib

_EXPORTS = {
    "arguments": ["QGFDTrainingArguments"],
    "checkpoints": ["CheckpointWriteError", "check_output_dir", "last_checkpoint", "list_checkpoints"],
    "ema": ["EMAModel"],
    "trainer": ["QGFDTrainer"],
    "divergence": ["LossDivergedError"],
    "callbacks": ["QGFDWarmupCallback"],
    "finetune": ["FinetuneSettings", "compare_arms", "paired_test"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    """A public name, imported from its module on first use."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
