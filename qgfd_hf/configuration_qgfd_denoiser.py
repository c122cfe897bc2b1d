# coding=utf-8
"""The denoiser's settings, shared by `DiffusionConfig` and `QGFDConfig`: sizes, QGFD attention, schedule.

- `DiffusionConfig`: the seed's dataclass (the denoiser's sizes, QGFD settings, schedule),
  kept for the seed's quickstart and accepted by `QGFDDiffusionBackbone(cfg)`.
- `validate_diffusion_settings`: the checks of the fields it shares with `QGFDConfig`
  (configuration_qgfd.py), and the shared validators (`_check_int`, `_check_float`, ...).
- The QGFD defaults (`QGFD_FIELDS`, read from `QGFDSettings`) and the named sizes (`QGFD_PRESETS`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Sequence

from .attention_qgfd import QGFDSettings, _check_choice
from .scheduling_qgfd import BETA_SCHEDULES, PREDICTION_TYPES

TIME_CONDITIONINGS = ("adaln", "add")
POSITION_EMBEDDINGS = ("sinusoidal", "learned", "none")

# QGFD's defaults are QGFDSettings' (attention_qgfd.py, the one place they are written).
_QGFD_DEFAULTS = QGFDSettings()

# The QGFD attention settings of the denoiser: config name -> `QGFDSettings` field.
QGFD_FIELDS = {
    "qgfd_steps": "steps",
    "qgfd_alpha": "alpha",
    "qgfd_graph": "graph",
    "qgfd_mix": "mix",
    "qgfd_key_temperature": "key_temperature",
    "qgfd_detach_graph": "detach_graph",
    "qgfd_learnable_alpha": "learnable_alpha",
    "qgfd_alpha_max": "alpha_max",
    "qgfd_warmup_steps": "warmup_steps",
}

# Named sizes of the denoiser (DiT's `DiT_models`). Parameter counts are those of
# `QGFDDiffusionBackbone` with latent_dim = d_model, adaLN time conditioning and
# cross-attention (tests/test_configuration_qgfd.py checks them).
QGFD_PRESETS: Dict[str, Dict[str, int]] = {
    "tiny": dict(d_model=32, num_heads=4, num_layers=2, d_ff=64),  # 0.05 M: tests
    "small": dict(d_model=256, num_heads=4, num_layers=4, d_ff=1024),  # 6.2 M: CPU demos
    "base": dict(d_model=512, num_heads=8, num_layers=4, d_ff=2048),  # 24.6 M: the seed's sizes
    "large": dict(d_model=768, num_heads=12, num_layers=12, d_ff=3072),  # 159.1 M
}
# Parameter counts of the presets' backbones in millions (checked by the tests).
QGFD_PRESET_PARAMS_M = {"tiny": 0.05, "small": 6.2, "base": 24.6, "large": 159.1}


# ----------------------------------------------------------------------------------------
# Validation helpers (shared by DiffusionConfig and QGFDConfig)
# ----------------------------------------------------------------------------------------


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def _check_float(name, value, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"`{name}` must be a finite float, got {value!r}.")
    lo_bad = low is not None and (value <= low if low_open else value < low)
    hi_bad = high is not None and (value >= high if high_open else value > high)
    if lo_bad or hi_bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        raise ValueError(f"`{name}` must lie in {lo or '(-inf'}, {hi or 'inf)'}, got {value!r}.")


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, got {value!r}.")


def _check_dict_list(name, value, what):
    """`value` is None or a list/tuple of dicts (checked before it is copied: `dict(5)` says nothing of `name`)."""
    if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value)):
        raise ValueError(f"`{name}` must be a list of dicts ({what}) or None, got {value!r}.")


def _list_or_none(name, value, what):
    """`list(value)`, or None; a scalar or a string is refused by name (`list(0.5)` says nothing of `name`)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"`{name}` must be a list of {what} or None, got {value!r}.")
    return list(value)


def validate_diffusion_settings(cfg) -> None:
    """Check the denoiser, QGFD and schedule fields that `DiffusionConfig` and `QGFDConfig` share."""
    _check_int("d_model", cfg.d_model)
    _check_int("num_heads", cfg.num_heads)
    if cfg.d_model % cfg.num_heads:
        raise ValueError(f"`num_heads`={cfg.num_heads} must divide `d_model`={cfg.d_model}.")
    _check_int("num_layers", cfg.num_layers)
    _check_int("d_ff", cfg.d_ff)
    if cfg.latent_dim is not None:
        _check_int("latent_dim", cfg.latent_dim)
    _check_int("num_timesteps", cfg.num_timesteps, minimum=2)
    _check_float("dropout", cfg.dropout, 0.0, 1.0, high_open=True)
    qgfd_settings(cfg)  # QGFDSettings raises ValueError on a bad QGFD value
    _check_choice("beta_schedule", cfg.beta_schedule, BETA_SCHEDULES)
    _check_float("beta_start", cfg.beta_start, 0.0, 1.0, low_open=True, high_open=True)
    _check_float("beta_end", cfg.beta_end, 0.0, 1.0, low_open=True, high_open=True)
    if cfg.beta_start > cfg.beta_end:
        raise ValueError(f"Need beta_start <= beta_end, got beta_start={cfg.beta_start!r}, beta_end={cfg.beta_end!r}.")
    _check_choice("prediction_type", cfg.prediction_type, PREDICTION_TYPES)
    _check_choice("time_conditioning", cfg.time_conditioning, TIME_CONDITIONINGS)
    _check_choice("position_embedding", cfg.position_embedding, POSITION_EMBEDDINGS)
    _check_int("max_position_embeddings", cfg.max_position_embeddings)


def qgfd_settings(cfg) -> QGFDSettings:
    """The denoiser's `QGFDSettings` from a config's `qgfd_*` fields."""
    values = {field: getattr(cfg, name) for name, field in QGFD_FIELDS.items()}
    try:
        return QGFDSettings.from_dict(values)
    except ValueError as e:
        # QGFDSettings names its own field (`steps`); the caller wrote `qgfd_steps` (`--qgfd-steps`).
        bad = [name for name, field in QGFD_FIELDS.items() if not _valid_alone(field, values[field])]
        raise ValueError(f"{', '.join(f'`{n}`' for n in bad) or 'The qgfd_* fields'}: {e}") from None


def _valid_alone(field, value) -> bool:
    try:
        QGFDSettings.from_dict({field: value})
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------
# The seed's dataclass
# ----------------------------------------------------------------------------------------


@dataclass
class DiffusionConfig:
    """The seed's configuration of the QGFD denoiser (a plain dataclass).

    Args:
        d_model (`int`, defaults to 512): width of the denoiser.
        num_heads (`int`, defaults to 8): attention heads; must divide `d_model`.
        num_layers (`int`, defaults to 4): number of `DecoderBlock`s.
        d_ff (`int`, defaults to 2048): hidden width of each block's feed-forward network.
        latent_dim (`int`, defaults to 512): width of the latents the denoiser reads and
            predicts. The modality models require it to equal their encoder's width
            (T5 `d_model`, ViT/Wav2Vec2 `hidden_size`, `C * patch_size**2` for pixel patches).
        num_timesteps (`int`, defaults to 1000): diffusion steps T.
        qgfd_steps (`int`, defaults to 1), qgfd_alpha (`float`, defaults to 0.5), qgfd_graph,
            qgfd_mix, qgfd_key_temperature, qgfd_detach_graph, qgfd_learnable_alpha,
            qgfd_alpha_max, qgfd_warmup_steps: the QGFD settings of the denoiser's
            self-attention (see `qgfd_hf.QGFDSettings`).
        dropout (`float`, defaults to 0.0): dropout in attention and feed-forward layers.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"cosine"` or `"sqrt"`.
        beta_start (`float`, defaults to 1e-4), beta_end (`float`, defaults to 2e-2): linear schedule's ends.
        prediction_type (`str`, defaults to `"epsilon"`): `"epsilon"`, `"sample"` or `"v"`.
        time_conditioning (`str`, defaults to `"adaln"`): `"adaln"` (DiT's adaLN-Zero) or
            `"add"` (the seed: the time embedding is added to every token).
        position_embedding (`str`, defaults to `"sinusoidal"`): `"sinusoidal"`, `"learned"` or `"none"`.
        max_position_embeddings (`int`, defaults to 1024): longest latent sequence of learned positions.

    Example:
        >>> cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=32)
        >>> cfg.num_timesteps
        1000
    """

    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 4
    d_ff: int = 2048
    latent_dim: int = 512
    num_timesteps: int = 1000
    qgfd_steps: int = _QGFD_DEFAULTS.steps
    qgfd_alpha: float = _QGFD_DEFAULTS.alpha
    qgfd_graph: str = _QGFD_DEFAULTS.graph
    qgfd_mix: str = _QGFD_DEFAULTS.mix
    qgfd_key_temperature: float = _QGFD_DEFAULTS.key_temperature
    qgfd_detach_graph: bool = _QGFD_DEFAULTS.detach_graph
    qgfd_learnable_alpha: bool = _QGFD_DEFAULTS.learnable_alpha
    qgfd_alpha_max: float = _QGFD_DEFAULTS.alpha_max
    qgfd_warmup_steps: int = _QGFD_DEFAULTS.warmup_steps
    dropout: float = 0.0
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    prediction_type: str = "epsilon"
    time_conditioning: str = "adaln"
    position_embedding: str = "sinusoidal"
    max_position_embeddings: int = 1024

    def __post_init__(self):
        validate_diffusion_settings(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiffusionConfig":
        """A config of a named size in `QGFD_PRESETS` ("tiny", "small", "base", "large")."""
        _check_choice("preset", name, tuple(QGFD_PRESETS))
        values = dict(QGFD_PRESETS[name], latent_dim=QGFD_PRESETS[name]["d_model"])
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


DIFFUSION_FIELDS = tuple(f.name for f in fields(DiffusionConfig))
