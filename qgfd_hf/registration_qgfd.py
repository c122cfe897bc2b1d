# coding=utf-8
"""What `import qgfd_hf` registers with transformers, through transformers' public API only.

| registry (public API)                                   | what                                              |
|---------------------------------------------------------|---------------------------------------------------|
| `AttentionInterface.register`, `AttentionMaskInterface.register` | `"qgfd"`: the attention function and its mask function (`patching_qgfd`) |
| `AutoConfig.register`                                   | the QGFD configs (`qgfd`, `qgfd_text`, ..., `qgfd_shared`) |
| `AutoModel.register`                                    | the six QGFD diffusion models                      |
| `PIPELINE_REGISTRY.register_pipeline`                   | the `"qgfd-diffusion"` task                        |

All of it happens once, when `qgfd_hf` is imported, in any import order: no import hook, no wrapped
private transformers class. (Registering `"qgfd"` also installs the wrappers of `patching_qgfd`
that keep QGFD on through every build, switch, save and load of a transformers model: see
docs/patching.md.)

What it costs: the model and pipeline registries live in `transformers.modeling_utils` and
`transformers.pipelines`, so `import qgfd_hf` imports them (scripts/bench_startup.py measures it);
any use of a transformers model imports them anyway.
"""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register QGFD's attention, configs, models and pipeline with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from .modeling_qgfd_auto import register_qgfd_auto_classes
    from .patching_qgfd import register_qgfd_attention
    from .pipeline_qgfd_diffusion import register_pipeline

    register_qgfd_attention()
    register_qgfd_auto_classes()
    register_pipeline()
    _registered = True
