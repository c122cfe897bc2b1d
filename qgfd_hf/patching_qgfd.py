# coding=utf-8
"""Put QGFD attention into pretrained transformers models: T5, ViT, Wav2Vec2, Llama-style decoders, BERT, ...

transformers 5 routes attention through `AttentionInterface`: an attention layer calls
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)`. Importing `qgfd_hf`
registers `"qgfd"` there (with `sdpa_mask` as its mask function, so padding and causal masks
arrive as bool masks). Nothing in the model's weights or module tree is replaced, so parameter
names and `state_dict` keys stay the same (a learnable alpha adds one parameter per layer).

What each attention layer gets:

- self-attention (T5 encoder and decoder, ViT, Wav2Vec2, Llama, BERT, ...): QGFD, computed by
  `qgfd_attention` (T5's relative position bias and scale of 1 kept, exact causality in decoders);
- cross-attention (T5's `EncDecAttention`, Bart-style decoder attention over the encoder):
  plain attention, exactly as transformers' `sdpa` computes it.

Where the state lives: where transformers keeps it. A layer runs QGFD exactly when its config's
`_attn_implementation` is `"qgfd"`; its settings are `config.qgfd` (a dict of `QGFDSettings`).
Importing `qgfd_hf` wraps the few transformers methods that choose or save an implementation
(`install_transformers_hooks`), so that

- every route that switches a model to "qgfd" (`patch_model`, `Model(config)` or
  `from_pretrained(..., attn_implementation="qgfd")`, `set_attn_implementation("qgfd")`) prepares
  its layers at once (alpha submodule, pre-hook), with the settings of the outermost config that
  has them (nested configs included), or raises a `ValueError` naming the architecture, the layer
  class and what is supported (attention that bypasses the interface, soft-capping, no attention);
- a switch to another implementation takes QGFD off the layers;
- `save_pretrained` writes the current `attn_implementation` of a config that runs QGFD or carries
  QGFD settings, so any number of save -> load cycles give back exactly what was saved.

Cached decoding: the propagated values W_1..W_T of earlier tokens are kept on the cache layer
next to its keys and values (`DynamicCache` layers, the self-attention half of T5's
`EncoderDecoderCache`; sliding-window and static layers keep them in shadow layers of their own
kind), so they live and die with the cache of one `generate()` call and follow its beam reorders,
crops and batch edits. A forward pre-hook on each attention layer tells the attention function
which cache the current call uses.

Shapes: `B` batch, `H` heads, `Lq` query length, `Lk` key length, `Dh` head width.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import sys
import types
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from transformers import AttentionInterface, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer, StaticSlidingWindowLayer
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

from .attention_qgfd import QGFDAlpha, QGFDSettings, qgfd_attention, qgfd_attention_reference, qgfd_attention_weights
from .patching_config_qgfd import ATTN_IMPLEMENTATION, config_originals, install_config_hooks

logger = logging.get_logger(__name__)

SUPPORTED = (
    "QGFD can be put into transformers models whose attention layers call "
    "`ALL_ATTENTION_FUNCTIONS.get_interface(...)` (transformers' AttentionInterface) and do not use logit "
    "soft-capping: T5 / mT5 / UMT5 (encoder and decoder self-attention; cross-attention stays plain), ViT, "
    "DeiT, DINOv2, CLIP, SigLIP, Wav2Vec2, HuBERT, WavLM and GPT-Neo (module-level), Llama-style decoders (Llama, Mistral, Qwen2/3, Gemma, "
    "Gemma3, Phi3, ...), GPT-2, GPT-NeoX, GPTBigCode, OPT, BERT-style encoders, Bart-style encoder-decoders. "
    "Not supported (their attention bypasses the interface): BLOOM, Falcon, XGLM, DeBERTa-v2, MPNet, LongT5."
)

# Call keywords under which attention layers receive their cache, and the encoder states of cross-attention.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")  # layer_past: GPT-NeoX, GPTBigCode
_CROSS_KWARGS = ("key_value_states", "encoder_hidden_states")


# ----------------------------------------------------------------------------------------
# Which modules are attention layers, and which of them attend to themselves
# ----------------------------------------------------------------------------------------

_USES_INTERFACE: Dict[type, bool] = {}


def _uses_attention_interface(module: nn.Module) -> bool:
    """True for a module whose `forward` dispatches through `ALL_ATTENTION_FUNCTIONS.get_interface`."""
    cls = type(module)
    if cls not in _USES_INTERFACE:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _USES_INTERFACE[cls] = "ALL_ATTENTION_FUNCTIONS.get_interface(" in source
    return _USES_INTERFACE[cls] and hasattr(module, "config")


def _static_role(module: nn.Module) -> str:
    """"self" or "cross", from the module alone (the pre-hook refines it per call).

    Cross-attention: a class named `*Cross*` (BERT), `is_cross_attention=True`, or a decoder
    attention that is not causal (T5's `EncDecAttention`, Bart-style `encoder_attn`)."""
    if getattr(module, "is_cross_attention", False) or "cross" in type(module).__name__.lower():
        return "cross"
    if getattr(module, "is_decoder", False) and not getattr(module, "is_causal", True):
        return "cross"
    return "self"


def find_attention_modules(model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
    """The attention layers of `model` that QGFD can reach, as `(name, module, role)` with role
    `"self"` (gets QGFD) or `"cross"` (stays plain attention).

    Example:

    ```python
    >>> from transformers import T5Config, T5Model
    >>> from qgfd_hf.patching_qgfd import find_attention_modules
    >>> model = T5Model(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, vocab_size=100))
    >>> [(name, role) for name, _, role in find_attention_modules(model)]
    [('encoder.block.0.layer.0.SelfAttention', 'self'), ('decoder.block.0.layer.0.SelfAttention', 'self'), ('decoder.block.0.layer.1.EncDecAttention', 'cross')]

    ```
    """
    return [(name, m, _static_role(m)) for name, m in model.named_modules() if _uses_attention_interface(m)]


def _num_heads(module: nn.Module, required: bool = True) -> int:
    for name in ("num_heads", "n_heads", "num_attention_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    config = module.config
    for name in ("num_attention_heads", "num_heads"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if not required:
        return 0
    raise ValueError(f"Cannot tell the number of heads of {type(module).__name__}; a learnable alpha needs it.")


# ----------------------------------------------------------------------------------------
# The cache of propagated values
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Per-layer state: role, alpha, hook
# ----------------------------------------------------------------------------------------


def _settings_from_config(config) -> QGFDSettings:
    d = getattr(config, "qgfd", None)
    if d is not None and not isinstance(d, dict):
        raise ValueError(f"`config.qgfd` must be a dict of QGFD settings, got {type(d).__name__}.")
    return QGFDSettings.from_dict(d or {})


def _attach(module: nn.Module, settings: QGFDSettings, role: str) -> None:
    """Give an attention layer what QGFD needs: its role, its alpha (self-attention) and the pre-hook.

    A layer that already has an alpha with other settings gets a new one (its learned values, if any, go)."""
    module.__dict__["_qgfd_role"] = role
    current = module._modules.get("qgfd_alpha")
    if role == "self" and (current is None or current.settings != settings):
        alpha = QGFDAlpha(settings, _num_heads(module, required=settings.learnable_alpha))
        param = next(module.parameters(), None)
        if param is not None:
            alpha.to(device=param.device)
        alpha.train(module.training)
        module.qgfd_alpha = alpha
    if not _has_hook(module):
        module.register_forward_pre_hook(_qgfd_pre_hook, with_kwargs=True)
    takeover = _module_level(module)
    if takeover is not None:  # module-level QGFD: the layer's own attention method, replaced on this instance
        name, fn = takeover
        module.__dict__[name] = types.MethodType(fn, module)
        if not hasattr(module, "layer_idx") and isinstance(getattr(module, "layer_id", None), int):
            module.__dict__["layer_idx"] = module.layer_id  # GPT-Neo: where the cache layer is found
            module.__dict__["_qgfd_layer_idx"] = True


def _detach(module: nn.Module) -> None:
    takeover = _module_level(module)
    if takeover is not None:
        module.__dict__.pop(takeover[0], None)
        if module.__dict__.pop("_qgfd_layer_idx", False):
            module.__dict__.pop("layer_idx", None)
    alpha = module._modules.pop("qgfd_alpha", None)
    if alpha is not None and alpha.logit is not None:
        logger.warning(
            f"{type(module).__name__} leaves QGFD: its learnable alpha `qgfd_alpha.logit` is removed with it."
        )
    for name in ("_qgfd_role", "_qgfd_ctx", "_qgfd_orphan", "_qgfd_config"):
        module.__dict__.pop(name, None)
    _remove_hook(module)


def _is_attached(module: nn.Module) -> bool:
    return "_qgfd_role" in module.__dict__


def _layer_config(module: nn.Module):
    """The config that decides a layer's attention: its own, or (module-level QGFD, for layers
    without one) the config of the model around it."""
    return module.__dict__.get("_qgfd_config") or module.config


def _lazy_attach(module: nn.Module) -> None:
    """First QGFD call of a layer that no route prepared (its config was switched to "qgfd" by hand,
    e.g. `config._attn_implementation = "qgfd"` after the model was built)."""
    role = _static_role(module)
    settings = _settings_from_config(module.config)
    if role == "self" and settings.learnable_alpha:
        raise ValueError(
            "`config.qgfd` asks for a learnable alpha, whose parameters exist only once the model is switched to "
            "QGFD: call `model.set_attn_implementation('qgfd')` or `qgfd_hf.patch_model(model)` first, or load the "
            "checkpoint with `qgfd_hf.from_pretrained_qgfd(model_class, path)`."
        )
    _attach(module, settings, role)


# ----------------------------------------------------------------------------------------
# Where QGFD can and cannot go: the model's attention layers, and the ones that bypass the interface
# ----------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One module of a model, with the config that decides its attention implementation and the
    QGFD settings dict that applies to it (the outermost QGFD config on its path that carries one)."""

    name: str
    module: nn.Module
    owner: PreTrainedConfig
    source: Optional[dict]


def _walk(model: nn.Module, config: PreTrainedConfig) -> List[_Entry]:
    entries: List[_Entry] = []

    def visit(name, module, owner, source):
        cfg = getattr(module, "config", None)
        if isinstance(cfg, PreTrainedConfig):
            owner = cfg
            own = cfg.__dict__.get("qgfd")
            if source is None and cfg._attn_implementation == ATTN_IMPLEMENTATION and isinstance(own, dict):
                source = own
        entries.append(_Entry(name, module, owner, source))
        for child_name, child in module._modules.items():
            if child is not None:
                visit(f"{name}.{child_name}" if name else child_name, child, owner, source)

    visit("", model, config, None)
    return entries


_BYPASSES: Dict[type, bool] = {}


def _bypasses_interface(module: nn.Module) -> bool:
    """True for an attention layer that computes attention itself (BLOOM, Falcon, DeBERTa-v2, XGLM,
    MPNet, LongT5's local attention; GPT-Neo's and WavLM's too, but QGFD takes those over at module level): a class named `*Attention*` (not a pooling head,
    not a torch module) with parameters, which neither calls the attention interface nor contains a
    layer that does (that rules out wrappers such as BERT's `BertAttention`)."""
    cls = type(module)
    if cls not in _BYPASSES:
        name = cls.__name__.lower()
        _BYPASSES[cls] = (
            "attention" in name
            and "pool" not in name
            and not cls.__module__.startswith("torch.")
            and not issubclass(cls, PreTrainedModel)
            and not any(_class_uses_interface(type(m)) or _module_level(m) is not None for m in module.modules())
        )
    return _BYPASSES[cls] and next(module.parameters(), None) is not None and _module_level(module) is None


def _class_uses_interface(cls: type) -> bool:
    if cls not in _USES_INTERFACE:
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            source = ""
        _USES_INTERFACE[cls] = "ALL_ATTENTION_FUNCTIONS.get_interface(" in source
    return _USES_INTERFACE[cls]


def _architecture(model: nn.Module) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__} (model_type={model_type!r})" if model_type else type(model).__name__


def _refuse_bypassing(model: nn.Module, entries: List[_Entry]) -> None:
    classes = sorted({type(e.module).__name__ for e in entries})
    names = [e.name for e in entries]
    raise ValueError(
        f"QGFD cannot be put into {_architecture(model)}: its attention layer class(es) {classes} "
        f"({len(names)} layer(s), e.g. {names[0]!r}) compute attention themselves instead of calling "
        f"transformers' AttentionInterface, so attn_implementation='qgfd' would leave them plain. {SUPPORTED}"
    )


def _softcap(module: nn.Module) -> Optional[float]:
    for obj in (module, _layer_config(module)):
        for name in ("attn_logit_softcapping", "softcap"):
            value = getattr(obj, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
                return value
    return None


def _sync(model: PreTrainedModel, requested: bool = False) -> None:
    """Make every attention layer of `model` match its config's attention implementation: QGFD state
    on the layers whose config says "qgfd", none on the others.

    Raises a `ValueError` (and changes nothing) when a config says "qgfd" for layers QGFD cannot
    reach: attention that bypasses the interface, no attention layer at all, only cross-attention,
    logit soft-capping. `requested`: the caller asked for "qgfd" on the whole model (so the model's
    own config must say "qgfd" afterwards: transformers leaves models it cannot switch as they are)."""
    entries = _walk(model, model.config)
    on_configs = {id(e.owner): e.owner for e in entries if e.owner._attn_implementation == ATTN_IMPLEMENTATION}
    if not on_configs and not requested:  # the common case for models that never use QGFD: cheap
        for e in entries:
            if _is_attached(e.module):
                _detach(e.module)
        return
    layers = [e for e in entries if _uses_attention_interface(e.module)]
    if requested and model.config._attn_implementation != ATTN_IMPLEMENTATION:
        bypass = [e for e in entries if _bypasses_interface(e.module)]
        if bypass:
            _refuse_bypassing(model, bypass)
        raise ValueError(
            f"transformers did not switch {_architecture(model)} to attn_implementation='qgfd' "
            f"(it is {model.config._attn_implementation!r}). {SUPPORTED}"
        )
    for e in entries:
        if _module_level(e.module) is not None:
            e.module.__dict__["_qgfd_config"] = e.owner
            layers.append(e)
    on = [e for e in layers if _layer_config(e.module)._attn_implementation == ATTN_IMPLEMENTATION]
    if on_configs:
        bypass = [e for e in entries if id(e.owner) in on_configs and _bypasses_interface(e.module)]
        if bypass:
            _refuse_bypassing(model, bypass)
        if not on:
            raise ValueError(
                f"{_architecture(model)} has no attention layer that QGFD can be put into, yet its config asks "
                f"for attn_implementation='qgfd'. {SUPPORTED}"
            )
        roles = {id(e.module): _static_role(e.module) for e in on}
        if not any(r == "self" for r in roles.values()):
            raise ValueError(
                f"{_architecture(model)} has only cross-attention layers ({sorted({type(e.module).__name__ for e in on})}); "
                f"QGFD needs self-attention. {SUPPORTED}"
            )
        capped = [e for e in on if _softcap(e.module) is not None]
        if capped:
            raise ValueError(
                f"QGFD cannot be put into {_architecture(model)}: its attention layers {type(capped[0].module).__name__} "
                f"use logit soft-capping (attn_logit_softcapping={_softcap(capped[0].module)}), which QGFD's fused "
                "attention calls do not compute. Set `config.attn_logit_softcapping = None` before building the "
                f"model to use QGFD without it. {SUPPORTED}"
            )
        cache: Dict[int, QGFDSettings] = {}
        for e in on:
            source = e.source if e.source is not None else _layer_config(e.module).__dict__.get("qgfd")
            if id(source) not in cache:
                if source is not None and not isinstance(source, dict):
                    raise ValueError(f"`config.qgfd` must be a dict of QGFD settings, got {type(source).__name__}.")
                cache[id(source)] = QGFDSettings.from_dict(source or {})
            e.module.__dict__["_qgfd_settings"] = cache[id(source)]
        for e in on:
            settings = e.module.__dict__.pop("_qgfd_settings")
            _attach(e.module, settings, roles[id(e.module)])
            if _layer_config(e.module).__dict__.get("qgfd") != settings.to_dict():
                _layer_config(e.module).qgfd = settings.to_dict()  # where save_pretrained and get_qgfd_settings find it
        # Configs that say "qgfd" but hold no layer of their own (ForCausalLM around Model, CLIP's top
        # config): the settings of the first QGFD layer below them.
        first = on[0].module._modules.get("qgfd_alpha")
        for config in on_configs.values():
            if "qgfd" not in config.__dict__ and first is not None:
                config.qgfd = first.settings.to_dict()
    for e in entries:
        if _is_attached(e.module) and _layer_config(e.module)._attn_implementation != ATTN_IMPLEMENTATION:
            _detach(e.module)


def _config_tree(model: nn.Module) -> List[PreTrainedConfig]:
    """Every config object a model's modules hold, with their sub-configs (unique, outermost first)."""
    seen, out = set(), []

    def add(config):
        if isinstance(config, PreTrainedConfig) and id(config) not in seen:
            seen.add(id(config))
            out.append(config)
            for key in getattr(config, "sub_configs", {}) or {}:
                add(getattr(config, key, None))

    for m in model.modules():
        add(getattr(m, "config", None))
    return out


def _snapshot(model: nn.Module):
    return [(c, c._attn_implementation_internal, c.__dict__.get("qgfd")) for c in _config_tree(model)]


def _restore(model: nn.Module, snapshot) -> None:
    for config, implementation, qgfd in snapshot:
        config._attn_implementation_internal = implementation
        if qgfd is None:
            config.__dict__.pop("qgfd", None)
        else:
            config.qgfd = qgfd
    for m in model.modules():
        if _is_attached(m) and _layer_config(m)._attn_implementation != ATTN_IMPLEMENTATION:
            _detach(m)


def _own_configs(model: nn.Module) -> None:
    """Give `model` its own copies of the config objects its modules hold (shared references stay
    shared), so that switching it to QGFD leaves the config it was built from as it was."""
    memo: dict = {}
    for m in model.modules():
        for key, value in list(m.__dict__.items()):
            if isinstance(value, PreTrainedConfig):
                m.__dict__[key] = copy.deepcopy(value, memo)


# ----------------------------------------------------------------------------------------
# Module-level QGFD: attention layers that compute attention themselves
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Hooks on transformers: every route that chooses an attention implementation, and saving
# ----------------------------------------------------------------------------------------

_ORIGINALS: Dict[str, Callable] = {}


def _post_init(self, *args, **kwargs):
    """`PreTrainedModel.post_init`, then QGFD on the layers whose config says "qgfd" (so a model built
    from such a config, or loaded with `attn_implementation="qgfd"`, is ready before its first call)."""
    result = _ORIGINALS["post_init"](self, *args, **kwargs)
    _sync(self)
    return result


def _requests_qgfd(value) -> bool:
    if isinstance(value, dict):
        return any(_requests_qgfd(v) for v in value.values())
    return value == ATTN_IMPLEMENTATION


def _set_attn_implementation(self, attn_implementation, *args, **kwargs):
    """`PreTrainedModel.set_attn_implementation`, then QGFD state put on (or taken off) the layers;
    on a refusal the model is left exactly as it was."""
    snapshot = _snapshot(self)
    try:
        result = _ORIGINALS["set_attn_implementation"](self, attn_implementation, *args, **kwargs)
        if (
            isinstance(attn_implementation, str)
            and type(self).__module__ in _MODULE_LEVEL_MODULES
            and not type(self)._can_set_attn_implementation()
        ):
            # transformers cannot switch these models (it only warns); QGFD's module-level layers can.
            implementation = self.get_correct_attn_implementation(attn_implementation)
            for config in _config_tree(self):
                config._attn_implementation_internal = implementation
        _sync(self, requested=attn_implementation == ATTN_IMPLEMENTATION)
    except Exception:
        _restore(self, snapshot)
        raise
    return result


def _get_correct_attn_implementation(self, requested_attention, *args, **kwargs):
    """`PreTrainedModel.get_correct_attn_implementation` (every route that chooses an implementation
    passes here, before the layers are built), refusing "qgfd" for a model class whose attention
    does not go through the interface at all (BLOOM, Falcon, GPT-Neo, ...: some of them would fail
    building their layers with a bare `KeyError: 'qgfd'`)."""
    if (
        requested_attention == ATTN_IMPLEMENTATION
        and not type(self)._can_set_attn_implementation()
        and type(self).__module__ not in _MODULE_LEVEL_MODULES
    ):
        module = sys.modules.get(type(self).__module__)
        try:
            classes = sorted(set(re.findall(r"^class (\w*Attention\w*)\(nn\.Module\):", inspect.getsource(module), re.M)))
        except (OSError, TypeError):
            classes = []
        raise ValueError(
            f"QGFD cannot be put into {_architecture(self)}: its attention layer class(es) {classes or '(unknown)'} "
            "compute attention themselves instead of calling transformers' AttentionInterface, so "
            f"attn_implementation='qgfd' would leave them plain. {SUPPORTED}"
        )
    if requested_attention == ATTN_IMPLEMENTATION and type(self).__module__ in _MODULE_LEVEL_PREPARE:
        _MODULE_LEVEL_PREPARE[type(self).__module__](sys.modules[type(self).__module__])
    return _ORIGINALS["get_correct_attn_implementation"](self, requested_attention, *args, **kwargs)


def _initialize_weights(self, module, *args, **kwargs):
    """A learnable alpha missing from a checkpoint starts at `settings.alpha`, like a fresh one."""
    if isinstance(module, QGFDAlpha):
        if module.logit is not None and not getattr(module.logit, "_is_hf_initialized", False):
            module.reset_parameters()
        return None
    return _ORIGINALS["_initialize_weights"](self, module, *args, **kwargs)


def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
    """`GenerationMixin._prepare_cache_for_generation`, then the cache `generate()` will use made
    ready for QGFD (`prepare_qgfd_cache`) before any compiled call: a compiled prefill
    (`prefill_chunk_size` with `compile_config`) then traces without a graph break."""
    result = _ORIGINALS["_prepare_cache_for_generation"](self, generation_config, model_kwargs, *args, **kwargs)
    cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
    if cache is not None:
        prepare_qgfd_cache(self, cache)  # nothing to do in a model that does not run QGFD
    return result


def install_transformers_hooks() -> None:
    """Wrap the few transformers methods that decide or save an attention implementation.

    `PreTrainedModel.post_init` and `set_attn_implementation` put QGFD on the layers (or refuse)
    whenever a model is built or switched with "qgfd"; `PreTrainedConfig.to_dict` writes the
    attention implementation of QGFD configs to `config.json`; `PreTrainedConfig.output_attentions`
    accepts True for "qgfd"; `PreTrainedModel._initialize_weights` starts a learnable alpha that a
    checkpoint lacks at its initial value; `GenerationMixin._prepare_cache_for_generation` readies the
    cache of a QGFD model's `generate()` for compiled calls (`prepare_qgfd_cache`). For models and configs that never use "qgfd" each
    wrapper only calls the original. Runs when this file is imported (`qgfd_hf` imports it as soon as
    `transformers.modeling_utils` is imported, see `registration_qgfd`; the config half,
    `patching_config_qgfd`, already when transformers' configs are); calling it again is harmless
    (the originals are wrapped once, by the most recent import)."""
    targets = {
        "post_init": _post_init,
        "set_attn_implementation": _set_attn_implementation,
        "_initialize_weights": _initialize_weights,
        "get_correct_attn_implementation": _get_correct_attn_implementation,
    }
    install_config_hooks()  # to_dict, output_attentions (patching_config_qgfd: installed earlier where only configs are imported)
    saved = getattr(PreTrainedModel, "_qgfd_originals", None)
    if saved is None:
        # The config originals are kept here too, as qgfd_hf 0.1.0's copies of this file expect.
        saved = {name: getattr(PreTrainedModel, name) for name in targets}
        saved.update(config_originals())
        PreTrainedModel._qgfd_originals = saved
    _ORIGINALS.update(saved)
    for name, fn in targets.items():
        setattr(PreTrainedModel, name, functools.wraps(saved[name])(fn))
    generation_saved = getattr(GenerationMixin, "_qgfd_originals", None)
    if generation_saved is None:
        generation_saved = {"_prepare_cache_for_generation": GenerationMixin._prepare_cache_for_generation}
        GenerationMixin._qgfd_originals = generation_saved
    _ORIGINALS.update(generation_saved)
    GenerationMixin._prepare_cache_for_generation = functools.wraps(generation_saved["_prepare_cache_for_generation"])(
        _prepare_cache_for_generation
    )


# ----------------------------------------------------------------------------------------
# The attention function registered as "qgfd"
# ----------------------------------------------------------------------------------------


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
    if "_qgfd_role" not in module.__dict__:
        _lazy_attach(module)
    ctx = module.__dict__.get("_qgfd_ctx")
    role = "cross" if (ctx is not None and ctx.is_cross) else module.__dict__["_qgfd_role"]
    output_attentions = kwargs.get("output_attentions")
    if output_attentions is None:  # not passed: the config decides (`config.output_attentions = True`)
        output_attentions = getattr(module.config, "output_attentions", False)
    output_attentions = bool(output_attentions)
    alpha_module = module._modules.get("qgfd_alpha")
    settings = alpha_module.settings if alpha_module is not None else None
    cache = ctx.cache() if (ctx is not None and ctx.cache is not None) else None
    layer = _self_attention_cache_layer(module, cache) if role == "self" else None

    # 1. Plain attention: cross-attention, or nothing to diffuse. Exactly transformers' sdpa.
    alpha = alpha_module() if (role == "self" and settings.steps > 0) else 0.0
    if _is_zero(alpha):
        if layer is not None and isinstance(layer, QGFDDynamicLayer):
            layer._qgfd_propagated = None  # nothing was propagated for these tokens
        elif layer is not None and isinstance(layer, _SHADOWED):
            layer._qgfd_shadows = None
        if not output_attentions:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    # 2. The inputs as the kernel takes them: all heads, one mask with T5's bias, the causal flag.
    value_cached = value  # the cache's own tensor: identifies the cache layer's current state
    if not query.dtype == key.dtype == value.dtype:  # e.g. Llama's rotary embedding under autocast keeps q, k in fp32
        device = query.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    n_rep = getattr(module, "num_key_value_groups", 1)
    if isinstance(n_rep, int) and n_rep > 1:
        key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)  # (B, H, Lk, Dh)
    B, H, Lq, _ = query.shape
    Lk = key.shape[2]
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # As in transformers' sdpa: a mask, when there is one, carries the whole pattern.
    is_causal = bool(is_causal) and attention_mask is None and Lq > 1
    mask = _scores_mask(attention_mask, kwargs.get("position_bias"), key)
    if is_causal and mask is None and Lq != Lk:
        # transformers leaves out the mask of a static cache's prefill (queries 0..Lq-1 of an Lk buffer) and
        # means torch's is_causal, aligned top-left; the kernel aligns is_causal bottom-right, so spell it out.
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).tril()
        is_causal = False

    if _is_zero(alpha):  # plain attention with its weights (output_attentions=True)
        # graph="keys" only lets the checks accept Lq != Lk (cross-attention); steps=0 uses no graph.
        out, weights = qgfd_attention_reference(
            query, key, value, steps=0, graph="keys", attn_mask=mask, is_causal=is_causal, scale=scaling,
            dropout_p=dropout, return_weights=True,
        )
        return out.transpose(1, 2).contiguous(), weights

    # 3. The cache: propagated values of the earlier tokens, where this call continues a sequence.
    kernel_kwargs = dict(
        steps=settings.steps, alpha=alpha, graph=settings.graph, mix=settings.mix, attn_mask=mask,
        is_causal=is_causal, scale=scaling, key_temperature=settings.key_temperature,
        detach_graph=settings.detach_graph, dropout_p=dropout,
    )
    past = None
    store = None
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
    orphan = ctx is None and role == "self" and _is_causal_layer(module)  # first call, before the pre-hook existed

    # 4. QGFD: the fast kernel; the weights, when asked for, materialised from the graph rows (kept
    #    on the cache layer next to the propagated values, so cached steps return them too).
    want_propagated = store is not None or orphan
    past = past or None  # () for shadowed layers: their values come through `extend`
    # The model's own activations: the kernel does not read them (no device sync per layer).
    result = qgfd_attention(query, key, value, past_propagated=past, return_propagated=want_propagated, _read_values=False,
                            **kernel_kwargs)
    out, propagated = result if want_propagated else (result, None)
    weights = graph_rows = None
    if output_attentions:
        past_graph = store._qgfd_propagated.graph if (past is not None and store is not None) else None
        if "extend" in kernel_kwargs and Lk > Lq:
            logger.warning_once(
                "QGFD attention weights of cached decoding steps are kept for dynamic caches only (this call uses "
                f"{type(layer).__name__}); returning None for them."
            )
        elif past is not None and past_graph is None:
            logger.warning_once(
                "QGFD attention weights of a cached decoding step need the graph rows of the earlier tokens, which "
                "are kept only when the first call asked for the weights too; returning None for them."
            )
        else:
            weight_kwargs = {k: v for k, v in kernel_kwargs.items() if k not in ("detach_graph", "dropout_p", "extend", "query_positions")}
            weights, graph_rows = qgfd_attention_weights(query, key, past_graph=past_graph, **weight_kwargs)
            weights = weights.to(value.dtype)

    if store is not None:
        store._qgfd_propagated = _Propagated(tuple(propagated), Lk, graph_rows)
    elif orphan:
        module.__dict__["_qgfd_orphan"] = (weakref.ref(value_cached), _Propagated(tuple(propagated), Lk, graph_rows))
    return out.transpose(1, 2).contiguous(), weights  # (B, Lq, H, Dh)


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


def _is_causal_layer(module: nn.Module) -> bool:
    """Whether a self-attention layer is causal (a decoder's), i.e. whether its values get cached."""
    return bool(getattr(module, "is_causal", False))


def register_qgfd_attention() -> None:
    """Register `"qgfd"` with transformers' `AttentionInterface` and `AttentionMaskInterface`.

    Runs when `qgfd_hf` is imported; calling it again is harmless. The mask function is
    transformers' `sdpa_mask` (bool masks, True = may attend, skipped when nothing is masked),
    which is the form `qgfd_attention` takes without any loss.

    Example:

    ```python
    >>> from transformers import AttentionInterface
    >>> from qgfd_hf.patching_qgfd import register_qgfd_attention
    >>> register_qgfd_attention()
    >>> "qgfd" in AttentionInterface().valid_keys()
    True

    ```
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, qgfd_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    install_transformers_hooks()


register_qgfd_attention()


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def _attached_layers(model: nn.Module) -> List[nn.Module]:
    """The attention layers of `model` on which QGFD is running now."""
    return [
        m for m in model.modules()
        if _is_attached(m) and getattr(_layer_config(m), "_attn_implementation", None) == ATTN_IMPLEMENTATION
    ]


def is_qgfd_patched(model: nn.Module) -> bool:
    """Whether QGFD is running in `model`: at least one of its attention layers computes QGFD.

    True after `patch_model`, `set_attn_implementation("qgfd")`, for a model built or loaded with
    `attn_implementation="qgfd"` (every route prepares the layers, or refuses); False again after
    `unpatch_model` or a switch to another implementation.

    Example:

    ```python
    >>> import qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                            intermediate_size=64, image_size=16, patch_size=8))
    >>> qgfd_hf.is_qgfd_patched(model), qgfd_hf.is_qgfd_patched(qgfd_hf.patch_model(model))
    (False, True)

    ```
    """
    return bool(_attached_layers(model))


def get_qgfd_settings(model: PreTrainedModel) -> QGFDSettings:
    """The QGFD settings a model runs with (those of its QGFD layers); for a model not running QGFD,
    `config.qgfd`, or the defaults where it has none."""
    for m in _attached_layers(model):
        alpha = m._modules.get("qgfd_alpha")
        if alpha is not None:
            return alpha.settings
    return _settings_from_config(model.config)


def patch_model(model: PreTrainedModel, **qgfd_settings) -> PreTrainedModel:
    """Switch the self-attention of a transformers model to QGFD, in place; returns the model.

    Args:
        model (`PreTrainedModel`): any model whose attention layers use transformers'
            `AttentionInterface` (T5, ViT, Wav2Vec2, Llama, BERT, ...).
        **qgfd_settings: `QGFDSettings` fields: `steps`, `alpha`, `graph`, `mix`,
            `key_temperature`, `detach_graph`, `learnable_alpha`, `alpha_max`, `warmup_steps`.
            Unset fields come from `config.qgfd` when the config has one, else from the defaults.

    What changes:
        - the model gets its own copies of its config objects (the config it was built from is
          left as it was), then `set_attn_implementation("qgfd")` with `config.qgfd` set: every
          self-attention layer gets QGFD, every config the settings; `save_pretrained` writes both
          `attn_implementation` and `qgfd` to `config.json`;
        - each self-attention layer gets a `qgfd_alpha` submodule (`QGFDAlpha`): with a fixed alpha
          it has no parameters or buffers, so `state_dict` keys do not change; with
          `learnable_alpha=True` it adds ONE parameter per layer, `<layer>.qgfd_alpha.logit` [H];
        - each attention layer gets a forward pre-hook that tells the attention which cache the
          call uses (cached decoding keeps the propagated values on the cache).

    Patching a patched model again is a no-op when no settings, or the same settings, are given,
    and a `ValueError` when the settings differ (call `unpatch_model` first).

    Raises:
        ValueError: invalid settings; a model with attention layers QGFD cannot reach (attention
            that bypasses the interface, logit soft-capping) or none at all (the message names the
            architecture, the layer classes and what is supported); a model patched with other settings.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import T5Config, T5ForConditionalGeneration
    >>> config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100,
    ...                   decoder_start_token_id=0)
    >>> model = qgfd_hf.patch_model(T5ForConditionalGeneration(config).eval(), steps=2, alpha=0.3)
    >>> model.config.qgfd["steps"], model.config._attn_implementation, config._attn_implementation
    (2, 'qgfd', 'sdpa')
    >>> model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False).shape
    torch.Size([1, 4])

    ```
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"`patch_model` takes a transformers PreTrainedModel, got {type(model).__name__}. {SUPPORTED}")
    base = dict(getattr(model.config, "qgfd", None) or {})
    settings = QGFDSettings.from_dict(base, **qgfd_settings)  # ValueError on anything invalid

    if is_qgfd_patched(model):
        current = get_qgfd_settings(model)
        if qgfd_settings and settings != current:
            raise ValueError(
                f"{type(model).__name__} already uses QGFD with {current.to_dict()}; call "
                f"`qgfd_hf.unpatch_model(model)` before patching it with {settings.to_dict()}."
            )
        if model.config._attn_implementation == ATTN_IMPLEMENTATION:
            return model

    previous = model.config._attn_implementation
    _own_configs(model)
    for config in _config_tree(model):
        config.__dict__.pop("qgfd", None)
    model.config.qgfd = settings.to_dict()
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)  # QGFD on every layer, or a ValueError
    except ValueError:
        model.config.__dict__.pop("qgfd", None)
        if base:
            model.config.qgfd = base
        raise
    if previous != ATTN_IMPLEMENTATION:
        model.__dict__["_qgfd_previous_attn_implementation"] = previous
    layers = _attached_layers(model)
    n_self = sum(m.__dict__["_qgfd_role"] == "self" for m in layers)
    logger.info(
        f"QGFD on {n_self} self-attention layer(s) of {type(model).__name__} "
        f"({len(layers) - n_self} cross-attention layer(s) left plain), settings {settings.to_dict()}."
    )
    return model


def unpatch_model(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `patch_model` (or `set_attn_implementation("qgfd")`), in place; returns the model.

    The attention implementation goes back to the one the model had before `patch_model` (a
    model loaded as QGFD goes back to transformers' default, `sdpa`), the `qgfd_alpha`
    submodules (and any learnable alpha parameters), hooks and `config.qgfd` are removed: the
    model computes exactly what it computed before, and saves as a plain model.

    Raises:
        ValueError: the model does not use QGFD.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                            intermediate_size=64, image_size=16, patch_size=8)).eval()
    >>> x = torch.randn(1, 3, 16, 16)
    >>> before = model(x).last_hidden_state
    >>> model = qgfd_hf.unpatch_model(qgfd_hf.patch_model(model, alpha=0.9))
    >>> torch.equal(model(x).last_hidden_state, before)
    True

    ```
    """
    if not isinstance(model, PreTrainedModel) or not is_qgfd_patched(model):
        raise ValueError(f"{type(model).__name__} does not use QGFD attention; there is nothing to unpatch.")
    previous = model.__dict__.pop("_qgfd_previous_attn_implementation", None)
    if previous in (None, ATTN_IMPLEMENTATION):
        previous = model.get_correct_attn_implementation(None)  # transformers' default: sdpa, else eager
    model.set_attn_implementation(previous)
    for config in _config_tree(model):
        config.__dict__.pop("qgfd", None)
    return model


def from_pretrained_qgfd(model_class, pretrained_model_name_or_path, qgfd: Optional[dict] = None, **kwargs) -> PreTrainedModel:
    """Load any checkpoint as a QGFD model, in one call: a Hub model or folder with the settings
    `qgfd`, or a folder saved from a QGFD model with its own settings and learned alphas.

    The settings apply to every attention layer of the model, nested configs included (T5's stacks,
    CLIP's and SigLIP's text and vision towers). Settings that a checkpoint lacks (a learnable alpha
    on a plain checkpoint) start at their initial values.

    Args:
        model_class: a transformers model class (or an `AutoModel...` class).
        pretrained_model_name_or_path (`str`): the checkpoint folder (or Hub id).
        qgfd (`dict`, *optional*): `QGFDSettings` fields; unset ones come from the checkpoint's
            `config.qgfd`, else from the defaults.
        **kwargs: passed to `from_pretrained` (`config=` is copied, not changed).

    Raises:
        ValueError: invalid settings, or an architecture QGFD cannot be put into (as `patch_model`).

    Example:

    ```python
    >>> import tempfile, torch, qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> plain = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...     intermediate_size=64, image_size=16, patch_size=8))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     plain.save_pretrained(d)
    ...     model = qgfd_hf.from_pretrained_qgfd(ViTModel, d, qgfd={"steps": 2, "learnable_alpha": True})
    >>> qgfd_hf.get_qgfd_settings(model).steps, sorted(k for k in model.state_dict() if "qgfd" in k)
    (2, ['layers.0.attention.qgfd_alpha.logit'])

    ```
    """
    from transformers import AutoConfig

    if "attn_implementation" in kwargs and kwargs["attn_implementation"] != ATTN_IMPLEMENTATION:
        raise ValueError(
            f"`from_pretrained_qgfd` loads with attn_implementation='qgfd', got {kwargs['attn_implementation']!r}."
        )
    kwargs.pop("attn_implementation", None)
    config = kwargs.pop("config", None)
    if config is None:
        config_kwargs = {
            k: kwargs[k]
            for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder", "trust_remote_code")
            if k in kwargs
        }
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **config_kwargs)
    else:
        config = copy.deepcopy(config)
    base = config.__dict__.get("qgfd") or {}
    if not isinstance(base, dict):
        raise ValueError(f"`config.qgfd` must be a dict of QGFD settings, got {type(base).__name__}.")
    if qgfd is not None and not isinstance(qgfd, dict):
        raise ValueError(f"`qgfd` must be a dict of QGFD settings, got {type(qgfd).__name__}.")
    settings = QGFDSettings.from_dict(base, **(qgfd or {}))
    for sub in _configs_of(config):
        sub.__dict__.pop("qgfd", None)
    config.qgfd = settings.to_dict()
    return model_class.from_pretrained(
        pretrained_model_name_or_path, config=config, attn_implementation=ATTN_IMPLEMENTATION, **kwargs
    )


def _configs_of(config: PreTrainedConfig) -> List[PreTrainedConfig]:
    out = [config]
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if isinstance(sub, PreTrainedConfig):
            out += _configs_of(sub)
    return out
