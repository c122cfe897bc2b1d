# coding=utf-8
"""Configuration of the video diffusion model: `QGFDVideoConfig` ("qgfd_video"), the image config per frame.
"""

from __future__ import annotations

from typing import Optional

from .configuration_qgfd import _check_choice, _check_float, _check_int
from .configuration_qgfd_image import QGFDImageConfig

VIDEO_MOTION_COMPENSATION = (None, "centroid", "rigid")


class QGFDVideoConfig(QGFDImageConfig):
    """Config of `VideoQGFDDiffusionModel`: every frame goes through the image path.

    Args:
        num_frames (`int`, defaults to 8): F, frames per clip; the latents are the frames'
            patch latents one after the other, `[B, F * N, latent_dim]`.
        tubelet_frames (`int`, defaults to 1): T, frames per token (ViViT's tubelets). 1: a token
            is one frame's patch, `[B, F * N, C p^2]`. T > 1 (pixel latents only; T divides F):
            a token is one patch place over T consecutive frames, its T patches side by side,
            `[B, F / T * N, T * C p^2]`, so the denoiser predicts those frames of a patch
            jointly, over T times fewer tokens.
        position_grid (defaults to `"auto"`): the denoiser's positions are factorised over
            `[num_frames / tubelet_frames, rows, columns]` of patches (frame index plus 2-D
            patch place; see `QGFDConfig`). None gives the 1-D positions over the tokens of
            models saved before this field existed; such a folder now loads with `"auto"` (retrain it).
        motion_compensation (`str`, *optional*): None (default), or `"centroid"` (pixel latents
            only): global motion compensation. Every frame is shifted by whole pixels, black
            (pixel value 0) shifted in, so that its intensity centroid sits at the frame's centre;
            the shifts (2 per frame, rows then columns) are appended to every token,
            `[B, L, T * C p^2 + 2 F]`, divided by `motion_scale` (times `latent_scale`), and
            decoding shifts the frames back (by the shifts' mean over the tokens, rounded). A
            clip whose content moves rigidly then has the same patches in every frame, so the
            denoiser generates one image and one trajectory. Exact for one bright object on a
            black background that stays inside the frame (the demo's moving digits); content
            shifted out of the frame is lost, and for other video the centroid is a poor
            motion estimate. `"rigid"` (tubelet_frames 1): the same centring, and then the
            centred frames' mean is the clip's one image: the latent is that image's patches,
            each with the shifts, `[B, N, C p^2 + 2 F]`, and decoding repeats it on every frame
            before shifting. Exact for one object that moves rigidly without changing (Moving
            MNIST); for anything else it keeps only the clip's mean appearance.
        motion_scale (`float`, defaults to 1.0): the shifts' divisor (pixels per latent unit);
            `VideoQGFDDiffusionModel.fit_normalization` fits it (the shifts' std in the training clips).
        **kwargs: `QGFDImageConfig` arguments (per frame), among them `noise_shift` (the
            shifted schedule: s > 1 spends more of training and sampling at the noise levels
            where a clip's layout is decided) and `normalization_fitted` (fitted from training
            clips by `VideoQGFDDiffusionModel.fit_normalization`).

    Example:
        >>> cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1,
        ...                       d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.num_latent_tokens(), cfg.latent_dim, cfg.position_grid
        (8, 16, [2, 2, 2])
        >>> cfg = QGFDVideoConfig(num_frames=2, tubelet_frames=2, latent_space="pixels", image_size=8, patch_size=4,
        ...                       num_channels=1, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.num_latent_tokens(), cfg.latent_dim, cfg.position_grid
        (4, 32, [1, 2, 2])
    """

    model_type = "qgfd_video"
    _fixed_modality = "video"

    def __init__(self, num_frames: int = 8, tubelet_frames: int = 1, position_grid="auto", motion_compensation: Optional[str] = None,
                 motion_scale: float = 1.0, **kwargs):
        self.num_frames = num_frames
        self.tubelet_frames = tubelet_frames
        self.motion_compensation = motion_compensation
        self.motion_scale = motion_scale
        super().__init__(position_grid=position_grid, **kwargs)

    def _validate_modality(self):
        _check_int("num_frames", self.num_frames)
        _check_int("tubelet_frames", self.tubelet_frames)
        if self.num_frames % self.tubelet_frames:
            raise ValueError(f"`tubelet_frames`={self.tubelet_frames} must divide `num_frames`={self.num_frames}.")
        if self.tubelet_frames > 1 and self.latent_space != "pixels":
            raise ValueError(f'`tubelet_frames`={self.tubelet_frames} needs latent_space="pixels" (a ViT encodes single frames); '
                             f"got latent_space={self.latent_space!r}. Use tubelet_frames=1.")
        _check_choice("motion_compensation", self.motion_compensation, VIDEO_MOTION_COMPENSATION)
        if self.motion_compensation == "rigid" and self.tubelet_frames != 1:
            raise ValueError(f'`motion_compensation`="rigid" makes one image per clip (its centred frames\' mean); '
                             f"`tubelet_frames` must be 1, got {self.tubelet_frames}.")
        if self.motion_compensation is not None and self.latent_space != "pixels":
            raise ValueError(f'`motion_compensation`={self.motion_compensation!r} needs latent_space="pixels" (it shifts the '
                             f"frames' pixels); got latent_space={self.latent_space!r}. Use motion_compensation=None.")
        _check_float("motion_scale", self.motion_scale, 0.0, None, low_open=True)
        super()._validate_modality()

    @property
    def motion_channels(self) -> int:
        """Channels of a token that hold the clip's shifts (2 F with motion compensation, else 0)."""
        return 2 * self.num_frames if self.motion_compensation is not None else 0

    def _patch_latent_width(self) -> int:
        return self.tubelet_frames * super()._patch_latent_width() + self.motion_channels

    @property
    def latent_frames(self) -> int:
        """Frame slots of the latent: F / T, or 1 with `motion_compensation="rigid"` (one image per clip)."""
        return 1 if self.motion_compensation == "rigid" else self.num_frames // self.tubelet_frames

    def num_latent_tokens(self) -> int:
        return self.latent_frames * super().num_latent_tokens()

    def _auto_position_grid(self):
        return [self.latent_frames] + super()._auto_position_grid()


QGFDVideoConfig.register_for_auto_class()

__all__ = ["QGFDVideoConfig", "VIDEO_MOTION_COMPENSATION"]
