# coding=utf-8
"""What `import qgfd_hf` registers with transformers, through transformers' public API only.

| registry (public API)                                   | what                                              |
|---------------------------------------------------------|---------------------------------------------------|
| `AutoConfig.register`                                   | the QGFD configs (`qgfd`, `qgfd_text`, ..., `qgfd_shared`) |
| `AutoModel.register`                                    | the six QGFD diffusion models                      |
| `PIPELINE_REGISTRY.register_pipeline`                   | the `"qgfd-diffusion"` task                        |

All of it happens once, when `qgfd_hf` is imported, in any import order: no import hook, no wrapped
transformers method. The attention implementation `"qgfd"` is not registered here: it comes with
the first request for QGFD in a transformers model (`patch_model`, `from_pretrained_qgfd`, a QGFD
diffusion model that patches its backbone, or `qgfd_hf.register_qgfd_attention()` before
transformers' own `attn_implementation="qgfd"` routes), through `AttentionInterface.register` and
`AttentionMaskInterface.register`, together with the wrappers of `patching_hooks_qgfd` that keep
QGFD on through every build, switch, save and load (docs/patching.md). A process that never asks
for QGFD in a transformers model keeps transformers exactly as it was.

What it costs: the model and pipeline registries live in `transformers.modeling_utils` and
`transformers.pipelines`, so `import qgfd_hf` imports them (scripts/bench_startup.py measures it);
any use of a transformers model imports them anyway.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register QGFD's configs, models and pipeline with transformers' Auto classes and pipelines (idempotent)."""
    global _registered
    if _registered:
        return
    from .modeling_qgfd_auto import register_qgfd_auto_classes
    from .pipeline_qgfd_diffusion import register_pipeline

    register_qgfd_auto_classes()
    register_pipeline()
    _registered = True
