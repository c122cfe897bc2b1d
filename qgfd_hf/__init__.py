"""qgfd_hf: QGFD (Query Graph Flow Diffusion) attention for Hugging Face models and diffusion."""

__version__ = "0.1.0"

from .attention_qgfd import (
    GRAPHS,
    MIXES,
    QGFDAlpha,
    QGFDMultiheadAttention,
    QGFDSettings,
    mix_coefficients,
    qgfd_attention,
    qgfd_attention_reference,
    set_qgfd_step,
)
from .scheduling_qgfd import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    DDIMSampler,
    DDPMBetaSchedule,
    DDPMSampler,
    DPMSolverMultistepSampler,
    diffusers_scheduler,
    diffusion_target,
    make_sampler,
    predict_x0_and_eps,
    q_sample,
    sample_loop,
)
from .modelcard_qgfd import (
    push_to_hub_with_card,
    render_model_card,
    save_model_card,
)
from .patching_qgfd import (
    find_attention_modules,
    from_pretrained_qgfd,
    get_qgfd_settings,
    is_qgfd_patched,
    patch_model,
    qgfd_attention_forward,
    register_qgfd_attention,
    unpatch_model,
)
from .callbacks_qgfd import QGFDWarmupCallback
from .configuration_qgfd import (
    ALL_MODALITIES,
    MODALITIES,
    QGFD_PRESETS,
    DiffusionConfig,
    QGFDAudioConfig,
    QGFDConfig,
    QGFDImageConfig,
    QGFDSharedConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
)
from .modeling_qgfd import (
    DecoderBlock,
    EncoderBlock,
    PositionwiseFFN,
    QGFDDiffusionBackbone,
    QGFDDiffusionOutput,
    QGFDPreTrainedModel,
    TimestepEmbedding,
)
from .modeling_qgfd_adapters import AudioAdapter, ImageAdapter, TabularAdapter, TextAdapter, VideoAdapter
from .modeling_qgfd_modalities import (
    AudioQGFDDiffusionModel,
    ImageQGFDDiffusionModel,
    SharedQGFDDiffusionModel,
    TabularQGFDDiffusionModel,
    TextQGFDDiffusionModel,
    VideoQGFDDiffusionModel,
    create_qgfd_diffusion_model,
    register_qgfd_auto_classes,
)

register_qgfd_auto_classes()
from .pipeline_qgfd_diffusion import QGFDDiffusionPipeline, register_pipeline

register_pipeline()
