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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_registered_on_import():
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "qgfd-diffusion" in PIPELINE_REGISTRY.get_supported_tasks()
    assert isinstance(make_pipe(image_model()), qgfd_hf.QGFDDiffusionPipeline)


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


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_and_latent_output(sampler):
    pipe = make_pipe(image_model())
    out = pipe(num_samples=2, sampler=sampler, num_inference_steps=T, eta=0.0 if sampler == "ddpm" else 0.5, seed=0,
               output_type="latent", progress_bar=False)
    assert out[0]["latent"].shape == image_model().latent_shape(1)[1:]
    assert torch.isfinite(out[0]["latent"]).all()


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
    tab = TabularQGFDDiffusionModel(QGFDTabularConfig(num_features=5, num_tokens=3, tabular_hidden_dim=32, num_timesteps=T, **TINY)).eval()
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
    with pytest.raises(ValueError, match="sampler"):
        pipe(sampler="euler")
    with pytest.raises(ValueError, match="num_samples"):
        pipe(num_samples=0)
    with pytest.raises(ValueError, match="Unknown argument"):
        pipe(guidance_scale=7.5)
    text_pipe = make_pipe(text_model(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match="conditional"):
        text_pipe(progress_bar=False)
    with pytest.raises(ValueError, match="strings"):
        text_pipe([1, 2], progress_bar=False)
