# coding=utf-8
"""The QGFD diffusion denoiser and the base class of every QGFD diffusion model.

The denoiser `QGFDDiffusionBackbone` is eps_theta(x_t, t, cond): a stack of pre-LN
Transformer blocks whose self-attention is QGFD attention, with cross-attention to
conditioning tokens and DiT's adaLN-Zero timestep conditioning (or the seed's additive
time embedding). It predicts once for a given t; the samplers in `scheduling_qgfd` run the
loop over timesteps.

`QGFDPreTrainedModel` implements the contract that the pipeline and the training code
call on every modality model (`latent_shape`, `encode_condition`, `denoise`,
`data_to_latents`, `decode_latents`, `get_schedule`, `compute_loss`); the modality models
and their adapters live in `modeling_qgfd_modalities.py`.

Shapes: `B` batch, `L` latent length, `Lc` conditioning length, `D` d_model,
`Dl` latent_dim, `H` heads, `F` frequency width of the timestep embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .attention_qgfd import QGFDAlpha, QGFDMultiheadAttention, value_checks_enabled
from .configuration_qgfd import DIFFUSION_FIELDS, QGFD_FIELDS, DiffusionConfig, QGFDConfig
from .scheduling_qgfd import DDPMBetaSchedule, diffusion_target, q_sample, sample_loop
from .modelcard_qgfd import push_to_hub_with_card, save_model_card
from .pipeline_qgfd_diffusion import PIPELINE_TASK, QGFDDiffusionPipeline

logger = logging.get_logger(__name__)

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------


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


def classifier_free_guidance(cond_output: torch.Tensor, uncond_output: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """out_u + s (out_c - out_u) [Ho & Salimans 2022, Eq. 6].

    The weights (1 - s, s) sum to 1 and, at fixed x_t and t, the eps, x0 and v predictions are
    affine functions of one another, so guiding the model's own output (whatever its
    `prediction_type`) is the same as guiding eps: the guided x0 and v follow from the guided eps.
    """
    return uncond_output + guidance_scale * (cond_output - uncond_output)


# ----------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids: positions [N] (any real values) -> [N, dim] float32 (cos | sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / max(half, 1))
    args = positions.float()[:, None] * freqs[None]  # (N, dim // 2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * (dim // 2))
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def grid_coordinates(grid, device=None) -> torch.Tensor:
    """The coordinates [prod(grid), k] (long) of the tokens of a row-major k-axis grid."""
    axes = torch.meshgrid(*[torch.arange(n, device=device) for n in grid], indexing="ij")  # k x grid
    return torch.stack(axes, -1).reshape(-1, len(grid))  # (L, k)


def grid_sinusoidal_embedding(grid, dim: int, device=None) -> torch.Tensor:
    """Factorised sinusoids for the tokens of a row-major grid (e.g. frames x rows x columns):
    each axis gets its own share of `dim` (even sizes, the first axis the remainder), its
    coordinate's sinusoids there, concatenated: [prod(grid), dim] float32.

    Example:
        >>> grid_sinusoidal_embedding([4, 2, 2], 32).shape
        torch.Size([16, 32])
    """
    share = 2 * (dim // (2 * len(grid)))
    widths = [dim - share * (len(grid) - 1)] + [share] * (len(grid) - 1)
    coords = grid_coordinates(grid, device)  # (L, k)
    return torch.cat([sinusoidal_embedding(coords[:, a], w) for a, w in enumerate(widths)], dim=-1)  # (L, dim)


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


class TimestepEmbedding(nn.Module):
    """Timestep embedding: sinusoids of t, then an MLP (DiT's `TimestepEmbedder`).

    Args:
        d_model (`int`): output width.
        frequency_dim (`int`, defaults to 256): width of the sinusoidal features.
        max_period (`float`, defaults to 10000): lowest frequency's period.

    Example:
        >>> emb = TimestepEmbedding(32)
        >>> emb(torch.tensor([0, 999])).shape
        torch.Size([2, 32])
    """

    def __init__(self, d_model: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.linear_1 = nn.Linear(frequency_dim, d_model)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(d_model, d_model)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = sinusoidal_embedding(t, self.frequency_dim, self.max_period)  # (B, F)
        freqs = freqs.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(freqs)))  # (B, D)


class ClassEmbedding(nn.Module):
    """Class-label embedding (DiT's `LabelEmbedder`): `num_classes + 1` rows, the last is the null
    label that classifier-free guidance's unconditional pass (and label dropout in training) uses.

    Args:
        num_classes (`int`): K; labels are 0..K-1, and K is the null label.
        width (`int`): the width of the timestep embedding it is added to.

    Example:
        >>> emb = ClassEmbedding(10, 32)
        >>> emb(torch.tensor([3, emb.null_label])).shape
        torch.Size([2, 32])
    """

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, width)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)  # (B, D)


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
        qgfd_alpha: float = 0.5,
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


# ----------------------------------------------------------------------------------------
# The denoiser
# ----------------------------------------------------------------------------------------


def _qgfd_block_kwargs(cfg) -> Dict[str, Any]:
    """`EncoderBlock` QGFD keyword arguments from a config's `qgfd_*` fields."""
    kwargs = {"qgfd_steps": cfg.qgfd_steps, "qgfd_alpha": cfg.qgfd_alpha}
    for name, field in QGFD_FIELDS.items():
        if name not in ("qgfd_steps", "qgfd_alpha"):
            kwargs[field] = getattr(cfg, name)
    return kwargs


class QGFDDiffusionBackbone(nn.Module):
    """eps_theta(x_t, t, cond): the QGFD diffusion Transformer.

    1. project latents to d_model and add positions (1-D, or factorised over the config's
       `position_grid`: frame, row, column);
    2. embed t (sinusoids + MLP), plus an optional extra embedding (modality, class);
    3. run the `DecoderBlock`s (QGFD self-attention, cross-attention to `cond_tokens`),
       conditioned on the time embedding by adaLN-Zero (or by adding it to every token);
    4. final norm (adaLN-modulated), then project back to `latent_dim`.

    The output is the model's prediction for the config's `prediction_type` (epsilon by
    default). It runs once per call: the samplers own the loop over timesteps.

    Args:
        cfg (`DiffusionConfig` or `QGFDConfig`): sizes, QGFD settings, `time_conditioning`,
            `position_embedding`, `num_timesteps`.
        cross_attention (`bool`, *optional*): build cross-attention; default
            `cfg.conditional` for a `QGFDConfig` and True for the seed's `DiffusionConfig`.

    Example:
        >>> cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=16)
        >>> net = QGFDDiffusionBackbone(cfg)
        >>> x_t, t = torch.randn(2, 10, 16), torch.tensor([3, 500])
        >>> cond, mask = torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.long)
        >>> net(x_t, t, cond_tokens=cond, cond_mask=mask).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, cfg, cross_attention: Optional[bool] = None):
        super().__init__()
        # Duck-typed: with trust_remote_code the config class comes from another copy of
        # configuration_qgfd.py than this file's, so isinstance would fail.
        missing = [name for name in DIFFUSION_FIELDS if not hasattr(cfg, name)]
        if missing or getattr(cfg, "latent_dim", None) is None:
            raise ValueError(f"`cfg` must be a DiffusionConfig or a QGFDConfig, got {type(cfg).__name__} (missing {missing or ['latent_dim']}).")
        latent_dim = cfg.latent_dim
        default_cross = bool(getattr(cfg, "conditional", True))  # the seed's DiffusionConfig: always
        self.cross_attention = default_cross if cross_attention is None else bool(cross_attention)
        self.d_model, self.latent_dim = cfg.d_model, latent_dim
        self.num_timesteps = cfg.num_timesteps
        self.time_conditioning = cfg.time_conditioning
        self.position_embedding = cfg.position_embedding
        self.max_position_embeddings = cfg.max_position_embeddings
        grid = getattr(cfg, "position_grid", None)  # None: 1-D positions (the seed's DiffusionConfig has no grid)
        self.position_grid = tuple(grid) if grid else None

        self.in_proj = nn.Linear(latent_dim, cfg.d_model)
        if self.position_embedding == "learned" and self.position_grid is not None:
            # A factorised table: one embedding per grid axis (frame, row, column), summed.
            self.pos_embed_axes = nn.ModuleList(nn.Embedding(n, cfg.d_model) for n in self.position_grid)
        elif self.position_embedding == "learned":
            self.pos_embed = nn.Embedding(cfg.max_position_embeddings, cfg.d_model)
        self.time_embed = TimestepEmbedding(cfg.d_model)
        if self.cross_attention:
            self.cond_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.blocks = nn.ModuleList(
            DecoderBlock(
                cfg.d_model,
                cfg.num_heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                cross_attention=self.cross_attention,
                time_conditioning=cfg.time_conditioning,
                **_qgfd_block_kwargs(cfg),
            )
            for _ in range(cfg.num_layers)
        )
        adaln = cfg.time_conditioning == "adaln"
        self.norm_out = nn.LayerNorm(cfg.d_model, eps=1e-6, elementwise_affine=not adaln)
        if adaln:
            self.adaLN_final = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(cfg.d_model, 2 * cfg.d_model)))
        # Zero-initialised output (DiT): the untrained model predicts 0.
        self.out_proj = _zero_init(nn.Linear(cfg.d_model, latent_dim))

    def positions(self, length: int, device, dtype) -> Optional[torch.Tensor]:
        """Position embeddings [L, D] (None for position_embedding="none"); factorised over
        `position_grid` when the config has one."""
        if self.position_embedding == "none":
            return None
        if self.position_grid is not None:
            if length != math.prod(self.position_grid):
                raise ValueError(f"Latent length {length} does not fit `position_grid`={list(self.position_grid)} ({math.prod(self.position_grid)} tokens).")
            if self.position_embedding == "sinusoidal":
                return grid_sinusoidal_embedding(self.position_grid, self.d_model, device).to(dtype)
            coords = grid_coordinates(self.position_grid, device)  # (L, k)
            return sum(table(coords[:, a]) for a, table in enumerate(self.pos_embed_axes))  # (L, D)
        if self.position_embedding == "learned":
            if length > self.max_position_embeddings:
                raise ValueError(f"Latent length {length} exceeds `max_position_embeddings`={self.max_position_embeddings}.")
            return self.pos_embed.weight[:length]
        return sinusoidal_embedding(torch.arange(length, device=device), self.d_model).to(dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        extra_embedding: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the model output for x_t at step t.

        Args:
            x_t (`torch.FloatTensor` `[B, L, latent_dim]`): noisy latents.
            t (`torch.LongTensor` `[B]`, or an int): timesteps in [0, num_timesteps).
            cond_tokens (`torch.FloatTensor` `[B, Lc, d_model]`, *optional*): conditioning tokens.
            cond_mask (`[B, Lc]`, *optional*): 1/True = valid token (HF `attention_mask` convention).
            extra_embedding (`torch.FloatTensor` `[B, d_model]`, *optional*): added to the time
                embedding (the shared model's modality embedding; class conditioning).

        Returns:
            `torch.FloatTensor` `[B, L, latent_dim]`: eps (or x0, or v) prediction.
        """
        check_float_tensor("x_t", x_t, f"[B, L, latent_dim={self.latent_dim}]", 3, self.latent_dim)
        B, L, _ = x_t.shape
        t = check_timesteps(t, B, self.num_timesteps, x_t.device)
        cond_mask = check_condition(cond_tokens, cond_mask, B, self.d_model)
        if cond_tokens is not None and not self.cross_attention:
            raise ValueError("This denoiser is unconditional (built without cross-attention); pass cond_tokens=None.")
        if extra_embedding is not None:
            check_float_tensor("extra_embedding", extra_embedding, f"[B, d_model={self.d_model}]", 2, self.d_model)

        # 1. Latents to the model width, plus positions.
        h = self.in_proj(x_t)  # (B, L, D)
        pos = self.positions(L, x_t.device, h.dtype)
        if pos is not None:
            h = h + pos[None]
        # 2. Time (and extra) embedding c.
        c = self.time_embed(t)  # (B, D)
        if extra_embedding is not None:
            c = c + extra_embedding.to(c.dtype)
        if self.time_conditioning == "add":
            h = h + c[:, None]  # the seed: the time embedding added to every token
        if cond_tokens is not None:
            cond_tokens = self.cond_norm(cond_tokens.to(h.dtype))
        # 3. The QGFD blocks.
        for block in self.blocks:
            h = block(h, c, cond_tokens=cond_tokens, cond_mask=cond_mask)
        # 4. Output head.
        if self.time_conditioning == "adaln":
            shift, scale = self.adaLN_final(c).chunk(2, dim=-1)  # each (B, D)
            h = modulate(self.norm_out(h), shift, scale)
        else:
            h = self.norm_out(h)
        return self.out_proj(h)  # (B, L, Dl)


# ----------------------------------------------------------------------------------------
# The base model and the uniform contract
# ----------------------------------------------------------------------------------------


@dataclass
class QGFDDiffusionOutput(ModelOutput):
    """Training losses of a QGFD diffusion model.

    Args:
        loss (`torch.FloatTensor` `[]`): diffusion_loss + recon_weight * recon_loss.
        diffusion_loss (`torch.FloatTensor` `[]`): MSE between the denoiser's output and its target.
        recon_loss (`torch.FloatTensor` `[]`): MSE of the learned decoder (0 when the modality has none).
    """

    loss: Optional[torch.FloatTensor] = None
    diffusion_loss: Optional[torch.FloatTensor] = None
    recon_loss: Optional[torch.FloatTensor] = None


class QGFDPreTrainedModel(PreTrainedModel):
    """Base class of the QGFD diffusion models: weight init, and the uniform contract that the
    pipeline and the training code use on every modality.

    Subclasses hold `self.adapter` (data <-> latents, conditioning) and `self.backbone`
    (the denoiser `build_denoiser` makes: `QGFDDiffusionBackbone`, or `PretrainedDenoiser` for
    `denoiser="pretrained"`). The contract:

    - `config.modality`, `is_conditional`;
    - `latent_shape(batch_size) -> (B, L, latent_dim)`;
    - `encode_condition(**cond_inputs) -> (cond_tokens [B, Lc, d_model] | None, cond_mask [B, Lc] | None)`;
    - `denoise(x_t, t, cond_tokens=None, cond_mask=None) -> model_output [B, L, latent_dim]`;
    - `data_to_latents(batch) -> x0 [B, L, latent_dim]`; `decode_latents(latents) -> data`;
    - `get_schedule() -> DDPMBetaSchedule`; `sample_clip_value` (a bound for `clip_sample`, or None);
    - `compute_loss(batch, generator=None) -> {"loss", "diffusion_loss", "recon_loss"}`
      (also `forward(**batch)`, so DDP / accelerate wrappers see a forward pass).
    """

    config_class = QGFDConfig
    base_model_prefix = "qgfd"
    main_input_name = "x_t"
    _no_split_modules = ["DecoderBlock", "EncoderBlock"]
    supports_gradient_checkpointing = False

    # -- weights --------------------------------------------------------------------------

    def post_init(self):
        super().post_init()
        # transformers gathers tied weights (T5's shared / embed_tokens) from direct children
        # only; our pretrained encoders sit inside adapters, so gather them at any depth.
        for name, module in self.named_modules():
            if module is self or not isinstance(module, PreTrainedModel) or "." not in name:
                continue
            for key, target in (getattr(module, "all_tied_weights_keys", None) or {}).items():
                self.all_tied_weights_keys[f"{name}.{key}"] = f"{name}.{target}"

    def _init_weights(self, module: nn.Module):
        """Initialise our modules; pretrained sub-models (T5, ViT, Wav2Vec2) use their own."""
        super()._init_weights(module)  # norms 1/0, embeddings and linears N(0, initializer_range)
        rule = getattr(module, "_qgfd_init", None)
        if isinstance(module, nn.Linear):
            if rule == "zeros":
                # adaLN-Zero modulations and the denoiser's output layer start at 0 (DiT):
                # every block starts as the identity and the untrained model predicts 0.
                init.zeros_(module.weight)
            elif rule in ("he", "lecun"):
                # The frozen random tabular encoder: variance-preserving ("he" before the GELU,
                # "lecun" after it), so that its latents come out at about unit scale.
                gain = math.sqrt(2.0) if rule == "he" else 1.0
                init.normal_(module.weight, mean=0.0, std=gain / math.sqrt(module.in_features))
            else:
                # Every other linear layer of ours: Xavier uniform, as DiT.
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif rule == "orthogonal" and isinstance(getattr(module, "weight", None), torch.Tensor):
            # Adapters' fixed projection into the shared latent space: (semi-)orthogonal, scaled
            # so that latents keep their per-coordinate scale (`SharedProjection`).
            init.orthogonal_(module.weight, gain=module.gain)
        elif isinstance(module, QGFDAlpha) and module.logit is not None:
            # A learnable QGFD alpha starts at settings.alpha (as QGFDAlpha.__init__ sets it).
            s = module.settings
            frac = min(max(s.alpha / s.alpha_max, 1e-3), 1 - 1e-3)
            init.constant_(module.logit, math.log(frac / (1 - frac)))
        elif rule == "feature_stats":
            # Tabular normalisation statistics: identity until fitted to data.
            init.zeros_(module.feature_mean)
            init.ones_(module.feature_std)
        elif rule == "bin_scale":
            # Audio MDCT / spectrogram latents' per-bin statistics: identity until fitted (`fit_audio_scale`).
            init.ones_(module.bin_scale)
            if getattr(module, "bin_mean", None) is not None:
                init.zeros_(module.bin_mean)

    # -- the contract ---------------------------------------------------------------------

    @property
    def is_conditional(self) -> bool:
        """Whether `denoise` expects conditioning tokens (text models with a source text)."""
        return bool(self.config.conditional)

    def latent_shape(self, batch_size: int) -> Tuple[int, int, int]:
        """(B, L, latent_dim) of the latents this model samples."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        return (batch_size, self.config.num_latent_tokens(), self.config.latent_dim)

    def _fixed_length(self) -> bool:
        """Whether every latent sequence must have exactly `num_latent_tokens()` tokens."""
        return True

    def check_latents(self, name: str, latents) -> None:
        """ValueError unless `latents` is finite, [B, L, latent_dim] (L fixed where the modality needs it)."""
        L = self.config.num_latent_tokens()
        hint = f"[B, {L if self._fixed_length() else 'L'}, latent_dim={self.config.latent_dim}]"
        check_float_tensor(name, latents, hint, 3, self.config.latent_dim)
        if self._fixed_length() and latents.shape[1] != L:
            raise ValueError(f"`{name}` must have shape {hint}, got {list(latents.shape)}.")

    def encode_condition(self, **cond_inputs) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Conditioning tokens [B, Lc, d_model] and mask [B, Lc] (True = valid) from raw inputs.

        Unconditional models return (None, None) and refuse any input.
        """
        if not self.is_conditional:
            if any(v is not None for v in cond_inputs.values()):
                raise ValueError(f"This {self.config.modality} model is unconditional; it takes no conditioning, got {sorted(cond_inputs)}.")
            return None, None
        return self.adapter.encode_condition(**cond_inputs)

    def denoise(
        self,
        x_t: torch.Tensor,
        t,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One denoiser call: the model output (config.prediction_type) for x_t at step t.

        Args:
            x_t (`torch.FloatTensor` `[B, L, latent_dim]`): noisy latents.
            t (`torch.LongTensor` `[B]`): timesteps in [0, num_timesteps).
            cond_tokens (`[B, Lc, d_model]`), cond_mask (`[B, Lc]`, 1 = valid): from `encode_condition`;
                required by conditional models, refused by unconditional ones.
            class_labels (`torch.LongTensor` `[B]`): class-conditional models (`config.num_classes`):
                each sample's class, or `num_classes` (the null label) for the unconditional output.

        Returns:
            `torch.FloatTensor` `[B, L, latent_dim]`.
        """
        self.check_latents("x_t", x_t)
        if self.is_conditional and cond_tokens is None:
            raise ValueError("This model is conditional: pass `cond_tokens` (from `encode_condition`).")
        extra = self.embed_class_labels(class_labels, x_t.shape[0], x_t.device)
        return self.backbone(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, extra_embedding=extra)

    # -- class labels, the null condition and classifier-free guidance ----------------------

    def build_condition_embeddings(self) -> None:
        """The learned conditioning the config asks for: a `ClassEmbedding` (`num_classes`), added
        to the denoiser's timestep embedding (it takes the denoiser's width, so each model calls
        this once its `backbone` exists); and a text model's null source text, one learned token
        (`cond_dropout_prob` > 0), for training with condition dropout and for guidance."""
        cfg = self.config
        if getattr(cfg, "num_classes", None) is not None:
            self.class_embedding = ClassEmbedding(cfg.num_classes, getattr(self.backbone, "width", cfg.d_model))
        if cfg.conditional and (getattr(cfg, "cond_dropout_prob", 0.0) or 0.0) > 0:
            self.null_condition = nn.Embedding(1, cfg.d_model)  # (1, D): the null source text's one token

    @property
    def num_classes(self) -> Optional[int]:
        """K for a class-conditional model (class labels 0..K-1), else None."""
        return getattr(self.config, "num_classes", None)

    @property
    def has_null_condition(self) -> bool:
        """Whether the model learned the null condition (trained with `cond_dropout_prob` > 0), which
        unconditional sampling and classifier-free guidance need."""
        return (getattr(self.config, "cond_dropout_prob", 0.0) or 0.0) > 0

    def embed_class_labels(self, class_labels, batch_size: int, device) -> Optional[torch.Tensor]:
        """The label embedding [B, D] added to the timestep embedding (None for a model without classes)."""
        K = getattr(self.config, "num_classes", None)
        if K is None:
            if class_labels is not None:
                raise ValueError(f"This {self.config.modality} model is not class-conditional (num_classes=None); pass class_labels=None.")
            return None
        if class_labels is None:
            raise ValueError(
                f"This model is class-conditional ({K} classes): pass `class_labels` [B] (the null label {K} for unconditional outputs)."
            )
        if isinstance(class_labels, torch.Tensor) and class_labels.dtype in _INT_DTYPES and class_labels.dim() == 1:
            # Checked where the labels came in (a batch, a sampling request): no host sync per step.
            if class_labels.shape[0] != batch_size:
                raise ValueError(f"`class_labels` has {class_labels.shape[0]} labels, the latents {batch_size} samples.")
            labels = class_labels
        else:
            labels = check_class_labels(class_labels, K, batch_size, allow_null=True)
        return self.class_embedding(labels.to(device=device, dtype=torch.long))

    def null_condition_like(self, drop: torch.Tensor, cond_tokens=None, cond_mask=None, class_labels=None):
        """The condition with the null condition where `drop` [B] (bool) is True: the null label
        for class labels; for a source text, the learned null token, the other positions masked.
        Returns `(cond_tokens, cond_mask, class_labels)`; the mask is explicit (bool) when there are tokens."""
        if class_labels is not None:
            class_labels = torch.where(drop, torch.full_like(class_labels, self.class_embedding.null_label), class_labels)
        if cond_tokens is not None:
            if getattr(self, "null_condition", None) is None:
                raise ValueError("This model has no null condition (trained with cond_dropout_prob=0).")
            B, Lc, _ = cond_tokens.shape
            valid = cond_mask.bool() if cond_mask is not None else torch.ones(B, Lc, dtype=torch.bool, device=cond_tokens.device)
            null_tokens = self.null_condition.weight.to(cond_tokens.dtype)[None].expand(B, Lc, -1)  # (B, Lc, D)
            null_mask = torch.zeros_like(valid)
            null_mask[:, 0] = True  # the null token alone
            cond_tokens = torch.where(drop[:, None, None], null_tokens, cond_tokens)
            cond_mask = torch.where(drop[:, None], null_mask, valid)
        return cond_tokens, cond_mask, class_labels

    def check_guidance(self, num_samples: int, class_labels=None, guidance_scale=1.0) -> Tuple[Optional[torch.Tensor], float]:
        """Check a sampling request: `(class_labels as a LongTensor [num_samples] or None, guidance_scale)`.

        Raises ValueError for labels on a model without classes, labels out of range, not integers
        or not one per sample, a guidance scale that is not a finite number >= 0, and guidance on a
        model that is unconditional or was trained without condition dropout (it has no
        unconditional path to guide against).
        """
        scale = check_guidance_scale(guidance_scale)
        K, modality = self.num_classes, self.config.modality
        if class_labels is not None and K is None:
            if self.is_conditional:
                raise ValueError(f"This {modality} model is conditioned on a source text, not on class labels; drop class_labels.")
            raise ValueError(f"This {modality} model is not class-conditional (trained without class labels); drop class_labels.")
        if scale != 1.0:
            if not (self.is_conditional or K is not None):
                raise ValueError(
                    f"guidance_scale={guidance_scale!r}: classifier-free guidance needs a conditional model, and this {modality} "
                    "model is unconditional; use guidance_scale=1."
                )
            if not self.has_null_condition:
                raise ValueError(
                    f"guidance_scale={guidance_scale!r} needs the model's unconditional path, but it was trained without condition "
                    "dropout (cond_dropout_prob=0) and never learned the null condition. Sample with guidance_scale=1, or retrain "
                    "with cond_dropout_prob > 0 (qgfd-hf train --cond-dropout-prob 0.1)."
                )
        labels = None if class_labels is None else check_class_labels(class_labels, K, num_samples)
        return labels, scale

    def _draw_condition_dropout(self, batch_size: int, generator: Optional[torch.Generator], device) -> Optional[torch.Tensor]:
        """Training: which samples [B] (bool) get the null condition, each with probability
        `cond_dropout_prob` (None in eval mode or without dropout)."""
        p = getattr(self.config, "cond_dropout_prob", 0.0) or 0.0
        if not self.training or p == 0:
            return None
        gen_device = generator.device if generator is not None else device
        return (torch.rand(batch_size, generator=generator, device=gen_device) < p).to(device)

    def _class_labels_from_batch(self, batch, batch_size: int) -> Optional[torch.Tensor]:
        """A training batch's `class_labels` [B] (class-conditional models; the collators add them)."""
        labels = batch.get("class_labels") if isinstance(batch, Mapping) else None
        K = getattr(self.config, "num_classes", None)
        if K is None:
            if labels is not None:
                raise ValueError(f"This {self.config.modality} model is not class-conditional (num_classes=None), but the batch has `class_labels`.")
            return None
        if labels is None:
            raise ValueError(
                f"This model is class-conditional ({K} classes): its batches need `class_labels` (the data's label column; "
                "qgfd_hf.data_qgfd.ClassLabelCollator adds it)."
            )
        return check_class_labels(labels, K, batch_size).to(self.device)

    def data_to_latents(self, batch) -> torch.Tensor:
        """Clean latents x0 [B, L, latent_dim] from a batch of data (see the modality's docstring)."""
        return self.adapter.data_to_latents(batch)

    def decode_latents(self, latents: torch.Tensor):
        """Data from latents [B, L, latent_dim] (see the modality's docstring for the output)."""
        self.check_latents("latents", latents)
        return self.adapter.decode_latents(latents)

    # -- saving and sharing ----------------------------------------------------------------

    # The tokenizer / processor that prepares this model's data; the factory attaches it, and
    # `save_pretrained` writes it beside the weights so `from_pretrained` users and the
    # pipeline find it. A plain attribute: never part of the state dict.
    processor = None

    def save_pretrained(self, save_directory, *args, processor=None, training_info: Optional[Mapping] = None, model_card: bool = True, **kwargs):
        """Save the model as transformers does (`config.json`, `model.safetensors`, and this
        package's code for `trust_remote_code`), plus its tokenizer or processor and a model
        card `README.md`.

        Args:
            save_directory: the folder.
            processor (*optional*): the tokenizer / processor to save; defaults to `self.processor`.
            training_info (`dict`, *optional*): what training recorded (data, steps, metrics) for the card.
            model_card (`bool`, defaults to `True`): write `README.md`.
            **kwargs: passed to `PreTrainedModel.save_pretrained`.
        """
        # The pipeline travels with the code: where qgfd_hf is not installed,
        # `pipeline(model=dir, trust_remote_code=True)` reads this entry (the installed config
        # class drops it on load, see QGFDConfig).
        self.config.custom_pipelines = {
            PIPELINE_TASK: {
                "impl": f"{QGFDDiffusionPipeline.__module__.split('.')[-1]}.{QGFDDiffusionPipeline.__name__}",
                "pt": ["AutoModel"],
                "type": "multimodal",
            }
        }
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self.config.custom_pipelines
        if not kwargs.get("is_main_process", True):
            return
        processor = processor if processor is not None else self.processor
        if processor is not None:
            processor.save_pretrained(save_directory)
        if model_card:
            try:
                save_model_card(self, save_directory, training_info=training_info)
            except FileNotFoundError as err:  # a trust_remote_code copy has no template
                logger.warning(f"No model card written: {err}")

    def push_to_hub(self, repo_id: str, *, training_info: Optional[Mapping] = None, **kwargs):
        """Upload the saved model (code, weights, tokenizer / processor) and its model card in one
        commit. `transformers`' own `push_to_hub` would replace the card with a generic one.
        Keyword arguments: those of `qgfd_hf.push_to_hub_with_card` (`private`, `token`,
        `revision`, `commit_message`, `create_pr`, ...)."""
        return push_to_hub_with_card(self, repo_id, training_info=training_info, **kwargs)

    def get_schedule(self, device=None) -> DDPMBetaSchedule:
        """The noise schedule of `config` (float64), on `device` (default: the model's)."""
        key = (self.config.num_timesteps, self.config.beta_start, self.config.beta_end, self.config.beta_schedule)
        cached = self.__dict__.get("_schedule")
        if cached is None or cached[0] != key:
            cached = (key, DDPMBetaSchedule.from_config(self.config))
            self.__dict__["_schedule"] = cached  # not a submodule: never saved, never cast
        schedule = cached[1]
        return schedule.to(device if device is not None else self.device)

    @property
    def sample_clip_value(self) -> Optional[float]:
        """A bound on clean latents for `sample_loop(clip_sample=...)`, where the latent space has
        one (pixel patches: normalised pixels x latent_scale); None otherwise."""
        return None

    def _condition_from_batch(self, batch: Mapping) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Conditioning of a training batch (text: `cond_input_ids`, `cond_attention_mask`)."""
        return None, None

    def _recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        return self.adapter.recon_loss(batch, x0)

    def compute_loss(self, batch, generator: Optional[torch.Generator] = None) -> QGFDDiffusionOutput:
        """The training loss on a batch: t ~ U{0..T-1}, noise ~ N(0, I), prediction-type target.

        Args:
            batch (`dict` or `torch.Tensor`): the modality's data (see `data_to_latents`), and
                for conditional text models `cond_input_ids` / `cond_attention_mask`, for
                class-conditional models `class_labels` [B]. In training mode each sample's
                condition is replaced by the null condition with probability `cond_dropout_prob`.
            generator (`torch.Generator`, *optional*): draws t and the noise (reproducible losses).

        Returns:
            `QGFDDiffusionOutput` (a dict): `loss` = diffusion_loss + recon_weight * recon_loss.
        """
        x0 = self.data_to_latents(batch)
        cond_tokens, cond_mask = self._condition_from_batch(batch)
        class_labels = self._class_labels_from_batch(batch, x0.shape[0])
        t, noise = self._draw_t_and_noise(x0, generator)
        # Condition dropout (DiT's label dropout): these samples train the null condition.
        drop = self._draw_condition_dropout(x0.shape[0], generator, x0.device)
        extra = {k: v for k, v in (("class_labels", class_labels), ("drop_condition", drop)) if v is not None}
        diffusion_loss = self.diffusion_forward(x0, t, cond_tokens=cond_tokens, cond_mask=cond_mask, noise=noise, **extra)
        recon = self._recon_loss(batch, x0)
        recon = recon if recon is not None else diffusion_loss.new_zeros(())
        loss = diffusion_loss + self.config.recon_weight * recon
        return QGFDDiffusionOutput(loss=loss, diffusion_loss=diffusion_loss, recon_loss=recon)

    def forward(self, batch=None, generator: Optional[torch.Generator] = None, **batch_kwargs) -> QGFDDiffusionOutput:
        """`compute_loss` on `batch` (or on the keyword arguments: `model(**batch)`)."""
        if batch is None:
            batch = batch_kwargs
        elif batch_kwargs:
            raise ValueError(f"Pass the batch either as `batch` or as keywords, not both (got {sorted(batch_kwargs)}).")
        return self.compute_loss(batch, generator=generator)

    def _draw_t_and_noise(self, x0: torch.Tensor, generator: Optional[torch.Generator]):
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.config.num_timesteps, (x0.shape[0],), generator=generator, device=gen_device)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return t.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)

    def diffusion_forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        schedule: Optional[DDPMBetaSchedule] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        drop_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The diffusion loss (scalar MSE) for clean latents x0 at timesteps t (the seed's method).

        1. x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps [DDPM Eq. 4];
        2. target: eps, x0 or v (config.prediction_type);
        3. MSE between `denoise(x_t, t, cond, class_labels)` and the target, with the null
           condition for the samples where `drop_condition` [B] is True.
        """
        self.check_latents("x0", x0)
        if drop_condition is not None:
            cond_tokens, cond_mask, class_labels = self.null_condition_like(drop_condition, cond_tokens, cond_mask, class_labels)
        schedule = schedule if schedule is not None else self.get_schedule(x0.device)
        t = check_timesteps(t, x0.shape[0], self.config.num_timesteps, x0.device)
        x_t, noise = q_sample(x0, t, schedule, noise)
        target = diffusion_target(x0, noise, t, schedule, self.config.prediction_type)
        model_output = self.denoise(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, **({} if class_labels is None else {"class_labels": class_labels}))
        return F.mse_loss(model_output.float(), target.float())

    def make_denoise_fn(
        self,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        class_labels: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`denoise_fn(x_t, t)` for `scheduling_qgfd.sample_loop`, with the conditioning bound
        (and, for text models with `clamp_to_embeddings`, Diffusion-LM's clamping).

        With `guidance_scale` != 1, classifier-free guidance: the conditional and the
        unconditional (null condition) predictions come from ONE denoiser call on the batch
        `[x_t; x_t]`, and are combined as out_u + s (out_c - out_u) (`classifier_free_guidance`).
        """

        def denoise_fn(x_t, t):
            return self.denoise(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, **({} if class_labels is None else {"class_labels": class_labels}))

        if guidance_scale == 1.0:
            return denoise_fn
        # The batch [conditional; unconditional]: the condition, then the null condition.
        ref = cond_tokens if cond_tokens is not None else class_labels
        if ref is None:
            raise ValueError("Classifier-free guidance needs a condition (cond_tokens or class_labels) to guide towards.")
        B = ref.shape[0]
        every = torch.ones(B, dtype=torch.bool, device=ref.device)
        c_tokens, c_mask, c_labels = self.null_condition_like(~every, cond_tokens, cond_mask, class_labels)  # explicit mask
        u_tokens, u_mask, u_labels = self.null_condition_like(every, cond_tokens, cond_mask, class_labels)
        both = lambda a, b: None if a is None else torch.cat([a, b])  # (2B, ...)
        tokens2, mask2, labels2 = both(c_tokens, u_tokens), both(c_mask, u_mask), both(c_labels, u_labels)

        def guided_fn(x_t, t):
            t = check_timesteps(t, x_t.shape[0], self.config.num_timesteps, x_t.device)
            out = self.denoise(torch.cat([x_t, x_t]), torch.cat([t, t]), cond_tokens=tokens2, cond_mask=mask2,
                               **({} if labels2 is None else {"class_labels": labels2}))  # (2B, L, Dl)
            out_c, out_u = out.chunk(2)
            return classifier_free_guidance(out_c, out_u, guidance_scale)

        return guided_fn

    @torch.no_grad()
    def diffusion_sample(
        self,
        num_samples: Optional[int] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        *,
        schedule: Optional[DDPMBetaSchedule] = None,
        sampler="ddim",
        num_inference_steps: Optional[int] = None,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        progress: bool = False,
        clip_sample: Optional[float] = None,
        x_T: Optional[torch.Tensor] = None,
        timestep_spacing: Optional[str] = None,
        steps_offset: Optional[int] = None,
        class_labels=None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Sample latents [B, L, latent_dim] with DDPM, DDIM, DPM-Solver++ or a diffusers scheduler;
        `decode_latents` turns them into data.

        Args:
            num_samples (`int`, *optional*): B (default: the conditioning's or the labels' count, else 1).
            cond_tokens, cond_mask: from `encode_condition` (conditional models only).
            class_labels (`int`, `list[int]` or `torch.LongTensor` `[B]`, *optional*): class-conditional
                models: the class of each sample (a single int: all). None: unconditional samples
                (the null label), for a model trained with `cond_dropout_prob` > 0.
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance (1 = none, the
                conditional model; 0 = the unconditional model), see `make_denoise_fn`.
            sampler (`"ddim"`, `"ddpm"`, `"dpmsolver++"` or a diffusers `SchedulerMixin` instance),
                num_inference_steps, eta, generator, progress, clip_sample, x_T, timestep_spacing,
                steps_offset: as `scheduling_qgfd.sample_loop`.
        """
        if num_samples is None:
            num_samples = cond_tokens.shape[0] if cond_tokens is not None else len(class_labels) if isinstance(class_labels, (list, tuple, torch.Tensor)) else 1
        if cond_tokens is not None and cond_tokens.shape[0] != num_samples:
            raise ValueError(f"`num_samples`={num_samples} differs from the conditioning's batch size {cond_tokens.shape[0]}.")
        class_labels, guidance_scale = self.check_guidance(num_samples, class_labels, guidance_scale)
        if self.num_classes is not None and class_labels is None:
            if guidance_scale != 1.0:
                raise ValueError("guidance_scale != 1 guides towards classes: pass `class_labels` (one per sample, or a single int).")
            if not self.has_null_condition:
                raise ValueError(
                    f"This model is class-conditional ({self.num_classes} classes) and was trained without label dropout "
                    "(cond_dropout_prob=0), so it has no unconditional path: pass `class_labels` (one per sample, or a single int)."
                )
            class_labels = torch.full((num_samples,), self.num_classes, dtype=torch.long)  # the null label: unconditional samples
        guidance = {} if guidance_scale == 1.0 else {"guidance_scale": guidance_scale}
        if class_labels is not None:
            guidance["class_labels"] = class_labels.to(self.device)
        schedule = schedule if schedule is not None else self.get_schedule()
        return sample_loop(
            self.make_denoise_fn(cond_tokens, cond_mask, schedule, **guidance),
            self.latent_shape(num_samples),
            schedule,
            sampler=sampler,
            num_inference_steps=num_inference_steps,
            eta=eta,
            prediction_type=self.config.prediction_type,
            generator=generator,
            device=self.device,
            dtype=self.dtype,
            progress=progress,
            clip_sample=clip_sample,
            x_T=x_T,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
        )

    @torch.no_grad()
    def fit_latent_scale(self, batch) -> float:
        """Set `config.latent_scale` so that the latents of `batch` have unit std; returns it.

        Call it once on a representative batch before training (as Stable Diffusion's scale
        factor): a model trained with one scale must be sampled with the same.
        """
        x0 = self.data_to_latents(batch).float()
        std = float(x0.std())
        if not std > 0:
            raise ValueError("The batch's latents have zero spread; cannot fit a latent scale.")
        self.config.latent_scale = float(self.config.latent_scale / std)
        return self.config.latent_scale


__all__ = [
    "ClassEmbedding",
    "CrossAttention",
    "DecoderBlock",
    "EncoderBlock",
    "PositionwiseFFN",
    "QGFDDiffusionBackbone",
    "QGFDDiffusionOutput",
    "QGFDPreTrainedModel",
    "TimestepEmbedding",
    "check_class_labels",
    "check_condition",
    "check_guidance_scale",
    "classifier_free_guidance",
    "check_timesteps",
    "grid_sinusoidal_embedding",
    "sinusoidal_embedding",
]
