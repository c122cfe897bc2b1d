# coding=utf-8
"""Module-level QGFD: two architectures whose attention bypasses transformers' `AttentionInterface`.

QGFD replaces one method on each attention layer instance (`_attach` in `patching_layers_qgfd`
puts it on, `_detach` takes it off; the class is never changed), with the same guarantees as the
interface route (alpha = 0 calls the original method: exact; every route; save/load; padding;
`output_attentions`):

| class | method replaced | what QGFD keeps |
|---|---|---|
| `WavLMAttention` | `torch_multi_head_self_attention` | WavLM's gated relative position bias (as an additive mask), padding |
| `GPTNeoSelfAttention` | `_attn` | unscaled float32 scores, the global causal / local windowed pattern, the cache (through `qgfd_attention_forward`) |

GPT-Neo picks its attention class by `config._attn_implementation` (`GPT_NEO_ATTENTION_CLASSES`):
building a "qgfd" GPT-Neo adds `GPT_NEO_ATTENTION_CLASSES["qgfd"]` (its eager class), the one entry
qgfd_hf adds to a transformers table (`_prepare_gpt_neo`, called from the
`get_correct_attn_implementation` wrapper in `patching_hooks_qgfd`).

Shapes: `B` batch, `H` heads, `L` length, `D` width, `Dh` head width.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .attention_qgfd import qgfd_attention
from .attention_qgfd_reference import qgfd_attention_weights
from .patching_forward_qgfd import ATTN_IMPLEMENTATION, _is_zero, qgfd_attention_forward


def _weights_wanted() -> bool:
    """Whether the running forward records attention weights (`output_attentions=True`)."""
    try:
        from transformers.utils.output_capturing import _active_collector

        collected = _active_collector.get()
    except (ImportError, LookupError):
        return False
    return bool(collected) and "attentions" in collected


def _wavlm_self_attention(self, hidden_states, attention_mask, gated_position_bias):
    """QGFD in place of `WavLMAttention.torch_multi_head_self_attention` (torch's fused multi-head
    attention, scale 1/sqrt(Dh), WavLM's gated relative position bias as an additive mask, padding
    as a key padding mask). alpha = 0 calls the original: exactly the unpatched model.

    Returns `(output [B, L, D], weights [B, H, L, L] or None)` as the original does."""
    alpha_module = self._modules["qgfd_alpha"]
    settings = alpha_module.settings
    alpha = alpha_module() if settings.steps > 0 else 0.0
    if _is_zero(alpha):
        return type(self).torch_multi_head_self_attention(self, hidden_states, attention_mask, gated_position_bias)
    B, L, _ = hidden_states.shape
    H, Dh = self.num_heads, self.head_dim
    q, k, v = (p(hidden_states).view(B, L, H, Dh).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
    mask = gated_position_bias.view(B, H, L, L).to(q.dtype)  # (B, H, L, L), additive
    if attention_mask is not None:
        mask = mask.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))  # padded keys
    kwargs = dict(
        steps=settings.steps, alpha=alpha, graph=settings.graph, mix=settings.mix, attn_mask=mask,
        scale=Dh**-0.5, key_temperature=settings.key_temperature,
    )
    out = qgfd_attention(
        q, k, v, detach_graph=settings.detach_graph, dropout_p=self.dropout if self.training else 0.0, _read_values=False, **kwargs
    )
    out = self.out_proj(out.transpose(1, 2).reshape(B, L, H * Dh))  # (B, L, D)
    weights = qgfd_attention_weights(q, k, **kwargs)[0] if _weights_wanted() else None
    return out, weights


def _gpt_neo_attn(self, query, key, value, attention_mask=None):
    """QGFD in place of `GPTNeoSelfAttention._attn`: unscaled scores in float32 (GPT-Neo's own
    choice), the layer's causal (global) or windowed causal (local) pattern `self.bias`, and the
    model's mask, through `qgfd_attention_forward` (so the cache, beam search, output_attentions
    work as for any other decoder). alpha = 0 calls the original: exactly the unpatched model.

    query, key, value: `[B, H, Lq or Lk, Dh]` (after the cache update). Returns `(output [B, H, Lq, Dh], weights)`."""
    alpha_module = self._modules["qgfd_alpha"]
    ctx = self.__dict__.get("_qgfd_ctx")
    weights_wanted = _weights_wanted() or bool(ctx is not None and ctx.output_attentions)
    if _is_zero(alpha_module() if alpha_module.settings.steps > 0 else 0.0) and not weights_wanted:
        additive = attention_mask
        if attention_mask is not None and attention_mask.dtype == torch.bool:  # "qgfd"'s mask function gives bools
            additive = torch.zeros(attention_mask.shape, dtype=torch.float32, device=attention_mask.device).masked_fill(
                ~attention_mask, torch.finfo(torch.float32).min
            )
        return type(self)._attn(self, query, key, value, additive)
    Lq, Lk = query.shape[-2], key.shape[-2]
    pattern = self.bias[:, :, Lk - Lq : Lk, :Lk]  # (1, 1, Lq, Lk) bool: causal, or windowed causal
    if attention_mask is None:
        mask = pattern
    elif attention_mask.dtype == torch.bool:
        mask = attention_mask & pattern
    else:
        mask = attention_mask.masked_fill(~pattern, float("-inf"))
    out, weights = qgfd_attention_forward(
        self, query.float(), key.float(), value, mask, scaling=1.0,
        dropout=self.attn_dropout.p if self.training else 0.0, output_attentions=weights_wanted,
    )
    out = out.transpose(1, 2).to(value.dtype)  # (B, H, Lq, Dh)
    return out, None if weights is None else weights.to(value.dtype)


def _prepare_gpt_neo(module_file) -> None:
    """GPT-Neo picks its attention class by `config._attn_implementation`: "qgfd" builds the eager one."""
    classes = getattr(module_file, "GPT_NEO_ATTENTION_CLASSES", None)
    if classes is not None and ATTN_IMPLEMENTATION not in classes:
        classes[ATTN_IMPLEMENTATION] = module_file.GPTNeoSelfAttention


# class (by module and name) -> (the method QGFD replaces on each instance, its QGFD version)
_MODULE_LEVEL: Dict[str, Tuple[str, Callable]] = {
    "transformers.models.wavlm.modeling_wavlm.WavLMAttention": ("torch_multi_head_self_attention", _wavlm_self_attention),
    "transformers.models.gpt_neo.modeling_gpt_neo.GPTNeoSelfAttention": ("_attn", _gpt_neo_attn),
}
_MODULE_LEVEL_MODULES = {name.rsplit(".", 1)[0] for name in _MODULE_LEVEL}
# modeling file -> what it needs before a "qgfd" model is built from it
_MODULE_LEVEL_PREPARE: Dict[str, Callable] = {"transformers.models.gpt_neo.modeling_gpt_neo": _prepare_gpt_neo}


def _module_level(module: nn.Module) -> Optional[Tuple[str, Callable]]:
    cls = type(module)
    return _MODULE_LEVEL.get(f"{cls.__module__}.{cls.__qualname__}")
