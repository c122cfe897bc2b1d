"""Tests for the audio modality (qgfd_hf/tasks/audio.py, data/audio.py, metrics/audio.py and the audio model's latents):
the loaders' checks, the fitted audio scale, the scores against their baselines, and tiny
train -> save -> AutoModel -> pipeline, demo and sample runs through the CLI."""

import json
import wave

import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoModel, pipeline

import qgfd_hf  # noqa: F401  (the configs; the models and the pipeline with the first config)
from qgfd_hf import AudioQGFDDiffusionModel, QGFDAudioConfig
from qgfd_hf.cli import main
from qgfd_hf.data.audio import fit_clip, load_audio_csv, load_audio_folder, make_sound_dataset
from qgfd_hf.metrics.audio import SoundEvaluator, audio_targets_met, log_mel_distance, snr_db

TINY = ["--d-model", "32", "--num-heads", "4", "--num-layers", "1", "--d-ff", "64", "--batch-size", "4", "--no-progress"]
RATE, CLIP = 8000, 800  # 0.1 s clips keep the tests fast


def _tone(freq, n=CLIP, rate=RATE):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


@pytest.fixture
def audio_folder(tmp_path):
    """A labelled folder: dog/ at 16 kHz (resampled), cat/ as flac at 8 kHz, one clip too long, one short."""
    root = tmp_path / "clips"
    (root / "dog").mkdir(parents=True)
    (root / "cat").mkdir()
    for i in range(3):
        soundfile.write(root / "dog" / f"{i}.wav", _tone(440, n=2 * CLIP + 100 * i, rate=16000), 16000)
        soundfile.write(root / "cat" / f"{i}.flac", _tone(1000, n=CLIP - 200 * i), RATE)
    return root


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# -- loaders ------------------------------------------------------------------------------


def test_folder_is_resampled_cut_padded_and_labelled(audio_folder):
    ds = load_audio_folder(str(audio_folder), RATE, CLIP)
    assert len(ds) == 6 and ds.features["label"].names == ["cat", "dog"]
    waves = np.asarray(ds["input_values"], dtype=np.float32)
    assert waves.shape == (6, CLIP)
    # a 440 Hz tone at 16 kHz stays a 440 Hz tone at 8 kHz: its spectrum peaks there
    dog = waves[np.asarray(ds["label"]) == 1][0]
    assert abs(np.fft.rfftfreq(CLIP, 1 / RATE)[np.abs(np.fft.rfft(dog)).argmax()] - 440) <= RATE / CLIP
    # the shortest cat clip (400 samples) is zero-padded at the end
    short = waves[[p.endswith("2.flac") for p in ds["path"]].index(True)]
    assert np.all(short[CLIP - 200 :] == 0) and np.abs(short[:100]).max() > 0.1


def test_folder_errors_name_the_file(tmp_path, audio_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty"):
        load_audio_folder(str(empty), RATE, CLIP)
    with pytest.raises(ValueError, match="does not exist"):
        load_audio_folder(str(tmp_path / "nowhere"), RATE, CLIP)
    (audio_folder / "dog" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"not audio.*notes\.txt"):
        load_audio_folder(str(audio_folder), RATE, CLIP)
    (audio_folder / "dog" / "notes.txt").unlink()
    (audio_folder / "dog" / "broken.wav").write_bytes(b"RIFF not really a wav")
    with pytest.raises(ValueError, match=r"broken\.wav.*cannot be read"):
        load_audio_folder(str(audio_folder), RATE, CLIP)
    (audio_folder / "dog" / "broken.wav").unlink()
    bad = _tone(440)
    bad[10] = np.nan
    soundfile.write(audio_folder / "dog" / "nan.wav", bad, RATE, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav.*NaN"):
        load_audio_folder(str(audio_folder), RATE, CLIP)
    (audio_folder / "dog" / "nan.wav").unlink()
    soundfile.write(audio_folder / "dog" / "odd.wav", _tone(440, rate=7919), 7919)
    with pytest.raises(ValueError, match=r"odd\.wav.*7919 Hz cannot be resampled"):
        load_audio_folder(str(audio_folder), RATE, CLIP)
    (audio_folder / "dog" / "odd.wav").unlink()
    soundfile.write(audio_folder / "loose.wav", _tone(440), RATE)
    with pytest.raises(ValueError, match=r"mixes labelled files.*loose\.wav"):
        load_audio_folder(str(audio_folder), RATE, CLIP)


def test_csv_of_paths_with_labels_and_its_errors(tmp_path, audio_folder):
    csv = tmp_path / "clips.csv"
    csv.write_text("path,label\nclips/dog/0.wav,dog\nclips/cat/0.flac,cat\n" + f"{audio_folder / 'cat' / '1.flac'},cat\n")
    ds = load_audio_csv([str(csv)], RATE, CLIP)
    assert len(ds) == 3 and ds.features["label"].names == ["cat", "dog"] and list(ds["label"]) == [1, 0, 0]
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("file_name\nclips/dog/0.wav\n")
    assert "label" not in load_audio_csv([str(nolabel)], RATE, CLIP).column_names
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("filename,label\nclips/dog/0.wav,dog\n")
    with pytest.raises(ValueError, match=r"wrong\.csv.*no path column.*'path' or 'file_name' or 'audio'.*\['filename', 'label'\]"):
        load_audio_csv([str(wrong)], RATE, CLIP)
    with pytest.raises(ValueError, match=r"no label column 'kind'"):
        load_audio_csv([str(csv)], RATE, CLIP, label_column="kind")
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label\nclips/dog/0.wav,dog\nclips/dog/9.wav,dog\n")
    with pytest.raises(ValueError, match=r"row 3: audio file 'clips/dog/9.wav' does not exist"):
        load_audio_csv([str(missing)], RATE, CLIP)
    blank = tmp_path / "blank.csv"
    blank.write_text("path,label\nclips/dog/0.wav,dog\nclips/dog/1.wav,\n")
    with pytest.raises(ValueError, match=r"row 3: the label column 'label' is empty"):
        load_audio_csv([str(blank)], RATE, CLIP)


def test_cli_refuses_bad_audio_flags(tmp_path, audio_folder, capsys):
    base = ["train", "--modality", "audio", "--output-dir", str(tmp_path / "o")] + TINY
    code, _, err = _run(base + ["--data-dir", str(audio_folder), "--clip-seconds", "0.105"], capsys)
    assert code == 2 and "not a multiple of --frame-size 80" in err
    code, _, err = _run(base + ["--data-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = _run(base + ["--data-dir", str(audio_folder), "--image-size", "8"], capsys)
    assert code == 2 and "--image-size is a image flag" in err


def test_fit_clip_resamples_to_the_rate():
    x = _tone(440, n=4410, rate=44100)
    y = fit_clip(x, 44100, RATE, 800)
    assert y.shape == (800,) and abs(np.fft.rfftfreq(800, 1 / RATE)[np.abs(np.fft.rfft(y)).argmax()] - 440) <= 10


# -- the model's latents and its fitted scale -------------------------------------------


def test_waveform_latents_decode_exactly_and_refuse_until_fitted():
    model = AudioQGFDDiffusionModel(QGFDAudioConfig(num_samples=CLIP, sampling_rate=RATE, frame_size=80, d_model=32, num_heads=4,
                                                    num_layers=1, d_ff=64))
    waves = torch.from_numpy(np.stack([_tone(440), _tone(900)]))
    with pytest.raises(ValueError, match="never fitted.*fit_audio_scale"):
        model.compute_loss({"input_values": waves})
    with pytest.raises(ValueError, match="never fitted.*decode"):
        model.decode_latents(torch.zeros(1, 10, 80))
    with pytest.raises(ValueError, match="never fitted"):
        pipeline("qgfd-diffusion", model=model)(num_samples=1, num_inference_steps=1, progress_bar=False)
    rms = model.fit_audio_scale(waves)
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=1e-3) and model.config.audio_scale == rms
    x0 = model.audio_to_latents(waves)
    assert x0.shape == (2, 10, 80) and x0.std().item() == pytest.approx(1.0, rel=0.01)
    torch.testing.assert_close(model.decode_latents(x0), waves)
    assert torch.isfinite(model.compute_loss({"input_values": waves}).loss)
    with pytest.raises(ValueError, match="frame_size.*must divide.*num_samples"):
        QGFDAudioConfig(num_samples=810, frame_size=80)


def test_mdct_latents_are_exact_and_whitened_per_bin(tmp_path):
    model = AudioQGFDDiffusionModel(QGFDAudioConfig(num_samples=CLIP, sampling_rate=RATE, frame_size=80, latent_space="mdct",
                                                    d_model=32, num_heads=4, num_layers=1, d_ff=64))
    waves = torch.from_numpy(np.stack([_tone(440), _tone(900), _tone(2000)]))
    with pytest.raises(ValueError, match="never fitted"):
        model.audio_to_latents(waves)
    model.fit_audio_scale(waves)
    x0 = model.audio_to_latents(waves)
    assert x0.shape == (3, 11, 80) and model.config.num_latent_tokens() == 11
    torch.testing.assert_close(model.decode_latents(x0), waves, atol=1e-5, rtol=0)
    # each bin is divided by the square root of its spread (half-way whitening): a latent bin's
    # std is then that square root, far flatter across bins than the raw spectrum
    scale = model.adapter.bin_scale
    per_bin = x0.reshape(-1, 80).std(0)
    used = scale > (1e-3 ** 0.5) * scale.max() * 1.01
    assert used.sum() >= 3 and torch.allclose(per_bin[used], scale[used], rtol=1e-3)
    model.save_pretrained(tmp_path / "m")
    again = AutoModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again.adapter.bin_scale, model.adapter.bin_scale)
    torch.testing.assert_close(again.decode_latents(x0), waves, atol=1e-5, rtol=0)


def test_spectrogram_latents_keep_the_magnitudes():
    model = AudioQGFDDiffusionModel(QGFDAudioConfig(num_samples=CLIP, sampling_rate=RATE, frame_size=40, latent_space="spectrogram",
                                                    d_model=32, num_heads=4, num_layers=1, d_ff=64))
    waves = np.stack([_tone(440), _tone(900), np.zeros(CLIP, np.float32)])
    waves[2, 300:500] = _tone(2000)[:200]
    with pytest.raises(ValueError, match="never fitted"):
        model.audio_to_latents(torch.from_numpy(waves))
    model.fit_audio_scale(torch.from_numpy(waves))
    x0 = model.audio_to_latents(torch.from_numpy(waves))
    assert x0.shape == (3, 21, 41) and model.config.latent_dim == 41 and x0.std().item() == pytest.approx(1.0, rel=0.05)
    rec = model.decode_latents(x0).numpy()
    # the phase is re-estimated (Griffin-Lim): spectra come back, the samples do not
    assert log_mel_distance(waves, rec, RATE) < 0.5 * log_mel_distance(waves, waves[[1, 2, 0]], RATE)
    assert snr_db(waves, rec) < 10


def test_wav2vec2_decoder_is_trained_with_a_spectral_loss():
    from transformers import Wav2Vec2Config

    w = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
                       conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
    waves = {"input_values": torch.from_numpy(np.stack([_tone(440), _tone(900)]))}
    losses = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = AudioQGFDDiffusionModel(QGFDAudioConfig(backbone_config=w, num_samples=CLIP, d_model=32, num_heads=4, num_layers=1,
                                                        d_ff=64, spectral_loss_weight=weight))
        assert model.config.latent_space == "wav2vec2"
        x0 = model.data_to_latents(waves)
        losses[weight] = model.adapter.recon_loss(waves, x0).item()
    assert losses[1.0] > losses[0.0] > 0  # the STFT term adds to the MSE


# -- scores ---------------------------------------------------------------------------------


def test_evaluator_real_scores_well_and_noise_badly():
    ds = make_sound_dataset(num_per_class=16, sampling_rate=RATE, num_samples=2000, seed=0)
    train, test = ds.select(range(120)), ds.select(range(120, 160))
    waves = lambda d: np.asarray(d["input_values"], dtype=np.float32)
    ev = SoundEvaluator(waves(train), train["label"], waves(test), test["label"], RATE, num_classes=10)
    assert ev.classifier_accuracy >= 0.9
    result = ev.evaluate(waves(train)[:40])  # real clips as the "samples"
    s, g, n = result["samples"], result["baseline_gaussian"], result["baseline_noise"]
    assert s["classes_recognised"] >= 9 and s["fd"] < 0.5 * min(g["fd"], n["fd"])
    assert n["classes_recognised"] <= 2 and g["classes_recognised"] <= 3
    assert all(audio_targets_met(result).values())
    assert not any(audio_targets_met(ev.evaluate(ev.noise_samples(40))).values())


def test_reconstruction_scores():
    x = np.stack([_tone(440), _tone(900)])
    assert snr_db(x, x) == float("inf") and snr_db(x, 0.9 * x) == pytest.approx(20.0)
    assert log_mel_distance(x, x, RATE) == 0 and log_mel_distance(x, x[::-1], RATE) > 1


# -- end to end through the CLI -----------------------------------------------------------


def test_train_folder_then_automodel_pipeline_and_sample(tmp_path, audio_folder, capsys):
    out = tmp_path / "run"
    code, stdout, err = _run(["train", "--modality", "audio", "--data-dir", str(audio_folder), "--clip-seconds", "0.1",
                              "--output-dir", str(out), "--max-steps", "3"] + TINY, capsys)
    assert code == 0, err
    assert "AudioQGFDDiffusionModel" in stdout and "latents 11 x 81" in stdout
    model = AutoModel.from_pretrained(out / "model")
    assert model.config.latent_space == "spectrogram" and model.config.audio_scale > 0 and model.config.sampling_rate == RATE
    clips = pipeline("qgfd-diffusion", model=str(out / "model"))(num_samples=2, num_inference_steps=2, seed=0, progress_bar=False)
    assert clips[0]["audio"].shape == (CLIP,) and clips[0]["sampling_rate"] == RATE and np.isfinite(clips[0]["audio"]).all()
    code, stdout, err = _run(["sample", str(out / "model"), "--num-samples", "3", "--num-inference-steps", "2", "--no-progress"], capsys)
    assert code == 0, err
    wavs = sorted((out / "sample-seed0_wav").glob("*.wav"))
    assert len(wavs) == 3 and (out / "sample-seed0.png").stat().st_size > 1000
    with wave.open(str(wavs[0])) as f:
        assert f.getframerate() == RATE and f.getnframes() == CLIP


def test_train_from_csv_with_wav2vec2_latents(tmp_path, audio_folder, capsys):
    csv = tmp_path / "clips.csv"
    csv.write_text("path,kind\n" + "".join(f"clips/{c}/{i}.{e},{c}\n" for c, e in (("dog", "wav"), ("cat", "flac")) for i in range(3)))
    out = tmp_path / "w2v"
    code, stdout, err = _run(["train", "--modality", "audio", "--data-files", str(csv), "--audio-label-column", "kind",
                              "--clip-seconds", "0.1", "--audio-latent", "wav2vec2", "--output-dir", str(out), "--max-steps", "2"] + TINY, capsys)
    assert code == 0, err
    model = AutoModel.from_pretrained(out / "model")
    assert model.config.latent_space == "wav2vec2" and model.config.latent_scale != 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2


def test_demo_code_path_on_a_tiny_budget(tmp_path, capsys):
    """The demo's data is the spoken digits (espeakng-loader; the clips are cached after the first run)."""
    pytest.importorskip("espeakng_loader")  # an optional data package: only looked for here, never imported by qgfd_hf
    out = tmp_path / "demo"
    code, stdout, err = _run(["demo", "--modality", "audio", "--output-dir", str(out), "--max-steps", "3", "--num-samples", "20",
                              "--num-inference-steps", "2"] + TINY, capsys)
    assert code == 0, err
    demo = json.loads((out / "metrics.json").read_text())["demo"]
    m = demo["metrics"]
    for key in ("samples", "baseline_real_training_voices", "baseline_latent_gaussian"):
        assert set(m[key]) >= {"fd", "confidence", "recognised", "p_requested", "class_counts"} and m[key]["num_clips"] == 20
    assert m["baseline_real_training_voices"]["recognised"] >= 0.7 and m["judge_reference_accuracy"] >= 0.8
    assert m["reconstruction"]["latent_space"] == "spectrogram" and m["reconstruction"]["log_mel_distance"] < 1.5
    assert set(demo["targets"]) == {"recognised_at_least_80pct", "fd_below_latent_gaussian"}
    assert "recognised as the requested digit" in stdout and "FD, judge's hidden layer" in stdout
    assert stdout.count("held-out clips decode at") == 1  # the latent space's reconstruction, once
    wavs = sorted(p.name for p in (out / "samples_wav").glob("*.wav"))
    assert (out / "samples.png").exists() and len(wavs) == 20 and wavs[:2] == ["sample_000_zero.wav", "sample_001_one.wav"]
    assert m["class_names"] == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_generated_sounds_stay_the_fast_path(tmp_path, capsys):
    out = tmp_path / "sounds"
    code, stdout, err = _run(["train", "--modality", "audio", "--dataset", "sounds", "--clips-per-class", "4", "--output-dir", str(out),
                              "--max-steps", "2"] + TINY, capsys)
    assert code == 0, err
    assert "latents 51 x 81" in stdout  # other data than the digits: 0.5 s, hop 80, unconditional
    config = json.loads((out / "model" / "config.json").read_text())
    assert config.get("num_classes") is None and config["num_samples"] == 4000
