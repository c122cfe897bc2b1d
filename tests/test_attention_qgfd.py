"""Tests for `qgfd_hf/attention_qgfd.py`.

The six checks at the end of `shared/design/qgfd-math.md` come first (numbered as there),
then gradients, precision, masks, alpha (learnable, warm-up, checkpointing), the seed's
module, and input validation. Everything is tiny (L <= 12, D <= 8) and runs on a CPU.

Shapes: B batch, H heads, L length, D head width.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from qgfd_hf.attention_qgfd import GRAPHS, MIXES, QGFDSettings, qgfd_attention
from qgfd_hf.attention_qgfd_reference import qgfd_attention_reference
from qgfd_hf.modeling_qgfd_attention import QGFDAlpha, QGFDMultiheadAttention, set_qgfd_step

MASKS = ("none", "padding", "bias", "causal", "bias+causal")
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def make_qkv(B=2, H=2, L=6, D=4, Lk=None, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    Lk = L if Lk is None else Lk
    shapes = ((B, H, L, D), (B, H, Lk, D), (B, H, Lk, D))
    return tuple(torch.randn(s, generator=g, dtype=dtype).requires_grad_(requires_grad) for s in shapes)


def make_mask(kind, B=2, H=2, L=6, dtype=torch.float64, seed=1):
    """(attn_mask, is_causal) for one of MASKS, in the kernel's convention (True = may attend)."""
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    if kind == "padding":
        m = torch.ones(B, 1, 1, L, dtype=torch.bool)  # (B, 1, 1, Lk): key padding
        m[-1, ..., -2:] = False
        return m, False
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(B, H, L, L, generator=g, dtype=dtype)  # T5-like position bias
    bias[-1, ..., -1] = torch.finfo(dtype).min  # a padded key, written the way transformers does
    return bias, kind == "bias+causal"


def softmax_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Plain materialised softmax attention (independent of the code under test)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    if is_causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    p = torch.softmax(s, -1)
    return p @ v, p


def key_graph(k, is_causal=False, tau=1.0):
    """P of graph="keys" without padding (independent of the code under test)."""
    kn = k / k.norm(dim=-1, keepdim=True)
    s = kn @ kn.transpose(-1, -2) / tau
    if is_causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1)


def grads(fn, inputs, w):
    out = fn(*inputs)
    return torch.autograd.grad((out * w).sum(), inputs)


# ----------------------------------------------------------------------------------------
# Check 1: alpha = 0 (or steps = 0) is softmax attention, exactly
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("mask_kind", MASKS)
def test_alpha_zero_is_softmax_attention(graph, mask_kind):
    q, k, v = make_qkv()
    mask, causal = make_mask(mask_kind)
    sdpa_mask = mask
    if causal and mask is not None:
        sdpa_mask = mask.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, is_causal=causal and mask is None)
    for mix in MIXES:
        kw = dict(graph=graph, mix=mix, attn_mask=mask, is_causal=causal)
        assert torch.equal(qgfd_attention(q, k, v, steps=3, alpha=0.0, **kw), want)
        assert torch.equal(qgfd_attention(q, k, v, steps=0, alpha=0.7, **kw), want)
        # No shortcut for a tensor alpha: the full propagation with c = (1, 0, ..., 0).
        torch.testing.assert_close(qgfd_attention(q, k, v, steps=2, alpha=torch.zeros(2, dtype=q.dtype), **kw), want, **TOL[q.dtype])
        ref, p = qgfd_attention_reference(q, k, v, steps=3, alpha=0.0, return_weights=True, **kw)
        want_ref, want_p = softmax_attention(q, k, v, mask, causal)
        torch.testing.assert_close(ref, want_ref, **TOL[q.dtype])
        torch.testing.assert_close(p, want_p, **TOL[q.dtype])


# ----------------------------------------------------------------------------------------
# Check 2: value propagation equals the materialised reference
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("fp64", "fp32"))
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("graph", GRAPHS)
def test_fast_equals_reference(graph, mix, mask_kind, dtype):
    q, k, v = make_qkv(dtype=dtype)
    mask, causal = make_mask(mask_kind, dtype=dtype)
    for steps in (0, 1, 3):
        kw = dict(steps=steps, alpha=0.6, graph=graph, mix=mix, attn_mask=mask, is_causal=causal)
        torch.testing.assert_close(qgfd_attention(q, k, v, **kw), qgfd_attention_reference(q, k, v, **kw), **TOL[dtype])


@pytest.mark.parametrize("mix", MIXES)
def test_fast_equals_reference_key_graph_cross_shapes_and_options(mix):
    # graph="keys" over a longer key sequence (Lq < Lk, no cache), per-head alpha, scale, tau.
    q, k, v = make_qkv(L=4, Lk=7)
    pad = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    pad[0, ..., -3:] = False
    alpha = torch.tensor([0.2, 0.9], dtype=torch.float64)
    for mask, causal in ((None, False), (pad, False), (None, True), (pad, True)):
        kw = dict(steps=2, alpha=alpha, graph="keys", mix=mix, attn_mask=mask, is_causal=causal, scale=0.3, key_temperature=0.5)
        torch.testing.assert_close(qgfd_attention(q, k, v, **kw), qgfd_attention_reference(q, k, v, **kw), **TOL[q.dtype])


# ----------------------------------------------------------------------------------------
# Check 3: mix="recurrent" is the recurrence, and converges at rate alpha^T
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("causal", (False, True), ids=("full", "causal"))
def test_recurrent_mix_is_the_recurrence_and_converges(graph, causal):
    q, k, v = make_qkv(L=5)
    a = 0.7
    _, p0 = softmax_attention(q, k, v, is_causal=causal)
    P = p0 if graph == "attention" else key_graph(k, is_causal=causal)
    kw = dict(alpha=a, graph=graph, mix="recurrent", is_causal=causal)

    p_t = p0  # p_0 = p0; p_{t+1} = (1 - a) p0 + a p_t P
    for T in range(5):
        _, p = qgfd_attention_reference(q, k, v, steps=T, return_weights=True, **kw)
        torch.testing.assert_close(p, p_t, **TOL[q.dtype])
        torch.testing.assert_close(qgfd_attention(q, k, v, steps=T, **kw), p_t @ v, **TOL[q.dtype])
        p_t = (1 - a) * p0 + a * p_t @ P

    eye = torch.eye(5, dtype=q.dtype)
    p_inf = (1 - a) * p0 @ torch.linalg.inv(eye - a * P)
    err0 = (p0 - p_inf).abs().sum(-1)  # per-row L1 error (P is row-stochastic, so ||x P||_1 <= ||x||_1)
    for T in (1, 2, 4, 8, 16):
        _, p = qgfd_attention_reference(q, k, v, steps=T, return_weights=True, **kw)
        err = (p - p_inf).abs().sum(-1)
        assert bool((err <= a**T * err0 + 1e-12).all()), (T, err.max().item(), a**T * err0.max().item())
    _, p = qgfd_attention_reference(q, k, v, steps=100, return_weights=True, **kw)
    torch.testing.assert_close(p, p_inf, rtol=0, atol=1e-12)
    torch.testing.assert_close(qgfd_attention(q, k, v, steps=100, **kw), p_inf @ v, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Check 4: rows of p are probability distributions; masked entries are 0
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_rows_of_p_are_distributions(graph, mask_kind):
    q, k, v = make_qkv()
    mask, causal = make_mask(mask_kind)
    for mix in MIXES:
        for alpha in (0.3, 1.0):
            _, p = qgfd_attention_reference(q, k, v, steps=3, alpha=alpha, graph=graph, mix=mix,
                                            attn_mask=mask, is_causal=causal, return_weights=True)
            assert bool((p >= 0).all())
            torch.testing.assert_close(p.sum(-1), torch.ones_like(p[..., 0]), rtol=0, atol=1e-12)
            if mask_kind in ("padding", "bias", "bias+causal"):
                assert bool((p[-1, ..., -1] == 0).all())  # the padded key gets no weight
            if causal:
                assert bool((p.triu(1) == 0).all())


# ----------------------------------------------------------------------------------------
# Check 5: causal: a later token never changes an earlier output
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("graph", GRAPHS)
def test_causal_later_tokens_do_not_change_earlier_outputs(graph, mix):
    L, j = 10, 6
    q, k, v = make_qkv(L=L, dtype=torch.float32)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    for t in (q2, k2, v2):
        t[:, :, j:] = torch.randn_like(t[:, :, j:]) * 5
    bias, _ = make_mask("bias", L=L, dtype=torch.float32)
    for fn in (qgfd_attention, qgfd_attention_reference):
        for mask in (None, bias):
            kw = dict(steps=3, alpha=0.8, graph=graph, mix=mix, attn_mask=mask, is_causal=True)
            a, b = fn(q, k, v, **kw), fn(q2, k2, v2, **kw)
            assert torch.equal(a[:, :, :j], b[:, :, :j]), fn.__name__
            assert not torch.equal(a[:, :, j:], b[:, :, j:])


def test_unmasked_graph_would_leak_the_future():
    # The control for check 5: without is_causal, earlier outputs do change.
    q, k, v = make_qkv(L=8)
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    k2[:, :, -1] += 1.0
    a, b = qgfd_attention(q, k, v, steps=2, graph="keys"), qgfd_attention(q2, k2, v2, steps=2, graph="keys")
    assert not torch.equal(a[:, :, 0], b[:, :, 0])


# ----------------------------------------------------------------------------------------
# Check 6: cached decoding equals the full pass at every position
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ("none", "leftpad", "bias"))
@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("graph", GRAPHS)
def test_cached_decoding_equals_full_pass(graph, mix, mask_kind):
    L, n0, steps = 9, 3, 3
    q, k, v = make_qkv(L=L)
    mask = None
    if mask_kind == "leftpad":
        mask = torch.ones(2, 1, 1, L, dtype=torch.bool)
        mask[1, ..., :2] = False  # batch 1 starts with two pad tokens
    elif mask_kind == "bias":
        mask, _ = make_mask("bias", L=L)  # position bias, and a padded last key in batch 1

    def m(start, end):  # the mask rows of queries start..end-1, over keys 0..end-1
        if mask is None:
            return None
        return mask[..., :end] if mask.shape[-2] == 1 else mask[..., start:end, :end]

    kw = dict(steps=steps, alpha=0.6, graph=graph, mix=mix, is_causal=True)
    full, full_w = qgfd_attention(q, k, v, attn_mask=mask, return_propagated=True, **kw)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full, qgfd_attention_reference(q, k, v, attn_mask=mask, **kw), **TOL[q.dtype])

    # Prefill n0 tokens, then one token at a time, then a 2-token chunk.
    out, cache = qgfd_attention(q[:, :, :n0], k[:, :, :n0], v[:, :, :n0], attn_mask=m(0, n0), return_propagated=True, **kw)
    torch.testing.assert_close(out, full[:, :, :n0], **TOL[q.dtype])
    n = n0
    while n < L:
        c = 1 if n < L - 2 else 2
        out, cache = qgfd_attention(q[:, :, n : n + c], k[:, :, : n + c], v[:, :, : n + c], attn_mask=m(n, n + c),
                                    past_propagated=cache, return_propagated=True, **kw)
        torch.testing.assert_close(out, full[:, :, n : n + c], **TOL[q.dtype])
        n += c
    for w, w_full in zip(cache, full_w):
        torch.testing.assert_close(w, w_full, **TOL[q.dtype])


# ----------------------------------------------------------------------------------------
# Gradients: fast path == reference (fp64), and gradcheck of the fast path
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("graph", GRAPHS)
def test_gradients_fast_equal_reference(graph, mix):
    q, k, v = make_qkv(B=1, L=5, D=3, requires_grad=True)
    g = torch.Generator().manual_seed(2)
    bias = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64)
    for causal in (False, True):
        def run(fn):
            return lambda q, k, v, b, a: fn(q, k, v, steps=2, alpha=a, graph=graph, mix=mix, attn_mask=b, is_causal=causal)

        inputs = (q, k, v, bias, alpha)
        for gf, gr, name in zip(grads(run(qgfd_attention), inputs, w), grads(run(qgfd_attention_reference), inputs, w),
                                ("q", "k", "v", "bias", "alpha")):
            torch.testing.assert_close(gf, gr, rtol=1e-10, atol=1e-12, msg=lambda s: f"d/d{name}: {s}")


@pytest.mark.parametrize("graph,mix", (("attention", "seed"), ("keys", "recurrent")))
def test_gradcheck_fast_path(graph, mix):
    q, k, v = make_qkv(B=1, L=4, D=3, requires_grad=True)
    bias = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.3, 0.6], dtype=torch.float64, requires_grad=True)

    def f(q, k, v, b, a):
        return qgfd_attention(q, k, v, steps=2, alpha=a, graph=graph, mix=mix, attn_mask=b, is_causal=True)

    assert torch.autograd.gradcheck(f, (q, k, v, bias, alpha))


@pytest.mark.parametrize("graph", GRAPHS)
def test_detach_graph(graph):
    q, k, v = make_qkv(B=1, L=5, D=3, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64)
    inputs = (q, k, v, bias)

    def run(fn, detach):
        return lambda q, k, v, b: fn(q, k, v, steps=2, alpha=0.7, graph=graph, attn_mask=b, detach_graph=detach)

    # The forward value does not change (up to rounding: SDPA may pick another kernel when
    # fewer inputs need gradients); the gradients are the reference's with P detached.
    torch.testing.assert_close(run(qgfd_attention, True)(*inputs), run(qgfd_attention, False)(*inputs), **TOL[q.dtype])
    fast = grads(run(qgfd_attention, True), inputs, w)
    ref = grads(run(qgfd_attention_reference, True), inputs, w)
    full = grads(run(qgfd_attention, False), inputs, w)
    for gf, gr in zip(fast, ref):
        torch.testing.assert_close(gf, gr, rtol=1e-10, atol=1e-12)
    # Q and K still get gradients through p0; those that P depends on (Q and K for the
    # attention graph, K alone for the key graph) differ from the undetached ones.
    for name, gd, gu in zip("qk", fast[:2], full[:2]):
        assert gd.abs().max() > 1e-3
        if graph == "attention" or name == "k":
            assert not torch.allclose(gd, gu)
        else:
            torch.testing.assert_close(gd, gu, rtol=1e-10, atol=1e-12)

    # Independent check of the reference's meaning: p0 differentiable, P a constant.
    with torch.no_grad():
        P = softmax_attention(q, k, v, bias)[1] if graph == "attention" else key_graph(k)

    def by_hand(q, k, v, b):
        _, p0 = softmax_attention(q, k, v, b)
        return (0.3 * p0 + 0.7 * p0 @ P @ P) @ v

    for gf, gh in zip(fast, grads(by_hand, inputs, w)):
        torch.testing.assert_close(gf, gh, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Precision and fully masked rows
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("graph", GRAPHS)
def test_bf16_within_bf16_tolerance(graph, mix):
    q, k, v = make_qkv(L=12, D=8)
    q, k, v = (t.bfloat16() for t in (q, k, v))  # compare on the same (rounded) inputs
    kw = dict(steps=3, alpha=0.6, graph=graph, mix=mix, is_causal=True)
    want = qgfd_attention_reference(*(t.double() for t in (q, k, v)), **kw)
    for fn in (qgfd_attention, qgfd_attention_reference):
        out = fn(q, k, v, **kw)
        assert out.dtype == torch.bfloat16
        rel = (out.double() - want).norm() / want.norm()
        assert rel < 1e-2, (fn.__name__, rel.item())
        assert (out.double() - want).abs().max() < 2e-2 * want.abs().max()


@pytest.mark.parametrize("graph", GRAPHS)
def test_fully_masked_query_row_is_finite(graph):
    L = 5
    q, k, v = make_qkv(L=L, requires_grad=True)
    bool_mask = torch.ones(2, 1, L, L, dtype=torch.bool)
    bool_mask[0, :, 2, :] = False  # query 2 of batch 0 may attend nothing
    inf_mask = torch.zeros(2, 1, L, L, dtype=torch.float64).masked_fill(~bool_mask, float("-inf"))
    min_mask = torch.zeros(2, 1, L, L, dtype=torch.float64).masked_fill(~bool_mask, torch.finfo(torch.float64).min)
    left_pad = torch.ones(2, 1, 1, L, dtype=torch.bool)
    left_pad[1, ..., :2] = False  # with causal, query 0 of batch 1 may attend nothing
    for mask, causal in ((bool_mask, False), (inf_mask, False), (min_mask, False), (left_pad, True)):
        for mix in MIXES:
            kw = dict(steps=2, alpha=0.7, graph=graph, mix=mix, attn_mask=mask, is_causal=causal)
            out = qgfd_attention(q, k, v, **kw)
            ref = qgfd_attention_reference(q, k, v, **kw)
            assert torch.isfinite(out).all() and torch.isfinite(ref).all()
            torch.testing.assert_close(out, ref, **TOL[q.dtype])
            for t in torch.autograd.grad(out.sum(), (q, k, v)) + torch.autograd.grad(ref.sum(), (q, k, v)):
                assert torch.isfinite(t).all()


def _non_finite(t):
    return int((~torch.isfinite(t)).sum())


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
@pytest.mark.parametrize("graph", GRAPHS)
def test_a_non_finite_key_is_refused_not_spread(graph, bad):
    """One +inf in a key makes some SDPA outputs non-finite (the queries whose score with that key
    is +inf). The graph row of that key is undefined (graph="keys": its norm is inf, its unit key
    NaN; graph="attention": P = p0), and propagation used to carry it to every query: 48 of 96
    outputs against SDPA's 8. With value checks on (the default) such a key is refused."""
    q, k, v = make_qkv(B=1, H=2, L=6, D=8, dtype=torch.float32)
    k[0, 0, 1, 2] = bad
    want = F.scaled_dot_product_attention(q, k, v)
    assert 0 < _non_finite(want) < want.numel()  # SDPA spoils some outputs, not all
    for fn in (qgfd_attention, qgfd_attention_reference):
        for causal in (False, True):
            with pytest.raises(ValueError, match=rf"`key` holds 1 NaN or inf value\(s\); allowed: finite values\. QGFD's graph='{graph}'"):
                fn(q, k, v, graph=graph, is_causal=causal)
    # Plain attention (steps=0 or alpha=0) is SDPA itself: the same outputs, non-finite ones included.
    for kw in (dict(steps=0), dict(alpha=0.0)):
        out = qgfd_attention(q, k, v, graph=graph, **kw)
        assert torch.equal(torch.isfinite(out), torch.isfinite(want)) and _non_finite(out) == _non_finite(want)


def test_attention_graph_refuses_a_non_finite_query_or_mask_row():
    """With graph="attention" P = p0, so the queries and a float mask build the graph too: a +inf
    or NaN there spreads as a bad key does. -inf in a mask is masking, and stays allowed."""
    q, k, v = make_qkv(B=1, H=2, L=6, D=8, dtype=torch.float32)
    bad_q = q.clone()
    bad_q[0, 1, 3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"`query` holds 1 NaN or inf value\(s\)"):
        qgfd_attention(bad_q, k, v, graph="attention")
    for bad in (float("inf"), float("nan")):
        mask = torch.zeros(1, 2, 6, 6)
        mask[0, 0, 1, 3] = bad
        with pytest.raises(ValueError, match=r"`attn_mask` holds 1 NaN or \+inf value\(s\); allowed: finite values and -inf"):
            qgfd_attention(q, k, v, graph="attention", attn_mask=mask)
    mask = torch.zeros(1, 2, 6, 6)
    mask[..., -1] = float("-inf")
    assert torch.isfinite(qgfd_attention(q, k, v, graph="attention", attn_mask=mask)).all()


@pytest.mark.parametrize("graph", GRAPHS)
def test_non_finite_inputs_the_graph_does_not_read_spread_no_further_than_sdpa(graph):
    """What the graph is not built from passes unchecked (values; with graph="keys" also queries and
    the mask's values): those spoil exactly the outputs SDPA spoils on the same inputs."""
    q, k, v = make_qkv(B=2, H=2, L=6, D=4)
    for bad in (float("inf"), float("nan")):
        for causal in (False, True):
            bad_v = v.clone()
            bad_v[0, 1, 2, 3] = bad
            cases = [(q, bad_v, None)]
            if graph == "keys":
                bad_q = q.clone()
                bad_q[1, 0, 4, 1] = bad
                mask = torch.zeros(2, 2, 6, 6, dtype=torch.float64)
                mask[0, 0, 1, 3] = bad
                cases += [(bad_q, v, None), (q, v, mask)]
            for qq, vv, mask in cases:
                # SDPA with a mask and is_causal adds the two (+inf + -inf = NaN); the kernel masks the
                # future with -inf, as `softmax_attention` does: compare with SDPA on that one mask.
                sdpa_mask = mask if mask is None or not causal else mask.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
                want = F.scaled_dot_product_attention(qq, k, vv, attn_mask=sdpa_mask, is_causal=causal and mask is None)
                out = qgfd_attention(qq, k, vv, steps=2, alpha=0.7, graph=graph, attn_mask=mask, is_causal=causal)
                assert _non_finite(out) == _non_finite(want)
                assert torch.equal(torch.isfinite(out), torch.isfinite(want))


@pytest.mark.parametrize("graph", GRAPHS)
def test_with_value_checks_off_a_non_finite_key_is_not_read(graph):
    """The finiteness check reads the tensors; `value_checks(False)` (the trainer's and sampler's
    loops, torch.compile) skips it, and the kernel then computes what the math gives."""
    from qgfd_hf.attention_qgfd import value_checks

    q, k, v = make_qkv(B=1, H=2, L=6, D=8, dtype=torch.float32)
    k[0, 0, 1, 2] = float("inf")
    with value_checks(False):
        out = qgfd_attention(q, k, v, graph=graph)
    assert _non_finite(out) > 0
    assert torch.isfinite(out[0, 1]).all()  # the other head is untouched


# ----------------------------------------------------------------------------------------
# Alpha: learnable, warm-up, gradient checkpointing
# ----------------------------------------------------------------------------------------


def test_learnable_alpha_stays_in_range_and_gets_gradients():
    torch.manual_seed(0)
    settings = QGFDSettings(alpha=0.4, learnable_alpha=True, alpha_max=0.6)
    a = QGFDAlpha(settings, num_heads=4)
    torch.testing.assert_close(a(), torch.full((4,), 0.4))
    with torch.no_grad():
        a.logit.copy_(torch.tensor([-100.0, -5.0, 5.0, 100.0]))
    assert bool(((a() >= 0) & (a() <= 0.6)).all())

    mha = QGFDMultiheadAttention(16, 4, qgfd_steps=2, qgfd_alpha=0.4, learnable_alpha=True, alpha_max=0.6)
    x = torch.randn(2, 5, 16)
    mha(x).pow(2).sum().backward()
    g = mha.qgfd_alpha.logit.grad
    assert g is not None and torch.isfinite(g).all() and bool((g != 0).all())
    opt = torch.optim.SGD([mha.qgfd_alpha.logit], lr=1e4)  # huge steps push alpha against its bounds
    for sign in (1.0, -1.0, -1.0, 1.0):
        opt.zero_grad()
        (sign * mha(x).pow(2).sum()).backward()
        opt.step()
        alpha = mha.qgfd_alpha()
        assert bool(((alpha >= 0) & (alpha <= 0.6)).all()), alpha


def test_warmup_follows_set_qgfd_step_and_eval_uses_full_alpha():
    torch.manual_seed(0)
    model = torch.nn.ModuleList(
        [QGFDMultiheadAttention(16, 2, qgfd_steps=2, qgfd_alpha=0.5, warmup_steps=4) for _ in range(2)]
    )
    mha = model[0]
    plain = QGFDMultiheadAttention(16, 2, qgfd_steps=2, qgfd_alpha=0.25)
    plain.load_state_dict(mha.state_dict())
    x = torch.randn(2, 5, 16)
    model.train()
    assert mha.qgfd_alpha() == 0.0  # step 0 before anything is set
    torch.testing.assert_close(mha(x), mha(x, qgfd=False), rtol=0, atol=0)
    for step, want in ((1, 0.125), (2, 0.25), (4, 0.5), (100, 0.5)):
        assert set_qgfd_step(model, step) == 2
        assert all(m.qgfd_alpha() == want for m in model)
    set_qgfd_step(model, 2)
    torch.testing.assert_close(mha(x), plain(x))  # the kernel runs with the warmed-up alpha
    set_qgfd_step(model, 0)
    model.eval()
    assert mha.qgfd_alpha() == 0.5
    plain.qgfd_alpha.settings = QGFDSettings(steps=2, alpha=0.5)
    torch.testing.assert_close(mha(x), plain(x))


@pytest.mark.parametrize("graph", GRAPHS)
def test_gradient_checkpointing_gives_the_same_gradients(graph):
    torch.manual_seed(0)
    mha = QGFDMultiheadAttention(16, 2, qgfd_steps=2, qgfd_alpha=0.6, warmup_steps=10, learnable_alpha=True, graph=graph)
    mha.train()
    set_qgfd_step(mha, 3)
    x = torch.randn(2, 6, 16, requires_grad=True)

    def step(use_checkpoint):
        out = checkpoint(mha, x, use_reentrant=False) if use_checkpoint else mha(x)
        params = (x,) + tuple(mha.parameters())
        return out, torch.autograd.grad(out.pow(2).sum(), params)

    out_a, g_a = step(False)
    out_b, g_b = step(True)
    assert torch.equal(out_a, out_b)
    for a, b in zip(g_a, g_b):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# QGFDMultiheadAttention (the seed's module)
# ----------------------------------------------------------------------------------------


def _projected(mha, x_q, x_kv):
    return mha._heads(mha.q_proj(x_q)), mha._heads(mha.k_proj(x_kv)), mha._heads(mha.v_proj(x_kv))


def _merge(mha, out):
    B, H, L, Dh = out.shape
    return mha.out_proj(out.transpose(1, 2).reshape(B, L, H * Dh))  # (B, L, D)


@pytest.mark.parametrize("Lk", (7, 3), ids=("longer-memory", "shorter-memory"))
def test_module_cross_attention_is_plain_attention(Lk):
    torch.manual_seed(0)
    mha = QGFDMultiheadAttention(16, 2, qgfd_steps=2, qgfd_alpha=0.9).eval()
    x, mem = torch.randn(2, 5, 16), torch.randn(2, Lk, 16)
    q, k, v = _projected(mha, x, mem)
    want = _merge(mha, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(mha(x, mem), want)
    torch.testing.assert_close(mha(x, mem, qgfd=False), want)
    out, w = mha(x, mem, need_weights=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1))


@pytest.mark.parametrize("graph", GRAPHS)
def test_module_self_attention_is_qgfd(graph):
    torch.manual_seed(0)
    mha = QGFDMultiheadAttention(16, 2, qgfd_steps=2, qgfd_alpha=0.7, graph=graph, mix="recurrent").eval()
    x = torch.randn(2, 5, 16)
    q, k, v = _projected(mha, x, x)
    kw = dict(steps=2, alpha=0.7, graph=graph, mix="recurrent")
    want = _merge(mha, qgfd_attention(q, k, v, **kw))
    torch.testing.assert_close(mha(x), want)
    torch.testing.assert_close(mha(x, x), want)  # x_kv is x_q: still self-attention
    assert not torch.allclose(mha(x, qgfd=False), want)
    torch.testing.assert_close(mha(x, x.clone()), mha(x, qgfd=False))  # another tensor: cross-attention

    out, w = mha(x, need_weights=True)
    torch.testing.assert_close(out, want)
    _, want_w = qgfd_attention_reference(q, k, v, return_weights=True, **kw)
    torch.testing.assert_close(w, want_w)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 5))
    assert mha(x, need_weights=False).shape == (2, 5, 16)



@pytest.mark.parametrize("graph", GRAPHS)
def test_module_weights_match_the_reference_under_masks_and_share_the_dropout_draw(graph):
    """`need_weights=True` runs the kernel on identity values: the weights equal the reference's
    under key padding and a causal mask, and in training the output is the weights times V (one
    dropout draw for both)."""
    torch.manual_seed(0)
    mha = QGFDMultiheadAttention(16, 2, dropout=0.3, qgfd_steps=2, qgfd_alpha=0.6, graph=graph).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])  # True = masked out (the seed's mask)
    q, k, v = _projected(mha, x, x)
    allowed = ~pad[:, None, None, :]
    for causal in (False, True):
        out, w = mha(x, attn_mask=pad, is_causal=causal, need_weights=True)
        want_out, want_w = qgfd_attention_reference(q, k, v, steps=2, alpha=0.6, graph=graph, attn_mask=allowed,
                                                    is_causal=causal, return_weights=True)
        torch.testing.assert_close(w, want_w)
        torch.testing.assert_close(out, _merge(mha, want_out))
    _, w_eval = mha(x, need_weights=True)
    mha.train()
    torch.manual_seed(1)
    out, w = mha(x, need_weights=True)
    assert not torch.allclose(w, w_eval)  # dropout acted on p0
    torch.testing.assert_close(out, _merge(mha, w @ v))

def test_module_seed_mask_shapes():
    torch.manual_seed(0)
    B, L, H = 2, 5, 2
    mha = QGFDMultiheadAttention(16, H, qgfd_steps=2, qgfd_alpha=0.5, graph="keys").eval()
    x = torch.randn(B, L, 16)
    # Key padding [B, Lk] (True = masked out): the last two keys of batch 1.
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -2:] = True
    want = mha(x, attn_mask=pad[:, None, None, :].expand(B, H, L, L))
    torch.testing.assert_close(mha(x, attn_mask=pad), want)
    torch.testing.assert_close(mha(x, attn_mask=pad[:, None, :].expand(B, L, L)), want)
    q, k, v = _projected(mha, x, x)
    torch.testing.assert_close(want, _merge(mha, qgfd_attention(q, k, v, steps=2, alpha=0.5, graph="keys", attn_mask=~pad[:, None, None, :])))
    # [Lq, Lk]: the seed's causal mask is the same as is_causal=True.
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    torch.testing.assert_close(mha(x, attn_mask=future), mha(x, is_causal=True))
    torch.testing.assert_close(mha(x, attn_mask=future.expand(B, L, L)), mha(x, is_causal=True))
    with pytest.raises(ValueError, match=r"attn_mask. of shape \(3, 5\) is not one of"):
        mha(x, attn_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must be a bool tensor \(True = masked out\), got dtype torch.float32"):
        mha(x, attn_mask=torch.zeros(B, L))


# ----------------------------------------------------------------------------------------
# Bad input: a ValueError that names the value and what is allowed
# ----------------------------------------------------------------------------------------

_q, _k, _v = make_qkv(B=1, L=3, D=4)


def _call(fn=qgfd_attention, q=_q, k=_k, v=_v, **kw):
    return lambda: fn(q, k, v, **kw)


BAD_INPUTS = {
    "steps<0": (_call(steps=-1), r"`steps` must be an int >= 0, got -1"),
    "steps-float": (_call(steps=1.5), r"`steps` must be an int >= 0, got 1.5"),
    "alpha>1": (_call(alpha=1.5), r"`alpha` must be a float in \[0, 1\], got 1.5"),
    "alpha<0": (_call(alpha=-0.1), r"`alpha` must be a float in \[0, 1\], got -0.1"),
    "alpha-tensor>1": (_call(alpha=torch.tensor([0.5, 2.0])), r"`alpha` must lie in \[0, 1\], got \[0.5, 2.0\]"),
    "alpha-heads": (_call(alpha=torch.tensor([0.1, 0.2, 0.3])), r"`alpha` has 3 values but the input has H=2 heads"),
    "graph": (_call(graph="foo"), r"Unknown graph 'foo'; allowed: 'attention', 'keys'"),
    "mix": (_call(mix="bar"), r"Unknown mix 'bar'; allowed: 'seed', 'recurrent'"),
    "tau=0": (_call(key_temperature=0.0), r"`key_temperature` must be a finite float > 0, got 0.0"),
    "tau=inf": (_call(key_temperature=float("inf")), r"`key_temperature` must be a finite float > 0, got inf"),
    "tau=nan": (_call(key_temperature=float("nan")), r"`key_temperature` must be a finite float > 0, got nan"),
    "dropout=1": (_call(dropout_p=1.0), r"`dropout_p` must be in \[0, 1\), got 1.0"),
    "dropout<0": (_call(dropout_p=-0.1), r"`dropout_p` must be in \[0, 1\), got -0.1"),
    "batch": (_call(k=torch.randn(2, 2, 3, 4, dtype=torch.float64)), r"share batch size and number of heads .* \(1, 2, 3, 4\), \(2, 2, 3, 4\)"),
    "heads": (_call(v=torch.randn(1, 3, 3, 4, dtype=torch.float64)), r"share batch size and number of heads .* \(1, 3, 3, 4\)"),
    "D": (_call(k=torch.randn(1, 2, 3, 5, dtype=torch.float64)), r"query and key must share their head width D, got 4 and 5"),
    "Lk!=Lv": (_call(graph="keys", v=torch.randn(1, 2, 4, 4, dtype=torch.float64)), r"key and value must have the same length, got 3 and 4"),
    "3d": (_call(q=torch.randn(2, 3, 4, dtype=torch.float64)), r"`query` must have shape \[B, H, L, D\], got shape \(2, 3, 4\)"),
    "attention-graph-Lq!=Lk": (_call(k=torch.randn(1, 2, 5, 4, dtype=torch.float64), v=torch.randn(1, 2, 5, 4, dtype=torch.float64)),
                               r'graph="attention" .* needs self-attention \(Lq == Lk\), got Lq=3, Lk=5'),
    "Lq>Lk": (_call(graph="keys", k=_k[:, :, :2], v=_v[:, :, :2]), r"QGFD needs Lq <= Lk, got Lq=3, Lk=2"),
    "mask-broadcast": (_call(attn_mask=torch.ones(1, 1, 3, 4, dtype=torch.bool)), r"`attn_mask` of shape \(1, 1, 3, 4\) does not broadcast to \[B, H, Lq, Lk\] = \[1, 2, 3, 3\]"),
    "mask-int": (_call(attn_mask=torch.ones(3, 3, dtype=torch.long)), r"`attn_mask` must be bool \(True = may attend\) or an additive float mask, got torch.int64"),
    "mask-list": (_call(attn_mask=[[True]]), r"`attn_mask` must be a tensor or None, got list"),
    "int-input": (_call(q=torch.ones(1, 2, 3, 4, dtype=torch.long)), r"`query` must be a floating-point tensor, got dtype torch.int64"),
    "not-tensor": (_call(v=[[1.0]]), r"`value` must be a torch.Tensor, got list"),
    "dtypes": (_call(q=_q.float()), r"query, key and value must share a dtype, got torch.float32, torch.float64, torch.float64"),
    "past-count": (_call(past_propagated=[]), r"`past_propagated` must hold `steps`=1 tensors, got 0"),
    "past-shape": (_call(past_propagated=[torch.zeros(1, 2, 1, 4)]), r"`past_propagated` tensors must have shape \[1, 2, 0, 4\], got \[1, 2, 1, 4\]"),
    "ref-steps": (_call(qgfd_attention_reference, steps=-2), r"`steps` must be an int >= 0, got -2"),
    "ref-graph-Lq!=Lk": (_call(qgfd_attention_reference, k=torch.randn(1, 2, 5, 4, dtype=torch.float64), v=torch.randn(1, 2, 5, 4, dtype=torch.float64)),
                         r"needs self-attention \(Lq == Lk\), got Lq=3, Lk=5"),
    "ref-mask": (_call(qgfd_attention_reference, attn_mask=torch.ones(2, 2, 3, 3, dtype=torch.bool)), r"does not broadcast"),
    "ref-int": (_call(qgfd_attention_reference, k=torch.ones(1, 2, 3, 4, dtype=torch.int32)), r"`key` must be a floating-point tensor, got dtype torch.int32"),
    "ref-tau": (_call(qgfd_attention_reference, key_temperature=-1.0), r"`key_temperature` must be a finite float > 0, got -1.0"),
    "ref-dropout": (_call(qgfd_attention_reference, dropout_p=2.0), r"`dropout_p` must be in \[0, 1\), got 2.0"),
    "settings-steps": (lambda: QGFDSettings(steps=-1), r"`steps` must be an int >= 0, got -1"),
    "settings-alpha": (lambda: QGFDSettings(alpha=2.0), r"`alpha` must be a float in \[0, 1\], got 2.0"),
    "settings-graph": (lambda: QGFDSettings(graph="kv"), r"Unknown graph 'kv'"),
    "settings-mix": (lambda: QGFDSettings(mix="mean"), r"Unknown mix 'mean'"),
    "settings-tau": (lambda: QGFDSettings(key_temperature=0), r"`key_temperature` must be a finite float > 0, got 0"),
    "settings-alpha_max": (lambda: QGFDSettings(alpha_max=0.0), r"`alpha_max` must be a float in \(0, 1\], got 0.0"),
    "settings-alpha>max": (lambda: QGFDSettings(alpha=0.8, learnable_alpha=True, alpha_max=0.5), r"`alpha`=0.8 is above `alpha_max`=0.5"),
    "settings-warmup": (lambda: QGFDSettings(warmup_steps=-3), r"`warmup_steps` must be an int >= 0, got -3"),
    "settings-unknown": (lambda: QGFDSettings.from_dict({"stepz": 2}), r"Unknown QGFD setting\(s\) \['stepz'\]; allowed: \["),
    "module-heads": (lambda: QGFDMultiheadAttention(16, 3), r"`num_heads` must be a positive int dividing embed_dim=16, got 3"),
    "module-dropout": (lambda: QGFDMultiheadAttention(16, 2, dropout=1.5), r"`dropout` must be in \[0, 1\), got 1.5"),
    "module-steps": (lambda: QGFDMultiheadAttention(16, 2, qgfd_steps=-1), r"`steps` must be an int >= 0, got -1"),
    "module-kwarg": (lambda: QGFDMultiheadAttention(16, 2, graf="keys"), r"Unknown QGFD setting\(s\) \['graf'\]"),
    "module-width": (lambda: QGFDMultiheadAttention(16, 2)(torch.randn(2, 3, 8)), r"`x_q` must have shape \[B, Lq, 16\], got \(2, 3, 8\)"),
    "set-step": (lambda: set_qgfd_step(torch.nn.Linear(2, 2), -1), r"`step` must be an int >= 0, got -1"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error(case):
    fn, match = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=match):
        fn()


def test_plain_attention_accepts_any_lengths():
    # steps=0 is plain attention: QGFD's length rules (Lq == Lk for graph="attention", Lq <= Lk) do not apply.
    q, k, v = make_qkv(L=5, Lk=3)
    want = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(qgfd_attention(q, k, v, steps=0), want)
    torch.testing.assert_close(qgfd_attention_reference(q, k, v, steps=0), want, **TOL[q.dtype])


def test_numpy_scalars_are_valid_settings_and_absurd_step_counts_are_refused():
    """Issue 12: alpha=np.float32(0.5) was refused although in range; steps=10**7 ran for hours."""
    import numpy as np

    q = k = v = torch.randn(1, 2, 5, 4)
    out = qgfd_attention(q, k, v, steps=np.int64(1), alpha=np.float32(0.5))
    torch.testing.assert_close(out, qgfd_attention(q, k, v, steps=1, alpha=0.5))
    s = QGFDSettings(steps=np.int64(2), alpha=np.float32(0.25))
    assert type(s.steps) is int and type(s.alpha) is float and s.alpha == 0.25
    for steps in (10**7, 257, -1, 1.0):
        with pytest.raises(ValueError, match=r"`steps` must be an int >= 0, got .*; at most 256"):
            qgfd_attention(q, k, v, steps=steps, alpha=0.5)
    with pytest.raises(ValueError, match=r"`alpha` must be a float in \[0, 1\], got .*1\.5"):
        qgfd_attention(q, k, v, steps=1, alpha=np.float64(1.5))
