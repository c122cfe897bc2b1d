# coding=utf-8
"""The layers of the QGFD denoiser: pre-LN Transformer blocks with QGFD self-attention.

- `EncoderBlock`: QGFD self-attention and a feed-forward network (`PositionwiseFFN`), with DiT's
  adaLN-Zero time conditioning (`modulate`, `_zero_init`) or none.
- `DecoderBlock`: the same plus plain cross-attention (`CrossAttention`) to conditioning tokens.

`QGFDDiffusionBackbone` (modeling_qgfd.py) stacks `DecoderBlock`s. Shapes: `B` batch, `L` latent
length, `Lc` conditioning length, `D` d_model, `H` heads, `Dh` head width.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention_qgfd import QGFDSettings
from .modeling_qgfd_attention import QGFDMultiheadAttention


# ----------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------


class PositionwiseFFN(nn.Module):
    """The feed-forward network of a Transformer block: Linear -> GELU -> dropout -> Linear.

    Args:
        d_model (`int`): input and output width.
        d_ff (`int`): hidden width.
        dropout (`float`, defaults to 0.0): dropout after the activation.

    Example:
        >>> ffn = PositionwiseFFN(32, 64)
        >>> ffn(torch.randn(2, 5, 32)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU(approximate="tanh")
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, L, D] * (1 + scale [B, D]) + shift [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossAttention(nn.Module):
    """Plain multi-head cross-attention (QGFD applies to self-attention only).

    Args:
        d_model (`int`), num_heads (`int`): sizes; keys and values come from tokens of width `d_model`.
        dropout (`float`, defaults to 0.0): attention dropout in training.

    `forward(x [B, L, D], cond [B, Lc, D], cond_mask [B, Lc] bool (True = valid) or None)`.
    A query whose keys are all masked gets 0 (never NaN).

    Example:
        >>> attn = CrossAttention(32, 4)
        >>> attn(torch.randn(2, 5, 32), torch.randn(2, 3, 32), torch.tensor([[True, True, False], [False] * 3])).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, d_model // num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(cond)), self._heads(self.v_proj(cond))
        mask, empty = None, None
        if cond_mask is not None:
            empty = ~cond_mask.any(-1)  # (B,): samples with no valid conditioning token
            mask = (cond_mask | empty[:, None])[:, None, None, :]  # (B, 1, 1, Lc), True = may attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, L, D)  # (B, L, H * Dh)
        if empty is not None:
            out = out.masked_fill(empty[:, None, None], 0.0)
        return self.out_proj(out)


def _zero_init(module: nn.Linear) -> nn.Linear:
    """Zero a layer's weight now (for standalone use) and mark it for `QGFDPreTrainedModel._init_weights`."""
    module._qgfd_init = "zeros"
    nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


# ----------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: QGFD self-attention and a feed-forward network.

    With `time_conditioning="adaln"` the block takes a conditioning vector `c` [B, D] (the
    timestep embedding) and modulates both sub-layers with it (DiT's adaLN-Zero: shift,
    scale and gate per sub-layer, predicted from `c` by a zero-initialised layer, so the
    block starts as the identity). Otherwise (`"add"` or None) it is a plain pre-LN block.

    Args:
        d_model (`int`), num_heads (`int`), d_ff (`int`): sizes.
        dropout (`float`, defaults to 0.0): attention and feed-forward dropout.
        time_conditioning (`str`, *optional*): `"adaln"`, `"add"` or None.
        qgfd_steps (`int`, defaults to 0), qgfd_alpha (`float`, defaults to 0.5), **qgfd_kwargs:
            the self-attention's QGFD settings (`graph`, `mix`, ...); steps 0 is plain attention.

    Example:
        >>> block = EncoderBlock(32, 4, 64, time_conditioning="adaln", qgfd_steps=1)
        >>> block(torch.randn(2, 5, 32), c=torch.randn(2, 32)).shape
        torch.Size([2, 5, 32])
    """

    _num_modulations = 6  # (shift, scale, gate) x (self-attention, FFN)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        time_conditioning: Optional[str] = None,
        qgfd_steps: int = 0,
        qgfd_alpha: float = QGFDSettings.alpha,
        **qgfd_kwargs,
    ):
        super().__init__()
        self.adaln = time_conditioning == "adaln"
        # adaLN supplies the scale and shift, so those norms carry no affine parameters (DiT).
        self.norm1 = nn.LayerNorm(d_model, eps=1e-6, elementwise_affine=not self.adaln)
        self.self_attn = QGFDMultiheadAttention(
            d_model, num_heads, dropout=dropout, qkv_bias=True, qgfd_steps=qgfd_steps, qgfd_alpha=qgfd_alpha, **qgfd_kwargs
        )
        self.norm2 = nn.LayerNorm(d_model, eps=1e-6, elementwise_affine=not self.adaln)
        self.ffn = PositionwiseFFN(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)
        if self.adaln:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(d_model, self._num_modulations * d_model)))

    def _modulations(self, c: Optional[torch.Tensor], batch_size: int):
        if not self.adaln:
            return None
        if c is None:
            raise ValueError("This block uses adaLN time conditioning and needs `c` [B, d_model].")
        return self.adaLN_modulation(c).chunk(self._num_modulations, dim=-1)  # each (B, D)

    def _self_attention(self, x, mods, attn_mask):
        if mods is None:
            return x + self.dropout(self.self_attn(self.norm1(x), attn_mask=attn_mask))
        shift, scale, gate = mods[0], mods[1], mods[2]
        return x + gate[:, None] * self.dropout(self.self_attn(modulate(self.norm1(x), shift, scale), attn_mask=attn_mask))

    def _feed_forward(self, x, mods):
        if mods is None:
            return x + self.dropout(self.ffn(self.norm2(x)))
        shift, scale, gate = mods[3], mods[4], mods[5]
        return x + gate[:, None] * self.dropout(self.ffn(modulate(self.norm2(x), shift, scale)))

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, L, D], c [B, D] (adaLN only), attn_mask as `QGFDMultiheadAttention` (True = masked out)."""
        mods = self._modulations(c, x.shape[0])
        x = self._self_attention(x, mods, attn_mask)
        return self._feed_forward(x, mods)


class DecoderBlock(EncoderBlock):
    """`EncoderBlock` plus cross-attention to conditioning tokens, between the two.

    Self-attention is QGFD; cross-attention (`CrossAttention`) is plain attention (QGFD
    applies to self-attention only) over `cond_tokens` [B, Lc, D], pre-LN, unmodulated (as
    PixArt-alpha).

    Args:
        cross_attention (`bool`, defaults to `True`): build the cross-attention layer;
            without it the block is an `EncoderBlock` and refuses `cond_tokens`.
        **kwargs: `EncoderBlock` arguments.

    Example:
        >>> block = DecoderBlock(32, 4, 64, time_conditioning="adaln")
        >>> cond, mask = torch.randn(2, 3, 32), torch.tensor([[1, 1, 0], [1, 1, 1]])
        >>> block(torch.randn(2, 5, 32), c=torch.randn(2, 32), cond_tokens=cond, cond_mask=mask).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0, cross_attention: bool = True, **kwargs):
        super().__init__(d_model, num_heads, d_ff, dropout=dropout, **kwargs)
        self.has_cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(d_model, eps=1e-6)
            self.cross_attn = CrossAttention(d_model, num_heads, dropout=dropout)

    def forward(
        self,
        x: torch.Tensor,
        c: Optional[torch.Tensor] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x [B, L, D]; c [B, D]; cond_tokens [B, Lc, D]; cond_mask [B, Lc] bool, True = valid."""
        mods = self._modulations(c, x.shape[0])
        x = self._self_attention(x, mods, attn_mask)
        if cond_tokens is not None:
            if not self.has_cross_attention:
                raise ValueError("This block was built without cross-attention and cannot take `cond_tokens`.")
            cond_mask = None if cond_mask is None else cond_mask.bool()
            x = x + self.dropout(self.cross_attn(self.norm_cross(x), cond_tokens, cond_mask))
        return self._feed_forward(x, mods)
