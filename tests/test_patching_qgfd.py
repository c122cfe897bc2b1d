"""Tests for qgfd_hf.patching_qgfd: QGFD inside T5, ViT, Wav2Vec2 and a Llama-style decoder.

Every model is built in-process from a tiny config (width 32, 2 layers, 4 heads); nothing is
downloaded. Tolerances: 1e-6 for alpha=0 against the original, 1e-5 for cached decoding and
padding (fp32).
"""

import copy
import doctest
import json
import warnings

import pytest
import torch
import torch.nn as nn
from transformers import (
    AttentionInterface,
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

import qgfd_hf
from qgfd_hf import (
    patching_cache_qgfd,
    patching_forward_qgfd,
    patching_hooks_qgfd,
    patching_layers_qgfd,
    patching_modules_qgfd,
    patching_qgfd,
)
from qgfd_hf.patching_qgfd import QGFDDynamicLayer, find_attention_modules

# `import qgfd_hf` leaves transformers alone; transformers' own routes to "qgfd" (attn_implementation="qgfd",
# Model(config), set_attn_implementation) need it registered first, as a user does.
qgfd_hf.register_qgfd_attention()

# ----------------------------------------------------------------------------------------
# Tiny models
# ----------------------------------------------------------------------------------------


def tiny_t5(**overrides):
    torch.manual_seed(0)
    kw = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100, dropout_rate=0.0,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    kw.update(overrides)
    return T5ForConditionalGeneration(T5Config(**kw)).eval()


def tiny_llama(**overrides):
    torch.manual_seed(0)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def tiny_vit():
    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              image_size=16, patch_size=4)).eval()


def tiny_wav2vec2():
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
                            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                            layerdrop=0.0, mask_time_prob=0.0)
    return Wav2Vec2Model(config).eval()


@pytest.fixture(scope="module")
def t5():
    return tiny_t5()


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def wav2vec2():
    return tiny_wav2vec2()


def gen_ids(batch=2, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (batch, length), generator=g)


def patched(model, **settings):
    return qgfd_hf.patch_model(copy.deepcopy(model), **settings)


# One forward per model kind, returning a tensor to compare.
def run(kind, model, **extra):
    g = torch.Generator().manual_seed(2)
    if kind == "t5":
        ids = gen_ids()
        return model(input_ids=ids, decoder_input_ids=gen_ids(length=5, seed=3), **extra).logits
    if kind == "llama":
        return model(input_ids=gen_ids(), **extra).logits
    if kind == "vit":
        return model(torch.randn(2, 3, 16, 16, generator=g), **extra).last_hidden_state
    audio = torch.randn(2, 1600, generator=g)
    mask = torch.ones(2, 1600, dtype=torch.long)
    mask[1, 1200:] = 0
    return model(audio, attention_mask=mask, **extra).last_hidden_state


KINDS = ["t5", "llama", "vit", "wav2vec2"]


@pytest.fixture
def model_of(request, t5, llama, vit, wav2vec2):
    return {"t5": t5, "llama": llama, "vit": vit, "wav2vec2": wav2vec2}


# ----------------------------------------------------------------------------------------
# Registration and which layers get QGFD
# ----------------------------------------------------------------------------------------


def test_registered_with_attention_and_mask_interfaces():
    assert AttentionInterface._global_mapping["qgfd"] is qgfd_hf.qgfd_attention_forward
    assert "qgfd" in AttentionMaskInterface._global_mapping


def test_t5_self_attention_gets_qgfd_cross_attention_stays_plain(t5):
    roles = {name: role for name, _, role in find_attention_modules(t5)}
    assert roles == {
        **{f"encoder.block.{i}.layer.0.SelfAttention": "self" for i in range(2)},
        **{f"decoder.block.{i}.layer.0.SelfAttention": "self" for i in range(2)},
        **{f"decoder.block.{i}.layer.1.EncDecAttention": "cross" for i in range(2)},
    }
    m = patched(t5)
    with_alpha = sorted(n.rsplit(".qgfd_alpha", 1)[0] for n, mod in m.named_modules() if n.endswith("qgfd_alpha"))
    assert with_alpha == sorted(n for n, r in roles.items() if r == "self")
    assert m.config._attn_implementation == m.encoder.config._attn_implementation == "qgfd"


def test_t5_cross_attention_is_exactly_plain(t5):
    """QGFD with alpha > 0 changes the self-attention only: T5 cross-attention equals sdpa's."""
    m = patched(t5, alpha=0.7, steps=2)
    seen = {}

    def grab(name):
        def hook(module, args, kwargs, output):
            seen.setdefault(name, []).append(output[0])
        return hook

    ref = copy.deepcopy(m)
    qgfd_hf.unpatch_model(ref)
    # Feed both cross-attention layers the same inputs: take them from the patched model's run.
    cross = m.decoder.block[0].layer[1].EncDecAttention
    inputs = {}
    cross.register_forward_pre_hook(lambda mod, a, kw: inputs.update(args=a, kwargs=kw), with_kwargs=True)
    run("t5", m)
    out_qgfd = cross(*inputs["args"], **inputs["kwargs"])[0]
    out_plain = ref.decoder.block[0].layer[1].EncDecAttention(*inputs["args"], **inputs["kwargs"])[0]
    assert torch.equal(out_qgfd, out_plain)


@pytest.mark.parametrize("kind", KINDS)
def test_alpha_zero_equals_original(kind, model_of):
    original = model_of[kind]
    m = patched(original, alpha=0.0, steps=3)
    with torch.no_grad():
        torch.testing.assert_close(run(kind, m), run(kind, original), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_patch_changes_outputs_and_unpatch_restores_exactly(kind, model_of):
    original = model_of[kind]
    keys = list(original.state_dict())
    names = [n for n, _ in original.named_parameters()]
    m = patched(original, alpha=0.6, steps=2)
    assert qgfd_hf.is_qgfd_patched(m) and not qgfd_hf.is_qgfd_patched(original)
    assert list(m.state_dict()) == keys and [n for n, _ in m.named_parameters()] == names
    with torch.no_grad():
        before, qgfd = run(kind, original), run(kind, m)
        assert (qgfd - before).abs().max() > 1e-4
        qgfd_hf.unpatch_model(m)
        assert torch.equal(run(kind, m), before)
    assert not qgfd_hf.is_qgfd_patched(m)
    assert m.config._attn_implementation == original.config._attn_implementation
    assert not hasattr(m.config, "qgfd") and "attn_implementation" not in m.config.__dict__
    assert list(m.state_dict()) == keys
    assert not any(n.endswith("qgfd_alpha") for n, _ in m.named_modules())


# ----------------------------------------------------------------------------------------
# The QGFD each layer computes, and output_attentions
# ----------------------------------------------------------------------------------------


def _inputs_of(module):
    seen = {}
    handle = module.register_forward_pre_hook(lambda mod, a, kw: seen.update(args=a, kwargs=kw), with_kwargs=True)
    return seen, handle


def test_vit_attention_is_qgfd_with_weights_from_reference(vit):
    settings = dict(steps=2, alpha=0.4, mix="recurrent")
    m = patched(vit, **settings)
    attn = m.layers[0].attention
    seen, handle = _inputs_of(attn)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = m(x, output_attentions=True)
        plain = m(x).last_hidden_state
        handle.remove()
        h = seen["args"][0]
        B, L, _ = h.shape
        q, k, v = (p(h).view(B, L, 4, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        _, ref_w = qgfd_hf.qgfd_attention_reference(q, k, v, return_weights=True, **settings)
    torch.testing.assert_close(out.attentions[0], ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.last_hidden_state, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ref_w, torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1), atol=1e-3)
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(2, 4, L))


def test_t5_keeps_relative_position_bias_and_scale_one(t5):
    settings = dict(steps=2, alpha=0.5)
    m = patched(t5, **settings)
    attn = m.encoder.block[0].layer[0].SelfAttention
    seen, handle = _inputs_of(attn)
    with torch.no_grad():
        out = m(input_ids=gen_ids(), decoder_input_ids=gen_ids(length=4), output_attentions=True)
        handle.remove()
        h = seen["args"][0]
        B, L, _ = h.shape
        q, k, v = (p(h).view(B, L, 4, 8).transpose(1, 2) for p in (attn.q, attn.k, attn.v))
        bias = attn.compute_bias(L, L)  # (1, H, L, L)
        _, ref_w = qgfd_hf.qgfd_attention_reference(q, k, v, attn_mask=bias, scale=1.0, return_weights=True, **settings)
    torch.testing.assert_close(out.encoder_attentions[0], ref_w, rtol=1e-5, atol=1e-6)


def test_wavlm_module_level_qgfd_is_the_reference_on_the_layer_inputs():
    """WavLM computes attention itself (torch's fused multi-head attention with a gated relative
    position bias); QGFD takes over that method on each layer instance."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    config = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, num_buckets=8, max_bucket_distance=16, hidden_dropout=0.0,
                         attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    m = qgfd_hf.patch_model(WavLMModel(config).eval(), steps=2, alpha=0.5, mix="recurrent")
    attn = m.encoder.layers[1].attention
    seen = {}
    original = type(attn).torch_multi_head_self_attention
    qgfd_method = attn.torch_multi_head_self_attention
    attn.torch_multi_head_self_attention = lambda h, mask, bias: seen.update(h=h, bias=bias) or qgfd_method(h, mask, bias)
    x = torch.randn(1, 1600, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m(x)
        out, _ = qgfd_method(seen["h"], None, seen["bias"])
        plain, _ = original(attn, seen["h"], None, seen["bias"])
        h, (B, L, _) = seen["h"], seen["h"].shape
        q, k, v = (p(h).view(B, L, 4, 8).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        ref = qgfd_hf.qgfd_attention_reference(q, k, v, steps=2, alpha=0.5, mix="recurrent", scale=8**-0.5,
                                               attn_mask=seen["bias"].view(B, 4, L, L))
        ref = attn.out_proj(ref.transpose(1, 2).reshape(B, L, 32))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, plain, atol=1e-4)
    qgfd_hf.unpatch_model(m)
    assert "torch_multi_head_self_attention" not in m.encoder.layers[0].attention.__dict__


# ----------------------------------------------------------------------------------------
# Decoders: causality, generate() with the cache, padding
# ----------------------------------------------------------------------------------------

GRAPH_SETTINGS = [
    dict(steps=2, alpha=0.5, graph="attention"),
    dict(steps=3, alpha=0.7, graph="keys", mix="recurrent", key_temperature=0.5),
]


@pytest.mark.parametrize("settings", GRAPH_SETTINGS)
def test_decoders_are_exactly_causal(settings, t5, llama):
    ids = gen_ids(length=8)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % 97 + 3
    m = patched(llama, **settings)
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, m(input_ids=changed).logits
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])
    m = patched(t5, **settings)
    enc = gen_ids(length=6, seed=5)
    with torch.no_grad():
        a = m(input_ids=enc, decoder_input_ids=ids).logits
        b = m(input_ids=enc, decoder_input_ids=changed).logits
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


def _t5_cached_vs_full(m, ids, **gen_kwargs):
    out = m.generate(ids, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
                     **gen_kwargs)
    with torch.no_grad():
        full = m(input_ids=ids, decoder_input_ids=out.sequences[:, :-1], use_cache=False).logits
    return torch.stack(out.logits, 1), full, out.sequences


@pytest.mark.parametrize("settings", GRAPH_SETTINGS)
def test_t5_generate_cached_equals_full_forward(settings, t5):
    m = patched(t5, **settings)
    cached, full, _ = _t5_cached_vs_full(m, gen_ids())
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def _llama_left_padded():
    ids = gen_ids(length=7)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


@pytest.mark.parametrize("settings", GRAPH_SETTINGS)
def test_llama_generate_cached_equals_full_forward_with_left_padding(settings, llama):
    m = patched(llama, **settings)
    ids, mask = _llama_left_padded()
    out = m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True,
                     return_dict_in_generate=True)
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=mask.dtype)], 1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = m(input_ids=out.sequences, attention_mask=full_mask, position_ids=position_ids).logits
    torch.testing.assert_close(torch.stack(out.logits, 1), full[:, ids.shape[1] - 1 : -1], rtol=0, atol=1e-5)


def test_fresh_generate_does_not_reuse_stale_values(llama):
    m = patched(llama, steps=2, alpha=0.6)
    a, b = gen_ids(seed=11), gen_ids(seed=12)
    first = m.generate(a, max_new_tokens=5, do_sample=False)
    m.generate(b, max_new_tokens=7, do_sample=False)
    again = m.generate(a, max_new_tokens=5, do_sample=False)
    fresh = patched(llama, steps=2, alpha=0.6).generate(a, max_new_tokens=5, do_sample=False)
    assert torch.equal(first, again) and torch.equal(first, fresh)


def test_t5_beam_search_cached_equals_uncached():
    m = patched(tiny_t5(initializer_factor=3.0), steps=2, alpha=0.5)
    ids = gen_ids(batch=2, length=6)
    kw = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False, output_scores=True,
              return_dict_in_generate=True)
    cached = m.generate(ids, **kw)
    uncached = m.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, rtol=1e-4, atol=1e-4)
    assert len(set(map(tuple, cached.sequences.tolist()))) > 2  # the beams differ: reorders happened


def test_cache_layer_keeps_propagated_values_in_step_with_its_edits():
    layer = DynamicLayer()
    k = torch.randn(2, 1, 5, 4)
    layer.update(k, k.clone())
    layer = patching_cache_qgfd._qgfd_layer(layer)
    assert isinstance(layer, QGFDDynamicLayer)
    w = torch.arange(2 * 5, dtype=torch.float).view(2, 1, 5, 1)
    layer._qgfd_propagated = patching_cache_qgfd._Propagated((w,), 5)
    layer.reorder_cache(torch.tensor([1, 1]))
    assert torch.equal(layer._qgfd_propagated.values[0], w[[1, 1]])
    layer.batch_repeat_interleave(2)
    assert layer._qgfd_propagated.values[0].shape[0] == 4
    layer.batch_select_indices(torch.tensor([0, 3]))
    assert layer._qgfd_propagated.values[0].shape[0] == 2
    layer.crop(-2)
    assert layer._qgfd_propagated.length == layer.get_seq_length() == 3
    layer.reset()
    assert layer._qgfd_propagated is None


def tiny_sliding(arch):
    """A decoder whose layers use sliding-window attention (window 4, shorter than the sequences)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=100, sliding_window=4)
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(**kw)).eval()
    return Gemma3ForCausalLM(Gemma3TextConfig(head_dim=8, layer_types=["sliding_attention", "full_attention"], **kw)).eval()


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma3"])
@pytest.mark.parametrize("graph", ["attention", "keys"])
def test_sliding_window_and_static_caches_generate_exactly_the_full_forward(arch, cache_implementation, graph, llama):
    base = llama if arch == "llama" else tiny_sliding(arch)
    m = patched(base, steps=2, alpha=0.6, graph=graph)
    ids = gen_ids()
    out = m.generate(ids, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True,
                     cache_implementation=cache_implementation)
    with torch.no_grad():
        full = m(input_ids=out.sequences).logits[:, ids.shape[1] - 1 : -1]
    torch.testing.assert_close(torch.stack(out.logits, 1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_sliding_window_layers_are_causal(arch):
    # (QGFD reaches further back than the window: each power of P adds a window, P^k V carries it.)
    m = patched(tiny_sliding(arch), steps=3, alpha=0.7)
    ids = gen_ids(length=10)
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 7) % 97 + 3
    with torch.no_grad():
        a, b = m(input_ids=ids).logits, m(input_ids=changed).logits
    assert torch.equal(a[:, :6], b[:, :6]) and not torch.allclose(a[:, 6:], b[:, 6:])


def test_static_cache_beam_search_and_reuse(llama):
    m = patched(llama, steps=2, alpha=0.6)
    kw = dict(max_new_tokens=5, num_beams=2, do_sample=False)
    assert torch.equal(m.generate(gen_ids(), cache_implementation="static", **kw), m.generate(gen_ids(), **kw))


def test_soft_capping_is_refused_at_patch_time_on_every_route():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, vocab_size=100)
    with pytest.raises(ValueError, match="Gemma2.*soft-capping.*attn_logit_softcapping"):
        qgfd_hf.patch_model(Gemma2ForCausalLM(config))
    m = Gemma2ForCausalLM(config)
    with pytest.raises(ValueError, match="soft-capping"):
        m.set_attn_implementation("qgfd")
    assert not qgfd_hf.is_qgfd_patched(m) and m.config._attn_implementation != "qgfd"
    config.attn_logit_softcapping = None  # the documented way out
    assert qgfd_hf.is_qgfd_patched(qgfd_hf.patch_model(Gemma2ForCausalLM(config)))


def test_t5_padding_equals_unpadded(t5):
    m = patched(t5, steps=2, alpha=0.5)
    ids = gen_ids(batch=2, length=8)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    dec = gen_ids(batch=2, length=4, seed=9)
    with torch.no_grad():
        batch = m(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        alone = m(input_ids=ids[1:, :5], decoder_input_ids=dec[1:])
    torch.testing.assert_close(batch.encoder_last_hidden_state[1, :5], alone.encoder_last_hidden_state[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch.logits[1], alone.logits[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("settings", GRAPH_SETTINGS)
def test_llama_left_padding_equals_unpadded(settings, llama):
    m = patched(llama, **settings)
    ids, mask = _llama_left_padded()
    with torch.no_grad():
        batch = m(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        alone = m(input_ids=ids[1:, 3:]).logits
    torch.testing.assert_close(batch[1, 3:], alone[0], rtol=0, atol=1e-5)


def test_wav2vec2_padding_equals_unpadded(wav2vec2):
    m = patched(wav2vec2, steps=2, alpha=0.5, graph="keys")
    audio = torch.randn(2, 1600, generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 1600, dtype=torch.long)
    audio[1, 1200:], mask[1, 1200:] = 0.0, 0
    with torch.no_grad():
        batch = m(audio, attention_mask=mask).last_hidden_state
        alone = m(audio[1:, :1200]).last_hidden_state
    n = alone.shape[1]
    torch.testing.assert_close(batch[1, :n], alone[0], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Settings on the config: save / load, set_attn_implementation, from_pretrained(attn_implementation=)
# ----------------------------------------------------------------------------------------


def test_save_pretrained_from_pretrained_gives_back_the_qgfd_model(t5, tmp_path):
    settings = dict(steps=2, alpha=0.3, graph="keys", mix="recurrent")
    m = patched(t5, **settings)
    m.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_implementation"] == "qgfd" and saved["qgfd"]["steps"] == 2
    loaded = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert qgfd_hf.is_qgfd_patched(loaded)
    assert qgfd_hf.get_qgfd_settings(loaded) == qgfd_hf.QGFDSettings(**settings)
    with torch.no_grad():
        assert torch.equal(run("t5", loaded), run("t5", m))
    # Generation from a loaded model: its layers meet the cache on their very first call.
    cached, full, seq = _t5_cached_vs_full(loaded, gen_ids())
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert torch.equal(seq, m.generate(gen_ids(), max_new_tokens=6, do_sample=False))


def test_from_pretrained_with_attn_implementation_and_set_attn_implementation(llama, tmp_path):
    plain = copy.deepcopy(llama)
    plain.config.qgfd = {"steps": 2, "alpha": 0.4}
    plain.save_pretrained(tmp_path)
    expected = patched(llama, steps=2, alpha=0.4)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="qgfd").eval()
    switched = copy.deepcopy(llama)
    switched.set_attn_implementation("qgfd")
    defaults = patched(llama)
    with torch.no_grad():
        assert torch.equal(run("llama", loaded), run("llama", expected))
        assert torch.equal(run("llama", switched), run("llama", defaults))
    out = loaded.generate(gen_ids(), max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = loaded(input_ids=out.sequences).logits[:, 6:-1]
    torch.testing.assert_close(torch.stack(out.logits, 1), full, rtol=0, atol=1e-5)
    assert qgfd_hf.is_qgfd_patched(switched)
    qgfd_hf.unpatch_model(switched)
    with torch.no_grad():
        assert torch.equal(run("llama", switched), run("llama", llama))


def test_vit_roundtrip_and_resave(vit, tmp_path):
    m = patched(vit, steps=1, alpha=0.5)
    m.save_pretrained(tmp_path / "a")
    loaded = qgfd_hf.from_pretrained_qgfd(ViTModel, tmp_path / "a").eval()
    loaded.save_pretrained(tmp_path / "b")
    again = ViTModel.from_pretrained(tmp_path / "b").eval()
    with torch.no_grad():
        assert torch.equal(run("vit", again), run("vit", m))


def tiny_clip():
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return CLIPModel(CLIPConfig(text_config=dict(tower, vocab_size=100), projection_dim=16,
                                vision_config=dict(tower, image_size=16, patch_size=8))).eval()


def _layer_settings(model):
    """{settings of the QGFD layers}: one element when every layer runs the same settings."""
    return {tuple(sorted(m.settings.to_dict().items())) for m in model.modules() if isinstance(m, qgfd_hf.QGFDAlpha)}


def _qgfd_layer_count(model):
    return sum(isinstance(m, qgfd_hf.QGFDAlpha) for m in model.modules())


@pytest.mark.parametrize("kind", ["t5", "clip", "llama"])
def test_save_load_cycles_keep_exactly_the_settings_with_or_without_a_forward(kind, t5, llama, tmp_path):
    original = {"t5": t5, "llama": llama}.get(kind) or tiny_clip()
    settings = qgfd_hf.QGFDSettings(steps=3, alpha=0.2, graph="keys", mix="recurrent", key_temperature=0.5)
    m = patched(original, **settings.to_dict())
    n_layers = _qgfd_layer_count(m)
    for cycle in range(3):
        m.save_pretrained(tmp_path / str(cycle))
        saved = json.loads((tmp_path / str(cycle) / "config.json").read_text())
        assert saved["attn_implementation"] == "qgfd" and saved["qgfd"] == settings.to_dict()
        m = type(original).from_pretrained(tmp_path / str(cycle)).eval()
        assert qgfd_hf.is_qgfd_patched(m) and qgfd_hf.get_qgfd_settings(m) == settings
        assert _qgfd_layer_count(m) == n_layers and _layer_settings(m) == {tuple(sorted(settings.to_dict().items()))}
        if cycle == 1 and kind != "clip":  # a forward in between changes nothing
            with torch.no_grad():
                run(kind, m)


def test_switching_a_qgfd_model_to_another_implementation_saves_that_one(t5, tmp_path):
    m = patched(t5, steps=2)
    m.set_attn_implementation("eager")
    assert not qgfd_hf.is_qgfd_patched(m) and _qgfd_layer_count(m) == 0
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_implementation"] == "eager"
    loaded = T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert not qgfd_hf.is_qgfd_patched(loaded) and loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(run("t5", loaded), run("t5", t5), rtol=0, atol=1e-5)  # eager vs sdpa rounding


@pytest.mark.parametrize("kind", ["t5", "clip"])
def test_settings_on_the_top_config_reach_every_nested_layer(kind, t5, tmp_path):
    """T5's stacks hold copies of the config, CLIP's towers their own sub-configs: the top config's
    `qgfd` still decides, on set_attn_implementation, on the config route and on from_pretrained_qgfd."""
    plain = copy.deepcopy(t5) if kind == "t5" else tiny_clip()
    want = {tuple(sorted(qgfd_hf.QGFDSettings(steps=4, alpha=0.1).to_dict().items()))}
    switched = copy.deepcopy(plain)
    switched.config.qgfd = {"steps": 4, "alpha": 0.1}
    switched.set_attn_implementation("qgfd")
    assert _layer_settings(switched) == want and _qgfd_layer_count(switched) == _qgfd_layer_count(patched(plain))
    plain.save_pretrained(tmp_path)
    config = type(plain.config).from_pretrained(tmp_path)
    config.qgfd = {"steps": 4, "alpha": 0.1}
    by_config = type(plain).from_pretrained(tmp_path, config=config, attn_implementation="qgfd")
    one_call = qgfd_hf.from_pretrained_qgfd(type(plain), tmp_path, qgfd={"steps": 4, "alpha": 0.1})
    assert _layer_settings(by_config) == _layer_settings(one_call) == want
    with pytest.raises(ValueError, match="stepz"):
        qgfd_hf.from_pretrained_qgfd(type(plain), tmp_path, qgfd={"stepz": 4})


def test_from_pretrained_qgfd_loads_a_plain_checkpoint_and_keeps_the_given_config(llama, tmp_path):
    llama.save_pretrained(tmp_path)
    config = LlamaConfig.from_pretrained(tmp_path)
    m = qgfd_hf.from_pretrained_qgfd(LlamaForCausalLM, tmp_path, config=config, qgfd={"steps": 2, "alpha": 0.4}).eval()
    assert "qgfd" not in config.__dict__ and config._attn_implementation != "qgfd"
    with torch.no_grad():
        assert torch.equal(run("llama", m), run("llama", patched(llama, steps=2, alpha=0.4)))
    learnable = qgfd_hf.from_pretrained_qgfd(LlamaForCausalLM, tmp_path, qgfd={"learnable_alpha": True, "alpha": 0.3})
    alphas = [m.qgfd_alpha() for m in learnable.modules() if hasattr(m, "qgfd_alpha")]
    assert len(alphas) == 2 and all(torch.allclose(a, torch.full((4,), 0.3)) for a in alphas)  # started, not garbage


def test_patch_model_leaves_the_config_it_was_built_from_alone():
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    before = config.to_dict()
    m = qgfd_hf.patch_model(LlamaForCausalLM(config), steps=2)
    assert qgfd_hf.is_qgfd_patched(m) and m.config is not config
    assert m.model.config is m.config and m.model.layers[0].self_attn.config is m.config  # still shared inside
    assert config.to_dict() == before and "qgfd" not in config.__dict__
    assert not qgfd_hf.is_qgfd_patched(LlamaForCausalLM(config))


def test_a_refused_switch_changes_nothing(vit):
    m = copy.deepcopy(vit)
    m.config.qgfd = {"stepz": 1}
    with pytest.raises(ValueError, match="stepz"):
        m.set_attn_implementation("qgfd")
    assert m.config._attn_implementation == vit.config._attn_implementation and not qgfd_hf.is_qgfd_patched(m)


# ----------------------------------------------------------------------------------------
# Every route prepares the layers before their first call: every generate mode works first time
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, llama):
    path = tmp_path_factory.mktemp("llama")
    llama.save_pretrained(path)
    return path


def _loaded_qgfd(path):
    return LlamaForCausalLM.from_pretrained(path, attn_implementation="qgfd").eval()


@pytest.mark.parametrize(
    "mode",
    [dict(num_beams=2), dict(num_beams=2, do_sample=True), dict(do_sample=True), "assisted", "assisted_attentions"],
)
def test_first_generate_works_in_every_mode_on_a_model_loaded_with_attn_implementation(mode, llama_folder, llama):
    m = _loaded_qgfd(llama_folder)
    ids = gen_ids(batch=1)
    if isinstance(mode, str):
        kw = dict(assistant_model=_loaded_qgfd(llama_folder), do_sample=False)
        if mode == "assisted_attentions":
            kw.update(output_attentions=True, return_dict_in_generate=True)
    else:
        kw = dict(mode)
    torch.manual_seed(0)
    out = m.generate(ids, max_new_tokens=5, min_new_tokens=5, **kw)
    seq = out.sequences if hasattr(out, "sequences") else out
    assert seq.shape == (1, 12)
    if isinstance(mode, str):  # assisted greedy == greedy of the same QGFD model
        assert torch.equal(seq, patched(llama).generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False))
    if mode == "assisted_attentions":
        assert all(w is not None for step in out.attentions for w in step)


def test_first_forward_with_a_cropped_or_reordered_cache(llama_folder):
    from transformers import DynamicCache

    m = _loaded_qgfd(llama_folder)
    ids = gen_ids(length=9)
    with torch.no_grad():
        full = m(ids).logits
        cache = DynamicCache(config=m.config)
        m(ids[:, :7], cache=cache)
        cache.crop(-2)
        cropped = m(ids[:, 5:], cache=cache).logits
        cache = DynamicCache(config=m.config)
        m(ids[:, :6].flip(0), cache=cache)
        cache.reorder_cache(torch.tensor([1, 0]))
        reordered = m(ids[:, 6:], cache=cache).logits
    torch.testing.assert_close(cropped, full[:, 5:], rtol=0, atol=1e-5)
    torch.testing.assert_close(reordered, full[:, 6:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt_neox", "gpt_bigcode"])
def test_layer_past_decoders_generate_with_the_cache(arch):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    if arch == "gpt_neox":
        m = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, vocab_size=100))
    else:
        m = GPTBigCodeForCausalLM(GPTBigCodeConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=100))
    m = qgfd_hf.patch_model(m.eval(), steps=2, alpha=0.6)
    out = m.generate(gen_ids(), max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = m(out.sequences).logits[:, 6:-1]
    torch.testing.assert_close(torch.stack(out.logits, 1), full, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Half precision, output_attentions
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("graph", ["attention", "keys"])
def test_half_precision_left_padded_batch_is_finite_and_close_to_fp32(dtype, graph, llama):
    m32 = patched(llama, steps=2, alpha=0.5, graph=graph)
    m16 = copy.deepcopy(m32).to(dtype)
    ids, mask = _llama_left_padded()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = m32(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        b = m16(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits.float()
    assert torch.isfinite(b).all()
    assert (b[1, 3:] - a[1, 3:]).norm() / a[1, 3:].norm() < 5e-2


def test_key_graph_of_an_all_zero_key_is_finite_in_fp16():
    q = torch.randn(1, 2, 4, 8, dtype=torch.float16)
    k = q.clone()
    k[:, :, 0] = 0  # a padded key
    out = qgfd_hf.qgfd_attention(q, k, q, steps=2, alpha=0.5, graph="keys")
    ref = qgfd_hf.qgfd_attention_reference(q.float(), k.float(), q.float(), steps=2, alpha=0.5, graph="keys")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("graph", ["attention", "keys"])
def test_output_attentions_in_cached_steps_equal_the_full_forward_weights(graph, llama):
    m = patched(llama, steps=2, alpha=0.6, graph=graph)
    ids, mask = _llama_left_padded()
    out = m.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, output_attentions=True,
                     return_dict_in_generate=True)
    full_mask = torch.cat([mask, torch.ones(2, 4, dtype=mask.dtype)], 1)[:, :-1]
    with torch.no_grad():
        full = m(input_ids=out.sequences[:, :-1], attention_mask=full_mask,
                 position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0), output_attentions=True).attentions
    L = ids.shape[1]
    for t, step in enumerate(out.attentions[1:], start=1):  # the cached steps: one query each
        for layer, w in enumerate(step):
            assert w.shape == (2, 4, 1, L + t)
            torch.testing.assert_close(w, full[layer][:, :, L + t - 1 : L + t, : L + t], rtol=0, atol=1e-5)
    # the prefill's rows of real tokens
    torch.testing.assert_close(out.attentions[0][0][0], full[0][0, :, :L, :L], rtol=0, atol=1e-5)


def test_config_output_attentions_is_accepted_and_honoured(llama_folder, tmp_path):
    m = _loaded_qgfd(llama_folder)
    m.config.output_attentions = True  # transformers refuses this for any implementation but eager
    with torch.no_grad():
        out = m(input_ids=gen_ids())
    assert len(out.attentions) == 2 and all(torch.isfinite(w).all() for w in out.attentions)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 7))
    # A config that already carries it (saved that way) returns them too.
    m.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.output_attentions and qgfd_hf.is_qgfd_patched(again)
    with torch.no_grad():
        assert torch.equal(again(input_ids=gen_ids()).attentions[1], out.attentions[1])


# ----------------------------------------------------------------------------------------
# Learnable alpha, warm-up, training
# ----------------------------------------------------------------------------------------


def test_learnable_alpha_adds_one_parameter_per_layer_and_reloads(vit, tmp_path):
    m = patched(vit, learnable_alpha=True, alpha=0.3, alpha_max=0.8)
    new = sorted(set(m.state_dict()) - set(vit.state_dict()))
    assert new == [f"layers.{i}.attention.qgfd_alpha.logit" for i in range(2)]
    m.train()
    run("vit", m).pow(2).mean().backward()
    assert all(m.get_parameter(n).grad.abs().sum() > 0 for n in new)
    with torch.no_grad():
        m.get_parameter(new[0]).add_(0.5)
    m.eval().save_pretrained(tmp_path)
    loaded = qgfd_hf.from_pretrained_qgfd(ViTModel, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(run("vit", loaded), run("vit", m))
    # Plain from_pretrained builds the alphas with the model, so it loads the learned values too.
    plain_load = ViTModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(plain_load.get_parameter(new[0]), m.get_parameter(new[0]))
        assert torch.equal(run("vit", plain_load), run("vit", m))


def test_warmup_follows_set_qgfd_step(llama):
    warm = patched(llama, alpha=0.6, steps=2, warmup_steps=10).train()
    assert qgfd_hf.set_qgfd_step(warm, 0) == 2
    with torch.no_grad():
        torch.testing.assert_close(run("llama", warm), run("llama", llama), rtol=0, atol=1e-6)
        qgfd_hf.set_qgfd_step(warm, 5)
        torch.testing.assert_close(run("llama", warm), run("llama", patched(llama, alpha=0.3, steps=2)), rtol=0, atol=1e-6)
        qgfd_hf.set_qgfd_step(warm, 0)
        warm.eval()  # eval uses the full alpha
        torch.testing.assert_close(run("llama", warm), run("llama", patched(llama, alpha=0.6, steps=2)), rtol=0, atol=1e-6)


def _grads(model, enable_checkpointing):
    model.train()
    if enable_checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.gradient_checkpointing_enable()
    model.zero_grad()
    labels = gen_ids(length=5, seed=8)
    if isinstance(model, T5ForConditionalGeneration):
        loss = model(input_ids=gen_ids(), labels=labels).loss
    else:
        loss = model(input_ids=labels, labels=labels).loss
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_backward_and_gradient_checkpointing_give_the_same_grads(kind, model_of):
    settings = dict(steps=2, alpha=0.5, warmup_steps=4)
    a, b = patched(model_of[kind], **settings), patched(model_of[kind], **settings)
    qgfd_hf.set_qgfd_step(a, 3)
    qgfd_hf.set_qgfd_step(b, 3)
    ga, gb = _grads(a, False), _grads(b, True)
    assert set(ga) == set(gb) and len(ga) == len(list(a.parameters()))
    for n in ga:
        assert torch.isfinite(ga[n]).all()
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_forward_backward(kind, model_of):
    m = patched(model_of[kind], steps=2, alpha=0.5).train()
    with torch.no_grad():
        ref = run(kind, m).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(kind, m)
    out.float().pow(2).mean().backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert (out.float() - ref).norm() / ref.norm() < 5e-2


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


class _NoAttentionConfig(PreTrainedConfig):
    model_type = "qgfd-test-no-attention"


class _NoAttentionModel(PreTrainedModel):
    config_class = _NoAttentionConfig

    def __init__(self, config):
        super().__init__(config)
        self.linear = nn.Linear(4, 4)
        self.post_init()

    def forward(self, x):
        return self.linear(x)


def test_model_without_attention_is_refused_with_what_is_supported():
    with pytest.raises(ValueError, match="no attention layer.*T5.*ViT.*Wav2Vec2"):
        qgfd_hf.patch_model(_NoAttentionModel(_NoAttentionConfig()))
    with pytest.raises(ValueError, match="PreTrainedModel.*T5"):
        qgfd_hf.patch_model(nn.Linear(3, 3))


@pytest.mark.parametrize(
    "settings",
    [dict(alpha=1.5), dict(steps=-1), dict(steps=1.5), dict(graph="dense"), dict(mix="avg"),
     dict(key_temperature=0.0), dict(warmup_steps=-2), dict(learnable_alpha=True, alpha=0.9, alpha_max=0.5),
     dict(stepz=2)],
)
def test_invalid_settings_raise_value_error(settings, vit):
    m = copy.deepcopy(vit)
    with pytest.raises(ValueError):
        qgfd_hf.patch_model(m, **settings)
    assert not qgfd_hf.is_qgfd_patched(m)


def test_patching_twice_same_settings_is_a_no_op_other_settings_raise(vit):
    m = patched(vit, steps=2, alpha=0.4)
    alphas = [mod for n, mod in m.named_modules() if n.endswith("qgfd_alpha")]
    assert qgfd_hf.patch_model(m) is m
    assert qgfd_hf.patch_model(m, steps=2, alpha=0.4) is m
    assert [mod for n, mod in m.named_modules() if n.endswith("qgfd_alpha")] == alphas
    with pytest.raises(ValueError, match="unpatch_model"):
        qgfd_hf.patch_model(m, steps=3)
    qgfd_hf.unpatch_model(m)
    with pytest.raises(ValueError, match="nothing to unpatch"):
        qgfd_hf.unpatch_model(m)


@pytest.mark.parametrize("module", [patching_qgfd, patching_layers_qgfd, patching_cache_qgfd, patching_forward_qgfd,
                                    patching_modules_qgfd, patching_hooks_qgfd], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    if module in (patching_qgfd, patching_layers_qgfd, patching_cache_qgfd, patching_forward_qgfd):
        assert result.attempted > 0


def test_compiled_static_cache_generation_equals_eager():
    """Issue 11: static caches make compiled `generate()` work at alpha > 0. Dynamo traces the
    patched forward (backend="eager": the graph capture without inductor's code generation, so
    the test stays fast on CPU; inductor gave the same tokens in a manual run)."""
    import torch._dynamo
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    qgfd_hf.patch_model(model, steps=1, alpha=0.5)
    ids = torch.randint(3, 64, (2, 6))
    eager = model.generate(ids, max_new_tokens=3, do_sample=False, cache_implementation="static")
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, backend="eager")
    try:
        compiled = model.generate(ids, max_new_tokens=3, do_sample=False, cache_implementation="static")
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled, eager)
