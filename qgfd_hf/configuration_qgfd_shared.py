# coding=utf-8
"""Configuration of the shared model: `QGFDSharedConfig` ("qgfd_shared"), one denoiser over several
modalities, each modality's own config nested in it (`PARTS`: the modality config files it imports).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from .configuration_qgfd import QGFDConfig, _check_choice
# The modalities the shared model serves: the config files imported here. A saved shared model's
# folder gets its files by these imports (`trust_remote_code` copies the files a file imports
# relatively), so a modality joins the shared model by its line here and in modeling_qgfd_shared.py.
from .configuration_qgfd_audio import QGFDAudioConfig
from .configuration_qgfd_image import QGFDImageConfig
from .configuration_qgfd_tabular import QGFDTabularConfig
from .configuration_qgfd_text import QGFDTextConfig
from .configuration_qgfd_video import QGFDVideoConfig

PARTS = {cls._fixed_modality: cls for cls in (QGFDAudioConfig, QGFDImageConfig, QGFDTabularConfig, QGFDTextConfig, QGFDVideoConfig)}


class QGFDSharedConfig(QGFDConfig):
    """Config of `SharedQGFDDiffusionModel`: one denoiser, one adapter per modality.

    Args:
        modalities (`list[str]`, defaults to `["text", "image"]`): the modalities the model
            serves; the first is the default of methods that take `modality=`.
        audio_config, image_config, tabular_config, text_config, video_config (modality config
            or `dict`, *optional*; one per modality in `PARTS`): each modality's own config (its encoder, sizes, latent
            scale); required for every modality in `modalities`. Their denoiser fields are unused.
        latent_dim (`int`, defaults to 512): the shared latent width; adapters map each
            modality's latents to it with a fixed (frozen by default) orthogonal projection.
        **kwargs: `QGFDConfig` arguments for the shared denoiser.

    Example:
        >>> img = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1)
        >>> cfg = QGFDSharedConfig(modalities=["image"], image_config=img, latent_dim=16,
        ...                        d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.image_config.latent_dim, cfg.latent_dim
        (4, 16)
    """

    model_type = "qgfd_shared"
    _fixed_modality = "shared"
    sub_configs = {f"{m}_config": cls for m, cls in PARTS.items()}
    pretrained_stacks = QGFDTextConfig.pretrained_stacks  # denoiser="pretrained": a text encoder's stack

    def __init__(self, modalities: Sequence[str] = ("text", "image"), latent_dim: int = 512, **kwargs):
        # `<modality>_config` for each modality in PARTS (text_config, image_config, ...).
        if isinstance(modalities, str) or not isinstance(modalities, (list, tuple)) or not modalities:
            raise ValueError(f"`modalities` must be a non-empty list drawn from {tuple(PARTS)}, got {modalities!r}.")
        self.modalities = list(modalities)
        for m, cls in PARTS.items():
            value = kwargs.pop(f"{m}_config", None)
            if isinstance(value, dict):
                value = cls(**{k: v for k, v in value.items() if k != "model_type"})
            elif value is not None and not isinstance(value, cls):
                raise ValueError(f"`{m}_config` must be a {cls.__name__} or dict, got {type(value).__name__}.")
            setattr(self, f"{m}_config", value)
        kwargs.setdefault("conditional", bool(getattr(self.text_config, "conditional", False)))
        super().__init__(latent_dim=latent_dim, **kwargs)

    def _validate_modality(self):
        for m in self.modalities:
            _check_choice("modality in `modalities`", m, tuple(PARTS))
            if getattr(self, f"{m}_config") is None:
                raise ValueError(f"modality {m!r} is in `modalities` but `{m}_config` is None.")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"`modalities` has duplicates: {self.modalities!r}.")
        for m in self.modalities:
            sub = getattr(self, f"{m}_config")
            if getattr(sub, "num_classes", None) is not None or (getattr(sub, "cond_dropout_prob", 0) or 0) > 0:
                raise ValueError(
                    f"`{m}_config` asks for class labels or condition dropout (num_classes={sub.num_classes}, "
                    f"cond_dropout_prob={sub.cond_dropout_prob}), which the shared model does not take; pass None and 0."
                )
        text = self.text_config
        expect = bool("text" in self.modalities and text is not None and text.conditional)
        if self.conditional != expect:
            raise ValueError(f"`conditional`={self.conditional} must equal text_config.conditional ({expect}).")

    def modality_config(self, modality: str) -> QGFDConfig:
        _check_choice("modality", modality, tuple(self.modalities))
        return getattr(self, f"{modality}_config")

    def num_latent_tokens(self, modality: Optional[str] = None) -> int:
        return self.modality_config(modality or self.modalities[0]).num_latent_tokens()

    def latent_token_counts(self) -> Dict[str, int]:
        return {m: n for m in self.modalities for n in self.modality_config(m).latent_token_counts().values()}


QGFDSharedConfig.register_for_auto_class()


__all__ = ["QGFDSharedConfig"]
