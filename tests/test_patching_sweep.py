"""The architecture sweep: QGFD on every kind of model transformers ships, from tiny configs.

Each architecture (causal LMs, encoders, encoder-decoders, vision, audio) is built in-process
(hidden 32, 2 layers, 4 heads, short inputs; nothing downloaded). Which of them QGFD can run on
depends on the transformers release (an architecture whose attention bypasses transformers'
attention interface, soft-caps its logits or has no attention cannot take it; Falcon moved onto the
interface in 5.25), so the sweep states what must hold for every one, on any release:

either it really runs QGFD:
- alpha = 0: the original model's outputs (1e-6);
- alpha > 0: different outputs;
- decoders: exact causality; cached greedy generation == a full forward (1e-5); cached beam
  search == uncached beam search;
- padding: a padded row equals the same row alone (1e-5);
- save -> load -> save -> load: exactly the settings, and the same outputs;

or it is refused on every route (`patch_model`, `set_attn_implementation`,
`from_pretrained(..., attn_implementation="qgfd")`, `from_pretrained_qgfd`) with an error naming
the architecture, the layer class (or the reason) and what is supported, and left plain.

GPT-Neo and WavLM, whose attention bypasses the interface, get QGFD at module level. The models
the package promises on every release (MUST_RUN_QGFD: T5, ViT, Wav2Vec2, ...) must run it.
"""

import copy
import inspect
import json
import re

import pytest
import torch
import transformers

import qgfd_hf

# `import qgfd_hf` leaves transformers alone; transformers' own routes to "qgfd" (attn_implementation="qgfd",
# Model(config), set_attn_implementation) need it registered first, as a user does.
qgfd_hf.register_qgfd_attention()

SETTINGS = dict(steps=2, alpha=0.6, graph="keys", mix="recurrent")

LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
          max_position_embeddings=64)
GQA = dict(LM, num_key_value_heads=2)
ENC = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
           max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BART = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100, max_position_embeddings=64, dropout=0.0,
            attention_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=100, dropout_rate=0.0,
          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
VIS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
           patch_size=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
AUDIO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
             conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
             hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
             mask_time_prob=0.0)
CLIP_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

# name: (model class, config class, config kwargs, kind)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", GQA, "causal"),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(GQA, sliding_window=4), "causal"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", GQA, "causal"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(GQA, head_dim=8), "causal"),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(GQA, head_dim=8), "causal"),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
               dict(GQA, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]), "causal"),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(GQA, pad_token_id=0), "causal"),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=64,
                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), "causal"),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", LM, "causal"),
    "gpt_bigcode": ("GPTBigCodeForCausalLM", "GPTBigCodeConfig", dict(n_embd=32, n_layer=2, n_head=4, vocab_size=100,
                                                                      n_positions=64), "causal"),
    "opt": ("OPTForCausalLM", "OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                                vocab_size=100, max_position_embeddings=64, word_embed_proj_dim=32,
                                                dropout=0.0, attention_dropout=0.0), "causal"),
    "bert": ("BertModel", "BertConfig", ENC, "encoder"),
    "roberta": ("RobertaModel", "RobertaConfig", ENC, "encoder"),
    "electra": ("ElectraModel", "ElectraConfig", dict(ENC, embedding_size=32), "encoder"),
    "distilbert": ("DistilBertModel", "DistilBertConfig", dict(dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                                                               vocab_size=100, max_position_embeddings=64,
                                                               dropout=0.0, attention_dropout=0.0), "encoder"),
    "t5": ("T5ForConditionalGeneration", "T5Config", T5, "encdec"),
    "mt5": ("MT5ForConditionalGeneration", "MT5Config", T5, "encdec"),
    "umt5": ("UMT5ForConditionalGeneration", "UMT5Config", T5, "encdec"),
    "bart": ("BartForConditionalGeneration", "BartConfig", BART, "encdec"),
    "marian": ("MarianMTModel", "MarianConfig", BART, "encdec"),
    "vit": ("ViTModel", "ViTConfig", VIS, "vision"),
    "deit": ("DeiTModel", "DeiTConfig", VIS, "vision"),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(VIS, mlp_ratio=2), "vision"),
    "clip": ("CLIPModel", "CLIPConfig", dict(text_config=dict(CLIP_TOWER, vocab_size=100), projection_dim=16,
                                             vision_config=dict(CLIP_TOWER, image_size=16, patch_size=8)), "clip"),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", dict(CLIP_TOWER, image_size=16, patch_size=8), "vision"),
    "wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Config", dict(AUDIO, feat_extract_norm="layer", do_stable_layer_norm=True),
                 "audio"),
    "hubert": ("HubertModel", "HubertConfig", dict(AUDIO, feat_extract_norm="layer", do_stable_layer_norm=True), "audio"),
    # module-level QGFD (GPT-Neo's and WavLM's attention bypasses the interface); GPT-Neo's local layers window 4
    "gpt_neo": ("GPTNeoForCausalLM", "GPTNeoConfig", dict(hidden_size=32, num_layers=2, num_heads=4, vocab_size=100,
                                                          max_position_embeddings=64, window_size=4,
                                                          attention_types=[[["global", "local"], 1]]), "causal"),
    "wavlm": ("WavLMModel", "WavLMConfig", dict(AUDIO, feat_extract_norm="layer", do_stable_layer_norm=True,
                                                num_buckets=8, max_bucket_distance=16), "audio"),
}

# Architectures that some transformers releases refuse: their attention bypasses the interface (in 5.24:
# BLOOM, Falcon, XGLM, DeBERTa-v2, MPNet, LongT5's local attention), soft-caps its logits (Gemma2), or has
# none (Mamba). Which of them QGFD can run on changes between releases (Falcon moved to the interface
# in 5.25), so the sweep does not say which is which: each one is either refused on every route or
# passes every check above.
ARCHITECTURES.update({
    "bloom": ("BloomForCausalLM", "BloomConfig", dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=100), "causal"),
    "falcon": ("FalconForCausalLM", "FalconConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                         vocab_size=100), "causal"),
    "xglm": ("XGLMForCausalLM", "XGLMConfig", dict(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                                   vocab_size=100), "causal"),
    "deberta_v2": ("DebertaV2Model", "DebertaV2Config", ENC, "encoder"),
    "mpnet": ("MPNetModel", "MPNetConfig", ENC, "encoder"),
    "longt5": ("LongT5ForConditionalGeneration", "LongT5Config", T5, "encdec"),
    "gemma2_softcap": ("Gemma2ForCausalLM", "Gemma2Config", dict(GQA, head_dim=8), "causal"),
    "mamba": ("MambaForCausalLM", "MambaConfig", dict(hidden_size=32, num_hidden_layers=2, vocab_size=100), "causal"),
})

# What the package promises whatever the release: the seed's three models and the common families run QGFD.
MUST_RUN_QGFD = {"t5", "vit", "wav2vec2", "llama", "bert", "gpt2", "bart"}


def build(spec):
    model_class, config_class, kwargs, _ = spec
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**copy.deepcopy(kwargs))
    return getattr(transformers, model_class)(config).eval()


# ----------------------------------------------------------------------------------------
# Inputs and outputs per kind
# ----------------------------------------------------------------------------------------

G = torch.Generator().manual_seed(0)
IDS = torch.randint(3, 100, (2, 8), generator=G)
DEC = torch.randint(3, 100, (2, 5), generator=G)
PIXELS = torch.randn(2, 3, 16, 16, generator=G)
AUDIO_IN = torch.randn(2, 1600, generator=G)


def forward(kind, model, ids=IDS, **extra):
    """The model's main output on the sweep's inputs (the decoder's: one row of DEC per row of ids), as one tensor."""
    if kind == "causal":
        return model(input_ids=ids, **extra).logits
    if kind == "encoder":
        return model(input_ids=ids, **extra).last_hidden_state
    if kind == "encdec":
        return model(input_ids=ids, decoder_input_ids=DEC[-ids.shape[0] :], **extra).logits
    if kind == "vision":
        return model(pixel_values=PIXELS, **extra).last_hidden_state
    if kind == "clip":
        out = model(input_ids=ids, pixel_values=PIXELS, **extra)
        return torch.cat([out.text_embeds, out.image_embeds], 0)
    return model(input_values=AUDIO_IN, **extra).last_hidden_state


def settings_of(model):
    return {tuple(sorted(m.settings.to_dict().items())) for m in model.modules() if isinstance(m, qgfd_hf.QGFDAlpha)}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_sweep(name, tmp_path):
    """Every architecture either really runs QGFD (every check below) or is refused on every route."""
    spec = ARCHITECTURES[name]
    base = build(spec)
    try:
        qgfd_hf.patch_model(copy.deepcopy(base), steps=2, alpha=0.0)
    except ValueError as refusal:
        assert name not in MUST_RUN_QGFD, f"{name} must run QGFD: {refusal}"
        check_refused_on_every_route(spec, base, refusal, tmp_path)
    else:
        check_runs_qgfd(name, spec, base, tmp_path)


def check_runs_qgfd(name, spec, base, tmp_path):
    kind = spec[3]
    with torch.no_grad():
        ref = forward(kind, base)

        # 1. alpha = 0 is the original model; alpha > 0 changes it.
        zero = qgfd_hf.patch_model(copy.deepcopy(base), steps=2, alpha=0.0)
        torch.testing.assert_close(forward(kind, zero), ref, rtol=0, atol=1e-6)
        m = qgfd_hf.patch_model(copy.deepcopy(base), **SETTINGS)
        out = forward(kind, m)
        assert qgfd_hf.is_qgfd_patched(m) and not qgfd_hf.is_qgfd_patched(base)
        assert (out - ref).abs().max() > 1e-4, f"{name}: QGFD did not change the outputs"

    # 2. Decoders: causal, cached greedy == full forward, cached beam == uncached beam.
    if kind in ("causal", "encdec"):
        changed = IDS.clone()
        changed[:, 5:] = (changed[:, 5:] + 7) % 97 + 3
        with torch.no_grad():
            if kind == "causal":
                a, b = forward(kind, m), forward(kind, m, ids=changed)
            else:
                a = m(input_ids=IDS, decoder_input_ids=IDS).logits
                b = m(input_ids=IDS, decoder_input_ids=changed).logits
        assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])

        ids = IDS[:, :6]
        gen = m.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
        with torch.no_grad():
            if kind == "causal":
                full = m(input_ids=gen.sequences).logits[:, ids.shape[1] - 1 : -1]
            else:
                full = m(input_ids=ids, decoder_input_ids=gen.sequences[:, :-1]).logits
        torch.testing.assert_close(torch.stack(gen.logits, 1), full, rtol=0, atol=1e-5)
        beam = dict(max_new_tokens=4, min_new_tokens=4, num_beams=2, do_sample=False)
        assert torch.equal(m.generate(ids, **beam), m.generate(ids, use_cache=False, **beam))

    # 3. Padding: a padded row equals the row alone.
    if kind == "audio":
        mask = torch.ones(2, 1600, dtype=torch.long)
        padded = AUDIO_IN.clone()
        padded[1, 1200:], mask[1, 1200:] = 0.0, 0
        with torch.no_grad():
            batch = m(input_values=padded, attention_mask=mask).last_hidden_state
            alone = m(input_values=AUDIO_IN[1:, :1200]).last_hidden_state
        torch.testing.assert_close(batch[1, : alone.shape[1]], alone[0], rtol=0, atol=1e-5)
    if kind in ("causal", "encoder", "encdec"):
        mask = torch.ones_like(IDS)
        padded = IDS.clone()
        extra, alone_ids = {}, IDS[1:, 3:]
        if kind == "causal":  # left padding, positions counted from the first real token
            padded[1, :3], mask[1, :3] = 0, 0
            if "position_ids" in inspect.signature(m.forward).parameters:
                extra["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = slice(3, None)
        else:  # right padding
            padded[1, 5:], mask[1, 5:] = 0, 0
            alone_ids, keep = IDS[1:, :5], slice(0, 5)
        with torch.no_grad():
            batch = forward(kind, m, ids=padded, attention_mask=mask, **extra)
            alone = forward(kind, m, ids=alone_ids)
        if kind == "encdec":
            torch.testing.assert_close(batch[1], alone[0], rtol=0, atol=1e-5)
        else:
            torch.testing.assert_close(batch[1, keep], alone[0], rtol=0, atol=1e-5)

    # 4. save -> load -> save -> load: the settings, exactly, and the same outputs.
    want = {tuple(sorted(qgfd_hf.QGFDSettings(**SETTINGS).to_dict().items()))}
    loaded = m
    for cycle in range(2):
        loaded.save_pretrained(tmp_path / str(cycle))
        saved = json.loads((tmp_path / str(cycle) / "config.json").read_text())
        assert saved["attn_implementation"] == "qgfd" and saved["qgfd"] == qgfd_hf.QGFDSettings(**SETTINGS).to_dict()
        loaded = type(m).from_pretrained(tmp_path / str(cycle)).eval()
        assert settings_of(loaded) == want and qgfd_hf.is_qgfd_patched(loaded)
    with torch.no_grad():
        torch.testing.assert_close(forward(kind, loaded), out, rtol=0, atol=1e-6)


def check_refused_on_every_route(spec, m, refusal, tmp_path):
    """The refusal names the architecture, the layer class (or why: soft-capping, no attention) and what
    is supported; `set_attn_implementation`, `from_pretrained(attn_implementation="qgfd")` and
    `from_pretrained_qgfd` refuse too, and the model is left plain."""
    model_class = spec[0]
    message = str(refusal)
    assert model_class in message, message  # the architecture
    assert "AttentionInterface" in message and "T5" in message, message  # what is supported
    layer_classes = {type(module).__name__ for module in m.modules() if re.search("Attention|Attn", type(module).__name__)}
    named = [c for c in layer_classes if c in message] + [w for w in ("soft-capping", "no attention layer") if w in message]
    assert named, f"the refusal names no attention layer class of the model nor a reason: {message}"
    reason = "|".join(map(re.escape, named))  # each route names one of them
    with pytest.raises(ValueError, match=reason):
        m.set_attn_implementation("qgfd")
    assert not qgfd_hf.is_qgfd_patched(m) and m.config._attn_implementation != "qgfd"
    m.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=reason):
        getattr(transformers, model_class).from_pretrained(tmp_path, attn_implementation="qgfd")
    with pytest.raises(ValueError, match=reason):
        qgfd_hf.from_pretrained_qgfd(getattr(transformers, model_class), tmp_path, qgfd={"steps": 1})
