# coding=utf-8
"""Trainer callbacks for QGFD models.

The alpha warm-up, `alpha * min(1, step / warmup_steps)`, reads a step that is set from
outside the forward pass (`set_qgfd_step`), so that a gradient-checkpointing recompute sees
the same alpha as the first forward. `QGFDWarmupCallback` sets it from `transformers.Trainer`.
"""

from transformers import TrainerCallback
from transformers.utils import logging

from ..modeling_qgfd_attention import set_qgfd_step

logger = logging.get_logger(__name__)


class QGFDWarmupCallback(TrainerCallback):
    """Drives the QGFD alpha warm-up from `transformers.Trainer`.

    At the beginning of every optimizer step it calls `set_qgfd_step(model, state.global_step)`,
    so the forward passes of optimizer step n (all its gradient-accumulation micro-batches) use
    step n: alpha is 0 during the first step and reaches full strength at step `warmup_steps`.
    Evaluation runs in eval mode, where QGFD always uses the full alpha.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from qgfd_hf import QGFDWarmupCallback
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[QGFDWarmupCallback()])  # doctest: +SKIP
    ```
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            n = set_qgfd_step(model, state.global_step)  # global_step > 0 when resuming
            if n == 0:
                logger.warning("QGFDWarmupCallback: the model has no QGFD attention module; nothing to warm up.")

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            set_qgfd_step(model, state.global_step)
