# coding=utf-8
"""Video diffusion: `VideoAdapter` (per-frame image latents, frames one after another; tubelets,
motion compensation) and `VideoQGFDDiffusionModel`, with its output conversion (frames).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.utils import logging

from .configuration_qgfd_video import QGFDVideoConfig
from .modeling_qgfd import register_model_class
from .modeling_qgfd_adapters import ADAPTERS, _get
from .modeling_qgfd_checks import check_float_tensor
from .modeling_qgfd_image import ImageAdapter, ImageQGFDDiffusionModel

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------


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
        if cfg.motion_compensation == "rigid":  # one image per clip: the centred frames' mean
            h = self.patchify(pixel_values.mean(1))  # (B, N, C p^2)
        else:
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
        if cfg.motion_compensation == "rigid":  # the clip's one image on every frame
            x = self.unpatchify(h).unsqueeze(1).expand(B, Fr, self.num_channels, self.image_size, self.image_size)
        else:
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
# The model
# ----------------------------------------------------------------------------------------


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
    hub_pipeline_tags = ("other", "text-to-video")  # the model card's pipeline_tag (the Hub has no unconditional video task)
    pipeline_outputs = ("videos", '[{"frames": uint8 array [F, H, W, C]}, ...]', 2)  # the card's example
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

    # -- output conversion (the pipeline's outputs) ------------------------------------------

    @staticmethod
    def outputs_from_data(config, data, output_type: str = "data", tokenizer=None) -> list:
        """Clips [B, F, C, H, W] in [0, 1] to `{"frames": uint8 [F, H, W, C]}`, or `{"np": [F, H, W, C] floats}`."""
        data = data.float()
        if output_type == "np":
            return [{"np": x} for x in data.permute(0, 1, 3, 4, 2).numpy()]  # (B, F, H, W, C)
        return [{"frames": (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)} for x in data]  # (F, H, W, C)


ADAPTERS["video"] = VideoAdapter
register_model_class(VideoQGFDDiffusionModel)

__all__ = ["VideoAdapter", "VideoQGFDDiffusionModel"]
