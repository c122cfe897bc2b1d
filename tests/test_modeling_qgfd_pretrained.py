"""Tests of the pretrained denoiser, `denoiser="pretrained"` (qgfd_hf/modeling_qgfd_pretrained.py).

The "pretrained" backbones are tiny random T5 / ViT / Wav2Vec2 models (width 32, 2 layers, 4
heads) saved to temporary folders, so that the factory loads them with `from_pretrained` as it
would a Hub checkpoint. Nothing touches the network.
"""

import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    ElectraConfig,
    T5EncoderModel,
    T5ForConditionalGeneration,
    ViTImageProcessorPil,
    ViTModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    pipeline,
)

import qgfd_hf
from qgfd_hf import (
    AudioQGFDDiffusionModel,
    DiffusionConfig,
    ImageQGFDDiffusionModel,
    QGFDAudioConfig,
    QGFDImageConfig,
    QGFDSharedConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
    TextQGFDDiffusionModel,
    VideoQGFDDiffusionModel,
    create_qgfd_diffusion_model,
)
from qgfd_hf.modeling_qgfd_pretrained import PretrainedDenoiser
from test_modeling_qgfd import TINY, make_tokenizer, overfit_losses, perturb, t5_config, text_batch, vit_config, w2v2_config

PRETRAINED = dict(denoiser="pretrained")
QGFD = dict(qgfd_steps=1, qgfd_alpha=0.5)  # the denoiser's QGFD settings (the config's defaults)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Folders holding a tiny random "pretrained" T5 (with tokenizer), ViT and Wav2Vec2 (with processors)."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    T5ForConditionalGeneration(t5_config()).save_pretrained(root / "t5")
    make_tokenizer().save_pretrained(root / "t5")
    ViTModel(vit_config(), add_pooling_layer=False).save_pretrained(root / "vit")
    ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    Wav2Vec2Model(w2v2_config()).save_pretrained(root / "w2v")
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(root / "w2v")
    return {k: str(root / k) for k in ("t5", "vit", "w2v")}


def inputs(kind, g=None):
    g = g or torch.Generator().manual_seed(1)
    if kind == "text":
        return text_batch()
    if kind in ("image", "pixels"):
        shape = (4, 3, 16, 16) if kind == "image" else (4, 1, 12, 12)
        return {"pixel_values": torch.rand(*shape, generator=g) * 2 - 1}
    if kind == "audio":
        return {"input_values": torch.randn(4, 400, generator=g)}
    if kind == "video":
        return {"pixel_values": torch.rand(4, 2, 3, 16, 16, generator=g) * 2 - 1}
    raise ValueError(kind)


def build(kind, **overrides):
    """(model, batch of 4) with a random backbone given as a config (no loading)."""
    values = dict(TINY, **PRETRAINED, **overrides)
    if kind == "text":
        model = TextQGFDDiffusionModel(QGFDTextConfig(backbone_config=t5_config(), seq_len=8, **values))
    elif kind == "image":
        model = ImageQGFDDiffusionModel(QGFDImageConfig(backbone_config=vit_config(), **values))
    elif kind == "pixels":  # a 6 x 6 grid of pixel patches: ViT's 4 x 4 positions are interpolated
        model = ImageQGFDDiffusionModel(QGFDImageConfig(latent_space="pixels", image_size=12, patch_size=2, num_channels=1,
                                                        backbone_config=vit_config(), **values))
    elif kind == "audio":
        model = AudioQGFDDiffusionModel(QGFDAudioConfig(backbone_config=w2v2_config(), num_samples=400, **values))
    elif kind == "video":
        model = VideoQGFDDiffusionModel(QGFDVideoConfig(num_frames=2, backbone_config=vit_config(), **values))
    else:
        raise ValueError(kind)
    return model, inputs(kind)


def condition(model, batch):
    if model.is_conditional:
        return model.encode_condition(input_ids=batch["cond_input_ids"], attention_mask=batch["cond_attention_mask"])
    return None, None


# ----------------------------------------------------------------------------------------
# At initialisation the wrapped stack is the pretrained stack
# ----------------------------------------------------------------------------------------


def reference_and_tokens(kind, path):
    """The pretrained model as transformers loads it (QGFD-patched like the denoiser's stack), the
    token sequence its own embeddings make of some input, and its last hidden states on that input."""
    g = torch.Generator().manual_seed(2)
    if kind == "text":
        ref = qgfd_hf.patch_model(T5EncoderModel.from_pretrained(path), steps=1, alpha=0.5).eval()
        batch = text_batch()
        ids, mask = batch["cond_input_ids"], batch["cond_attention_mask"]  # padded: the mask matters
        return ref, ref.shared(ids), mask.bool(), ref(input_ids=ids, attention_mask=mask).last_hidden_state
    if kind == "image":
        ref = qgfd_hf.patch_model(ViTModel.from_pretrained(path, add_pooling_layer=False), steps=1, alpha=0.5).eval()
        pixels = torch.rand(3, 3, 16, 16, generator=g)
        return ref, ref.embeddings(pixels), None, ref(pixel_values=pixels).last_hidden_state
    ref = qgfd_hf.patch_model(Wav2Vec2Model.from_pretrained(path), steps=1, alpha=0.5).eval()
    wave = torch.randn(3, 400, generator=g)
    features, _ = ref.feature_projection(ref.feature_extractor(wave).transpose(1, 2))
    return ref, features, None, ref(wave).last_hidden_state


@pytest.mark.parametrize("kind", ["text", "image", "audio"])
@torch.no_grad()
def test_stack_computes_the_pretrained_stack_at_initialisation(kind, backbones):
    path = backbones[{"text": "t5", "image": "vit", "audio": "w2v"}[kind]]
    model, _, _ = create_qgfd_diffusion_model(kind, path, DiffusionConfig(**TINY, latent_dim=32, **QGFD), denoiser="pretrained",
                                              **({"seq_len": 8} if kind == "text" else {"num_samples": 400} if kind == "audio" else {}))
    model.eval()
    denoiser = model.backbone
    assert isinstance(denoiser, PretrainedDenoiser)
    ref, tokens, mask, expected = reference_and_tokens(kind, path)

    # The stack holds the checkpoint's weights (not a random initialisation) ...
    ref_state = (ref.encoder if kind == "text" else ref).state_dict()
    for key, value in denoiser.stack.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], rtol=0, atol=0, msg=key)
    # ... and, with the timestep conditioning at its zero initialisation, computes what the
    # pretrained stack computes, for any timestep embedding c.
    c = denoiser.time_embed(torch.tensor([0, 50, 99, 20])[: tokens.shape[0]])
    assert c.abs().sum() > 0
    torch.testing.assert_close(denoiser.run_stack(tokens, c, mask), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(denoiser.run_stack(tokens, None, mask), expected, rtol=0, atol=1e-5)

    # The modulations do reach every layer once they move off zero, and only during the call.
    perturb(denoiser.adaLN_modulation)
    moved = denoiser.run_stack(tokens, c, mask)
    assert (moved - expected).abs().max() > 1e-3
    torch.testing.assert_close(denoiser.stack(inputs_embeds=tokens, attention_mask=mask).last_hidden_state if kind == "text"
                               else denoiser.run_stack(tokens, None, mask), expected, rtol=0, atol=1e-5)


def test_untrained_model_predicts_zero_and_the_stack_trains(backbones):
    model, tokenizer, _ = create_qgfd_diffusion_model("text", backbones["t5"], DiffusionConfig(**TINY, latent_dim=32),
                                                      denoiser="pretrained", seq_len=8)
    batch = text_batch()
    x_t = torch.randn(model.latent_shape(4))
    assert torch.equal(model.denoise(x_t, torch.tensor([1, 2, 3, 4]), *condition(model, batch)), torch.zeros_like(x_t))
    # The denoiser's stack trains; it is a copy, apart from the frozen embeddings that make x0.
    stack = model.backbone.stack
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not model.adapter.encoder.get_input_embeddings().weight.requires_grad
    encoder_ptrs = {p.data_ptr() for p in model.adapter.encoder.parameters()}
    assert not encoder_ptrs & {p.data_ptr() for p in stack.parameters()}
    # Unused parts of the backbone are not in the denoiser (T5's token embedding [V, W]).
    assert stack.embed_tokens is None and not any("embed_tokens" in k for k in model.state_dict() if k.startswith("backbone."))
    # QGFD runs in the denoiser's self-attention; the encoder's attention is left as it was.
    assert qgfd_hf.is_qgfd_patched(stack) and qgfd_hf.get_qgfd_settings(stack).steps == model.config.qgfd_steps
    assert not qgfd_hf.is_qgfd_patched(model.adapter.encoder)
    assert qgfd_hf.set_qgfd_step(model, 3) == model.config.backbone_config.num_layers  # the warm-up reaches the stack
    # After two optimizer steps every stack weight has moved; the frozen embeddings have not.
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
        opt.step()
    after = model.state_dict()
    stack_keys = [k for k in after if k.startswith("backbone.stack.")]
    assert stack_keys and all(not torch.equal(before[k], after[k]) for k in stack_keys)
    key = "adapter.encoder.shared.weight"
    assert torch.equal(before[key], after[key])


# ----------------------------------------------------------------------------------------
# Conditioning, positions, copies
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def test_text_conditioning_is_appended_and_padding_does_not_move_latents():
    torch.manual_seed(0)
    model, batch = build("text")
    perturb(model).eval()
    tok = make_tokenizer()
    x_t, t = torch.randn(1, 8, 32), torch.tensor([30])
    alone = tok(["hello world"], return_tensors="pt")
    padded = tok(["hello world", "query graph flow diffusion red blue"], return_tensors="pt", padding=True)
    a = model.denoise(x_t, t, *model.encode_condition(**alone))
    b = model.denoise(x_t.expand(2, -1, -1), t.expand(2), *model.encode_condition(**padded))[:1]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # The conditioning matters.
    other = model.denoise(x_t, t, *model.encode_condition(**tok(["red blue green"], return_tensors="pt")))
    assert (other - a).abs().max() > 1e-4
    with pytest.raises(ValueError, match="conditional"):
        model.denoise(x_t, t)


@pytest.mark.parametrize("kind", ["image", "audio"])
@torch.no_grad()
def test_appended_conditioning_tokens_in_vit_and_wav2vec2_stacks(kind):
    # Only text models are conditional today; the denoiser itself takes conditioning tokens with
    # every stack: appended to the sequence, padded ones masked out.
    model, _ = build(kind)
    denoiser = perturb(PretrainedDenoiser(model.config, conditional=True)).eval()
    L = model.config.num_latent_tokens()
    x_t, t = torch.randn(2, L, 32), torch.tensor([5, 500])
    cond, mask = torch.randn(2, 3, 32), torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = denoiser(x_t, t, cond_tokens=cond, cond_mask=mask)
    assert out.shape == (2, L, 32)
    changed_padding = cond.clone()
    changed_padding[0, 2], changed_padding[1, 1:] = 9.0, -9.0
    torch.testing.assert_close(denoiser(x_t, t, cond_tokens=changed_padding, cond_mask=mask), out, rtol=0, atol=1e-5)
    changed = cond.clone()
    changed[:, 0] = 9.0
    assert (denoiser(x_t, t, cond_tokens=changed, cond_mask=mask) - out).abs().max() > 1e-4


@torch.no_grad()
def test_video_frames_are_told_apart_and_pixels_interpolate_positions():
    torch.manual_seed(0)
    video, _ = build("video")
    video.eval()
    denoiser = video.backbone
    x = torch.randn(1, 1, 16, 32).repeat(1, 2, 1, 1).reshape(1, 32, 32)  # two identical frames
    h = denoiser.embed_latents(x)  # (1, 2 * 16, W)
    assert not torch.allclose(h[:, :16], h[:, 16:])  # the frame embedding tells them apart
    torch.testing.assert_close(h[:, :16] - denoiser.frame_embed.weight[0], h[:, 16:] - denoiser.frame_embed.weight[1])
    pixels, _ = build("pixels")
    pos = pixels.backbone.family.patch_positions(pixels.backbone.stack, 36)
    assert pos.shape == (1, 36, 32) and torch.isfinite(pos).all()
    own = pixels.backbone.stack.embeddings.position_embeddings[:, 1:]
    assert torch.equal(pixels.backbone.family.patch_positions(pixels.backbone.stack, 16), own)


@torch.no_grad()
def test_a_deep_copy_is_independent():
    # EMA weights are often a deepcopy: its hooks must read its own modulations.
    torch.manual_seed(0)
    model, batch = build("image")
    perturb(model).eval()
    twin = copy.deepcopy(model)
    x_t, t = torch.randn(model.latent_shape(2)), torch.tensor([5, 60])
    torch.testing.assert_close(twin.denoise(x_t, t), model.denoise(x_t, t), rtol=0, atol=0)
    before = model.denoise(x_t, t)
    twin.backbone.adaLN_modulation[0][1].weight.add_(1.0)
    assert not torch.allclose(twin.denoise(x_t, t), before)
    torch.testing.assert_close(model.denoise(x_t, t), before, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# Save / load, training, sampling
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,extra", [("text", {"qgfd_learnable_alpha": True}), ("image", {}), ("pixels", {}),
                                        ("audio", {}), ("video", {})])
@torch.no_grad()
def test_save_and_auto_load_round_trip(kind, extra, tmp_path):
    torch.manual_seed(0)
    model, batch = build(kind, **extra)
    perturb(model).eval()
    model.save_pretrained(tmp_path)
    assert "modeling_qgfd_pretrained.py" in os.listdir(tmp_path)  # travels for trust_remote_code
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and isinstance(loaded.backbone, PretrainedDenoiser)
    assert loaded.config.denoiser == "pretrained"
    state, again = model.state_dict(), loaded.state_dict()
    assert set(state) == set(again)
    if extra:
        assert any(".qgfd_alpha.logit" in k for k in state if k.startswith("backbone.stack."))
    for key, value in state.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)
    x_t = torch.randn(model.latent_shape(4), generator=torch.Generator().manual_seed(3))
    t = torch.tensor([1, 10, 50, 99])
    torch.testing.assert_close(loaded.denoise(x_t, t, *condition(loaded, batch)), model.denoise(x_t, t, *condition(model, batch)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["text", "image", "audio"])
def test_one_batch_overfits(kind):
    torch.manual_seed(0)
    model, batch = build(kind)
    before, after = overfit_losses(model, batch)
    assert after < 0.5 * before, (kind, before, after)


def test_sampling_through_the_pipeline(backbones, tmp_path):
    torch.manual_seed(0)
    text, tokenizer, _ = create_qgfd_diffusion_model("text", backbones["t5"], DiffusionConfig(**TINY, latent_dim=32),
                                                     denoiser="pretrained", seq_len=6, num_timesteps=20)
    perturb(text).eval()
    pipe = pipeline("qgfd-diffusion", model=text, tokenizer=tokenizer, device="cpu")
    out = pipe(["hello world", "red blue"], num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert len(out) == 2 and all(isinstance(o["generated_text"], str) for o in out[0])
    # Saved with its tokenizer, the folder samples the same through pipeline(model=folder).
    text.save_pretrained(tmp_path / "text")
    again = pipeline("qgfd-diffusion", model=str(tmp_path / "text"), device="cpu")
    assert again("hello world", seed=0, num_inference_steps=3, progress_bar=False) == pipe(
        "hello world", seed=0, num_inference_steps=3, progress_bar=False)

    # Pixel patches with a pretrained ViT as the denoiser; its processor follows the model, not the ViT.
    image, processor, _ = create_qgfd_diffusion_model("image", backbones["vit"], DiffusionConfig(**TINY, latent_dim=4),
                                                      denoiser="pretrained", latent_space="pixels", image_size=8, patch_size=2,
                                                      num_channels=1, num_timesteps=20)
    assert image.adapter.encoder is None and processor.size == {"height": 8, "width": 8}
    torch.testing.assert_close(image.backbone.stack.layers[0].mlp.fc1.weight,
                               ViTModel.from_pretrained(backbones["vit"], add_pooling_layer=False).layers[0].mlp.fc1.weight, rtol=0, atol=0)
    images = pipeline("qgfd-diffusion", model=image.eval(), device="cpu")(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert isinstance(images[0]["image"], Image.Image) and images[0]["image"].size == (8, 8)

    audio, _, _ = create_qgfd_diffusion_model("audio", backbones["w2v"], DiffusionConfig(**TINY, latent_dim=32),
                                              denoiser="pretrained", num_samples=400, num_timesteps=20)
    waves = pipeline("qgfd-diffusion", model=audio.eval(), device="cpu")(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert waves[0]["audio"].shape == (400,) and waves[0]["audio"].dtype == np.float32


@pytest.mark.slow
def test_saved_folder_loads_without_qgfd_hf(tmp_path):
    from helpers_subprocess import run_without_qgfd_hf

    torch.manual_seed(0)
    model, batch = build("text")
    perturb(model).eval()
    model.save_pretrained(tmp_path / "model")
    x_t = torch.randn(model.latent_shape(4), generator=torch.Generator().manual_seed(0))
    torch.save((x_t, batch["cond_input_ids"], batch["cond_attention_mask"]), tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model.denoise(x_t, torch.tensor([3, 7, 50, 99]), *condition(model, batch))
    out = run_without_qgfd_hf(f"""
        import torch
        from transformers import AutoModel
        torch.set_num_threads(1)  # as this process: the same reduction order
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        x_t, ids, mask = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model.denoise(x_t, torch.tensor([3, 7, 50, 99]), *model.encode_condition(input_ids=ids, attention_mask=mask))
        torch.save(out, {str(tmp_path / "out.pt")!r})
        print(type(model.backbone).__module__, type(model.backbone).__name__)
    """)
    module, name = out.split()[-2:]
    assert module.startswith("transformers_modules.") and module.endswith("modeling_qgfd_pretrained") and name == "PretrainedDenoiser"
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


def test_backbones_without_a_usable_stack_are_refused():
    usable = r"audio: wav2vec2, image: vit, text: t5/mt5/bert/roberta/distilbert, video: vit"
    with pytest.raises(ValueError, match=r"tabular model has no pretrained backbone.*denoiser='qgfd'.*" + usable):
        QGFDTabularConfig(num_features=3, **TINY, denoiser="pretrained")
    with pytest.raises(ValueError, match=r"tabular model has no pretrained backbone"):
        create_qgfd_diffusion_model("tabular", None, DiffusionConfig.from_preset("tiny"), num_features=3, denoiser="pretrained")
    # Pixel patches without a backbone: nothing to take the stack from.
    with pytest.raises(ValueError, match=r"modality 'image' needs a backbone_config of type 'vit'.*got no backbone_config.*" + usable):
        QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **TINY, denoiser="pretrained")
    with pytest.raises(ValueError, match=r"needs a backbone_config of type 'vit'"):
        create_qgfd_diffusion_model("image", None, DiffusionConfig(**TINY, latent_dim=4), image_size=8, patch_size=2,
                                    num_channels=1, denoiser="pretrained")
    # A text encoder with no stack the denoiser knows (ELECTRA), and the shared model.
    electra = ElectraConfig(vocab_size=30, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64)
    with pytest.raises(ValueError, match=r"'t5' or 'mt5' or 'bert' or 'roberta' or 'distilbert'.*got backbone model_type='electra'"):
        QGFDTextConfig(backbone_config=electra, **TINY, denoiser="pretrained")
    text = QGFDTextConfig(backbone_config=t5_config(), seq_len=8, **TINY)
    # The shared model's pretrained denoiser is a T5 stack (relative positions fit every modality).
    with pytest.raises(ValueError, match=r"modality 'shared' needs a backbone_config of type 't5' or 'mt5' or 'bert'.*got no backbone_config"):
        QGFDSharedConfig(modalities=["text"], text_config=text, latent_dim=32, **TINY, denoiser="pretrained")
    with pytest.raises(ValueError, match=r"modality 'shared' needs a backbone_config of type 't5'.*'vit'"):
        QGFDSharedConfig(modalities=["text"], text_config=text, latent_dim=32, **TINY, denoiser="pretrained",
                         backbone_config=vit_config())
    # adaLN-Zero is how the timestep gets in.
    with pytest.raises(ValueError, match="time_conditioning must be 'adaln'"):
        QGFDImageConfig(backbone_config=vit_config(), **TINY, denoiser="pretrained", time_conditioning="add")
    # A ViT backbone with pixel patches is the denoiser's only; the fresh denoiser takes none.
    with pytest.raises(ValueError, match=r'latent_space="pixels" uses no encoder.*denoiser="pretrained"'):
        QGFDImageConfig(latent_space="pixels", backbone_config=vit_config(), **TINY)
    with pytest.raises(ValueError, match="no encoder for `backbone_qgfd` to patch"):
        QGFDImageConfig(latent_space="pixels", backbone_config=vit_config(), backbone_qgfd={"steps": 1}, **TINY, denoiser="pretrained")
    with pytest.raises(ValueError, match=r"Unknown denoiser 'dit'; allowed: 'qgfd', 'pretrained'"):
        QGFDImageConfig(backbone_config=vit_config(), **TINY, denoiser="dit")


def test_bad_inputs_to_the_denoiser():
    model, batch = build("image")
    with pytest.raises(ValueError, match="latent_dim=32"):
        model.denoise(torch.randn(2, 16, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        model.denoise(torch.randn(2, 16, 32), torch.tensor([1, 1000]))
    with pytest.raises(ValueError, match="unconditional"):
        model.backbone(torch.randn(2, 16, 32), torch.tensor([1, 2]), cond_tokens=torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match="NaN"):
        model.denoise(torch.full((2, 16, 32), float("nan")), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="Hub id, a folder or a loaded encoder"):
        model.backbone.load_pretrained_stack(3)
    with pytest.raises(ValueError, match="lacks weights of the denoiser's stack"):
        model.backbone.load_pretrained_stack(torch.nn.Linear(2, 2))


def test_shared_model_with_the_text_backbones_t5_stack_as_denoiser(tmp_path):
    """denoiser="pretrained" for the shared model: the text backbone's T5 encoder stack denoises
    text and image latents alike (T5's relative positions fit any latent length)."""
    t5_dir = tmp_path / "t5"
    torch.manual_seed(0)
    T5ForConditionalGeneration(t5_config()).save_pretrained(t5_dir)
    make_tokenizer().save_pretrained(t5_dir)
    cfg = DiffusionConfig(**TINY, latent_dim=32)
    model, processors, _ = create_qgfd_diffusion_model(
        "shared", {"text": str(t5_dir), "image": None}, cfg, denoiser="pretrained",
        modality_kwargs={"image": dict(latent_space="pixels", image_size=8, patch_size=2, num_channels=1)})
    assert isinstance(model.backbone, PretrainedDenoiser) and model.backbone.stack.config.model_type == "t5"
    # The stack holds the checkpoint's encoder weights, copied from the text adapter's encoder.
    saved = T5ForConditionalGeneration.from_pretrained(t5_dir)
    torch.testing.assert_close(model.backbone.stack.block[0].layer[0].SelfAttention.q.weight,
                               saved.encoder.block[0].layer[0].SelfAttention.q.weight)
    with torch.no_grad():
        src = make_tokenizer()(["hello world", "red blue green"], return_tensors="pt", padding=True)
        cond = {"text": model.encode_condition(**src, modality="text"), "image": (None, None)}
        for modality in ("text", "image"):
            x = torch.randn(model.latent_shape(2, modality=modality))
            out = model.denoise(x, torch.tensor([1, 500]), *cond[modality], modality=modality)
            assert out.shape == x.shape and torch.isfinite(out).all()
    # A training step reaches the stack; save / AutoModel round trip gives the same outputs.
    batch = {"pixel_values": torch.rand(2, 1, 8, 8) * 2 - 1}
    model.set_modality("image")
    perturb(model)
    model.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert model.backbone.stack.block[0].layer[0].SelfAttention.q.weight.grad is not None
    model.eval().save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(tmp_path / "saved")
    assert isinstance(again.backbone, PretrainedDenoiser)
    x = torch.randn(model.latent_shape(2, modality="image"))
    with torch.no_grad():
        torch.testing.assert_close(again.denoise(x, torch.tensor([3, 7]), modality="image"),
                                   model.denoise(x, torch.tensor([3, 7]), modality="image"))
