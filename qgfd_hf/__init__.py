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
