# coding=utf-8
"""Image diffusion: `ImageAdapter` (ViT patch states or pixel patches <-> latents, the learned pixel
decoder) and `ImageQGFDDiffusionModel`, with its output conversion (PIL images).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging

from .configuration_qgfd_image import QGFDImageConfig
from .modeling_qgfd import QGFDPreTrainedModel, register_model_class
from .modeling_qgfd_adapters import ADAPTERS, LatentDecoder, _get, _ModalityAdapter, _resolve_adapter_config, build_encoder, build_denoiser
from .modeling_qgfd_checks import check_float_tensor

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# The adapter
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

# ----------------------------------------------------------------------------------------
# The model
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
    hub_pipeline_tags = ("unconditional-image-generation", "text-to-image")  # the model card: (unconditional, conditional)
    pipeline_outputs = ("images", '[{"image": PIL.Image.Image}, ...]', 4)
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

    # -- output conversion (the pipeline's outputs) ------------------------------------------

    @staticmethod
    def outputs_from_data(config, data, output_type: str = "data", tokenizer=None) -> list:
        """Images [B, C, H, W] in [0, 1] to `{"image": PIL.Image}`, or `{"np": [H, W, C] floats}`."""
        data = data.float()
        if output_type == "np":
            return [{"np": x} for x in data.permute(0, 2, 3, 1).numpy()]  # (B, H, W, C)
        from PIL import Image

        items = []
        for x in data:
            arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
            items.append({"image": Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)})
        return items


ADAPTERS["image"] = ImageAdapter
register_model_class(ImageQGFDDiffusionModel)

__all__ = ["ImageAdapter", "ImageQGFDDiffusionModel"]
