# coding=utf-8
"""What `import qgfd_hf` registers with transformers, and when: as soon as the transformers module
it concerns is imported, not before.

| once this transformers module is imported       | qgfd_hf                                                     |
|-------------------------------------------------|-------------------------------------------------------------|
| `transformers.configuration_utils`              | wraps `PreTrainedConfig.to_dict`, `output_attentions` (`patching_config_qgfd`) |
| `transformers.models.auto.configuration_auto`   | registers the QGFD configs with `AutoConfig`                 |
| `transformers.modeling_utils`, `.masking_utils` | registers `"qgfd"` with `AttentionInterface` / `AttentionMaskInterface` and wraps `PreTrainedModel`'s methods (`patching_qgfd`) |
| `transformers.models.auto.modeling_auto`        | registers the QGFD models with `AutoModel` at the first look into its mapping (`AutoModel.from_pretrained`, `from_config`, `register`, `pipeline()`), or when `modeling_qgfd_modalities` is imported, whichever comes first |
| `transformers.pipelines`                        | registers the `"qgfd-diffusion"` task                        |

Why: these transformers modules take seconds to import (`modeling_utils` and `pipelines` most),
and registering with them on `import qgfd_hf` made the import cost all of them; now it costs
nothing, and each registration is paid for by the first import that needs it. Every lookup a
user can make goes through the module of its row (`AutoConfig.from_pretrained` through
`configuration_auto`, any model class through `modeling_utils`, `AutoModel*` through
`modeling_auto`, `pipeline()` through `pipelines`), so it finds QGFD registered, in any import
order: a module imported before `qgfd_hf` gets its registration when `qgfd_hf` is imported.
The models are the one exception to "on import": every transformers config class imports
`modeling_auto` (its docstring lists the models), and the QGFD models need
`transformers.modeling_utils` and `transformers.pipelines`, so `from transformers import T5Config`
would cost them all; their registration waits for the first lookup that could find one.

How: a finder at the front of `sys.meta_path` (`_PostImportFinder`) gives every `transformers.*`
and `qgfd_hf.*` module a loader that counts how deep the current thread is inside such imports.
A registration runs when its module is in `sys.modules` and fully executed and the current
thread's depth is back to 0, i.e. after the outermost `transformers`/`qgfd_hf` import statement
has finished. Running it any earlier would import qgfd_hf's classes in the middle of a
transformers import: `transformers.pipelines` imports `modeling_auto` halfway through its
`__init__`, and QGFD's models import `Pipeline` from it, which does not exist yet.

A registration that fails raises its error from the import statement that triggered it (no
silent QGFD-off). A finder that another library puts in front of ours and that loads
transformers' modules itself would hide them from us; `run_pending_registrations()` catches up.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from typing import Callable, List, Tuple

_PREFIXES = ("transformers", "qgfd_hf")


def _install_config_hooks() -> None:
    from .patching_config_qgfd import install_config_hooks

    install_config_hooks()


def _register_configs() -> None:
    from .configuration_qgfd import register_qgfd_configs

    register_qgfd_configs()


def _register_attention() -> None:
    importlib.import_module(".patching_qgfd", __package__)  # registers "qgfd" and installs the hooks on import


# `_LazyAutoMapping`'s methods that read or add to a mapping (`AutoModel.from_pretrained`,
# `from_config` and `register`, pipelines' model checks all go through them).
_MAPPING_METHODS = ("__getitem__", "__contains__", "__iter__", "__len__", "__bool__", "get", "keys", "values", "items", "register")
_mapping_originals = {}
_models_registered = False
_models_lock = threading.RLock()


def _register_models() -> None:
    """Once; another thread waits until it is done, and the registration's own `AutoModel.register`
    calls (same thread, lock re-entered) pass straight through. Then `_LazyAutoMapping` is as it was."""
    global _models_registered
    if _models_registered:
        return
    with _models_lock:
        if _models_registered or getattr(_local, "registering_models", False):
            return
        _local.registering_models = True
        try:
            from .modeling_qgfd_modalities import register_qgfd_auto_classes

            register_qgfd_auto_classes()
            _models_registered = True
        finally:
            _local.registering_models = False
        if _mapping_originals:
            from transformers.models.auto.auto_factory import _LazyAutoMapping

            for name, original in _mapping_originals.items():
                if getattr(_LazyAutoMapping.__dict__.get(name), "_qgfd_registers_models", False):
                    setattr(_LazyAutoMapping, name, original)


def _defer_models() -> None:
    """Until the QGFD models are registered, the first look into `AutoModel`'s mapping (`MODEL_MAPPING`)
    registers them. Every `AutoModel*` class has its own copy of `from_pretrained` / `from_config`
    (transformers' `auto_class_update`), so the mapping they all read is the one place to wait at.
    Not inside a `transformers` / `qgfd_hf` import (depth > 0): importing the models there could
    meet a half-imported module; such a lookup is transformers' own, never one for a QGFD config."""
    import functools

    from transformers.models.auto.auto_factory import _LazyAutoMapping
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if _models_registered or _mapping_originals:
        return
    for name in _MAPPING_METHODS:
        original = _LazyAutoMapping.__dict__[name]

        def wrapper(self, *args, _original=original, **kwargs):
            if self is MODEL_MAPPING and not _models_registered and getattr(_local, "depth", 0) == 0:
                _register_models()
            return _original(self, *args, **kwargs)

        wrapper = functools.wraps(original)(wrapper)
        wrapper._qgfd_registers_models = True
        _mapping_originals[name] = original
        setattr(_LazyAutoMapping, name, wrapper)


def _register_pipeline() -> None:
    from .pipeline_qgfd_diffusion import register_pipeline

    register_pipeline()


# (the modules it waits for, registration), run in this order when several are due at once.
REGISTRATIONS: Tuple[Tuple[Tuple[str, ...], Callable[[], None]], ...] = (
    (("transformers.configuration_utils",), _install_config_hooks),
    (("transformers.models.auto.configuration_auto",), _register_configs),
    (("transformers.modeling_utils",), _register_attention),
    (("transformers.masking_utils",), _register_attention),
    (("transformers.models.auto.modeling_auto",), _defer_models),
    (("transformers.models.auto.modeling_auto", "qgfd_hf.modeling_qgfd_modalities"), _register_models),
    (("transformers.pipelines",), _register_pipeline),
)

_done: List[bool] = [False] * len(REGISTRATIONS)
_lock = threading.Lock()
_dirty = False
_local = threading.local()  # .depth: how many tracked modules this thread is executing; .finding


def _tracked(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _PREFIXES)


def _loaded(name: str) -> bool:
    """In `sys.modules` and executed to the end (not a partially initialised module)."""
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False)


def run_pending_registrations() -> None:
    """Run every registration whose transformers module is loaded and that has not run yet.

    Called after each outermost `transformers.*` / `qgfd_hf.*` import and at the end of
    `import qgfd_hf`. Never blocks: a thread that finds another one registering leaves its
    share to it (`_dirty`), so two threads importing at once cannot deadlock on `_lock`.
    """
    global _dirty
    _dirty = True
    while _dirty:
        if not _lock.acquire(blocking=False):
            return  # another thread, or this one further up the stack, is registering and will rescan
        try:
            while _dirty:
                _dirty = False
                for i, (names, register) in enumerate(REGISTRATIONS):
                    if not _done[i] and all(_loaded(name) for name in names):
                        _done[i] = True  # once, even if it raises: the error is shown, not repeated
                        register()
                        _dirty = True  # it imported more modules: look again
        finally:
            _lock.release()


class _CountingLoader(importlib.abc.Loader):
    """The module's own loader, with the thread's import depth counted around `exec_module`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        # The module keeps its real loader (`inspect.getsource`, `importlib.resources`, reloads).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None and module.__spec__.loader is self:
            module.__spec__.loader = self._loader
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            self._loader.exec_module(module)
            # Executed to the end: importlib marks the spec so right after we return; mark it now so
            # that the registrations below see this module as loaded.
            if getattr(module, "__spec__", None) is not None:
                module.__spec__._initializing = False
        finally:
            _local.depth -= 1
            if _local.depth == 0:
                run_pending_registrations()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds `transformers.*` / `qgfd_hf.*` modules with the finders behind it, and wraps their loaders."""

    def find_spec(self, fullname, path=None, target=None):
        if not _tracked(fullname) or getattr(_local, "finding", False):
            return None
        _local.finding = True
        try:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            _local.finding = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CountingLoader(spec.loader)
        return spec


_FINDER = _PostImportFinder()


def install() -> None:
    """Put the finder in front of `sys.meta_path` (once) and run the registrations already due."""
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _FINDER)
    run_pending_registrations()
