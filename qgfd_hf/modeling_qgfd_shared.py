# coding=utf-8
"""The shared model: `SharedQGFDDiffusionModel`, one QGFD denoiser over several modalities, each
through its own adapter (this file imports the model file of each modality in `PARTS`), and its config from
backbones (`shared_config_from_backbones`).
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .configuration_qgfd import DIFFUSION_FIELDS, DiffusionConfig, QGFDConfig, _check_choice
from .configuration_qgfd_shared import PARTS, QGFDSharedConfig
from .modeling_qgfd import ALL_MODEL_CLASSES, QGFDDiffusionOutput, QGFDPreTrainedModel, register_model_class
from .modeling_qgfd_checks import check_float_tensor
from .modeling_qgfd_adapters import ADAPTERS, build_denoiser
from .modeling_qgfd_pretrained import config_from_backbone
from .scheduling_qgfd import DDPMBetaSchedule
# The model files of the modalities the shared model serves (`configuration_qgfd_shared.PARTS`): each
# fills ADAPTERS on import. A saved shared model's folder gets them by these imports.
from .modeling_qgfd_audio import AudioQGFDDiffusionModel  # noqa: F401
from .modeling_qgfd_image import ImageQGFDDiffusionModel  # noqa: F401
from .modeling_qgfd_tabular import TabularQGFDDiffusionModel  # noqa: F401
from .modeling_qgfd_text import TextAdapter, TextQGFDDiffusionModel  # noqa: F401
from .modeling_qgfd_video import VideoQGFDDiffusionModel  # noqa: F401


def diffusion_values(diffusion_cfg) -> dict:
    """DiffusionConfig fields as config keywords (from a DiffusionConfig, a dict of its fields, a
    QGFDConfig or None); without a DiffusionConfig, latent_dim is None (derived from the encoder)."""
    if diffusion_cfg is None:
        values = DiffusionConfig().to_dict()
        values["latent_dim"] = None
        return values
    if isinstance(diffusion_cfg, DiffusionConfig):
        return diffusion_cfg.to_dict()
    if isinstance(diffusion_cfg, Mapping):
        return DiffusionConfig(**diffusion_cfg).to_dict()
    if isinstance(diffusion_cfg, QGFDConfig):
        return {name: getattr(diffusion_cfg, name) for name in DIFFUSION_FIELDS}
    raise ValueError(f"`diffusion_cfg` must be a DiffusionConfig, a dict or None, got {type(diffusion_cfg).__name__}.")


def load_adapter_weights(adapter, name: str) -> None:
    adapter.load_pretrained_encoder(name)
    if isinstance(adapter, TextAdapter):
        adapter.fit_embedding_scale()


def shared_config_from_backbones(diffusion_cfg, backbones: Mapping, modality_kwargs: Optional[Mapping] = None, **kwargs):
    values = diffusion_values(diffusion_cfg)
    if values.get("latent_dim") is None:
        values["latent_dim"] = values["d_model"]
    base = DiffusionConfig(**{k: v for k, v in values.items()})
    modality_kwargs = dict(modality_kwargs or {})
    modalities = list(kwargs.pop("modalities", list(backbones)))
    sub, pretrained = {}, {}
    for m in modalities:
        _check_choice("modality", m, tuple(PARTS))
        cfg, name = config_from_backbone(m, backbones.get(m), base, **modality_kwargs.pop(m, {}))
        sub[f"{m}_config"] = cfg
        if name is not None:
            pretrained[m] = name
    if modality_kwargs:
        raise ValueError(f"`modality_kwargs` for modalities not in {modalities}: {sorted(modality_kwargs)}.")
    values.update(kwargs)
    return QGFDSharedConfig(modalities=modalities, **sub, **values), pretrained


class SharedQGFDDiffusionModel(QGFDPreTrainedModel):
    """One QGFD denoiser shared by several modalities, each through its adapter.

    Each adapter encodes its data to the modality's latents, then maps them to the shared
    `latent_dim` with a fixed orthogonal projection (frozen with the encoder, inverted by
    pseudo-inverse for decoding); text conditioning is projected to the shared `d_model`. A
    learned modality embedding is added to the timestep embedding, so the denoiser knows
    which modality it is denoising.

    Every method of the uniform contract takes `modality=` (default: `active_modality`, the
    first of `config.modalities`; change it with `set_modality`).

    Args:
        config (`QGFDSharedConfig`), or the seed's form
        `SharedQGFDDiffusionModel(shared_cfg: DiffusionConfig, text_hf_name="t5-small",
        image_hf_name="google/vit-base-patch16-224")` (Hub ids, folders or configs; the text
        modality is then unconditional, as the seed's `text_diffusion_loss(input_ids,
        attention_mask, schedule)` takes no source text).

    Example:
        >>> from qgfd_hf import QGFDImageConfig, QGFDTabularConfig
        >>> img = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, d_model=32,
        ...                       num_heads=4, num_layers=2, d_ff=64)
        >>> tab = QGFDTabularConfig(num_features=3, latent_dim=8, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> model = SharedQGFDDiffusionModel(QGFDSharedConfig(modalities=["image", "tabular"], image_config=img,
        ...     tabular_config=tab, latent_dim=16, d_model=32, num_heads=4, num_layers=2, d_ff=64))
        >>> model.latent_shape(2, modality="image"), model.latent_shape(2, modality="tabular")
        ((2, 16, 16), (2, 3, 16))
    """

    config_class = QGFDSharedConfig
    hub_pipeline_tags = ("other", "other")  # the model card's pipeline_tag (no single Hub task fits several modalities)
    pipeline_outputs = ("samples", "the outputs of the model's active modality", 4)  # the card's example
    main_input_name = "x_t"

    def __init__(self, config, text_hf_name=None, image_hf_name=None):
        pretrained = {}
        if isinstance(config, DiffusionConfig):  # the seed's signature
            # The seed's text loss takes no source text (it conditioned on the target itself, which
            # leaks the answer), so its text modality is unconditional here; build a
            # QGFDSharedConfig with a conditional text_config for source -> target training.
            config, pretrained = shared_config_from_backbones(
                config,
                {"text": text_hf_name or "t5-small", "image": image_hf_name or "google/vit-base-patch16-224"},
                modality_kwargs={"text": {"conditional": False}},
            )
        elif text_hf_name is not None or image_hf_name is not None:
            raise ValueError("`text_hf_name` / `image_hf_name` go with a DiffusionConfig; with a QGFDSharedConfig the backbones are in it.")
        super().__init__(config)
        self.backbone = build_denoiser(config)
        for m in config.modalities:
            setattr(self, f"{m}_adapter", ADAPTERS[m](config.modality_config(m), shared_cfg=config))
        # Added to the timestep embedding, so it has the denoiser's width (a pretrained stack's own).
        self.modality_embedding = nn.Embedding(len(config.modalities), getattr(self.backbone, "width", config.d_model))
        self.active_modality = config.modalities[0]
        self.post_init()
        for m, name in pretrained.items():
            load_adapter_weights(getattr(self, f"{m}_adapter"), name)

    # -- modality selection -----------------------------------------------------------------

    def set_modality(self, modality: str) -> "SharedQGFDDiffusionModel":
        """Make `modality` the default of every method; returns the model."""
        _check_choice("modality", modality, tuple(self.config.modalities))
        self.active_modality = modality
        return self

    @contextlib.contextmanager
    def _using(self, modality: Optional[str]):
        previous = self.active_modality
        if modality is not None:
            self.set_modality(modality)
        try:
            yield
        finally:
            self.active_modality = previous

    @property
    def adapter(self):
        return getattr(self, f"{self.active_modality}_adapter")

    def _modality_config(self) -> QGFDConfig:
        return self.config.modality_config(self.active_modality)

    @property
    def is_conditional(self) -> bool:
        """Whether the active modality takes conditioning (text with `conditional=True`)."""
        return bool(self._modality_config().conditional)

    def _fixed_length(self) -> bool:
        return self.active_modality != "text"

    def check_latents(self, name, latents, modality=None):
        with self._using(modality):
            L = self._modality_config().num_latent_tokens()
            hint = f"[B, {L if self._fixed_length() else 'L'}, latent_dim={self.config.latent_dim}]"
            check_float_tensor(name, latents, hint, 3, self.config.latent_dim)
            if self._fixed_length() and latents.shape[1] != L:
                raise ValueError(f"`{name}` must have shape {hint} for modality {self.active_modality!r}, got {list(latents.shape)}.")

    # -- the contract, with modality= ---------------------------------------------------------

    def latent_shape(self, batch_size: int, modality: Optional[str] = None) -> Tuple[int, int, int]:
        with self._using(modality):
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
            return (batch_size, self._modality_config().num_latent_tokens(), self.config.latent_dim)

    def encode_condition(self, modality: Optional[str] = None, **cond_inputs):
        with self._using(modality):
            return super().encode_condition(**cond_inputs)

    def denoise(self, x_t, t, cond_tokens=None, cond_mask=None, modality: Optional[str] = None):
        with self._using(modality):
            self.check_latents("x_t", x_t)
            if self.is_conditional and cond_tokens is None:
                raise ValueError("The text modality of this model is conditional: pass `cond_tokens`.")
            if not self.is_conditional and cond_tokens is not None:
                raise ValueError(f"The {self.active_modality} modality is unconditional; pass cond_tokens=None.")
            index = torch.full((x_t.shape[0],), self.config.modalities.index(self.active_modality), device=x_t.device)
            extra = self.modality_embedding(index)  # (B, D)
            return self.backbone(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, extra_embedding=extra)

    def data_to_latents(self, batch, modality: Optional[str] = None):
        with self._using(modality):
            return super().data_to_latents(batch)

    def decode_latents(self, latents, modality: Optional[str] = None):
        with self._using(modality):
            return super().decode_latents(latents)

    def _condition_from_batch(self, batch):
        has_cond = isinstance(batch, Mapping) and batch.get("cond_input_ids") is not None
        if not self.is_conditional:
            if has_cond:
                raise ValueError(f"The {self.active_modality} modality is unconditional, but the batch has `cond_input_ids`.")
            return None, None
        if not has_cond:
            raise ValueError("The text modality is conditional: its batches need `cond_input_ids` (and `cond_attention_mask`).")
        return self.encode_condition(input_ids=batch["cond_input_ids"], attention_mask=batch.get("cond_attention_mask"))

    def compute_loss(self, batch, generator=None, modality: Optional[str] = None) -> QGFDDiffusionOutput:
        with self._using(modality):
            recon_weight = self._modality_config().recon_weight
            out = super().compute_loss(batch, generator=generator)
            # The decoder's loss is weighted by the modality's own recon_weight.
            out["loss"] = out["diffusion_loss"] + recon_weight * out["recon_loss"]
            out.loss = out["loss"]
            return out

    def forward(self, batch=None, generator=None, modality: Optional[str] = None, **batch_kwargs):
        with self._using(modality):
            return super().forward(batch, generator=generator, **batch_kwargs)

    def diffusion_forward(self, x0, t, schedule=None, cond_tokens=None, cond_mask=None, noise=None, modality: Optional[str] = None):
        with self._using(modality):
            return super().diffusion_forward(x0, t, schedule=schedule, cond_tokens=cond_tokens, cond_mask=cond_mask, noise=noise)

    def make_denoise_fn(self, cond_tokens=None, cond_mask=None, schedule=None, modality: Optional[str] = None):
        modality = modality or self.active_modality

        def denoise_fn(x_t, t):
            return self.denoise(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, modality=modality)

        return denoise_fn

    @torch.no_grad()
    def diffusion_sample(self, num_samples=None, cond_tokens=None, cond_mask=None, *, modality: Optional[str] = None, **kwargs):
        with self._using(modality):
            return super().diffusion_sample(num_samples, cond_tokens, cond_mask, **kwargs)

    def fit_latent_scale(self, batch, modality: Optional[str] = None) -> float:
        """Set the modality's `latent_scale` so that its shared latents have unit std."""
        with self._using(modality):
            cfg = self._modality_config()
            x0 = self.data_to_latents(batch).float()
            cfg.latent_scale = float(cfg.latent_scale / float(x0.std()))
            return cfg.latent_scale

    def decode_to_text(self, latents: torch.Tensor, tokenizer, skip_special_tokens: bool = True) -> list:
        """Strings from text latents [B, L, latent_dim] (nearest token embedding, then `tokenizer`)."""
        ids = self.decode_latents(latents, modality="text")
        return tokenizer.batch_decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    # -- the seed's per-modality losses ---------------------------------------------------------

    def _loss(self, modality, batch, schedule, generator):
        with self._using(modality):
            if schedule is not None and schedule.num_timesteps != self.config.num_timesteps:
                raise ValueError(f"`schedule` has {schedule.num_timesteps} steps, the model {self.config.num_timesteps}.")
            return self.compute_loss(batch, generator=generator)["loss"]

    def text_diffusion_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        cond_input_ids: Optional[torch.Tensor] = None,
        cond_attention_mask: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """The text diffusion loss (scalar). x0 are the target's token embeddings; the
        conditioning is a *source* text (`cond_input_ids`), required when the text modality is
        conditional (the seed conditioned on the target itself, which leaks the answer)."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "cond_input_ids": cond_input_ids,
                 "cond_attention_mask": cond_attention_mask}
        return self._loss("text", batch, schedule, generator)

    def image_diffusion_loss(self, pixel_values, schedule=None, generator=None) -> torch.Tensor:
        """The image loss (scalar): diffusion + recon_weight x the pixel decoder's reconstruction loss."""
        return self._loss("image", {"pixel_values": pixel_values}, schedule, generator)

    def audio_diffusion_loss(self, input_values, schedule=None, generator=None) -> torch.Tensor:
        """The audio loss (scalar): diffusion + recon_weight x the waveform decoder's loss."""
        return self._loss("audio", {"input_values": input_values}, schedule, generator)

    def video_diffusion_loss(self, pixel_values, schedule=None, generator=None) -> torch.Tensor:
        """The video loss (scalar): diffusion + recon_weight x the frame decoder's loss."""
        return self._loss("video", {"pixel_values": pixel_values}, schedule, generator)

    def tabular_diffusion_loss(self, features, schedule=None, generator=None) -> torch.Tensor:
        """The tabular loss (scalar): diffusion + recon_weight x the feature decoder's loss."""
        return self._loss("tabular", {"features": features}, schedule, generator)

    # -- output conversion (the pipeline's outputs) ------------------------------------------

    def postprocess(self, latents, data, output_type: str = "data", tokenizer=None, modality: Optional[str] = None) -> list:
        """The pipeline's outputs for the active modality (or `modality`), converted by that
        modality's model class with the modality's own config."""
        if output_type == "latent":
            return [{"latent": x} for x in latents]
        modality = modality or self.active_modality
        return ALL_MODEL_CLASSES[modality].outputs_from_data(self.config.modality_config(modality), data, output_type, tokenizer)


register_model_class(SharedQGFDDiffusionModel)

__all__ = ["SharedQGFDDiffusionModel", "load_adapter_weights", "shared_config_from_backbones"]
