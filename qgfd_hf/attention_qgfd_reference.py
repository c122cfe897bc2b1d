# coding=utf-8
"""QGFD attention with `p` materialised: the slow reference of `attention_qgfd.qgfd_attention`.

`qgfd_attention_reference` forms p0, the graph P and p = sum_k c_k p0 P^k as [L, L] matrices
(O(T L^3) compute, O(L^2) memory): the plain statement of the rule that the tests compare the fast
kernel to, and the weights of patched transformers layers with `output_attentions=True`
(`QGFDMultiheadAttention` gets its weights from the kernel itself, so no diffusion model file
imports this one).
`qgfd_attention_weights` gives the same weights for cached decoding, from the graph rows of the
earlier tokens. Same shapes and arguments as `qgfd_attention`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .attention_qgfd import (
    AlphaLike,
    QGFDSettings,
    _alpha_view,
    _causal_pattern,
    _check_call,
    _check_graph_finite,
    _check_inputs,
    _check_scales_fit,
    _is_zero,
    allowed_pattern,
    mix_coefficients,
)


def _default_scale(D: int) -> float:
    """1/sqrt(D); with D = 0 every score is 0 whatever the scale (SDPA: uniform attention)."""
    return 1.0 / math.sqrt(D) if D else 1.0


def _safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim; a row that is all -inf gives zeros, as SDPA does (and so does a
    row with no keys at all, Lk = 0)."""
    if scores.shape[-1] == 0:
        return scores
    row_max = scores.amax(-1, keepdim=True)
    empty = torch.isneginf(row_max)
    e = torch.exp(scores - torch.where(empty, torch.zeros_like(row_max), row_max))
    return e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)


def _with_self_loops(P: torch.Tensor) -> torch.Tensor:
    """Rows of P that are all zero (no allowed key) become the identity row."""
    Lk = P.shape[-1]
    eye = torch.eye(Lk, dtype=P.dtype, device=P.device)
    empty = P.sum(-1, keepdim=True) == 0
    return torch.where(empty, eye, P)


def qgfd_attention_reference(
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
    return_weights: bool = False,
):
    """QGFD attention with p materialised: the slow, plain reference the tests compare to.

    Same arguments as `qgfd_attention` (no cache). Returns `[B, H, Lq, Dv]`, or
    `(output, p)` with `p` `[B, H, Lq, Lk]` when `return_weights=True`.
    """
    _check_call(steps, alpha, graph, mix, key_temperature, dropout_p, scale, is_causal=is_causal, detach_graph=detach_graph,
                return_weights=return_weights)
    _check_inputs(query, key, value, attn_mask, graph, has_past=False, diffuse=steps > 0)
    _check_scales_fit(scale, key_temperature, graph, steps > 0, query.dtype)
    B, H, Lq, D = query.shape
    Lk = key.shape[2]
    scale = _default_scale(D) if scale is None else scale
    compute_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    q, k, v = (t.to(compute_dtype) for t in (query, key, value))

    # 1. Base attention p0 = softmax(scale Q K^T + Bias), (B, H, Lq, Lk).
    causal = _causal_pattern(Lq, Lk, query.device) if is_causal else None
    scores = scale * q @ k.transpose(-1, -2)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(compute_dtype)
    if causal is not None:
        scores = scores.masked_fill(~causal, float("-inf"))
    p0 = _safe_softmax(scores)
    # Dropout acts on p0, as in the fast path's last call: p = drop(p0) sum_k c_k P^k.
    start = p0
    if dropout_p > 0:
        start = p0 * (torch.rand_like(p0) >= dropout_p) / (1 - dropout_p)

    if steps == 0 or _is_zero(alpha):
        p = start
    else:
        _check_graph_finite(query, key, attn_mask, graph)
        # 2. The graph P, (B, H, Lk, Lk).
        if graph == "attention":
            P = p0
        else:
            k_n = F.normalize(k, dim=-1)
            g_scores = (k_n @ k_n.transpose(-1, -2)) / key_temperature
            if Lq == Lk:
                allowed = None if attn_mask is None else allowed_pattern(attn_mask)
            else:
                allowed = None if attn_mask is None else allowed_pattern(attn_mask).any(-2, keepdim=True)
            if allowed is not None:
                g_scores = g_scores.masked_fill(~allowed, float("-inf"))
            if is_causal:
                g_scores = g_scores.masked_fill(~_causal_pattern(Lk, Lk, query.device), float("-inf"))
            P = _safe_softmax(g_scores)
        P = _with_self_loops(P)
        if detach_graph:
            P = P.detach()
        # 3. p = sum_k c_k p0 P^k, one power at a time.
        coeffs = mix_coefficients(_alpha_view(alpha, H), steps, mix)
        term = start
        p = coeffs[0] * start
        for c_k in coeffs[1:]:
            term = term @ P
            p = p + c_k * term
    out = (p @ v).to(value.dtype)
    if return_weights:
        return out, p.to(value.dtype)
    return out


def qgfd_attention_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    steps: int = QGFDSettings.steps,
    alpha: AlphaLike = QGFDSettings.alpha,
    graph: str = QGFDSettings.graph,
    mix: str = QGFDSettings.mix,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    scale: Optional[float] = None,
    key_temperature: float = QGFDSettings.key_temperature,
    past_graph: Optional[torch.Tensor] = None,
):
    """QGFD's weights `p` [B, H, Lq, Lk] for self-attention whose queries are the last Lq of Lk
    tokens, and the graph rows P [B, H, Lk, Lk] of all Lk tokens (to keep for the next call).

    Cached decoding cannot recompute the graph rows of earlier tokens (`graph="attention"` needs
    their queries and masks), so they come as `past_graph` [B, H, Lk - Lq, Lk - Lq] (None when
    Lq == Lk); the rows of the new tokens are computed here from their own mask, so the result
    equals `qgfd_attention_reference`'s weights for the whole sequence (rows Lk - Lq .. Lk - 1).
    Computed in float32 for half inputs; O(T Lq Lk^2) compute, O(Lk^2) memory.
    """
    _check_call(steps, alpha, graph, mix, key_temperature, 0.0, scale, is_causal=is_causal)
    B, H, Lq, D = query.shape
    Lk = key.shape[2]
    Lpast = Lk - Lq
    if Lpast < 0 or (Lpast > 0) != (past_graph is not None):
        raise ValueError(f"`past_graph` must hold the graph rows of the {Lpast} earlier tokens (None when Lq == Lk).")
    scale = _default_scale(D) if scale is None else scale
    compute_dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    q, k = query.to(compute_dtype), key.to(compute_dtype)
    causal = _causal_pattern(Lq, Lk, query.device) if is_causal else None

    # 1. p0 of the new queries, (B, H, Lq, Lk).
    scores = scale * q @ k.transpose(-1, -2)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask.to(compute_dtype)
    if causal is not None:
        scores = scores.masked_fill(~causal, float("-inf"))
    p0 = _safe_softmax(scores)

    # 2. The graph rows of the new tokens: P[rows] = p0 (graph="attention"), or the key graph with
    #    the rows' own allowed pattern; a row without allowed keys is a self-loop.
    if graph == "attention":
        rows = p0
    else:
        k_n = F.normalize(k, dim=-1)
        g = (k_n[:, :, Lpast:] @ k_n.transpose(-1, -2)) / key_temperature
        if attn_mask is not None:
            g = g.masked_fill(~allowed_pattern(attn_mask), float("-inf"))
        if causal is not None:
            g = g.masked_fill(~causal, float("-inf"))
        rows = _safe_softmax(g)
    eye = torch.eye(Lk, dtype=rows.dtype, device=rows.device)[Lpast:]  # (Lq, Lk): row i is token Lpast + i
    rows = torch.where(rows.sum(-1, keepdim=True) == 0, eye, rows.expand(B, H, Lq, Lk))
    if past_graph is not None:
        past = F.pad(past_graph.to(rows.dtype).expand(B, H, Lpast, Lpast), (0, Lq))  # earlier rows: no later keys
        P = torch.cat([past, rows], dim=2)
    else:
        P = rows

    # 3. p = sum_k c_k p0 P^k.
    coeffs = mix_coefficients(_alpha_view(alpha, H), steps, mix)
    term, p = p0, coeffs[0] * p0
    for c_k in coeffs[1:]:
        term = term @ P
        p = p + c_k * term
    return p.to(query.dtype), P
