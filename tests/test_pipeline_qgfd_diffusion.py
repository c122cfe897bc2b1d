"""Tests of pipeline("qgfd-diffusion") (qgfd_hf/pipeline_qgfd_diffusion.py).

Tiny models built in-process; the Hub is the local stand-in of tests/hub_server.py.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, pipeline

import qgfd_hf
from qgfd_hf import (
    AudioQGFDDiffusionModel,
    ImageQGFDDiffusionModel,
    QGFDAudioConfig,
    QGFDImageConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
    TabularQGFDDiffusionModel,
    TextQGFDDiffusionModel,
    VideoQGFDDiffusionModel,
)
from test_modeling_qgfd import TINY, make_tokenizer, t5_config, w2v2_config

T = 20  # training timesteps of the tiny models


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def image_model():
    torch.manual_seed(0)
    cfg = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_timesteps=T, **TINY)
    return ImageQGFDDiffusionModel(cfg).eval()


def text_model():
    torch.manual_seed(0)
    cfg = QGFDTextConfig(backbone_config=t5_config(), seq_len=6, num_timesteps=T, **TINY)
    return TextQGFDDiffusionModel(cfg).eval()


def make_pipe(model, **kw):
    return pipeline("qgfd-diffusion", model=model, device="cpu", **kw)


def test_registered_once_a_qgfd_config_exists():
    from transformers.pipelines import PIPELINE_REGISTRY

    model = image_model()  # its config registered the pipeline (registration_qgfd), if nothing had before
    assert "qgfd-diffusion" in PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(make_pipe(model), qgfd_hf.QGFDDiffusionPipeline)


def test_image_samples_are_pil_images_and_reproducible():
    pipe = make_pipe(image_model())
    out = pipe(num_samples=3, seed=0, num_inference_steps=5, progress_bar=False)
    assert len(out) == 3 and all(isinstance(o["image"], Image.Image) for o in out)
    assert out[0]["image"].size == (8, 8) and out[0]["image"].mode == "L"
    a = pipe(num_samples=3, seed=0, num_inference_steps=5, progress_bar=False, output_type="np")
    b = pipe(num_samples=3, generator=torch.Generator().manual_seed(0), num_inference_steps=5, progress_bar=False, output_type="np")
    c = pipe(num_samples=3, seed=1, num_inference_steps=5, progress_bar=False, output_type="np")
    assert a[0]["np"].shape == (8, 8, 1) and 0 <= a[0]["np"].min() and a[0]["np"].max() <= 1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["np"], y["np"])
    assert not np.allclose(a[0]["np"], c[0]["np"])
    # The PIL image is the "np" output, quantised.
    np.testing.assert_array_equal(np.asarray(out[0]["image"]), (a[0]["np"][..., 0] * 255).round().astype(np.uint8))


def test_batch_size_does_not_change_samples_for_ddim_eta0():
    pipe = make_pipe(image_model())
    lat = lambda bs: torch.stack([o["latent"] for o in pipe(num_samples=4, seed=3, num_inference_steps=4, progress_bar=False,
                                                             output_type="latent", batch_size=bs)])
    whole, halves = lat(4), lat(2)
    assert whole.shape == (4,) + image_model().latent_shape(1)[1:]
    # The starting noise is drawn for all samples at once: batching changes nothing.
    torch.testing.assert_close(whole, halves)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_samplers_and_latent_output(sampler):
    pipe = make_pipe(image_model())
    out = pipe(num_samples=2, sampler=sampler, num_inference_steps=T - 1, eta=0.5 if sampler == "ddim" else 0.0, seed=0,
               output_type="latent", progress_bar=False)
    assert out[0]["latent"].shape == image_model().latent_shape(1)[1:]
    assert torch.isfinite(out[0]["latent"]).all()


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_pipeline_samples_as_the_sampling_loop(sampler, spacing):
    # The pipeline's sampler / timestep_spacing / steps_offset reach scheduling_qgfd_sampling.sample_loop.
    model = image_model()
    offset = 1 if spacing == "leading" else 0
    out = make_pipe(model)(num_samples=2, sampler=sampler, timestep_spacing=spacing, steps_offset=offset, num_inference_steps=6,
                           seed=0, output_type="latent", progress_bar=False)
    # The pipeline draws the starting noise from the seed's generator, then the steps' noise (DDPM).
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(model.latent_shape(2), generator=gen)
    expected = qgfd_hf.sample_loop(model.make_denoise_fn(), model.latent_shape(2), model.get_schedule(), sampler=sampler,
                                   num_inference_steps=6, timestep_spacing=spacing, steps_offset=offset,
                                   prediction_type=model.config.prediction_type, generator=gen, x_T=x_T, progress=False)
    torch.testing.assert_close(torch.stack([o["latent"] for o in out]), expected)


def test_pipeline_samples_with_a_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers")
    model = image_model()
    scheduler = qgfd_hf.diffusers_scheduler(diffusers.DPMSolverMultistepScheduler, model.get_schedule(), model.config.prediction_type,
                                            timestep_spacing="trailing")
    pipe = make_pipe(model)
    kw = dict(num_samples=3, num_inference_steps=8, seed=0, output_type="latent", progress_bar=False)
    theirs = torch.stack([o["latent"] for o in pipe(sampler=scheduler, **kw)])
    ours = torch.stack([o["latent"] for o in pipe(sampler="dpmsolver++", timestep_spacing="trailing", **kw)])
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)  # diffusers' tables are float32
    with pytest.raises(ValueError, match="set in a diffusers scheduler's own config"):
        pipe(sampler=scheduler, timestep_spacing="leading", **kw)


def test_conditional_text_gives_strings_per_input():
    tok = make_tokenizer()
    pipe = make_pipe(text_model(), tokenizer=tok)
    one = pipe("hello world", num_samples=2, seed=0, num_inference_steps=4, progress_bar=False)
    assert len(one) == 2 and all(isinstance(o["generated_text"], str) for o in one)
    many = pipe(["hello world", "red blue green"], num_samples=3, seed=0, num_inference_steps=4, progress_bar=False)
    assert len(many) == 2 and all(len(m) == 3 for m in many)
    ids = pipe("hello world", seed=0, num_inference_steps=4, progress_bar=False, output_type="np")
    assert ids[0]["np"].shape == (6,) and ids[0]["np"].dtype.kind == "i"
    # Decoded strings use only the tokenizer's vocabulary.
    vocab = set(tok.get_vocab())
    assert all(w in vocab for o in one for w in o["generated_text"].split())


def test_audio_video_tabular_sample_calls():
    torch.manual_seed(0)
    audio = AudioQGFDDiffusionModel(QGFDAudioConfig(backbone_config=w2v2_config(), num_samples=400, num_timesteps=T, **TINY)).eval()
    out = make_pipe(audio)(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert out[0]["audio"].dtype == np.float32 and out[0]["audio"].ndim == 1 and out[0]["sampling_rate"] == 16000
    video = VideoQGFDDiffusionModel(QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4,
                                                    num_channels=1, num_timesteps=T, **TINY)).eval()
    out = make_pipe(video)(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert out[0]["frames"].shape == (2, 8, 8, 1) and out[0]["frames"].dtype == np.uint8
    tab = TabularQGFDDiffusionModel(QGFDTabularConfig(latent_space="mlp", num_features=5, num_tokens=3, tabular_hidden_dim=32, num_timesteps=T, **TINY)).eval()
    tab.fit_normalization(torch.randn(16, 5) * 3 + 10)
    rows = make_pipe(tab)(num_samples=3, seed=0, num_inference_steps=3, progress_bar=False)
    assert len(rows) == 3 and len(rows[0]["row"]) == 5 and all(isinstance(v, float) for v in rows[0]["row"].values())


def test_bad_input():
    pipe = make_pipe(image_model())
    with pytest.raises(ValueError, match="unconditional"):
        pipe("a cat", progress_bar=False)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(num_inference_steps=0)
    with pytest.raises(ValueError, match=r"\[1, 20\]"):
        pipe(num_inference_steps=T + 1, progress_bar=False)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="pil")
    with pytest.raises(ValueError, match=r"Unknown sampler 'euler'; allowed: 'ddpm', 'ddim', 'dpmsolver\+\+'"):
        pipe(sampler="euler")
    with pytest.raises(ValueError, match="or a diffusers SchedulerMixin instance.*got a dict"):
        pipe(sampler={"name": "ddim"})
    with pytest.raises(ValueError, match=r"Unknown timestep_spacing 'uniform'; allowed: 'linspace', 'leading', 'trailing'"):
        pipe(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="steps_offset"):
        pipe(steps_offset=-1)
    with pytest.raises(ValueError, match="'leading' spacing only"):
        pipe(steps_offset=1, timestep_spacing="trailing", progress_bar=False)
    with pytest.raises(ValueError, match="not distinct"):  # DPM-Solver++ takes at most T - 1 steps with linspace
        pipe(sampler="dpmsolver++", num_inference_steps=T, progress_bar=False)
    with pytest.raises(ValueError, match="num_samples"):
        pipe(num_samples=0)
    with pytest.raises(ValueError, match="Unknown argument"):
        pipe(negative_prompt="x")
    with pytest.raises(ValueError, match="classifier-free guidance needs a conditional model"):
        pipe(guidance_scale=7.5)  # an unconditional model has nothing to guide towards (tests/test_guidance.py)
    text_pipe = make_pipe(text_model(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match="conditional"):
        text_pipe(progress_bar=False)
    with pytest.raises(ValueError, match="strings"):
        text_pipe([1, 2], progress_bar=False)


# ----------------------------------------------------------------------------------------
# Saved folders, the Hub, and loading where qgfd_hf is not installed
# ----------------------------------------------------------------------------------------


def saved_text_model(path):
    model = text_model()
    model.processor = make_tokenizer()
    model.save_pretrained(path)
    return model


def test_save_pretrained_writes_tokenizer_card_and_code(tmp_path):
    saved_text_model(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "pipeline_qgfd_diffusion.py"} <= files
    card = (tmp_path / "README.md").read_text()
    assert "library_name: qgfd_hf" in card and "pipeline_tag: text2text-generation" in card
    # The installed config class drops `custom_pipelines`, so nothing asks for trust_remote_code.
    assert "custom_pipelines" in (tmp_path / "config.json").read_text()
    assert not hasattr(AutoModel.from_pretrained(tmp_path).config, "custom_pipelines")


def test_pipeline_from_folder_loads_tokenizer_and_samples(tmp_path):
    model = saved_text_model(tmp_path)
    pipe = pipeline("qgfd-diffusion", model=str(tmp_path), device="cpu")
    assert type(pipe.model) is TextQGFDDiffusionModel and pipe.tokenizer is not None
    a = pipe("hello world", seed=0, num_inference_steps=3, progress_bar=False)
    b = make_pipe(model, tokenizer=make_tokenizer())("hello world", seed=0, num_inference_steps=3, progress_bar=False)
    assert a == b


def test_missing_weights_name_the_file(tmp_path):
    saved_text_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModel.from_pretrained(tmp_path)
    with pytest.raises((OSError, ValueError), match="model.safetensors"):  # pipeline() wraps the OSError
        pipeline("qgfd-diffusion", model=str(tmp_path), device="cpu")


def test_push_to_hub_round_trip(hub):
    model = text_model()
    model.processor = make_tokenizer()
    model.push_to_hub("user/qgfd-text")
    files = hub.list_files("user/qgfd-text")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    assert b"user/qgfd-text" in hub.read_file("user/qgfd-text", "README.md")
    again = AutoModel.from_pretrained("user/qgfd-text")
    assert type(again) is TextQGFDDiffusionModel
    x = torch.randn(2, *model.latent_shape(1)[1:])
    t = torch.tensor([3, 7])
    cond = make_tokenizer()(["hello world", "red blue"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(again.denoise(x, t, *again.encode_condition(**cond)), model.denoise(x, t, *model.encode_condition(**cond)))
    pipe = pipeline("qgfd-diffusion", model="user/qgfd-text", device="cpu")
    assert pipe("hello world", seed=0, num_inference_steps=3, progress_bar=False) == make_pipe(model, tokenizer=make_tokenizer())(
        "hello world", seed=0, num_inference_steps=3, progress_bar=False)
    image = image_model()
    image.push_to_hub("user/qgfd-digits")
    out = pipeline("qgfd-diffusion", model="user/qgfd-digits", device="cpu")(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert isinstance(out[0]["image"], Image.Image)


@pytest.mark.slow
def test_loads_where_qgfd_hf_is_not_installed(tmp_path):
    from helpers_subprocess import run_without_qgfd_hf

    saved_text_model(tmp_path / "text")
    image_model().save_pretrained(tmp_path / "image")
    out = run_without_qgfd_hf(f"""
        import torch
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(tmp_path / 'text')!r}, trust_remote_code=True)
        print(type(model).__module__.split(".")[0], type(model).__name__)
        pipe = pipeline(model={str(tmp_path / 'text')!r}, trust_remote_code=True, device="cpu")
        print(type(pipe).__name__, pipe("hello world", seed=0, num_inference_steps=3, progress_bar=False)[0]["generated_text"] is not None)
        pipe = pipeline(model={str(tmp_path / 'image')!r}, trust_remote_code=True, device="cpu")
        print(pipe(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)[0]["image"].size)
    """)
    lines = out.strip().splitlines()
    assert lines[-3] == "transformers_modules TextQGFDDiffusionModel"
    assert lines[-2] == "QGFDDiffusionPipeline True"
    assert lines[-1] == "(8, 8)"


def test_text_pipeline_applies_the_models_clamping():
    tok = make_tokenizer()
    model = text_model()
    plain = make_pipe(model, tokenizer=tok)("hello world", seed=0, num_inference_steps=4, progress_bar=False, output_type="latent")
    model.config.clamp_to_embeddings = True
    clamped = make_pipe(model, tokenizer=tok)("hello world", seed=0, num_inference_steps=4, progress_bar=False, output_type="latent")
    assert not torch.allclose(plain[0]["latent"], clamped[0]["latent"])
    # With clamping the last step's x0 is a sequence of token embeddings: the latents round exactly.
    E = model.adapter.latent_embeddings()
    dist = torch.cdist(clamped[0]["latent"], E).min(-1).values
    assert dist.max() < 1e-4


def test_shared_model_samples_its_active_modality():
    from qgfd_hf import QGFDSharedConfig, SharedQGFDDiffusionModel

    torch.manual_seed(0)
    text = QGFDTextConfig(backbone_config=t5_config(), seq_len=6, num_timesteps=T, **TINY)
    image = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_timesteps=T, **TINY)
    model = SharedQGFDDiffusionModel(QGFDSharedConfig(modalities=["text", "image"], text_config=text, image_config=image,
                                                      latent_dim=32, num_timesteps=T, **TINY)).eval()
    pipe = make_pipe(model.set_modality("image"), tokenizer=make_tokenizer())
    out = pipe(num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert isinstance(out[0]["image"], Image.Image) and out[0]["image"].size == (8, 8)
    model.set_modality("text")
    texts = pipe("hello world", num_samples=2, seed=0, num_inference_steps=3, progress_bar=False)
    assert len(texts) == 2 and all(isinstance(t["generated_text"], str) for t in texts)
