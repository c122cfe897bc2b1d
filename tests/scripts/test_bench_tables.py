"""scripts/bench_tables.py's summary: means +- std over seeds, and the target read per table (the
model's mean TSTR above the Gaussian copula's and its detection AUC, each seed's read as
max(AUC, 0.5), below the copula's; a tie at 0.5 is not a win)."""

import os
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench_tables import GENERATORS, markdown, summarise  # noqa: E402


def _run(table, seed, model, copula):
    """A fake run: (TSTR, detection AUC) for the model and the copula; the other generators fixed."""
    cell = lambda tstr, det: {"tstr": tstr, "w1": 0.1, "corr_error": 0.05, "detection_auc": det, "dcr_ratio": 1.0}
    run = {gen: cell(0.9, 0.7) for gen, _ in GENERATORS}
    run.update(samples=cell(*model), baseline_copula=cell(*copula), table=table, seed=seed, tstr_metric="accuracy",
               num_train=100, num_heldout=25, dataset=table)
    return run


def test_targets_read_means_over_seeds_with_detection_floored_at_half():
    runs = [
        _run("a", 0, (0.95, 0.60), (0.90, 0.70)), _run("a", 1, (0.93, 0.62), (0.92, 0.72)),  # both beaten: met
        _run("b", 0, (0.95, 0.45), (0.90, 0.30)), _run("b", 1, (0.95, 0.40), (0.90, 0.35)),  # both at the floor: a tie
        _run("c", 0, (0.80, 0.52), (0.90, 0.80)), _run("c", 1, (0.82, 0.52), (0.90, 0.80)),  # TSTR lost
    ]
    s = summarise(runs)
    assert [s[t]["target_met"] for t in "abc"] == [True, False, False]
    assert abs(s["a"]["cells"]["samples"]["tstr"][0] - 0.94) < 1e-12 and abs(s["a"]["cells"]["samples"]["tstr"][1] - 0.01414) < 1e-4
    assert s["b"]["tstr_beats_copula"] and not s["b"]["detection_beats_copula"]
    assert s["b"]["cells"]["samples"]["detection_auc_clipped"] == (0.5, 0.0) and abs(s["b"]["cells"]["samples"]["detection_auc"][0] - 0.425) < 1e-12
    assert s["c"]["detection_beats_copula"] and not s["c"]["tstr_beats_copula"]
    md = markdown(s, dict(command="python scripts/bench_tables.py", seeds=[0, 1], max_steps=3, forests=1, trees=2, detection_trees=2,
                          wall_s=1.0, cpu_s=1.0, machine="test"))
    assert "met on 1 of 3 tables" in md and md.count("**missed**") == 2 and "| Gaussian copula | 0.910 ± 0.014 |" in md
