# coding=utf-8
"""The checks on what comes into a QGFD diffusion model: float tensors, timesteps, conditioning
tokens, class labels and guidance scales. Each raises a `ValueError` that names the bad value and
what is allowed; the checks that read values (and would sync a GPU) follow `value_checks`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .attention_qgfd import value_checks_enabled

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_finite(name: str, x: torch.Tensor) -> None:
    """ValueError if `x` holds NaN or inf (a host read: skipped outside `value_checks`)."""
    if value_checks_enabled() and not torch.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or inf values.")


def check_float_tensor(name: str, x, shape_hint: str, dims: int, last: Optional[int] = None) -> None:
    """ValueError unless `x` is a finite floating tensor with `dims` dims and last dim `last`."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor of shape {shape_hint}, got {_describe(x)}.")
    if x.dim() != dims or (last is not None and x.shape[-1] != last):
        raise ValueError(f"`{name}` must have shape {shape_hint}, got {list(x.shape)}.")
    check_finite(name, x)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return type(x).__name__


def check_timesteps(t, batch_size: int, num_timesteps: int, device) -> torch.Tensor:
    """t as a LongTensor [B] on `device`; an int or a 0-dim tensor is broadcast to the batch.

    Raises ValueError for non-integer t, a wrong length, or values outside [0, num_timesteps).
    """
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.full((batch_size,), t, dtype=torch.long)
    if not isinstance(t, torch.Tensor) or t.dtype not in _INT_DTYPES:
        raise ValueError(f"`t` must be an integer tensor of shape [B]=[{batch_size}], got {_describe(t)}.")
    if t.dim() == 0:
        t = t.expand(batch_size)
    if t.dim() != 1 or t.shape[0] != batch_size:
        raise ValueError(f"`t` must have shape [B]=[{batch_size}], got {list(t.shape)}.")
    if value_checks_enabled() and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(f"`t` must lie in [0, {num_timesteps}), got values in [{int(t.min())}, {int(t.max())}].")
    return t.to(device=device, dtype=torch.long)


def check_condition(cond_tokens, cond_mask, batch_size: int, d_model: int):
    """Check (cond_tokens [B, Lc, D], cond_mask [B, Lc] or None); returns the mask as bool (True = valid)."""
    if cond_tokens is None:
        if cond_mask is not None:
            raise ValueError("`cond_mask` was given without `cond_tokens`.")
        return None
    check_float_tensor("cond_tokens", cond_tokens, f"[B, Lc, d_model={d_model}]", 3, d_model)
    if cond_tokens.shape[0] != batch_size:
        raise ValueError(f"`cond_tokens` has batch size {cond_tokens.shape[0]}, the latents {batch_size}.")
    if cond_mask is None:
        return None
    if not isinstance(cond_mask, torch.Tensor) or tuple(cond_mask.shape) != tuple(cond_tokens.shape[:2]):
        raise ValueError(
            f"`cond_mask` must be a tensor of shape [B, Lc]={list(cond_tokens.shape[:2])} (1 = valid token), got {_describe(cond_mask)}."
        )
    if cond_mask.dtype != torch.bool:
        if cond_mask.is_floating_point() or (value_checks_enabled() and not bool(((cond_mask == 0) | (cond_mask == 1)).all())):
            raise ValueError("`cond_mask` must be bool or 0/1 integers (1 = valid token, as HF's attention_mask).")
        cond_mask = cond_mask.bool()
    return cond_mask


def check_class_labels(class_labels, num_classes: int, batch_size: Optional[int] = None, allow_null: bool = False) -> torch.Tensor:
    """Class labels as a LongTensor [B]: an int, a list of ints or an integer tensor, each in
    [0, num_classes) (`allow_null`: also num_classes, the null label). With `batch_size`, one label
    per sample (a single int is repeated)."""
    if isinstance(class_labels, torch.Tensor):
        if class_labels.dtype not in _INT_DTYPES or class_labels.dim() > 1:
            raise ValueError(f"`class_labels` must be integers (an int, a list of ints or a 1-D integer tensor), got {_describe(class_labels)}.")
        labels = class_labels.reshape(-1)
    else:
        single = isinstance(class_labels, int) and not isinstance(class_labels, bool)
        values = [class_labels] if single else class_labels
        if not isinstance(values, (list, tuple)) or not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValueError(f"`class_labels` must be an int or a non-empty list of ints (class indices), got {class_labels!r}.")
        if any(abs(v) >= 2**63 for v in values):  # torch.tensor would fail with a bare "Overflow"
            raise ValueError(f"`class_labels` must lie in [0, {num_classes}) (the model's {num_classes} classes), got {values[:5]}.")
        labels = torch.tensor(values, dtype=torch.long)
        if single and batch_size is not None:
            labels = labels.expand(batch_size)
    high = num_classes + 1 if allow_null else num_classes
    # The range check reads the values (a host sync for device tensors): skipped in the
    # trainer's steps after its first batch, as the other value checks (`value_checks`).
    if labels.numel() and value_checks_enabled() and (int(labels.min()) < 0 or int(labels.max()) >= high):
        bad = sorted({int(v) for v in labels.cpu() if not 0 <= int(v) < high})
        raise ValueError(f"`class_labels` must lie in [0, {num_classes}) (the model's {num_classes} classes), got {bad[:5]}.")
    if batch_size is not None and labels.numel() != batch_size:
        raise ValueError(
            f"`class_labels` has {labels.numel()} labels for {batch_size} samples: pass one label per sample, or a single int for all."
        )
    return labels.long()


def check_guidance_scale(guidance_scale) -> float:
    """The classifier-free guidance scale as a float >= 0 (1 = no guidance)."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"`guidance_scale` must be a finite number >= 0 (1 = no guidance), got {guidance_scale!r}.")
    return float(guidance_scale)


__all__ = ["check_class_labels", "check_condition", "check_finite", "check_float_tensor", "check_guidance_scale", "check_timesteps"]
