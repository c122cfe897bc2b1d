# coding=utf-8
"""The attention function registered as `"qgfd"` in transformers' `AttentionInterface`.

Every attention layer that calls `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)`
with a config that says `"qgfd"` calls `qgfd_attention_forward`, in numbered stages:

1. the call: the layer's role (self or cross, refined per call by the pre-hook), its settings, the
   cache layer that holds its keys and values;
2. plain attention where there is nothing to diffuse (cross-attention, alpha = 0, steps = 0):
   exactly transformers' `sdpa_attention_forward`;
3. the inputs as the kernel takes them (one dtype, all heads, one mask with T5's position bias,
   the causal flag);
4. the cache: the propagated values W_1..W_T of the earlier tokens (`patching_cache_qgfd`);
5. QGFD itself (`qgfd_attention`, the diffused softmax attention of docs/qgfd-math), and its
   weights when `output_attentions=True`;
6. this call's propagated values kept on the cache layer for the next call.

Shapes: `B` batch, `H` heads, `Hkv` key/value heads, `Lq` query length, `Lk` key length, `Dh` head width.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch
import torch.nn as nn
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.utils import logging

from .attention_qgfd import qgfd_attention
from .attention_qgfd_reference import qgfd_attention_reference, qgfd_attention_weights
from .patching_cache_qgfd import (
    _SHADOWED,
    QGFDDynamicLayer,
    _is_causal_layer,
    _Propagated,
    _qgfd_layer,
    _qgfd_shadow_layer,
    _self_attention_cache_layer,
    _shadow_extend,
)

logger = logging.get_logger(__name__)

# The name QGFD is registered under, in `AttentionInterface` and `AttentionMaskInterface`.
ATTN_IMPLEMENTATION = "qgfd"


def _is_zero(alpha) -> bool:
    return not isinstance(alpha, torch.Tensor) and alpha == 0


def _scores_mask(attention_mask, position_bias, key) -> Optional[torch.Tensor]:
    """The model's mask, with T5's position bias folded in as transformers' sdpa path does it."""
    if position_bias is None:
        return attention_mask
    if attention_mask is None:
        return position_bias
    if attention_mask.dtype == torch.bool:
        return torch.where(attention_mask, position_bias, torch.finfo(key.dtype).min)
    return position_bias + attention_mask


def qgfd_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
):
    """The `"qgfd"` entry of transformers' `AttentionInterface`.

    Args:
        module (`nn.Module`): the calling attention layer (its `is_causal`, `layer_idx`,
            `num_key_value_groups`, `config.qgfd` and `qgfd_alpha` are read).
        query (`[B, H, Lq, Dh]`), key, value (`[B, Hkv, Lk, Dh]`): after any cache update.
        attention_mask (`torch.Tensor`, *optional*): bool (True = may attend, from `sdpa_mask`) or
            additive float, broadcastable to `[B, H, Lq, Lk]`.
        scaling (`float`, *optional*), dropout (`float`): as the layer passes them (T5: scaling 1.0).
        **kwargs: `position_bias` (T5), `output_attentions`, `is_causal`, ...

    Returns:
        `(output [B, Lq, H, Dh], weights [B, H, Lq, Lk] or None)`; the weights are QGFD's
        (materialised by `qgfd_attention_reference`) when `output_attentions=True`.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
    ...                    image_size=16, patch_size=8, attn_implementation="qgfd")
    >>> model = ViTModel(config).eval()  # every attention call now goes through qgfd_attention_forward
    >>> model(torch.randn(1, 3, 16, 16)).last_hidden_state.shape
    torch.Size([1, 5, 32])

    ```
    """
    if kwargs.get("softcap") is not None:
        raise ValueError("QGFD attention does not support `softcap` (attention logit soft-capping).")

    # 1. The call: role, settings, output_attentions, the cache layer of this layer's keys and values.
    ctx, role, alpha_module, output_attentions, layer = _call_state(module, kwargs)
    settings = alpha_module.settings if alpha_module is not None else None

    # 2. Plain attention: cross-attention, or nothing to diffuse. Exactly transformers' sdpa.
    alpha = alpha_module() if (role == "self" and settings.steps > 0) else 0.0
    if _is_zero(alpha):
        _forget_propagated(layer)  # nothing is propagated for these tokens
        if not output_attentions:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    # 3. The inputs as the kernel takes them: one dtype, all heads, one mask with T5's bias, the causal flag.
    value_cached = value  # the cache's own tensor: identifies the cache layer's current state
    query, key, value, mask, is_causal = _kernel_inputs(module, query, key, value, attention_mask, kwargs)
    if _is_zero(alpha):  # plain attention with its weights (output_attentions=True)
        # graph="keys" only lets the checks accept Lq != Lk (cross-attention); steps=0 uses no graph.
        out, weights = qgfd_attention_reference(
            query, key, value, steps=0, graph="keys", attn_mask=mask, is_causal=is_causal, scale=scaling,
            dropout_p=dropout, return_weights=True,
        )
        return out.transpose(1, 2).contiguous(), weights

    # 4. The cache: propagated values of the earlier tokens, where this call continues a sequence.
    Lq, Lk = query.shape[2], key.shape[2]
    kernel_kwargs = dict(
        steps=settings.steps, alpha=alpha, graph=settings.graph, mix=settings.mix, attn_mask=mask,
        is_causal=is_causal, scale=scaling, key_temperature=settings.key_temperature,
        detach_graph=settings.detach_graph, dropout_p=dropout,
    )
    past, store = _cached_values(module, layer, settings, value_cached, query, Lk, kernel_kwargs)
    orphan = ctx is None and role == "self" and _is_causal_layer(module)  # first call, before the pre-hook existed

    # 5. QGFD: the fast kernel; the weights, when asked for, materialised from the graph rows (kept
    #    on the cache layer next to the propagated values, so cached steps return them too).
    want_propagated = store is not None or orphan
    past = past or None  # () for shadowed layers: their values come through `extend`
    # The model's own activations: the kernel does not read them (no device sync per layer).
    result = qgfd_attention(query, key, value, past_propagated=past, return_propagated=want_propagated, _read_values=False,
                            **kernel_kwargs)
    out, propagated = result if want_propagated else (result, None)
    weights = graph_rows = None
    if output_attentions:
        weights, graph_rows = _weights(query, key, layer, store, past, Lq, Lk, kernel_kwargs)
        weights = None if weights is None else weights.to(value.dtype)

    # 6. This call's propagated values (and graph rows), for the next call on the same cache.
    if store is not None:
        store._qgfd_propagated = _Propagated(tuple(propagated), Lk, graph_rows)
    elif orphan:
        module.__dict__["_qgfd_orphan"] = (weakref.ref(value_cached), _Propagated(tuple(propagated), Lk, graph_rows))
    return out.transpose(1, 2).contiguous(), weights  # (B, Lq, H, Dh)


def _call_state(module: nn.Module, kwargs: dict):
    """Stage 1: `(ctx, role, alpha_module, output_attentions, cache_layer)` of this call.

    `ctx` is what the pre-hook saw (None before it existed), `role` is "self" or "cross",
    `alpha_module` the layer's `QGFDAlpha` (None for cross-attention), `cache_layer` the layer of the
    call's cache that holds this layer's keys and values (None without a cache, or for cross-attention)."""
    if "_qgfd_role" not in module.__dict__:
        # A layer that no route prepared (its config switched to "qgfd" by hand). Imported here: the
        # layers module sits above this one (GPT-Neo's module-level attention calls this function).
        from .patching_layers_qgfd import _lazy_attach

        _lazy_attach(module)
    ctx = module.__dict__.get("_qgfd_ctx")
    role = "cross" if (ctx is not None and ctx.is_cross) else module.__dict__["_qgfd_role"]
    output_attentions = kwargs.get("output_attentions")
    if output_attentions is None:  # not passed: the config decides (`config.output_attentions = True`)
        output_attentions = getattr(module.config, "output_attentions", False)
    alpha_module = module._modules.get("qgfd_alpha")
    cache = ctx.cache() if (ctx is not None and ctx.cache is not None) else None
    layer = _self_attention_cache_layer(module, cache) if role == "self" else None
    return ctx, role, alpha_module, bool(output_attentions), layer


def _forget_propagated(layer) -> None:
    """Stage 2: a call that propagates nothing leaves no propagated values on its cache layer."""
    if layer is not None and isinstance(layer, QGFDDynamicLayer):
        layer._qgfd_propagated = None
    elif layer is not None and isinstance(layer, _SHADOWED):
        layer._qgfd_shadows = None


def _kernel_inputs(module: nn.Module, query, key, value, attention_mask, kwargs: dict):
    """Stage 3: `(query, key, value [B, H, L, Dh], mask, is_causal)` as `qgfd_attention` takes them."""
    if not query.dtype == key.dtype == value.dtype:  # e.g. Llama's rotary embedding under autocast keeps q, k in fp32
        device = query.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    n_rep = getattr(module, "num_key_value_groups", 1)
    if isinstance(n_rep, int) and n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)  # (B, Hkv, Lk, Dh) -> (B, H, Lk, Dh)
    Lq, Lk = query.shape[2], key.shape[2]
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # As in transformers' sdpa: a mask, when there is one, carries the whole pattern.
    is_causal = bool(is_causal) and attention_mask is None and Lq > 1
    mask = _scores_mask(attention_mask, kwargs.get("position_bias"), key)
    if is_causal and mask is None and Lq != Lk:
        # transformers leaves out the mask of a static cache's prefill (queries 0..Lq-1 of an Lk buffer) and
        # means torch's is_causal, aligned top-left; the kernel aligns is_causal bottom-right, so spell it out.
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).tril()  # (Lq, Lk)
        is_causal = False
    return query, key, value, mask, is_causal


def _cached_values(module: nn.Module, layer, settings, value_cached, query, Lk: int, kernel_kwargs: dict):
    """Stage 4: `(past, store)`: the earlier tokens' propagated values (a tuple of [B, H, Lk - Lq, Dh];
    `()` for a shadowed layer, whose values reach the kernel through `kernel_kwargs["extend"]`), and the
    dynamic cache layer this call's values go to. Raises where a cache supplied keys whose
    propagated values QGFD does not have (quantized, offloaded caches, a cache changed unseen)."""
    B, _, Lq, _ = query.shape
    past = store = None
    if layer is not None and type(layer) in (DynamicLayer, QGFDDynamicLayer):
        if getattr(layer, "values", None) is value_cached:
            store = _qgfd_layer(layer)
            p = getattr(store, "_qgfd_propagated", None)
            if Lk > Lq and p is not None and p.length == Lk - Lq and p.values[0].shape[0] == B:
                past = p.values
    elif layer is not None and _qgfd_shadow_layer(layer) is not None:
        shadowed = _qgfd_shadow_layer(layer)
        if shadowed._qgfd_shadows is None and shadowed._qgfd_seq_length() == Lq:  # this call's tokens are its first
            shadowed._qgfd_start_shadows(settings.steps)
        if shadowed._qgfd_shadows is not None:
            kernel_kwargs["extend"] = _shadow_extend(shadowed._qgfd_shadows, module, Lk)
            kernel_kwargs["query_positions"] = shadowed._qgfd_query_positions(Lq, Lk, query.device)
            past = ()  # the earlier tokens' values are in the shadows
    if (Lk > Lq or "extend" in kernel_kwargs) and past is None:
        # Self-attention whose queries are some Lq of Lk keys: a cache supplied the others.
        raise ValueError(
            f"QGFD cached decoding in {type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) needs "
            f"the propagated values of the {Lk - Lq} cached tokens, and the cache "
            f"({type(layer).__name__ if layer is not None else 'not seen'}) does not hold them. QGFD keeps them on "
            "the dynamic, sliding-window and static cache layers a QGFD model filled from their first token; "
            "quantized and offloaded caches are not supported (pass use_cache=False, or cache_implementation='dynamic')."
        )
    return past, store


def _weights(query, key, layer, store, past, Lq: int, Lk: int, kernel_kwargs: dict):
    """Stage 5, `output_attentions=True`: `(weights [B, H, Lq, Lk], graph rows)` materialised from the
    graph (with the earlier tokens' graph rows kept on a dynamic cache layer), or `(None, None)` with a
    warning where a cached step cannot have them."""
    past_graph = store._qgfd_propagated.graph if (past is not None and store is not None) else None
    if "extend" in kernel_kwargs and Lk > Lq:
        logger.warning_once(
            "QGFD attention weights of cached decoding steps are kept for dynamic caches only (this call uses "
            f"{type(layer).__name__}); returning None for them."
        )
        return None, None
    if past is not None and past_graph is None:
        logger.warning_once(
            "QGFD attention weights of a cached decoding step need the graph rows of the earlier tokens, which "
            "are kept only when the first call asked for the weights too; returning None for them."
        )
        return None, None
    weight_kwargs = {k: v for k, v in kernel_kwargs.items() if k not in ("detach_graph", "dropout_p", "extend", "query_positions")}
    return qgfd_attention_weights(query, key, past_graph=past_graph, **weight_kwargs)
