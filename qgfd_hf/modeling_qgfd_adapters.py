# coding=utf-8
"""Modality adapters: data <-> latents, conditioning, and the learned decoders.

Each adapter owns what is specific to one modality: the (frozen) encoder that makes the
clean latents x0, the decoder that turns latents back into data, and, for text, the
conditioning encoder. The single-modality models hold one adapter; the shared model holds
one per modality and maps every modality into one latent width with a fixed projection.

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
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging

from .configuration_qgfd import (  # the modality configs are used by the docstring examples
    MODALITY_CONFIGS,
    QGFDAudioConfig,
    QGFDConfig,
    QGFDImageConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
)
from .attention_qgfd import value_checks_enabled
from .modeling_qgfd import EncoderBlock, check_float_tensor, sinusoidal_embedding

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# Pretrained encoders
# ----------------------------------------------------------------------------------------

_T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


def build_encoder(modality: str, backbone_config: PretrainedConfig) -> nn.Module:
    """The pretrained encoder's architecture from its config, with random weights (no download).

    text: T5's encoder (`T5EncoderModel`; mT5, umT5 alike) or any encoder-only model
    (`AutoModel`); image: `ViTModel` without its pooler (or `AutoModel`); audio: `AutoModel`
    (Wav2Vec2Model and friends).
    """
    import transformers

    # The first transformers model a QGFD model builds registers "qgfd" with transformers and installs
    # its hooks (a saved config may ask for "qgfd"); a model without one, such as a pixel-space image
    # model, leaves transformers as it was, also when loaded with trust_remote_code.
    from . import patching_qgfd  # noqa: F401

    model_type = getattr(backbone_config, "model_type", "")
    if modality == "text" and model_type in _T5_ENCODERS:
        return getattr(transformers, _T5_ENCODERS[model_type])(backbone_config)
    if modality == "text" and getattr(backbone_config, "is_encoder_decoder", False):
        raise ValueError(
            f"Text backbones must be T5-family ({sorted(_T5_ENCODERS)}) or encoder-only models, got model_type={model_type!r}."
        )
    if modality in ("image", "video") and model_type == "vit":
        return transformers.ViTModel(backbone_config, add_pooling_layer=False)
    return AutoModel.from_config(backbone_config)


def load_pretrained_encoder(encoder: nn.Module, name: str) -> None:
    """Copy the weights of the Hub model or folder `name` into `encoder` (same architecture)."""
    kwargs = {"add_pooling_layer": False} if type(encoder).__name__ == "ViTModel" else {}
    pretrained = type(encoder).from_pretrained(name, **kwargs)
    encoder.load_state_dict(pretrained.state_dict(), strict=True)
    logger.info(f"Loaded pretrained {type(encoder).__name__} weights from {name!r}.")


def maybe_patch_encoder(encoder: nn.Module, settings: Optional[dict]) -> None:
    """QGFD-patch the encoder's own self-attention when `backbone_qgfd` asks for it."""
    if not settings:
        return
    from .patching_qgfd import patch_model

    patch_model(encoder, **settings)


# ----------------------------------------------------------------------------------------
# Modality configs from a backbone (a Hub id, a folder or a transformers config)
# ----------------------------------------------------------------------------------------


def _resolve_backbone(backbone, modality):
    """(backbone_config or None, Hub id / folder or None) from a name, a config or None."""
    if backbone is None:
        return None, None
    if isinstance(backbone, str):
        return AutoConfig.from_pretrained(backbone), backbone
    if isinstance(backbone, PretrainedConfig):
        if isinstance(backbone, QGFDConfig):
            raise ValueError(f"The {modality} backbone must be the encoder's config (T5, ViT, ...), not a {type(backbone).__name__}.")
        return backbone, None
    raise ValueError(f"`backbone_name` for {modality} must be a Hub id, a folder, a transformers config or None, got {type(backbone).__name__}.")


def modality_config_from_backbone(modality: str, backbone, base_cfg=None, **kwargs):
    """A modality config for an adapter or model: returns (config, pretrained name or None).

    `base_cfg` (a DiffusionConfig or QGFDConfig) supplies the sizes of the learned decoders;
    `latent_dim` is the encoder's width.
    """
    backbone_config, name = _resolve_backbone(backbone, modality)
    values = {}
    if base_cfg is not None:
        values = {k: getattr(base_cfg, k) for k in ("d_model", "num_heads", "num_layers", "d_ff", "dropout")}
    values.update(kwargs)
    values.setdefault("latent_dim", None)
    if modality in ("image", "video"):
        values.setdefault("latent_space", "vit" if backbone_config is not None else "pixels")
        if name is not None and values["latent_space"] == "vit":
            _normalisation_from_processor(values, _load_processor(modality, name))
    if modality in ("image", "video", "text", "audio") or backbone_config is not None:
        values["backbone_config"] = backbone_config
    return MODALITY_CONFIGS[modality](backbone_name=name, **values), name


def _normalisation_from_processor(values: dict, processor) -> None:
    """Normalise pixels as the pretrained image processor does (unless the caller said otherwise)."""
    for key in ("image_mean", "image_std"):
        value = getattr(processor, key, None) if processor is not None else None
        if key not in values and value is not None:
            values[key] = [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def _load_processor(modality: str, name: str):
    """The tokenizer / image processor / feature extractor saved with the backbone at `name`
    (None, with a warning, when an image or audio backbone has none; text needs one)."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    loader = {"text": AutoTokenizer, "image": AutoImageProcessor, "video": AutoImageProcessor, "audio": AutoFeatureExtractor}[modality]
    try:
        return loader.from_pretrained(name)
    except (OSError, ValueError) as err:
        if modality == "text":
            raise ValueError(f"No tokenizer could be loaded from {name!r} ({err}); pass `tokenizer=`.") from err
        logger.warning(f"No processor at {name!r} ({err}); building one from the model's config.")
        return None


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
        cfg, name = modality_config_from_backbone(modality, config, shared_cfg)
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


# ----------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------


class TextAdapter(_ModalityAdapter):
    """Text <-> T5 token-embedding latents, and T5-encoded conditioning (Diffusion-LM style).

    - latents: `E[input_ids] * latent_scale` [B, L, Dl] with E the T5 input embedding (frozen
      by default), padded with the pad token to `seq_len` by `data_to_latents`;
    - decoding: nearest embedding, `logits = 2 x E'^T - ||E'||^2` with E' the embedding
      matrix in latent space; decode(encode(ids)) == ids exactly;
    - conditioning: the T5 encoder's states of a source text, projected to the denoiser's
      `d_model` (the seed handed T5-width states to a backbone of another width).

    Args:
        config (`QGFDTextConfig`, or the seed's Hub id / folder / backbone config with `shared_cfg`).
        shared_cfg (`QGFDSharedConfig` or `DiffusionConfig`, *optional*): inside the shared model,
            map latents to its `latent_dim` and conditioning to its `d_model`.

    Example:
        >>> from transformers import T5Config
        >>> t5 = T5Config(vocab_size=50, d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)
        >>> adapter = TextAdapter(QGFDTextConfig(backbone_config=t5, d_model=32, num_heads=4, num_layers=2, d_ff=64, seq_len=6))
        >>> ids = torch.tensor([[5, 6, 7, 1]])
        >>> x0 = adapter.data_to_latents({"input_ids": ids})
        >>> x0.shape, adapter.decode_latents(x0)[0, :4].tolist()
        (torch.Size([1, 6, 32]), [5, 6, 7, 1])
    """

    modality = "text"

    def __init__(self, config, shared_cfg=None):
        config, pretrained = _resolve_adapter_config("text", config, shared_cfg)
        super().__init__(config, shared_cfg)
        self._set_encoder(build_encoder("text", config.backbone_config))
        self.vocab_size = self.encoder.get_input_embeddings().weight.shape[0]
        if config.freeze_encoder and config.conditional and config.train_condition_encoder:
            # The layers that encode the source text learn; the token embeddings, which define
            # the latent space (and feed those layers), stay as they are.
            embeddings = self.encoder.get_input_embeddings().weight
            for p in self.encoder.parameters():
                p.requires_grad_(p is not embeddings)
        if config.conditional:
            self.cond_proj = nn.Linear(config.latent_dim, self.d_model)  # T5 width -> denoiser width
        if pretrained is not None:
            self.load_pretrained_encoder(pretrained)
            self.fit_embedding_scale()

    def fit_embedding_scale(self) -> float:
        """Set `latent_scale` = 1 / std(E), so that token latents have about unit std."""
        std = float(self.encoder.get_input_embeddings().weight.detach().float().std())
        self.modality_config.latent_scale = 1.0 / std
        return self.modality_config.latent_scale

    def latent_embeddings(self) -> torch.Tensor:
        """E' [V, Dl]: every token's latent (embedding x latent_scale, in the shared space if any)."""
        with self._encoder_context():
            E = self.encoder.get_input_embeddings().weight * self.modality_config.latent_scale  # (V, Dm)
            return self.to_shared(E)

    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token latents [B, L, Dl] of `input_ids` [B, L]; masked positions get the pad token's."""
        _check_ids("input_ids", input_ids, self.vocab_size)
        if attention_mask is not None:
            mask = _check_mask("attention_mask", attention_mask, input_ids.shape)
            input_ids = input_ids.masked_fill(~mask, self.modality_config.pad_token_id)
        with self._encoder_context():
            x = self.encoder.get_input_embeddings()(input_ids) * self.modality_config.latent_scale  # (B, L, Dm)
            return self.to_shared(x)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, seq_len, Dl] from `batch["input_ids"]` [B, L <= seq_len] (and `attention_mask`)."""
        ids = _get(batch, "input_ids", "text")
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        _check_ids("input_ids", ids, self.vocab_size)
        S, L = self.modality_config.seq_len, ids.shape[1]
        if L > S:
            raise ValueError(f"`input_ids` has length {L}, longer than the model's seq_len={S}; truncate to {S} tokens.")
        if L < S:  # right-pad to the fixed length the model samples
            ids = F.pad(ids, (0, S - L), value=self.modality_config.pad_token_id)
            if mask is not None:
                mask = F.pad(mask, (0, S - L), value=0)
        return self.embed(ids, mask)

    def encode_condition(self, input_ids=None, attention_mask=None, token_type_ids=None, **unknown):
        """Conditioning tokens [B, Lc, d_model] and mask [B, Lc] (True = valid) of a source text."""
        if unknown:
            raise ValueError(f"Unknown conditioning inputs {sorted(unknown)}; the text model takes input_ids and attention_mask.")
        if not self.modality_config.conditional:
            return super().encode_condition(input_ids=input_ids, attention_mask=attention_mask)
        if input_ids is None:
            raise ValueError("This text model is conditional: pass the source text's `input_ids`.")
        _check_ids("input_ids", input_ids, self.vocab_size)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else _check_mask("attention_mask", attention_mask, input_ids.shape)
        grad = self.modality_config.train_condition_encoder or not self.modality_config.freeze_encoder
        with contextlib.nullcontext() if grad else torch.no_grad():
            states = self.encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # (B, Lc, Dm)
        return self.cond_proj(states), mask

    def _encoder_trains(self) -> bool:
        return not self.modality_config.freeze_encoder or (
            self.modality_config.conditional and self.modality_config.train_condition_encoder
        )

    def decode_embeddings(self, latents: torch.Tensor) -> torch.Tensor:
        """Token logits [B, L, V] of latents [B, L, Dl]: 2 x E'^T - ||E'||^2 (argmax = nearest embedding)."""
        E = self.latent_embeddings().to(latents.dtype)  # (V, Dl)
        return 2 * latents @ E.t() - (E * E).sum(-1)  # (B, L, V)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] of latents [B, L, Dl] (rounding to the nearest embedding)."""
        return self.decode_embeddings(latents).argmax(-1)

    def round_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Each latent replaced by its nearest token latent [B, L, Dl] (Diffusion-LM's clamp)."""
        return self.latent_embeddings().to(latents.dtype)[self.decode_latents(latents)]


# ----------------------------------------------------------------------------------------
# Images and video
# ----------------------------------------------------------------------------------------


class ImageAdapter(_ModalityAdapter):
    """Images <-> patch latents.

    - `latent_space="vit"`: x0 = ViT patch states (CLS dropped) x latent_scale [B, N, Dl],
      frozen; a learned `LatentDecoder` maps latents to pixel patches, trained by the
      reconstruction loss (`recon_loss`) next to the diffusion loss.
    - `latent_space="pixels"`: x0 = non-overlapping p x p patches of the normalised image,
      `[B, N, C p^2]`; decoding is `unpatchify`, exact, nothing to learn.

    Inputs are `pixel_values` [B, C, H, W] normalised as the image processor does
    (`(x - image_mean) / image_std` of images in [0, 1]); decoded images are in [0, 1].

    Example:
        >>> adapter = ImageAdapter(QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1,
        ...                                        d_model=32, num_heads=4, num_layers=2, d_ff=64))
        >>> images = torch.rand(2, 1, 8, 8)
        >>> x0 = adapter.data_to_latents({"pixel_values": (images - 0.5) / 0.5})
        >>> x0.shape, torch.allclose(adapter.decode_latents(x0), images, atol=1e-6)
        (torch.Size([2, 16, 4]), True)
    """

    modality = "image"

    def __init__(self, config, shared_cfg=None):
        config, pretrained = _resolve_adapter_config(self.modality, config, shared_cfg)
        super().__init__(config, shared_cfg)
        self.patch_size, self.num_channels, self.image_size = config.patch_size, config.num_channels, config.image_size
        self.grid = config.image_size // config.patch_size
        if config.latent_space == "vit":
            self._set_encoder(build_encoder(self.modality, config.backbone_config))
            patch_dim = config.num_channels * config.patch_size**2
            self.decoder = LatentDecoder(
                config.latent_dim, config.decoder_width, config.num_heads, config.decoder_layers, patch_dim, config.dropout
            )
        if pretrained is not None:
            self.load_pretrained_encoder(pretrained)

    # -- pixels ---------------------------------------------------------------------------

    def _stats(self, like: torch.Tensor):
        shape = (1, self.num_channels, 1, 1)
        mean = torch.tensor(self.modality_config.image_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.modality_config.image_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def check_images(self, pixel_values) -> None:
        C, S = self.num_channels, self.image_size
        check_float_tensor("pixel_values", pixel_values, f"[B, {C}, {S}, {S}]", 4)
        if tuple(pixel_values.shape[1:]) != (C, S, S):
            raise ValueError(f"`pixel_values` must have shape [B, {C}, {S}, {S}], got {list(pixel_values.shape)}.")

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, p * p * C], patches in row-major order."""
        B, C = pixel_values.shape[:2]
        g, p = self.grid, self.patch_size
        x = pixel_values.reshape(B, C, g, p, g, p)  # (B, C, gh, p, gw, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
        return x.reshape(B, g * g, p * p * C)  # (B, N, p*p*C)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, N, p * p * C] -> [B, C, H, W] (inverse of `patchify`)."""
        B = patches.shape[0]
        g, p, C = self.grid, self.patch_size, self.num_channels
        x = patches.reshape(B, g, g, p, p, C)  # (B, gh, gw, p, p, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(B, C, g * p, g * p)  # (B, C, H, W)

    # -- latents --------------------------------------------------------------------------

    def encoder_states(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT's patch states [B, N, D_vit] of normalised images [B, C, H, W] (CLS dropped),
        before any latent normalisation."""
        if self.encoder is None:
            raise ValueError("Pixel latents have no encoder states (latent_space='pixels').")
        with self._encoder_context():
            h = self.encoder(pixel_values=pixel_values).last_hidden_state  # (B, 1 + N, D_vit)
        return h[:, -self.grid**2 :]  # drop the CLS token, keep the N patch states

    def _encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] normalised -> latents [B, N, Dl]."""
        cfg = self.modality_config
        if self.encoder is None:
            h = self.patchify(pixel_values)  # (B, N, C p^2)
        else:
            h = self.encoder_states(pixel_values)  # (B, N, D_vit)
            if cfg.latent_mean is not None:  # RAE's per-channel normalisation (fit_normalization)
                mean = torch.tensor(cfg.latent_mean, device=h.device, dtype=h.dtype)
                std = torch.tensor(cfg.latent_std, device=h.device, dtype=h.dtype)
                h = (h - mean) / std
        return self.to_shared(h * cfg.latent_scale)

    def _decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, N, Dl] -> normalised pixels [B, C, H, W]."""
        h = self.from_shared(latents)  # (B, N, Dm)
        if self.encoder is None:
            return self.unpatchify(h / self.modality_config.latent_scale)
        return self.unpatchify(self.decoder(h))  # (B, N, C p^2) -> (B, C, H, W)

    def image_to_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, N, Dl] of normalised `pixel_values` [B, C, H, W]."""
        self.check_images(pixel_values)
        return self._encode_images(pixel_values)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, N, Dl] from `batch["pixel_values"]` [B, C, H, W] (normalised)."""
        return self.image_to_latents(_get(batch, "pixel_values", self.modality))

    def decode_normalized(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, C, H, W] (the space of `pixel_values`)."""
        return self._decode_images(latents)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1]."""
        x = self.decode_normalized(latents)
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    def recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """MSE of the learned decoder on normalised pixels (ViT latents; None for pixel patches).

        In training, with `decoder_noise_std` tau > 0, the decoder reads noise-augmented latents
        `x0 + sigma * latent_scale * eps`, `sigma ~ |N(0, tau^2)|` per example (RAE, Sec. 3), so
        that it learns to decode latents near, not only on, the encoder's outputs.
        """
        if self.encoder is None:
            return None
        target = _get(batch, "pixel_values", self.modality)
        tau = self.modality_config.decoder_noise_std
        if self.training and tau > 0:
            sigma = torch.randn(x0.shape[0], *([1] * (x0.dim() - 1)), device=x0.device, dtype=x0.dtype).abs() * tau  # (B, 1, 1)
            x0 = x0 + sigma * self.modality_config.latent_scale * torch.randn_like(x0)
        return F.mse_loss(self.decode_normalized(x0).float(), target.float())


class VideoAdapter(ImageAdapter):
    """Video <-> per-frame image latents, frames one after another: [B, F * N, Dl].

    `pixel_values` [B, F, C, H, W] normalised as for images; decoded clips are
    [B, F, C, H, W] in [0, 1]. Every frame goes through the image path (ViT + learned decoder,
    or pixel patches).

    Example:
        >>> cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1,
        ...                       d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> adapter = VideoAdapter(cfg)
        >>> clips = torch.rand(3, 2, 1, 8, 8)
        >>> x0 = adapter.data_to_latents({"pixel_values": (clips - 0.5) / 0.5})
        >>> x0.shape, adapter.decode_latents(x0).shape
        (torch.Size([3, 8, 16]), torch.Size([3, 2, 1, 8, 8]))
    """

    modality = "video"

    def check_video(self, pixel_values) -> None:
        Fr, C, S = self.modality_config.num_frames, self.num_channels, self.image_size
        check_float_tensor("pixel_values", pixel_values, f"[B, {Fr}, {C}, {S}, {S}]", 5)
        if tuple(pixel_values.shape[1:]) != (Fr, C, S, S):
            raise ValueError(f"`pixel_values` must have shape [B, {Fr}, {C}, {S}, {S}], got {list(pixel_values.shape)}.")

    def video_to_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, F * N, Dl] of normalised clips [B, F, C, H, W] (tubelets of T frames:
        [B, F / T * N, T * C p^2], a token = one patch place over T consecutive frames; with
        `motion_compensation`, the frames centred first and their shifts appended to every token)."""
        self.check_video(pixel_values)
        cfg = self.modality_config
        B, Fr = pixel_values.shape[:2]
        T = cfg.tubelet_frames
        if T == 1 and cfg.motion_compensation is None:
            lat = self._encode_images(pixel_values.reshape(B * Fr, *pixel_values.shape[2:]))  # (B*F, N, Dl)
            return lat.reshape(B, Fr * lat.shape[1], lat.shape[2])  # (B, F*N, Dl)
        if cfg.motion_compensation is not None:
            mean, std = self._stats(pixel_values)  # (1, C, 1, 1)
            shifts = self.centroid_shifts(pixel_values * std[:, None] + mean[:, None])  # (B, F, 2)
            pixel_values = self.shift_frames(pixel_values, shifts, -mean / std)
        h = self.patchify(pixel_values.reshape(B * Fr, *pixel_values.shape[2:]))  # (B*F, N, C p^2); pixel latents only (config)
        N, Dp = h.shape[1:]
        h = h.reshape(B, Fr // T, T, N, Dp).transpose(2, 3)  # (B, F/T, N, T, C p^2)
        h = h.reshape(B, Fr // T * N, T * Dp)  # (B, F/T*N, T*C p^2)
        if cfg.motion_compensation is not None:
            motion = shifts.to(h.dtype).reshape(B, 1, 2 * Fr) / cfg.motion_scale  # (B, 1, 2F)
            h = torch.cat([h, motion.expand(B, h.shape[1], 2 * Fr)], -1)  # (B, L, T*C p^2 + 2F)
        return self.to_shared(h * cfg.latent_scale)

    # -- global motion compensation (config.motion_compensation) ---------------------------

    def centroid_shifts(self, clips: torch.Tensor) -> torch.Tensor:
        """Whole-pixel shifts [B, F, 2] (rows, columns) that move each frame's intensity centroid
        (channels summed) to the frame's centre, of clips [B, F, C, H, W] in [0, 1]; 0 for a black
        frame."""
        S = clips.shape[-1]
        mass_map = clips.float().clamp(min=0).sum(2)  # (B, F, H, W)
        grid = torch.arange(S, dtype=torch.float32, device=clips.device)
        mass = mass_map.sum((-2, -1))  # (B, F)
        safe = torch.where(mass > 0, mass, torch.ones_like(mass))
        centre = (S - 1) / 2
        com = torch.stack([(mass_map.sum(-1) * grid).sum(-1), (mass_map.sum(-2) * grid).sum(-1)], -1) / safe[..., None]  # (B, F, 2)
        com = torch.where((mass > 0)[..., None], com, torch.full_like(com, centre))
        # halves round up (not to even), so that a rigid drift by whole pixels centres every frame alike
        return torch.floor(centre - com + 0.5).clamp(-(S - 1), S - 1).long()  # (B, F, 2)

    @staticmethod
    def shift_frames(clips: torch.Tensor, shifts: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """Clips [B, F, C, H, W] with frame (b, f) moved by `shifts[b, f]` (rows, columns; whole
        pixels), `fill` [1, C, 1, 1] (per channel) shifted in."""
        B, Fr, C, S, _ = clips.shape
        x = (clips - fill[:, None]).reshape(B * Fr, C, S, S)
        padded = torch.nn.functional.pad(x, (S, S, S, S)).permute(0, 2, 3, 1)  # (B*F, 3S, 3S, C), zeros around
        d = shifts.reshape(B * Fr, 2).to(clips.device)
        ar = torch.arange(S, device=clips.device)
        rows = (S - d[:, 0])[:, None] + ar  # (B*F, S): out[i] = in[i - shift]
        cols = (S - d[:, 1])[:, None] + ar
        out = padded[torch.arange(B * Fr, device=clips.device)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B*F, S, S, C)
        return out.permute(0, 3, 1, 2).reshape(B, Fr, C, S, S) + fill[:, None]

    def image_to_latents(self, pixel_values):
        raise ValueError("A video adapter takes clips [B, F, C, H, W]: use video_to_latents.")

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, F * N, Dl] from `batch["pixel_values"]` [B, F, C, H, W] (normalised)."""
        return self.video_to_latents(_get(batch, "pixel_values", self.modality))

    def decode_normalized(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised clips [B, F, C, H, W]."""
        cfg = self.modality_config
        B, Fr = latents.shape[0], cfg.num_frames
        T = cfg.tubelet_frames
        if T == 1 and cfg.motion_compensation is None:
            frames = latents.reshape(B * Fr, latents.shape[1] // Fr, latents.shape[2])  # (B*F, N, Dl)
            return self._decode_images(frames).reshape(B, Fr, self.num_channels, self.image_size, self.image_size)
        # the inverse of video_to_latents' tubelets
        h = self.from_shared(latents) / cfg.latent_scale  # (B, F/T*N, T*C p^2 [+ 2F])
        M = cfg.motion_channels
        if M:
            motion, h = h[..., -M:].mean(1), h[..., :-M]  # (B, 2F): the tokens' copies, averaged
            S = self.image_size
            shifts = torch.round(motion.float() * cfg.motion_scale).clamp(-(S - 1), S - 1).long().reshape(B, Fr, 2)
        N = self.grid**2
        h = h.reshape(B, Fr // T, N, T, h.shape[-1] // T).transpose(2, 3)  # (B, F/T, T, N, C p^2)
        x = self.unpatchify(h.reshape(B * Fr, N, h.shape[-1]))  # (B*F, C, H, W)
        x = x.reshape(B, Fr, *x.shape[1:])  # (B, F, C, H, W)
        if M:
            mean, std = self._stats(x)
            x = self.shift_frames(x, -shifts, -mean / std)  # the frames back on their trajectories
        return x

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Clips [B, F, C, H, W] in [0, 1]."""
        x = self.decode_normalized(latents)
        mean, std = self._stats(x)
        return (x * std[:, None] + mean[:, None]).clamp(0, 1)  # stats (1, 1, C, 1, 1)


# ----------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor, fft_sizes=(64, 256, 1024)) -> torch.Tensor:
    """Multi-resolution STFT loss [Yamamoto et al. 2020, Parallel WaveGAN, Eqs. 4-6] of
    waveforms [B, S]: per resolution, spectral convergence `||M_t - M_p||_F / ||M_t||_F` plus
    the L1 distance of the log magnitudes, averaged over the resolutions (Hann window, hop n/4;
    resolutions longer than the clip are skipped).

    Example:
        >>> x = torch.randn(2, 400)
        >>> float(multi_resolution_stft_loss(x, x))
        0.0
    """
    losses = []
    for n_fft in fft_sizes:
        if n_fft > pred.shape[-1]:
            continue
        window = torch.hann_window(n_fft, device=pred.device, dtype=torch.float32)
        stft = lambda x: torch.stft(x.float(), n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
        mag_p, mag_t = stft(pred), stft(target)  # (B, n_fft / 2 + 1, frames)
        sc = torch.linalg.norm(mag_t - mag_p) / torch.linalg.norm(mag_t).clamp_min(1e-7)
        log_l1 = F.l1_loss(torch.log(mag_p.clamp_min(1e-5)), torch.log(mag_t.clamp_min(1e-5)))
        losses.append(sc + log_l1)
    if not losses:
        raise ValueError(f"Clips of {pred.shape[-1]} samples are shorter than every STFT size {tuple(fft_sizes)}.")
    return torch.stack(losses).mean()


def mdct_basis(frame_size: int) -> torch.Tensor:
    """The MDCT's basis `[M, 2M]` with the sine window folded in (Princen-Bradley), scaled so
    that overlap-adding `coefficients @ basis` frames inverts it exactly (TDAC):
    `C[k, n] = sqrt(2 / M) w[n] cos(pi / M (n + 1/2 + M/2)(k + 1/2))`, `w[n] = sin(pi (n + 1/2) / 2M)`."""
    M = frame_size
    n = torch.arange(2 * M, dtype=torch.float64)
    k = torch.arange(M, dtype=torch.float64)
    window = torch.sin(math.pi * (n + 0.5) / (2 * M))
    return math.sqrt(2 / M) * window[None] * torch.cos(math.pi / M * (n[None] + 0.5 + M / 2) * (k[:, None] + 0.5))


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, length: int, num_iters: int = 32, momentum: float = 0.99) -> torch.Tensor:
    """A waveform [B, S] whose STFT magnitude approaches `magnitude` [B, n_fft / 2 + 1, J]: fast
    Griffin-Lim [Perraudin et al. 2013, Algorithm 2] from zero phase (deterministic), Hann window."""
    window = torch.hann_window(n_fft, device=magnitude.device, dtype=magnitude.dtype)
    stft = lambda x: torch.stft(x, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    istft = lambda X: torch.istft(X, n_fft, hop_length=hop, window=window, center=True, length=length)
    angles = torch.ones_like(magnitude, dtype=torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128)
    previous = torch.zeros_like(angles)
    for _ in range(num_iters):
        rebuilt = stft(istft(magnitude * angles))  # (B, K, J)
        accelerated = rebuilt - momentum / (1 + momentum) * previous
        angles = accelerated / accelerated.abs().clamp_min(1e-8)
        previous = rebuilt
    return istft(magnitude * angles)


class AudioAdapter(_ModalityAdapter):
    """Waveforms <-> frame latents.

    - `latent_space="waveform"`: x0 = non-overlapping frames of `frame_size` samples divided by
      `audio_scale`, `[B, N / frame_size, frame_size]`; decoding multiplies back and joins the
      frames: exact, nothing to learn (the audio analogue of pixel patches). `audio_scale` (the
      training clips' RMS) must be fitted first (`fit_audio_scale`): a model that was never
      fitted refuses to encode or decode.
    - `latent_space="mdct"`: x0 = MDCT coefficients of waveform / audio_scale (hop `frame_size`,
      one token per frame, `[B, N / frame_size + 1, frame_size]`), each bin divided by
      `bin_scale` (the square root of its std in the training clips, fitted by
      `fit_audio_scale`); decoding
      (inverse MDCT, overlap-add) is exact.
    - `latent_space="spectrogram"`: x0 = log-magnitude STFT of waveform / audio_scale (Hann
      window of 2 frames, hop `frame_size`, one token per frame, `[B, N / frame_size + 1,
      frame_size + 1]`), each bin standardised by `bin_mean` / `bin_scale` (fitted); decoding
      re-estimates the phase by Griffin-Lim: the magnitudes come back, the waveform only up to
      phase (no sample-exact reconstruction).
    - `latent_space="wav2vec2"`: x0 = the Wav2Vec2 encoder's last hidden states x latent_scale
      [B, L, Dl], frozen; a `LatentDecoder` to hidden states, then a transposed convolution with
      the encoder's hop (total conv stride) and receptive field, cropped or zero-padded to
      `num_samples`, trained by MSE + `spectral_loss_weight` x `multi_resolution_stft_loss`
      (the audio task trains with weight 1).

    Inputs are `input_values` [B, num_samples], waveforms divided by `audio_scale` before
    either encoder (Wav2Vec2 without a fitted scale: as the feature extractor returns them);
    decoded waveforms are [B, num_samples] in the units of `input_values`.

    Example:
        >>> adapter = AudioAdapter(QGFDAudioConfig(num_samples=400, frame_size=40, d_model=32, num_heads=4,
        ...                                        num_layers=2, d_ff=64))
        >>> waves = torch.randn(2, 400) * 0.1
        >>> _ = adapter.fit_audio_scale(waves)
        >>> x0 = adapter.data_to_latents({"input_values": waves})
        >>> x0.shape, torch.allclose(adapter.decode_latents(x0), waves, atol=1e-6)
        (torch.Size([2, 10, 40]), True)
    """

    modality = "audio"

    def __init__(self, config, shared_cfg=None):
        config, pretrained = _resolve_adapter_config("audio", config, shared_cfg)
        super().__init__(config, shared_cfg)
        self.hop, self.receptive_field = config.hop_and_receptive_field()
        if config.latent_space == "mdct":
            self.register_buffer("bin_scale", torch.ones(config.frame_size))  # fitted, saved with the weights
            self._qgfd_init = "bin_scale"  # see QGFDPreTrainedModel._init_weights: 1 until fitted
        if config.latent_space == "spectrogram":
            self.register_buffer("bin_mean", torch.zeros(config.frame_size + 1))  # fitted, saved with the weights
            self.register_buffer("bin_scale", torch.ones(config.frame_size + 1))
            self._qgfd_init = "bin_scale"
        if config.latent_space == "wav2vec2":
            self._set_encoder(build_encoder("audio", config.backbone_config))
            width = config.decoder_width
            self.decoder = LatentDecoder(config.latent_dim, width, config.num_heads, config.decoder_layers, None, config.dropout)
            self.to_waveform = nn.ConvTranspose1d(width, 1, kernel_size=self.receptive_field, stride=self.hop)
        if pretrained is not None:
            self.load_pretrained_encoder(pretrained)

    @property
    def waveform_latents(self) -> bool:
        """Whether the latents are a fixed transform of the waveform (no encoder, nothing learned)."""
        return self.modality_config.latent_space in ("waveform", "mdct", "spectrogram")

    def _basis(self, like: torch.Tensor) -> torch.Tensor:
        """`mdct_basis` (M, 2M) on `like`'s device and dtype, built on first use: a fixed function of
        frame_size, so never a buffer (from_pretrained builds modules on the meta device and leaves
        non-persistent buffers uninitialised)."""
        cache = self.__dict__.setdefault("_mdct_cache", {})
        key = (like.device, like.dtype)
        if key not in cache:
            cache[key] = mdct_basis(self.hop).to(like.device, like.dtype)
        return cache[key]

    def mdct(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S] -> MDCT coefficients [B, S / M + 1, M] (the clip padded by M zeros each side)."""
        M = self.hop
        frames = F.pad(x, (M, M)).unfold(1, 2 * M, M)  # (B, S/M + 1, 2M)
        return frames @ self._basis(x).t()  # (B, J, M)

    def imdct(self, coefficients: torch.Tensor) -> torch.Tensor:
        """MDCT coefficients [B, J, M] -> [B, (J - 1) M] by overlap-add (inverse of `mdct`)."""
        M, (B, J, _) = self.hop, coefficients.shape
        frames = coefficients @ self._basis(coefficients)  # (B, J, 2M)
        wave = F.fold(frames.transpose(1, 2), output_size=(1, (J + 1) * M), kernel_size=(1, 2 * M), stride=(1, M))  # (B, 1, 1, (J+1) M)
        return wave.reshape(B, -1)[:, M : J * M]  # drop the padding: (B, (J - 1) M)

    _LOG_FLOOR = 1e-3  # log(|X| + floor), |X| of waveform / audio_scale

    def log_spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S] -> log-magnitude STFT frames [B, S / M + 1, M + 1] (Hann window 2M, hop M)."""
        M = self.hop
        window = torch.hann_window(2 * M, device=x.device, dtype=x.dtype)
        spec = torch.stft(x, 2 * M, hop_length=M, window=window, center=True, return_complex=True)  # (B, M + 1, J)
        return torch.log(spec.abs() + self._LOG_FLOOR).transpose(1, 2)  # (B, J, M + 1)

    def invert_log_spectrogram(self, log_mag: torch.Tensor) -> torch.Tensor:
        """Log-magnitude frames [B, J, M + 1] -> waveform [B, num_samples] (Griffin-Lim)."""
        mag = (log_mag.exp() - self._LOG_FLOOR).clamp_min(0).transpose(1, 2)  # (B, M + 1, J)
        return griffin_lim(mag.float(), 2 * self.hop, self.hop, self.modality_config.num_samples).to(log_mag.dtype)

    def _audio_scale(self, what: str) -> float:
        """The waveforms' scale: fitted (`fit_audio_scale`); for Wav2Vec2 latents None reads
        `input_values` as given (the feature extractor's per-clip normalisation, the seed's way),
        for waveform latents it refuses (the latents' scale would be arbitrary)."""
        scale = self.modality_config.audio_scale
        if scale is not None:
            return float(scale)
        if not self.waveform_latents:
            return 1.0
        raise ValueError(
            f"This audio model's `audio_scale` was never fitted, so it cannot {what}: call "
            "`model.fit_audio_scale(waveforms)` on training clips first (`qgfd-hf train` does it from the data)."
        )

    @torch.no_grad()
    def fit_audio_scale(self, input_values: torch.Tensor) -> float:
        """Set `config.audio_scale` to the RMS of waveforms [N, num_samples]; returns it."""
        self.check_audio(input_values)
        rms = float(input_values.double().pow(2).mean().sqrt())
        if not rms > 1e-8:
            raise ValueError(f"The waveforms are silent (RMS {rms:.3g}); cannot fit an audio scale.")
        if self.modality_config.latent_space == "mdct":
            coef = self.mdct(input_values.double() / rms)  # (N, J, M)
            std = coef.reshape(-1, coef.shape[-1]).std(0)
            # Half-way whitening, sqrt(std): dividing by the std itself turns the loud moments of
            # rarely used bins into 40-sigma outliers (sparse sounds); floored for unused bins.
            self.bin_scale.copy_(std.clamp_min(1e-3 * float(std.max())).sqrt().to(self.bin_scale.dtype))
        if self.modality_config.latent_space == "spectrogram":
            logs = self.log_spectrogram(input_values.double() / rms).reshape(-1, self.hop + 1)  # (N * J, M + 1)
            self.bin_mean.copy_(logs.mean(0).to(self.bin_mean.dtype))
            self.bin_scale.copy_(logs.std(0).clamp_min(1e-3).to(self.bin_scale.dtype))
        self.modality_config.audio_scale = rms
        return rms

    def check_audio(self, input_values) -> None:
        S = self.modality_config.num_samples
        check_float_tensor("input_values", input_values, f"[B, num_samples={S}]", 2)
        if input_values.shape[1] != S:
            raise ValueError(f"`input_values` must have shape [B, {S}] (num_samples), got {list(input_values.shape)}.")

    def audio_to_latents(self, input_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, Dl] of waveforms [B, num_samples]."""
        self.check_audio(input_values)
        x = input_values / self._audio_scale("encode (train on) waveforms")
        if self.modality_config.latent_space == "waveform":
            h = x.reshape(x.shape[0], -1, self.hop)  # (B, N / frame, frame)
        elif self.modality_config.latent_space == "mdct":
            h = self.mdct(x) / self.bin_scale.to(x.dtype)  # (B, N / frame + 1, frame)
        elif self.modality_config.latent_space == "spectrogram":
            h = (self.log_spectrogram(x) - self.bin_mean.to(x.dtype)) / self.bin_scale.to(x.dtype)  # (B, N / frame + 1, frame + 1)
        else:
            with self._encoder_context():
                h = self.encoder(x).last_hidden_state  # (B, L, D_w2v)
        return self.to_shared(h * self.modality_config.latent_scale)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, L, Dl] from `batch["input_values"]` [B, num_samples]."""
        return self.audio_to_latents(_get(batch, "input_values", "audio"))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, num_samples]."""
        scale = self._audio_scale("decode (sample) waveforms")
        return self.decode_scaled(latents) * scale

    def decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, num_samples] divided by `audio_scale` (the units the latents see)."""
        h = self.from_shared(latents)  # (B, L, Dm)
        space = self.modality_config.latent_space
        if space == "wav2vec2":
            h = self.decoder(h)  # (B, L, width)
            wave = self.to_waveform(h.transpose(1, 2)).squeeze(1)  # (B, (L - 1) * hop + field)
            S = self.modality_config.num_samples
            return wave[:, :S] if wave.shape[1] >= S else F.pad(wave, (0, S - wave.shape[1]))
        h = h / self.modality_config.latent_scale
        if space == "waveform":
            return h.reshape(h.shape[0], -1)  # (B, L * frame)
        if space == "spectrogram":
            return self.invert_log_spectrogram(h * self.bin_scale.to(h.dtype) + self.bin_mean.to(h.dtype))  # (B, S)
        return self.imdct(h * self.bin_scale.to(h.dtype))  # mdct: (B, (L - 1) * frame)

    def recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """Wav2Vec2 latents: the decoder's MSE + spectral_loss_weight x the multi-resolution STFT
        loss (None for waveform latents: their decoding is exact)."""
        if self.waveform_latents:
            return None
        target = _get(batch, "input_values", "audio").float() / self._audio_scale("train")
        pred = self.decode_scaled(x0).float()
        loss = F.mse_loss(pred, target)
        weight = self.modality_config.spectral_loss_weight
        if weight > 0:
            loss = loss + weight * multi_resolution_stft_loss(pred, target)
        return loss


# ----------------------------------------------------------------------------------------
# Tabular
# ----------------------------------------------------------------------------------------


_QUANTILE_EPS = 1e-3  # the quantile transform maps [0, 1] into [eps, 1 - eps]: |z| <= 3.09


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor, side: str = "right") -> torch.Tensor:
    """Piecewise-linear interpolation row by row: x [F, N] on knots xp [F, Q] (non-decreasing,
    ties allowed) with values fp [F, Q]; constant beyond the ends. On a run of tied knots,
    side="right" takes the last of them, "left" the first (numpy's and sklearn's conventions)."""
    Q = xp.shape[1]
    if side == "right":  # xp[j] <= x < xp[j + 1]
        j = torch.searchsorted(xp, x.contiguous(), right=True) - 1
        lo = j.clamp(0, Q - 2)
        below, above = j < 0, j >= Q - 1
    else:  # xp[k - 1] < x <= xp[k]
        k = torch.searchsorted(xp, x.contiguous(), right=False)
        lo = (k - 1).clamp(0, Q - 2)
        below, above = k <= 0, k >= Q
    x0, x1 = xp.gather(1, lo), xp.gather(1, lo + 1)
    f0, f1 = fp.gather(1, lo), fp.gather(1, lo + 1)
    w = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    out = f0 + w * (f1 - f0)
    out = torch.where(below, fp[:, :1].expand_as(out), out)
    return torch.where(above, fp[:, -1:].expand_as(out), out)


def category_codes(num_categories: int, width: int, seed: int) -> "torch.Tensor":
    """The fixed codes [K, width] of a categorical column's K categories: -1 / +1 on the first
    coordinate for K <= 2, a +-1 one-hot (2 e_k - 1) on the first K coordinates for K <= width,
    else random Gaussian codes (numpy, seeded) of norm sqrt(width), nearly orthogonal."""
    import numpy as np

    K = num_categories
    codes = np.zeros((K, width), dtype=np.float32)
    if K <= 2:
        codes[:, 0] = [1.0] if K == 1 else [-1.0, 1.0]
    elif K <= width:
        codes[:, :K] = 2 * np.eye(K, dtype=np.float32) - 1
    else:
        r = np.random.default_rng(seed).standard_normal((K, width)).astype(np.float32)
        codes = r / np.linalg.norm(r, axis=1, keepdims=True) * np.sqrt(width)
    return torch.tensor(codes)


class TabularAdapter(_ModalityAdapter):
    """Rows of a table <-> latents; every statistic is fitted from data by `fit_normalization`.

    Rows are float tensors `features` [B, F] in the original units, a categorical column
    holding the index of its category in `config.columns[j]["categories"]`. A model whose
    statistics were never fitted refuses to encode or decode (`fitted` buffer).

    - `latent_space="columns"`: one token per column, [B, F, Dl]. Numeric columns: the
      quantile transform (the column's empirical CDF at `num_quantiles` knots, then the
      standard normal quantile, TabDDPM's choice) or (x - mean) / std, on the token's first
      coordinate; categorical columns: their category's fixed code (`category_codes`).
      Decoding inverts both: the inverse transform (integer columns rounded into their
      training range) and the nearest code. Exact up to the knots' interpolation.
    - `latent_space="mlp"` (the seed's): standardise, then a frozen random MLP
      F -> hidden -> L * Dl (variance-preserving init) reshaped to [B, L, Dl]; a learned MLP
      decoder back to F, trained by the reconstruction loss.

    Example:
        >>> cfg = QGFDTabularConfig(columns=[{"name": "x", "kind": "float"}, {"name": "n", "kind": "int"},
        ...                                  {"name": "c", "kind": "category", "categories": ["a", "b", "c"]}],
        ...                         d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> adapter = TabularAdapter(cfg)
        >>> rows = torch.tensor([[0.5, 3.0, 2.0], [1.5, 7.0, 0.0], [9.0, 5.0, 1.0]])
        >>> adapter.fit_normalization(rows)
        >>> x0 = adapter.data_to_latents({"features": rows})
        >>> x0.shape, torch.allclose(adapter.decode_latents(x0), rows, atol=1e-4)
        (torch.Size([3, 3, 3]), True)
    """

    modality = "tabular"

    def __init__(self, config, shared_cfg=None):
        config, _ = _resolve_adapter_config("tabular", config, shared_cfg)
        super().__init__(config, shared_cfg)
        F_, D = config.num_features, config.latent_dim
        cols = config.columns
        self.label_index = None
        self.numeric = [j for j, c in enumerate(cols) if c["kind"] != "category"]
        self.integer = [j for j, c in enumerate(cols) if c["kind"] == "int"]
        self.categorical = [j for j, c in enumerate(cols) if c["kind"] == "category"]
        self.register_buffer("feature_mean", torch.zeros(F_))
        self.register_buffer("feature_std", torch.ones(F_))
        self.register_buffer("fitted", torch.zeros(()))  # 1 once `fit_normalization` has run
        self._qgfd_init = "feature_stats"  # see QGFDPreTrainedModel._init_weights
        if config.latent_space == "columns":
            self.register_buffer("quantiles", torch.zeros(F_, config.num_quantiles))  # (F, Q) knots at `_levels()`
            codes, self.code_slices = [], {}
            for j in self.categorical:
                K = len(cols[j]["categories"])
                start = sum(len(c) for c in codes)
                codes.append(category_codes(K, D, seed=j))
                self.code_slices[j] = (start, start + K)
            self.register_buffer("category_codes", torch.cat(codes) if codes else torch.zeros(0, D))  # (sum K, Dl)
            names = [c["name"] for c in cols]
            self.label_index = names.index(config.label_column) if config.label_column is not None else None
            if self.label_index is not None and self.in_shared_space:
                raise ValueError(
                    f"`label_column`={config.label_column!r} (class-conditional generation) is implemented by "
                    "TabularQGFDDiffusionModel; the shared model generates all columns jointly: pass label_column=None."
                )
            if self.label_index is not None:  # the label's training frequencies (class-conditional sampling)
                self.register_buffer("label_probs", torch.zeros(len(cols[self.label_index]["categories"])))
        else:
            L, Hd = config.num_tokens, config.tabular_hidden_dim
            first, second = nn.Linear(F_, Hd), nn.Linear(Hd, L * D)
            first._qgfd_init, second._qgfd_init = "he", "lecun"
            self.encoder_mlp = nn.Sequential(first, nn.GELU(), second)
            if config.freeze_encoder:
                self.encoder_mlp.requires_grad_(False)
            self.decoder = nn.Sequential(nn.Linear(L * D, Hd), nn.GELU(), nn.Linear(Hd, Hd), nn.GELU(), nn.Linear(Hd, F_))

    @property
    def is_fitted(self) -> bool:
        # Cached on the host once true: reading the buffer on every encode would be a device sync
        # each training step. Loading a state dict forgets the cache (`_load_from_state_dict`).
        if not self.__dict__.get("_fitted_host", False):
            self.__dict__["_fitted_host"] = bool(self.fitted > 0)
        return self.__dict__["_fitted_host"]

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_fitted_host", None)
        return super()._load_from_state_dict(*args, **kwargs)

    def check_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"This tabular model was never fitted to data, so it cannot {what}: its column statistics are "
                "placeholders and every number would be silently wrong. Call `model.fit_normalization(features)` "
                "on the training rows first (`qgfd-hf train --modality tabular` does)."
            )

    # -- statistics -------------------------------------------------------------------------

    @torch.no_grad()
    def fit_normalization(self, features: torch.Tensor) -> None:
        """Fit every column statistic from training rows [N, F] (mean, std and, for "columns"
        latents, the quantile knots); constant numeric columns get std 1 (with a warning)."""
        self.check_features(features)
        if features.shape[0] < 2:
            raise ValueError(f"`fit_normalization` needs at least 2 rows, got {features.shape[0]}.")
        x = features.float()
        std = x.std(0)
        constant = (std < 1e-8) & torch.tensor([c["kind"] != "category" for c in self.modality_config.columns])
        if bool(constant.any()):
            names = [self.modality_config.columns[j]["name"] for j in constant.nonzero().flatten().tolist()]
            logger.warning(f"Columns {names} are constant in the fitted rows; their std is set to 1.")
        self.feature_mean.copy_(x.mean(0))
        self.feature_std.copy_(torch.where(std < 1e-8, torch.ones_like(std), std))
        if self.modality_config.latent_space == "columns":
            levels = self._levels(1, x.device)[0]
            self.quantiles.copy_(torch.quantile(x.t().contiguous(), levels, dim=1).t())  # (F, Q)
            if self.label_index is not None:
                counts = torch.bincount(x[:, self.label_index].long(), minlength=self.label_probs.numel()).float()
                self.label_probs.copy_(counts / counts.sum())
        self.fitted.fill_(1.0)
        self.__dict__["_fitted_host"] = True

    def check_features(self, features) -> None:
        """ValueError unless `features` is finite [B, F] and every categorical cell is a category index."""
        cols = self.modality_config.columns
        check_float_tensor("features", features, f"[B, num_features={len(cols)}]", 2, len(cols))
        for j in self.categorical:
            v, K = features[:, j], len(cols[j]["categories"])
            bad = (v != v.round()) | (v < 0) | (v >= K)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(
                    f"Column {cols[j]['name']!r} is categorical: `features[:, {j}]` must hold the index (0..{K - 1}) of "
                    f"one of its {K} categories {cols[j]['categories'][:10]}, got {float(v[i])!r} in row {i}."
                )

    # -- "columns" latents ------------------------------------------------------------------

    def _levels(self, rows: int, device) -> torch.Tensor:
        """The quantile levels of the knots, 0 .. 1, as [rows, Q]."""
        Q = self.modality_config.num_quantiles
        return torch.linspace(0, 1, Q, device=device).expand(rows, Q).contiguous()

    def _codes(self, j: int, like: torch.Tensor) -> torch.Tensor:
        a, b = self.code_slices[j]
        return self.category_codes[a:b].to(like.dtype)  # (K, Dl)

    def _to_normal(self, x: torch.Tensor) -> torch.Tensor:
        """Numeric columns [B, Fn] -> standard-normal scores [B, Fn]."""
        idx = self.numeric
        if self.modality_config.numeric_transform == "standard":
            return (x - self.feature_mean[idx]) / self.feature_std[idx]
        knots, levels = self.quantiles[idx], self._levels(len(idx), x.device)
        xt = x.t().float()  # (Fn, B)
        u = 0.5 * (_interp(xt, knots, levels, "right") + _interp(xt, knots, levels, "left"))  # ties: their mid-level
        z = torch.special.ndtri(_QUANTILE_EPS + (1 - 2 * _QUANTILE_EPS) * u)
        return z.t().to(x.dtype)

    def _from_normal(self, z: torch.Tensor) -> torch.Tensor:
        """Standard-normal scores [B, Fn] -> numeric columns [B, Fn] in their units."""
        idx = self.numeric
        if self.modality_config.numeric_transform == "standard":
            return z * self.feature_std[idx] + self.feature_mean[idx]
        knots, levels = self.quantiles[idx], self._levels(len(idx), z.device)
        u = ((torch.special.ndtr(z.t().float()) - _QUANTILE_EPS) / (1 - 2 * _QUANTILE_EPS)).clamp(0, 1)  # (Fn, B)
        return _interp(u.contiguous(), levels.contiguous(), knots).t().to(z.dtype)

    def _columns_to_tokens(self, features: torch.Tensor) -> torch.Tensor:
        B, D = features.shape[0], self.modality_config.latent_dim
        tokens = features.new_zeros(B, features.shape[1], D)  # (B, F, Dl)
        if self.numeric:
            tokens[:, self.numeric, 0] = self._to_normal(features[:, self.numeric])
        for j in self.categorical:
            tokens[:, j] = self._codes(j, tokens)[features[:, j].long()]  # (B, Dl)
        return tokens

    def _tokens_to_columns(self, tokens: torch.Tensor) -> torch.Tensor:
        out = tokens.new_zeros(tokens.shape[0], tokens.shape[1])  # (B, F)
        if self.numeric:
            out[:, self.numeric] = self._from_normal(tokens[:, self.numeric, 0])
        if self.integer:
            lo, hi = self.quantiles[self.integer, 0], self.quantiles[self.integer, -1]  # the training range
            out[:, self.integer] = torch.maximum(torch.minimum(out[:, self.integer].round(), hi.round()), lo.round())
        for j in self.categorical:
            codes = self._codes(j, tokens)  # (K, Dl)
            scores = tokens[:, j] @ codes.t() - 0.5 * (codes**2).sum(-1)  # nearest code: -|x - c|^2 / 2 + const
            out[:, j] = scores.argmax(-1).to(out.dtype)
        return out

    def label_tokens_from_noise(self, x_T: torch.Tensor) -> torch.Tensor:
        """Class-conditional sampling: the label token [B, Dl] of each sample, its category drawn
        from the training frequencies by inverse CDF of the first coordinate of the label
        token's starting noise (so a sample's label depends on its own noise only)."""
        u = torch.special.ndtr(x_T[:, self.label_index, 0].float())  # (B,) uniform
        cdf = torch.cumsum(self.label_probs.float(), 0)
        idx = torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=cdf.numel() - 1)
        tokens = self._codes(self.label_index, x_T)[idx]  # (B, Dl)
        return tokens * self.modality_config.latent_scale

    def label_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """The label tokens [B, Dl] of the requested categories `labels` [B] (indices of the label column's)."""
        return self._codes(self.label_index, self.category_codes)[labels] * self.modality_config.latent_scale

    # -- the adapter contract ---------------------------------------------------------------

    def tabular_to_latents(self, features: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, Dl] of rows [B, F] (original units, categories as indices)."""
        self.check_fitted("encode rows")
        self.check_features(features)
        if self.modality_config.latent_space == "columns":
            tokens = self._columns_to_tokens(features)  # (B, F, Dm)
        else:
            z = (features - self.feature_mean.to(features.dtype)) / self.feature_std.to(features.dtype)  # (B, F)
            with self._encoder_context():
                tokens = self.encoder_mlp(z)  # (B, L * Dm)
            tokens = tokens.reshape(features.shape[0], self.modality_config.num_tokens, -1)  # (B, L, Dm)
        return self.to_shared(tokens * self.modality_config.latent_scale)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, L, Dl] from `batch["features"]` [B, F]."""
        return self.tabular_to_latents(_get(batch, "features", "tabular"))

    def decode_standardized(self, latents: torch.Tensor) -> torch.Tensor:
        """"mlp" latents: the decoder's standardised rows [B, F]."""
        h = self.from_shared(latents)  # (B, L, Dm)
        return self.decoder(h.reshape(h.shape[0], -1))  # (B, L*Dm) -> (B, F)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Rows [B, F] in the original units: integer columns hold integers, categorical ones
        their category's index."""
        self.check_fitted("decode latents")
        if self.modality_config.latent_space == "columns":
            return self._tokens_to_columns(self.from_shared(latents) / self.modality_config.latent_scale)
        z = self.decode_standardized(latents)
        rows = z * self.feature_std.to(z.dtype) + self.feature_mean.to(z.dtype)
        if self.integer:
            rows[:, self.integer] = rows[:, self.integer].round()
        return rows

    def recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """"mlp" latents: MSE of the learned decoder on standardised rows; "columns": None (exact)."""
        if self.modality_config.latent_space == "columns":
            return None
        features = _get(batch, "features", "tabular")
        z = (features - self.feature_mean.to(features.dtype)) / self.feature_std.to(features.dtype)
        return F.mse_loss(self.decode_standardized(x0).float(), z.float())


ADAPTERS = {"text": TextAdapter, "image": ImageAdapter, "audio": AudioAdapter, "video": VideoAdapter, "tabular": TabularAdapter}

__all__ = [
    "ADAPTERS",
    "AudioAdapter",
    "ImageAdapter",
    "LatentDecoder",
    "SharedProjection",
    "TabularAdapter",
    "TextAdapter",
    "VideoAdapter",
    "build_encoder",
    "load_pretrained_encoder",
    "griffin_lim",
    "mdct_basis",
    "multi_resolution_stft_loss",
]
