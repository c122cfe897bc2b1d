# coding=utf-8
"""Which layers of a transformers model QGFD can reach, and putting QGFD on (or off) them.

- discovery: a layer is reachable when its class's `forward` calls
  `ALL_ATTENTION_FUNCTIONS.get_interface(` (and it has a `config`), or when QGFD takes it over at
  module level (`patching_modules_qgfd`); `find_attention_modules` lists them with their role;
- roles: "self" (gets QGFD) or "cross" (stays plain attention), from the module alone
  (`_static_role`); the pre-hook refines it per call;
- refusals: a config that asks for "qgfd" where QGFD cannot run (attention that bypasses the
  interface, logit soft-capping, no attention layer, only cross-attention) raises a `ValueError`
  naming the architecture, the layer class and what is supported (`_sync`);
- attach / detach: a reachable layer gets its role, a `qgfd_alpha` submodule (self-attention) and
  the forward pre-hook of `patching_cache_qgfd`; `_sync` makes every layer match its config's
  attention implementation, with the settings of the outermost config that carries them.
"""

from __future__ import annotations

import copy
import inspect
import types
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch.nn as nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.utils import logging

from .attention_qgfd import QGFDSettings
from .modeling_qgfd_attention import QGFDAlpha
from .patching_cache_qgfd import _has_hook, _is_attached, _qgfd_pre_hook, _remove_hook
from .patching_forward_qgfd import ATTN_IMPLEMENTATION
from .patching_modules_qgfd import _module_level

logger = logging.get_logger(__name__)

SUPPORTED = (
    "QGFD can be put into transformers models whose attention layers call "
    "`ALL_ATTENTION_FUNCTIONS.get_interface(...)` (transformers' AttentionInterface) and do not use logit "
    "soft-capping: T5 / mT5 / UMT5 (encoder and decoder self-attention; cross-attention stays plain), ViT, "
    "DeiT, DINOv2, CLIP, SigLIP, Wav2Vec2, HuBERT, WavLM and GPT-Neo (module-level), Llama-style decoders (Llama, Mistral, Qwen2/3, Gemma, "
    "Gemma3, Phi3, ...), GPT-2, GPT-NeoX, GPTBigCode, OPT, BERT-style encoders, Bart-style encoder-decoders. "
    "Architectures whose attention bypasses the interface are refused; which ones do depends on the "
    "transformers release (docs/patching.md lists what was measured)."
)


_USES_INTERFACE: Dict[type, bool] = {}


def _uses_attention_interface(module: nn.Module) -> bool:
    """True for a module whose `forward` dispatches through `ALL_ATTENTION_FUNCTIONS.get_interface`."""
    return _class_uses_interface(type(module)) and hasattr(module, "config")


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


def _attached_layers(model: nn.Module) -> List[nn.Module]:
    """The attention layers of `model` on which QGFD is running now."""
    return [
        m for m in model.modules()
        if _is_attached(m) and getattr(_layer_config(m), "_attn_implementation", None) == ATTN_IMPLEMENTATION
    ]
