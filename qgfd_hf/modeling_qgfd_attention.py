# coding=utf-8
"""The modules around the QGFD kernel: `QGFDAlpha` (fixed, learnable per head, warm-up),
`set_qgfd_step`, and the seed's multi-head attention module `QGFDMultiheadAttention`.

The kernel itself, a pure function, is `attention_qgfd.qgfd_attention` (with its reference beside it).
Shapes: ``B`` batch, ``H`` heads, ``Lq`` query length, ``Lk`` key length, ``Dh`` head width.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .attention_qgfd import AlphaLike, QGFDSettings, qgfd_attention


# ----------------------------------------------------------------------------------------
# Alpha: fixed, learnable per head, warm-up driven from outside the forward pass
# ----------------------------------------------------------------------------------------


class QGFDAlpha(nn.Module):
    """The alpha a QGFD layer uses at this moment.

    - fixed: `settings.alpha` (no parameters, no buffers: a model's state_dict keys are unchanged);
    - learnable: one value per head, `alpha_max * sigmoid(logit)`, started at `settings.alpha`
      (clipped to [1e-3, 1 - 1e-3] * alpha_max, where the sigmoid can reach);
    - warm-up: in training, scaled by `min(1, step / warmup_steps)`; `step` is set from outside
      (`set_qgfd_step`), so a gradient-checkpointing recompute sees the same alpha. Eval uses full alpha.
    """

    def __init__(self, settings: QGFDSettings, num_heads: int):
        super().__init__()
        self.settings = settings
        self.num_heads = num_heads
        self.step = 0
        if settings.learnable_alpha:
            self.logit = nn.Parameter(torch.full((num_heads,), self._initial_logit()))
        else:
            self.register_parameter("logit", None)

    def _initial_logit(self) -> float:
        frac = min(max(self.settings.alpha / self.settings.alpha_max, 1e-3), 1 - 1e-3)
        return math.log(frac / (1 - frac))

    def reset_parameters(self) -> None:
        """A learnable alpha back at `settings.alpha` (transformers calls it for a logit a checkpoint lacks)."""
        if self.logit is not None:
            with torch.no_grad():
                self.logit.fill_(self._initial_logit())
            self.logit._is_hf_initialized = True

    def warmup_factor(self) -> float:
        w = self.settings.warmup_steps
        if not self.training or w == 0:
            return 1.0
        return min(1.0, self.step / w)

    def forward(self) -> AlphaLike:
        factor = self.warmup_factor()
        if self.logit is not None:
            alpha = self.settings.alpha_max * torch.sigmoid(self.logit) * factor
            if not torch.compiler.is_compiling():
                alpha._qgfd_in_range = True  # [0, alpha_max] by construction: the kernel need not read it
            return alpha
        return self.settings.alpha * factor

    def extra_repr(self) -> str:
        return f"alpha={self.settings.alpha}, learnable={self.settings.learnable_alpha}, warmup_steps={self.settings.warmup_steps}"


def set_qgfd_step(model: nn.Module, step: int) -> int:
    """Set the optimizer step on every QGFD alpha in `model` (drives the warm-up). Returns how many."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"`step` must be an int >= 0, got {step!r}.")
    n = 0
    for m in model.modules():
        if isinstance(m, QGFDAlpha):
            m.step = step
            n += 1
    return n


# ----------------------------------------------------------------------------------------
# The seed's module
# ----------------------------------------------------------------------------------------


class QGFDMultiheadAttention(nn.Module):
    """Multi-head attention with QGFD diffusion on self-attention (the seed's module).

    Args:
        embed_dim (`int`), num_heads (`int`): width and heads; `embed_dim % num_heads == 0`.
        dropout (`float`): attention dropout on p0, in training.
        qkv_bias (`bool`): biases on the q, k, v projections.
        qgfd_steps (`int`, defaults to 0): T; 0 is plain attention.
        qgfd_alpha (`float`, defaults to 0.5): alpha.
        kdim, vdim (`int`, *optional*): widths of `x_kv` for keys and values (cross-attention).
        **qgfd_kwargs: the other `QGFDSettings` fields (graph, mix, key_temperature,
            detach_graph, learnable_alpha, alpha_max, warmup_steps).

    `forward(x_q, x_kv=None, attn_mask=None, qgfd=True, is_causal=False, need_weights=False)`:
    `attn_mask` is the seed's mask, True = masked out, of shape `[B, Lk]` (key padding),
    `[Lq, Lk]`, `[B, Lq, Lk]` or `[B, H, Lq, Lk]`. QGFD is applied only to self-attention,
    i.e. when `x_kv` is None or is `x_q` itself; cross-attention is plain attention.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        qgfd_steps: int = 0,
        qgfd_alpha: float = QGFDSettings.alpha,
        kdim: Optional[int] = None,
        vdim: Optional[int] = None,
        **qgfd_kwargs,
    ):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0:
            raise ValueError(f"`embed_dim` must be a positive int, got {embed_dim!r}.")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"`num_heads` must be a positive int dividing embed_dim={embed_dim}, got {num_heads!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        self.settings = QGFDSettings.from_dict(qgfd_kwargs, steps=qgfd_steps, alpha=qgfd_alpha)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.qgfd_alpha = QGFDAlpha(self.settings, num_heads)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    @staticmethod
    def _allowed(attn_mask: Optional[torch.Tensor], B: int, Lq: int, Lk: int) -> Optional[torch.Tensor]:
        """Seed mask (True = masked out) -> bool mask broadcastable to (B, H, Lq, Lk), True = may attend."""
        if attn_mask is None:
            return None
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"`attn_mask` must be a bool tensor (True = masked out), got dtype {attn_mask.dtype}.")
        m = ~attn_mask
        if m.dim() == 2 and tuple(m.shape) == (B, Lk) and (Lq, Lk) != (B, Lk):
            return m[:, None, None, :]  # key padding
        if m.dim() == 2 and tuple(m.shape) == (Lq, Lk):
            return m[None, None]
        if m.dim() == 3 and tuple(m.shape) == (B, Lq, Lk):
            return m[:, None]
        if m.dim() == 4:
            return m
        raise ValueError(
            f"`attn_mask` of shape {tuple(attn_mask.shape)} is not one of [B, Lk]={[B, Lk]}, "
            f"[Lq, Lk]={[Lq, Lk]}, [B, Lq, Lk]={[B, Lq, Lk]} or [B, H, Lq, Lk]."
        )

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        qgfd: bool = True,
        is_causal: bool = False,
        need_weights: bool = False,
    ):
        if x_q.dim() != 3 or x_q.shape[-1] != self.embed_dim:
            raise ValueError(f"`x_q` must have shape [B, Lq, {self.embed_dim}], got {tuple(x_q.shape)}.")
        self_attention = x_kv is None or x_kv is x_q
        x_kv = x_q if x_kv is None else x_kv
        B, Lq, _ = x_q.shape
        Lk = x_kv.shape[1]
        q, k, v = self._heads(self.q_proj(x_q)), self._heads(self.k_proj(x_kv)), self._heads(self.v_proj(x_kv))
        mask = self._allowed(attn_mask, B, Lq, Lk)
        s = self.settings
        steps = s.steps if (qgfd and self_attention) else 0
        kwargs = dict(
            steps=steps, alpha=self.qgfd_alpha() if steps else 0.0, graph=s.graph, mix=s.mix,
            attn_mask=mask, is_causal=is_causal, key_temperature=s.key_temperature,
            detach_graph=s.detach_graph, dropout_p=self.dropout if self.training else 0.0,
        )
        weights = None
        if need_weights:
            # The weights p [B, H, Lq, Lk] from the same kernel, fed the identity as values: O = p I
            # (the one dropout draw then gives both p and the output p V). O(L^2) memory, as any p.
            eye = torch.eye(Lk, dtype=v.dtype, device=v.device).expand(B, self.num_heads, Lk, Lk)
            weights = qgfd_attention(q, k, eye, **kwargs)
            out = weights @ v  # (B, H, Lq, Dh)
        else:
            out = qgfd_attention(q, k, v, **kwargs)
        out = out.transpose(1, 2).reshape(B, Lq, self.embed_dim)  # (B, Lq, H * Dh)
        out = self.out_proj(out)
        return (out, weights) if need_weights else out
