"""Tests of the `qgfd-hf` command line: help, bad input refused before training, and tiny
end-to-end runs of `demo` (image and text), `train` (image folder, resume) and `sample`."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from qgfd_hf.cli import main
from qgfd_hf.tasks.image import save_image_grid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--preset", "tiny", "--batch-size", "8", "--no-progress", "--checkpoint-every", "2", "--warmup-steps", "0"]


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _is_png(path):
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
    with Image.open(path) as im:
        im.verify()
    return True


def test_help_and_module_entry_point():
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-m", "qgfd_hf", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and all(c in res.stdout for c in ("train", "sample", "demo"))
    with open(os.path.join(REPO, "setup.py")) as f:
        assert "qgfd-hf=qgfd_hf.cli:main" in f.read()  # the console script


# -- bad input: a clear error, exit status 2, and nothing trained ----------------------------------


def _assert_refused(argv, capsys, tmp_path, pattern):
    out_dir = tmp_path / "out"
    code, _, err = _run(argv + ["--output-dir", str(out_dir)], capsys)
    assert code == 2, err
    assert err.startswith("qgfd-hf train: error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(pattern, err), err
    assert not out_dir.exists()  # refused before training started


def test_empty_image_folder(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    _assert_refused(["train", "--modality", "image", "--data-dir", str(tmp_path / "imgs")], capsys, tmp_path, r"Image folder .*imgs' is empty")


def test_unreadable_image_file(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "ok.png")
    (d / "bad.jpg").write_bytes(b"not a jpeg")
    _assert_refused(["train", "--modality", "image", "--data-dir", str(d)], capsys, tmp_path, r"1 of 2 image file\(s\) cannot be read: bad\.jpg")


def test_missing_column(tmp_path, capsys):
    f = tmp_path / "pairs.csv"
    f.write_text("sentence1,label\nhello,1\n")
    _assert_refused(["train", "--modality", "text", "--data-files", str(f)], capsys, tmp_path, r"no column\(s\) \['sentence2'\]")


def test_modality_the_data_does_not_fit(tmp_path, capsys):
    _assert_refused(["train", "--modality", "image", "--dataset", "mrpc"], capsys, tmp_path, "is text data; it does not fit --modality image")
    _assert_refused(["train", "--modality", "text", "--dataset", "digits"], capsys, tmp_path, "is image data; it does not fit --modality text")
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (8, 8)).save(d / "a.png")
    _assert_refused(["train", "--modality", "text", "--data-dir", str(d)], capsys, tmp_path, "--data-dir is a folder of files; text takes")
    _assert_refused(["train", "--modality", "image", "--dataset", "digits", "--image-size", "32"], capsys, tmp_path, "8x8 greyscale")


def test_missing_output_dir(capsys):
    code, _, err = _run(["train", "--modality", "image"], capsys)
    assert code == 2 and "--output-dir is required" in err


# -- end to end --------------------------------------------------------------------------------


def test_image_demo_end_to_end_then_sample(tmp_path, capsys):
    from transformers import AutoModel

    out = tmp_path / "demo"
    code, stdout, err = _run(
        ["demo", "--dataset", "digits", "--output-dir", str(out), "--max-steps", "4", "--num-samples", "20", "--num-inference-steps", "5"] + TINY, capsys
    )
    assert code == 0, err
    for name in ("samples.png", "loss.png", "metrics.json", "model/config.json", "model/model.safetensors", "model/README.md"):
        assert (out / name).exists(), name
    assert _is_png(out / "samples.png") and _is_png(out / "loss.png")
    metrics = json.loads((out / "metrics.json").read_text())
    demo = metrics["demo"]
    assert metrics["global_step"] == 4 and demo["sampling"]["num_samples"] == 20
    for key in ("samples", "baseline_real_train_vs_heldout", "baseline_gaussian"):
        assert set(demo["metrics"][key]) >= {"fd", "confidence", "classes_present"}
    assert set(demo["targets"]) == {"fd_below_gaussian", "confidence_at_least_0.85", "all_10_classes"}
    # The printout names the paths and the baselines.
    assert "Frechet distance" in stdout and "Gaussian" in stdout and str(out / "samples.png") in stdout
    # "Done in ..." and "final loss ..." report one measured training time (issue 21), the trainer's.
    done = re.search(r"Done in \d+s \(training (\d+)s, sampling \d+s, scoring \d+s;", stdout)
    final = re.search(r"final loss +\S+ after 4 steps \(training (\d+)s\)", stdout)
    assert done and final and done.group(1) == final.group(1), stdout
    assert demo["seconds"]["train"] == round(metrics["train_runtime_s"], 1)
    card = (out / "model" / "README.md").read_text()
    assert "Frechet distance to held-out digits" in card and "load_digits" in card
    model = AutoModel.from_pretrained(str(out / "model"))
    assert model.config.modality == "image" and model.config.prediction_type == "v"
    # `sample` writes a grid from the saved folder.
    grid = tmp_path / "grid.png"
    code, stdout, err = _run(["sample", str(out / "model"), "--num-samples", "6", "--num-inference-steps", "3", "--output", str(grid), "--no-progress"], capsys)
    assert code == 0, err
    assert _is_png(grid) and "6 samples" in stdout
    code, _, err = _run(["sample", str(out / "model"), "--condition", "hello"], capsys)
    assert code == 2 and "unconditional" in err


def test_text_demo_end_to_end_then_sample(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = _run(["demo", "--modality", "text", "--output-dir", str(out), "--max-steps", "3", "--num-inference-steps", "4"] + TINY, capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())["demo"]["metrics"]
    assert 0.0 <= metrics["exact_match"] <= 1.0 and metrics["num_heldout"] == 200
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and set(rows[0]) == {"source", "sample", "reference", "exact"}
    assert rows[0]["reference"].split() == rows[0]["source"].split()[::-1]
    assert "Exact match on 200 held-out pairs" in stdout
    assert (out / "model" / "tokenizer.json").exists()  # the tokenizer travels with the model
    code, stdout, err = _run(["sample", str(out / "model"), "--condition", "red cat sun", "--num-inference-steps", "3", "--no-progress"], capsys)
    assert code == 0 and "'red cat sun' -> " in stdout, err
    code, _, err = _run(["sample", str(out / "model")], capsys)
    assert code == 2 and "conditional: give --condition" in err


def test_train_on_an_image_folder_and_resume(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "run"
    argv = ["train", "--modality", "image", "--data-dir", str(d), "--image-size", "8", "--patch-size", "4", "--output-dir", str(out)] + TINY
    code, stdout, err = _run(argv + ["--max-steps", "2"], capsys)
    assert code == 0, err
    assert "final loss" in stdout and (out / "checkpoints" / "checkpoint-00000002").is_dir()
    code, _, err = _run(argv + ["--max-steps", "4", "--resume"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 4


def test_text_model_resumes_to_the_same_weights(tmp_path, capsys):
    """The text model ties T5's embeddings (saved once in a checkpoint): pausing after 2 of 4
    steps (--stop-after) and resuming equals 4 uninterrupted steps."""
    from safetensors.torch import load_file

    base = ["train", "--modality", "text", "--dataset", "reversal"] + TINY
    assert _run(base + ["--output-dir", str(tmp_path / "ref"), "--max-steps", "4"], capsys)[0] == 0
    code, out, _ = _run(base + ["--output-dir", str(tmp_path / "res"), "--max-steps", "4", "--stop-after", "2"], capsys)
    assert code == 0 and "paused at step 2" in out and not (tmp_path / "res" / "model").exists()
    code, _, err = _run(base + ["--output-dir", str(tmp_path / "res"), "--max-steps", "4", "--resume"], capsys)
    assert code == 0, err
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "res" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-6, k


def test_save_image_grid(tmp_path):
    path = save_image_grid(np.random.default_rng(0).random((5, 3, 4, 4)), str(tmp_path / "g.png"), nrow=3, cell=8, pad=1)
    with Image.open(path) as im:
        assert im.size == (3 * 9 + 1, 2 * 9 + 1)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        save_image_grid(np.zeros((2, 4, 4)), str(tmp_path / "x.png"))


@pytest.mark.slow
def test_train_under_accelerate_launch_two_processes(tmp_path, capsys):
    """`qgfd-hf train` on the real image model under `accelerate launch` with 2 CPU processes:
    same steps and learning rates as 1 process with the same global batch, and a loss within
    tolerance (each process draws its own noise, so the losses are close, not equal).
    (`--multi_gpu` + ACCELERATE_USE_CPU=1: `--cpu --num_processes 2` starts one process on
    accelerate 1.x, huggingface/accelerate#2741.)"""
    args = ["train", "--modality", "image", "--dataset", "digits", "--preset", "tiny", "--batch-size", "32", "--max-steps", "6",
            "--log-every", "1", "--checkpoint-every", "3", "--no-progress"]
    assert _run(args + ["--output-dir", str(tmp_path / "one")], capsys)[0] == 0
    env = dict(os.environ, PYTHONPATH=REPO, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", "-m", "qgfd_hf"]
    res = subprocess.run(cmd + args + ["--output-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    assert [r["step"] for r in two["log_history"]] == [r["step"] for r in one["log_history"]] == list(range(1, 7))
    assert [r["lr"] for r in two["log_history"]] == pytest.approx([r["lr"] for r in one["log_history"]])
    mean = lambda m: sum(r["loss"] for r in m["log_history"]) / len(m["log_history"])
    assert mean(two) == pytest.approx(mean(one), rel=0.15)
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()


def test_pretrained_denoiser_flag(tmp_path, capsys):
    from transformers import AutoConfig, ViTConfig

    # Text: the demo's T5 stack becomes the denoiser.
    out = tmp_path / "text"
    code, _, err = _run(["demo", "--modality", "text", "--denoiser", "pretrained", "--output-dir", str(out), "--max-steps", "2",
                         "--num-inference-steps", "2"] + TINY, capsys)
    assert code == 0, err
    assert AutoConfig.from_pretrained(str(out / "model")).denoiser == "pretrained"
    # Images: the ViT given as --backbone is the denoiser over pixel patches.
    vit = tmp_path / "vit"
    from transformers import ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=8,
                       patch_size=2, num_channels=1)).save_pretrained(vit)
    out = tmp_path / "image"
    code, _, err = _run(["demo", "--dataset", "digits", "--denoiser", "pretrained", "--backbone", str(vit), "--output-dir", str(out), "--max-steps", "2",
                         "--num-samples", "10", "--num-inference-steps", "2"] + TINY, capsys)
    assert code == 0, err
    config = AutoConfig.from_pretrained(str(out / "model"))
    assert config.denoiser == "pretrained" and config.latent_space == "pixels"
    _assert_refused(["train", "--modality", "image", "--dataset", "digits", "--denoiser", "pretrained"], capsys, tmp_path,
                    "--denoiser pretrained needs --backbone")


def test_sample_with_dpmsolver_and_a_timestep_spacing(tmp_path, capsys):
    from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig

    ImageQGFDDiffusionModel(QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_timesteps=20, d_model=32,
                                            num_heads=4, num_layers=2, d_ff=64)).save_pretrained(tmp_path / "model")
    grid = tmp_path / "grid.png"
    code, stdout, err = _run(["sample", str(tmp_path / "model"), "--num-samples", "4", "--num-inference-steps", "5", "--sampler", "dpmsolver++",
                              "--timestep-spacing", "trailing", "--output", str(grid), "--no-progress"], capsys)
    assert code == 0, err
    assert _is_png(grid) and "4 samples" in stdout
    code, _, err = _run(["sample", str(tmp_path / "model"), "--num-inference-steps", "20", "--sampler", "dpmsolver++", "--no-progress"], capsys)
    assert code == 2 and "not distinct" in err  # DPM-Solver++'s linspace takes at most T - 1 steps


def test_sample_class_conditional_without_labels_and_unconditional(tmp_path, capsys):
    """Issue 23: `sample` without --class-label draws each label from the recorded training
    frequencies; `--class-label unconditional` is the null label; a model saved without the
    frequencies keeps the null label; the "Sampling with" line says which."""
    import torch

    from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig

    kw = dict(latent_space="pixels", image_size=4, patch_size=2, num_channels=1, num_timesteps=20, d_model=32, num_heads=4,
              num_layers=2, d_ff=64, num_classes=3)
    torch.manual_seed(0)
    ImageQGFDDiffusionModel(QGFDImageConfig(class_frequencies=[0.5, 0.5, 0.0], **kw)).save_pretrained(tmp_path / "new")
    ImageQGFDDiffusionModel(QGFDImageConfig(**kw)).save_pretrained(tmp_path / "old")
    args = ["--num-samples", "4", "--num-inference-steps", "2", "--no-progress"]
    code, stdout, err = _run(["sample", str(tmp_path / "new"), "--output", str(tmp_path / "a.png")] + args, capsys)
    assert code == 0 and _is_png(tmp_path / "a.png"), err
    assert "class labels none: each sample's label drawn from the training frequencies" in stdout
    code, stdout, err = _run(["sample", str(tmp_path / "new"), "--class-label", "unconditional", "--output", str(tmp_path / "b.png")] + args, capsys)
    assert code == 0 and _is_png(tmp_path / "b.png"), err
    assert "class labels unconditional: the null label" in stdout
    code, stdout, err = _run(["sample", str(tmp_path / "old"), "--output", str(tmp_path / "c.png")] + args, capsys)
    assert code == 0 and "the null label, unconditional samples (the model was saved without its training label frequencies" in stdout, err
    with pytest.raises(SystemExit) as exit_info:  # refused by the argument parser
        main(["sample", str(tmp_path / "new"), "--class-label", "uncond"] + args)
    assert exit_info.value.code == 2 and "allowed: K [K ...] or unconditional" in capsys.readouterr().err
    code, _, err = _run(["sample", str(tmp_path / "new"), "--class-label", "unconditional", "1"] + args, capsys)
    assert code == 2 and "--class-label unconditional stands alone" in err
    code, _, err = _run(["sample", str(tmp_path / "new"), "--class-label", "unconditional", "--guidance-scale", "2"] + args, capsys)
    assert code == 2 and "guidance needs a class to guide towards" in err
