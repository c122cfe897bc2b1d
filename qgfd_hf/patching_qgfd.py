# coding=utf-8
"""Put QGFD attention into pretrained transformers models: T5, ViT, Wav2Vec2, Llama-style decoders, BERT, ...

transformers 5 routes attention through `AttentionInterface`: an attention layer calls
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)`. `register_qgfd_attention`
registers `"qgfd"` there (with `sdpa_mask` as its mask function, so padding and causal masks
arrive as bool masks). It runs at the first request for QGFD: `patch_model`, `from_pretrained_qgfd`,
a QGFD diffusion model that builds a QGFD-patched transformers backbone, or an explicit
`qgfd_hf.register_qgfd_attention()` before transformers' own routes (`from_pretrained(...,
attn_implementation="qgfd")`, `Model(config)`, `set_attn_implementation("qgfd")`). Until then
transformers is untouched, and it refuses `"qgfd"` as an unknown implementation (a loud error,
never plain attention in its place). Nothing in the model's weights or module tree is replaced, so parameter
names and `state_dict` keys stay the same (a learnable alpha adds one parameter per layer).

What each attention layer gets:

- self-attention (T5 encoder and decoder, ViT, Wav2Vec2, Llama, BERT, ...): QGFD, computed by
  `qgfd_attention` (T5's relative position bias and scale of 1 kept, exact causality in decoders);
- cross-attention (T5's `EncDecAttention`, Bart-style decoder attention over the encoder):
  plain attention, exactly as transformers' `sdpa` computes it.

Where the state lives: where transformers keeps it. A layer runs QGFD exactly when its config's
`_attn_implementation` is `"qgfd"`; its settings are `config.qgfd` (a dict of `QGFDSettings`).
Registering wraps the few transformers methods that choose or save an implementation
(`install_transformers_hooks`), so that

- every route that switches a model to "qgfd" (`patch_model`, `Model(config)` or
  `from_pretrained(..., attn_implementation="qgfd")`, `set_attn_implementation("qgfd")`) prepares
  its layers at once (alpha submodule, pre-hook), with the settings of the outermost config that
  has them (nested configs included), or raises a `ValueError` naming the architecture, the layer
  class and what is supported (attention that bypasses the interface, soft-capping, no attention);
- a switch to another implementation takes QGFD off the layers;
- `save_pretrained` writes the current `attn_implementation` of a config that runs QGFD or carries
  QGFD settings, so any number of save -> load cycles give back exactly what was saved.

Cached decoding: the propagated values W_1..W_T of earlier tokens are kept on the cache layer
next to its keys and values (`DynamicCache` layers, the self-attention half of T5's
`EncoderDecoderCache`; sliding-window and static layers keep them in shadow layers of their own
kind), so they live and die with the cache of one `generate()` call and follow its beam reorders,
crops and batch edits. A forward pre-hook on each attention layer tells the attention function
which cache the current call uses.

The files of patching, one concern each (a saved model folder copies them with this one, for
`trust_remote_code`):

| file | holds |
|---|---|
| `patching_qgfd.py` | this public API, and `register_qgfd_attention` (run by the first request for QGFD) |
| `patching_layers_qgfd.py` | which layers QGFD reaches, their roles, the refusals, attach / detach, `_sync` |
| `patching_cache_qgfd.py` | the propagated values on the cache layers, the pre-hook, `prepare_qgfd_cache` |
| `patching_forward_qgfd.py` | `qgfd_attention_forward`, the function registered as "qgfd" |
| `patching_modules_qgfd.py` | module-level QGFD for WavLM and GPT-Neo |
| `patching_hooks_qgfd.py` | every transformers method qgfd_hf wraps, each with the failure it prevents |
"""

from __future__ import annotations

import copy
from typing import List, Optional

import torch.nn as nn
from transformers import AttentionInterface, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

from .attention_qgfd import QGFDSettings
from .patching_cache_qgfd import QGFDDynamicLayer, prepare_qgfd_cache  # noqa: F401
from .patching_forward_qgfd import ATTN_IMPLEMENTATION, qgfd_attention_forward
from .patching_hooks_qgfd import install_transformers_hooks
from .patching_layers_qgfd import (
    SUPPORTED,
    _attached_layers,
    _config_tree,
    _own_configs,
    _settings_from_config,
    find_attention_modules,  # noqa: F401  (public: qgfd_hf.find_attention_modules comes from here)
)

logger = logging.get_logger(__name__)

# The package's public names from this file are listed once, in qgfd_hf/__init__.py (`_EXPORTS`); the
# names of the other patching_*_qgfd files imported above can be reached here too.


_registered = False


def register_qgfd_attention() -> None:
    """Register `"qgfd"` with transformers' `AttentionInterface` and `AttentionMaskInterface`, and
    install the wrappers of `patching_hooks_qgfd` that keep QGFD on through every build, switch,
    save and load of a transformers model.

    `patch_model`, `from_pretrained_qgfd` and the QGFD diffusion models that patch a transformers
    backbone call it themselves. Call it once before transformers' own routes to QGFD:
    `from_pretrained(..., attn_implementation="qgfd")` (a folder saved from a QGFD model included),
    `Model(config)` with `config._attn_implementation == "qgfd"`, `set_attn_implementation("qgfd")`.
    `import qgfd_hf` alone leaves transformers untouched. Calling it again does nothing. The mask
    function is transformers' `sdpa_mask` (bool masks, True = may attend, skipped when nothing is
    masked), which is the form `qgfd_attention` takes without any loss.

    Example:

    ```python
    >>> from transformers import AttentionInterface
    >>> from qgfd_hf.patching_qgfd import register_qgfd_attention
    >>> register_qgfd_attention()
    >>> "qgfd" in AttentionInterface().valid_keys()
    True

    ```
    """
    global _registered
    if _registered:
        return
    AttentionInterface.register(ATTN_IMPLEMENTATION, qgfd_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    install_transformers_hooks()
    _registered = True


def is_qgfd_patched(model: nn.Module) -> bool:
    """Whether QGFD is running in `model`: at least one of its attention layers computes QGFD.

    True after `patch_model`, `set_attn_implementation("qgfd")`, for a model built or loaded with
    `attn_implementation="qgfd"` (every route prepares the layers, or refuses); False again after
    `unpatch_model` or a switch to another implementation.

    Example:

    ```python
    >>> import qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                            intermediate_size=64, image_size=16, patch_size=8))
    >>> qgfd_hf.is_qgfd_patched(model), qgfd_hf.is_qgfd_patched(qgfd_hf.patch_model(model))
    (False, True)

    ```
    """
    return bool(_attached_layers(model))


def get_qgfd_settings(model: PreTrainedModel) -> QGFDSettings:
    """The QGFD settings a model runs with (those of its QGFD layers); for a model not running QGFD,
    `config.qgfd`, or the defaults where it has none."""
    for m in _attached_layers(model):
        alpha = m._modules.get("qgfd_alpha")
        if alpha is not None:
            return alpha.settings
    return _settings_from_config(model.config)


def patch_model(model: PreTrainedModel, **qgfd_settings) -> PreTrainedModel:
    """Switch the self-attention of a transformers model to QGFD, in place; returns the model.

    Args:
        model (`PreTrainedModel`): any model whose attention layers use transformers'
            `AttentionInterface` (T5, ViT, Wav2Vec2, Llama, BERT, ...).
        **qgfd_settings: `QGFDSettings` fields: `steps`, `alpha`, `graph`, `mix`,
            `key_temperature`, `detach_graph`, `learnable_alpha`, `alpha_max`, `warmup_steps`.
            Unset fields come from `config.qgfd` when the config has one, else from the defaults.

    What changes:
        - the model gets its own copies of its config objects (the config it was built from is
          left as it was), then `set_attn_implementation("qgfd")` with `config.qgfd` set: every
          self-attention layer gets QGFD, every config the settings; `save_pretrained` writes both
          `attn_implementation` and `qgfd` to `config.json`;
        - each self-attention layer gets a `qgfd_alpha` submodule (`QGFDAlpha`): with a fixed alpha
          it has no parameters or buffers, so `state_dict` keys do not change; with
          `learnable_alpha=True` it adds ONE parameter per layer, `<layer>.qgfd_alpha.logit` [H];
        - each attention layer gets a forward pre-hook that tells the attention which cache the
          call uses (cached decoding keeps the propagated values on the cache).

    Patching a patched model again is a no-op when no settings, or the same settings, are given,
    and a `ValueError` when the settings differ (call `unpatch_model` first).

    Raises:
        ValueError: invalid settings; a model with attention layers QGFD cannot reach (attention
            that bypasses the interface, logit soft-capping) or none at all (the message names the
            architecture, the layer classes and what is supported); a model patched with other settings.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import T5Config, T5ForConditionalGeneration
    >>> config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100,
    ...                   decoder_start_token_id=0)
    >>> model = qgfd_hf.patch_model(T5ForConditionalGeneration(config).eval(), steps=2, alpha=0.3)
    >>> model.config.qgfd["steps"], model.config._attn_implementation, config._attn_implementation
    (2, 'qgfd', 'sdpa')
    >>> model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False).shape
    torch.Size([1, 4])

    ```
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"`patch_model` takes a transformers PreTrainedModel, got {type(model).__name__}. {SUPPORTED}")
    register_qgfd_attention()
    base = dict(getattr(model.config, "qgfd", None) or {})
    settings = QGFDSettings.from_dict(base, **qgfd_settings)  # ValueError on anything invalid

    if is_qgfd_patched(model):
        current = get_qgfd_settings(model)
        if qgfd_settings and settings != current:
            raise ValueError(
                f"{type(model).__name__} already uses QGFD with {current.to_dict()}; call "
                f"`qgfd_hf.unpatch_model(model)` before patching it with {settings.to_dict()}."
            )
        if model.config._attn_implementation == ATTN_IMPLEMENTATION:
            return model

    previous = model.config._attn_implementation
    _own_configs(model)
    for config in _config_tree(model):
        config.__dict__.pop("qgfd", None)
    model.config.qgfd = settings.to_dict()
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)  # QGFD on every layer, or a ValueError
    except ValueError:
        model.config.__dict__.pop("qgfd", None)
        if base:
            model.config.qgfd = base
        raise
    if previous != ATTN_IMPLEMENTATION:
        model.__dict__["_qgfd_previous_attn_implementation"] = previous
    layers = _attached_layers(model)
    n_self = sum(m.__dict__["_qgfd_role"] == "self" for m in layers)
    logger.info(
        f"QGFD on {n_self} self-attention layer(s) of {type(model).__name__} "
        f"({len(layers) - n_self} cross-attention layer(s) left plain), settings {settings.to_dict()}."
    )
    return model


def unpatch_model(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `patch_model` (or `set_attn_implementation("qgfd")`), in place; returns the model.

    The attention implementation goes back to the one the model had before `patch_model` (a
    model loaded as QGFD goes back to transformers' default, `sdpa`), the `qgfd_alpha`
    submodules (and any learnable alpha parameters), hooks and `config.qgfd` are removed: the
    model computes exactly what it computed before, and saves as a plain model.

    Raises:
        ValueError: the model does not use QGFD.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                            intermediate_size=64, image_size=16, patch_size=8)).eval()
    >>> x = torch.randn(1, 3, 16, 16)
    >>> before = model(x).last_hidden_state
    >>> model = qgfd_hf.unpatch_model(qgfd_hf.patch_model(model, alpha=0.9))
    >>> torch.equal(model(x).last_hidden_state, before)
    True

    ```
    """
    if not isinstance(model, PreTrainedModel) or not is_qgfd_patched(model):
        raise ValueError(f"{type(model).__name__} does not use QGFD attention; there is nothing to unpatch.")
    previous = model.__dict__.pop("_qgfd_previous_attn_implementation", None)
    if previous in (None, ATTN_IMPLEMENTATION):
        previous = model.get_correct_attn_implementation(None)  # transformers' default: sdpa, else eager
    model.set_attn_implementation(previous)
    for config in _config_tree(model):
        config.__dict__.pop("qgfd", None)
    return model


def from_pretrained_qgfd(model_class, pretrained_model_name_or_path, qgfd: Optional[dict] = None, **kwargs) -> PreTrainedModel:
    """Load any checkpoint as a QGFD model, in one call: a Hub model or folder with the settings
    `qgfd`, or a folder saved from a QGFD model with its own settings and learned alphas.

    The settings apply to every attention layer of the model, nested configs included (T5's stacks,
    CLIP's and SigLIP's text and vision towers). Settings that a checkpoint lacks (a learnable alpha
    on a plain checkpoint) start at their initial values.

    Args:
        model_class: a transformers model class (or an `AutoModel...` class).
        pretrained_model_name_or_path (`str`): the checkpoint folder (or Hub id).
        qgfd (`dict`, *optional*): `QGFDSettings` fields; unset ones come from the checkpoint's
            `config.qgfd`, else from the defaults.
        **kwargs: passed to `from_pretrained` (`config=` is copied, not changed).

    Raises:
        ValueError: invalid settings, or an architecture QGFD cannot be put into (as `patch_model`).

    Example:

    ```python
    >>> import tempfile, torch, qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> plain = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...     intermediate_size=64, image_size=16, patch_size=8))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     plain.save_pretrained(d)
    ...     model = qgfd_hf.from_pretrained_qgfd(ViTModel, d, qgfd={"steps": 2, "learnable_alpha": True})
    >>> qgfd_hf.get_qgfd_settings(model).steps, sorted(k for k in model.state_dict() if "qgfd" in k)
    (2, ['layers.0.attention.qgfd_alpha.logit'])

    ```
    """
    from transformers import AutoConfig

    register_qgfd_attention()
    if "attn_implementation" in kwargs and kwargs["attn_implementation"] != ATTN_IMPLEMENTATION:
        raise ValueError(
            f"`from_pretrained_qgfd` loads with attn_implementation='qgfd', got {kwargs['attn_implementation']!r}."
        )
    kwargs.pop("attn_implementation", None)
    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {
            k: kwargs[k]
            for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder", "trust_remote_code")
            if k in kwargs
        }
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
    else:
        config = copy.deepcopy(config)
    base = config.__dict__.get("qgfd") or {}
    if not isinstance(base, dict):
        raise ValueError(f"`config.qgfd` must be a dict of QGFD settings, got {type(base).__name__}.")
    if qgfd is not None and not isinstance(qgfd, dict):
        raise ValueError(f"`qgfd` must be a dict of QGFD settings, got {type(qgfd).__name__}.")
    settings = QGFDSettings.from_dict(base, **(qgfd or {}))
    for sub in _configs_of(config):
        sub.__dict__.pop("qgfd", None)
    config.qgfd = settings.to_dict()
    return model_class.from_pretrained(
        pretrained_model_name_or_path, config=config, attn_implementation=ATTN_IMPLEMENTATION, **kwargs
    )


def _configs_of(config: PreTrainedConfig) -> List[PreTrainedConfig]:
    out = [config]
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            out += _configs_of(sub)
    return out
