# coding=utf-8
"""The families of pretrained Transformer stacks that `PretrainedDenoiser` (`modeling_qgfd_pretrained.py`)
runs as its denoiser: how to build one from its backbone config, take its weights from a loaded
encoder, find its layers and the sub-layers adaLN-Zero wraps, and run it on a token sequence.

| family | stacks (`model_type`) |
|---|---|
| `_T5Family` | T5's encoder stack (`t5`, `mt5`) |
| `_ViTFamily` | ViT's layers and final LayerNorm (`vit`), with its CLS token and patch positions |
| `_Wav2Vec2Family` | Wav2Vec2's Transformer encoder (`wav2vec2`) |
| `_BertFamily` | BERT's / RoBERTa's encoder (`bert`, `roberta`) |
| `_DistilBertFamily` | DistilBERT's transformer (`distilbert`) |

`_FAMILIES` maps a backbone's `model_type` to its family. A flat file: a saved folder with a
transformers backbone carries it beside `modeling_qgfd_pretrained.py` for `trust_remote_code`.

Shapes: `B` batch, `L'` tokens of the stack's sequence, `N` patches, `W` the stack's width.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

from .configuration_qgfd import absolute_position_limit


class _StackFamily:
    """How to build, load and run one family of pretrained stacks."""

    modality = None  # the modality whose encoder (modeling_qgfd_adapters.build_encoder) holds this stack

    @staticmethod
    def width(config) -> int:
        return int(config.hidden_size)

    def build(self, backbone_config) -> PreTrainedModel:
        raise NotImplementedError

    def layers(self, stack) -> nn.ModuleList:
        raise NotImplementedError

    def sublayers(self, layer) -> Tuple[nn.Module, nn.Module]:
        """(self-attention, feed-forward) of one layer: the modules adaLN-Zero wraps."""
        raise NotImplementedError

    def hooked(self, layer) -> Tuple[Tuple[nn.Module, nn.Module], Tuple[nn.Module, nn.Module]]:
        """((input, output) of self-attention, (input, output) of feed-forward): the module whose input
        adaLN-Zero modulates and the one whose output it gates. The same module, except in families
        whose sub-layer modules also hold the residual and the post-LN (BERT's)."""
        attn, ffn = self.sublayers(layer)
        return (attn, attn), (ffn, ffn)

    def position_limit(self, config) -> Optional[int]:
        """How many tokens the stack has positions for (None: any number)."""
        return None

    def token_types(self, stack, num_first: int, num_cond: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """Token type ids [B, num_first + num_cond] for [prefix; latents; conditioning] (None: none)."""
        return None

    def encoder_state_dict(self, encoder: nn.Module) -> dict:
        """The stack's weights, keyed as the stack names them, from a loaded encoder of the backbone."""
        return encoder.state_dict()

    def prefix(self, stack, batch_size: int) -> Optional[torch.Tensor]:
        """Tokens [B, P, W] put before the latents (None: none)."""
        return None

    def run(self, stack, h: torch.Tensor, mask: Optional[torch.Tensor], token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stack on tokens h [B, L', W] with mask [B, L'] bool (True = attend) or None, and token
        type ids [B, L'] (BERT's segments; None: the stack's default) -> [B, L', W]."""
        raise NotImplementedError


class _T5Family(_StackFamily):
    """T5's encoder stack: bidirectional self-attention with relative position bias, pre-RMSNorm,
    final RMSNorm. The stack's token embedding is dropped (the latents come in through `in_proj`)."""

    modality = "text"

    @staticmethod
    def width(config) -> int:
        return int(config.d_model)

    def build(self, backbone_config):
        if backbone_config.model_type == "mt5":
            from transformers.models.mt5.modeling_mt5 import MT5Stack as Stack
        else:
            from transformers.models.t5.modeling_t5 import T5Stack as Stack
        config = copy.deepcopy(backbone_config)
        config.is_decoder, config.use_cache = False, False  # the encoder stack
        stack = Stack(config)
        stack.embed_tokens = None  # [V, W], unused: the stack takes inputs_embeds
        return stack

    def layers(self, stack):
        return stack.block

    def sublayers(self, layer):
        return layer.layer[0].SelfAttention, layer.layer[-1].DenseReluDense

    def encoder_state_dict(self, encoder):
        stack = getattr(encoder, "encoder", encoder)  # T5EncoderModel -> its T5Stack
        return stack.state_dict()

    def run(self, stack, h, mask, token_type_ids=None):
        # T5Stack.forward: dropout, the blocks (block 0 computes the position bias the others reuse),
        # final RMSNorm, dropout; the mask goes through the attention implementation's mask function.
        return stack(inputs_embeds=h, attention_mask=mask).last_hidden_state


class _ViTFamily(_StackFamily):
    """ViT's layers (pre-LN) and final LayerNorm, with its CLS token as a prefix and its learned
    position embeddings on the latent patches. The patch embedding (pixels -> W) is dropped."""

    modality = "image"

    def build(self, backbone_config):
        from transformers import ViTModel

        stack = ViTModel(copy.deepcopy(backbone_config), add_pooling_layer=False)
        del stack.embeddings.patch_embeddings  # unused: the latents come in through `in_proj`
        return stack

    def layers(self, stack):
        return stack.layers

    def sublayers(self, layer):
        return layer.attention, layer.mlp

    def encoder_state_dict(self, encoder):
        return {k: v for k, v in encoder.state_dict().items() if not k.startswith("embeddings.patch_embeddings.")}

    def prefix(self, stack, batch_size):
        emb = stack.embeddings
        cls = emb.cls_token + emb.position_embeddings[:, :1]  # (1, 1, W), as ViTEmbeddings does it
        return cls.expand(batch_size, -1, -1)  # (B, 1, W)

    def patch_positions(self, stack, num_patches: int) -> torch.Tensor:
        """ViT's patch position embeddings [1, N, W] for a square grid of N patches (bicubic
        interpolation, as ViT's `interpolate_pos_encoding`, when N differs from ViT's own)."""
        pos = stack.embeddings.position_embeddings[:, 1:]  # (1, N0, W)
        n0, width = pos.shape[1], pos.shape[2]
        if num_patches == n0:
            return pos
        g0, g = math.isqrt(n0), math.isqrt(num_patches)
        if g0 * g0 != n0 or g * g != num_patches:
            raise ValueError(f"ViT positions need square grids of patches, got {n0} (ViT) and {num_patches} (latents).")
        grid = pos.reshape(1, g0, g0, width).permute(0, 3, 1, 2)  # (1, W, g0, g0)
        grid = F.interpolate(grid.float(), size=(g, g), mode="bicubic", align_corners=False).to(pos.dtype)
        return grid.permute(0, 2, 3, 1).reshape(1, g * g, width)  # (1, N, W)

    def run(self, stack, h, mask, token_type_ids=None):
        # ViTModel.forward after its embeddings: the layers, then the final LayerNorm.
        attention_mask = None
        if mask is not None:
            attention_mask = create_bidirectional_mask(config=stack.config, inputs_embeds=h, attention_mask=mask)
        for layer in stack.layers:
            h = layer(h, attention_mask)
        return stack.layernorm(h)


class _Wav2Vec2Family(_StackFamily):
    """Wav2Vec2's Transformer encoder: convolutional positions, LayerNorm, post-LN layers (or pre-LN
    ones in the "stable layer norm" variant). The convolutional feature encoder, the feature
    projection and the SpecAugment mask embedding are dropped."""

    modality = "audio"

    def build(self, backbone_config):
        from transformers import Wav2Vec2Model

        stack = Wav2Vec2Model(copy.deepcopy(backbone_config))
        stack.feature_extractor, stack.feature_projection = None, None  # unused: latents come in through `in_proj`
        if "masked_spec_embed" in stack._parameters:
            del stack.masked_spec_embed
        stack.adapter = None  # Wav2Vec2's optional output adapter (add_adapter) is not part of the encoder
        return stack

    def layers(self, stack):
        return stack.encoder.layers

    def sublayers(self, layer):
        return layer.attention, layer.feed_forward

    def encoder_state_dict(self, encoder):
        return {k: v for k, v in encoder.state_dict().items() if k.startswith("encoder.")}

    def run(self, stack, h, mask, token_type_ids=None):
        # Wav2Vec2Encoder.forward: conv positions, LayerNorm, dropout, the layers (LayerDrop in training).
        return stack.encoder(h, attention_mask=mask).last_hidden_state


class _BertFamily(_StackFamily):
    """BERT's encoder (RoBERTa alike; all-MiniLM-L6-v2 is a BERT): post-LN layers after BERT's
    embeddings, whose position and token type embeddings and LayerNorm apply to the denoiser's
    tokens as they would to word embeddings (`inputs_embeds`). The word embeddings [V, W] and the
    pooler are dropped.

    Positions are absolute: token i of [latents; conditioning] gets position i (RoBERTa: i +
    pad_token_id + 1, its fairseq offset, which is what RoBERTa computes for `inputs_embeds`); the
    sequence may not be longer than the table (`absolute_position_limit`). Latents and prefix are
    segment 0, conditioning tokens segment 1 when the model has two token types (BERT's sentence B).

    BERT's sub-layer modules hold the residual and the LayerNorm (`BertSelfOutput`, `BertOutput`),
    so adaLN-Zero modulates the input of self-attention (`attention.self`) and of the feed-forward
    network (`intermediate`), and gates the output projections (`attention.output.dense`,
    `output.dense`) before the residual is added: `LayerNorm(x + gate * f(modulate(x)))`."""

    modality = "text"

    def build(self, backbone_config):
        from transformers import BertModel, RobertaModel

        config = copy.deepcopy(backbone_config)
        config.is_decoder, config.add_cross_attention = False, False  # the bidirectional encoder
        stack = (RobertaModel if config.model_type == "roberta" else BertModel)(config, add_pooling_layer=False)
        stack.embeddings.word_embeddings = None  # [V, W], unused: the stack takes inputs_embeds
        return stack

    def layers(self, stack):
        return stack.encoder.layer

    def sublayers(self, layer):
        return layer.attention, layer.intermediate

    def hooked(self, layer):
        return (layer.attention.self, layer.attention.output.dense), (layer.intermediate, layer.output.dense)

    def encoder_state_dict(self, encoder):
        skip = ("embeddings.word_embeddings.", "pooler.")
        return {k: v for k, v in encoder.state_dict().items() if not k.startswith(skip)}

    def position_limit(self, config):
        return absolute_position_limit(config)

    def token_types(self, stack, num_first, num_cond, like):
        if num_cond == 0 or stack.config.type_vocab_size < 2:
            return None
        types = torch.zeros(like.shape[0], num_first + num_cond, dtype=torch.long, device=like.device)
        types[:, num_first:] = 1
        return types

    def run(self, stack, h, mask, token_type_ids=None):
        # BertModel.forward with inputs_embeds: embeddings (+ positions, + token types, LayerNorm,
        # dropout), the mask through the attention implementation's mask function, the layers.
        return stack(inputs_embeds=h, attention_mask=mask, token_type_ids=token_type_ids).last_hidden_state


class _DistilBertFamily(_BertFamily):
    """DistilBERT's transformer: as BERT (absolute positions, post-LN), without token types; its
    sub-layers (`attention`, `ffn`) are plain functions of their input, as Wav2Vec2's."""

    def build(self, backbone_config):
        from transformers import DistilBertModel

        stack = DistilBertModel(copy.deepcopy(backbone_config))
        stack.embeddings.word_embeddings = None
        return stack

    def layers(self, stack):
        return stack.transformer.layer

    def sublayers(self, layer):
        return layer.attention, layer.ffn

    def hooked(self, layer):
        return _StackFamily.hooked(self, layer)

    def token_types(self, stack, num_first, num_cond, like):
        return None

    def run(self, stack, h, mask, token_type_ids=None):
        return stack(inputs_embeds=h, attention_mask=mask).last_hidden_state


_FAMILIES = {"t5": _T5Family(), "mt5": _T5Family(), "vit": _ViTFamily(), "wav2vec2": _Wav2Vec2Family(),
             "bert": _BertFamily(), "roberta": _BertFamily(), "distilbert": _DistilBertFamily()}
