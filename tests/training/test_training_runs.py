"""A run's folder belongs to one run (issue 12): a new run into an earlier run's folder is refused
or replaced on request, `--resume` refuses changed settings, a broken newest checkpoint falls back
to the one before it, a full disk ends in one message, and a kill between two renames is repaired."""

import errno
import json
import os
import re

import pytest
import torch

from qgfd_hf.cli import main
from qgfd_hf.training.checkpoints import (
    CheckpointWriteError,
    check_output_dir,
    list_checkpoints,
    recover_interrupted_replace,
)
from qgfd_hf.training.trainer import QGFDTrainer
from qgfd_hf.training.arguments import QGFDTrainingArguments
from test_trainer import collate, make_dataset, make_model, run_training, saved_weights

TINY = ["--preset", "tiny", "--batch-size", "8", "--no-progress", "--checkpoint-every", "2", "--warmup-steps", "0"]


def _cli(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _digits_run(out, *extra):
    return ["train", "--modality", "image", "--dataset", "digits", "--output-dir", str(out), "--max-steps", "2"] + TINY + list(extra)


def test_new_run_into_an_earlier_runs_folder_is_refused_and_nothing_is_touched(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _cli(_digits_run(out), capsys)
    assert code == 0, err
    before = {p: os.path.getmtime(out / p) for p in ("model/model.safetensors", "metrics.json", "run.json")}
    code, _, err = _cli(_digits_run(out, "--qgfd-alpha", "0.1"), capsys)
    assert code == 2
    assert "holds an earlier run" in err and "--resume" in err and "--overwrite-output-dir" in err
    assert {p: os.path.getmtime(out / p) for p in before} == before


def test_overwrite_output_dir_replaces_the_earlier_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(_digits_run(out), capsys)[0] == 0
    (out / "checkpoints" / "checkpoint-00000999").mkdir()  # an old run's checkpoint must not survive
    code, _, err = _cli(_digits_run(out, "--overwrite-output-dir", "--qgfd-alpha", "0.1"), capsys)
    assert code == 0, err
    assert not (out / "checkpoints" / "checkpoint-00000999").exists()
    assert json.loads((out / "model" / "config.json").read_text())["qgfd_alpha"] == 0.1
    assert json.loads((out / "run.json").read_text())["model"]["qgfd_alpha"] == 0.1


def test_resume_refuses_changed_settings_naming_each(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(_digits_run(out, "--stop-after", "1"), capsys)[0] == 0
    code, _, err = _cli(_digits_run(out, "--resume", "--qgfd-alpha", "0.1", "--lr-schedule", "linear"), capsys)
    assert code == 2
    assert "model qgfd_alpha: 0.5 -> 0.1" in err and "lr_schedule: 'cosine' -> 'linear'" in err
    # A different model size is refused the same way, before any weight is loaded.
    code, _, err = _cli(_digits_run(out, "--resume", "--d-model", "64"), capsys)
    assert code == 2 and re.search(r"model d_model: \d+ -> 64", err)
    # The run's own settings resume.
    code, _, err = _cli(_digits_run(out, "--resume"), capsys)
    assert code == 0, err


def test_resume_and_overwrite_contradict(tmp_path):
    with pytest.raises(ValueError, match="contradict"):
        check_output_dir(str(tmp_path), resume=True, overwrite=True)


def test_output_dir_is_checked_before_the_data_is_loaded(tmp_path, capsys, monkeypatch):
    import qgfd_hf.tasks.image as image

    def no_data(*a, **k):  # the data must not even be looked at
        raise AssertionError("data loaded before the output folder was checked")

    monkeypatch.setattr(image.ImageTask, "load_data", no_data)
    f = tmp_path / "a_file"
    f.write_text("x")
    code, _, err = _cli(_digits_run(f), capsys)
    assert code == 2 and "is a file, not a folder" in err
    code, _, err = _cli(_digits_run(f / "sub"), capsys)
    assert code == 2 and "cannot be created" in err

    import tempfile

    def read_only(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code, _, err = _cli(_digits_run(tmp_path / "ro"), capsys)
    assert code == 2 and "cannot be written" in err and "Read-only file system" in err


def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    out = str(tmp_path / "run")
    run_training(out, max_steps=6, checkpoint_every=3)
    ckpts = list_checkpoints(os.path.join(out, "checkpoints"))
    assert [os.path.basename(c) for c in ckpts] == ["checkpoint-00000003", "checkpoint-00000006"]
    newest = ckpts[-1]
    for name in os.listdir(newest):
        if name.endswith((".safetensors", ".bin")):
            with open(os.path.join(newest, name), "r+b") as fh:  # truncate: what a crash mid-write leaves
                fh.truncate(16)
    with caplog.at_level("WARNING"):
        trainer, metrics = run_training(out, max_steps=6, resume=True, checkpoint_every=3)
    assert "checkpoint-00000006 cannot be loaded" in caplog.text
    assert metrics["global_step"] == 6  # resumed at 3, trained 3 more


def test_all_checkpoints_broken_is_one_clear_error(tmp_path):
    out = str(tmp_path / "run")
    run_training(out, max_steps=3, checkpoint_every=3)
    (ckpt,) = list_checkpoints(os.path.join(out, "checkpoints"))
    for name in os.listdir(ckpt):
        if name.endswith((".safetensors", ".bin")):
            open(os.path.join(ckpt, name), "wb").close()
    with pytest.raises(ValueError, match=r"No checkpoint could be loaded to resume: .*checkpoint-00000003"):
        run_training(out, max_steps=3, resume=True, checkpoint_every=3)


def test_resume_from_a_named_checkpoint(tmp_path):
    out = str(tmp_path / "run")
    run_training(out, max_steps=6, checkpoint_every=3)
    first = list_checkpoints(os.path.join(out, "checkpoints"))[0]
    model = make_model()
    args = QGFDTrainingArguments(out, max_steps=6, batch_size=8, learning_rate=3e-3, warmup_steps=2, checkpoint_every=3,
                                 keep_last=2, log_every=1, seed=0, progress=False, resume_from_checkpoint=first)
    metrics = QGFDTrainer(model, args, make_dataset(), data_collator=collate, metadata={"dataset": "toy"}).train()
    assert metrics["global_step"] == 6
    assert [r["step"] for r in metrics["log_history"]] == list(range(1, 7))


def test_disk_full_during_a_checkpoint_is_one_message_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    from accelerate import Accelerator

    out = str(tmp_path / "run")
    real = Accelerator.save_state
    calls = {"n": 0}

    def save_state(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint hits a full disk half way
            os.makedirs(output_dir, exist_ok=True)
            open(os.path.join(output_dir, "model.safetensors"), "wb").write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 64 vs 0")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(CheckpointWriteError, match=r"Could not write checkpoint checkpoint-00000006 .*Is the disk full\? the newest intact checkpoint is .*checkpoint-00000003.*--resume"):
        run_training(out, max_steps=9, checkpoint_every=3)
    names = os.listdir(os.path.join(out, "checkpoints"))
    assert names == ["checkpoint-00000003"]  # no half-written folder, the older one intact


def test_disk_full_through_the_cli_is_one_line(tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full)
    code, _, err = _cli(_digits_run(tmp_path / "run"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Could not write checkpoint" in err and "No space left on device" in err and "no checkpoint was written yet" in err


def test_a_kill_between_the_two_renames_is_repaired(tmp_path):
    out = str(tmp_path / "run")
    run_training(out, max_steps=3, checkpoint_every=3)
    weights = saved_weights(out)
    # The state a kill leaves after `model` was moved aside and before `.tmp-model` took its place.
    os.replace(os.path.join(out, "model"), os.path.join(out, ".tmp-old-model"))
    recover_interrupted_replace(out)
    assert not os.path.exists(os.path.join(out, ".tmp-old-model"))
    assert all(torch.equal(weights[k], v) for k, v in saved_weights(out).items())
    # And when the new folder did arrive, the old one is simply removed.
    os.makedirs(os.path.join(out, ".tmp-old-model"))
    recover_interrupted_replace(out)
    assert not os.path.exists(os.path.join(out, ".tmp-old-model")) and os.path.isdir(os.path.join(out, "model"))


def test_bad_training_values_are_refused_where_they_enter():
    for kwargs, pattern in (
        (dict(max_grad_norm=float("nan")), "max_grad_norm"),
        (dict(learning_rate=float("inf")), "learning_rate"),
        (dict(seed=2**64), r"seed.*2\*\*32"),
        (dict(overwrite_output_dir="yes"), "overwrite_output_dir"),
    ):
        with pytest.raises(ValueError, match=pattern):
            QGFDTrainingArguments("o", **kwargs)


def test_cli_refuses_a_nan_flag_before_training(tmp_path, capsys):
    code, _, err = _cli(_digits_run(tmp_path / "run", "--max-grad-norm", "nan"), capsys)
    assert code == 2 and "max_grad_norm" in err and not (tmp_path / "run" / "checkpoints").exists()


# -- what users of Trainer and diffusers' training scripts expect -----------------------------------


def test_version_flag(capsys):
    from qgfd_hf import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qgfd-hf {__version__}"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "gradient clipping (0 = off) (default: 1.0)" in out
    assert "optimizer steps (default: the modality's; else 1000)" in out
    assert "the modalities' defaults" in out and "max_steps=3000" in out


def test_validation_samples_every_n_steps(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _cli(_digits_run(out, "--max-steps", "4", "--sample-every", "2"), capsys)
    assert code == 0, err
    assert sorted(os.listdir(out / "samples")) == ["step-00000002.png", "step-00000004.png"]
    assert "step 2: samples in" in stdout


def test_validation_samples_of_a_text_model(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--modality", "text", "--output-dir", str(out), "--max-steps", "2", "--sample-every", "2"] + TINY
    code, _, err = _cli(argv, capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "samples" / "step-00000002.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"source", "sample", "reference"}


def test_report_to_tensorboard_writes_event_files(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    code, _, err = _cli(_digits_run(out, "--report-to", "tensorboard", "--log-every", "1"), capsys)
    assert code == 0, err
    events = [f for _, _, files in os.walk(out / "logs") for f in files if f.startswith("events.out.tfevents")]
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = next(root for root, _, files in os.walk(out / "logs") if any(f.startswith("events.out") for f in files))
    acc = EventAccumulator(run_dir)
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_report_to_and_hub_flags_are_checked():
    with pytest.raises(ValueError, match="Unknown tracker 'tensorbord'"):
        QGFDTrainingArguments("o", report_to="tensorbord")
    with pytest.raises(ValueError, match="push_to_hub"):
        QGFDTrainingArguments("o", hub_model_id="user/x")


def test_push_to_hub_uploads_the_final_model(hub, tmp_path, capsys):
    from transformers import AutoModel

    out = tmp_path / "digits-run"
    code, _, err = _cli(_digits_run(out, "--push-to-hub", "--hub-model-id", "user/qgfd-digits-run"), capsys)
    assert code == 0, err
    files = set(hub.list_files("user/qgfd-digits-run"))
    assert {"config.json", "model.safetensors", "README.md"} <= files
    assert b"user/qgfd-digits-run" in hub.read_file("user/qgfd-digits-run", "README.md")
    again = AutoModel.from_pretrained("user/qgfd-digits-run")
    assert again.config.modality == "image"
