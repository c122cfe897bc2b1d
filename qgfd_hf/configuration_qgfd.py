# coding=utf-8
"""Configurations of the QGFD diffusion models: what every modality shares.

- `QGFDConfig(PretrainedConfig)`: every hyperparameter of a Hugging Face QGFD diffusion
  model that the modalities share, with the pretrained encoder's own config nested as
  `backbone_config`.
- The denoiser's settings it shares with the seed's `DiffusionConfig`, their validators, the
  QGFD defaults and the named sizes live in `configuration_qgfd_denoiser.py`.
- `MODALITY_CONFIGS`, modality -> config class, filled by the modality files themselves
  (`configuration_qgfd_<modality>.py`: each subclass adds itself when it is defined).

Every value is checked in `__init__`; a bad one raises `ValueError` naming the value and
what is allowed. Sizes derived from the pretrained encoder (`latent_dim`, image size, ...)
are resolved by the modality configs, so `latent_shape` needs nothing but the config.
"""

from __future__ import annotations

import importlib
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from transformers import AutoConfig, PretrainedConfig

from .attention_qgfd import QGFDSettings, _check_choice
from .configuration_qgfd_denoiser import (
    _QGFD_DEFAULTS,
    DIFFUSION_FIELDS,
    QGFD_FIELDS,
    QGFD_PRESET_PARAMS_M,
    QGFD_PRESETS,
    DiffusionConfig,
    _check_bool,
    _check_float,
    _check_int,
    qgfd_settings,
    validate_diffusion_settings,
)

# True when this file is the installed `qgfd_hf` package, False in a `trust_remote_code` copy.
_INSTALLED = __name__.split(".")[0] == "qgfd_hf"

DENOISERS = ("qgfd", "pretrained")
SHARED = "shared"  # the shared model's modality: one denoiser over several (configuration_qgfd_shared.py)


def absolute_position_limit(backbone_config) -> Optional[int]:
    """How many tokens a BERT-family stack has absolute positions for (None: relative positions, no limit).

    BERT and DistilBERT number tokens 0, 1, ...: `max_position_embeddings`. RoBERTa numbers them
    from `pad_token_id + 1` (fairseq's offset): `max_position_embeddings - pad_token_id - 1` (512 for
    roberta-base's 514)."""
    model_type = getattr(backbone_config, "model_type", None)
    if model_type in ("bert", "distilbert"):
        return int(backbone_config.max_position_embeddings)
    if model_type == "roberta":
        return int(backbone_config.max_position_embeddings) - int(backbone_config.pad_token_id or 0) - 1
    return None


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


def _register_models() -> None:
    """In the installed package, register the models with AutoModel and the "qgfd-diffusion" pipeline
    (`registration_qgfd.register_models`, idempotent) when a QGFD config first exists, before any Auto
    class or pipeline can ask for them: `import qgfd_hf` registers the configs only, to stay fast. A
    saved folder's copy registers nothing: transformers registers remote code itself."""
    if _INSTALLED:
        importlib.import_module("qgfd_hf.registration_qgfd").register_models()


# modality -> its config class, added by `configuration_qgfd_<modality>.py` (`__init_subclass__`). The
# installed package imports every such file (registration_qgfd.register), a saved folder its own.
MODALITY_CONFIGS: Dict[str, type] = {}


def modalities() -> Tuple[str, ...]:
    """The single modalities whose config files are imported, sorted."""
    return tuple(sorted(MODALITY_CONFIGS))


def all_modalities() -> Tuple[str, ...]:
    return modalities() + (SHARED,)


def pretrained_stacks() -> Dict[str, Tuple[str, ...]]:
    """{modality: the backbone model_types whose stack can be its denoiser} (`pretrained_stacks` of each config class)."""
    return {m: cls.pretrained_stacks for m, cls in sorted(MODALITY_CONFIGS.items()) if cls.pretrained_stacks}


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
            max_position_embeddings: as in `DiffusionConfig`.
        snr_gamma (`float`, *optional*): min-SNR-gamma loss weighting (Hang et al. 2023): each
            training example's loss is weighted by min(SNR(t), gamma), written for the prediction
            type (`scheduling_qgfd.min_snr_weights`); 5 is the paper's choice. None: the plain MSE. `latent_dim=None` (the default)
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
            its config's `pretrained_stacks`), QGFD-patched with the `qgfd_*` settings, trained, with
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
        class_frequencies (`list[float]`, *optional*): with `num_classes`, the training labels'
            frequencies (`num_classes` floats >= 0 summing to 1; `qgfd-hf train` records them). A
            sample asked for without `class_labels` draws its label from them; None (models saved
            before they were recorded): such a sample takes the null label instead.
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
    pretrained_stacks: Tuple[str, ...] = ()  # denoiser="pretrained": the backbone model_types whose stack can denoise

    def __init_subclass__(cls, **kwargs):
        if "__init__" not in vars(cls):  # transformers 5 would give it a dataclass __init__ that skips every check
            raise TypeError(f"{cls.__name__} must define __init__(self, ..., **kwargs) calling super().__init__ (QGFDConfig's checks).")
        super().__init_subclass__(**kwargs)
        # A modality's config adds itself to the registry when its file defines it.
        if vars(cls).get("_fixed_modality") not in (None, SHARED):
            MODALITY_CONFIGS[cls._fixed_modality] = cls

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
        qgfd_steps: int = _QGFD_DEFAULTS.steps,
        qgfd_alpha: float = _QGFD_DEFAULTS.alpha,
        qgfd_graph: str = _QGFD_DEFAULTS.graph,
        qgfd_mix: str = _QGFD_DEFAULTS.mix,
        qgfd_key_temperature: float = _QGFD_DEFAULTS.key_temperature,
        qgfd_detach_graph: bool = _QGFD_DEFAULTS.detach_graph,
        qgfd_learnable_alpha: bool = _QGFD_DEFAULTS.learnable_alpha,
        qgfd_alpha_max: float = _QGFD_DEFAULTS.alpha_max,
        qgfd_warmup_steps: int = _QGFD_DEFAULTS.warmup_steps,
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
        class_frequencies: Optional[List[float]] = None,
        latent_scale: float = 1.0,
        recon_weight: float = 1.0,
        decoder_layers: int = 2,
        decoder_dim: Optional[int] = None,
        initializer_range: float = 0.02,
        snr_gamma: Optional[float] = None,
        **kwargs,
    ):
        if modality is None:
            modality = self._fixed_modality or "text"
        _check_choice("modality", modality, all_modalities())
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
        if snr_gamma is not None:
            _check_float("snr_gamma", snr_gamma, 0.0, None, low_open=True)
            snr_gamma = float(snr_gamma)
        self.snr_gamma = snr_gamma
        if backbone_qgfd is not None and not isinstance(backbone_qgfd, Mapping):
            raise ValueError(f"`backbone_qgfd` must be a dict of QGFD settings (steps, alpha, ...) or None, got {backbone_qgfd!r}.")
        self.backbone_qgfd = dict(backbone_qgfd) if backbone_qgfd is not None else None
        self.denoiser = denoiser
        self.conditional = conditional
        self.num_classes = num_classes
        self.cond_dropout_prob = cond_dropout_prob
        self.class_frequencies = list(class_frequencies) if isinstance(class_frequencies, tuple) else class_frequencies
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
        # What a saved model's weights were trained for (written by the model's save_pretrained,
        # checked below); not kept: a config changed afterwards must not carry a stale record.
        saved_latent_tokens = kwargs.pop("saved_latent_tokens", None)
        _check_known_kwargs(type(self), kwargs)
        super().__init__(**kwargs)
        self._validate_common()
        self._validate_modality()
        self._validate_conditioning()
        self._validate_position_grid()
        self._validate_denoiser()
        self._validate_positions()
        self._check_saved_latent_tokens(saved_latent_tokens)
        _register_models()

    def __setstate__(self, state):
        # Unpickling (`torch.load` of a whole model, spawned workers) skips `__init__`: register here too.
        self.__dict__.update(state)
        _register_models()

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
        freqs = self.class_frequencies
        if freqs is not None:
            if self.num_classes is None:
                raise ValueError(f"`class_frequencies`={freqs!r} needs `num_classes` (a class-conditional model); pass None.")
            if not isinstance(freqs, list) or len(freqs) != self.num_classes:
                raise ValueError(
                    f"`class_frequencies` must be a list of {self.num_classes} floats (one per class, `num_classes`), got {freqs!r}."
                )
            for k, f in enumerate(freqs):
                _check_float(f"class_frequencies[{k}]", f, 0.0, 1.0)
            if abs(math.fsum(freqs) - 1.0) > 1e-6:
                raise ValueError(f"`class_frequencies` must sum to 1 (the training labels' frequencies), got {freqs!r} (sum {math.fsum(freqs)!r}).")
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
        """denoiser="pretrained" needs a backbone whose Transformer stack can denoise (`pretrained_stacks`)."""
        if self.denoiser != "pretrained":
            return
        usable = ", ".join(f"{m}: {'/'.join(types)}" for m, types in pretrained_stacks().items())
        stacks = type(self).pretrained_stacks
        if not stacks:
            raise ValueError(
                f"denoiser='pretrained' uses a pretrained backbone's Transformer stack as the denoiser, but the {self.modality} "
                f"model has no pretrained backbone. Use denoiser='qgfd', or a modality with a backbone ({usable})."
            )
        model_type = getattr(self.backbone_config, "model_type", None)
        if model_type not in stacks:
            got = "no backbone_config" if self.backbone_config is None else f"backbone model_type={model_type!r}"
            raise ValueError(
                f"denoiser='pretrained' for modality {self.modality!r} needs a backbone_config of type "
                f"{' or '.join(repr(t) for t in stacks)} (its Transformer stack becomes the "
                f"denoiser), got {got}. Usable backbones: {usable}; or use denoiser='qgfd'."
            )
        limit = absolute_position_limit(self.backbone_config)
        for modality, length in (self.latent_token_counts().items() if limit is not None else ()):
            if length > limit:
                raise ValueError(
                    f"denoiser='pretrained' with a {model_type!r} stack: {modality} latents of {length} tokens, but the stack "
                    f"has absolute positions for {limit} tokens (max_position_embeddings="
                    f"{self.backbone_config.max_position_embeddings}); use at most {limit} latent tokens, or a T5 backbone."
                )
        if self.time_conditioning != "adaln":
            raise ValueError(
                f"denoiser='pretrained' takes the timestep through adaLN-Zero; time_conditioning must be 'adaln', "
                f"got {self.time_conditioning!r}."
            )

    def _validate_positions(self):
        """Learned 1-D positions are a table of `max_position_embeddings` rows, one per latent
        token: latents longer than the table are refused here, not at the first forward pass."""
        if self.denoiser != "qgfd" or self.position_embedding != "learned" or self.position_grid is not None:
            return
        for modality, length in self.latent_token_counts().items():
            if length > self.max_position_embeddings:
                raise ValueError(
                    f"{modality} latents of {length} tokens need {length} learned positions, but `max_position_embeddings`="
                    f"{self.max_position_embeddings}; pass max_position_embeddings >= {length}, or "
                    "position_embedding='sinusoidal' (no table, any length)."
                )

    def _check_saved_latent_tokens(self, saved):
        """A saved model's `config.json` records the latent lengths its weights were saved with
        (`saved_latent_tokens`, {modality: L}); a config whose fields now give another length (an
        edited `image_size`, `seq_len`, `num_frames`, ...) is refused: the weights would load (a
        patch is position-free up to its embedding) and sample at a size they were never trained for."""
        if saved is None:
            return
        if not isinstance(saved, dict):
            raise ValueError(f"`saved_latent_tokens` must be a dict {{modality: latent tokens}}, got {saved!r}.")
        now = self.latent_token_counts()
        diffs = [f"{m}: {now.get(m)} latent tokens from this config's fields, {n} in the saved weights' record"
                 for m, n in saved.items() if now.get(m) != n]
        if diffs:
            raise ValueError(
                f"This {type(self).__name__} does not describe the model that was saved ({'; '.join(diffs)}): a field that sets the "
                "latent length (image_size, patch_size, seq_len, num_frames, clip length, columns, ...) differs from the one the "
                "weights were trained with (config.json edited?). Restore that value; a model for another size has to be trained."
            )

    def latent_token_counts(self) -> Dict[str, int]:
        """{modality: L}, the latent length of each modality this config serves that has a fixed one."""
        try:
            return {self.modality: self.num_latent_tokens()}
        except NotImplementedError:
            return {}

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


QGFDConfig.register_for_auto_class()


__all__ = [
    "DIFFUSION_FIELDS",
    "DiffusionConfig",
    "QGFD_FIELDS",
    "MODALITY_CONFIGS",
    "QGFD_PRESETS",
    "QGFD_PRESET_PARAMS_M",
    "SHARED",
    "all_modalities",
    "modalities",
    "pretrained_stacks",
    "absolute_position_limit",
    "QGFDConfig",
]
