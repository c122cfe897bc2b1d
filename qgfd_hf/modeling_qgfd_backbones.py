# coding=utf-8
"""The entry a saved folder names for a model with a transformers backbone.

A model whose config builds a transformers model (a pretrained encoder that makes x0, such as ViT
latents or T5 for text, or `denoiser="pretrained"`) needs `modeling_qgfd_pretrained.py` and the
patching files; a pixel-space model needs neither. The model files never import them relatively
(they reach them through `modeling_qgfd_adapters.TRANSFORMERS_BACKBONES`), so `trust_remote_code`
copies them only for the models that need them: `QGFDPreTrainedModel.save_pretrained` copies this
file (with its relative imports) into such a model's folder, adds one line that imports the model's
own file (below the marker), and names it in `config.json`'s `auto_map`
(`"AutoModel": "modeling_qgfd_backbones.<ModelClass>"`). Importing it fills `TRANSFORMERS_BACKBONES`.
"""

from .modeling_qgfd_pretrained import PretrainedDenoiser  # noqa: F401  (importing it fills TRANSFORMERS_BACKBONES)

# The saved model's class (written by save_pretrained):
