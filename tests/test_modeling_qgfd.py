"""Tests of the QGFD diffusion models (qgfd_hf/modeling_qgfd*.py).

Everything is built in-process from tiny configs (width 32, 2 layers, 4 heads); the
pretrained backbones are random tiny T5 / ViT / Wav2Vec2 models, saved to a temporary
folder where a test needs `from_pretrained`. Nothing touches the network.
"""

import json
import math
import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration, ViTConfig, Wav2Vec2Config

import qgfd_hf
from qgfd_hf import (
    AudioQGFDDiffusionModel,
    DecoderBlock,
    DiffusionConfig,
    EncoderBlock,
    ImageQGFDDiffusionModel,
    PositionwiseFFN,
    QGFDAudioConfig,
    QGFDDiffusionBackbone,
    QGFDImageConfig,
    QGFDSharedConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
    SharedQGFDDiffusionModel,
    TabularQGFDDiffusionModel,
    TextQGFDDiffusionModel,
    TimestepEmbedding,
    VideoQGFDDiffusionModel,
    create_qgfd_diffusion_model,
)

TINY = dict(d_model=32, num_heads=4, num_layers=2, d_ff=64)
WORDS = "hello world query graph flow diffusion the a of on in up down left right red blue green".split()


# ----------------------------------------------------------------------------------------
# Tiny backbones, an offline tokenizer, batches
# ----------------------------------------------------------------------------------------


def make_tokenizer():
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def t5_config():
    return T5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def vit_config():
    return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     image_size=16, patch_size=4, num_channels=3)


def w2v2_config():
    return Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                          num_conv_pos_embedding_groups=4, vocab_size=12)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny random T5 and its tokenizer, saved as `from_pretrained` expects them."""
    path = tmp_path_factory.mktemp("tiny-t5")
    torch.manual_seed(0)
    T5ForConditionalGeneration(t5_config()).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


def text_batch(n=4):
    tok = make_tokenizer()
    targets = ["hello world", "query graph flow diffusion", "red blue green", "up down left right"][:n]
    sources = ["world hello", "diffusion flow graph query", "green blue red", "right left down up"][:n]
    tgt = tok(targets, return_tensors="pt", padding=True)
    src = tok(sources, return_tensors="pt", padding=True)
    return {"input_ids": tgt["input_ids"], "attention_mask": tgt["attention_mask"],
            "cond_input_ids": src["input_ids"], "cond_attention_mask": src["attention_mask"]}


def build(kind, **overrides):
    """(model, batch of 4) for each of the six models (and the pixel-space image model)."""
    g = torch.Generator().manual_seed(1)
    if kind == "text":
        cfg = QGFDTextConfig(backbone_config=t5_config(), seq_len=8, **TINY, **overrides)
        return TextQGFDDiffusionModel(cfg), text_batch()
    if kind == "image":
        cfg = QGFDImageConfig(backbone_config=vit_config(), **TINY, **overrides)
        return ImageQGFDDiffusionModel(cfg), {"pixel_values": torch.rand(4, 3, 16, 16, generator=g) * 2 - 1}
    if kind == "pixels":
        cfg = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **TINY, **overrides)
        return ImageQGFDDiffusionModel(cfg), {"pixel_values": torch.rand(4, 1, 8, 8, generator=g) * 2 - 1}
    if kind == "audio":
        cfg = QGFDAudioConfig(backbone_config=w2v2_config(), num_samples=400, **TINY, **overrides)
        return AudioQGFDDiffusionModel(cfg), {"input_values": torch.randn(4, 400, generator=g)}
    if kind == "video":
        cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1, **TINY, **overrides)
        return VideoQGFDDiffusionModel(cfg), {"pixel_values": torch.rand(4, 2, 1, 8, 8, generator=g) * 2 - 1}
    if kind == "video_vit":
        cfg = QGFDVideoConfig(num_frames=2, backbone_config=vit_config(), **TINY, **overrides)
        return VideoQGFDDiffusionModel(cfg), {"pixel_values": torch.rand(4, 2, 3, 16, 16, generator=g) * 2 - 1}
    if kind == "tabular":
        cfg = QGFDTabularConfig(latent_space="mlp", num_features=5, num_tokens=3, tabular_hidden_dim=32, **TINY, **overrides)
        model = TabularQGFDDiffusionModel(cfg)
        features = torch.randn(4, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 5.0, 2.0]) + 3.0
        model.fit_normalization(features)
        return model, {"features": features}
    if kind == "shared":
        text = QGFDTextConfig(backbone_config=t5_config(), seq_len=8, **TINY)
        image = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **TINY)
        cfg = QGFDSharedConfig(modalities=["text", "image"], text_config=text, image_config=image, latent_dim=32,
                               **dict(TINY, d_model=48), **overrides)
        return SharedQGFDDiffusionModel(cfg), text_batch()
    raise ValueError(kind)


SIX = ["text", "image", "audio", "video", "tabular", "shared"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def condition(model, batch):
    if model.is_conditional:
        return model.encode_condition(input_ids=batch["cond_input_ids"], attention_mask=batch["cond_attention_mask"])
    return None, None


def perturb(model, seed=0):
    """Move every trainable weight off its initialisation (zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


# ----------------------------------------------------------------------------------------
# The seed's quickstart
# ----------------------------------------------------------------------------------------


def test_seed_quickstart(t5_dir, capsys):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    diff_cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=32, num_timesteps=1000, qgfd_steps=1)
    text_model, tokenizer, schedule = create_qgfd_diffusion_model(modality="text", backbone_name=t5_dir, diffusion_cfg=diff_cfg)
    text_model.to(device)
    schedule = schedule.to(device)

    texts = ["hello world", "query graph flow diffusion"]
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        x0_embeds = text_model.encode_text(batch["input_ids"], batch["attention_mask"])  # [B,L,D]
    B = x0_embeds.size(0)
    t = torch.randint(0, diff_cfg.num_timesteps, (B,), device=device)
    loss = text_model.diffusion_forward(
        x0_embeds=x0_embeds,
        t=t,
        cond_input_ids=batch["input_ids"],
        cond_attention_mask=batch["attention_mask"],
        schedule=schedule,
    )
    print("Text diffusion loss:", loss.item())
    assert "Text diffusion loss:" in capsys.readouterr().out
    assert math.isfinite(loss.item()) and loss.item() > 0
    # The factory loaded the saved T5's weights and scaled its embeddings to unit std.
    saved = T5ForConditionalGeneration.from_pretrained(t5_dir)
    torch.testing.assert_close(text_model.adapter.encoder.shared.weight, saved.shared.weight)
    E = text_model.adapter.latent_embeddings()
    assert abs(float(E.std()) - 1.0) < 1e-3
    assert text_model.config.backbone_name == t5_dir


def test_seed_import_paths():
    # The seed kept everything in one module (QGFD_Diffusion_Transformer); its names all come
    # from the package itself. modeling_qgfd no longer re-exports the modality models: that
    # lazy re-export was an import circle (modeling_qgfd <- the modeling_qgfd_<modality> files).
    from qgfd_hf import DDPMBetaSchedule, TextQGFDDiffusionModel as T, q_sample
    import qgfd_hf.modeling_qgfd as base

    assert not hasattr(base, "TextQGFDDiffusionModel")

    assert T is TextQGFDDiffusionModel and callable(q_sample)
    s = DDPMBetaSchedule(1000, beta_start=1e-4, beta_end=2e-2)
    assert s.to("cpu") is s


# ----------------------------------------------------------------------------------------
# The six models: shapes, the uniform contract, round trips, determinism, overfitting
# ----------------------------------------------------------------------------------------


EXPECTED_DATA_SHAPES = {
    "text": (4, 8), "image": (4, 3, 16, 16), "pixels": (4, 1, 8, 8), "audio": (4, 400),
    "video": (4, 2, 1, 8, 8), "video_vit": (4, 2, 3, 16, 16), "tabular": (4, 5), "shared": (4, 8),
}


@pytest.mark.parametrize("kind", SIX + ["pixels", "video_vit"])
def test_uniform_contract_and_shapes(kind):
    torch.manual_seed(0)
    model, batch = build(kind)
    model.eval()
    modality = "text" if kind == "shared" else kind.split("_")[0].replace("pixels", "image")
    assert model.config.modality == ("shared" if kind == "shared" else modality)
    assert model.is_conditional == (kind in ("text", "shared"))
    shape = model.latent_shape(4)
    x0 = model.data_to_latents(batch)
    assert tuple(x0.shape) == shape and x0.dtype == torch.float32
    cond_tokens, cond_mask = condition(model, batch)
    if model.is_conditional:
        assert cond_tokens.shape[0] == 4 and cond_tokens.shape[-1] == model.config.d_model
        assert cond_mask.dtype == torch.bool and cond_mask.shape == cond_tokens.shape[:2]
    t = torch.tensor([0, 1, 500, 999])
    out = model.denoise(torch.randn(shape), t, cond_tokens, cond_mask)
    assert out.shape == shape
    data = model.decode_latents(x0)
    assert tuple(data.shape) == EXPECTED_DATA_SHAPES[kind]
    losses = model.compute_loss(batch, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "diffusion_loss", "recon_loss"}
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)
    torch.testing.assert_close(losses["loss"], losses["diffusion_loss"] + model.config.recon_weight * losses["recon_loss"]
                               if kind != "shared" else losses["diffusion_loss"] + losses["recon_loss"])
    assert model(**batch)["loss"].dim() == 0  # forward(**batch) is compute_loss, for DDP wrappers
    schedule = model.get_schedule()
    assert schedule.betas.dtype == torch.float64 and schedule.num_timesteps == model.config.num_timesteps
    # Sampling returns latents of the model's shape, which decode to data.
    gen = torch.Generator().manual_seed(0)
    if kind in ("text", "shared"):
        latents = model.diffusion_sample(cond_tokens=cond_tokens[:2], cond_mask=cond_mask[:2], num_inference_steps=3, generator=gen)
    else:
        latents = model.diffusion_sample(2, num_inference_steps=3, generator=gen)
    assert tuple(latents.shape) == model.latent_shape(2)
    assert tuple(model.decode_latents(latents).shape) == (2,) + EXPECTED_DATA_SHAPES[kind][1:]


@pytest.mark.parametrize("kind", SIX + ["pixels"])
def test_save_and_auto_load_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model, batch = build(kind)
    perturb(model).eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors"} <= files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == model.config.model_type
    assert saved["auto_map"]["AutoModel"].endswith(type(model).__name__)
    assert saved["auto_map"]["AutoConfig"].endswith(type(model.config).__name__)
    own = {f"{type(model).__module__.split('.')[-1]}.py", f"{type(model.config).__module__.split('.')[-1]}.py"}  # e.g. modeling_qgfd_image.py
    assert {"configuration_qgfd.py", "modeling_qgfd.py"} | own <= files  # for trust_remote_code

    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    x_t = torch.randn(model.latent_shape(4), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1, 10, 100, 999])
    a = model.denoise(x_t, t, *condition(model, batch))
    b = loaded.denoise(x_t, t, *condition(loaded, batch))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    la = model.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
    lb = loaded.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"]
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    torch.testing.assert_close(model.decode_latents(x_t).float(), loaded.decode_latents(x_t).float(), rtol=0, atol=0)


def test_saved_folder_loads_without_qgfd_hf(tmp_path):
    """The saved files are self-contained: a process that cannot import qgfd_hf loads them with
    trust_remote_code and gets the same outputs."""
    from helpers_subprocess import run_without_qgfd_hf

    torch.manual_seed(0)
    model, batch = build("shared")
    perturb(model).eval()
    model.save_pretrained(tmp_path / "model")
    x_t = torch.randn(model.latent_shape(2, modality="image"), generator=torch.Generator().manual_seed(0))
    torch.save(x_t, tmp_path / "x_t.pt")
    expected = model.denoise(x_t, torch.tensor([3, 700]), modality="image")
    # A text model whose T5 encoder is QGFD-patched: patching_qgfd travels with the files.
    text, batch = build("text", backbone_qgfd={"steps": 1, "alpha": 0.5})
    text.eval().save_pretrained(tmp_path / "text")
    torch.save(batch["cond_input_ids"], tmp_path / "ids.pt")
    expected_cond = text.encode_condition(input_ids=batch["cond_input_ids"])[0]
    # The saved code refuses a config.json edited to another latent shape there too (issue 21).
    build("pixels")[0].save_pretrained(tmp_path / "edited")
    _edit_config(tmp_path / "edited", image_size=16)
    out = run_without_qgfd_hf(f"""
        import torch
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained({str(tmp_path / "edited")!r}, trust_remote_code=True)
        except ValueError as e:
            print("refused:", "64 latent tokens" in str(e) and "16 in the saved" in str(e))
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        x_t = torch.load({str(tmp_path / "x_t.pt")!r})
        torch.save(model.denoise(x_t, torch.tensor([3, 700]), modality="image"), {str(tmp_path / "out.pt")!r})
        text = AutoModel.from_pretrained({str(tmp_path / "text")!r}, trust_remote_code=True).eval()
        torch.save(text.encode_condition(input_ids=torch.load({str(tmp_path / "ids.pt")!r}))[0], {str(tmp_path / "cond.pt")!r})
        print(text.adapter.encoder.config._attn_implementation)
        print(type(model).__module__, type(model).__name__)
    """)
    assert out.split()[-2].startswith("transformers_modules.") and out.split()[-1] == "SharedQGFDDiffusionModel"
    assert out.split()[-3] == "qgfd"
    assert "refused: True" in out
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.load(tmp_path / "cond.pt"), expected_cond, rtol=0, atol=0)


@pytest.mark.parametrize("kind", SIX)
def test_determinism_with_a_seed(kind):
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        model, batch = build(kind)
        perturb(model, seed=7).eval()
        loss = model.compute_loss(batch, generator=torch.Generator().manual_seed(5))["loss"]
        cond_tokens, cond_mask = condition(model, batch)
        n = 4 if cond_tokens is None else cond_tokens.shape[0]
        sample = model.diffusion_sample(n, cond_tokens, cond_mask, num_inference_steps=4, sampler="ddpm",
                                        generator=torch.Generator().manual_seed(9))
        results.append((loss.detach(), sample))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    # A different seed gives different samples.
    other = model.diffusion_sample(n, cond_tokens, cond_mask, num_inference_steps=4, sampler="ddpm",
                                   generator=torch.Generator().manual_seed(10))
    assert not torch.equal(other, results[1][1])


def overfit_losses(model, batch, steps=200):
    """(loss before, loss after) `steps` AdamW steps on one batch; each measured in eval mode over
    the same 4 draws of t and noise (fixed generators), a fair before/after."""

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return float(sum(model.compute_loss(batch, generator=torch.Generator().manual_seed(s))["loss"] for s in range(4)) / 4)

    before = eval_loss()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model.compute_loss(batch, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, eval_loss()


@pytest.mark.parametrize("kind", SIX)
def test_one_batch_overfits(kind):
    torch.manual_seed(0)
    model, batch = build(kind)
    before, after = overfit_losses(model, batch)
    assert after < 0.5 * before, (kind, before, after)


# ----------------------------------------------------------------------------------------
# Data -> latents -> data, per modality
# ----------------------------------------------------------------------------------------


def test_text_round_trip_is_exact(t5_dir):
    model, tokenizer, _ = create_qgfd_diffusion_model("text", t5_dir, DiffusionConfig.from_preset("tiny"), seq_len=10)
    texts = ["hello world", "query graph flow diffusion", "the red a of blue"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    latents = model.data_to_latents(batch)
    assert latents.shape == (3, 10, 32)
    assert model.decode_to_text(latents, tokenizer) == texts
    padded = torch.nn.functional.pad(batch["input_ids"], (0, 10 - batch["input_ids"].shape[1]))
    assert torch.equal(model.decode_latents(latents), padded)
    # The logits are nearest-embedding scores: every token decodes to itself.
    ids = torch.arange(model.adapter.vocab_size)[None]
    assert torch.equal(model.decode_embeddings(model.encode_text(ids)).argmax(-1), ids)


def test_text_clamped_sampling_decodes_to_tokens():
    torch.manual_seed(0)
    model, batch = build("text", clamp_to_embeddings=True)
    perturb(model).eval()
    latents = model.diffusion_sample(cond_input_ids=batch["cond_input_ids"], cond_attention_mask=batch["cond_attention_mask"], num_inference_steps=5,
                                     generator=torch.Generator().manual_seed(0))
    # With clamping, the last DDIM step returns token embeddings exactly.
    E = model.adapter.latent_embeddings()
    torch.testing.assert_close(latents, E[model.decode_latents(latents)])
    texts = model.decode_to_text(latents, make_tokenizer())
    assert len(texts) == 4 and all(isinstance(s, str) for s in texts)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v"])
def test_text_clamp_is_consistent_for_every_prediction_type(prediction_type):
    torch.manual_seed(0)
    model, batch = build("text", prediction_type=prediction_type, clamp_to_embeddings=True)
    perturb(model).eval()
    cond = condition(model, batch)
    schedule = model.get_schedule()
    fn = model.make_denoise_fn(*cond, schedule)
    x_t, t = torch.randn(model.latent_shape(4)), torch.tensor([5, 50, 500, 900])
    from qgfd_hf import predict_x0_and_eps

    x0, _ = predict_x0_and_eps(fn(x_t, t), x_t, t, schedule, prediction_type)
    E = model.adapter.latent_embeddings()
    torch.testing.assert_close(x0, E[model.decode_latents(x0)], atol=1e-4, rtol=1e-4)


def test_image_pixel_space_round_trip_is_exact():
    model, batch = build("pixels")
    images = batch["pixel_values"] * 0.5 + 0.5  # [0, 1]
    out = model.decode_latents(model.data_to_latents(batch))
    assert out.shape == images.shape
    torch.testing.assert_close(out, images, atol=1e-6, rtol=0)
    adapter = model.adapter
    assert model.sample_clip_value == 1.0 and build("image")[0].sample_clip_value is None
    torch.testing.assert_close(adapter.unpatchify(adapter.patchify(batch["pixel_values"])), batch["pixel_values"])
    # Patch 0 is the top-left 2 x 2 block, in row-major order.
    torch.testing.assert_close(adapter.patchify(batch["pixel_values"])[:, 0], batch["pixel_values"][:, 0, :2, :2].reshape(4, 4))


@pytest.mark.parametrize("kind", ["image", "video_vit", "video"])
def test_images_and_video_decode_to_the_input_shape_in_unit_range(kind):
    torch.manual_seed(0)
    model, batch = build(kind)
    perturb(model, seed=3)
    out = model.decode_latents(model.data_to_latents(batch))
    assert out.shape == batch["pixel_values"].shape
    assert float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1


def test_vit_decoder_learns_to_reconstruct():
    torch.manual_seed(0)
    model, batch = build("image")
    opt = torch.optim.Adam(model.adapter.decoder.parameters(), lr=3e-3)
    x0 = model.data_to_latents(batch)
    first = None
    for _ in range(60):
        loss = model.adapter.recon_loss(batch, x0)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_audio_decodes_to_the_input_shape():
    torch.manual_seed(0)
    model, batch = build("audio")
    x0 = model.audio_to_latents(batch["input_values"])
    assert x0.shape == model.latent_shape(4) == (4, model.config.num_latent_tokens(), 32)
    wave = model.decode_latents(x0)
    assert wave.shape == batch["input_values"].shape and torch.isfinite(wave).all()
    assert model.adapter.hop == 20 and model.adapter.receptive_field == 25


def test_tabular_decodes_to_original_units_after_training():
    torch.manual_seed(0)
    model, batch = build("tabular")
    features = batch["features"]
    torch.testing.assert_close(model.adapter.feature_mean, features.mean(0))
    opt = torch.optim.Adam(model.adapter.decoder.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.adapter.recon_loss(batch, model.data_to_latents(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = model.decode_latents(model.data_to_latents(batch))
    assert rows.shape == features.shape
    # Within 10% of each column's spread, in the column's own units.
    assert bool(((rows - features).abs() < 0.1 * features.std(0)).all())


# ----------------------------------------------------------------------------------------
# Frozen encoders
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "image", "audio"])
def test_encoders_are_frozen_and_stay_in_eval_mode(kind):
    model, _ = build(kind, **({"train_condition_encoder": False} if kind == "text" else {}))
    model.train()
    encoder = model.adapter.encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.training
    assert any(p.requires_grad for p in model.backbone.parameters())
    unfrozen, _ = build(kind, freeze_encoder=False)
    unfrozen.train()
    assert all(p.requires_grad for p in unfrozen.adapter.encoder.parameters()) and unfrozen.adapter.encoder.training


def test_text_condition_encoder_can_train_while_the_embeddings_stay_frozen():
    model, batch = build("text")  # train_condition_encoder=True by default
    model.train()
    encoder = model.adapter.encoder
    assert encoder.training and not encoder.shared.weight.requires_grad
    model.compute_loss(batch)["loss"].backward()
    assert encoder.shared.weight.grad is None
    assert encoder.encoder.block[0].layer[0].SelfAttention.q.weight.grad is not None
    before = model.data_to_latents(batch)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    torch.testing.assert_close(model.data_to_latents(batch), before)  # x0 unchanged


def test_tabular_encoder_frozen():
    model, _ = build("tabular")
    assert not any(p.requires_grad for p in model.adapter.encoder_mlp.parameters())
    assert all(p.requires_grad for p in model.adapter.decoder.parameters())


@pytest.mark.parametrize("kind", ["text", "image", "audio"])
def test_backbone_qgfd_patches_the_encoder(kind, tmp_path):
    torch.manual_seed(0)
    plain, batch = build(kind)
    torch.manual_seed(0)
    model, _ = build(kind, backbone_qgfd={"steps": 1, "alpha": 0.5})
    assert qgfd_hf.is_qgfd_patched(model.adapter.encoder) and not qgfd_hf.is_qgfd_patched(plain.adapter.encoder)
    assert set(model.state_dict()) == set(plain.state_dict())  # patching adds no weights
    perturb(model).eval()
    x0 = model.data_to_latents(batch)
    cond = condition(model, batch)
    if kind == "text":  # the embeddings are the same; the patched encoder's states differ
        plain.load_state_dict(model.state_dict())
        plain.eval()
        torch.testing.assert_close(x0, plain.data_to_latents(batch))
        assert not torch.allclose(cond[0], condition(plain, batch)[0])
    else:
        plain.load_state_dict(model.state_dict())
        assert not torch.allclose(x0, plain.eval().data_to_latents(batch))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert qgfd_hf.is_qgfd_patched(loaded.adapter.encoder) and loaded.config.backbone_qgfd == {"steps": 1, "alpha": 0.5}
    torch.testing.assert_close(loaded.data_to_latents(batch), x0, rtol=0, atol=0)
    if kind == "text":
        torch.testing.assert_close(condition(loaded, batch)[0], cond[0], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# The denoiser
# ----------------------------------------------------------------------------------------


def test_building_blocks():
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    assert PositionwiseFFN(32, 64)(x).shape == x.shape
    assert TimestepEmbedding(32)(torch.tensor([0, 999])).shape == (2, 32)
    assert EncoderBlock(32, 4, 64, time_conditioning="adaln", qgfd_steps=1)(x, c).shape == x.shape
    assert EncoderBlock(32, 4, 64, qgfd_steps=2, graph="keys", mix="recurrent")(x).shape == x.shape
    block = DecoderBlock(32, 4, 64, time_conditioning="adaln")
    assert block(x, c, torch.randn(2, 3, 32), torch.tensor([[1, 1, 0], [1, 1, 1]])).shape == x.shape
    with pytest.raises(ValueError, match="needs `c`"):
        block(x)


@pytest.mark.parametrize("time_conditioning", ["adaln", "add"])
@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned", "none"])
def test_backbone_variants(time_conditioning, position_embedding):
    cfg = DiffusionConfig(latent_dim=16, time_conditioning=time_conditioning, position_embedding=position_embedding,
                          max_position_embeddings=12, **TINY)
    net = QGFDDiffusionBackbone(cfg)
    out = net(torch.randn(2, 10, 16), torch.tensor([3, 500]), torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.long))
    assert out.shape == (2, 10, 16)
    assert float(out.detach().abs().max()) == 0.0  # zero-initialised output layer (DiT)
    if position_embedding == "learned":
        with pytest.raises(ValueError, match="max_position_embeddings"):
            net(torch.randn(1, 13, 16), torch.tensor([3]))


def test_adaln_zero_blocks_start_as_identity():
    model, _ = build("pixels")
    block = model.backbone.blocks[0]
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c), x)


def test_masked_conditioning_tokens_are_ignored():
    torch.manual_seed(0)
    model, batch = build("text")
    perturb(model).eval()
    x_t, t = torch.randn(model.latent_shape(2)), torch.tensor([10, 600])
    cond = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    changed = cond.clone()
    changed[0, 3:] = 100.0
    changed[1, 4] = -50.0
    torch.testing.assert_close(model.denoise(x_t, t, cond, mask), model.denoise(x_t, t, changed, mask))
    # A sample whose conditioning is all padding still gets a finite output.
    out = model.denoise(x_t, t, cond, torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))
    assert torch.isfinite(out).all()
    assert not torch.equal(model.denoise(x_t, t, cond, mask), model.denoise(x_t, t, cond * 2, mask))


def test_init_weights_special_cases():
    model, _ = build("shared")
    for block in model.backbone.blocks:
        assert float(block.adaLN_modulation[1].weight.detach().abs().max()) == 0
    assert float(model.backbone.out_proj.weight.detach().abs().max()) == 0
    # The shared projection is orthogonal with a scale-keeping gain; it inverts exactly.
    W = model.image_adapter.proj.weight  # (32, 4)
    torch.testing.assert_close(W.t() @ W, torch.eye(4) * (32 / 4), atol=1e-5, rtol=1e-5)
    x = torch.randn(3, 16, 4)
    torch.testing.assert_close(model.image_adapter.proj.inverse(model.image_adapter.proj(x)), x, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# The shared model
# ----------------------------------------------------------------------------------------


def test_shared_model_seed_signature_and_losses(t5_dir):
    # The seed: SharedQGFDDiffusionModel(shared_cfg, text_hf_name, image_hf_name), then
    # text_diffusion_loss(input_ids, attention_mask, schedule) and image_diffusion_loss(pixel_values, schedule).
    shared_cfg = DiffusionConfig(d_model=48, num_heads=4, num_layers=2, d_ff=64, latent_dim=24)
    model = SharedQGFDDiffusionModel(shared_cfg, text_hf_name=t5_dir, image_hf_name=vit_config())
    saved = T5ForConditionalGeneration.from_pretrained(t5_dir)
    torch.testing.assert_close(model.text_adapter.encoder.shared.weight, saved.shared.weight)
    schedule = qgfd_hf.DDPMBetaSchedule(shared_cfg.num_timesteps)
    batch = text_batch()
    loss = model.text_diffusion_loss(batch["input_ids"], batch["attention_mask"], schedule)
    assert loss.dim() == 0 and float(loss.detach()) > 0
    image_loss = model.image_diffusion_loss(torch.rand(2, 3, 16, 16) * 2 - 1, schedule)
    assert image_loss.dim() == 0 and float(image_loss.detach()) > 0
    # No conditioning in the seed's form (it conditioned on the target itself).
    with pytest.raises(ValueError, match="unconditional"):
        model.text_diffusion_loss(batch["input_ids"], batch["attention_mask"], schedule, cond_input_ids=batch["cond_input_ids"])


def test_shared_text_conditioning_is_projected_to_the_denoiser_width():
    # The seed's bug: T5-width (32) conditioning handed to a denoiser of another width (48).
    model, batch = build("shared")
    cond_tokens, cond_mask = model.encode_condition(modality="text", input_ids=batch["cond_input_ids"],
                                                    attention_mask=batch["cond_attention_mask"])
    assert model.text_adapter.encoder.config.d_model == 32 and cond_tokens.shape == (4, batch["cond_input_ids"].shape[1], 48)
    loss = model.text_diffusion_loss(batch["input_ids"], batch["attention_mask"], cond_input_ids=batch["cond_input_ids"],
                                     cond_attention_mask=batch["cond_attention_mask"])
    assert loss.dim() == 0 and float(loss.detach()) > 0
    with pytest.raises(ValueError, match="conditional"):
        model.text_diffusion_loss(batch["input_ids"], batch["attention_mask"])
    texts = model.decode_to_text(model.data_to_latents(batch, modality="text"), make_tokenizer())
    assert texts == ["hello world", "query graph flow diffusion", "red blue green", "up down left right"]


def test_unconditional_text_model():
    model, batch = build("text", conditional=False)
    assert not model.is_conditional and not model.backbone.cross_attention
    assert torch.isfinite(model.compute_loss({"input_ids": batch["input_ids"]})["loss"])
    with pytest.raises(ValueError, match="unconditional"):
        model.encode_condition(input_ids=batch["cond_input_ids"])
    assert model.diffusion_sample(3, num_inference_steps=2).shape == (3, 8, 32)


def test_shared_model_modalities_and_text_round_trip():
    model, batch = build("shared")
    assert model.active_modality == "text" and model.is_conditional
    x0 = model.data_to_latents(batch)  # 32-wide T5 latents projected to the shared 32
    assert torch.equal(model.decode_latents(x0)[:, : batch["input_ids"].shape[1]],
                       batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 0))
    images = {"pixel_values": torch.rand(2, 1, 8, 8) * 2 - 1}
    lat = model.data_to_latents(images, modality="image")
    assert lat.shape == model.latent_shape(2, modality="image") == (2, 16, 32)
    torch.testing.assert_close(model.decode_latents(lat, modality="image"), images["pixel_values"] * 0.5 + 0.5, atol=1e-5, rtol=0)
    model.set_modality("image")
    assert not model.is_conditional and model.latent_shape(1) == (1, 16, 32)
    assert model.compute_loss(images)["loss"].dim() == 0
    with pytest.raises(ValueError, match="unconditional"):
        model.denoise(lat, torch.tensor([1, 2]), torch.randn(2, 3, 48))
    # Different modalities see different modality embeddings.
    perturb(model)
    a = model.denoise(torch.zeros(1, 16, 32), torch.tensor([5]), modality="image")
    model.image_adapter.proj  # noqa: B018 (exists)
    with pytest.raises(ValueError, match="allowed"):
        model.set_modality("audio")
    assert a.shape == (1, 16, 32)


def test_factory_builds_every_modality(t5_dir):
    cfg = DiffusionConfig.from_preset("tiny")
    cases = {
        "text": (t5_dir, {}),
        "image": (vit_config(), {}),
        "audio": (w2v2_config(), {"num_samples": 400}),
        "video": (None, {"num_frames": 2, "image_size": 8, "patch_size": 4, "num_channels": 1}),
        "tabular": (None, {"num_features": 3}),
    }
    for modality, (backbone, kwargs) in cases.items():
        values = cfg.to_dict()
        if modality in ("image", "audio", "video"):
            values["latent_dim"] = None if modality != "video" else 16
        model, processor, schedule = create_qgfd_diffusion_model(modality, backbone, values, **kwargs)
        assert model.config.modality == modality and schedule.num_timesteps == 1000
        if modality == "text":
            assert processor is not None and processor("hello")["input_ids"][-1] == 1
        elif modality in ("image", "video"):
            assert processor.size["height"] == model.config.image_size
        elif modality == "audio":
            assert processor.sampling_rate == 16000
        else:
            assert processor is None
    shared, processors, _ = create_qgfd_diffusion_model(
        "shared", {"text": t5_dir, "image": None}, cfg, modality_kwargs={"image": {"image_size": 8, "patch_size": 2, "num_channels": 1}}
    )
    assert shared.config.modalities == ["text", "image"] and set(processors) == {"text", "image"}


def test_factory_loads_pretrained_image_and_audio_backbones_from_folders(tmp_path):
    from transformers import ViTForImageClassification, ViTImageProcessorPil, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(0)
    vit = ViTForImageClassification(vit_config())
    vit.save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.4, 0.4, 0.4], image_std=[0.2, 0.2, 0.2]).save_pretrained(tmp_path / "vit")
    w2v = Wav2Vec2ForCTC(w2v2_config())
    w2v.save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=8000).save_pretrained(tmp_path / "w2v")
    cfg = DiffusionConfig.from_preset("tiny").to_dict()
    cfg["latent_dim"] = None

    image_model, processor, _ = create_qgfd_diffusion_model("image", str(tmp_path / "vit"), cfg)
    torch.testing.assert_close(image_model.adapter.encoder.embeddings.patch_embeddings.projection.weight,
                               vit.vit.embeddings.patch_embeddings.projection.weight)
    assert image_model.config.image_mean == [0.4, 0.4, 0.4] and list(processor.image_std) == [0.2, 0.2, 0.2]
    assert image_model.config.backbone_name == str(tmp_path / "vit")

    audio_model, extractor, _ = create_qgfd_diffusion_model("audio", str(tmp_path / "w2v"), cfg, num_samples=400, sampling_rate=8000)
    torch.testing.assert_close(audio_model.adapter.encoder.feature_extractor.conv_layers[0].conv.weight,
                               w2v.wav2vec2.feature_extractor.conv_layers[0].conv.weight)
    assert extractor.sampling_rate == 8000
    # A folder without a processor still gives one, built from the config (with a warning).
    (tmp_path / "vit" / "preprocessor_config.json").unlink()
    _, processor, _ = create_qgfd_diffusion_model("video", str(tmp_path / "vit"), cfg, num_frames=2)
    assert processor.size["height"] == 16


def test_factory_processor_prepares_pixels_for_the_model():
    import numpy as np
    from PIL import Image

    model, processor, _ = create_qgfd_diffusion_model("image", None, DiffusionConfig.from_preset("tiny", latent_dim=4),
                                                     image_size=8, patch_size=2, num_channels=1)
    image = Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype("uint8"), mode="L")
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 1, 8, 8)
    decoded = model.decode_latents(model.data_to_latents({"pixel_values": pixel_values}))
    torch.testing.assert_close(decoded[0, 0], torch.tensor(np.asarray(image), dtype=torch.float32) / 255, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


def test_unknown_modality_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="'audio', 'image', 'tabular', 'text', 'video', 'shared'"):
        create_qgfd_diffusion_model("smell", None)


@pytest.mark.parametrize("kind", ["text", "pixels", "tabular"])
def test_bad_latents_timesteps_and_nan(kind):
    model, batch = build(kind)
    cond = condition(model, batch)
    B, L, D = model.latent_shape(4)
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="latent_dim"):
        model.denoise(torch.randn(B, L, D + 1), t, *cond)
    with pytest.raises(ValueError, match="shape"):
        model.denoise(torch.randn(B, D), t, *cond)
    if kind != "text":
        with pytest.raises(ValueError, match="shape"):
            model.denoise(torch.randn(B, L + 1, D), t, *cond)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        model.denoise(torch.randn(B, L, D), torch.tensor([0, 1, 2, 1000]), *cond)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        model.denoise(torch.randn(B, L, D), torch.tensor([-1, 1, 2, 3]), *cond)
    with pytest.raises(ValueError, match="integer"):
        model.denoise(torch.randn(B, L, D), torch.rand(4), *cond)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        model.denoise(torch.randn(B, L, D), torch.tensor([1, 2]), *cond)
    nan = torch.randn(B, L, D)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.denoise(nan, t, *cond)
    with pytest.raises(ValueError, match="NaN"):
        model.decode_latents(nan)


def test_bad_conditioning():
    model, batch = build("text")
    x_t, t = torch.randn(model.latent_shape(4)), torch.tensor([0, 1, 2, 3])
    cond_tokens, cond_mask = condition(model, batch)
    with pytest.raises(ValueError, match="d_model=32"):
        model.denoise(x_t, t, torch.randn(4, 3, 16))
    with pytest.raises(ValueError, match="batch size"):
        model.denoise(x_t, t, cond_tokens[:2], cond_mask[:2])
    with pytest.raises(ValueError, match=r"\[B, Lc\]"):
        model.denoise(x_t, t, cond_tokens, cond_mask[:, :2])
    with pytest.raises(ValueError, match="conditional"):
        model.denoise(x_t, t)
    bad = cond_tokens.clone()
    bad[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        model.denoise(x_t, t, bad, cond_mask)
    with pytest.raises(ValueError, match="cond_input_ids"):
        model.compute_loss({"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError, match="Unknown conditioning"):
        model.encode_condition(input_ids=batch["cond_input_ids"], pixel_values=1)
    with pytest.raises(ValueError, match="outside"):
        model.encode_condition(input_ids=torch.tensor([[1, 999]]))
    unconditional, ubatch = build("pixels")
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.encode_condition(input_ids=batch["cond_input_ids"])
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.denoise(unconditional.data_to_latents(ubatch), t, torch.randn(4, 3, 32))


def test_bad_data():
    text, _ = build("text")
    with pytest.raises(ValueError, match="seq_len=8"):
        text.data_to_latents({"input_ids": torch.ones(2, 9, dtype=torch.long)})
    with pytest.raises(ValueError, match="input_ids"):
        text.data_to_latents({"pixel_values": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="integer"):
        text.encode_text(torch.rand(2, 3))
    image, _ = build("pixels")
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        image.image_to_latents(torch.rand(2, 3, 8, 8))
    nan = torch.rand(2, 1, 8, 8)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        image.data_to_latents({"pixel_values": nan})
    audio, _ = build("audio")
    with pytest.raises(ValueError, match=r"\[B, 400\]"):
        audio.audio_to_latents(torch.randn(2, 300))
    video, _ = build("video")
    with pytest.raises(ValueError, match="video_to_latents"):
        video.image_to_latents(torch.rand(2, 1, 8, 8))
    tabular, _ = build("tabular")
    with pytest.raises(ValueError, match="num_features=5"):
        tabular.tabular_to_latents(torch.randn(2, 4))


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="latent_dim`=16 must equal"):
        build("text", latent_dim=16)
    with pytest.raises(ValueError, match="qgfd"):
        create_qgfd_diffusion_model("tabular", None, DiffusionConfig.from_preset("tiny"), num_features=3, denoiser="pretrained")
    with pytest.raises(ValueError, match="alpha"):
        build("pixels", qgfd_alpha=1.5)
    with pytest.raises(ValueError, match="needs a text backbone"):
        create_qgfd_diffusion_model("text", None)
    with pytest.raises(ValueError, match="latent_dim"):
        # DiffusionConfig's latent_dim (512) is not the tiny ViT's width (32): say so, do not guess.
        create_qgfd_diffusion_model("image", vit_config(), DiffusionConfig(**TINY))


# ----------------------------------------------------------------------------------------
# Issue 21: shapes that do not fit the weights are refused with the numbers
# ----------------------------------------------------------------------------------------


def _edit_config(folder, **fields):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(fields)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_learned_positions_longer_than_the_table_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"text latents of 2000 tokens need 2000 learned positions, but `max_position_embeddings`=1024"):
        create_qgfd_diffusion_model("text", t5_config(), None, tokenizer=make_tokenizer(), seq_len=2000, position_embedding="learned", **TINY)
    # The same where a saved config.json asks for more tokens than its table holds.
    TextQGFDDiffusionModel(QGFDTextConfig(backbone_config=t5_config(), seq_len=6, position_embedding="learned",
                                          max_position_embeddings=8, **TINY)).save_pretrained(tmp_path)
    _edit_config(tmp_path, seq_len=12)
    with pytest.raises(ValueError, match=r"12 tokens need 12 learned positions, but `max_position_embeddings`=8"):
        AutoModel.from_pretrained(tmp_path)


def test_a_config_edited_to_another_latent_shape_is_refused_at_load(tmp_path):
    """Pixel patches are position-free: 8x8 weights would load, and sample, as a 16x16 model."""
    torch.manual_seed(0)
    model, _ = build("pixels")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["saved_latent_tokens"] == {"image": 16}
    assert AutoModel.from_pretrained(tmp_path).latent_shape(1) == (1, 16, 4)  # unedited: loads
    _edit_config(tmp_path, image_size=16)
    for load in (AutoModel.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(ValueError, match=r"image: 64 latent tokens from this config's fields, 16 in the saved weights' record"):
            load(tmp_path)
    # The record is not kept on the loaded config: one changed afterwards never carries a stale one.
    _edit_config(tmp_path, image_size=8)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert not hasattr(loaded.config, "saved_latent_tokens") and "saved_latent_tokens" not in loaded.config.to_dict()
