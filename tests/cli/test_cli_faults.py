"""Bad values refused where they enter, and faults that end in one clear message (issue 12):
typo config fields, empty csv cells, dropped rows and unknown words reported, `sample` on folders
that are not QGFD models, a plain transformers model in the pipeline, out-of-range seeds. Issue 21:
a diverging run stops without a model, `sample --output` writes the path asked for or refuses it,
and `sample` uses the modality's own sampler defaults and says which."""

import argparse
import json
import re
import wave

import pytest
import torch
from transformers import T5Config, T5Model, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from qgfd_hf import create_qgfd_diffusion_model
from qgfd_hf.cli import main
from qgfd_hf.data.core import load_mrpc
from qgfd_hf.tasks.base import get_task, task_names
from test_pipeline_qgfd_diffusion import make_pipe, saved_text_model, text_model
from test_modeling_qgfd import make_tokenizer


def _cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_typo_in_a_config_field_is_refused_with_the_field_it_meant():
    with pytest.raises(ValueError, match=r"no field\(s\) 'num_layer' \(did you mean 'num_layers'\?\)"):
        create_qgfd_diffusion_model("image", None, None, latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_layer=1)
    with pytest.raises(ValueError, match="'colour_mode'"):
        create_qgfd_diffusion_model("image", None, None, latent_space="pixels", image_size=8, patch_size=2, num_channels=1, colour_mode=1)


def test_an_empty_csv_cell_is_refused_naming_the_row(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("sentence1,sentence2,label\na b,b a,1\nc d,,1\n")
    with pytest.raises(ValueError, match=r"column 'sentence2' is empty in data row\(s\) 2"):
        load_mrpc(str(f))
    f.write_text("sentence1,sentence2,label\na b,b a,yes\n")
    with pytest.raises(ValueError, match="column 'label' must hold 0 or 1"):
        load_mrpc(str(f))


def test_rows_left_out_are_reported(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("sentence1,sentence2,label\n" + "".join(f"a{i},b{i},{i % 4 != 0:d}\n" for i in range(8)))
    logger = logging.get_logger("qgfd_hf.data.core")
    with CaptureLogger(logger) as cl:
        ds = load_mrpc(str(f))
    assert len(ds) == 6
    assert "kept the 6 of 8 rows with label == 1" in cl.out and "2 rows with label 0 were left out" in cl.out


def test_unknown_words_in_the_condition_are_reported():
    pipe = make_pipe(text_model(), tokenizer=make_tokenizer())
    logger = logging.get_logger("qgfd_hf.pipeline_qgfd_diffusion")
    with CaptureLogger(logger) as cl:
        pipe(["zebra quantum"], num_inference_steps=2, progress_bar=False, seed=0)
    assert "outside the tokenizer's vocabulary" in cl.out and "'zebra quantum'" in cl.out


def test_pipeline_refuses_a_plain_transformers_model(tmp_path):
    T5Model(T5Config(vocab_size=20, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"samples QGFD diffusion models .* got a T5Model \(model_type 't5'\).*patch_model"):
        pipeline("qgfd-diffusion", model=str(tmp_path))


@pytest.mark.parametrize("seed", [2**64, -1, True])
def test_pipeline_seed_out_of_range(seed):
    pipe = make_pipe(text_model(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match=r"`seed` must be an int in \[0, 2\*\*63\)"):
        pipe(["a"], seed=seed)


def test_sample_on_folders_that_are_not_qgfd_models(tmp_path, capsys):
    code, _, err = _cli(["sample", str(tmp_path / "nope")], capsys)
    assert code == 2 and "No model folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(["sample", str(tmp_path / "empty")], capsys)
    assert code == 2 and "holds no config.json" in err
    d = tmp_path / "no_type"
    saved_text_model(d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    code, _, err = _cli(["sample", str(d), "--no-progress"], capsys)  # no interactive trust_remote_code prompt
    assert code == 2 and "has no `model_type`" in err
    plain = tmp_path / "t5"
    T5Model(T5Config(vocab_size=20, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).save_pretrained(plain)
    code, _, err = _cli(["sample", str(plain)], capsys)
    assert code == 2 and "is not a QGFD diffusion model folder" in err


def test_sample_never_overwrites_earlier_samples(tmp_path, capsys):
    from test_pipeline_qgfd_diffusion import image_model

    image_model().save_pretrained(tmp_path / "model")
    (tmp_path / "samples.png").write_bytes(b"the demo's grid")
    args = ["sample", str(tmp_path / "model"), "--num-samples", "4", "--num-inference-steps", "2", "--no-progress"]
    assert _cli(args, capsys)[0] == 0
    assert _cli(args, capsys)[0] == 0
    assert (tmp_path / "samples.png").read_bytes() == b"the demo's grid"
    assert (tmp_path / "sample-seed0.png").is_file() and (tmp_path / "sample-seed0-1.png").is_file()


# ----------------------------------------------------------------------------------------
# Issue 21: the last silent cases
# ----------------------------------------------------------------------------------------


def test_a_diverging_run_stops_without_saving_a_model(tmp_path, capsys):
    """lr 1e12: the first step's loss is O(1), the second ~1e26 yet finite; the run stops there."""
    out = tmp_path / "run"
    code, stdout, err = _cli(["train", "--modality", "image", "--dataset", "digits", "--preset", "tiny", "--batch-size", "8",
                              "--max-steps", "6", "--log-every", "3", "--checkpoint-every", "1", "--warmup-steps", "0",
                              "--learning-rate", "1e12", "--no-progress", "--output-dir", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert re.search(r"The training loss diverged: \S+ at step 2, more than 1000 times the first step's \(0\.\d+\), with learning rate 1e\+12", err)
    assert "no final model was saved; no checkpoint was written before it (checkpoint-00000001 holds the weights that gave this loss)" in err
    assert "final loss" not in stdout and not (out / "model").exists() and not (out / "metrics.json").exists()
    stopped = json.loads((out / "run.json").read_text())["stopped"]
    assert stopped["step"] == 2 and stopped["reason"] == "loss diverged" and stopped["learning_rate"] == 1e12
    assert stopped["losses"]["loss"] > 1000 * stopped["initial_loss"]


def test_sample_writes_the_output_path_asked_for_or_refuses_it(tmp_path, capsys):
    from test_pipeline_qgfd_diffusion import image_model

    image_model().save_pretrained(tmp_path / "model")
    base = ["sample", str(tmp_path / "model"), "--num-samples", "2", "--num-inference-steps", "2", "--no-progress"]
    for name in ("out.txt", "noext", "out.PNG"):
        code, stdout, err = _cli(base + ["--output", str(tmp_path / name)], capsys)
        assert code == 2 and repr(str(tmp_path / name)) in err and "which image samples cannot be written as; allowed: .png" in err, err
        assert "Sampling with" not in stdout  # refused before sampling
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert _cli(base + ["--output", str(tmp_path / "out.png")], capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out.png"]


@pytest.mark.parametrize("modality", task_names())
def test_every_modality_declares_the_suffixes_it_writes(modality):
    task = get_task(modality)
    assert task.output_suffixes
    for suffix in task.output_suffixes:
        assert task.check_output(argparse.Namespace(output=f"d/s{suffix}", num_samples=1)) == suffix
    with pytest.raises(ValueError) as e:
        task.check_output(argparse.Namespace(output="d/s.txt", num_samples=1))
    assert f"'d/s.txt' has the suffix '.txt', which {modality} samples cannot be written as" in str(e.value)
    assert all(suffix in str(e.value) for suffix in task.output_suffixes)


def test_tables_and_video_are_written_as_the_suffix_says(tmp_path, capsys):
    import numpy as np
    import pandas as pd
    from qgfd_hf import QGFDTabularConfig, QGFDVideoConfig, TabularQGFDDiffusionModel, VideoQGFDDiffusionModel
    from test_modeling_qgfd import TINY

    torch.manual_seed(0)
    tab = TabularQGFDDiffusionModel(QGFDTabularConfig(latent_space="mlp", num_features=5, num_tokens=3, tabular_hidden_dim=32,
                                                      num_timesteps=20, **TINY))
    tab.fit_normalization(torch.randn(16, 5) * 3 + 10)
    tab.save_pretrained(tmp_path / "tab")
    args = ["--num-samples", "3", "--num-inference-steps", "2", "--no-progress", "--output"]
    assert _cli(["sample", str(tmp_path / "tab")] + args + [str(tmp_path / "t.parquet")], capsys)[0] == 0
    assert pd.read_parquet(tmp_path / "t.parquet").shape == (3, 5)
    VideoQGFDDiffusionModel(QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1,
                                            num_timesteps=20, **TINY)).save_pretrained(tmp_path / "video")
    assert _cli(["sample", str(tmp_path / "video")] + args + [str(tmp_path / "v.npy")], capsys)[0] == 0
    assert np.load(tmp_path / "v.npy").shape == (3, 2, 1, 8, 8) and (tmp_path / "v.png").is_file()


def test_audio_wav_output_is_one_clip_exactly_there(tmp_path, capsys):
    from qgfd_hf import AudioQGFDDiffusionModel, QGFDAudioConfig
    from test_modeling_qgfd import TINY, w2v2_config

    torch.manual_seed(0)
    AudioQGFDDiffusionModel(QGFDAudioConfig(backbone_config=w2v2_config(), num_samples=800, num_timesteps=20, **TINY)).save_pretrained(tmp_path / "model")
    base = ["sample", str(tmp_path / "model"), "--num-inference-steps", "2", "--no-progress", "--output", str(tmp_path / "a.wav")]
    code, _, err = _cli(base + ["--num-samples", "3"], capsys)
    assert code == 2 and "names one .wav file, but 3 samples are asked for: pass --num-samples 1" in err
    assert _cli(base + ["--num-samples", "1"], capsys)[0] == 0
    with wave.open(str(tmp_path / "a.wav")) as f:
        assert f.getnframes() == 800
    assert (tmp_path / "a.png").is_file()


def test_text_sample_writes_its_output_where_asked(tmp_path, capsys):
    saved_text_model(tmp_path / "model")
    base = ["sample", str(tmp_path / "model"), "--condition", "hello world", "--num-inference-steps", "2", "--no-progress", "--output"]
    code, _, err = _cli(base + [str(tmp_path / "s.txt")], capsys)
    assert code == 2 and "allowed: .jsonl" in err
    code, stdout, err = _cli(base + [str(tmp_path / "s.jsonl")], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["hello world"] and str(tmp_path / "s.jsonl") in stdout


def test_sample_uses_the_modalitys_defaults_and_says_which(tmp_path, capsys):
    from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig
    from test_modeling_qgfd import TINY

    d = get_task("image").defaults  # those the image demo samples with, and `train --help` lists
    torch.manual_seed(0)
    cfg = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_timesteps=200, num_classes=3, **TINY)
    ImageQGFDDiffusionModel(cfg).save_pretrained(tmp_path / "model")
    base = ["sample", str(tmp_path / "model"), "--num-samples", "2", "--no-progress"]
    code, stdout, err = _cli(base, capsys)
    assert code == 0, err
    assert (f"Sampling with {d['sampler']}, {d['num_inference_steps']} steps, guidance scale {d['guidance_scale']:g}, "
            "class labels none: the null label, unconditional samples") in stdout
    code, stdout, _ = _cli(base + ["--sampler", "ddim", "--class-label", "1", "2"], capsys)
    assert "Sampling with ddim, 50 steps, guidance scale 1, class labels 1, 2 (cycled over the samples)" in stdout  # the pipeline's DDIM default
    code, stdout, _ = _cli(base + ["--num-inference-steps", "3", "--guidance-scale", "2", "--class-label", "0"], capsys)
    assert f"Sampling with {d['sampler']}, 3 steps, guidance scale 2, class labels 0 " in stdout
