# coding=utf-8
"""transformers backbones in a QGFD diffusion model: the pretrained encoders that make x0
(`build_encoder`, `load_pretrained_encoder`) and a pretrained Transformer's own stack as the
diffusion denoiser (`denoiser="pretrained"`), both QGFD-patched on request.

The model files reach this file only through `modeling_qgfd_adapters.TRANSFORMERS_BACKBONES`, which
it fills when it is imported, so that a saved pixel-space model carries neither it nor patching.

`PretrainedDenoiser` is eps_theta(x_t, t, cond) built from the backbone's Transformer layers:

| modality     | stack (`backbone_config`)                        | positions                              | conditioning tokens |
|--------------|--------------------------------------------------|----------------------------------------|---------------------|
| text         | T5's encoder stack (`T5Stack`, mT5 alike)        | T5's relative position bias            | appended to the sequence |
| image, video | ViT's layers and final LayerNorm (`ViTModel`)    | ViT's learned ones (+ a frame embedding for video) | appended |
| audio        | Wav2Vec2's Transformer encoder (`Wav2Vec2Model`) | Wav2Vec2's convolutional ones          | appended |
| text         | BERT's / RoBERTa's encoder, DistilBERT's transformer (`BertModel`, ...) | their absolute ones (latents + conditioning up to the table's length) | appended (segment 1 where there are two) |
| shared       | the text backbone's stack (T5 or BERT family)    | T5's relative bias (any latent length); BERT's absolute ones (up to the table's length) | appended |

None of these stacks has cross-attention (T5's decoder does, but its self-attention is causal and
its position bias was trained for causal use only), so conditioning tokens always join the
sequence: [prefix; latents; conditioning], with padded conditioning tokens masked out. Latents
come first so that right-padding the conditioning moves no latent: T5's relative positions, and so
the outputs, do not depend on how long the batch's longest source text is. ViT keeps its CLS token
as a prefix (its layers were trained with it). Only the text model is conditional today.

How the timestep gets in: adaLN-Zero (DiT), added around the pretrained layers without changing
them. Each layer's two sub-layers (self-attention and feed-forward: T5's `SelfAttention` /
`DenseReluDense`, ViT's `attention` / `mlp`, Wav2Vec2's `attention` / `feed_forward`) get a
forward pre-hook that modulates their input, `u * (1 + scale) + shift`, and a forward hook that
gates their output, `o * (1 + gate)`, with (shift, scale, gate) per sub-layer predicted from the
timestep embedding by a per-layer zero-initialised linear map. That input is the normalised
stream in every family (pre-LN T5 and ViT; post-LN Wav2Vec2 and BERT, whose sub-layers read the
output of a LayerNorm), so this is DiT's `modulate(norm(x))` placed where each family normalises.
BERT's sub-layer modules also hold the residual and LayerNorm, so there the hooks sit on the
attention's and feed-forward's first and last modules instead (`_BertFamily`). The gate
is `1 + gate`, not DiT's `gate`: zero-initialised, every layer then computes exactly what the
pretrained layer computed (DiT's zero gate would switch the pretrained layers off). The layer
modules, their parameter names and transformers' attention dispatch are untouched, so
`patch_model` puts QGFD into their self-attention and the pretrained weights load by name.

Weights: the stack is built from `backbone_config` (random), then `load_pretrained_stack` copies
the pretrained weights in, from a Hub id / folder or from an encoder already loaded (the factory
passes the modality's frozen encoder, so the checkpoint is read once). The stack is a separate
copy: it trains, while the encoder that makes x0 stays frozen. Parts of the backbone the denoiser
does not use (T5's token embeddings, ViT's patch embedding, Wav2Vec2's convolutional feature
encoder and projection) are removed from the copy. Everything else trains: the stack, the input
and output projections, the timestep embedding, the modulations.

How each family is built, loaded and run (`_T5Family`, `_ViTFamily`, `_Wav2Vec2Family`,
`_BertFamily`, `_DistilBertFamily`): `modeling_qgfd_pretrained_stacks.py`.

Shapes: `B` batch, `L` latent tokens, `Lc` conditioning tokens, `P` prefix tokens (ViT's CLS),
`Dl` latent_dim, `D` d_model (conditioning width), `W` the stack's width.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import transformers
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils import logging

from .configuration_qgfd import MODALITY_CONFIGS, QGFDConfig, pretrained_stacks, qgfd_settings
from .modeling_qgfd import _zero_init, modulate
from .modeling_qgfd_adapters import TRANSFORMERS_BACKBONES
from .modeling_qgfd_checks import check_condition, check_float_tensor, check_timesteps
from .modeling_qgfd_embeddings import TimestepEmbedding
from .modeling_qgfd_pretrained_stacks import _FAMILIES, _ViTFamily

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# Pretrained encoders
# ----------------------------------------------------------------------------------------

_T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


def build_encoder(modality: str, backbone_config) -> nn.Module:
    """The pretrained encoder's architecture from its config, with random weights (no download).

    text: T5's encoder (`T5EncoderModel`; mT5, umT5 alike) or any encoder-only model
    (`AutoModel`); image: `ViTModel` without its pooler (or `AutoModel`); audio: `AutoModel`
    (Wav2Vec2Model and friends).
    """
    # A saved backbone config may ask for "qgfd" (an encoder saved QGFD-patched): then "qgfd" and its
    # wrappers must be in place before the encoder is built, so that its layers are prepared and a
    # learned alpha loads. A backbone that does not ask for it (and a model without one, such as a
    # pixel-space image model) leaves transformers as it was, also when loaded with trust_remote_code.
    if getattr(backbone_config, "_attn_implementation", None) == "qgfd" or getattr(backbone_config, "qgfd", None):
        from .patching_qgfd import register_qgfd_attention

        register_qgfd_attention()

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


def patch_model(model, **settings):
    """`patching_qgfd.patch_model` (imported on first use; it registers "qgfd" and installs the wrappers)."""
    from .patching_qgfd import patch_model as patch

    return patch(model, **settings)


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


def config_from_backbone(modality: str, backbone, base_cfg=None, **kwargs):
    """A modality config for an adapter or model: returns (config, pretrained name or None).
    The modality's config file must have been imported (it fills `MODALITY_CONFIGS`).

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
# adaLN-Zero around a pretrained sub-layer: two hooks
# ----------------------------------------------------------------------------------------

# The (shift, scale, gate) [B, W] of the current call sit in the hooked module's __dict__ under this
# key, set by `PretrainedDenoiser.run_stack` and removed after it. Outside that call the hooks pass
# everything through, so the stack called directly is the plain (QGFD-patched) pretrained stack.
_ADALN_KEY = "_qgfd_adaln"


def _adaln_modulate_input(module: nn.Module, args, kwargs):
    """Forward pre-hook: the sub-layer's input u [B, L', W] -> u * (1 + scale) + shift."""
    mods = module.__dict__.get(_ADALN_KEY)
    if mods is None:
        return None
    shift, scale, _ = mods
    if args:
        return (modulate(args[0], shift, scale),) + tuple(args[1:]), kwargs
    kwargs = dict(kwargs, hidden_states=modulate(kwargs["hidden_states"], shift, scale))
    return args, kwargs


def _adaln_gate_output(module: nn.Module, args, output):
    """Forward hook: the sub-layer's output o [B, L', W] -> o * (1 + gate) (first element of a tuple)."""
    mods = module.__dict__.get(_ADALN_KEY)
    if mods is None:
        return None
    gate = 1 + mods[2][:, None]  # (B, 1, W)
    if isinstance(output, tuple):
        return (output[0] * gate,) + tuple(output[1:])
    return output * gate


# ----------------------------------------------------------------------------------------
# The denoiser
# ----------------------------------------------------------------------------------------


class PretrainedDenoiser(nn.Module):
    """eps_theta(x_t, t, cond) whose body is a pretrained backbone's Transformer stack (see the
    module docstring), QGFD-patched with the config's `qgfd_*` settings.

    1. latents to the stack's width (`in_proj`), plus the stack's own input positions (ViT);
    2. timestep embedding c (sinusoids + MLP), plus an optional extra embedding;
    3. the sequence [prefix; latents; conditioning tokens (LayerNorm, then `cond_proj` to W)] and
       its mask;
    4. the stack, each layer's sub-layers modulated by adaLN-Zero from c;
    5. the latent positions of the output, modulated by c (zero-initialised shift and scale),
       then `out_proj` (zero-initialised, as DiT: the untrained model predicts 0).

    Args:
        config (`QGFDConfig`): `denoiser="pretrained"`, `backbone_config` (a family of
            its config's `pretrained_stacks`), `latent_dim`, `d_model` (conditioning width), `num_timesteps`,
            the `qgfd_*` settings; video: `num_frames`.
        conditional (`bool`, *optional*): take conditioning tokens; default `config.conditional`.

    The stack is random until `load_pretrained_stack` (the factory calls it when the backbone is
    a Hub id or folder).

    Example:
        >>> from transformers import ViTConfig
        >>> from qgfd_hf import QGFDImageConfig
        >>> vit = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        ...                 image_size=16, patch_size=4)
        >>> cfg = QGFDImageConfig(backbone_config=vit, denoiser="pretrained", d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> net = PretrainedDenoiser(cfg)
        >>> net(torch.randn(2, 16, 32), torch.tensor([3, 500])).shape
        torch.Size([2, 16, 32])
    """

    def __init__(self, config, conditional: Optional[bool] = None):
        super().__init__()
        backbone_config = getattr(config, "backbone_config", None)
        model_type = getattr(backbone_config, "model_type", None)
        if model_type not in _FAMILIES:
            usable = ", ".join(f"{m}: {'/'.join(t)}" for m, t in pretrained_stacks().items())
            raise ValueError(
                f"The pretrained denoiser needs a backbone_config with a usable Transformer stack ({usable}), "
                f"got {'None' if backbone_config is None else repr(model_type)}."
            )
        self.family = _FAMILIES[model_type]  # stateless helper, not a module
        self.conditional = bool(getattr(config, "conditional", False)) if conditional is None else bool(conditional)
        self.latent_dim, self.d_model, self.num_timesteps = config.latent_dim, config.d_model, config.num_timesteps
        self.num_frames = int(getattr(config, "num_frames", 1)) if config.modality == "video" else 1
        self._backbone_config = copy.deepcopy(backbone_config)  # for `load_pretrained_stack` (unpatched)

        # The stack: its own copy of the backbone config, so patching it leaves the encoder's alone.
        from .patching_qgfd import patch_model  # registers "qgfd" and installs the wrappers

        self.stack = self.family.build(backbone_config)
        patch_model(self.stack, **qgfd_settings(config).to_dict())
        self.width = width = self.family.width(self.stack.config)
        num_layers = len(self.family.layers(self.stack))

        self.in_proj = nn.Linear(config.latent_dim, width)
        if self.num_frames > 1:
            self.frame_embed = nn.Embedding(self.num_frames, width)  # which frame a patch is in (ViT positions are per frame)
        self.time_embed = TimestepEmbedding(width)
        if self.conditional:
            self.cond_norm = nn.LayerNorm(config.d_model, eps=1e-6)
            self.cond_proj = nn.Linear(config.d_model, width)
        # adaLN-Zero: per layer (shift, scale, gate) x (self-attention, feed-forward) from c; zero at the start.
        self.adaLN_modulation = nn.ModuleList(
            nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(width, 6 * width))) for _ in range(num_layers)
        )
        self.adaLN_final = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(width, 2 * width)))
        self.out_proj = _zero_init(nn.Linear(width, config.latent_dim))
        for layer in self.family.layers(self.stack):
            for first, last in self.family.hooked(layer):
                first.register_forward_pre_hook(_adaln_modulate_input, with_kwargs=True)
                last.register_forward_hook(_adaln_gate_output)

    # -- weights ------------------------------------------------------------------------------

    @torch.no_grad()
    def load_pretrained_stack(self, source) -> None:
        """Copy the backbone's pretrained weights into the stack.

        Args:
            source (`str` or `nn.Module`): a Hub id or folder (read with `from_pretrained`), or an
                encoder of the same backbone already loaded (the modality adapter's `encoder`), which
                saves reading the checkpoint twice.
        """
        if isinstance(source, str):
            encoder = build_encoder(self.family.modality, copy.deepcopy(self._backbone_config))
            load_pretrained_encoder(encoder, source)
        elif isinstance(source, nn.Module):
            encoder = source
        else:
            raise ValueError(f"`source` must be a Hub id, a folder or a loaded encoder module, got {type(source).__name__}.")
        state = self.family.encoder_state_dict(encoder)
        wanted = [k for k in self.stack.state_dict() if ".qgfd_alpha." not in k]  # QGFD alphas are the denoiser's own
        missing = [k for k in wanted if k not in state]
        if missing:
            raise ValueError(f"{type(encoder).__name__} lacks weights of the denoiser's stack: {missing[:5]}{' ...' if len(missing) > 5 else ''}.")
        bad = [k for k in wanted if state[k].shape != self.stack.state_dict()[k].shape]
        if bad:
            raise ValueError(f"{type(encoder).__name__} has weights of other shapes than the denoiser's stack: {bad[:5]}.")
        self.stack.load_state_dict({k: state[k] for k in wanted}, strict=False)
        logger.info(f"Pretrained denoiser: {len(wanted)} stack tensors loaded from {source if isinstance(source, str) else type(source).__name__}.")

    # -- forward ------------------------------------------------------------------------------

    def _layer_sublayers(self) -> List[Tuple[Tuple[nn.Module, nn.Module], Tuple[nn.Module, nn.Module]]]:
        return [self.family.hooked(layer) for layer in self.family.layers(self.stack)]

    def embed_latents(self, x_t: torch.Tensor) -> torch.Tensor:
        """Latents [B, L, Dl] -> tokens [B, L, W]: `in_proj`, plus ViT's positions (per frame, plus the frame embedding)."""
        h = self.in_proj(x_t)  # (B, L, W)
        if isinstance(self.family, _ViTFamily):
            B, L, W = h.shape
            if L % self.num_frames:
                raise ValueError(f"Latent length {L} is not a multiple of num_frames={self.num_frames}.")
            n = L // self.num_frames
            pos = self.family.patch_positions(self.stack, n).to(h.dtype)  # (1, N, W)
            h = h.view(B, self.num_frames, n, W) + pos[:, None]  # (B, F, N, W)
            if self.num_frames > 1:
                h = h + self.frame_embed.weight[None, :, None].to(h.dtype)  # (1, F, 1, W)
            h = self.stack.embeddings.dropout(h.reshape(B, L, W))
        return h

    def run_stack(self, tokens: torch.Tensor, c: Optional[torch.Tensor], mask: Optional[torch.Tensor] = None,
                  token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stack on a token sequence [B, L', W], with adaLN-Zero from c [B, W] (None: the plain stack).

        Returns the stack's last hidden states [B, L', W]. With the modulations at zero (as
        initialised) this equals the pretrained stack's own forward on `tokens` (as `inputs_embeds`:
        BERT-family stacks add their positions and token types, `token_type_ids` [B, L'], to them).
        """
        if c is None:
            return self.family.run(self.stack, tokens, mask, token_type_ids)
        sublayers = self._layer_sublayers()
        try:
            for pairs, adaln in zip(sublayers, self.adaLN_modulation):
                mods = adaln(c).chunk(6, dim=-1)  # 6 x (B, W)
                for (first, last), part in zip(pairs, (mods[:3], mods[3:])):
                    first.__dict__[_ADALN_KEY] = last.__dict__[_ADALN_KEY] = part
            return self.family.run(self.stack, tokens, mask, token_type_ids)
        finally:
            for pairs in sublayers:
                for module in (m for pair in pairs for m in pair):
                    module.__dict__.pop(_ADALN_KEY, None)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        extra_embedding: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the model output for x_t at step t (same contract as `QGFDDiffusionBackbone`).

        Args:
            x_t (`[B, L, latent_dim]`), t (`[B]` or an int), cond_tokens (`[B, Lc, d_model]`, *optional*),
            cond_mask (`[B, Lc]`, 1 = valid, *optional*), extra_embedding (`[B, W]`, *optional*, added to c).

        Returns:
            `torch.FloatTensor` `[B, L, latent_dim]`.
        """
        check_float_tensor("x_t", x_t, f"[B, L, latent_dim={self.latent_dim}]", 3, self.latent_dim)
        B, L, _ = x_t.shape
        t = check_timesteps(t, B, self.num_timesteps, x_t.device)
        cond_mask = check_condition(cond_tokens, cond_mask, B, self.d_model)
        if cond_tokens is not None and not self.conditional:
            raise ValueError("This denoiser is unconditional; pass cond_tokens=None.")
        if extra_embedding is not None:
            check_float_tensor("extra_embedding", extra_embedding, f"[B, {self.width}]", 2, self.width)

        # 1. Latents to the stack's width, with the stack's positions.
        h = self.embed_latents(x_t)  # (B, L, W)
        # 2. Time (and extra) embedding c.
        c = self.time_embed(t)  # (B, W)
        if extra_embedding is not None:
            c = c + extra_embedding.to(c.dtype)
        # 3. The sequence [prefix; latents; conditioning] and its mask (None: every token attends everywhere).
        tokens, mask = h, None
        prefix = self.family.prefix(self.stack, B)  # (B, P, W) or None
        P = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            tokens = torch.cat([prefix.to(h.dtype), tokens], dim=1)  # (B, P + L, W)
        if cond_tokens is not None:
            cond = self.cond_proj(self.cond_norm(cond_tokens.to(h.dtype)))  # (B, Lc, W)
            tokens = torch.cat([tokens, cond], dim=1)  # (B, P + L + Lc, W)
            if cond_mask is not None:
                mask = torch.cat([cond_mask.new_ones(B, P + L), cond_mask], dim=1)  # (B, P + L + Lc) bool
        limit = self.family.position_limit(self.stack.config)
        if limit is not None and tokens.shape[1] > limit:
            Lc = tokens.shape[1] - P - L
            raise ValueError(
                f"The {self.stack.config.model_type} stack has absolute positions for {limit} tokens, but the denoiser's sequence "
                f"has {tokens.shape[1]} ({L} latents + {Lc} conditioning tokens); shorten the latents or the source text."
            )
        types = self.family.token_types(self.stack, P + L, tokens.shape[1] - P - L, tokens)  # (B, P + L + Lc) or None
        # 4. The pretrained stack with adaLN-Zero.
        out = self.run_stack(tokens, c, mask, types)[:, P : P + L]  # (B, L, W)
        # 5. Output head.
        shift, scale = self.adaLN_final(c).chunk(2, dim=-1)  # each (B, W)
        return self.out_proj(modulate(out, shift, scale))  # (B, L, Dl)


TRANSFORMERS_BACKBONES.update(
    build_encoder=build_encoder,
    config_from_backbone=config_from_backbone,
    load_pretrained_encoder=load_pretrained_encoder,
    patch_model=patch_model,
    pretrained_denoiser=lambda config: PretrainedDenoiser(config),
)

__all__ = ["PretrainedDenoiser", "build_encoder", "config_from_backbone", "load_pretrained_encoder"]
