# coding=utf-8
"""What `import qgfd_hf` registers with transformers, and when: as soon as the transformers module
it concerns is imported, not before.

| once this transformers module is imported       | qgfd_hf                                                     |
|-------------------------------------------------|-------------------------------------------------------------|
| `transformers.configuration_utils`              | wraps `PreTrainedConfig.to_dict`, `output_attentions` (`patching_config_qgfd`) |
| `transformers.models.auto.configuration_auto`   | registers the QGFD configs with `AutoConfig`                 |
| `transformers.modeling_utils`, `.masking_utils` | registers `"qgfd"` with `AttentionInterface` / `AttentionMaskInterface` and wraps `PreTrainedModel`'s methods (`patching_qgfd`) |
| `transformers.models.auto.modeling_auto`        | registers the QGFD models with `AutoModel`                   |
| `transformers.pipelines`                        | registers the `"qgfd-diffusion"` task                        |

Why: these transformers modules take seconds to import (`modeling_utils` and `pipelines` most),
and registering with them on `import qgfd_hf` made the import cost all of them; now it costs
nothing, and each registration is paid for by the first import that needs it. Every lookup a
user can make goes through the module of its row (`AutoConfig.from_pretrained` through
`configuration_auto`, any model class through `modeling_utils`, `AutoModel*` through
`modeling_auto`, `pipeline()` through `pipelines`), so it finds QGFD registered, in any import
order: a module imported before `qgfd_hf` gets its registration when `qgfd_hf` is imported.

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


def _register_models() -> None:
    from .modeling_qgfd_modalities import register_qgfd_auto_classes

    register_qgfd_auto_classes()


def _register_pipeline() -> None:
    from .pipeline_qgfd_diffusion import register_pipeline

    register_pipeline()


# (transformers module, registration), run in this order when several are due at once.
REGISTRATIONS: Tuple[Tuple[str, Callable[[], None]], ...] = (
    ("transformers.configuration_utils", _install_config_hooks),
    ("transformers.models.auto.configuration_auto", _register_configs),
    ("transformers.modeling_utils", _register_attention),
    ("transformers.masking_utils", _register_attention),
    ("transformers.models.auto.modeling_auto", _register_models),
    ("transformers.pipelines", _register_pipeline),
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
                for i, (name, register) in enumerate(REGISTRATIONS):
                    if not _done[i] and _loaded(name):
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
