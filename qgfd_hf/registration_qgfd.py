# coding=utf-8
"""Which modalities qgfd_hf has (`modality_names`: found by their files), and what it registers with
transformers, through transformers' public API only.

| registry (public API)                    | what                                               | when                          |
|------------------------------------------|----------------------------------------------------|-------------------------------|
| `AutoConfig.register`                    | the QGFD configs (`qgfd`, one per modality, `qgfd_shared`) | `import qgfd_hf`              |
| `AutoModel.register`                     | the QGFD diffusion models (one per modality, shared) | the first QGFD config made    |
| `PIPELINE_REGISTRY.register_pipeline`    | the `"qgfd-diffusion"` task                        | the first QGFD config made    |

The model and pipeline registries live in `transformers.modeling_utils` and `transformers.pipelines`,
which take about 2 s to import (scripts/bench_startup.py). `import qgfd_hf` registers the configs
only (`transformers.models.auto.configuration_auto` is cheap), and the models and the pipeline are
registered by the first QGFD config that is made or unpickled (`QGFDConfig.__init__` and
`__setstate__` call `register_models`).
No Auto class or pipeline can ask for a QGFD model before that: `AutoModel.from_pretrained` and
`pipeline(model=folder)` read the folder's config first, `AutoModel.from_config` takes one, and a
model object has one. No import hook and no wrapped transformers method is involved.

The attention implementation `"qgfd"` is not registered here: it comes with the first request for
QGFD in a transformers model (`patch_model`, `from_pretrained_qgfd`, a QGFD diffusion model that
patches its backbone, or `qgfd_hf.register_qgfd_attention()` before transformers' own
`attn_implementation="qgfd"` routes), through `AttentionInterface.register` and
`AttentionMaskInterface.register`, together with the wrappers of `patching_hooks_qgfd` that keep
QGFD on through every build, switch, save and load (docs/patching.md). A process that never asks
for QGFD in a transformers model keeps transformers exactly as it was.
"""

from __future__ import annotations

import importlib
import os
import re
import threading

_registered = False  # the configs (register)
_models_registered = False  # the models and the pipeline (register_models)
_registering_models = False  # register_models is running (its imports may make a config)
# Another thread's first config waits here until the models are registered; the registering thread
# itself re-enters (a config made during its imports) and returns at once on `_registering_models`.
_models_lock = threading.RLock()


_MODALITY_FILE = re.compile(r"^configuration_qgfd_([a-z][a-z0-9_]*)\.py$")


def modality_names() -> list:
    """The single modalities this package has, found by their files without importing them: each
    `configuration_qgfd_<m>.py` with a `modeling_qgfd_<m>.py` beside it (the shared model aside), sorted.

    This is the one place that knows which modalities exist: a new modality is its own files, and
    `register` imports them."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = set(os.listdir(here))
    found = (m.group(1) for m in map(_MODALITY_FILE.match, files) if m)
    return sorted(m for m in found if m != "shared" and f"modeling_qgfd_{m}.py" in files)


def import_modalities(kind: str) -> None:
    """Import every modality's `configuration` or `modeling` file (each fills its registry on import)."""
    for m in modality_names():
        importlib.import_module(f".{kind}_qgfd_{m}", __package__)


def register() -> None:
    """Register every QGFD config with `AutoConfig` (`import qgfd_hf` calls it; idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig

    from .configuration_qgfd import MODALITY_CONFIGS, QGFDConfig

    import_modalities("configuration")
    from .configuration_qgfd_shared import QGFDSharedConfig

    for cls in (QGFDConfig, *MODALITY_CONFIGS.values(), QGFDSharedConfig):
        AutoConfig.register(cls.model_type, cls, exist_ok=True)
    _registered = True


def register_models() -> None:
    """Register every QGFD model with `AutoModel` and the `"qgfd-diffusion"` pipeline (idempotent, thread-safe).

    The first QGFD config made or unpickled calls it (`QGFDConfig.__init__` / `__setstate__`, in the
    installed package only)."""
    global _models_registered, _registering_models
    if _models_registered:
        return
    with _models_lock:
        if _models_registered or _registering_models:
            return
        _registering_models = True
        try:
            register()
            from .modeling_qgfd_auto import register_qgfd_auto_classes
            from .pipeline_qgfd_diffusion import register_pipeline

            register_qgfd_auto_classes()
            register_pipeline()
            _models_registered = True
        finally:
            _registering_models = False
