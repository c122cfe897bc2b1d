# coding=utf-8
"""The cache of QGFD's propagated values, for `generate()` and any cached forward.

In cached decoding QGFD needs, next to each layer's keys and values, the propagated values W_1..W_T
of the earlier tokens (and, while attention weights are returned, their graph rows P). They are kept
on the cache layer itself, so they live and die with the cache of one `generate()` call and follow
its beam reorders, crops and batch edits:

- a `DynamicLayer` becomes a `QGFDDynamicLayer` (by `__class__` assignment, nothing copied) the
  first time QGFD stores values on it (for T5, the self-attention half of `EncoderDecoderCache`);
- sliding-window and static layers become `QGFD<Layer>` classes that keep W in "shadow" layers of
  their own kind (same window, same buffer), so W comes back laid out as the layer returns keys.

The attention function is not given the cache, so a forward pre-hook on each attention layer
(`_qgfd_pre_hook`) records, weakly, the cache of the current call. `prepare_qgfd_cache` does the
class conversions ahead of time, outside a compiled region.

Shapes: `B` batch, `H` heads, `Lq` query length, `Lk` key length, `Dh` head width.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer, StaticSlidingWindowLayer

# Call keywords under which attention layers receive their cache, and the encoder states of cross-attention.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")  # layer_past: GPT-NeoX, GPTBigCode
_CROSS_KWARGS = ("key_value_states", "encoder_hidden_states")


def _is_attached(module: nn.Module) -> bool:
    """Whether QGFD has prepared this attention layer (a route gave it its role, alpha and pre-hook)."""
    return "_qgfd_role" in module.__dict__


def _is_causal_layer(module: nn.Module) -> bool:
    """Whether a self-attention layer is causal (a decoder's), i.e. whether its values get cached."""
    return bool(getattr(module, "is_causal", False))


@dataclass
class _Propagated:
    """W_1..W_T ([B, H, length, Dh] each) of the `length` tokens a cache layer holds, and the graph
    rows P [B, H, length, length] of those tokens when the attention weights are being returned."""

    values: Tuple[torch.Tensor, ...]
    length: int
    graph: Optional[torch.Tensor] = None


class QGFDDynamicLayer(DynamicLayer):
    """A `DynamicLayer` that also keeps QGFD's propagated values, and applies to them every edit it
    applies to its keys and values (beam reorder, crop, batch repeat / select, reset).

    QGFD turns a cache's `DynamicLayer` into this class (by `__class__` assignment, nothing is
    copied) the first time it stores propagated values on it."""

    _qgfd_propagated: Optional[_Propagated] = None

    def _qgfd_apply(self, fn: Callable[[torch.Tensor], torch.Tensor], crop: Optional[int] = None) -> None:
        """Apply a batch edit `fn` (on dim 0) or a crop to `crop` tokens to the propagated values and graph rows."""
        p = self._qgfd_propagated
        if p is not None:
            if crop is not None:
                values = tuple(w[:, :, :crop] for w in p.values)
                graph = None if p.graph is None else p.graph[:, :, :crop, :crop]
                self._qgfd_propagated = _Propagated(values, min(crop, p.length), graph)
            else:
                values = tuple(fn(w) for w in p.values)
                graph = None if p.graph is None else fn(p.graph)
                self._qgfd_propagated = _Propagated(values, p.length, graph)

    def reorder_cache(self, beam_idx):
        super().reorder_cache(beam_idx)
        self._qgfd_apply(lambda w: w.index_select(0, beam_idx.to(w.device)))

    def batch_repeat_interleave(self, repeats):
        super().batch_repeat_interleave(repeats)
        self._qgfd_apply(lambda w: w.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        super().batch_select_indices(indices)
        self._qgfd_apply(lambda w: w[indices, ...])

    def crop(self, tokens_to_remove):
        super().crop(tokens_to_remove)
        self._qgfd_apply(None, crop=self.get_seq_length())

    def reset(self):
        super().reset()
        self._qgfd_propagated = None


def _qgfd_layer(layer) -> Optional[QGFDDynamicLayer]:
    """`layer` as a `QGFDDynamicLayer`; None for any other kind of layer."""
    if type(layer) is DynamicLayer:
        layer.__class__ = QGFDDynamicLayer
    return layer if isinstance(layer, QGFDDynamicLayer) else None


class _QGFDShadowLayerMixin:
    """A sliding-window or static cache layer that also keeps QGFD's propagated values W_1..W_T, each
    in a "shadow" layer of its own kind (same window, same buffer size). A shadow receives the W of
    the new tokens exactly as the layer receives their keys and values, so it returns W laid out as
    the layer returns keys (rolled window, static buffer, ...), and it gets every edit the layer
    gets (beam reorder, crop, reset, ...). QGFD turns a layer into a subclass of its own class with
    these methods (by `__class__` assignment, nothing copied) the first time it propagates on it.

    The methods are copied into single-inheritance subclasses (`_SHADOW_CLASSES`): a mixin base
    would change the object layout, and Python refuses the `__class__` assignment then."""

    _qgfd_base: type
    _qgfd_shadows: Optional[list] = None

    def _qgfd_each(self, name, *args):
        for shadow in self._qgfd_shadows or ():
            getattr(shadow, name)(*args)

    def reorder_cache(self, beam_idx):
        self._qgfd_base.reorder_cache(self, beam_idx)
        self._qgfd_each("reorder_cache", beam_idx)

    def batch_repeat_interleave(self, repeats):
        self._qgfd_base.batch_repeat_interleave(self, repeats)
        self._qgfd_each("batch_repeat_interleave", repeats)

    def batch_select_indices(self, indices):
        self._qgfd_base.batch_select_indices(self, indices)
        self._qgfd_each("batch_select_indices", indices)

    def crop(self, tokens_to_remove):
        self._qgfd_base.crop(self, tokens_to_remove)
        self._qgfd_each("crop", tokens_to_remove)

    def reset(self):
        self._qgfd_base.reset(self)
        self._qgfd_each("reset")

    def activate_past_recording(self):
        self._qgfd_base.activate_past_recording(self)
        self._qgfd_each("activate_past_recording")

    def _qgfd_new_shadow(self):
        base = self._qgfd_base
        if base is DynamicSlidingWindowLayer:
            shadow = DynamicSlidingWindowLayer(sliding_window=self.sliding_window)
            shadow.record_past = self.record_past
        elif base is StaticSlidingWindowLayer:  # its max_cache_len is already min(window, max length)
            shadow = StaticSlidingWindowLayer(max_cache_len=self.max_cache_len, sliding_window=self.max_cache_len)
        else:
            shadow = StaticLayer(max_cache_len=self.max_cache_len)
        return shadow

    def _qgfd_start_shadows(self, steps: int) -> None:
        """Start keeping this layer's propagated values: one empty shadow layer per QGFD step.
        Only before the layer's first tokens (a shadow must hold every token the layer holds)."""
        self._qgfd_shadows = [self._qgfd_new_shadow() for _ in range(steps)]

    def _qgfd_seq_length(self) -> int:
        return int(self.get_seq_length())

    def _qgfd_query_positions(self, Lq: int, Lk: int, device) -> Optional[torch.Tensor]:
        """Where this call's Lq tokens sit among the Lk keys the layer returned (None: the last Lq)."""
        if self._qgfd_base is StaticLayer:
            return self.cumulative_length.to(device) - Lq + torch.arange(Lq, device=device)
        if self._qgfd_base is StaticSlidingWindowLayer and self.cumulative_length_int <= self.max_cache_len:
            return torch.arange(self.cumulative_length_int - Lq, self.cumulative_length_int, device=device)
        return None


_SHADOW_CLASSES: Dict[type, type] = {}
for _base in (DynamicSlidingWindowLayer, StaticLayer, StaticSlidingWindowLayer):
    _methods = {k: v for k, v in _QGFDShadowLayerMixin.__dict__.items() if not k.startswith("__")}
    _SHADOW_CLASSES[_base] = type(f"QGFD{_base.__name__}", (_base,), dict(_methods, _qgfd_base=_base))
_SHADOWED = tuple(_SHADOW_CLASSES.values())


def _qgfd_shadow_layer(layer):
    """`layer` as its QGFD shadow-keeping class; None for a kind QGFD does not know (quantized, ...)."""
    if isinstance(layer, _SHADOWED):
        return layer
    cls = _SHADOW_CLASSES.get(type(layer))
    if cls is None:
        return None
    layer.__class__ = cls
    return layer


def _self_attention_cache_layer(module: nn.Module, cache) -> Optional[object]:
    """The layer of `cache` that holds this module's keys and values (T5: the self-attention half)."""
    if cache is None:
        return None
    cache = getattr(cache, "self_attention_cache", cache)
    layers = getattr(cache, "layers", None)
    idx = getattr(module, "layer_idx", None)
    if layers is None or not isinstance(idx, int) or not 0 <= idx < len(layers):
        return None
    return layers[idx]


@dataclass
class _CallContext:
    """What the pre-hook saw of the current call: the cache (weakly) and whether it is cross-attention."""

    cache: Optional[weakref.ReferenceType]
    is_cross: bool
    output_attentions: bool = False  # passed to the layer itself (GPT-Neo), not through the output recorder


def _qgfd_pre_hook(module: nn.Module, args, kwargs):
    """Forward pre-hook on attention layers: record the call's cache and cross-attention flag."""
    cache = None
    for name in _CACHE_KWARGS:
        if kwargs.get(name) is not None:
            cache = kwargs[name]
            break
    is_cross = any(kwargs.get(name) is not None for name in _CROSS_KWARGS)
    module.__dict__["_qgfd_ctx"] = _CallContext(
        weakref.ref(cache) if cache is not None else None, is_cross, bool(kwargs.get("output_attentions"))
    )
    # A layer that ran its first QGFD call before this hook existed left its propagated values
    # aside: give them to the cache layer they belong to (the one whose values it saw).
    orphan = module.__dict__.pop("_qgfd_orphan", None)
    if orphan is not None and not is_cross:
        values_ref, propagated = orphan
        layer = _self_attention_cache_layer(module, cache)
        if layer is not None and values_ref() is not None and getattr(layer, "values", None) is values_ref():
            layer = _qgfd_layer(layer)
            if layer is not None and layer._qgfd_propagated is None:
                layer._qgfd_propagated = propagated
    return None


def prepare_qgfd_cache(model: nn.Module, cache) -> None:
    """Ready an empty cache for a QGFD model's first call inside `torch.compile`.

    QGFD turns a cache layer into its own subclass (`__class__` assignment) and gives static and
    sliding-window layers their shadow layers the first time it propagates on them; Dynamo cannot
    trace a `__class__` assignment (a graph break, an error under `fullgraph=True`), and deciding
    whether a static layer is empty reads its length on the host. This does both ahead of time,
    outside the compiled region, so that a compiled prefill (`torch.compile(model, fullgraph=True)`
    on a fresh `StaticCache`, or `generate(..., prefill_chunk_size=...)` with `compile_config`) is
    one graph. The results are the same as without it. `generate()` calls it on the cache it
    uses; a cache that already holds tokens is left as it is (its first call prepared it).

    Args:
        model (`nn.Module`): a model (or any module) whose attention layers run QGFD.
        cache (`Cache` or `EncoderDecoderCache`): the cache its next call will use.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                      num_attention_heads=4, num_key_value_heads=2)
    >>> model = qgfd_hf.patch_model(LlamaForCausalLM(config).eval(), steps=1, alpha=0.5)
    >>> cache = StaticCache(config=config, max_cache_len=16)
    >>> qgfd_hf.prepare_qgfd_cache(model, cache)
    >>> type(cache.layers[0]).__name__
    'QGFDStaticLayer'

    ```
    """
    for module in model.modules():
        if not _is_attached(module) or module.__dict__["_qgfd_role"] != "self" or not _is_causal_layer(module):
            continue
        layer = _self_attention_cache_layer(module, cache)
        if layer is None:
            continue
        if type(layer) in (DynamicLayer, QGFDDynamicLayer):
            _qgfd_layer(layer)
            continue
        shadowed = _qgfd_shadow_layer(layer)
        steps = module._modules["qgfd_alpha"].settings.steps
        if shadowed is not None and shadowed._qgfd_shadows is None and steps > 0 and shadowed._qgfd_seq_length() == 0:
            shadowed._qgfd_start_shadows(steps)


def _has_hook(module: nn.Module) -> bool:
    return any(h is _qgfd_pre_hook for h in module._forward_pre_hooks.values())


def _remove_hook(module: nn.Module) -> None:
    for key in [k for k, h in module._forward_pre_hooks.items() if h is _qgfd_pre_hook]:
        del module._forward_pre_hooks[key]
        module._forward_pre_hooks_with_kwargs.pop(key, None)


def _shadow_extend(shadows: list, module: nn.Module, Lk: int) -> Callable:
    """The kernel's `extend` for a shadowed cache layer: W_k of the new tokens into shadow k."""

    def extend(k: int, w_rows: torch.Tensor) -> torch.Tensor:
        _, w_all = shadows[k - 1].update(w_rows[..., :1].contiguous(), w_rows)  # 1-wide keys: only values matter
        if w_all.shape[2] != Lk:
            raise ValueError(
                f"QGFD's propagated values in {type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) hold "
                f"{w_all.shape[2]} tokens where the cache returned {Lk} keys: the cache was changed in a way QGFD did not see."
            )
        return w_all

    return extend
