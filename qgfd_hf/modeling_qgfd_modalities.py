# coding=utf-8
"""The QGFD diffusion models for text, images, audio, video and tables, the shared model,
and the factory `create_qgfd_diffusion_model`.

Every model is a `QGFDPreTrainedModel`: a modality adapter (`modeling_qgfd_adapters`) and a
`QGFDDiffusionBackbone`, with the uniform contract documented on `QGFDPreTrainedModel`.
The models keep the seed's method names (`encode_text`, `image_to_latents`,
`diffusion_forward`, ...).

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

import contextlib
from typing import Mapping, Optional, Tuple

import torch
import torch.nn as nn
from transformers import PretrainedConfig
from transformers.utils import logging

from .configuration_qgfd import (
    ALL_MODALITIES,
    DIFFUSION_FIELDS,
    MODALITIES,
    MODALITY_CONFIGS,
    DiffusionConfig,
    QGFDAudioConfig,
    QGFDConfig,
    QGFDImageConfig,
    QGFDSharedConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
    _check_choice,
)
from .modeling_qgfd import (
    QGFDDiffusionBackbone,
    QGFDDiffusionOutput,
    QGFDPreTrainedModel,
    check_timesteps,
    classifier_free_guidance,
)
from .modeling_qgfd_adapters import (
    ADAPTERS,
    AudioAdapter,
    ImageAdapter,
    TabularAdapter,
    TextAdapter,
    VideoAdapter,
    _load_processor,
    _normalisation_from_processor,
    _resolve_backbone,
    modality_config_from_backbone,
)
from .modeling_qgfd_pretrained import PretrainedDenoiser
from .scheduling_qgfd import DDPMBetaSchedule, diffusion_target, predict_x0_and_eps, q_sample, sample_loop

logger = logging.get_logger(__name__)

def build_denoiser(config) -> nn.Module:
    """The denoiser a config asks for (`config.denoiser`): "qgfd" is `QGFDDiffusionBackbone`,
    "pretrained" is `modeling_qgfd_pretrained.PretrainedDenoiser` (the backbone's own stack)."""
    denoiser = getattr(config, "denoiser", "qgfd")
    if denoiser == "pretrained":
        return PretrainedDenoiser(config)
    if denoiser != "qgfd":
        raise ValueError(f"Unknown denoiser {denoiser!r}; allowed: 'qgfd', 'pretrained'.")
    return QGFDDiffusionBackbone(config)


# ----------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------


class TextQGFDDiffusionModel(QGFDPreTrainedModel):
    """Text diffusion in a T5's token-embedding space (Diffusion-LM), conditioned on a source
    text through the T5 encoder.

    - `data_to_latents({"input_ids", "attention_mask"})` -> x0 [B, seq_len, latent_dim]
      (padded with the pad token to `seq_len`);
    - `encode_condition(input_ids=..., attention_mask=...)` -> T5 encoder states of the
      source text projected to `d_model` [B, Lc, d_model], mask [B, Lc];
    - `decode_latents(latents)` -> token ids [B, L] (nearest embedding);
      `decode_to_text(latents, tokenizer)` -> strings;
    - training batches: `input_ids` / `attention_mask` (the target text) and, when
      conditional, `cond_input_ids` / `cond_attention_mask` (the source text).

    Example:
        >>> from transformers import T5Config
        >>> t5 = T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)
        >>> model = TextQGFDDiffusionModel(QGFDTextConfig(backbone_config=t5, seq_len=8, d_model=32, num_heads=4,
        ...                                               num_layers=2, d_ff=64))
        >>> ids = torch.tensor([[5, 9, 1], [7, 1, 0]])
        >>> batch = {"input_ids": ids, "cond_input_ids": ids}
        >>> model.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"].item() > 0
        True
        >>> model.decode_latents(model.data_to_latents(batch))[:, :3].tolist()
        [[5, 9, 1], [7, 1, 0]]
    """

    config_class = QGFDTextConfig
    main_input_name = "input_ids"

    def __init__(self, config: QGFDTextConfig):
        super().__init__(config)
        self.adapter = TextAdapter(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def _fixed_length(self) -> bool:
        return False  # any length up to the positions' limit (the seed encodes unpadded batches)

    def _condition_from_batch(self, batch):
        has_cond = isinstance(batch, Mapping) and batch.get("cond_input_ids") is not None
        if not self.is_conditional:
            if has_cond:
                raise ValueError("This text model is unconditional, but the batch has `cond_input_ids`.")
            return None, None
        if not has_cond:
            raise ValueError("This text model is conditional: its batches need `cond_input_ids` (and `cond_attention_mask`).")
        return self.encode_condition(input_ids=batch["cond_input_ids"], attention_mask=batch.get("cond_attention_mask"))

    # -- the seed's methods -----------------------------------------------------------------

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Clean latents x0 [B, L, latent_dim]: the tokens' T5 embeddings x latent_scale (no padding added)."""
        return self.adapter.embed(input_ids, attention_mask)

    def diffusion_forward(
        self,
        x0_embeds: torch.Tensor,
        t: torch.Tensor,
        cond_input_ids: Optional[torch.Tensor] = None,
        cond_attention_mask: Optional[torch.Tensor] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        noise: Optional[torch.Tensor] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        drop_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The diffusion loss (scalar) of x0_embeds [B, L, D] at timesteps t [B], conditioned on
        a source text (`cond_input_ids`) or on ready `cond_tokens`; the null source text for the
        samples where `drop_condition` [B] is True."""
        if cond_input_ids is not None:
            if cond_tokens is not None:
                raise ValueError("Pass either `cond_input_ids` or `cond_tokens`, not both.")
            cond_tokens, cond_mask = self.encode_condition(input_ids=cond_input_ids, attention_mask=cond_attention_mask)
        return super().diffusion_forward(x0_embeds, t, schedule=schedule, cond_tokens=cond_tokens, cond_mask=cond_mask, noise=noise,
                                         drop_condition=drop_condition)

    def decode_embeddings(self, latents: torch.Tensor) -> torch.Tensor:
        """Token logits [B, L, V] (2 x E^T - ||E||^2: the argmax is the nearest token embedding)."""
        self.check_latents("latents", latents)
        return self.adapter.decode_embeddings(latents)

    def decode_to_text(self, latents: torch.Tensor, tokenizer, skip_special_tokens: bool = True) -> list:
        """Strings from latents [B, L, D], through the nearest embedding and `tokenizer`."""
        return tokenizer.batch_decode(self.decode_latents(latents).tolist(), skip_special_tokens=skip_special_tokens)

    def make_denoise_fn(self, cond_tokens=None, cond_mask=None, schedule=None, clamp: Optional[bool] = None, class_labels=None,
                        guidance_scale: float = 1.0):
        """`denoise_fn(x_t, t)`; with `clamp` (default `config.clamp_to_embeddings`) the predicted
        x0 is replaced by its nearest token embedding, and the output re-expressed for the
        prediction type (Diffusion-LM's clamping trick). Guidance (`guidance_scale`) comes first,
        then the clamping of the guided x0."""
        base = super().make_denoise_fn(cond_tokens, cond_mask, schedule, class_labels=class_labels, guidance_scale=guidance_scale)
        clamp = self.config.clamp_to_embeddings if clamp is None else clamp
        if not clamp:
            return base
        schedule = schedule if schedule is not None else self.get_schedule()
        ptype = self.config.prediction_type

        def clamped(x_t, t):
            x0, _ = predict_x0_and_eps(base(x_t, t), x_t, t, schedule, ptype)
            x0 = self.adapter.round_latents(x0)
            a = schedule.gather("sqrt_alphas_cumprod", t, x_t)
            s = schedule.gather("sqrt_one_minus_alphas_cumprod", t, x_t)
            eps = (x_t - a * x0) / s
            if ptype == "epsilon":
                return eps
            if ptype == "sample":
                return x0
            return a * eps - s * x0  # v

        return clamped

    @torch.no_grad()
    def diffusion_sample(
        self,
        num_samples: Optional[int] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        *,
        cond_input_ids: Optional[torch.Tensor] = None,
        cond_attention_mask: Optional[torch.Tensor] = None,
        clamp: Optional[bool] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        guidance_scale: float = 1.0,
        class_labels=None,
        **sampler_kwargs,
    ) -> torch.Tensor:
        """Sample latents [B, seq_len, D] that `decode_to_text` turns into strings.

        Args:
            num_samples (`int`, *optional*): B (default: the conditioning's batch size).
            cond_tokens, cond_mask: from `encode_condition`; or, instead,
            cond_input_ids (`[B, Lc]`), cond_attention_mask (`[B, Lc]`): the source texts.
            clamp (`bool`, *optional*): Diffusion-LM's clamping (default `config.clamp_to_embeddings`).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance against the learned null
                source text (a model trained with `cond_dropout_prob` > 0); 1 = none.
            **sampler_kwargs: `sampler`, `num_inference_steps`, `eta`, `generator`, `progress`, ... as
                `QGFDPreTrainedModel.diffusion_sample`.
        """
        if cond_input_ids is not None:
            if cond_tokens is not None:
                raise ValueError("Pass either `cond_input_ids` or `cond_tokens`, not both.")
            cond_tokens, cond_mask = self.encode_condition(input_ids=cond_input_ids, attention_mask=cond_attention_mask)
        if self.is_conditional and cond_tokens is None:
            raise ValueError("This text model is conditional: pass `cond_input_ids` (the source texts).")
        if num_samples is None:
            num_samples = cond_tokens.shape[0] if cond_tokens is not None else 1
        if cond_tokens is not None and cond_tokens.shape[0] != num_samples:
            raise ValueError(f"`num_samples`={num_samples} differs from the conditioning's batch size {cond_tokens.shape[0]}.")
        _, guidance_scale = self.check_guidance(num_samples, class_labels, guidance_scale)
        schedule = schedule if schedule is not None else self.get_schedule()

        return sample_loop(
            self.make_denoise_fn(cond_tokens, cond_mask, schedule, clamp=clamp, guidance_scale=guidance_scale),
            self.latent_shape(num_samples),
            schedule,
            prediction_type=self.config.prediction_type,
            device=self.device,
            dtype=self.dtype,
            progress=sampler_kwargs.pop("progress", False),
            **sampler_kwargs,
        )


# ----------------------------------------------------------------------------------------
# Images, video, audio, tables
# ----------------------------------------------------------------------------------------


class ImageQGFDDiffusionModel(QGFDPreTrainedModel):
    """Unconditional image diffusion over ViT patch latents (with a learned pixel decoder) or
    over pixel patches (`latent_space="pixels"`).

    - `data_to_latents({"pixel_values"})` / `image_to_latents(pixel_values)`: normalised
      images [B, C, H, W] (as the image processor returns them) -> x0 [B, N, latent_dim];
    - `decode_latents(latents)` -> images [B, C, H, W] in [0, 1];
    - `compute_loss` adds the decoder's reconstruction loss (ViT latents);
    - `fit_normalization(images)` fits the statistics from training images (pixels: per-channel
      mean and std; ViT latents: the per-channel latent mean and std; then the latent scale);
      a config with `normalization_fitted=False` refuses to train or sample before it.

    Example:
        >>> model = ImageQGFDDiffusionModel(QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2,
        ...                                                 num_channels=1, d_model=32, num_heads=4, num_layers=2, d_ff=64))
        >>> x0 = model.image_to_latents(torch.rand(2, 1, 8, 8) * 2 - 1)
        >>> model.denoise(x0, torch.tensor([0, 10])).shape, model.decode_latents(x0).shape
        (torch.Size([2, 16, 4]), torch.Size([2, 1, 8, 8]))
    """

    config_class = QGFDImageConfig
    main_input_name = "pixel_values"
    _adapter_class = ImageAdapter
    _data_name = "images"  # what `fit_normalization` takes, for its messages

    def __init__(self, config: QGFDImageConfig):
        super().__init__(config)
        self.adapter = self._adapter_class(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def image_to_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, N, latent_dim] of normalised images [B, C, H, W]."""
        self._check_fitted()
        return self.adapter.image_to_latents(pixel_values)

    @property
    def sample_clip_value(self) -> Optional[float]:
        """Pixel patches: latents are (x - mean) / std x latent_scale of x in [0, 1], so bounded by this."""
        cfg = self.config
        if cfg.latent_space != "pixels":
            return None
        bound = max(max(abs(0 - m), abs(1 - m)) / s for m, s in zip(cfg.image_mean, cfg.image_std))
        if getattr(cfg, "motion_channels", 0):  # video shifts: at most S - 1 pixels
            bound = max(bound, (cfg.image_size - 1) / cfg.motion_scale)
        return float(bound * cfg.latent_scale)

    # -- fitted statistics ----------------------------------------------------------------

    def _check_data(self, data: torch.Tensor) -> None:
        self.adapter.check_images(data)

    @torch.no_grad()
    def fit_normalization(self, data: torch.Tensor) -> None:
        """Fit the statistics from training images [N, C, H, W] (clips [N, F, C, H, W] for
        video) in [0, 1] (not normalised).

        1. Pixel latents: `image_mean` / `image_std` become the data's per-channel mean and std
           (so latents have about unit spread); the model's processor, if any, takes them too.
           ViT latents keep the ViT's pixel normalisation; `latent_mean` / `latent_std` become
           the per-channel mean and std of the ViT's patch states (RAE's normalisation).
        2. `latent_scale` gives the latents std 1 / `noise_shift` (`fit_latent_scale`, then
           divided by the shift: the shifted schedule).
        `normalization_fitted` becomes True.
        """
        cfg = self.config
        self._check_data(data)
        if data.shape[0] < 2 or float(data.min()) < 0 or float(data.max()) > 1:
            raise ValueError(f"`fit_normalization` needs at least 2 {self._data_name} in [0, 1], got {data.shape[0]} "
                             f"in [{float(data.min())}, {float(data.max())}].")
        data = data.float()
        if cfg.latent_space == "pixels":
            x = data.movedim(-3, 0).reshape(cfg.num_channels, -1)  # (C, everything else)
            std = x.std(1)
            if bool((std < 1e-6).any()):
                raise ValueError(f"The {self._data_name} are constant in channel(s) {(std < 1e-6).nonzero().flatten().tolist()}; cannot fit a pixel std.")
            cfg.image_mean, cfg.image_std = x.mean(1).tolist(), std.tolist()
            if self.processor is not None and hasattr(self.processor, "image_mean"):
                self.processor.image_mean, self.processor.image_std = list(cfg.image_mean), list(cfg.image_std)
        mean = torch.tensor(cfg.image_mean).view(-1, 1, 1)
        std = torch.tensor(cfg.image_std).view(-1, 1, 1)
        normalised = (data - mean) / std  # pixel_values, as the collator makes them
        if cfg.latent_space == "vit":
            cfg.latent_mean = cfg.latent_std = None
            frames = normalised.reshape(-1, *normalised.shape[-3:])  # (N [* F], C, H, W)
            h = torch.cat([self.adapter.encoder_states(f.to(self.device, self.dtype)).float().flatten(0, 1)
                           for f in frames.split(256)])  # (N * tokens, D_vit)
            lat_std = h.std(0)
            if bool((lat_std < 1e-6).any()):
                raise ValueError(f"The ViT's patch states are constant in {int((lat_std < 1e-6).sum())} channel(s); cannot normalise them.")
            cfg.latent_mean, cfg.latent_std = h.mean(0).tolist(), lat_std.tolist()
        cfg.latent_scale = 1.0
        cfg.normalization_fitted = True
        self.fit_latent_scale({"pixel_values": normalised[:512].to(self.device, self.dtype)})
        cfg.latent_scale = float(cfg.latent_scale / cfg.noise_shift)  # SNR(t) x 1 / noise_shift^2

    def _check_fitted(self) -> None:
        if self.config.normalization_fitted is False:
            raise ValueError(
                f"This {self.config.modality} model's normalisation was never fitted (config.normalization_fitted=False): call "
                f"`model.fit_normalization(training_{self._data_name})` before training or sampling (qgfd-hf train does it)."
            )

    def data_to_latents(self, batch) -> torch.Tensor:
        self._check_fitted()
        return super().data_to_latents(batch)

    def decode_latents(self, latents: torch.Tensor):
        self._check_fitted()
        return super().decode_latents(latents)

    def diffusion_sample(self, *args, **kwargs) -> torch.Tensor:
        self._check_fitted()
        return super().diffusion_sample(*args, **kwargs)


class VideoQGFDDiffusionModel(ImageQGFDDiffusionModel):
    """Unconditional video diffusion over per-frame image latents, frames one after another.

    - `data_to_latents({"pixel_values"})` / `video_to_latents(pixel_values)`: normalised clips
      [B, F, C, H, W] -> x0 [B, F * N, latent_dim];
    - `decode_latents(latents)` -> clips [B, F, C, H, W] in [0, 1];
    - the default denoiser's positions are factorised over frame, row and column of the patches
      (`config.position_grid`);
    - `fit_normalization(clips)` fits the pixel statistics and the latent scale from training
      clips; a config with `normalization_fitted=False` refuses to train or sample before it.

    Example:
        >>> cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1,
        ...                       d_model=32, num_heads=4, num_layers=2, d_ff=64, normalization_fitted=False)
        >>> model = VideoQGFDDiffusionModel(cfg)
        >>> model.fit_normalization(torch.rand(6, 2, 1, 8, 8))
        >>> model.decode_latents(model.video_to_latents(torch.zeros(1, 2, 1, 8, 8))).shape
        torch.Size([1, 2, 1, 8, 8])
    """

    config_class = QGFDVideoConfig
    _adapter_class = VideoAdapter
    _data_name = "clips"

    def _check_data(self, data: torch.Tensor) -> None:
        self.adapter.check_video(data)

    @torch.no_grad()
    def fit_normalization(self, data: torch.Tensor) -> None:
        """As `ImageQGFDDiffusionModel.fit_normalization`, from training clips [N, F, C, H, W] in
        [0, 1]; with `motion_compensation`, `motion_scale` first becomes the std of the clips'
        shifts (1 where they do not vary)."""
        cfg = self.config
        if cfg.motion_compensation is not None:
            self._check_data(data)
            shifts = torch.cat([self.adapter.centroid_shifts(chunk) for chunk in data.split(1024)]).float()  # (N, F, 2)
            std = float(shifts.std()) if shifts.numel() > 1 else 0.0
            cfg.motion_scale = std if std > 1e-6 else 1.0
        super().fit_normalization(data)

    def video_to_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, F * N, latent_dim] of normalised clips [B, F, C, H, W]."""
        self._check_fitted()
        return self.adapter.video_to_latents(pixel_values)

    def image_to_latents(self, pixel_values):
        raise ValueError("The video model takes clips [B, F, C, H, W]: use video_to_latents.")


class AudioQGFDDiffusionModel(QGFDPreTrainedModel):
    """Unconditional audio diffusion over waveform frames (`latent_space="waveform"`, exact
    decoding) or over frozen Wav2Vec2 frame latents with a learned waveform decoder.

    - `fit_audio_scale(waveforms)` once on the training clips (waveform latents; the scale is
      saved in the config); until then the model refuses to encode and decode;
    - `data_to_latents({"input_values"})` / `audio_to_latents(input_values)`: waveforms
      [B, num_samples] -> x0 [B, L, latent_dim];
    - `decode_latents(latents)` -> waveforms [B, num_samples], in the units of `input_values`;
    - `compute_loss` adds the decoder's reconstruction loss (Wav2Vec2 latents).

    Example:
        >>> model = AudioQGFDDiffusionModel(QGFDAudioConfig(num_samples=400, frame_size=40, d_model=32,
        ...                                                 num_heads=4, num_layers=2, d_ff=64))
        >>> waves = torch.randn(2, 400) * 0.1
        >>> _ = model.fit_audio_scale(waves)
        >>> model.decode_latents(model.audio_to_latents(waves)).shape
        torch.Size([2, 400])
    """

    config_class = QGFDAudioConfig
    main_input_name = "input_values"

    def __init__(self, config: QGFDAudioConfig):
        super().__init__(config)
        self.adapter = AudioAdapter(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def audio_to_latents(self, input_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, latent_dim] of waveforms [B, num_samples]."""
        return self.adapter.audio_to_latents(input_values)

    def fit_audio_scale(self, input_values: torch.Tensor) -> float:
        """Store the RMS of training waveforms [N, num_samples] as `config.audio_scale` (waveform
        latents are waveform / audio_scale); returns it."""
        return self.adapter.fit_audio_scale(input_values)

    @property
    def sample_clip_value(self) -> Optional[float]:
        """Waveform latents: clips in [-1, 1] divided by audio_scale (x latent_scale) are bounded by this."""
        cfg = self.config
        if cfg.latent_space != "waveform" or cfg.audio_scale is None:
            return None
        return float(cfg.latent_scale / cfg.audio_scale)


class TabularQGFDDiffusionModel(QGFDPreTrainedModel):
    """Unconditional diffusion over the rows of a table (`config.columns`: numeric, integer and
    categorical columns).

    - `fit_normalization(features)` once on the training rows: the column statistics (quantile
      knots, mean, std) are buffers, saved with the model; a model never fitted refuses to
      compute a loss, encode, decode or sample;
    - `data_to_latents({"features"})` / `tabular_to_latents(features)`: rows [B, F] (categories
      as indices) -> x0 [B, L, latent_dim] (L = F with the default "columns" latents);
    - `decode_latents(latents)` -> rows [B, F] in the original units (the pipeline maps category
      indices back to their values);
    - `compute_loss` adds the decoder's reconstruction loss ("mlp" latents only).

    Example:
        >>> cfg = QGFDTabularConfig(columns=[{"name": "x", "kind": "float"},
        ...                                  {"name": "y", "kind": "category", "categories": ["no", "yes"]}],
        ...                         d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> model = TabularQGFDDiffusionModel(cfg)
        >>> rows = torch.tensor([[0.3, 1.0], [2.5, 0.0], [1.1, 1.0]])
        >>> model.fit_normalization(rows)
        >>> model.latent_shape(2), model.decode_latents(model.tabular_to_latents(rows)).shape
        ((2, 2, 1), torch.Size([3, 2]))
    """

    config_class = QGFDTabularConfig
    main_input_name = "features"

    def __init__(self, config: QGFDTabularConfig):
        super().__init__(config)
        self.adapter = TabularAdapter(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def tabular_to_latents(self, features: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, latent_dim] of rows [B, num_features]."""
        return self.adapter.tabular_to_latents(features)

    def fit_normalization(self, features: torch.Tensor) -> None:
        """Fit the column statistics to training rows `features` [N, F] (buffers, saved with the model)."""
        self.adapter.fit_normalization(features)

    @property
    def is_fitted(self) -> bool:
        """Whether `fit_normalization` has run (on this model or on the one saved)."""
        return self.adapter.is_fitted

    @property
    def num_classes(self) -> Optional[int]:
        """With `config.label_column`: its categories are the classes (`class_labels` index them)."""
        j = self.adapter.label_index
        return None if j is None else len(self.config.columns[j]["categories"])

    def diffusion_forward(self, x0, t, schedule=None, cond_tokens=None, cond_mask=None, noise=None,
                          drop_condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The diffusion loss; with `config.label_column`, the label's token stays clean in x_t and
        out of the loss (the denoiser learns the other columns given the label). Where
        `drop_condition` [B] is True (condition dropout), the label token is the null token, zeros:
        no category's code is zero."""
        j = self.adapter.label_index
        if j is None:
            return super().diffusion_forward(x0, t, schedule, cond_tokens, cond_mask, noise)
        self.check_latents("x0", x0)
        schedule = schedule if schedule is not None else self.get_schedule(x0.device)
        t = check_timesteps(t, x0.shape[0], self.config.num_timesteps, x0.device)
        # 1. x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps [DDPM Eq. 4], the label token kept clean.
        x_t, noise = q_sample(x0, t, schedule, noise)
        label = x0[:, j : j + 1]  # (B, 1, Dl)
        if drop_condition is not None:
            label = torch.where(drop_condition[:, None, None], torch.zeros_like(label), label)  # the null label token
        x_t = torch.cat([x_t[:, :j], label, x_t[:, j + 1 :]], 1)  # (B, L, Dl)
        # 2. the target of every other token; 3. their MSE.
        target = diffusion_target(x0, noise, t, schedule, self.config.prediction_type)
        out = self.denoise(x_t, t)
        keep = torch.arange(x0.shape[1], device=x0.device) != j
        return nn.functional.mse_loss(out[:, keep].float(), target[:, keep].float())

    @torch.no_grad()
    def diffusion_sample(self, num_samples: Optional[int] = None, cond_tokens=None, cond_mask=None, *, schedule=None,
                         sampler: str = "ddim", num_inference_steps: Optional[int] = None, eta: float = 0.0,
                         generator: Optional[torch.Generator] = None, progress: bool = False, clip_sample: Optional[float] = None,
                         x_T: Optional[torch.Tensor] = None, timestep_spacing: Optional[str] = None,
                         steps_offset: Optional[int] = None, class_labels=None, guidance_scale: float = 1.0) -> torch.Tensor:
        """As `QGFDPreTrainedModel.diffusion_sample`, refused before the loop on a never-fitted
        model; with `config.label_column`, each sample's label is `class_labels` (indices of the
        label column's categories), else drawn first (from the training frequencies,
        `TabularAdapter.label_tokens_from_noise`), and held fixed while the other columns are
        denoised. `guidance_scale` != 1 guides against the null (zero) label token, for a model
        trained with `cond_dropout_prob` > 0."""
        self.adapter.check_fitted("sample")
        kwargs = dict(schedule=schedule, sampler=sampler, num_inference_steps=num_inference_steps, eta=eta, generator=generator,
                      progress=progress, clip_sample=clip_sample, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
        j = self.adapter.label_index
        if j is None:
            return super().diffusion_sample(num_samples, cond_tokens, cond_mask, x_T=x_T, class_labels=class_labels,
                                            guidance_scale=guidance_scale, **kwargs)
        self.encode_condition(cond_tokens=cond_tokens)  # unconditional: refuses conditioning
        if num_samples is None:
            num_samples = x_T.shape[0] if x_T is not None else len(class_labels) if isinstance(class_labels, (list, tuple, torch.Tensor)) else 1
        class_labels, guidance_scale = self.check_guidance(num_samples, class_labels, guidance_scale)
        if x_T is None:
            gen_device = generator.device if generator is not None else self.device
            x_T = torch.randn(self.latent_shape(num_samples), generator=generator, device=gen_device, dtype=torch.float32)
        x_T = x_T.to(device=self.device, dtype=self.dtype)
        if class_labels is None:
            label = self.adapter.label_tokens_from_noise(x_T)  # (B, Dl)
        else:
            label = self.adapter.label_tokens(class_labels.to(self.device)).to(x_T.dtype)  # (B, Dl)
        put = lambda x, tok: torch.cat([x[:, :j], tok[:, None], x[:, j + 1 :]], 1)  # the label's clean token at j

        def denoise_fn(x_t, t):
            if guidance_scale == 1.0:
                return self.denoise(put(x_t, label), t)
            # Classifier-free guidance: [label; null label] in one denoiser call.
            out = self.denoise(torch.cat([put(x_t, label), put(x_t, torch.zeros_like(label))]), torch.cat([t, t]))
            out_c, out_u = out.chunk(2)
            return classifier_free_guidance(out_c, out_u, guidance_scale)

        kwargs["schedule"] = schedule if schedule is not None else self.get_schedule()
        x = sample_loop(denoise_fn, tuple(x_T.shape), prediction_type=self.config.prediction_type, device=self.device,
                        dtype=self.dtype, x_T=x_T, **kwargs)
        return put(x, label)


MODEL_CLASSES = {
    "text": TextQGFDDiffusionModel,
    "image": ImageQGFDDiffusionModel,
    "audio": AudioQGFDDiffusionModel,
    "video": VideoQGFDDiffusionModel,
    "tabular": TabularQGFDDiffusionModel,
}


# ----------------------------------------------------------------------------------------
# The shared model
# ----------------------------------------------------------------------------------------


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
        >>> img = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, d_model=32,
        ...                       num_heads=4, num_layers=2, d_ff=64)
        >>> tab = QGFDTabularConfig(num_features=3, latent_dim=8, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> model = SharedQGFDDiffusionModel(QGFDSharedConfig(modalities=["image", "tabular"], image_config=img,
        ...     tabular_config=tab, latent_dim=16, d_model=32, num_heads=4, num_layers=2, d_ff=64))
        >>> model.latent_shape(2, modality="image"), model.latent_shape(2, modality="tabular")
        ((2, 16, 16), (2, 3, 16))
    """

    config_class = QGFDSharedConfig
    main_input_name = "x_t"

    def __init__(self, config, text_hf_name=None, image_hf_name=None):
        pretrained = {}
        if isinstance(config, DiffusionConfig):  # the seed's signature
            # The seed's text loss takes no source text (it conditioned on the target itself, which
            # leaks the answer), so its text modality is unconditional here; build a
            # QGFDSharedConfig with a conditional text_config for source -> target training.
            config, pretrained = _shared_config_from_backbones(
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
            _load_adapter_weights(getattr(self, f"{m}_adapter"), name)

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
            from .modeling_qgfd import check_float_tensor

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


# ----------------------------------------------------------------------------------------
# The factory
# ----------------------------------------------------------------------------------------


def _diffusion_values(diffusion_cfg) -> dict:
    """DiffusionConfig fields as config keywords; without a DiffusionConfig, latent_dim is derived."""
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


def _load_adapter_weights(adapter, name: str) -> None:
    adapter.load_pretrained_encoder(name)
    if isinstance(adapter, TextAdapter):
        adapter.fit_embedding_scale()


def _shared_config_from_backbones(diffusion_cfg, backbones: Mapping, modality_kwargs: Optional[Mapping] = None, **kwargs):
    values = _diffusion_values(diffusion_cfg)
    if values.get("latent_dim") is None:
        values["latent_dim"] = values["d_model"]
    base = DiffusionConfig(**{k: v for k, v in values.items()})
    modality_kwargs = dict(modality_kwargs or {})
    modalities = list(kwargs.pop("modalities", list(backbones)))
    sub, pretrained = {}, {}
    for m in modalities:
        _check_choice("modality", m, MODALITIES)
        cfg, name = modality_config_from_backbone(m, backbones.get(m), base, **modality_kwargs.pop(m, {}))
        sub[f"{m}_config"] = cfg
        if name is not None:
            pretrained[m] = name
    if modality_kwargs:
        raise ValueError(f"`modality_kwargs` for modalities not in {modalities}: {sorted(modality_kwargs)}.")
    values.update(kwargs)
    return QGFDSharedConfig(modalities=modalities, **sub, **values), pretrained


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
    _check_choice("modality", modality, ALL_MODALITIES)
    if modality == "shared":
        if backbone_name is not None and not isinstance(backbone_name, Mapping):
            raise ValueError("For modality='shared', `backbone_name` must be a dict modality -> backbone (Hub id, folder or config).")
        backbones = dict(backbone_name or {})
        backbone_kw = {k: kwargs[k] for k in ("backbone_config",) if k in kwargs}  # given by the caller
        if kwargs.get("denoiser") == "pretrained" and "backbone_config" not in kwargs:
            # The shared pretrained denoiser is the text backbone's T5 encoder stack.
            if "text" not in backbones:
                raise ValueError(
                    "denoiser='pretrained' for the shared model takes the text backbone's T5 stack: give a 'text' "
                    "backbone in `backbone_name`, or `backbone_config=` a T5Config."
                )
            kwargs["backbone_config"] = _resolve_backbone(backbones["text"], "text")[0]
        config, pretrained = _shared_config_from_backbones(diffusion_cfg, backbones, **kwargs)
        model = SharedQGFDDiffusionModel(config)
        processors = {}
        for m in config.modalities:
            if m in pretrained:
                _load_adapter_weights(getattr(model, f"{m}_adapter"), pretrained[m])
                if m == "text" and config.denoiser == "pretrained" and "backbone_config" not in backbone_kw:
                    model.backbone.load_pretrained_stack(model.text_adapter.encoder)  # read once, copied
            given = (tokenizer if m == "text" else None) or (processor.get(m) if isinstance(processor, Mapping) else None)
            processors[m] = given or _default_processor(m, config.modality_config(m), pretrained.get(m))
        return model, processors, model.get_schedule()

    values = _diffusion_values(diffusion_cfg)
    values.update(kwargs)
    backbone_config, name = _resolve_backbone(backbone_name, modality)
    if modality == "text" and backbone_config is None:
        raise ValueError("The text model needs a T5 backbone: a Hub id, a folder or a T5Config.")
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
        if config.denoiser == "pretrained":
            # The denoiser's stack: a trainable copy of the encoder's weights (read once, from the
            # encoder just loaded; from `name` where no encoder makes the latents).
            model.backbone.load_pretrained_stack(model.adapter.encoder if model.adapter.encoder is not None else name)
    if modality == "text" and scale_latents and "latent_scale" not in kwargs:
        model.adapter.fit_embedding_scale()
    if loaded is None:
        loaded = _processor_from_config(modality, config)
    model.processor = loaded  # saved with the model by save_pretrained
    return model, loaded, model.get_schedule()


# ----------------------------------------------------------------------------------------
# Auto classes
# ----------------------------------------------------------------------------------------

ALL_MODEL_CLASSES = dict(MODEL_CLASSES, shared=SharedQGFDDiffusionModel)
for _model_cls in ALL_MODEL_CLASSES.values():
    _model_cls.register_for_auto_class("AutoModel")


def register_qgfd_auto_classes() -> None:
    """Register every QGFD config with `AutoConfig` and every model with `AutoModel`
    (`import qgfd_hf` calls it, see `registration_qgfd`)."""
    from transformers import AutoModel

    from .configuration_qgfd import register_qgfd_configs

    register_qgfd_configs()
    for model_cls in ALL_MODEL_CLASSES.values():
        AutoModel.register(model_cls.config_class, model_cls, exist_ok=True)


__all__ = [
    "ALL_MODEL_CLASSES",
    "AudioQGFDDiffusionModel",
    "ImageQGFDDiffusionModel",
    "MODEL_CLASSES",
    "SharedQGFDDiffusionModel",
    "TabularQGFDDiffusionModel",
    "TextQGFDDiffusionModel",
    "VideoQGFDDiffusionModel",
    "create_qgfd_diffusion_model",
    "modality_config_from_backbone",
    "register_qgfd_auto_classes",
]
