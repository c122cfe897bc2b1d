# coding=utf-8
"""What every modality adapter shares: data <-> latents, conditioning, and the learned decoders.

An adapter owns what is specific to one modality: the (frozen) encoder that makes the clean
latents x0, the decoder that turns latents back into data, and, for text, the conditioning
encoder. Each modality's adapter lives beside its model in `modeling_qgfd_<modality>.py`;
this file holds their base class `_ModalityAdapter`, the registry `ADAPTERS` (modality ->
adapter class, filled by those files), the door to the pretrained encoders (`build_encoder`,
`load_pretrained_encoder`, `maybe_patch_encoder` call `TRANSFORMERS_BACKBONES`, filled by
`modeling_qgfd_pretrained`), the
building blocks (`SharedProjection`, `LatentDecoder`) and the batch checks.

| modality | x0 (latents)                                   | decoder                         | conditioning |
|----------|------------------------------------------------|---------------------------------|--------------|
| text     | T5 token embeddings x latent_scale (frozen)    | nearest embedding (exact)       | T5 encoder states of a source text -> d_model |
| image    | ViT patch states (frozen) or pixel patches     | learned (ViT) / unpatchify      | none |
| audio    | waveform frames, or Wav2Vec2 frame states (frozen) | join frames (exact) / learned, transposed conv | none |
| video    | per-frame image latents, frames one after another | the image decoder per frame  | none |
| tabular  | one token per column: quantile-normalised value or category code (or the seed's frozen MLP) | inverse transform, nearest code (or learned MLP) | none |

Shapes: `B` batch, `L` latent tokens, `Dl` latent width, `V` vocabulary, `C, H, W` image
channels and size, `p` patch size, `N = (H / p)^2` patches, `F` frames or features, `S` samples.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig
from transformers.utils import logging

from .attention_qgfd import value_checks_enabled
from .configuration_qgfd import MODALITY_CONFIGS, QGFDConfig
from .modeling_qgfd import QGFDDiffusionBackbone
from .modeling_qgfd_blocks import EncoderBlock
from .modeling_qgfd_embeddings import sinusoidal_embedding

logger = logging.get_logger(__name__)

# modality -> adapter class; each `modeling_qgfd_<modality>.py` adds its adapter on import.
ADAPTERS: Dict[str, type] = {}


# ----------------------------------------------------------------------------------------
# Pretrained encoders
# ----------------------------------------------------------------------------------------

# What a model with a transformers backbone needs (a pretrained encoder that makes x0, the
# backbone's own stack as the denoiser, QGFD patching of either): name -> function, filled by
# `modeling_qgfd_pretrained` when it is imported (by `import qgfd_hf`, or by a saved folder's
# `modeling_qgfd_backbones.py`). The model files reach it only through this table, never by a
# relative import, so a saved pixel-space model's folder carries none of that code (and none of
# patching): `trust_remote_code` copies every file a model file imports relatively.
TRANSFORMERS_BACKBONES: Dict[str, Callable] = {}


def transformers_backbone(name: str) -> Callable:
    """The backbone function `name` from `TRANSFORMERS_BACKBONES`, or a ValueError saying what is missing."""
    try:
        return TRANSFORMERS_BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"This model needs a transformers backbone ({name}), whose code is in modeling_qgfd_pretrained.py: "
            "import qgfd_hf, or load a folder saved with it (a model with a backbone saves modeling_qgfd_backbones.py "
            "and names it in config.json's auto_map)."
        ) from None


def build_encoder(modality: str, backbone_config: PretrainedConfig) -> nn.Module:
    """The pretrained encoder's architecture from its config, with random weights (no download);
    see `modeling_qgfd_pretrained.build_encoder`."""
    return transformers_backbone("build_encoder")(modality, backbone_config)


def load_pretrained_encoder(encoder: nn.Module, name: str) -> None:
    """Copy the weights of the Hub model or folder `name` into `encoder` (same architecture)."""
    transformers_backbone("load_pretrained_encoder")(encoder, name)


def maybe_patch_encoder(encoder: nn.Module, settings: Optional[dict]) -> None:
    """QGFD-patch the encoder's own self-attention when `backbone_qgfd` asks for it."""
    if settings:
        transformers_backbone("patch_model")(encoder, **settings)


def build_denoiser(config) -> nn.Module:
    """The denoiser a config asks for (`config.denoiser`): "qgfd" is `QGFDDiffusionBackbone`,
    "pretrained" is `PretrainedDenoiser` (the backbone's own stack, `modeling_qgfd_pretrained`)."""
    denoiser = getattr(config, "denoiser", "qgfd")
    if denoiser == "pretrained":
        return transformers_backbone("pretrained_denoiser")(config)
    if denoiser != "qgfd":
        raise ValueError(f"Unknown denoiser {denoiser!r}; allowed: 'qgfd', 'pretrained'.")
    return QGFDDiffusionBackbone(config)

# ----------------------------------------------------------------------------------------
# Building blocks of the adapters
# ----------------------------------------------------------------------------------------


class SharedProjection(nn.Module):
    """A fixed linear map into the shared latent width, inverted by pseudo-inverse.

    `y = x W^T` with W `[out, in]` (semi-)orthogonal times `gain = max(1, sqrt(out / in))`, so
    that the per-coordinate scale of the latents is kept. With out >= in the map is
    injective and `inverse(forward(x)) == x`; with out < in it keeps the top subspace only.

    Example:
        >>> proj = SharedProjection(4, 16)
        >>> x = torch.randn(2, 3, 4)
        >>> torch.allclose(proj.inverse(proj(x)), x, atol=1e-5)
        True
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.gain = max(1.0, math.sqrt(out_dim / in_dim))
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self._qgfd_init = "orthogonal"  # see QGFDPreTrainedModel._init_weights
        nn.init.orthogonal_(self.weight, gain=self.gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)  # (..., in) -> (..., out)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        pinv = torch.linalg.pinv(self.weight.t().float())  # (out, in)
        return (y.float() @ pinv).to(y.dtype)  # (..., out) -> (..., in)


class LatentDecoder(nn.Module):
    """Latent tokens to per-token outputs: Linear, positions, plain pre-LN Transformer
    blocks (softmax attention: the decoder is an auxiliary network), LayerNorm, Linear.

    Args:
        latent_dim (`int`), width (`int`), num_heads (`int`), num_layers (`int`): sizes.
        out_dim (`int`, *optional*): output width (None: return the hidden states [B, L, width]).

    Example:
        >>> LatentDecoder(latent_dim=16, width=32, num_heads=4, num_layers=1, out_dim=12)(torch.randn(2, 9, 16)).shape
        torch.Size([2, 9, 12])
    """

    def __init__(self, latent_dim: int, width: int, num_heads: int, num_layers: int, out_dim: Optional[int], dropout: float = 0.0):
        super().__init__()
        self.width = width
        self.in_proj = nn.Linear(latent_dim, width)
        self.blocks = nn.ModuleList(EncoderBlock(width, num_heads, 4 * width, dropout=dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.out_proj = nn.Linear(width, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.in_proj(x)  # (B, L, width)
        h = h + sinusoidal_embedding(torch.arange(h.shape[1], device=h.device), self.width).to(h.dtype)[None]
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.out_proj(h) if self.out_proj is not None else h


def _get(batch, key: str, modality: str) -> torch.Tensor:
    """`batch[key]` from a dict-like batch, or the batch itself when it is a tensor."""
    if isinstance(batch, torch.Tensor):
        return batch
    if not isinstance(batch, Mapping):
        raise ValueError(f"A {modality} batch must be a dict with {key!r} or a tensor, got {type(batch).__name__}.")
    if key not in batch:
        raise ValueError(f"A {modality} batch needs the key {key!r}; got keys {sorted(batch)}.")
    return batch[key]


def _check_ids(name: str, ids, vocab_size: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32) or ids.dim() != 2:
        got = f"{ids.dtype} tensor of shape {list(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"`{name}` must be an integer tensor of shape [B, L], got a {got}.")
    if value_checks_enabled() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"`{name}` holds token ids outside [0, {vocab_size}): [{int(ids.min())}, {int(ids.max())}].")


def _check_mask(name: str, mask, shape) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"`{name}` must be a tensor of shape {list(shape)} (1 = real token), got {type(mask).__name__}"
                         + (f" of shape {list(mask.shape)}" if isinstance(mask, torch.Tensor) else "") + ".")
    if mask.is_floating_point() or (value_checks_enabled() and not bool(((mask == 0) | (mask == 1)).all())):
        raise ValueError(f"`{name}` must hold 0/1 (or bool) values.")
    return mask.bool()


# ----------------------------------------------------------------------------------------
# Adapter base
# ----------------------------------------------------------------------------------------


def _resolve_adapter_config(modality: str, config, shared_cfg):
    """An adapter's modality config; the seed's form `XAdapter(hf_name, shared_cfg)` builds it
    from a Hub id or folder (returned as `pretrained` to load) or a backbone config."""
    # Duck-typed (`model_type`), not isinstance: with trust_remote_code the config class comes
    # from another copy of configuration_qgfd.py than this file's.
    expected = MODALITY_CONFIGS[modality].model_type
    model_type = getattr(config, "model_type", None)
    if model_type == expected:
        return config, None
    if isinstance(model_type, str) and model_type.startswith("qgfd"):
        raise ValueError(f"A {modality} adapter needs a {MODALITY_CONFIGS[modality].__name__}, got {type(config).__name__}.")
    if isinstance(config, (str, PretrainedConfig)) or (config is None and modality in ("image", "video", "tabular")):
        if shared_cfg is None:
            raise ValueError(f"`{modality}` adapter built from a backbone needs `shared_cfg`.")
        cfg, name = transformers_backbone("config_from_backbone")(modality, config, shared_cfg)
        return cfg, name
    raise ValueError(f"A {modality} adapter takes a modality config, a Hub id / folder or a backbone config, got {type(config).__name__}.")


class _ModalityAdapter(nn.Module):
    modality = None

    def __init__(self, config: QGFDConfig, shared_cfg=None):
        super().__init__()
        self.modality_config = config
        self.in_shared_space = shared_cfg is not None
        self.latent_dim = shared_cfg.latent_dim if shared_cfg is not None else config.latent_dim
        self.d_model = shared_cfg.d_model if shared_cfg is not None else config.d_model
        self.encoder = None
        if shared_cfg is not None:
            # Part of the encoder that makes x0: frozen with it (latents would collapse otherwise).
            self.proj = SharedProjection(config.latent_dim, shared_cfg.latent_dim)
            self.proj.requires_grad_(not config.freeze_encoder)

    def _set_encoder(self, encoder: nn.Module) -> None:
        maybe_patch_encoder(encoder, self.modality_config.backbone_qgfd)
        if self.modality_config.freeze_encoder:
            encoder.requires_grad_(False)
            encoder.eval()
        self.encoder = encoder

    def _encoder_trains(self) -> bool:
        return not self.modality_config.freeze_encoder

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder is not None and not self._encoder_trains():
            self.encoder.eval()  # a frozen encoder stays in eval mode: no dropout, no SpecAugment
        return self

    def _encoder_context(self):
        return torch.no_grad() if self.modality_config.freeze_encoder else contextlib.nullcontext()

    def load_pretrained_encoder(self, name: str) -> None:
        """Load the encoder's weights from a Hub id or folder."""
        if self.encoder is None:
            raise ValueError(f"This {self.modality} adapter has no pretrained encoder to load.")
        load_pretrained_encoder(self.encoder, name)

    def to_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) if self.in_shared_space else x  # (B, L, Dm) -> (B, L, Dl)

    def from_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj.inverse(x) if self.in_shared_space else x  # (B, L, Dl) -> (B, L, Dm)

    def latent_shape(self, batch_size: int) -> Tuple[int, int, int]:
        return (batch_size, self.modality_config.num_latent_tokens(), self.latent_dim)

    def encode_condition(self, **cond_inputs):
        if any(v is not None for v in cond_inputs.values()):
            raise ValueError(f"The {self.modality} modality is unconditional; got conditioning {sorted(cond_inputs)}.")
        return None, None

    def recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        return None


__all__ = [
    "ADAPTERS",
    "LatentDecoder",
    "SharedProjection",
    "TRANSFORMERS_BACKBONES",
    "build_denoiser",
    "build_encoder",
    "load_pretrained_encoder",
    "maybe_patch_encoder",
]
