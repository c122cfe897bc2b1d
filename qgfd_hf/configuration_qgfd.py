# coding=utf-8
"""Configurations of the QGFD diffusion models.

- `DiffusionConfig`: the seed's dataclass (the denoiser's sizes, QGFD settings, schedule),
  kept for the seed's quickstart and accepted by `QGFDDiffusionBackbone(cfg)`.
- `QGFDConfig(PretrainedConfig)`: every hyperparameter of a Hugging Face QGFD diffusion
  model, with the pretrained encoder's own config nested as `backbone_config`.
- One subclass per model, each with its own `model_type` so that `AutoModel` returns the
  right class: `QGFDTextConfig` ("qgfd_text"), `QGFDImageConfig` ("qgfd_image"),
  `QGFDAudioConfig` ("qgfd_audio"), `QGFDVideoConfig` ("qgfd_video"),
  `QGFDTabularConfig` ("qgfd_tabular") and `QGFDSharedConfig` ("qgfd_shared").

Every value is checked in `__init__`; a bad one raises `ValueError` naming the value and
what is allowed. Sizes derived from the pretrained encoder (`latent_dim`, image size, ...)
are resolved here, so `latent_shape` needs nothing but the config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Sequence

from transformers import AutoConfig, PretrainedConfig

from .attention_qgfd import QGFDSettings
from .scheduling_qgfd import BETA_SCHEDULES, PREDICTION_TYPES

# True when this file is the installed `qgfd_hf` package, False in a `trust_remote_code` copy.
_INSTALLED = __name__.split(".")[0] == "qgfd_hf"

MODALITIES = ("text", "image", "audio", "video", "tabular")
ALL_MODALITIES = MODALITIES + ("shared",)
TIME_CONDITIONINGS = ("adaln", "add")
POSITION_EMBEDDINGS = ("sinusoidal", "learned", "none")
DENOISERS = ("qgfd", "pretrained")
# denoiser="pretrained": the backbone families whose Transformer stack can be the denoiser, per
# modality (`model_type` of `backbone_config`). The tabular model has no pretrained backbone, and the
# shared model no single one (see `QGFDConfig._validate_denoiser`).
PRETRAINED_STACKS = {
    "text": ("t5", "mt5"),
    "image": ("vit",),
    "video": ("vit",),
    "audio": ("wav2vec2",),
    # One denoiser for every modality: T5's encoder stack, whose relative position bias fits any
    # modality's latent length (the shared config's own `backbone_config`; the factory takes the
    # text backbone's).
    "shared": ("t5", "mt5"),
}
IMAGE_LATENT_SPACES = ("vit", "pixels")
AUDIO_LATENT_SPACES = ("waveform", "mdct", "spectrogram", "wav2vec2")
VIDEO_MOTION_COMPENSATION = (None, "centroid")

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


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}.")


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
    qgfd_steps: int = 1
    qgfd_alpha: float = 0.5
    qgfd_graph: str = "attention"
    qgfd_mix: str = "seed"
    qgfd_key_temperature: float = 1.0
    qgfd_detach_graph: bool = False
    qgfd_learnable_alpha: bool = False
    qgfd_alpha_max: float = 1.0
    qgfd_warmup_steps: int = 0
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


# Keys transformers itself writes into (and reads from) every config.json, or passes on load.
_TRANSFORMERS_CONFIG_KEYS = frozenset(
    {"_name_or_path", "name_or_path", "architectures", "auto_map", "custom_pipelines", "model_type", "transformers_version",
     "_commit_hash", "attn_implementation", "_attn_implementation", "_attn_implementation_autoset", "experts_implementation",
     "output_attentions", "output_hidden_states", "return_dict", "dtype", "torch_dtype", "chunk_size_feed_forward",
     "is_encoder_decoder", "id2label", "label2id", "num_labels", "problem_type", "tie_word_embeddings", "use_cache",
     "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "tokenizer_class", "prefix",
     "task_specific_params", "finetuning_task", "pruned_heads", "tf_legacy_loss", "use_bfloat16", "qgfd"}
)


def _check_known_kwargs(cls, kwargs) -> None:
    """A config field that no class in `cls`'s hierarchy takes is a typo, not a new field:
    `num_layer=1` would otherwise build the default 4 layers and store `num_layer` beside them."""
    import difflib
    import inspect

    unknown = [k for k in kwargs if k not in _TRANSFORMERS_CONFIG_KEYS]
    if not unknown:
        return
    known = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            known.update(p for p in inspect.signature(vars(klass)["__init__"]).parameters if p not in ("self", "kwargs"))
    unknown = [k for k in unknown if k not in known]
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, n=1)) else repr(k) for k in unknown]
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(hints)}; see its docstring for the fields it takes.")


def _to_config(value, name):
    """None, a config, or a dict with `model_type` (as saved in config.json) -> a config or None."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        d = dict(value)
        model_type = d.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"`{name}` as a dict needs a `model_type` key, got keys {sorted(d)}.")
        return AutoConfig.for_model(model_type, **d)
    raise ValueError(f"`{name}` must be None, a PretrainedConfig or a dict, got {type(value).__name__}.")


# ----------------------------------------------------------------------------------------
# QGFDConfig
# ----------------------------------------------------------------------------------------


class QGFDConfig(PretrainedConfig):
    r"""Configuration of a QGFD diffusion model: the denoiser, QGFD attention, the noise
    schedule, the modality and its pretrained encoder.

    The six model classes each have a subclass of this config (`QGFDTextConfig`, ...) with
    its own `model_type` and the modality's own fields; use those. `QGFDConfig` itself holds
    and checks the fields they share, and no model is registered for it.

    Args:
        modality (`str`, defaults to `"text"`): one of "text", "image", "audio", "video",
            "tabular", "shared" (fixed by each subclass).
        d_model, num_heads, num_layers, d_ff, latent_dim, num_timesteps, dropout, qgfd_steps,
            qgfd_alpha, qgfd_graph, qgfd_mix, qgfd_key_temperature, qgfd_detach_graph,
            qgfd_learnable_alpha, qgfd_alpha_max, qgfd_warmup_steps, beta_schedule, beta_start,
            beta_end, prediction_type, time_conditioning, position_embedding,
            max_position_embeddings: as in `DiffusionConfig`. `latent_dim=None` (the default)
            takes the width the modality's encoder produces; a value that disagrees with it
            raises `ValueError`.
        position_grid (`list[int]` or `"auto"`, *optional*): the latent tokens as a row-major grid,
            e.g. `[frames, rows, columns]` for video: the denoiser's positions are then
            factorised, one embedding per axis (sinusoidal: each axis its own share of
            `d_model`, concatenated; learned: one table per axis, summed), so it knows a
            token's frame and its 2-D place. The product must equal the latent length.
            `"auto"`: the modality's own grid (images `[rows, columns]`, video `[frames, rows,
            columns]`). None (the default; video's default is `"auto"`): 1-D positions over the
            L tokens. Not used by `denoiser="pretrained"` (the stack's own positions).
        backbone_name (`str`, *optional*): the Hub id or folder the pretrained encoder came from
            (recorded for model cards; loading uses the weights saved with the model).
        backbone_config (`PretrainedConfig` or `dict`, *optional*): the pretrained encoder's own
            config (T5, ViT, Wav2Vec2, ...), nested in this one.
        freeze_encoder (`bool`, defaults to `True`): freeze the encoder that produces x0 (and keep
            it in eval mode). Trained through the diffusion loss, latents collapse toward zero,
            where noise is trivially predictable. (Text: x0 are the token embeddings; the T5
            layers that encode the source text follow `train_condition_encoder`.)
        backbone_qgfd (`dict`, *optional*): QGFD settings (`steps`, `alpha`, `graph`, `mix`, ...)
            for the pretrained encoder's own self-attention, applied with
            `qgfd_hf.patching_qgfd.patch_model`. None (default): the encoder is left unchanged.
        denoiser (`str`, defaults to `"qgfd"`): `"qgfd"`, the fresh `QGFDDiffusionBackbone`; or
            `"pretrained"`, the backbone's own Transformer stack as the denoiser
            (`modeling_qgfd_pretrained.PretrainedDenoiser`): T5's encoder stack for text, ViT's
            layers for images and video, Wav2Vec2's Transformer encoder for audio (see
            `PRETRAINED_STACKS`), QGFD-patched with the `qgfd_*` settings, trained, with
            adaLN-Zero timestep conditioning and projections from and to the latents. It takes
            the stack's own width, heads, layers, dropout and positions, so `num_layers`,
            `d_ff`, `dropout`, `position_embedding` and `max_position_embeddings` do not apply
            to it; `d_model` stays the width of the conditioning tokens (`encode_condition`)
            and of the learned decoders. Images in `latent_space="pixels"` may then take a ViT
            `backbone_config`, used by the denoiser only. The shared model takes a T5 stack as
            its `backbone_config` (the factory uses the text backbone's): T5's relative positions
            fit every modality's latent length. Not available for tables (no pretrained backbone); needs
            `time_conditioning="adaln"`.
        conditional (`bool`, defaults to `False`): whether the model takes a source text as its
            condition (text models only; class labels are `num_classes`).
        num_classes (`int`, *optional*): class-conditional generation (DiT): the number of classes.
            A learned label embedding of `num_classes + 1` rows (the last is the null label) is added
            to the timestep embedding, so it reaches every block through adaLN. Images, audio and
            video; tables are class-conditional through their `label_column` instead, and text
            through its source text. None (the default): no class labels.
        cond_dropout_prob (`float`, *optional*): the probability that a training example's condition
            (its class label; a table row's label; a text model's source text) is replaced by the
            learned null condition (DiT's label dropout), so that one model samples conditionally
            and unconditionally and takes classifier-free guidance. In [0, 1); default 0.1 with
            `num_classes`, else 0. A model with 0 has no unconditional path and refuses a
            `guidance_scale` other than 1.
        latent_scale (`float`, defaults to 1.0): latents are the encoder's output times this
            (aim: about unit standard deviation, as Stable Diffusion's scale factor).
        recon_weight (`float`, defaults to 1.0): weight of the learned decoder's reconstruction
            loss in `compute_loss`.
        decoder_layers (`int`, defaults to 2), decoder_dim (`int`, *optional*, defaults to
            `d_model`): size of the learned latent-to-data decoder (image, audio, video).
        initializer_range (`float`, defaults to 0.02): std of the normal initialisations.

    Example:
        >>> from qgfd_hf import QGFDTabularConfig
        >>> cfg = QGFDTabularConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, num_features=5)
        >>> cfg.model_type, cfg.num_latent_tokens()
        ('qgfd_tabular', 5)
    """

    model_type = "qgfd"
    sub_configs = {"backbone_config": AutoConfig}
    _fixed_modality = None  # set by each subclass

    def __init__(
        self,
        modality: Optional[str] = None,
        d_model: int = 512,
        num_heads: int = 8,
        num_layers: int = 4,
        d_ff: int = 2048,
        latent_dim: Optional[int] = None,
        num_timesteps: int = 1000,
        dropout: float = 0.0,
        qgfd_steps: int = 1,
        qgfd_alpha: float = 0.5,
        qgfd_graph: str = "attention",
        qgfd_mix: str = "seed",
        qgfd_key_temperature: float = 1.0,
        qgfd_detach_graph: bool = False,
        qgfd_learnable_alpha: bool = False,
        qgfd_alpha_max: float = 1.0,
        qgfd_warmup_steps: int = 0,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        prediction_type: str = "epsilon",
        time_conditioning: str = "adaln",
        position_embedding: str = "sinusoidal",
        max_position_embeddings: int = 1024,
        position_grid=None,
        backbone_name: Optional[str] = None,
        backbone_config=None,
        freeze_encoder: bool = True,
        backbone_qgfd: Optional[dict] = None,
        denoiser: str = "qgfd",
        conditional: bool = False,
        num_classes: Optional[int] = None,
        cond_dropout_prob: Optional[float] = None,
        latent_scale: float = 1.0,
        recon_weight: float = 1.0,
        decoder_layers: int = 2,
        decoder_dim: Optional[int] = None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        if modality is None:
            modality = self._fixed_modality or "text"
        _check_choice("modality", modality, ALL_MODALITIES)
        if self._fixed_modality is not None and modality != self._fixed_modality:
            raise ValueError(f"{type(self).__name__} is for modality {self._fixed_modality!r}, got modality={modality!r}.")
        self.modality = modality
        self.d_model = d_model
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.d_ff = d_ff
        self.latent_dim = latent_dim
        self.num_timesteps = num_timesteps
        self.dropout = dropout
        self.qgfd_steps = qgfd_steps
        self.qgfd_alpha = qgfd_alpha
        self.qgfd_graph = qgfd_graph
        self.qgfd_mix = qgfd_mix
        self.qgfd_key_temperature = qgfd_key_temperature
        self.qgfd_detach_graph = qgfd_detach_graph
        self.qgfd_learnable_alpha = qgfd_learnable_alpha
        self.qgfd_alpha_max = qgfd_alpha_max
        self.qgfd_warmup_steps = qgfd_warmup_steps
        self.beta_schedule = beta_schedule
        self.beta_start = beta_start
        self.beta_end = beta_end
        self.prediction_type = prediction_type
        self.time_conditioning = time_conditioning
        self.position_embedding = position_embedding
        self.max_position_embeddings = max_position_embeddings
        self.position_grid = list(position_grid) if isinstance(position_grid, (list, tuple)) else position_grid
        self.backbone_name = backbone_name
        self.backbone_config = _to_config(backbone_config, "backbone_config")
        self.freeze_encoder = freeze_encoder
        if backbone_qgfd is not None and not isinstance(backbone_qgfd, Mapping):
            raise ValueError(f"`backbone_qgfd` must be a dict of QGFD settings (steps, alpha, ...) or None, got {backbone_qgfd!r}.")
        self.backbone_qgfd = dict(backbone_qgfd) if backbone_qgfd is not None else None
        self.denoiser = denoiser
        self.conditional = conditional
        self.num_classes = num_classes
        self.cond_dropout_prob = cond_dropout_prob
        self.latent_scale = latent_scale
        self.recon_weight = recon_weight
        self.decoder_layers = decoder_layers
        self.decoder_dim = decoder_dim
        self.initializer_range = initializer_range
        if _INSTALLED:
            # Saved folders name the pipeline in `custom_pipelines` so that, where qgfd_hf is
            # not installed, `pipeline(model=dir, trust_remote_code=True)` finds it. Where it is
            # installed, "qgfd-diffusion" is registered already; keeping the entry would make
            # transformers ask for `trust_remote_code` (see QGFDPreTrainedModel.save_pretrained).
            kwargs.pop("custom_pipelines", None)
        _check_known_kwargs(type(self), kwargs)
        super().__init__(**kwargs)
        self._validate_common()
        self._validate_modality()
        self._validate_conditioning()
        self._validate_position_grid()
        self._validate_denoiser()

    # -- validation ---------------------------------------------------------------------

    def _validate_common(self):
        validate_diffusion_settings(self)
        if self.backbone_name is not None and not isinstance(self.backbone_name, str):
            raise ValueError(f"`backbone_name` must be a str (Hub id or folder) or None, got {self.backbone_name!r}.")
        _check_bool("freeze_encoder", self.freeze_encoder)
        if self.backbone_qgfd is not None:
            QGFDSettings.from_dict(self.backbone_qgfd)  # ValueError names unknown or bad settings
            if self.backbone_config is None:
                raise ValueError(
                    "`backbone_qgfd` patches the pretrained encoder, but this config has no `backbone_config`"
                    " (for the shared model, set it in each modality's config)."
                )
        _check_choice("denoiser", self.denoiser, DENOISERS)
        _check_bool("conditional", self.conditional)
        if self.conditional and self.modality not in ("text", "shared"):
            raise ValueError(
                f"`conditional` (a source text as the condition) is for text models; modality={self.modality!r} needs "
                "conditional=False. For class labels pass num_classes=K."
            )
        _check_float("latent_scale", self.latent_scale, 0.0, None, low_open=True)
        _check_float("recon_weight", self.recon_weight, 0.0, None)
        _check_int("decoder_layers", self.decoder_layers, minimum=0)
        if self.decoder_dim is not None:
            _check_int("decoder_dim", self.decoder_dim)
            if self.decoder_dim % self.num_heads:
                raise ValueError(f"`num_heads`={self.num_heads} must divide `decoder_dim`={self.decoder_dim}.")
        _check_float("initializer_range", self.initializer_range, 0.0, None, low_open=True)

    def _validate_modality(self):
        """Resolve and check the modality's sizes (subclasses)."""

    def _validate_conditioning(self):
        """num_classes (class labels) and cond_dropout_prob (the null condition of classifier-free guidance)."""
        if self.num_classes is not None:
            _check_int("num_classes", self.num_classes)
            why = {
                "text": "text models are conditioned on a source text (`conditional`)",
                "tabular": "tables are class-conditional through `label_column` (its categories are the classes)",
                "shared": "the shared model takes no class labels",
            }.get(self.modality)
            if why is not None:
                raise ValueError(f"`num_classes`={self.num_classes} is for image, audio and video models; {why}. Pass num_classes=None.")
        if self.cond_dropout_prob is None:
            self.cond_dropout_prob = 0.1 if self.num_classes is not None else 0.0
        _check_float("cond_dropout_prob", self.cond_dropout_prob, 0.0, 1.0, high_open=True)
        if self.cond_dropout_prob > 0:
            if self.modality == "shared":
                raise ValueError(f"`cond_dropout_prob`={self.cond_dropout_prob}: the shared model has no null condition; pass 0.")
            if not self.has_condition:
                raise ValueError(
                    f"`cond_dropout_prob`={self.cond_dropout_prob} drops the condition in training, but this {self.modality} model has "
                    "none (set num_classes, a text model's conditional=True, or a table's label_column); pass 0."
                )

    def _validate_position_grid(self):
        """position_grid: None, "auto" (the modality's grid) or positive ints whose product is the latent length."""
        grid = self.position_grid
        if grid is None:
            return
        if grid == "auto":
            grid = self.position_grid = self._auto_position_grid()
        if not isinstance(grid, list) or not grid or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in grid):
            raise ValueError(f"`position_grid` must be None, 'auto' or a list of ints >= 1 (e.g. [frames, rows, columns]), got {grid!r}.")
        try:
            length = self.num_latent_tokens()
        except NotImplementedError:
            raise ValueError(f"`position_grid` needs a fixed latent length, which modality {self.modality!r} does not have; pass None.") from None
        if math.prod(grid) != length:
            raise ValueError(f"`position_grid`={grid} holds {math.prod(grid)} tokens, but the latents have {length}; the product must equal it.")

    def _auto_position_grid(self):
        raise ValueError(f"position_grid='auto' is defined for images and video, not modality {self.modality!r}; give a list of ints.")

    def _validate_denoiser(self):
        """denoiser="pretrained" needs a backbone whose Transformer stack can denoise (`PRETRAINED_STACKS`)."""
        if self.denoiser != "pretrained":
            return
        usable = ", ".join(f"{m}: {'/'.join(types)}" for m, types in PRETRAINED_STACKS.items())
        if self.modality not in PRETRAINED_STACKS:
            why = "the tabular model has no pretrained backbone"
            raise ValueError(
                f"denoiser='pretrained' uses a pretrained backbone's Transformer stack as the denoiser, but {why}. "
                f"Use denoiser='qgfd', or a single-modality model with a backbone ({usable})."
            )
        model_type = getattr(self.backbone_config, "model_type", None)
        if model_type not in PRETRAINED_STACKS[self.modality]:
            got = "no backbone_config" if self.backbone_config is None else f"backbone model_type={model_type!r}"
            raise ValueError(
                f"denoiser='pretrained' for modality {self.modality!r} needs a backbone_config of type "
                f"{' or '.join(repr(t) for t in PRETRAINED_STACKS[self.modality])} (its Transformer stack becomes the "
                f"denoiser), got {got}. Usable backbones: {usable}; or use denoiser='qgfd'."
            )
        if self.time_conditioning != "adaln":
            raise ValueError(
                f"denoiser='pretrained' takes the timestep through adaLN-Zero; time_conditioning must be 'adaln', "
                f"got {self.time_conditioning!r}."
            )

    def _resolve_latent_dim(self, width: int, what: str):
        """latent_dim is fixed by the encoder: take it when None, refuse a different value."""
        if self.latent_dim is None:
            self.latent_dim = int(width)
        elif self.latent_dim != width:
            raise ValueError(
                f"`latent_dim`={self.latent_dim} must equal {what} ({width}) for modality {self.modality!r}: "
                f"the latents are that encoder's outputs. Pass latent_dim={width} or latent_dim=None."
            )

    def _require_backbone(self, attrs: Sequence[str], what: str):
        if self.backbone_config is None:
            raise ValueError(f"modality {self.modality!r} needs `backbone_config` (a {what} config), got None.")
        missing = [a for a in attrs if not hasattr(self.backbone_config, a)]
        if missing:
            raise ValueError(
                f"`backbone_config` ({type(self.backbone_config).__name__}) is not a {what} config: it lacks {missing}."
            )

    # -- helpers ------------------------------------------------------------------------

    @property
    def has_condition(self) -> bool:
        """Whether the model generates given a condition: a source text, a class label, or a table's label column."""
        return bool(self.conditional or self.num_classes is not None or getattr(self, "label_column", None) is not None)

    @property
    def decoder_width(self) -> int:
        return self.decoder_dim or self.d_model

    def qgfd_settings(self) -> QGFDSettings:
        """The denoiser's QGFD settings as a `QGFDSettings`."""
        return qgfd_settings(self)

    def num_latent_tokens(self) -> int:
        """L, the length of the latent sequence the denoiser sees."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed latent length.")

    def diffusion_config(self) -> DiffusionConfig:
        """The seed's `DiffusionConfig` view of this config."""
        values = {name: getattr(self, name) for name in DIFFUSION_FIELDS}
        return DiffusionConfig(**values)

    @classmethod
    def from_diffusion_config(cls, diffusion_cfg: Optional[DiffusionConfig] = None, **kwargs) -> "QGFDConfig":
        """Build from the seed's `DiffusionConfig` (or a dict of its fields); `kwargs` override.

        `latent_dim` is taken from `diffusion_cfg` unless `kwargs` sets it (None derives it
        from the encoder).
        """
        if diffusion_cfg is None:
            values = {}
        elif isinstance(diffusion_cfg, DiffusionConfig):
            values = diffusion_cfg.to_dict()
        elif isinstance(diffusion_cfg, dict):
            values = DiffusionConfig(**diffusion_cfg).to_dict()
        else:
            raise ValueError(f"`diffusion_cfg` must be a DiffusionConfig, a dict or None, got {type(diffusion_cfg).__name__}.")
        values.update(kwargs)
        return cls(**values)


def _backbone_width(cfg) -> int:
    for attr in ("d_model", "hidden_size"):
        if hasattr(cfg, attr):
            return int(getattr(cfg, attr))
    raise ValueError(f"Cannot read the width of backbone config {type(cfg).__name__} (no d_model or hidden_size).")


class QGFDTextConfig(QGFDConfig):
    """Config of `TextQGFDDiffusionModel`: diffusion over a T5's token embeddings (Diffusion-LM).

    Args:
        seq_len (`int`, defaults to 64): L, the length of generated (and training) sequences;
            shorter inputs are padded with the pad token, longer ones raise.
        conditional (`bool`, defaults to `True`): condition on a source text through the T5
            encoder's states, projected to `d_model`.
        pad_token_id (`int`, *optional*): the pad token (default: the backbone's, else 0).
        clamp_to_embeddings (`bool`, defaults to `False`): when sampling, replace the predicted
            x0 by its nearest token embedding at every step (Diffusion-LM's clamping trick).
        train_condition_encoder (`bool`, defaults to `True`): the T5 encoder layers that encode
            the source text learn with the denoiser; the token embeddings (the latent space)
            stay frozen while `freeze_encoder` is True. On a word-reversal task with a random
            tiny T5, 2000 steps reached 93% exact match with it and 17% without. False keeps
            the whole T5 frozen.
        **kwargs: `QGFDConfig` arguments. `backbone_config` must be a text encoder config
            (T5 or any config with `vocab_size` and `d_model`/`hidden_size`);
            `latent_dim` is its width.

    Example:
        >>> from transformers import T5Config
        >>> cfg = QGFDTextConfig(backbone_config=T5Config(vocab_size=50, d_model=32, num_layers=1, num_heads=4, d_kv=8),
        ...                      d_model=32, num_heads=4, num_layers=2, d_ff=64, seq_len=8)
        >>> cfg.latent_dim, cfg.num_latent_tokens()
        (32, 8)
    """

    model_type = "qgfd_text"
    _fixed_modality = "text"

    def __init__(
        self,
        seq_len: int = 64,
        conditional: bool = True,
        pad_token_id: Optional[int] = None,
        clamp_to_embeddings: bool = False,
        train_condition_encoder: bool = True,
        **kwargs,
    ):
        self.seq_len = seq_len
        self.pad_token_id = pad_token_id
        self.clamp_to_embeddings = clamp_to_embeddings
        self.train_condition_encoder = train_condition_encoder
        super().__init__(conditional=conditional, **kwargs)

    def _validate_modality(self):
        _check_int("seq_len", self.seq_len)
        _check_bool("clamp_to_embeddings", self.clamp_to_embeddings)
        _check_bool("train_condition_encoder", self.train_condition_encoder)
        self._require_backbone(["vocab_size"], "text encoder (e.g. T5)")
        self._resolve_latent_dim(_backbone_width(self.backbone_config), "the text encoder's embedding width")
        if self.pad_token_id is None:
            self.pad_token_id = getattr(self.backbone_config, "pad_token_id", None) or 0
        _check_int("pad_token_id", self.pad_token_id, minimum=0)
        if self.pad_token_id >= self.backbone_config.vocab_size:
            raise ValueError(f"`pad_token_id`={self.pad_token_id} is outside the vocabulary (size {self.backbone_config.vocab_size}).")

    def num_latent_tokens(self) -> int:
        return self.seq_len


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
            motion estimate.
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

    def num_latent_tokens(self) -> int:
        return self.num_frames // self.tubelet_frames * super().num_latent_tokens()

    def _auto_position_grid(self):
        return [self.num_frames // self.tubelet_frames] + super()._auto_position_grid()


def _conv_hop_and_receptive_field(kernels: Sequence[int], strides: Sequence[int]):
    """Hop (total stride) and receptive field, in samples, of a stack of 1-D convolutions."""
    hop, field = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * hop
        hop *= s
    return hop, field


class QGFDAudioConfig(QGFDConfig):
    """Config of `AudioQGFDDiffusionModel`: waveform frames, or frozen Wav2Vec2 frame latents.

    Args:
        num_samples (`int`, defaults to 16000): N, samples per clip (fixed; sampling makes clips
            of this length).
        sampling_rate (`int`, defaults to 16000): the waveform's sampling rate.
        latent_space (`str`, *optional*): `"waveform"`, `"mdct"`, `"spectrogram"` or `"wav2vec2"`; default
            `"wav2vec2"` when a `backbone_config` is given, else `"waveform"`.

            - `"waveform"`: non-overlapping frames of `frame_size` samples are the tokens,
              `[B, N / frame_size, frame_size]`, divided by `audio_scale`; decoding is the exact
              inverse (as pixel patches are for images). No encoder, nothing to learn.
            - `"mdct"`: the modified discrete cosine transform of the waveform (sine window,
              hop `frame_size`, 50% overlap: critically sampled and exactly invertible by
              overlap-add), one token per frame, `[B, N / frame_size + 1, frame_size]`, each
              frequency bin divided by the square root of its spread in the training clips (fitted with
              `audio_scale`, saved as the adapter's `bin_scale` buffer). A sound's band is then a
              few coordinates, and the denoiser's errors are shaped like the data's spectrum.
            - `"spectrogram"`: the log-magnitude STFT (Hann window of `2 * frame_size`, hop
              `frame_size`), one token per frame, `[B, N / frame_size + 1, frame_size + 1]`,
              each bin standardised by its training mean and std; decoded by Griffin-Lim (the
              phase is re-estimated: magnitudes decode well, samples not sample-exactly).
            - `"wav2vec2"`: the frozen Wav2Vec2's last hidden states x `latent_scale`, decoded to
              the waveform by a learned decoder (`LatentDecoder` + transposed convolution),
              trained by MSE plus `spectral_loss_weight` x a multi-resolution STFT loss. On the
              audio demo's sounds a random (offline) Wav2Vec2 decodes poorly; see
              docs/modality_audio.md.
        frame_size (`int`, *optional*, defaults to 80): `"waveform"` / `"mdct"`: samples per token
            (the hop); must divide `num_samples`.
        audio_scale (`float`, *optional*): the training waveforms' RMS, fitted from
            the data (`AudioQGFDDiffusionModel.fit_audio_scale`) and saved with the model; latents
            are waveform / audio_scale, so about unit spread. None means never fitted: the model
            refuses to encode (train) and decode (sample) until it is fitted.
        spectral_loss_weight (`float`, defaults to 0.0): `"wav2vec2"`: weight of the decoder's
            multi-resolution STFT loss (spectral convergence + log-magnitude L1) beside its MSE.
            0 is the seed's MSE-only decoder; the audio task (`qgfd-hf train` / `demo`) uses 1.
        **kwargs: `QGFDConfig` arguments; with `"wav2vec2"`, `backbone_config` must be a
            Wav2Vec2-style config (`conv_kernel`, `conv_stride`, `hidden_size`).

    Example:
        >>> cfg = QGFDAudioConfig(num_samples=400, frame_size=40, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.latent_space, cfg.latent_dim, cfg.num_latent_tokens()
        ('waveform', 40, 10)
        >>> from transformers import Wav2Vec2Config
        >>> w = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        ...                    conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        ...                    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
        >>> cfg = QGFDAudioConfig(backbone_config=w, num_samples=400, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.latent_space, cfg.num_latent_tokens()
        ('wav2vec2', 19)
    """

    model_type = "qgfd_audio"
    _fixed_modality = "audio"

    def __init__(
        self,
        num_samples: int = 16000,
        sampling_rate: int = 16000,
        latent_space: Optional[str] = None,
        frame_size: Optional[int] = None,
        audio_scale: Optional[float] = None,
        spectral_loss_weight: float = 0.0,
        **kwargs,
    ):
        self.num_samples = num_samples
        self.sampling_rate = sampling_rate
        self.latent_space = latent_space
        self.frame_size = frame_size
        self.audio_scale = audio_scale
        self.spectral_loss_weight = spectral_loss_weight
        super().__init__(**kwargs)

    def _validate_modality(self):
        if self.latent_space is None:
            self.latent_space = "wav2vec2" if self.backbone_config is not None else "waveform"
        _check_choice("latent_space", self.latent_space, AUDIO_LATENT_SPACES)
        _check_int("sampling_rate", self.sampling_rate)
        _check_int("num_samples", self.num_samples)
        _check_float("spectral_loss_weight", self.spectral_loss_weight, 0.0, None)
        if self.audio_scale is not None:
            _check_float("audio_scale", self.audio_scale, 0.0, None, low_open=True)
        if self.latent_space in ("waveform", "mdct", "spectrogram"):
            if self.backbone_config is not None and self.denoiser != "pretrained":
                raise ValueError(
                    f'latent_space="{self.latent_space}" uses no encoder; pass backbone_config=None (a Wav2Vec2 backbone_config is '
                    'taken only with denoiser="pretrained", as the denoiser), or latent_space="wav2vec2".'
                )
            if self.backbone_qgfd is not None:
                raise ValueError(f'latent_space="{self.latent_space}" has no encoder for `backbone_qgfd` to patch; pass backbone_qgfd=None.')
            self.frame_size = 80 if self.frame_size is None else self.frame_size
            _check_int("frame_size", self.frame_size)
            if self.num_samples % self.frame_size:
                raise ValueError(
                    f"`frame_size`={self.frame_size} must divide `num_samples`={self.num_samples} "
                    f"(the latents are whole frames)."
                )
            width = self.frame_size + 1 if self.latent_space == "spectrogram" else self.frame_size
            self._resolve_latent_dim(width, "frame_size (+ 1 for spectrogram latents: the STFT's bins)")
            return
        if self.frame_size is not None:
            raise ValueError('`frame_size` is for latent_space="waveform", "mdct" or "spectrogram"; with "wav2vec2" the encoder sets the frames. Pass None.')
        self._require_backbone(["conv_kernel", "conv_stride", "hidden_size"], "Wav2Vec2")
        hop, field = self.hop_and_receptive_field()
        if self.num_samples < field:
            raise ValueError(f"`num_samples`={self.num_samples} is shorter than the encoder's receptive field ({field} samples).")
        self._resolve_latent_dim(self.backbone_config.hidden_size, "the Wav2Vec2 hidden size")

    def hop_and_receptive_field(self):
        if self.latent_space == "waveform":
            return self.frame_size, self.frame_size
        if self.latent_space in ("mdct", "spectrogram"):
            return self.frame_size, 2 * self.frame_size
        return _conv_hop_and_receptive_field(self.backbone_config.conv_kernel, self.backbone_config.conv_stride)

    def num_latent_tokens(self) -> int:
        if self.latent_space == "waveform":
            return self.num_samples // self.frame_size
        if self.latent_space in ("mdct", "spectrogram"):
            return self.num_samples // self.frame_size + 1  # frames over the clip padded by one hop each side
        length = self.num_samples
        for k, s in zip(self.backbone_config.conv_kernel, self.backbone_config.conv_stride):
            length = (length - k) // s + 1  # Wav2Vec2's conv output length (no padding)
        return length


TABULAR_LATENT_SPACES = ("columns", "mlp")
COLUMN_KINDS = ("float", "int", "category")
NUMERIC_TRANSFORMS = ("quantile", "standard")
MAX_ONE_HOT = 16  # widest default token: categories beyond it get fixed random codes


class QGFDTabularConfig(QGFDConfig):
    """Config of `TabularQGFDDiffusionModel`: rows of a table <-> latents.

    Two latent spaces:

    - `"columns"` (default; TabDDPM's choice within Gaussian diffusion): one token per column,
      so the denoiser attends across columns and the latent is sized by the table. A numeric
      column's token is its normalised value (`numeric_transform`), a categorical column's a
      fixed code of its category (K = 2: -1 / +1; K <= latent_dim: a +-1 one-hot; wider: fixed
      random codes), decoded by the nearest code. Encoding and decoding are fixed maps:
      nothing to learn besides the denoiser.
    - `"mlp"` (the seed's): a frozen random MLP of the standardised features to `num_tokens`
      tokens of width `latent_dim`, and a learned MLP decoder (numeric columns only).

    Args:
        num_features (`int`, defaults to 8): F, columns per row (taken from `columns` when given).
        columns (`list[dict]`, *optional*): the table's schema, one dict per column:
            `{"name": str, "kind": "float" | "int" | "category", "categories": [...]}`
            (`categories`, JSON values, for "category" columns only; the model sees a
            category as its index in this list). Default: F float columns named
            `feature_names`, else `feature_0`, ...
        feature_names (`list[str]`, *optional*): column names (the pipeline returns rows as
            column -> value); with `columns`, they must agree.
        latent_space (`str`, defaults to `"columns"`): `"columns"` or `"mlp"` (see above).
        numeric_transform (`str`, defaults to `"quantile"`): "columns" latents: `"quantile"`
            (the empirical CDF of the training column, then the standard normal quantile:
            skewed columns become Gaussian, decoded values stay in the training range) or
            `"standard"` ((x - mean) / std).
        num_quantiles (`int`, defaults to 1000): knots of the quantile transform per column.
        label_column (`str`, *optional*): "columns" latents: a categorical column generated
            first, drawn from its training frequencies, with the other columns generated given
            it (class-conditional, as TabDDPM): its token stays clean while training (and out of
            the loss) and is held fixed while sampling.
        num_tokens (`int`, *optional*): "mlp" latents: L, tokens the features map to (default
            8); "columns" has one token per column (a different value raises).
        tabular_hidden_dim (`int`, defaults to 256): "mlp" latents: hidden width of the encoder
            and decoder MLPs.
        **kwargs: `QGFDConfig` arguments. `latent_dim`, the token width, defaults to 1 for
            "columns" when no categorical column has more than 2 categories, else to the most
            categories (at most 16); to `d_model` for "mlp".

    Example:
        >>> cfg = QGFDTabularConfig(columns=[{"name": "age", "kind": "int"}, {"name": "x", "kind": "float"},
        ...                                  {"name": "color", "kind": "category", "categories": ["red", "green", "blue"]}],
        ...                         d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.num_features, cfg.num_latent_tokens(), cfg.latent_dim
        (3, 3, 3)
        >>> QGFDTabularConfig(latent_space="mlp", num_features=4, num_tokens=2, d_model=32, num_heads=4,
        ...                   num_layers=2, d_ff=64).latent_dim
        32
    """

    model_type = "qgfd_tabular"
    _fixed_modality = "tabular"

    def __init__(
        self,
        num_features: Optional[int] = None,
        columns: Optional[Sequence[dict]] = None,
        feature_names: Optional[Sequence[str]] = None,
        latent_space: str = "columns",
        numeric_transform: str = "quantile",
        num_quantiles: int = 1000,
        label_column: Optional[str] = None,
        num_tokens: Optional[int] = None,
        tabular_hidden_dim: int = 256,
        **kwargs,
    ):
        _check_dict_list("columns", columns, "one {'name': str, 'kind': ...} per column")
        self.num_features = num_features
        self.columns = [dict(c) for c in columns] if columns is not None else None
        self.feature_names = _list_or_none("feature_names", feature_names, "strings")
        self.latent_space = latent_space
        self.numeric_transform = numeric_transform
        self.num_quantiles = num_quantiles
        self.label_column = label_column
        self.num_tokens = num_tokens
        self.tabular_hidden_dim = tabular_hidden_dim
        super().__init__(**kwargs)

    def _validate_modality(self):
        _check_choice("latent_space", self.latent_space, TABULAR_LATENT_SPACES)
        _check_choice("numeric_transform", self.numeric_transform, NUMERIC_TRANSFORMS)
        _check_int("num_quantiles", self.num_quantiles, minimum=2)
        _check_int("tabular_hidden_dim", self.tabular_hidden_dim)
        if self.backbone_config is not None:
            raise ValueError("The tabular model has no pretrained encoder; pass backbone_config=None.")
        self._resolve_columns()
        F = self.num_features
        if self.label_column is not None:
            if not isinstance(self.label_column, str):
                raise ValueError(f"`label_column` must be a column name (str) or None, got {self.label_column!r}.")
            kinds = {c["name"]: c["kind"] for c in self.columns}
            if kinds.get(self.label_column) != "category" or self.latent_space != "columns":
                raise ValueError(
                    f"`label_column`={self.label_column!r} must name a categorical column of latent_space='columns' latents; "
                    f"the columns are {kinds}, latent_space={self.latent_space!r}."
                )
        if self.latent_space == "mlp":
            if any(c["kind"] == "category" for c in self.columns):
                raise ValueError(
                    "latent_space='mlp' (the seed's MLP latents) takes numeric columns only; categorical columns "
                    f"{[c['name'] for c in self.columns if c['kind'] == 'category']} need latent_space='columns'."
                )
            self.num_tokens = 8 if self.num_tokens is None else self.num_tokens
            _check_int("num_tokens", self.num_tokens)
            if self.latent_dim is None:
                self.latent_dim = self.d_model
            return
        if self.num_tokens is not None and self.num_tokens != F:
            raise ValueError(
                f"`num_tokens`={self.num_tokens} applies to latent_space='mlp'; latent_space='columns' has one token "
                f"per column ({F}). Pass num_tokens=None, or latent_space='mlp'."
            )
        self.num_tokens = F
        if self.latent_dim is None:
            widest = max([len(c["categories"]) for c in self.columns if c["kind"] == "category"] + [1])
            self.latent_dim = 1 if widest <= 2 else min(widest, MAX_ONE_HOT)

    def _resolve_columns(self):
        """`columns`, `num_features` and `feature_names`, made consistent (and checked)."""
        if self.columns is None:
            F = 8 if self.num_features is None else self.num_features
            _check_int("num_features", F)
            names = self.feature_names
            if names is not None and (len(names) != F or not all(isinstance(n, str) for n in names)):
                raise ValueError(f"`feature_names` must be {F} strings, got {names!r}.")
            names = list(names or [f"feature_{i}" for i in range(F)])
            self.columns = [{"name": n, "kind": "float"} for n in names]
            self.num_features, self.feature_names = F, names
            return
        if not self.columns:
            raise ValueError("`columns` must name at least one column, got [].")
        for i, c in enumerate(self.columns):
            if not isinstance(c.get("name"), str) or c.get("kind") not in COLUMN_KINDS:
                raise ValueError(f"`columns[{i}]` must be {{'name': str, 'kind': one of {COLUMN_KINDS}}}, got {c!r}.")
            cats = c.get("categories")
            if c["kind"] == "category":
                if not isinstance(cats, (list, tuple)) or len(cats) < 1 or len(set(map(repr, cats))) != len(cats):
                    raise ValueError(f"Column {c['name']!r} is categorical: `categories` must be a list of distinct values, got {cats!r}.")
                c["categories"] = list(cats)
            elif cats is not None:
                raise ValueError(f"Column {c['name']!r} is {c['kind']}: only 'category' columns take `categories`.")
        names = [c["name"] for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"`columns` has duplicate names: {names}.")
        if self.num_features is not None and self.num_features != len(names):
            raise ValueError(f"`num_features`={self.num_features} disagrees with the {len(names)} `columns`.")
        if self.feature_names is not None and list(self.feature_names) != names:
            raise ValueError(f"`feature_names` {self.feature_names!r} disagree with the names in `columns` {names!r}.")
        self.num_features, self.feature_names = len(names), names

    def num_latent_tokens(self) -> int:
        return self.num_tokens


MODALITY_CONFIGS = {
    "text": QGFDTextConfig,
    "image": QGFDImageConfig,
    "audio": QGFDAudioConfig,
    "video": QGFDVideoConfig,
    "tabular": QGFDTabularConfig,
}


class QGFDSharedConfig(QGFDConfig):
    """Config of `SharedQGFDDiffusionModel`: one denoiser, one adapter per modality.

    Args:
        modalities (`list[str]`, defaults to `["text", "image"]`): the modalities the model
            serves; the first is the default of methods that take `modality=`.
        text_config, image_config, audio_config, video_config, tabular_config (modality config
            or `dict`, *optional*): each modality's own config (its encoder, sizes, latent
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
    sub_configs = {f"{m}_config": MODALITY_CONFIGS[m] for m in MODALITIES}

    def __init__(
        self,
        modalities: Sequence[str] = ("text", "image"),
        text_config=None,
        image_config=None,
        audio_config=None,
        video_config=None,
        tabular_config=None,
        latent_dim: int = 512,
        **kwargs,
    ):
        if isinstance(modalities, str) or not isinstance(modalities, (list, tuple)) or not modalities:
            raise ValueError(f"`modalities` must be a non-empty list drawn from {MODALITIES}, got {modalities!r}.")
        self.modalities = list(modalities)
        given = dict(text=text_config, image=image_config, audio=audio_config, video=video_config, tabular=tabular_config)
        for m, value in given.items():
            if isinstance(value, dict):
                value = MODALITY_CONFIGS[m](**{k: v for k, v in value.items() if k != "model_type"})
            elif value is not None and not isinstance(value, MODALITY_CONFIGS[m]):
                raise ValueError(f"`{m}_config` must be a {MODALITY_CONFIGS[m].__name__} or dict, got {type(value).__name__}.")
            setattr(self, f"{m}_config", value)
        kwargs.setdefault("conditional", bool(text_config is not None and getattr(self.text_config, "conditional", False)))
        super().__init__(latent_dim=latent_dim, **kwargs)

    def _validate_modality(self):
        for m in self.modalities:
            _check_choice("modality in `modalities`", m, MODALITIES)
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


QGFDConfig.register_for_auto_class()
for _cls in (QGFDTextConfig, QGFDImageConfig, QGFDAudioConfig, QGFDVideoConfig, QGFDTabularConfig, QGFDSharedConfig):
    _cls.register_for_auto_class()


def register_qgfd_configs() -> None:
    """Register every QGFD config with `AutoConfig` (`qgfd_hf` calls it as soon as transformers'
    `AutoConfig` is imported, see `registration_qgfd`; the models follow with `AutoModel`)."""
    for cls in (QGFDConfig, QGFDTextConfig, QGFDImageConfig, QGFDAudioConfig, QGFDVideoConfig, QGFDTabularConfig, QGFDSharedConfig):
        AutoConfig.register(cls.model_type, cls, exist_ok=True)


__all__ = [
    "ALL_MODALITIES",
    "AUDIO_LATENT_SPACES",
    "DiffusionConfig",
    "IMAGE_LATENT_SPACES",
    "MODALITIES",
    "MODALITY_CONFIGS",
    "QGFD_PRESETS",
    "QGFD_PRESET_PARAMS_M",
    "PRETRAINED_STACKS",
    "QGFDAudioConfig",
    "QGFDConfig",
    "QGFDImageConfig",
    "QGFDSharedConfig",
    "QGFDTabularConfig",
    "QGFDTextConfig",
    "QGFDVideoConfig",
    "TABULAR_LATENT_SPACES",
    "register_qgfd_configs",
]
