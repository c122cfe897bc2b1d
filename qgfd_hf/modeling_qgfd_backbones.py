# coding=utf-8
"""The entry a saved folder names for a model with a transformers backbone.

A model whose config builds a transformers model (a pretrained encoder that makes x0, such as ViT
latents or T5 for text, or `denoiser="pretrained"`) needs `modeling_qgfd_pretrained.py` and the
patching files; a pixel-space model needs neither. The model files never import them relatively
(they reach them through `modeling_qgfd_adapters.TRANSFORMERS_BACKBONES`), so `trust_remote_code`
copies them only for the models that need them: `QGFDPreTrainedModel.save_pretrained` copies this
file (with its relative imports) into such a model's folder and names it in `config.json`'s
`auto_map` (`"AutoModel": "modeling_qgfd_backbones.<ModelClass>"`). Importing it fills
`TRANSFORMERS_BACKBONES` and gives every model class by name.
"""

from .modeling_qgfd_pretrained import PretrainedDenoiser  # noqa: F401  (importing it fills TRANSFORMERS_BACKBONES)
from .modeling_qgfd_audio import AudioQGFDDiffusionModel
from .modeling_qgfd_image import ImageQGFDDiffusionModel
from .modeling_qgfd_shared import SharedQGFDDiffusionModel
from .modeling_qgfd_tabular import TabularQGFDDiffusionModel
from .modeling_qgfd_text import TextQGFDDiffusionModel
from .modeling_qgfd_video import VideoQGFDDiffusionModel

__all__ = [
    "AudioQGFDDiffusionModel",
    "ImageQGFDDiffusionModel",
    "SharedQGFDDiffusionModel",
    "TabularQGFDDiffusionModel",
    "TextQGFDDiffusionModel",
    "VideoQGFDDiffusionModel",
]
