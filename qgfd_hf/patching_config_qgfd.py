# coding=utf-8
"""The config half of `patching_qgfd.install_transformers_hooks`: what `PreTrainedConfig` does for "qgfd".

- `to_dict` (so `save_pretrained`) writes the attention implementation of a config that runs QGFD
  or carries QGFD settings: transformers does not serialise it, so a folder saved from a QGFD model
  or config reloads with the implementation it had when saved;
- `output_attentions = True` is accepted for "qgfd" (QGFD returns its own weights).

This file imports only `transformers.configuration_utils` (no torch, no model classes). The wrappers
are installed with the model half (`patching_qgfd.install_transformers_hooks`), when `"qgfd"` is
registered: on `import qgfd_hf` (`registration_qgfd`), or when a saved model loaded with
`trust_remote_code` builds a transformers model.
"""

from __future__ import annotations

import sys
from typing import Callable, Dict

from transformers.configuration_utils import PreTrainedConfig

ATTN_IMPLEMENTATION = "qgfd"

_CONFIG_METHODS = ("to_dict", "validate_output_attentions", "output_attentions")
_ORIGINALS: Dict[str, Callable] = {}


def _to_dict(self):
    """`PreTrainedConfig.to_dict`, plus the attention implementation of a config that runs QGFD or
    carries QGFD settings: transformers does not serialise it, so a folder saved from a QGFD model
    (loaded, patched, or switched away again) reloads with the implementation it had when saved."""
    out = _ORIGINALS["to_dict"](self)
    implementation = self.__dict__.get("_attn_implementation_internal")
    if isinstance(implementation, str) and (implementation == ATTN_IMPLEMENTATION or "qgfd" in self.__dict__):
        out["attn_implementation"] = implementation
    return out


def _set_output_attentions(self, value):
    """`config.output_attentions = True` is allowed for "qgfd" (QGFD returns its own weights)."""
    if value and self._attn_implementation == ATTN_IMPLEMENTATION:
        self._output_attentions = value
        return
    _ORIGINALS["output_attentions"].fset(self, value)


def _validate_output_attentions(self):
    if self._attn_implementation == ATTN_IMPLEMENTATION:
        return None
    return _ORIGINALS["validate_output_attentions"](self)


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


def install_config_hooks() -> None:
    """Wrap `PreTrainedConfig.to_dict`, `validate_output_attentions` and the `output_attentions`
    setter (see the module docstring). For configs that never use "qgfd" each wrapper only calls the
    original; calling this again is harmless (the originals are wrapped once, by the latest call)."""
    import functools

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
