# coding=utf-8
"""QGFD attention: the kernel (its materialised reference: `attention_qgfd_reference`; the modules around them: `modeling_qgfd_attention`).

QGFD (Query Graph Flow Diffusion) attention diffuses the softmax attention distribution
``p0`` over a row-stochastic graph ``P`` on the keys:

    p = p0 * sum_k c_k P^k,   k = 0..T,   sum_k c_k = 1

(`shared/design/qgfd-math.md`). The fast path never forms ``p``: it propagates the values
instead, ``W_0 = V``, ``W_{k+1} = P W_k``, ``V~ = sum_k c_k W_k``, ``O = p0 V~``, and each
``P W_k`` is itself an attention product, so QGFD costs T + 1 calls of
``torch.nn.functional.scaled_dot_product_attention`` and O(L D) memory.

Shapes: ``B`` batch, ``H`` heads, ``Lq`` query length, ``Lk`` key length, ``D`` head width
of queries and keys, ``Dv`` head width of values, ``T`` = ``steps``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

GRAPHS = ("attention", "keys")
MIXES = ("seed", "recurrent")

AlphaLike = Union[float, torch.Tensor]


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------


@dataclass
class QGFDSettings:
    """Every QGFD attention hyperparameter, validated in one place.

    Args:
        steps (`int`, defaults to 1): T, the highest power of the graph P (0 = plain attention).
        alpha (`float`, defaults to 0.5): diffusion strength in [0, 1] (0 = plain attention).
        graph (`str`, defaults to `"attention"`): `"attention"` (P = p0, the seed's rule) or
            `"keys"` (P = softmax of key cosine similarities / `key_temperature`).
        mix (`str`, defaults to `"seed"`): `"seed"` (p = (1-a) p0 + a p0 P^T) or
            `"recurrent"` (p_{t+1} = (1-a) p0 + a p_t P).
        key_temperature (`float`, defaults to 1.0): tau of the key graph, > 0.
        detach_graph (`bool`, defaults to `False`): treat P as a constant in backward.
        learnable_alpha (`bool`, defaults to `False`): one learnable alpha per head, kept in
            [0, alpha_max] by a sigmoid, initialised at `alpha`.
        alpha_max (`float`, defaults to 1.0): upper bound of a learnable alpha, in (0, 1].
        warmup_steps (`int`, defaults to 0): in training, alpha is scaled by
            min(1, step / warmup_steps); the step is set from outside with `set_qgfd_step`.
    """

    steps: int = 1
    alpha: float = 0.5
    graph: str = "attention"
    mix: str = "seed"
    key_temperature: float = 1.0
    detach_graph: bool = False
    learnable_alpha: bool = False
    alpha_max: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self):
        _check_steps(self.steps)
        if isinstance(self.alpha, torch.Tensor):
            # The settings go into config.json; a tensor there fails only at save time.
            raise ValueError(
                f"`alpha` in the settings must be a float in [0, 1], got a tensor {self.alpha.detach().cpu().tolist()}; "
                "for one alpha per head use `learnable_alpha=True` (a tensor alpha is for `qgfd_attention` itself)."
            )
        _check_alpha(self.alpha)
        _check_choice("graph", self.graph, GRAPHS)
        _check_choice("mix", self.mix, MIXES)
        _check_temperature(self.key_temperature)
        # A model may run in any dtype, and attention scores are float32 in all but float64: the key
        # graph's 1/key_temperature must be finite there (the kernel checks each call's dtype too).
        if 1.0 / self.key_temperature > torch.finfo(torch.float32).max:
            raise ValueError(
                f"`key_temperature` must be >= {1.0 / torch.finfo(torch.float32).max:.3g} (1/key_temperature overflows float32, "
                f"in which attention scores are computed), got {self.key_temperature!r}."
            )
        for name in ("detach_graph", "learnable_alpha"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        if isinstance(self.alpha_max, bool) or not isinstance(self.alpha_max, numbers.Real) or not 0 < self.alpha_max <= 1:
            raise ValueError(f"`alpha_max` must be a float in (0, 1], got {self.alpha_max!r}.")
        if self.learnable_alpha and self.alpha > self.alpha_max:
            raise ValueError(
                f"`alpha`={self.alpha!r} is above `alpha_max`={self.alpha_max!r}; a learnable alpha "
                "starts at `alpha` and stays in [0, alpha_max]."
            )
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, numbers.Integral) or self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an int >= 0, got {self.warmup_steps!r}.")
        # NumPy scalars become Python numbers: the settings are saved as JSON in configs.
        self.steps, self.alpha, self.warmup_steps = int(self.steps), float(self.alpha), int(self.warmup_steps)
        self.key_temperature, self.alpha_max = float(self.key_temperature), float(self.alpha_max)

    @classmethod
    def from_dict(cls, d: Optional[dict] = None, **overrides) -> "QGFDSettings":
        d = dict(d or {})
        d.update(overrides)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"Unknown QGFD setting(s) {unknown}; allowed: {sorted(names)}.")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------

# Checks of shapes, dtypes and settings read only Python metadata and always run. Checks of
# tensor *values* (NaN / inf, timestep ranges, 0/1 masks, token ids, a tensor alpha in [0, 1])
# read the tensor on the host: on a GPU each one is a device synchronisation that stalls the
# launch queue. They run by default, so a direct call with bad data gets its ValueError; the
# trainer and the samplers check their data where it enters and run their loops without them,
# and torch.compile never traces them (a host read would break the graph).
_VALUE_CHECKS = True


def value_checks_enabled() -> bool:
    """Whether the checks that read tensor values run (see `value_checks`)."""
    return _VALUE_CHECKS and not torch.compiler.is_compiling()


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn the checks that read tensor values on or off inside a block.

    Those checks (NaN / inf inputs, timesteps in range, 0/1 masks, token ids in the vocabulary, a
    tensor alpha in [0, 1]) each read a tensor on the host, a device synchronisation on a GPU. They
    are on by default; `QGFDTrainer` and `sample_loop` turn them off for their steps, and so can
    a training loop of your own, once its data is known to be good. They are always off while
    torch.compile traces.

    Example:
        >>> with value_checks(False):
        ...     value_checks_enabled()
        False
        >>> value_checks_enabled()
        True
    """
    global _VALUE_CHECKS
    if not isinstance(enabled, bool):
        raise ValueError(f"`enabled` must be True or False, got {enabled!r}.")
    before, _VALUE_CHECKS = _VALUE_CHECKS, enabled
    try:
        yield
    finally:
        _VALUE_CHECKS = before


# Each step is one more attention pass (T + 1 in all), and the mixing weights of step k fall as
# alpha^k: past a few dozen steps nothing changes but the time. A far larger T is a typo (10**7 ran
# for hours), refused here.
MAX_STEPS = 256


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 0 <= steps <= MAX_STEPS:
        raise ValueError(f"`steps` must be an int >= 0, got {steps!r}; at most {MAX_STEPS} (each step is one more attention pass).")


def _check_alpha(alpha):
    if isinstance(alpha, torch.Tensor):
        if not alpha.is_floating_point():
            raise ValueError(f"`alpha` as a tensor must be floating point, got dtype {alpha.dtype}.")
        if alpha.dim() > 1:
            raise ValueError(f"`alpha` as a tensor must be a scalar or one value per head [H], got shape {tuple(alpha.shape)}.")
        in_range = getattr(alpha, "_qgfd_in_range", False)  # a QGFDAlpha's output
        if value_checks_enabled() and not in_range and bool(((alpha < 0) | (alpha > 1) | torch.isnan(alpha)).any()):
            raise ValueError(f"`alpha` must lie in [0, 1], got {alpha.detach().cpu().tolist()}.")
        return
    # numbers.Real: Python and NumPy scalars alike (np.float32(0.5) is a valid alpha).
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be a float in [0, 1], got {alpha!r}.")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}.")


def _check_temperature(tau):
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not tau > 0 or math.isinf(tau):
        raise ValueError(f"`key_temperature` must be a finite float > 0, got {tau!r}.")


def _check_call(steps, alpha, graph, mix, key_temperature, dropout_p, scale=None, **flags):
    """The per-call settings shared by the fast path and the reference; `flags` are bool arguments."""
    _check_steps(steps)
    _check_alpha(alpha)
    _check_choice("graph", graph, GRAPHS)
    _check_choice("mix", mix, MIXES)
    _check_temperature(key_temperature)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"`dropout_p` must be in [0, 1), got {dropout_p!r}.")
    # A symbolic float (torch.compile with dynamic shapes) is a valid scale; it cannot be read here.
    if scale is not None and not isinstance(scale, (torch.SymFloat, torch.SymInt)):
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"`scale` must be a finite float or None (1/sqrt(D)), got {scale!r}.")
    for name, flag in flags.items():
        # As SDPA's is_causal: a string such as "no" would otherwise read as True.
        if not isinstance(flag, bool):
            raise ValueError(f"`{name}` must be True or False, got {flag!r}.")


def _check_scales_fit(scale, key_temperature, graph, diffuse, dtype):
    """The score scales must be finite where the scores are computed (float32 for every dtype but
    float64): 1/key_temperature of a tau below ~3e-39 is inf there, and so are the graph's scores."""
    limit = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).max
    if diffuse and graph == "keys" and not 1.0 / key_temperature <= limit:
        raise ValueError(
            f"`key_temperature`={key_temperature!r} is too small for {dtype} inputs: the key graph's scores 1/key_temperature "
            f"would overflow ({limit:.3g} at most); allowed: key_temperature >= {1.0 / limit:.3g}."
        )
    if scale is not None and not isinstance(scale, (torch.SymFloat, torch.SymInt)) and abs(scale) > limit:
        raise ValueError(f"`scale`={scale!r} overflows the scores of {dtype} inputs; allowed: |scale| <= {limit:.3g}.")


def _check_inputs(query, key, value, attn_mask, graph, has_past, diffuse=True):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {t.dtype}.")
        if t.dim() != 4:
            raise ValueError(f"`{name}` must have shape [B, H, L, D], got shape {tuple(t.shape)}.")
    if not (query.dtype == key.dtype == value.dtype):
        raise ValueError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}.")
    B, H, Lq, D = query.shape
    if key.shape[:2] != (B, H) or value.shape[:2] != (B, H):
        raise ValueError(
            "query, key and value must share batch size and number of heads [B, H, ., .], got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    if key.shape[-1] != D:
        raise ValueError(f"query and key must share their head width D, got {D} and {key.shape[-1]}.")
    if key.shape[2] != value.shape[2]:
        raise ValueError(f"key and value must have the same length, got {key.shape[2]} and {value.shape[2]}.")
    Lk = key.shape[2]
    # The length rules are QGFD's own: with steps == 0 (plain attention, e.g. cross-attention
    # in QGFDMultiheadAttention) any Lq, Lk is fine, as for SDPA.
    if diffuse and graph == "attention" and Lq != Lk and not has_past:
        raise ValueError(
            f'graph="attention" uses P = p0 and needs self-attention (Lq == Lk), got Lq={Lq}, Lk={Lk}. '
            'Use graph="keys", plain attention for cross-attention, or `past_propagated` for cached decoding.'
        )
    if (diffuse or has_past) and Lq > Lk:
        raise ValueError(f"QGFD needs Lq <= Lk, got Lq={Lq}, Lk={Lk}.")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise ValueError(f"`attn_mask` must be a tensor or None, got {type(attn_mask).__name__}.")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise ValueError(f"`attn_mask` must be bool (True = may attend) or an additive float mask, got {attn_mask.dtype}.")
        if attn_mask.is_floating_point() and attn_mask.dtype not in (query.dtype, torch.float32):
            # SDPA's own rule; the message names the argument instead of failing inside the call.
            raise ValueError(f"`attn_mask` as a float mask must be float32 or the query's dtype ({query.dtype}), got {attn_mask.dtype}.")
        try:
            shape = torch.broadcast_shapes(attn_mask.shape, (B, H, Lq, Lk))
        except RuntimeError:
            shape = None
        if shape != (B, H, Lq, Lk):
            raise ValueError(
                f"`attn_mask` of shape {tuple(attn_mask.shape)} does not broadcast to [B, H, Lq, Lk] = {[B, H, Lq, Lk]}."
            )


def _finite_count_if_bad(t: torch.Tensor) -> int:
    """How many entries of `t` are NaN or inf (0: none). A value check: it reads the tensor.

    The common case costs one reduction: a sum is finite unless a summand is NaN or inf (or the
    sum overflows, which the exact count below then clears)."""
    t = t.detach()
    total = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    if math.isfinite(float(total)):
        return 0
    return int((~torch.isfinite(t)).sum())


def _check_graph_finite(query, key, attn_mask, graph):
    """The inputs that build the graph P must be finite (a value check: it reads the tensors).

    A non-finite entry leaves a row of P undefined: with graph="keys" the key's norm is inf or NaN,
    so its unit key Kn_j is NaN and so is its similarity to every key; with graph="attention"
    (P = p0) a query row whose scores hold +inf or NaN is NaN. Propagation W_{k+1} = P W_k then
    carries that row to every query that attends it, far past the outputs plain attention makes
    non-finite on the same inputs (only the rows that touch the bad entry). Values are not
    checked: they enter P W_k linearly and spread no further than in plain attention.
    """
    if not value_checks_enabled():
        return
    named = (("query", query), ("key", key)) if graph == "attention" else (("key", key),)
    for name, t in named:
        bad = _finite_count_if_bad(t)
        if bad:
            raise ValueError(
                f"`{name}` holds {bad} NaN or inf value(s); allowed: finite values. QGFD's graph={graph!r} is built from "
                f"the {'queries and keys' if graph == 'attention' else 'keys'}, and a non-finite {name} spoils every output "
                "that its graph row reaches (`value_checks(False)` skips this check)."
            )
    if graph == "attention" and attn_mask is not None and attn_mask.is_floating_point() and attn_mask.numel():
        if not float(attn_mask.detach().amax()) < math.inf:  # amax is +inf or NaN (NaN propagates): look closer
            bad = int((torch.isnan(attn_mask) | torch.isposinf(attn_mask)).sum())
            raise ValueError(
                f"`attn_mask` holds {bad} NaN or +inf value(s); allowed: finite values and -inf (masked). "
                'With graph="attention" the mask shapes the graph P = p0 too, and such a row spoils every output it reaches.'
            )


# ----------------------------------------------------------------------------------------
# The mix coefficients c_k
# ----------------------------------------------------------------------------------------


def mix_coefficients(alpha: AlphaLike, steps: int, mix: str) -> list:
    """c_0..c_T of `p = p0 * sum_k c_k P^k` (floats, or tensors shaped like `alpha`).

    seed:      c_0 = 1 - alpha, c_T = alpha (all others 0)
    recurrent: c_k = (1 - alpha) alpha^k for k < T, c_T = alpha^T
    """
    if steps == 0:
        return [alpha * 0 + 1.0]
    if mix == "seed":
        return [1 - alpha] + [alpha * 0] * (steps - 1) + [alpha]
    return [(1 - alpha) * alpha**k for k in range(steps)] + [alpha**steps]


def _alpha_view(alpha: AlphaLike, H: int):
    """A per-head tensor alpha [H] becomes [1, H, 1, 1]; floats and scalars pass through."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
        if alpha.shape[0] != H:
            raise ValueError(f"`alpha` has {alpha.shape[0]} values but the input has H={H} heads.")
        return alpha.view(1, H, 1, 1)
    return alpha


def _is_zero(alpha) -> bool:
    return not isinstance(alpha, torch.Tensor) and alpha == 0


# ----------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------


def _causal_pattern(Lq: int, Lk: int, device) -> torch.Tensor:
    """Bottom-right aligned causal pattern [Lq, Lk]: query i is token Lk - Lq + i."""
    return torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril(Lk - Lq)


def allowed_pattern(attn_mask: torch.Tensor) -> torch.Tensor:
    """Where a mask allows attention: True stays True; a float entry is allowed unless it is
    -inf or at or below half its dtype's minimum (how transformers writes masked positions)."""
    if attn_mask.dtype == torch.bool:
        return attn_mask
    return attn_mask > torch.finfo(attn_mask.dtype).min / 2


def _p0_mask(attn_mask, is_causal, Lq, Lk, device):
    """The mask for p0 as SDPA takes it: (mask or None, is_causal flag for SDPA)."""
    if not is_causal:
        return attn_mask, False
    if attn_mask is None and Lq == Lk:
        return None, True  # SDPA's own causal path: nothing of size L x L is allocated
    causal = _causal_pattern(Lq, Lk, device)
    if attn_mask is None:
        return causal, False
    if attn_mask.dtype == torch.bool:
        return attn_mask & causal, False
    return attn_mask.masked_fill(~causal, float("-inf")), False


def _row_has_keys(mask: Optional[torch.Tensor], is_float_bias: bool) -> Optional[torch.Tensor]:
    """[..., Lrows, 1] bool: rows of P with at least one allowed key (None: all rows do).

    SDPA returns 0 for a row with no allowed key; QGFD gives such a row a self-loop
    (P[j, j] = 1), so that propagation never loses mass."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask.any(-1, keepdim=True)
    if is_float_bias:
        return (mask != float("-inf")).any(-1, keepdim=True)
    return allowed_pattern(mask).any(-1, keepdim=True)


def _check_query_positions(query_positions, extend, Lq, Lk, read_values):
    if extend is None:
        raise ValueError("`query_positions` places the queries in a cache that `extend` keeps; pass `extend` too (or neither).")
    if not isinstance(query_positions, torch.Tensor) or query_positions.dtype not in (torch.int32, torch.int64) or query_positions.dim() != 1:
        got = f"dtype {query_positions.dtype}, shape {tuple(query_positions.shape)}" if isinstance(query_positions, torch.Tensor) else type(query_positions).__name__
        raise ValueError(f"`query_positions` must be an integer tensor [Lq] of positions among the Lk keys, got {got}.")
    if query_positions.shape[0] != Lq:
        raise ValueError(f"`query_positions` must hold one position per query (Lq={Lq}), got {query_positions.shape[0]}.")
    if read_values and Lq and (int(query_positions.min()) < 0 or int(query_positions.max()) >= Lk):
        raise ValueError(f"`query_positions` must lie in [0, Lk={Lk}), got {query_positions.tolist()}.")


# ----------------------------------------------------------------------------------------
# The fast path
# ----------------------------------------------------------------------------------------


def qgfd_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    steps: int = QGFDSettings.steps,
    alpha: AlphaLike = QGFDSettings.alpha,
    graph: str = QGFDSettings.graph,
    mix: str = QGFDSettings.mix,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    key_temperature: float = QGFDSettings.key_temperature,
    detach_graph: bool = QGFDSettings.detach_graph,
    dropout_p: float = 0.0,
    past_propagated: Optional[Sequence[torch.Tensor]] = None,
    return_propagated: bool = False,
    extend: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None,
    query_positions: Optional[torch.Tensor] = None,
    _read_values: bool = True,
):
    """QGFD attention by value propagation: T + 1 fused attention calls, no L x L tensor.

    Args:
        query (`torch.Tensor` of shape `[B, H, Lq, D]`), key (`[B, H, Lk, D]`), value (`[B, H, Lk, Dv]`).
        steps (`int`): T >= 0. alpha (`float` in [0, 1], or a tensor of shape `[]` or `[H]`).
        graph (`"attention"` | `"keys"`), mix (`"seed"` | `"recurrent"`): see `QGFDSettings`.
        attn_mask (`torch.Tensor`, *optional*): bool (True = may attend) or additive float
            (e.g. T5's position bias), broadcastable to `[B, H, Lq, Lk]`.
        is_causal (`bool`): causal attention, aligned bottom-right (query i is token Lk - Lq + i).
        scale (`float`, *optional*): score scale, 1/sqrt(D) by default.
        key_temperature (`float`): tau of the key graph.
        detach_graph (`bool`): no gradient through P (gradients still reach Q, K, V through p0
            and V through the propagation).
        dropout_p (`float`): dropout on p0 in the last call (pass 0.0 in eval, as for SDPA).
        past_propagated (sequence of T tensors `[B, H, Lk - Lq, Dv]`, *optional*): the
            propagated values W_1..W_T of earlier tokens, for cached decoding; the queries are
            then the last Lq of the Lk tokens.
        return_propagated (`bool`): also return W_1..W_T for all Lk tokens (to cache them).
        extend (callable, *optional*): cached decoding with a cache of any layout (static buffers,
            sliding windows): `extend(k, w_rows)` stores W_k of the Lq query tokens (`[B, H, Lq, Dv]`)
            and returns W_k over all Lk keys, laid out as the keys are. Replaces `past_propagated`.
        query_positions (`torch.LongTensor` `[Lq]`, *optional*): with `extend`, where the query
            tokens sit among the Lk keys (default: the last Lq). Masks must then be explicit
            (`attn_mask`), as `is_causal` aligns queries bottom-right.

    Returns:
        `torch.Tensor` `[B, H, Lq, Dv]`, or `(output, propagated)` with `return_propagated`.
    """
    # `_read_values=False` (the patched transformers layers): q, k, v are the model's own activations,
    # not a caller's data, and the checks that read them (finite graph inputs, `query_positions` in
    # range) would be a device synchronisation in every layer of a training step (tests/test_syncs.py).
    read_values = _read_values and value_checks_enabled()
    _check_call(steps, alpha, graph, mix, key_temperature, dropout_p, scale, is_causal=is_causal, detach_graph=detach_graph,
                return_propagated=return_propagated)
    has_past = past_propagated is not None or extend is not None
    if past_propagated is not None and extend is not None:
        raise ValueError("Pass `past_propagated` or `extend`, not both.")
    if extend is not None and not callable(extend):
        raise ValueError(f"`extend` must be a callable extend(k, w_rows) or None, got {type(extend).__name__}.")
    _check_inputs(query, key, value, attn_mask, graph, has_past, diffuse=steps > 0)
    _check_scales_fit(scale, key_temperature, graph, steps > 0, query.dtype)
    B, H, Lq, D = query.shape
    Lk = key.shape[2]
    Lpast = Lk - Lq
    if past_propagated is not None:
        if isinstance(past_propagated, torch.Tensor) or not isinstance(past_propagated, Sequence):
            raise ValueError(f"`past_propagated` must be a sequence of `steps`={steps} tensors, got {type(past_propagated).__name__}.")
        past_propagated = tuple(past_propagated)
        if len(past_propagated) != steps:
            raise ValueError(f"`past_propagated` must hold `steps`={steps} tensors, got {len(past_propagated)}.")
        want = (B, H, Lpast, value.shape[-1])
        for w in past_propagated:
            if not isinstance(w, torch.Tensor):
                raise ValueError(f"`past_propagated` must hold tensors, got a {type(w).__name__}.")
            if tuple(w.shape) != want:
                raise ValueError(f"`past_propagated` tensors must have shape {list(want)}, got {list(w.shape)}.")
    if query_positions is not None:
        _check_query_positions(query_positions, extend, Lq, Lk, read_values)

    if attn_mask is not None and attn_mask.dim() < 4:
        # Broadcasting prepends the missing dims; the graph's masks index dims -2 and -1.
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))

    p0_mask, p0_causal = _p0_mask(attn_mask, is_causal, Lq, Lk, query.device)

    def sdpa(q, k, v, mask, causal, s, p=0.0):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=s)

    # 0. Plain attention when there is nothing to diffuse: exactly softmax attention.
    if steps == 0 or _is_zero(alpha):
        out = sdpa(query, key, value, p0_mask, p0_causal, scale, dropout_p)
        if return_propagated:
            return out, tuple(value for _ in range(steps))
        return out

    if read_values:
        _check_graph_finite(query, key, attn_mask, graph)

    # 1. The graph P, as the arguments of an attention call whose rows are the graph's rows.
    #    Rows are the last `rows` tokens: the queries (self-attention, with or without cache),
    #    or all Lk keys (the key graph over cross-attention-shaped inputs).
    if graph == "attention":
        g_q, g_k, g_scale = query, key, scale
        g_mask, g_causal = p0_mask, p0_causal
        if detach_graph and isinstance(g_mask, torch.Tensor) and g_mask.is_floating_point():
            g_mask = g_mask.detach()  # T5's learned position bias enters P too
        has_keys = _row_has_keys(g_mask, is_float_bias=True)
    else:
        # (B, H, Lk, D), unit rows; normalised in float32: F.normalize's eps (1e-12) is 0 in float16,
        # so an all-zero key (padding) would give 0/0 = NaN.
        k_n = F.normalize(key.float(), dim=-1).to(key.dtype) if key.dtype in (torch.float16, torch.bfloat16) else F.normalize(key, dim=-1)
        g_scale = 1.0 / key_temperature
        if Lq == Lk or has_past:
            g_q = k_n[:, :, Lpast:] if query_positions is None else k_n.index_select(2, query_positions)
            g_k = k_n
            g_mask = None if attn_mask is None else allowed_pattern(attn_mask)
            g_mask, g_causal = _p0_mask(g_mask, is_causal, Lq, Lk, query.device)
        else:  # graph over all keys: padded keys masked as columns, causal over the keys
            g_q, g_k = k_n, k_n
            g_mask = None
            if attn_mask is not None:
                g_mask = allowed_pattern(attn_mask).any(-2, keepdim=True)  # (B?, H?, 1, Lk)
            g_mask, g_causal = _p0_mask(g_mask, is_causal, Lk, Lk, query.device)
        has_keys = _row_has_keys(g_mask, is_float_bias=False)
    if detach_graph:
        g_q, g_k = g_q.detach(), g_k.detach()
    rows = g_q.shape[2]

    # 2. Propagate: W_{k+1}[rows] = P[rows, :] W_k, accumulating V~ = sum_k c_k W_k in float32.
    alpha_v = _alpha_view(alpha, H)
    coeffs = mix_coefficients(alpha_v, steps, mix)
    acc_dtype = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    w_all = value  # W_0 = V over all Lk tokens, (B, H, Lk, Dv)
    v_tilde = coeffs[0] * value.to(acc_dtype)
    propagated = []
    for k in range(1, steps + 1):
        w_rows = sdpa(g_q, g_k, w_all, g_mask, g_causal, g_scale)  # (B, H, rows, Dv)
        if has_keys is not None:
            own = w_all[:, :, Lk - rows :] if query_positions is None else w_all.index_select(2, query_positions)
            w_rows = torch.where(has_keys, w_rows, own)
        if extend is not None:
            w_all = extend(k, w_rows)
        elif past_propagated is not None:
            w_all = torch.cat([past_propagated[k - 1], w_rows], dim=2)
        else:
            w_all = w_rows
        propagated.append(w_all)
        c_k = coeffs[k]
        if not _is_zero(c_k):
            v_tilde = v_tilde + c_k * w_all.to(acc_dtype)

    # 3. O = p0 V~: the last attention call, with dropout on p0.
    out = sdpa(query, key, v_tilde.to(value.dtype), p0_mask, p0_causal, scale, dropout_p)
    if return_propagated:
        return out, tuple(propagated)
    return out
