"""qgfd_hf: QGFD (Query Graph Flow Diffusion) attention for Hugging Face models and diffusion.

`import qgfd_hf` registers the QGFD configs with `AutoConfig`; the first QGFD config made registers
the models with `AutoModel` and the `"qgfd-diffusion"` pipeline (`registration_qgfd`, transformers'
public API only). The `"qgfd"` attention implementation (and the wrappers that keep it on through
builds, switches and saves) comes with the first request for QGFD in a transformers model:
`patch_model`, `from_pretrained_qgfd`, or `register_qgfd_attention()` before transformers' own
`attn_implementation="qgfd"` routes. The public names below come from their modules on first use (PEP 562).

The flat modules are what a saved model folder needs (kernel, configs, models, scheduling, pipeline;
patching and the pretrained backbones for a model with a transformers backbone); they never import
the subpackages of the installed package's training side:
`qgfd_hf.training` (trainer, arguments, checkpoints, callbacks), `qgfd_hf.tasks` (one file per
modality), `qgfd_hf.data`, `qgfd_hf.metrics` and `qgfd_hf.cli`, each imported only when used.
"""

import ast
import importlib
import os

__version__ = "0.1.0"

# module -> the public names it gives the package (the one list of them). Each modality's two files
# add their own `__all__` below (`_modality_exports`): a new modality is edited nowhere here.
_EXPORTS = {
    "attention_qgfd": [
        "GRAPHS",
        "MIXES",
        "QGFDSettings",
        "mix_coefficients",
        "qgfd_attention",
        "value_checks",
        "value_checks_enabled",
    ],
    "attention_qgfd_reference": ["qgfd_attention_reference"],
    "modeling_qgfd_attention": ["QGFDAlpha", "QGFDMultiheadAttention", "set_qgfd_step"],
    "scheduling_qgfd": [
        "BETA_SCHEDULES",
        "PREDICTION_TYPES",
        "SAMPLERS",
        "TIMESTEP_SPACINGS",
        "DDIMSampler",
        "DDPMBetaSchedule",
        "DDPMSampler",
        "DPMSolverMultistepSampler",
        "diffusion_target",
        "predict_x0_and_eps",
        "q_sample",
    ],
    "scheduling_qgfd_sampling": ["diffusers_scheduler", "make_sampler", "sample_loop"],
    "modelcard_qgfd": ["push_to_hub_with_card", "render_model_card", "save_model_card"],
    "patching_qgfd": [
        "find_attention_modules",
        "from_pretrained_qgfd",
        "get_qgfd_settings",
        "is_qgfd_patched",
        "patch_model",
        "prepare_qgfd_cache",
        "qgfd_attention_forward",
        "register_qgfd_attention",
        "unpatch_model",
    ],
    "training.callbacks": ["QGFDWarmupCallback"],
    "configuration_qgfd": ["QGFD_PRESETS", "DiffusionConfig", "QGFDConfig", "all_modalities", "modalities"],
    "configuration_qgfd_shared": ["QGFDSharedConfig"],
    "modeling_qgfd_blocks": ["DecoderBlock", "EncoderBlock", "PositionwiseFFN"],
    "modeling_qgfd": [
        "QGFDDiffusionBackbone",
        "QGFDDiffusionOutput",
        "QGFDPreTrainedModel",
    ],
    "modeling_qgfd_embeddings": ["ClassEmbedding", "TimestepEmbedding"],
    "modeling_qgfd_guidance": ["classifier_free_guidance"],
    "modeling_qgfd_shared": ["SharedQGFDDiffusionModel"],
    "modeling_qgfd_auto": ["create_qgfd_diffusion_model", "register_qgfd_auto_classes"],
    "pipeline_qgfd_diffusion": ["QGFDDiffusionPipeline", "register_pipeline"],
}


def _modality_exports() -> dict:
    """{module: its `__all__`} of every modality's configuration and modeling file, read without
    importing them (the module-level `__all__ = [...]`, a literal list of names)."""
    from .registration_qgfd import modality_names

    here = os.path.dirname(__file__)
    exports = {}
    for m in modality_names():
        for module in (f"configuration_qgfd_{m}", f"modeling_qgfd_{m}"):
            with open(os.path.join(here, f"{module}.py"), encoding="utf-8") as f:
                text = f.read()
            start = text.rfind("\n__all__ = [")
            try:
                exports[module] = ast.literal_eval(text[start + len("\n__all__ = "):text.index("]", start) + 1])
            except (ValueError, SyntaxError):
                raise ImportError(f"qgfd_hf/{module}.py needs `__all__ = [...]` (a literal list of its public names) at module level.") from None
    return exports


_EXPORTS.update(_modality_exports())
_MODULE_OF = {}
for _module, _names in _EXPORTS.items():
    for _name in _names:
        if _MODULE_OF.setdefault(_name, _module) != _module:
            raise ImportError(f"qgfd_hf: the public name {_name!r} is exported by both {_MODULE_OF[_name]} and {_module}; rename one.")
# The modalities, from the registry their config files fill (`import qgfd_hf` imports every one).
_COMPUTED = {"MODALITIES": "modalities", "ALL_MODALITIES": "all_modalities"}
__all__ = sorted([*_MODULE_OF, *_COMPUTED])


def __getattr__(name):
    """A public name (imported from its module) or a submodule (`qgfd_hf.scheduling_qgfd`,
    `qgfd_hf.training`), on first use."""
    here = os.path.dirname(__file__)
    if name in _COMPUTED:
        return getattr(importlib.import_module(".configuration_qgfd", __name__), _COMPUTED[name])()
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif os.path.isfile(os.path.join(here, f"{name}.py")) or os.path.isfile(os.path.join(here, name, "__init__.py")):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


from .registration_qgfd import register  # noqa: E402

# The `qgfd-hf` console script (qgfd_hf_cli.py) imports the command line with registration deferred,
# so that `qgfd-hf --help` imports neither torch nor transformers; the command line registers before
# it runs a command. Every other import registers here.
if os.environ.get("QGFD_HF_DEFER_REGISTRATION") != "1":
    register()
