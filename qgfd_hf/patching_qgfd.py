# coding=utf-8
"""Put QGFD attention into pretrained transformers models: T5, ViT, Wav2Vec2, Llama-style decoders, BERT, ...

transformers 5 routes attention through `AttentionInterface`: an attention layer calls
`ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)`. Importing `qgfd_hf`
registers `"qgfd"` there (with `sdpa_mask` as its mask function, so padding and causal masks
arrive as bool masks), and `patch_model` switches a model to it. Nothing in the model's weights
or module tree is replaced, so parameter names and `state_dict` keys stay the same.

What each attention layer gets:

- self-attention (T5 encoder and decoder, ViT, Wav2Vec2, Llama, BERT, ...): QGFD, computed by
  `qgfd_attention` (T5's relative position bias and scale of 1 kept, exact causality in decoders);
- cross-attention (T5's `EncDecAttention`, Bart-style decoder attention over the encoder):
  plain attention, exactly as transformers' `sdpa` computes it.

How things travel:

- settings: `config.qgfd` (a dict of `QGFDSettings`), written on the model's config and on every
  sub-model config that has patched layers; `config.attn_implementation = "qgfd"` is written too, so
  `save_pretrained` -> `from_pretrained` brings the model back with QGFD (once `qgfd_hf` is imported).
  A model switched with `set_attn_implementation("qgfd")` or `from_pretrained(...,
  attn_implementation="qgfd")` reads `config.qgfd`, or the defaults, on its first forward.
- cached decoding: the propagated values W_1..W_T of earlier tokens are kept on the cache layer
  (`DynamicCache`, or the self-attention half of T5's `EncoderDecoderCache`) next to its keys and
  values, so they live and die with the cache of one `generate()` call and follow its beam
  reorders, crops and batch edits. A forward pre-hook on each attention layer tells the attention
  function which cache the current call uses.

Shapes: `B` batch, `H` heads, `Lq` query length, `Lk` key length, `Dh` head width.
"""

from __future__ import annotations

import inspect
import json
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.core_model_loading import revert_weight_conversion
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.utils import logging

from .attention_qgfd import QGFDAlpha, QGFDSettings, qgfd_attention, qgfd_attention_reference

logger = logging.get_logger(__name__)

ATTN_IMPLEMENTATION = "qgfd"

SUPPORTED = (
    "QGFD can be put into transformers models whose attention layers call "
    "`ALL_ATTENTION_FUNCTIONS.get_interface(...)` (transformers' AttentionInterface): T5 / mT5 "
    "(encoder and decoder self-attention; cross-attention stays plain), ViT, Wav2Vec2, Llama-style "
    "decoders (Llama, Mistral, Qwen2, ...), BERT-style encoders, Bart-style encoder-decoders."
)

# Call keywords under which attention layers receive their cache, and the encoder states of cross-attention.
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")
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
    """W_1..W_T ([B, H, length, Dh] each) of the `length` tokens a cache layer holds."""

    values: Tuple[torch.Tensor, ...]
    length: int


class QGFDDynamicLayer(DynamicLayer):
    """A `DynamicLayer` that also keeps QGFD's propagated values, and applies to them every edit it
    applies to its keys and values (beam reorder, crop, batch repeat / select, reset).

    QGFD turns a cache's `DynamicLayer` into this class (by `__class__` assignment, nothing is
    copied) the first time it stores propagated values on it."""

    _qgfd_propagated: Optional[_Propagated] = None

    def _qgfd_apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        p = self._qgfd_propagated
        if p is not None:
            values = tuple(fn(w) for w in p.values)
            self._qgfd_propagated = _Propagated(values, values[0].shape[2] if values else p.length)

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
        length = self.get_seq_length()
        self._qgfd_apply(lambda w: w[:, :, :length])

    def reset(self):
        super().reset()
        self._qgfd_propagated = None


def _qgfd_layer(layer) -> Optional[QGFDDynamicLayer]:
    """`layer` as a `QGFDDynamicLayer`; None for layers whose keys are not simply the whole sequence
    so far (sliding-window, static, quantized: QGFD's cache does not support them)."""
    if type(layer) is DynamicLayer:
        layer.__class__ = QGFDDynamicLayer
    return layer if isinstance(layer, QGFDDynamicLayer) else None


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


def _qgfd_pre_hook(module: nn.Module, args, kwargs):
    """Forward pre-hook on attention layers: record the call's cache and cross-attention flag."""
    cache = None
    for name in _CACHE_KWARGS:
        if kwargs.get(name) is not None:
            cache = kwargs[name]
            break
    is_cross = any(kwargs.get(name) is not None for name in _CROSS_KWARGS)
    module.__dict__["_qgfd_ctx"] = _CallContext(weakref.ref(cache) if cache is not None else None, is_cross)
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
    """Give an attention layer what QGFD needs: its role, its alpha (self-attention) and the pre-hook."""
    module.__dict__["_qgfd_role"] = role
    if role == "self" and "qgfd_alpha" not in module._modules:
        alpha = QGFDAlpha(settings, _num_heads(module, required=settings.learnable_alpha))
        param = next(module.parameters(), None)
        if param is not None:
            alpha.to(device=param.device)
        alpha.train(module.training)
        module.qgfd_alpha = alpha
    if not _has_hook(module):
        module.register_forward_pre_hook(_qgfd_pre_hook, with_kwargs=True)


def _detach(module: nn.Module) -> None:
    if "qgfd_alpha" in module._modules:
        del module._modules["qgfd_alpha"]
    for name in ("_qgfd_role", "_qgfd_ctx", "_qgfd_orphan"):
        module.__dict__.pop(name, None)
    _remove_hook(module)


def _lazy_attach(module: nn.Module) -> None:
    """First QGFD call of a layer that `patch_model` did not prepare (a model switched with
    `set_attn_implementation("qgfd")` or loaded with `attn_implementation="qgfd"`)."""
    role = _static_role(module)
    settings = _settings_from_config(module.config)
    if role == "self" and settings.learnable_alpha:
        raise ValueError(
            "`config.qgfd` asks for a learnable alpha, whose parameters exist only once `qgfd_hf.patch_model` "
            "has run: load this checkpoint with `qgfd_hf.from_pretrained_qgfd(model_class, path)` (which also "
            "restores the learned alphas), or call `qgfd_hf.patch_model(model)` before the first forward."
        )
    _attach(module, settings, role)
    if getattr(module.config, "attn_implementation", None) != ATTN_IMPLEMENTATION:
        module.config.attn_implementation = ATTN_IMPLEMENTATION  # keep it QGFD through a later save_pretrained


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
    output_attentions = bool(kwargs.get("output_attentions", False))
    alpha_module = module._modules.get("qgfd_alpha")
    settings = alpha_module.settings if alpha_module is not None else None
    cache = ctx.cache() if (ctx is not None and ctx.cache is not None) else None
    layer = _self_attention_cache_layer(module, cache) if role == "self" else None

    # 1. Plain attention: cross-attention, or nothing to diffuse. Exactly transformers' sdpa.
    alpha = alpha_module() if (role == "self" and settings.steps > 0) else 0.0
    if _is_zero(alpha):
        if layer is not None and isinstance(layer, QGFDDynamicLayer):
            layer._qgfd_propagated = None  # nothing was propagated for these tokens
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
    if layer is not None and getattr(layer, "values", None) is value_cached:
        store = _qgfd_layer(layer)
        p = getattr(store, "_qgfd_propagated", None)
        if Lk > Lq and p is not None and p.length == Lk - Lq and p.values[0].shape[0] == B:
            past = p.values
    if Lk > Lq and past is None:
        # Self-attention whose queries are the last Lq of Lk tokens: a cache supplied the earlier ones.
        raise ValueError(
            f"QGFD cached decoding in {type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) needs "
            f"the propagated values of the {Lk - Lq} cached tokens, and the cache "
            f"({type(layer).__name__ if layer is not None else 'not seen'}) does not hold them. QGFD keeps them on "
            "DynamicCache layers filled by a QGFD model; static, sliding-window and quantized caches are not "
            "supported (pass use_cache=False, or cache_implementation='dynamic')."
        )
    orphan = ctx is None and role == "self" and _is_causal_layer(module)  # first call, before the pre-hook existed

    # 4. QGFD: the fast kernel, or the materialised reference when the weights are asked for.
    want_propagated = store is not None or orphan
    weights = None
    if output_attentions and past is None:
        out, weights = qgfd_attention_reference(query, key, value, return_weights=True, **kernel_kwargs)
        propagated = None
        if want_propagated:
            _, propagated = qgfd_attention(query, key, value, return_propagated=True, **kernel_kwargs)
    else:
        if output_attentions:
            logger.warning_once(
                "QGFD attention weights are not available in cached decoding steps (the reference path needs "
                "every earlier query); returning None for them."
            )
        result = qgfd_attention(
            query, key, value, past_propagated=past, return_propagated=want_propagated, **kernel_kwargs
        )
        out, propagated = result if want_propagated else (result, None)

    if store is not None:
        store._qgfd_propagated = _Propagated(tuple(propagated), Lk)
    elif orphan:
        module.__dict__["_qgfd_orphan"] = (weakref.ref(value_cached), _Propagated(tuple(propagated), Lk))
    return out.transpose(1, 2).contiguous(), weights  # (B, Lq, H, Dh)


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


register_qgfd_attention()


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------


def _pretrained_configs(model: PreTrainedModel, modules) -> list:
    """model.config, the configs of its sub-models, and the configs of the given attention layers (unique)."""
    configs, seen = [], set()
    candidates = [model.config] + [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
    candidates += [m.config for _, m, _ in modules]
    for c in candidates:
        if id(c) not in seen:
            seen.add(id(c))
            configs.append(c)
    return configs


def is_qgfd_patched(model: nn.Module) -> bool:
    """Whether `model` (or one of its sub-models) runs its attention through QGFD.

    True after `patch_model`, after `set_attn_implementation("qgfd")`, and for a model loaded
    from a checkpoint saved while patched.

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
    return any(
        getattr(m.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION
        for m in model.modules()
        if isinstance(m, PreTrainedModel)
    )


def get_qgfd_settings(model: PreTrainedModel) -> QGFDSettings:
    """The QGFD settings a model runs with: `config.qgfd`, or the defaults where it has none."""
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
        - the attention implementation becomes `"qgfd"` (also written to the config as
          `attn_implementation`, and the settings as `config.qgfd`, so `save_pretrained` keeps them);
        - each self-attention layer gets a `qgfd_alpha` submodule (`QGFDAlpha`): with a fixed alpha
          it has no parameters or buffers, so `state_dict` keys do not change; with
          `learnable_alpha=True` it adds ONE parameter per layer, `<layer>.qgfd_alpha.logit` [H]
          (reload such a checkpoint with `from_pretrained_qgfd`);
        - each attention layer gets a forward pre-hook that tells the attention which cache the
          call uses (cached decoding keeps the propagated values on the cache).

    Patching a patched model again is a no-op when no settings, or the same settings, are given,
    and a `ValueError` when the settings differ (call `unpatch_model` first).

    Raises:
        ValueError: invalid settings; a model without attention layers that QGFD can reach (the
            message lists what is supported); a model patched with other settings.

    Example:

    ```python
    >>> import torch, qgfd_hf
    >>> from transformers import T5Config, T5ForConditionalGeneration
    >>> config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100,
    ...                   decoder_start_token_id=0)
    >>> model = qgfd_hf.patch_model(T5ForConditionalGeneration(config).eval(), steps=2, alpha=0.3)
    >>> model.config.qgfd["steps"], model.config._attn_implementation
    (2, 'qgfd')
    >>> model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False).shape
    torch.Size([1, 4])

    ```
    """
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"`patch_model` takes a transformers PreTrainedModel, got {type(model).__name__}. {SUPPORTED}")
    modules = find_attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention layer that QGFD can be put into. {SUPPORTED}")
    if not any(role == "self" for _, _, role in modules):
        raise ValueError(f"{type(model).__name__} has only cross-attention layers; QGFD needs self-attention. {SUPPORTED}")

    base = dict(getattr(model.config, "qgfd", None) or {})
    settings = QGFDSettings.from_dict(base, **qgfd_settings)  # ValueError on anything invalid

    if is_qgfd_patched(model):
        current = get_qgfd_settings(model)
        if qgfd_settings and settings != current:
            raise ValueError(
                f"{type(model).__name__} already uses QGFD with {current.to_dict()}; call "
                f"`qgfd_hf.unpatch_model(model)` before patching it with {settings.to_dict()}."
            )
        settings = current
    else:
        model.__dict__["_qgfd_previous_attn_implementation"] = model.config._attn_implementation

    configs = _pretrained_configs(model, modules)
    for config in configs:
        config.qgfd = settings.to_dict()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    missed = [name for name, m, _ in modules if m.config._attn_implementation != ATTN_IMPLEMENTATION]
    if missed:
        previous = model.__dict__.pop("_qgfd_previous_attn_implementation", None)
        if previous is not None and previous != model.config._attn_implementation:
            model.set_attn_implementation(previous)
        for config in configs:
            config.__dict__.pop("qgfd", None)
        raise ValueError(
            f"transformers did not switch {missed} to the attention implementation {ATTN_IMPLEMENTATION!r}. {SUPPORTED}"
        )
    for config in configs:
        config.attn_implementation = ATTN_IMPLEMENTATION  # written to config.json: from_pretrained comes back as QGFD
    for _, module, role in modules:
        _attach(module, settings, role)
    n_self = sum(role == "self" for _, _, role in modules)
    logger.info(
        f"QGFD on {n_self} self-attention layer(s) of {type(model).__name__} "
        f"({len(modules) - n_self} cross-attention layer(s) left plain), settings {settings.to_dict()}."
    )
    return model


def unpatch_model(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `patch_model` (or `set_attn_implementation("qgfd")`), in place; returns the model.

    The attention implementation goes back to the one the model had before `patch_model` (a
    model loaded as QGFD goes back to transformers' default, `sdpa`), the `qgfd_alpha`
    submodules (and any learnable alpha parameters), hooks, `config.qgfd` and
    `config.attn_implementation` are removed: the model computes exactly what it computed before.

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
    modules = find_attention_modules(model)
    previous = model.__dict__.pop("_qgfd_previous_attn_implementation", None)
    if previous in (None, ATTN_IMPLEMENTATION):
        previous = model.get_correct_attn_implementation(None)  # transformers' default: sdpa, else eager
    model.set_attn_implementation(previous)
    for config in _pretrained_configs(model, modules):
        for name in ("qgfd", "attn_implementation"):
            if name in config.__dict__:
                delattr(config, name)
    for _, module, _ in modules:
        _detach(module)
    return model


def from_pretrained_qgfd(model_class, pretrained_model_name_or_path, **kwargs) -> PreTrainedModel:
    """Load a checkpoint saved from a patched model, with its learned alphas.

    `model_class.from_pretrained(path)` alone already gives back a QGFD model with fixed alpha
    (the config carries `attn_implementation="qgfd"` and `config.qgfd`). A learnable alpha adds
    parameters that plain `from_pretrained` does not know (it drops them, listing them as
    UNEXPECTED in its load report); this function loads the model (that report still appears),
    patches it from `config.qgfd` (which also writes `attn_implementation` back on the config, so
    a later `save_pretrained` stays QGFD), then loads those parameters.

    Args:
        model_class: a transformers model class (or an `AutoModel...` class).
        pretrained_model_name_or_path (`str`): the checkpoint folder (or Hub id).
        **kwargs: passed to `from_pretrained`.

    Example:

    ```python
    >>> import tempfile, torch, qgfd_hf
    >>> from transformers import ViTConfig, ViTModel
    >>> model = qgfd_hf.patch_model(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...     intermediate_size=64, image_size=16, patch_size=8)), learnable_alpha=True, alpha=0.3)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     model.save_pretrained(d)
    ...     loaded = qgfd_hf.from_pretrained_qgfd(ViTModel, d)
    >>> sorted(k for k in loaded.state_dict() if "qgfd" in k)
    ['layers.0.attention.qgfd_alpha.logit']

    ```
    """
    model = model_class.from_pretrained(pretrained_model_name_or_path, **kwargs)
    if getattr(model.config, "qgfd", None) is None:
        raise ValueError(f"{pretrained_model_name_or_path} was not saved from a QGFD model (its config has no `qgfd`).")
    model = patch_model(model)
    wanted = {k: v for k, v in model.state_dict().items() if ".qgfd_alpha." in k}
    if wanted:
        # The name each parameter has in the file: save_pretrained may rename keys (ViT: layers -> encoder.layer).
        saved = {}
        for name, tensor in wanted.items():
            renamed = revert_weight_conversion(model, {name: tensor})
            saved[next(iter(renamed)) if len(renamed) == 1 else name] = name
        found = _read_checkpoint_tensors(pretrained_model_name_or_path, set(saved), kwargs)
        missing = sorted(saved[k] for k in saved if k not in found)
        if missing:
            raise ValueError(f"{pretrained_model_name_or_path} has no saved value for {missing}.")
        model.load_state_dict({saved[k]: v for k, v in found.items()}, strict=False)
    return model


def _read_checkpoint_tensors(path, names, kwargs) -> Dict[str, torch.Tensor]:
    """The tensors `names` from a checkpoint's safetensors file(s)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if index is not None:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted({weight_map[n] for n in names if n in weight_map})
    else:
        files = ["model.safetensors"]
    state = {}
    for filename in files:
        resolved = cached_file(path, filename, **hub_kwargs)
        with safe_open(resolved, framework="pt") as f:
            for n in names & set(f.keys()):
                state[n] = f.get_tensor(n)
    return state
