# coding=utf-8
"""`EMAModel`: the exponential moving average of a model's trainable weights, the ones
`QGFDTrainer` samples with and saves."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn


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
