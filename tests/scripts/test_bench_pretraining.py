"""scripts/bench_pretraining.py: a finished run is read back (never repeated), and the summary gives
means over seeds and the seed-by-seed paired differences of the arms it compares."""

import argparse
import json
import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench_pretraining import ARMS, run_one, summarise  # noqa: E402


def _fake_run(folder, final_loss, fd, cpu=100.0):
    """What `qgfd-hf demo` leaves behind (metrics.json) and what the script records (cpu.json)."""
    folder.mkdir(parents=True)
    history = [{"step": s, "loss": final_loss + 0.1 * max(0, 30 - s) / 30, "lr": 1e-3} for s in (10, 20, 30, 40, 50, 60)]  # flat from 30
    system = lambda f: {"fd": f, "perplexity": 50.0, "mean_words": 7.0, "distinct_2": 0.9}
    demo = {"metrics": {"model": system(fd), "real_heldout": system(0.2), "trigram": system(0.3)}, "seconds": {"train": 80.0}}
    (folder / "metrics.json").write_text(json.dumps({"log_history": history, "demo": demo}))
    (folder / "cpu.json").write_text(json.dumps({"cpu_seconds": cpu}))


def _args(tmp_path, **kw):
    return argparse.Namespace(runs_dir=str(tmp_path), wait=0.0, keep_models=False, max_steps=60, batch_size=16,
                              learning_rate=5e-4, warmup_steps=10, seq_len=24, num_samples=100, num_inference_steps=20, **kw)


def test_finished_runs_are_read_and_summarised(tmp_path):
    losses = {"minilm-pretrained": (0.60, 0.62, 0.61), "minilm-random": (0.30, 0.31, 0.29)}
    for arm, values in losses.items():
        for seed, loss in enumerate(values):
            _fake_run(tmp_path / f"{arm}-seed{seed}", loss, fd=loss * 2)
    args = _args(tmp_path)
    records = [run_one(arm, seed, args, backbone="unused") for seed in range(3) for arm in losses]  # no process is started
    assert [r["final_loss"] for r in records if r["arm"] == "minilm-random"] == pytest.approx([0.30, 0.31, 0.29])
    assert records[0]["curve"][0] == (10, pytest.approx(0.60 + 0.1 * 20 / 30))  # the final loss: the last 3 logs
    table = summarise(records, {"minilm": 17.2e6, "dit": 20.35e6}, args,
                      similarity=[("Gaussian noise", 0.003, 0.6, 0.02)])
    assert "| minilm-pretrained | 0.6100 ± 0.0100 | 1.220 ± 0.020 |" in table
    assert "| minilm-random | 0.3000 ± 0.0100 |" in table
    assert "| minilm-pretrained | minilm-random | +0.3100 ± 0.0100 |" in table  # seed by seed: 0.30, 0.31, 0.32
    assert "with 3 seeds the sign-flip p cannot go below 0.25" in table
    assert "| Gaussian noise | 0.003 | 0.600 | 0.020 |" in table
    assert "dit" not in table.split("Seed by seed")[1].split("How alike")[0]  # no DiT runs: no DiT rows


def test_an_unfinished_run_is_refused_not_overwritten(tmp_path):
    (tmp_path / "dit-seed0").mkdir()
    with pytest.raises(SystemExit, match="unfinished run"):
        run_one("dit", 0, _args(tmp_path), backbone="unused")
    assert set(ARMS) == {"minilm-pretrained+qgfd", "minilm-pretrained", "minilm-random+qgfd", "minilm-random", "dit+qgfd", "dit"}
