"""Bad values refused where they enter, and faults that end in one clear message (issue 12):
typo config fields, empty csv cells, dropped rows and unknown words reported, `sample` on folders
that are not QGFD models, a plain transformers model in the pipeline, out-of-range seeds. Issue 21:
a diverging run stops without a model."""

import json
import re

import pytest
import torch
from transformers import T5Config, T5Model, pipeline
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from qgfd_hf import create_qgfd_diffusion_model
from qgfd_hf.cli import main
from qgfd_hf.data_qgfd import load_mrpc
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
    logger = logging.get_logger("qgfd_hf.data_qgfd")
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
