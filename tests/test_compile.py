"""torch.compile: the kernel, a patched transformers model and the denoiser's training step
compile without graph breaks and match eager.

`fullgraph=True` makes any graph break an error. Most tests use `backend="aot_eager"`: Dynamo's
graph capture plus AOTAutograd's joint forward / backward graphs, without inductor's code
generation (minutes of C++ compiling on this 2-core machine); one test runs inductor on the
kernel's forward. Compiled generation: transformers' own route (`compile_config` with a static
cache, the decoding steps compiled with `fullgraph=True`; with `prefill_chunk_size` the prefill
too) gives eager's tokens, and a first call on a fresh cache compiles as one graph once
`prepare_qgfd_cache` has readied the cache (`generate()` does it itself).
"""

import pytest
import torch
import torch._dynamo

import qgfd_hf
from qgfd_hf import qgfd_attention
from test_modeling_qgfd import build

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(tensors):
    return [t.grad.clone() for t in tensors]


def _assert_compiled_step_matches_eager(loss_fn, model, params, *inputs):
    """`loss_fn(*inputs)` compiled with `fullgraph=True` (aot_eager) gives eager's loss and gradients."""
    eager = loss_fn(*inputs)
    eager.backward()
    want = _grads(params)
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(*inputs)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for got, exp in zip(_grads(params), want):
        torch.testing.assert_close(got, exp, atol=1e-6, rtol=1e-5)


KERNEL_CASES = {
    # graph="attention", a padding-style bool mask, T = 2, a learnable per-head alpha (a tensor).
    "attention-mask-learnable": lambda alpha: dict(steps=2, alpha=alpha, graph="attention", attn_mask=torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.2),
    # graph="keys", causal, recurrent mix.
    "keys-causal-recurrent": lambda alpha: dict(steps=2, alpha=0.5, graph="keys", mix="recurrent", is_causal=True),
}


@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_kernel_compiles_fullgraph_and_matches_eager(case):
    torch.manual_seed(0)
    inputs = [torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3)]
    alpha = torch.full((4,), 0.3, requires_grad=True)
    kwargs = KERNEL_CASES[case](alpha)
    leaves = inputs + ([alpha] if kwargs["alpha"] is alpha else [])

    def f(q, k, v):
        return qgfd_attention(q, k, v, **kwargs)

    eager = f(*inputs)
    eager.square().sum().backward()
    want = _grads(leaves)
    for t in leaves:
        t.grad = None
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(*inputs)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager)
    for got, exp in zip(_grads(leaves), want):
        torch.testing.assert_close(got, exp)


def test_kernel_compiles_with_inductor():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))

    def f(q, k, v):
        return qgfd_attention(q, k, v, steps=2, alpha=0.5, graph="keys", is_causal=True)

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v), atol=1e-5, rtol=1e-5)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.0)
    return cfg, qgfd_hf.patch_model(LlamaForCausalLM(cfg), steps=1, alpha=0.5)


def test_patched_llama_training_forward_compiles_fullgraph():
    """The patched model's forward + loss (left padding, GQA, causal) as one graph; its backward through AOTAutograd."""
    _, model = _tiny_llama()
    model.train()
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0

    def loss_fn(ids, mask):
        return model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss

    params = [p for p in model.parameters() if p.requires_grad]
    _assert_compiled_step_matches_eager(loss_fn, model, params, ids, mask)


def test_patched_vit_and_static_cache_decoding_have_no_graph_breaks():
    from transformers import StaticCache, ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = qgfd_hf.patch_model(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                 image_size=16, patch_size=4)), steps=1, alpha=0.5)
    explained = torch._dynamo.explain(lambda x: vit(pixel_values=x).last_hidden_state)(torch.randn(2, 3, 16, 16))
    assert explained.graph_break_count == 0, explained.break_reasons
    cfg, llama = _tiny_llama()
    llama.eval()
    cache = StaticCache(config=cfg, max_cache_len=16)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nxt = llama(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)  # prefill, eager
        step = lambda tok: llama(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=torch.tensor([6])).logits  # noqa: E731
        explained = torch._dynamo.explain(step)(nxt)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("kind", ["pixels", "text"])
def test_denoiser_training_step_compiles_fullgraph(kind):
    """`compute_loss` (latents, q_sample, the denoiser, the loss; the text model's T5 condition
    encoder too) as one graph, and its backward: the same loss and gradients as eager. The value
    checks are skipped while Dynamo traces; t and the noise are drawn outside the graph."""
    model, batch = build(kind)
    model.train()
    for m in model.modules():  # deterministic: no dropout (the tiny T5 has 0.1, in nn.Dropout and in its attention)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(getattr(m, "dropout", None), float):
            m.dropout = 0.0
    x0 = model.data_to_latents(batch)
    t, noise = model._draw_t_and_noise(x0, torch.Generator().manual_seed(0))
    model._draw_t_and_noise = lambda x0, generator: (t, noise)

    def loss_fn(batch):
        return model.compute_loss(batch)["loss"]

    params = [p for p in model.parameters() if p.requires_grad]
    _assert_compiled_step_matches_eager(loss_fn, model, params, batch)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return cfg, qgfd_hf.patch_model(GPT2LMHeadModel(cfg), steps=1, alpha=0.5)


@pytest.mark.parametrize("arch, chunk", [("llama", None), ("gpt2", None), ("llama", 3)])
def test_compiled_generation_with_compile_config_equals_eager(arch, chunk):
    """`generate(cache_implementation="static", compile_config=...)`, the way transformers compiles
    generation: the decoding steps (and, with `prefill_chunk_size`, the prefill chunks: a first call
    on a fresh cache) compiled with `fullgraph=True`, so a graph break is an error. Left padding;
    the tokens equal eager generation's and generation without a cache."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    _, model = (_tiny_llama if arch == "llama" else _tiny_gpt2)()
    model.eval()
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, prefill_chunk_size=chunk)
    no_cache = model.generate(ids, use_cache=False, **{k: v for k, v in kwargs.items() if k != "prefill_chunk_size"})
    eager = model.generate(ids, cache_implementation="static", **kwargs)
    compile_config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on CPU only when asked to
    counters.clear()
    compiled = model.generate(ids, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert counters["stats"]["unique_graphs"] > 0  # the compiled forward ran
    assert torch.equal(eager, no_cache)
    assert torch.equal(compiled, eager)


def test_first_call_on_fresh_cache_compiles_fullgraph_once_prepared():
    """A compiled prefill on a fresh cache: QGFD's `__class__` assignment on each cache layer breaks the
    graph (an error under `fullgraph=True`); after `prepare_qgfd_cache` the prefill on a static cache
    and on a dynamic cache is one graph, and so is the next decoding step: eager's logits."""
    from transformers import DynamicCache, StaticCache

    cfg, model = _tiny_llama()
    model.eval()
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))

    def forward(tokens, cache):
        return model(input_ids=tokens, cache=cache, use_cache=True).logits

    compiled_forward = torch.compile(forward, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        with pytest.raises(Exception, match="__class__"):
            compiled_forward(ids, StaticCache(config=cfg, max_cache_len=16))
        torch._dynamo.reset()
        for new_cache in (lambda: StaticCache(config=cfg, max_cache_len=16), lambda: DynamicCache(config=cfg)):
            torch._dynamo.reset()
            eager_cache, cache = new_cache(), new_cache()
            qgfd_hf.prepare_qgfd_cache(model, cache)
            eager = forward(ids, eager_cache)
            torch.testing.assert_close(compiled_forward(ids, cache), eager)
            nxt = eager[:, -1:].argmax(-1)  # a dynamic cache's step has a new key length: a second graph
            torch.testing.assert_close(compiled_forward(nxt, cache), forward(nxt, eager_cache))
