# coding=utf-8
"""Configuration of the image diffusion model: `QGFDImageConfig` ("qgfd_image") and its latent spaces.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from .configuration_qgfd import QGFDConfig, _check_bool, _check_choice, _check_float, _check_int
from .configuration_qgfd_denoiser import _list_or_none

IMAGE_LATENT_SPACES = ("vit", "pixels")


class QGFDImageConfig(QGFDConfig):
    """Config of `ImageQGFDDiffusionModel`.

    Args:
        latent_space (`str`, defaults to `"vit"`): `"vit"` (frozen ViT patch states, plus a
            learned pixel decoder) or `"pixels"` (non-overlapping pixel patches: patchify /
            unpatchify, no encoder; for small images and offline use). With
            `denoiser="pretrained"`, `"pixels"` takes a ViT `backbone_config` for the denoiser only.
        image_size (`int`, *optional*), patch_size (`int`, *optional*), num_channels (`int`, *optional*):
            with "vit" they come from `backbone_config`; with "pixels" they default to 32, 4, 3.
        image_mean, image_std (`list[float]`, *optional*, default 0.5 per channel): the
            normalisation of `pixel_values` (`(x - mean) / std` of images in [0, 1]), as the
            image processor applies it; decoded images are mapped back to [0, 1].
        normalization_fitted (`bool`, *optional*): None (the default): nothing is fitted
            (`image_mean` / `image_std` as given, `latent_scale` as given). False: the statistics
            are to be fitted from the training images (`fit_normalization` of the model: pixel
            latents, the pixels' per-channel mean and std; ViT latents, `latent_mean` /
            `latent_std`; then `latent_scale`); until then the model refuses to train or sample.
            True: fitted (saved with the model).
        latent_mean, latent_std (`list[float]`, *optional*): ViT latents only: the per-channel
            mean and std of the ViT's patch states over the training images (RAE's latent
            normalisation), fitted by `fit_normalization`; the latents are
            `(h - latent_mean) / latent_std * latent_scale`. None: not normalised per channel.
        noise_shift (`float`, defaults to 1.0): s, the shift of the noise schedule for
            high-dimensional latents (simple diffusion, Hoogeboom et al. 2023; SD3's and RAE's
            dimension-dependent shift). `fit_normalization` gives the latents std 1 / s instead
            of 1, which multiplies the signal-to-noise ratio of every timestep by 1 / s^2 (for a
            variance-preserving process, the shifted schedule up to a per-timestep scaling of
            x_t): s > 1 spends more of training and sampling at the noise levels where an
            image's layout is decided. Used when fitting only (the fitted `latent_scale` carries it).
        decoder_noise_std (`float`, defaults to 0.0): tau, noise augmentation of the learned
            decoder (ViT latents; RAE, Zheng et al. 2025, Sec. 3): in training the decoder
            reconstructs the images from `x0 + sigma * latent_scale * eps`, `sigma ~ |N(0, tau^2)|`
            per image, so that it also decodes the denoiser's imperfect latents. tau is in units
            of the per-channel-normalised latent (std 1 after `fit_normalization`). 0: off.

    Example:
        >>> cfg = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1,
        ...                       d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.latent_dim, cfg.num_latent_tokens()
        (4, 16)
    """

    model_type = "qgfd_image"
    _fixed_modality = "image"
    pretrained_stacks = ("vit",)  # denoiser="pretrained": ViT's layers

    def __init__(
        self,
        latent_space: str = "vit",
        image_size: Optional[int] = None,
        patch_size: Optional[int] = None,
        num_channels: Optional[int] = None,
        image_mean: Optional[Sequence[float]] = None,
        image_std: Optional[Sequence[float]] = None,
        normalization_fitted: Optional[bool] = None,
        latent_mean: Optional[Sequence[float]] = None,
        latent_std: Optional[Sequence[float]] = None,
        noise_shift: float = 1.0,
        decoder_noise_std: float = 0.0,
        **kwargs,
    ):
        self.latent_space = latent_space
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.image_mean = _list_or_none("image_mean", image_mean, "floats (one per channel)")
        self.image_std = _list_or_none("image_std", image_std, "floats (one per channel)")
        self.normalization_fitted = normalization_fitted
        self.latent_mean = _list_or_none("latent_mean", latent_mean, "floats (one per ViT channel)")
        self.latent_std = _list_or_none("latent_std", latent_std, "floats (one per ViT channel)")
        self.noise_shift = noise_shift
        self.decoder_noise_std = decoder_noise_std
        super().__init__(**kwargs)

    def _validate_modality(self):
        _check_choice("latent_space", self.latent_space, IMAGE_LATENT_SPACES)
        _check_float("noise_shift", self.noise_shift, 0.0, None, low_open=True)
        _check_float("decoder_noise_std", self.decoder_noise_std, 0.0, None)
        if self.normalization_fitted is not None:
            _check_bool("normalization_fitted", self.normalization_fitted)
        if self.latent_space == "vit":
            self._require_backbone(["image_size", "patch_size", "num_channels", "hidden_size"], "ViT")
            for name in ("image_size", "patch_size", "num_channels"):
                mine, theirs = getattr(self, name), getattr(self.backbone_config, name)
                if isinstance(theirs, (list, tuple)):
                    if len(set(theirs)) != 1:
                        raise ValueError(f"Only square images and patches are supported, backbone has {name}={theirs}.")
                    theirs = theirs[0]
                if mine is not None and mine != theirs:
                    raise ValueError(f"`{name}`={mine} disagrees with the ViT backbone's {name}={theirs}; pass None.")
                setattr(self, name, int(theirs))
        else:
            if self.backbone_config is not None and self.denoiser != "pretrained":
                raise ValueError(
                    'latent_space="pixels" uses no encoder; pass backbone_config=None (a ViT backbone_config is '
                    'taken only with denoiser="pretrained", as the denoiser).'
                )
            if self.backbone_qgfd is not None:
                raise ValueError(
                    'latent_space="pixels" has no encoder for `backbone_qgfd` to patch (the denoiser\'s QGFD '
                    "settings are the `qgfd_*` fields); pass backbone_qgfd=None."
                )
            self.image_size = 32 if self.image_size is None else self.image_size
            self.patch_size = 4 if self.patch_size is None else self.patch_size
            self.num_channels = 3 if self.num_channels is None else self.num_channels
        _check_int("image_size", self.image_size)
        _check_int("patch_size", self.patch_size)
        _check_int("num_channels", self.num_channels)
        if self.image_size % self.patch_size:
            raise ValueError(f"`patch_size`={self.patch_size} must divide `image_size`={self.image_size}.")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is None:
                value = [0.5] * self.num_channels
            if len(value) != self.num_channels or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                raise ValueError(f"`{name}` must be {self.num_channels} floats (one per channel), got {value!r}.")
            setattr(self, name, [float(v) for v in value])
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"`image_std` must be > 0, got {self.image_std!r}.")
        if self.latent_space == "vit":
            self._resolve_latent_dim(self.backbone_config.hidden_size, "the ViT hidden size")
        else:
            self._resolve_latent_dim(self._patch_latent_width(), "num_channels * patch_size**2")
        self._validate_latent_statistics()

    def _validate_latent_statistics(self):
        given = [n for n in ("latent_mean", "latent_std") if getattr(self, n) is not None]
        if self.latent_space != "vit":
            if given:
                raise ValueError(f"{' and '.join('`' + n + '`' for n in given)} normalise ViT latents; latent_space="
                                 f"{self.latent_space!r} takes None (pixel latents use `image_mean` / `image_std`).")
            if self.decoder_noise_std:
                raise ValueError(f"`decoder_noise_std`={self.decoder_noise_std} trains the learned decoder of ViT latents; "
                                 f"latent_space={self.latent_space!r} has none (decoding is exact): pass 0.")
            return
        if len(given) == 1:
            raise ValueError(f"`latent_mean` and `latent_std` go together; got only `{given[0]}`.")
        if given:
            width = self.backbone_config.hidden_size
            for name in given:
                value = getattr(self, name)
                if len(value) != width or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
                    raise ValueError(f"`{name}` must be {width} finite floats (one per ViT channel), got {len(value)} values.")
                setattr(self, name, [float(v) for v in value])
            if min(self.latent_std) <= 0:
                raise ValueError(f"`latent_std` must be > 0, got a minimum of {min(self.latent_std)}.")

    def _patch_latent_width(self) -> int:
        """Width of a pixel-patch token (video tubelets hold several frames' patches)."""
        return self.num_channels * self.patch_size**2

    def num_latent_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def _auto_position_grid(self):
        return [self.image_size // self.patch_size] * 2


QGFDImageConfig.register_for_auto_class()

__all__ = ["IMAGE_LATENT_SPACES", "QGFDImageConfig"]
