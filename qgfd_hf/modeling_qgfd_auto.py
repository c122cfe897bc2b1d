# coding=utf-8
"""The factory and the Auto classes (as transformers' `modeling_auto`): `create_qgfd_diffusion_model`
builds any modality's model with its processor and schedule, `modality_config_from_backbone` a
modality's config from a pretrained backbone, and `register_qgfd_auto_classes` registers every QGFD
config and model with `AutoConfig` / `AutoModel`. It imports every model file; no model file imports it.

Example (offline, random weights):
    >>> from transformers import T5Config
    >>> from qgfd_hf import DiffusionConfig, create_qgfd_diffusion_model
    >>> t5 = T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)
    >>> cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=32)
    >>> model, tokenizer, schedule = create_qgfd_diffusion_model("text", t5, cfg, seq_len=8)
    >>> model.latent_shape(2)
    (2, 8, 32)
"""

from __future__ import annotations

from typing import Mapping, Optional

from transformers.utils import logging

from .configuration_qgfd import MODALITY_CONFIGS, DiffusionConfig, _check_choice, all_modalities, modalities
from .modeling_qgfd import ALL_MODEL_CLASSES, MODEL_CLASSES
from .modeling_qgfd_pretrained import _load_processor, _normalisation_from_processor, _resolve_backbone, config_from_backbone
from .modeling_qgfd_shared import SharedQGFDDiffusionModel, diffusion_values, load_adapter_weights, shared_config_from_backbones
from .modeling_qgfd_backbones import PretrainedDenoiser  # noqa: F401  (the transformers backbones: fills TRANSFORMERS_BACKBONES)
from .registration_qgfd import import_modalities

# Every modality's model file, found by its files (each registers its model in MODEL_CLASSES on import).
import_modalities("modeling")

logger = logging.get_logger(__name__)


def modality_config_from_backbone(modality: str, backbone, base_cfg=None, **kwargs):
    """A modality config for an adapter or model: returns (config, pretrained name or None).

    `base_cfg` (a DiffusionConfig or QGFDConfig) supplies the sizes of the learned decoders;
    `latent_dim` is the encoder's width.
    """
    _check_choice("modality", modality, modalities())
    return config_from_backbone(modality, backbone, base_cfg, **kwargs)


def _processor_from_config(modality: str, config):
    """A processor that prepares data the way the model's config expects (no download)."""
    if modality in ("image", "video"):
        from transformers import ViTImageProcessorPil

        return ViTImageProcessorPil(
            size={"height": config.image_size, "width": config.image_size},
            image_mean=config.image_mean,
            image_std=config.image_std,
            do_convert_rgb=config.num_channels == 3,
        )
    if modality == "audio":
        from transformers import Wav2Vec2FeatureExtractor

        # Wav2Vec2 reads clips normalised one by one; waveform latents take the files' units (the
        # model's `audio_scale` is the one normalisation).
        do_normalize = getattr(config, "latent_space", "wav2vec2") == "wav2vec2"
        return Wav2Vec2FeatureExtractor(sampling_rate=config.sampling_rate, do_normalize=do_normalize, return_attention_mask=False)
    if modality == "text":
        logger.info("The text backbone was given as a config: no tokenizer (pass `tokenizer=` to get one back).")
    return None


def _default_processor(modality: str, config, name: Optional[str]):
    loaded = _load_processor(modality, name) if name is not None and modality != "tabular" else None
    return loaded if loaded is not None else _processor_from_config(modality, config)


def create_qgfd_diffusion_model(
    modality: str,
    backbone_name=None,
    diffusion_cfg: Optional[DiffusionConfig] = None,
    *,
    tokenizer=None,
    processor=None,
    scale_latents: bool = True,
    denoiser_weights: str = "pretrained",
    **kwargs,
):
    """Build a QGFD diffusion model, its tokenizer or processor, and its noise schedule.

    Args:
        modality (`str`): "text", "image", "audio", "video", "tabular" or "shared".
        backbone_name: the pretrained encoder: a Hub id or local folder (weights loaded with
            `from_pretrained`), or a transformers config (random weights; offline). None for
            `latent_space="pixels"` images/video and for tables. For "shared": a dict
            modality -> backbone.
        diffusion_cfg (`DiffusionConfig`, *optional*): the denoiser's sizes, QGFD settings and
            schedule. Without it, defaults, and `latent_dim` is the encoder's width.
        tokenizer, processor: use these instead of loading them from `backbone_name`.
        scale_latents (`bool`, defaults to `True`): text: set `latent_scale` = 1 / std of the
            token embeddings (unless `latent_scale` is given).
        denoiser_weights (`str`, defaults to `"pretrained"`): with `denoiser="pretrained"`, "random"
            keeps the backbone's stack at its random initialisation instead of copying the
            pretrained weights into it: the same architecture without pretraining (the control for
            "does pretraining help the denoiser?"). The encoder that makes the latents is loaded either way.
        **kwargs: further config fields (`seq_len`, `latent_space`, `image_size`, `num_features`,
            `backbone_qgfd`, `freeze_encoder`, `denoiser`, ...). For "shared": `modalities` and
            `modality_kwargs` (a dict modality -> its config fields). With `denoiser="pretrained"`
            the denoiser is the backbone's own Transformer stack, loaded from `backbone_name`
            when it is a Hub id or folder (random for a config), and trained.

    Returns:
        `(model, tokenizer | processor | None, schedule)`; for "shared", a dict of processors.

    Example:
        >>> from qgfd_hf import DiffusionConfig, create_qgfd_diffusion_model
        >>> cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=4)
        >>> model, processor, schedule = create_qgfd_diffusion_model("image", None, cfg, image_size=8, patch_size=2,
        ...                                                          num_channels=1)
        >>> type(model).__name__, model.latent_shape(3), schedule.num_timesteps
        ('ImageQGFDDiffusionModel', (3, 16, 4), 1000)
    """
    _check_choice("modality", modality, all_modalities())
    _check_choice("denoiser_weights", denoiser_weights, ("pretrained", "random"))
    if denoiser_weights == "random" and kwargs.get("denoiser") != "pretrained":
        raise ValueError(f"denoiser_weights='random' is for denoiser='pretrained' (the backbone's own stack), got denoiser={kwargs.get('denoiser')!r}.")
    load_stack = denoiser_weights == "pretrained"
    if modality == "shared":
        if backbone_name is not None and not isinstance(backbone_name, Mapping):
            raise ValueError("For modality='shared', `backbone_name` must be a dict modality -> backbone (Hub id, folder or config).")
        backbones = dict(backbone_name or {})
        backbone_kw = {k: kwargs[k] for k in ("backbone_config",) if k in kwargs}  # given by the caller
        if kwargs.get("denoiser") == "pretrained" and "backbone_config" not in kwargs:
            # The shared pretrained denoiser is the text backbone's stack (T5's encoder, or a BERT family's).
            if "text" not in backbones:
                raise ValueError(
                    "denoiser='pretrained' for the shared model takes the text backbone's Transformer stack (T5 or BERT "
                    "family): give a 'text' backbone in `backbone_name`, or `backbone_config=` a T5Config or BertConfig."
                )
            kwargs["backbone_config"] = _resolve_backbone(backbones["text"], "text")[0]
        config, pretrained = shared_config_from_backbones(diffusion_cfg, backbones, **kwargs)
        model = SharedQGFDDiffusionModel(config)
        processors = {}
        for m in config.modalities:
            if m in pretrained:
                load_adapter_weights(getattr(model, f"{m}_adapter"), pretrained[m])
                if m == "text" and config.denoiser == "pretrained" and "backbone_config" not in backbone_kw and load_stack:
                    model.backbone.load_pretrained_stack(model.text_adapter.encoder)  # read once, copied
            given = (tokenizer if m == "text" else None) or (processor.get(m) if isinstance(processor, Mapping) else None)
            processors[m] = given or _default_processor(m, config.modality_config(m), pretrained.get(m))
        return model, processors, model.get_schedule()

    values = diffusion_values(diffusion_cfg)
    values.update(kwargs)
    backbone_config, name = _resolve_backbone(backbone_name, modality)
    if modality == "text" and backbone_config is None:
        raise ValueError("The text model needs a text backbone (T5, BERT, ...): a Hub id, a folder or its config.")
    if modality in ("image", "video"):
        values.setdefault("latent_space", "vit" if backbone_config is not None else "pixels")
    loaded = tokenizer if modality == "text" else processor
    # Pixel patches with a (ViT) backbone: the backbone is the pretrained denoiser's only, and its
    # processor (resizing to the ViT's size) does not prepare this model's pixels.
    pixels = modality in ("image", "video") and values["latent_space"] == "pixels"
    if loaded is None and name is not None and modality != "tabular" and not pixels:
        loaded = _load_processor(modality, name)
    if modality in ("image", "video") and values["latent_space"] == "vit":
        _normalisation_from_processor(values, loaded)
    if modality in ("text", "image", "video", "audio") or backbone_config is not None:
        values["backbone_config"] = backbone_config
    config = MODALITY_CONFIGS[modality](backbone_name=name, **values)
    model = MODEL_CLASSES[modality](config)
    if name is not None:
        if model.adapter.encoder is not None:
            model.adapter.load_pretrained_encoder(name)
        if config.denoiser == "pretrained" and load_stack:
            # The denoiser's stack: a trainable copy of the encoder's weights (read once, from the
            # encoder just loaded; from `name` where no encoder makes the latents).
            model.backbone.load_pretrained_stack(model.adapter.encoder if model.adapter.encoder is not None else name)
    if modality == "text" and scale_latents and "latent_scale" not in kwargs:
        model.adapter.fit_embedding_scale()
    if loaded is None:
        loaded = _processor_from_config(modality, config)
    model.processor = loaded  # saved with the model by save_pretrained
    return model, loaded, model.get_schedule()


def register_qgfd_configs() -> None:
    """Register every QGFD config with `AutoConfig`: `registration_qgfd.register`, which `import qgfd_hf`
    runs (idempotent; `register_qgfd_auto_classes` calls it)."""
    from .registration_qgfd import register

    register()


def register_qgfd_auto_classes() -> None:
    """Register every QGFD config with `AutoConfig` and every model with `AutoModel`
    (`registration_qgfd.register_models` calls it when the first QGFD config is made)."""
    from transformers import AutoModel

    register_qgfd_configs()
    for model_cls in ALL_MODEL_CLASSES.values():
        AutoModel.register(model_cls.config_class, model_cls, exist_ok=True)


__all__ = [
    "ALL_MODEL_CLASSES",
    "MODEL_CLASSES",
    "create_qgfd_diffusion_model",
    "modality_config_from_backbone",
    "register_qgfd_auto_classes",
    "register_qgfd_configs",
]
