# coding=utf-8
"""Every transformers method qgfd_hf wraps, and why; nothing else in qgfd_hf changes a transformers class.

| wrapped method | without the wrapper |
|---|---|
| `PreTrainedModel.post_init` | a model built or loaded with `attn_implementation="qgfd"` has no `qgfd_alpha` before its first call: a learnable alpha in the checkpoint is dropped as an unexpected key and the first forward raises; a bypassing layer (LongT5's local attention) runs plain, silently |
| `PreTrainedModel.set_attn_implementation` | `set_attn_implementation("qgfd")` with a learnable alpha raises at the first forward (no parameter to train); switching away leaves `qgfd_alpha` and its parameter in the model; a refusal leaves the model half switched |
| `PreTrainedModel.get_correct_attn_implementation` | `"qgfd"` on a model class whose attention bypasses the interface (BLOOM, XGLM, ...) builds a model that runs plain attention (or misreads the mask), silently; GPT-Neo fails with `KeyError: 'qgfd'` |
| `PreTrainedModel._initialize_weights` | a learnable alpha that a checkpoint lacks is not initialised (transformers' `_init_weights` does not know `QGFDAlpha`) |
| `GenerationMixin._prepare_cache_for_generation` | the first compiled call of `generate()` on a fresh cache (`prefill_chunk_size` with `compile_config`) breaks the graph (an error under `fullgraph=True`) |
| `PreTrainedConfig.to_dict` | `save_pretrained` does not write `attn_implementation`: a saved QGFD model loads back as plain `sdpa` |
| `PreTrainedConfig.output_attentions` (setter), `validate_output_attentions` | `config.output_attentions = True` (and a saved config with it) is refused for "qgfd" |

`docs/patching.md` ("Which transformers methods qgfd_hf wraps, and why") records what each one
prevents, the public mechanism tried in its place and what happened; `tests/test_patching_hooks_qgfd.py`
shows each failure with transformers' original method put back.

For models and configs that never use "qgfd" each wrapper only calls the original. transformers'
originals are saved once per process on the class (`PreTrainedModel._qgfd_originals`,
`PreTrainedConfig._qgfd_originals`, `GenerationMixin._qgfd_originals`), so the installed package
and any `trust_remote_code` copy of these files wrap the same originals, and installing again only
replaces the wrappers. Installed by `register_qgfd_attention` (`patching_qgfd`), only at the first
request for QGFD in a transformers model (`patch_model`, `from_pretrained_qgfd`, a diffusion model
that patches its backbone, or the user's own call before `attn_implementation="qgfd"`), never by
`import qgfd_hf` alone.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from typing import Callable, Dict

from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel

from .modeling_qgfd_attention import QGFDAlpha
from .patching_cache_qgfd import prepare_qgfd_cache
from .patching_forward_qgfd import ATTN_IMPLEMENTATION
from .patching_layers_qgfd import SUPPORTED, _architecture, _config_tree, _restore, _snapshot, _sync
from .patching_modules_qgfd import _MODULE_LEVEL_MODULES, _MODULE_LEVEL_PREPARE

# transformers' own methods, by name (filled by `install_transformers_hooks`).
_ORIGINALS: Dict[str, Callable] = {}
_MODEL_METHODS = ("post_init", "set_attn_implementation", "_initialize_weights", "get_correct_attn_implementation")
_CONFIG_METHODS = ("to_dict", "validate_output_attentions", "output_attentions")


# ----------------------------------------------------------------------------------------
# PreTrainedModel and GenerationMixin
# ----------------------------------------------------------------------------------------


def _post_init(self, *args, **kwargs):
    """`PreTrainedModel.post_init`, then QGFD on the layers whose config says "qgfd" (`_sync`), or a refusal.

    Prevents: a model built or loaded with `attn_implementation="qgfd"` would get its `qgfd_alpha`
    submodules only at its first forward, after its weights are loaded: `from_pretrained` drops a
    learned alpha as an UNEXPECTED key and the first forward raises (a learnable alpha cannot be
    created there); attention layers that bypass the interface inside a model that otherwise uses it
    (LongT5's encoder) would run plain, silently. transformers has no public "model built" hook;
    `post_init` is the last call of every model's `__init__`, on every route (`Model(config)`,
    `from_config`, `from_pretrained`). Test: `test_post_init_prepares_layers_so_a_learned_alpha_loads`."""
    result = _ORIGINALS["post_init"](self, *args, **kwargs)
    _sync(self)
    return result


def _set_attn_implementation(self, attn_implementation, *args, **kwargs):
    """`PreTrainedModel.set_attn_implementation`, then QGFD state put on (or taken off) the layers;
    on a refusal the model is left exactly as it was.

    Prevents: the original only changes the configs (it does not call `post_init`), so
    `set_attn_implementation("qgfd")` with a learnable alpha gives the optimizer no parameter and the
    first forward raises; switching away would leave the `qgfd_alpha` submodules (and a learnable
    alpha's parameter, saved into the checkpoint) on the layers; a refused switch (a bypassing
    layer) would leave the configs saying "qgfd"; GPT-Neo and WavLM (which transformers cannot switch,
    it only warns) would stay as they are. `patch_model` goes through this method too.
    Test: `test_set_attn_implementation_prepares_layers_at_once`."""
    snapshot = _snapshot(self)
    try:
        result = _ORIGINALS["set_attn_implementation"](self, attn_implementation, *args, **kwargs)
        if (
            isinstance(attn_implementation, str)
            and type(self).__module__ in _MODULE_LEVEL_MODULES
            and not type(self)._can_set_attn_implementation()
        ):
            # transformers cannot switch these models (it only warns); QGFD's module-level layers can.
            implementation = self.get_correct_attn_implementation(attn_implementation)
            for config in _config_tree(self):
                config._attn_implementation_internal = implementation
        _sync(self, requested=attn_implementation == ATTN_IMPLEMENTATION)
    except Exception:
        _restore(self, snapshot)
        raise
    return result


def _get_correct_attn_implementation(self, requested_attention, *args, **kwargs):
    """`PreTrainedModel.get_correct_attn_implementation` (every route that chooses an implementation
    passes here, before the layers are built): refuses "qgfd" for a model class whose attention does
    not go through the interface at all, and readies GPT-Neo's module-level QGFD.

    Prevents: model classes that pick their attention class by implementation name fail to build with
    a bare `KeyError: 'qgfd'` (Data2VecVision, SAM, ... instead of a `ValueError` naming the
    architecture; GPT-Neo instead of a QGFD model: `_prepare_gpt_neo` adds its table entry). Models
    that do build (BLOOM, XGLM) are refused by `_sync` in `post_init` anyway.
    Test: `test_get_correct_attn_implementation_refuses_and_prepares_before_layers_are_built`."""
    if (
        requested_attention == ATTN_IMPLEMENTATION
        and not type(self)._can_set_attn_implementation()
        and type(self).__module__ not in _MODULE_LEVEL_MODULES
    ):
        module = sys.modules.get(type(self).__module__)
        try:
            classes = sorted(set(re.findall(r"^class (\w*Attention\w*)\(nn\.Module\):", inspect.getsource(module), re.M)))
        except (OSError, TypeError):
            classes = []
        raise ValueError(
            f"QGFD cannot be put into {_architecture(self)}: its attention layer class(es) {classes or '(unknown)'} "
            "compute attention themselves instead of calling transformers' AttentionInterface, so "
            f"attn_implementation='qgfd' would leave them plain. {SUPPORTED}"
        )
    if requested_attention == ATTN_IMPLEMENTATION and type(self).__module__ in _MODULE_LEVEL_PREPARE:
        _MODULE_LEVEL_PREPARE[type(self).__module__](sys.modules[type(self).__module__])
    return _ORIGINALS["get_correct_attn_implementation"](self, requested_attention, *args, **kwargs)


def _initialize_weights(self, module, *args, **kwargs):
    """`PreTrainedModel._initialize_weights`: a learnable alpha missing from a checkpoint starts at
    `settings.alpha`, like a fresh one.

    Prevents: `from_pretrained` builds the model without memory and initialises only the weights the
    checkpoint lacks, through the model class's own `_init_weights`, which does not know `QGFDAlpha`:
    a plain checkpoint loaded with `learnable_alpha=True` would keep an uninitialised logit (any
    alpha). Test: `test_initialize_weights_starts_a_missing_learnable_alpha_at_its_value`."""
    if isinstance(module, QGFDAlpha):
        if module.logit is not None and not getattr(module.logit, "_is_hf_initialized", False):
            module.reset_parameters()
        return None
    return _ORIGINALS["_initialize_weights"](self, module, *args, **kwargs)


def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
    """`GenerationMixin._prepare_cache_for_generation`, then the cache `generate()` will use made
    ready for QGFD (`prepare_qgfd_cache`) before any compiled call.

    Prevents: a compiled first call on the fresh cache `generate()` builds (the prefill chunks of
    `prefill_chunk_size` with `compile_config`) converts each cache layer inside the compiled region
    (a `__class__` assignment Dynamo cannot trace): a graph break, an error under `fullgraph=True`.
    Passing a cache readied by `prepare_qgfd_cache` as `past_key_values` works without it, but
    `cache_implementation="static"` makes `generate()` build its own.
    Test: `test_prepare_cache_for_generation_lets_a_compiled_prefill_trace_as_one_graph`."""
    result = _ORIGINALS["_prepare_cache_for_generation"](self, generation_config, model_kwargs, *args, **kwargs)
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if cache is not None:
        prepare_qgfd_cache(self, cache)  # nothing to do in a model that does not run QGFD
    return result


# ----------------------------------------------------------------------------------------
# PreTrainedConfig
# ----------------------------------------------------------------------------------------


def _to_dict(self):
    """`PreTrainedConfig.to_dict`, plus the attention implementation of a config that runs QGFD or
    carries QGFD settings, so a folder saved from a QGFD model (loaded, patched, or switched away
    again) or config reloads with the implementation it had when saved.

    Prevents: transformers drops `_attn_implementation_internal` from `config.json`, so a saved QGFD
    model loads back as plain `sdpa`, silently. Loading needs no wrapper: `"attn_implementation":
    "qgfd"` in `config.json` is honoured by `from_pretrained` once "qgfd" is registered; only writing
    it does (docs/patching.md: a plain `attn_implementation` attribute instead survives one save only).
    Test: `test_to_dict_saves_the_qgfd_implementation`."""
    out = _ORIGINALS["to_dict"](self)
    implementation = self.__dict__.get("_attn_implementation_internal")
    if isinstance(implementation, str) and (implementation == ATTN_IMPLEMENTATION or "qgfd" in self.__dict__):
        out["attn_implementation"] = implementation
    return out


def _set_output_attentions(self, value):
    """The `PreTrainedConfig.output_attentions` setter: `config.output_attentions = True` is allowed
    for "qgfd" (QGFD returns its own weights).

    Prevents: transformers raises a `ValueError` for any implementation but "eager".
    Test: `test_output_attentions_setter_accepts_true_for_qgfd`."""
    if value and self._attn_implementation == ATTN_IMPLEMENTATION:
        self._output_attentions = value
        return
    _ORIGINALS["output_attentions"].fset(self, value)


def _validate_output_attentions(self):
    """`PreTrainedConfig.validate_output_attentions` (a `@strict` class validator), passing for "qgfd".

    Prevents: a config with `attn_implementation="qgfd"` and `output_attentions=True` fails validation
    when it is made: it cannot be built, nor loaded from a folder saved with it.
    Test: `test_validate_output_attentions_accepts_a_qgfd_config_that_returns_weights`."""
    if self._attn_implementation == ATTN_IMPLEMENTATION:
        return None
    return _ORIGINALS["validate_output_attentions"](self)


# ----------------------------------------------------------------------------------------
# Installing
# ----------------------------------------------------------------------------------------


def config_originals() -> Dict[str, Callable]:
    """transformers' own `to_dict`, `validate_output_attentions` and `output_attentions`, saved once
    per process on `PreTrainedConfig._qgfd_originals` (the installed package and any
    `trust_remote_code` copy of this file wrap the same originals)."""
    saved = PreTrainedConfig.__dict__.get("_qgfd_originals")
    if saved is None:
        # A copy of patching_qgfd.py older than this file (a folder saved by qgfd_hf 0.1.0) keeps
        # all originals on PreTrainedModel; if it ran first, the methods here are its wrappers.
        modeling_utils = sys.modules.get("transformers.modeling_utils")
        older = getattr(getattr(modeling_utils, "PreTrainedModel", None), "_qgfd_originals", None)
        if older is not None and all(name in older for name in _CONFIG_METHODS):
            saved = {name: older[name] for name in _CONFIG_METHODS}
        else:
            saved = {
                "to_dict": PreTrainedConfig.to_dict,
                "validate_output_attentions": PreTrainedConfig.validate_output_attentions,
                "output_attentions": PreTrainedConfig.__dict__["output_attentions"],
            }
        PreTrainedConfig._qgfd_originals = saved
    return saved


def _install_config_hooks() -> None:
    """Wrap `PreTrainedConfig.to_dict`, `validate_output_attentions` and the `output_attentions`
    setter (see the module docstring). For configs that never use "qgfd" each wrapper only calls the
    original; calling this again is harmless (the originals are wrapped once, by the latest call)."""
    saved = config_originals()
    _ORIGINALS.update(saved)
    PreTrainedConfig.to_dict = functools.wraps(saved["to_dict"])(_to_dict)
    PreTrainedConfig.validate_output_attentions = functools.wraps(saved["validate_output_attentions"])(_validate_output_attentions)
    prop = saved["output_attentions"]
    PreTrainedConfig.output_attentions = property(prop.fget, _set_output_attentions, doc=prop.__doc__)
    # Config classes made @strict before this ran hold the validator itself in `__class_validators__`
    # (classes made later look it up on PreTrainedConfig and find the wrapper).
    validator, todo = PreTrainedConfig.validate_output_attentions, [PreTrainedConfig]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        validators = cls.__dict__.get("__class_validators__")
        if validators and any(v is saved["validate_output_attentions"] for v in validators):
            cls.__class_validators__ = [validator if v is saved["validate_output_attentions"] else v for v in validators]


def install_transformers_hooks() -> None:
    """Wrap the transformers methods listed in the module docstring (idempotent: the originals are
    saved once per process, on the classes; a later call only replaces the wrappers)."""
    targets = {
        "post_init": _post_init,
        "set_attn_implementation": _set_attn_implementation,
        "_initialize_weights": _initialize_weights,
        "get_correct_attn_implementation": _get_correct_attn_implementation,
    }
    _install_config_hooks()
    saved = getattr(PreTrainedModel, "_qgfd_originals", None)
    if saved is None:
        # The config originals are kept here too, as qgfd_hf 0.1.0's copies of patching_qgfd.py expect.
        saved = {name: getattr(PreTrainedModel, name) for name in _MODEL_METHODS}
        saved.update(config_originals())
        PreTrainedModel._qgfd_originals = saved
    _ORIGINALS.update(saved)
    for name, fn in targets.items():
        setattr(PreTrainedModel, name, functools.wraps(saved[name])(fn))
    generation_saved = getattr(GenerationMixin, "_qgfd_originals", None)
    if generation_saved is None:
        generation_saved = {"_prepare_cache_for_generation": GenerationMixin._prepare_cache_for_generation}
        GenerationMixin._qgfd_originals = generation_saved
    _ORIGINALS.update(generation_saved)
    GenerationMixin._prepare_cache_for_generation = functools.wraps(generation_saved["_prepare_cache_for_generation"])(
        _prepare_cache_for_generation
    )
