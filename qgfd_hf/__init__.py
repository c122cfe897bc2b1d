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

import importlib
import os

__version__ = "0.1.0"

# module -> the public names it gives the package (the one list of them).
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
    "configuration_qgfd": ["ALL_MODALITIES", "MODALITIES", "QGFD_PRESETS", "DiffusionConfig", "QGFDConfig"],
    "configuration_qgfd_text": ["QGFDTextConfig"],
    "configuration_qgfd_image": ["QGFDImageConfig"],
    "configuration_qgfd_audio": ["QGFDAudioConfig"],
    "configuration_qgfd_video": ["QGFDVideoConfig"],
    "configuration_qgfd_tabular": ["QGFDTabularConfig"],
    "configuration_qgfd_shared": ["QGFDSharedConfig"],
    "modeling_qgfd_blocks": ["DecoderBlock", "EncoderBlock", "PositionwiseFFN"],
    "modeling_qgfd": [
        "QGFDDiffusionBackbone",
        "QGFDDiffusionOutput",
        "QGFDPreTrainedModel",
    ],
    "modeling_qgfd_embeddings": ["ClassEmbedding", "TimestepEmbedding"],
    "modeling_qgfd_guidance": ["classifier_free_guidance"],
    "modeling_qgfd_text": ["TextAdapter", "TextQGFDDiffusionModel"],
    "modeling_qgfd_image": ["ImageAdapter", "ImageQGFDDiffusionModel"],
    "modeling_qgfd_audio": ["AudioAdapter", "AudioQGFDDiffusionModel"],
    "modeling_qgfd_video": ["VideoAdapter", "VideoQGFDDiffusionModel"],
    "modeling_qgfd_tabular": ["TabularAdapter", "TabularQGFDDiffusionModel"],
    "modeling_qgfd_shared": ["SharedQGFDDiffusionModel"],
    "modeling_qgfd_auto": ["create_qgfd_diffusion_model", "register_qgfd_auto_classes"],
    "pipeline_qgfd_diffusion": ["QGFDDiffusionPipeline", "register_pipeline"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    """A public name (imported from its module) or a submodule (`qgfd_hf.scheduling_qgfd`,
    `qgfd_hf.training`), on first use."""
    here = os.path.dirname(__file__)
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
