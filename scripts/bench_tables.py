"""The tables benchmark: the QGFD tabular diffusion model against three baselines on the five
tables bundled with scikit-learn, over several seeds.

For each table (`--tables`) and seed (`--seeds`): `qgfd-hf train --modality tabular --dataset
TABLE --seed SEED --max-steps 600` (the task's other defaults), as many rows sampled as the
training set (DDIM, the task's steps, sampling seed SEED), and the same number of rows from each
baseline fitted to the training rows (a per-class Gaussian, a Gaussian copula, SMOTE-style
interpolation; drawn with seed SEED). Every sample set is scored by the task's
`TableEvaluator` (forests seeded with SEED) against the real held-out rows: TSTR (accuracy for
a class label; R^2 for regression targets: diabetes and linnerud), W1, correlation error,
detection AUC and the closest-row distance ratio (DCR). The real row: TRTR, the training rows'
distances, held-out vs training rows for detection.

Per table the target is met when the model's mean over seeds beats the Gaussian copula's on
TSTR (higher) AND on detection AUC (lower, each seed's AUC read as max(AUC, 0.5): below 0.5 is
cross-validation's bias on indistinguishable sets, so a tie at 0.5 is not a win); overall at
least 3 of the 5 tables.

Examples:

    OMP_NUM_THREADS=1 python scripts/bench_tables.py --seeds 0 1 2 --output docs/benchmarks_tables
    OMP_NUM_THREADS=1 python scripts/bench_tables.py --tables iris wine --seeds 0 --max-steps 200 --output /tmp/bt/quick

Writes OUTPUT.json (every score of every run, the settings, the times) and OUTPUT.md (the table
of means +- std over seeds); prints the same table. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

METRICS = (  # key, label, better
    ("tstr", "TSTR", "higher"),
    ("w1", "W1", "lower"),
    ("corr_error", "corr. error", "lower"),
    ("detection_auc", "detection AUC", "0.5"),
    ("dcr_ratio", "DCR ratio", "1"),
)
GENERATORS = (("samples", "QGFD model"), ("baseline_gaussian", "Gaussian"), ("baseline_copula", "Gaussian copula"),
              ("baseline_smote", "SMOTE"), ("baseline_real", "real held-out"))


def run_one(table: str, seed: int, args, workdir: str) -> dict:
    """Train, sample and score one table with one seed; the evaluator's result with times."""
    from qgfd_hf.cli import main as cli_main
    from qgfd_hf.tasks.base import get_task

    task = get_task("tabular")
    out = os.path.join(workdir, f"{table}-seed{seed}")
    argv = ["train", "--modality", "tabular", "--dataset", table, "--seed", str(seed), "--output-dir", out, "--overwrite-output-dir",
            "--no-progress", "--checkpoint-every", "0", "--threads", "1"]
    argv += ["--max-steps", str(args.max_steps)]
    t0, cpu0 = time.time(), time.process_time()
    code = cli_main(argv)
    if code != 0:
        raise RuntimeError(f"qgfd-hf {' '.join(argv)} exited with {code}")
    t_train = time.time() - t0
    ns = argparse.Namespace(dataset=table, data_files=None, data_dir=None, label_column=None, categorical_columns=None,
                            no_progress=True, seed=seed)
    settings = task.settings(ns)
    data = task.load_data(ns, settings)
    t0 = time.time()
    samples = task.generate(os.path.join(out, "model"), data, settings, ns)
    t_sample = time.time() - t0
    t0 = time.time()
    evaluator = task.evaluator(data, seed=seed, trees=args.trees, forests=args.forests, detection_trees=args.detection_trees)
    result = evaluator.evaluate(samples)
    t_score = time.time() - t0
    with open(os.path.join(out, "metrics.json")) as f:
        train_metrics = json.load(f)
    result.update(table=table, seed=seed, steps=train_metrics.get("global_step"), final_loss=train_metrics.get("final_loss"),
                  dataset=train_metrics.get("dataset"), seconds={"train": t_train, "sample": t_sample, "score": t_score,
                                                                  "cpu_total": time.process_time() - cpu0})
    for key in ("samples",) + tuple(k for k, _ in GENERATORS[1:]):  # the per-column detail stays out of the JSON
        for drop in ("w1_per_column", "tvd_per_column"):
            result[key].pop(drop, None)
    return result


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list) -> dict:
    """Per table: the mean and std over seeds of every metric of every generator, and the targets."""
    out = {}
    for table in dict.fromkeys(r["table"] for r in runs):
        rs = [r for r in runs if r["table"] == table]
        cells = {}
        for gen, _ in GENERATORS:
            cells[gen] = {k: _mean_std([r[gen][k] for r in rs]) for k, _, _ in METRICS}
            cells[gen]["detection_auc_clipped"] = _mean_std([max(r[gen]["detection_auc"], 0.5) for r in rs])
        model, copula = cells["samples"], cells["baseline_copula"]
        tstr_win = model["tstr"][0] > copula["tstr"][0]
        det_win = model["detection_auc_clipped"][0] < copula["detection_auc_clipped"][0]
        out[table] = {"seeds": [r["seed"] for r in rs], "tstr_metric": rs[0]["tstr_metric"], "num_train": rs[0]["num_train"],
                      "num_heldout": rs[0]["num_heldout"], "dataset": rs[0]["dataset"], "cells": cells,
                      "tstr_beats_copula": tstr_win, "detection_beats_copula": det_win, "target_met": tstr_win and det_win}
    return out


def _fmt(ms, digits=3):
    m, s = ms
    return "-" if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown(summary: dict, meta: dict) -> str:
    met = sum(v["target_met"] for v in summary.values())
    lines = [
        "# Tables benchmark (`scripts/bench_tables.py`)",
        "",
        "Made by:",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"Seeds {meta['seeds']}; model: the tabular task's defaults trained {meta['max_steps']} steps; "
        f"forests: TSTR {meta['forests']} x {meta['trees']} trees, detection {meta['detection_trees']} trees (5-fold). "
        f"Wall time {meta['wall_s']:.0f} s, CPU time {meta['cpu_s']:.0f} s (1 torch thread), on {meta['machine']}.",
        "",
        f"**Target (beat the Gaussian copula on TSTR and detection AUC): met on {met} of {len(summary)} tables "
        f"(goal: at least 3).**",
        "",
        "Means ± std over seeds. TSTR: random forests trained on each generator's rows, tested on the real held-out rows "
        "(accuracy; R² for diabetes and linnerud); real held-out row: TRTR. W1: mean per-column Wasserstein-1 to the "
        "held-out rows in training-std units. Corr. error: mean |difference| of the numeric columns' correlation matrices "
        "to the held-out rows'. Detection AUC: a forest telling the rows from the training rows (0.5 = indistinguishable; "
        "real held-out row: held-out vs training rows). DCR ratio: median distance to the closest training row over the "
        "held-out rows' (near 0: copies of training rows).",
        "",
    ]
    for table, v in summary.items():
        what = "R²" if v["tstr_metric"] == "r2" else "accuracy"
        lines += [f"## {table} ({v['num_train']} training rows, {v['num_heldout']} held-out; TSTR = {what})", ""]
        lines.append("| generator | " + " | ".join(label for _, label, _ in METRICS) + " |")
        lines.append("|---|" + "---:|" * len(METRICS))
        for gen, name in GENERATORS:
            lines.append(f"| {name} | " + " | ".join(_fmt(v["cells"][gen][k]) for k, _, _ in METRICS) + " |")
        m, c = v["cells"]["samples"], v["cells"]["baseline_copula"]
        lines += ["", f"Target: TSTR {_fmt(m['tstr'])} vs copula {_fmt(c['tstr'])}: "
                      f"{'beaten' if v['tstr_beats_copula'] else 'not beaten'}; detection AUC read as max(AUC, 0.5) "
                      f"{_fmt(m['detection_auc_clipped'])} vs copula {_fmt(c['detection_auc_clipped'])}: "
                      f"{'beaten' if v['detection_beats_copula'] else 'not beaten'}. **{'met' if v['target_met'] else 'missed'}**.", ""]
    return "\n".join(lines) + "\n"


def print_table(summary: dict) -> None:
    head = f"{'table':14s}{'generator':17s}" + "".join(f"{label:>18s}" for _, label, _ in METRICS)
    print(head)
    for table, v in summary.items():
        for gen, name in GENERATORS:
            print(f"{table:14s}{name:17s}" + "".join(f"{_fmt(v['cells'][gen][k]):>18s}" for k, _, _ in METRICS))
        print(f"{'':14s}target (beat the copula on TSTR and detection): {'met' if v['target_met'] else 'MISSED'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=None, help="default: all five (breast-cancer wine diabetes iris linnerud)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=600,
                        help="training steps per run (600: the five tables x 3 seeds fit ~15 minutes of one CPU thread; the task's default is 1400)")
    parser.add_argument("--trees", type=int, default=50, help="trees per TSTR forest")
    parser.add_argument("--forests", type=int, default=2, help="TSTR forests (seeds) averaged")
    parser.add_argument("--detection-trees", type=int, default=50, help="trees of the detection forest")
    parser.add_argument("--output", default="docs/benchmarks_tables", help="writes OUTPUT.json and OUTPUT.md")
    parser.add_argument("--workdir", default=None, help="where the runs are trained (default: a temporary folder)")
    args = parser.parse_args(argv)

    import torch

    from qgfd_hf.tasks.tabular import SKLEARN_TABLES, table_name

    torch.set_num_threads(1)
    tables = [table_name(t) for t in (args.tables or list(SKLEARN_TABLES))]
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds must be distinct, got {args.seeds}")
    wall0, cpu0 = time.time(), time.process_time()
    runs = []
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_tables_") as tmp:
        workdir = args.workdir or tmp
        for table in tables:
            for seed in args.seeds:
                r = run_one(table, seed, args, workdir)
                runs.append(r)
                with open(args.output + ".partial.json", "w") as f:  # what is done so far, should the run be cut short
                    json.dump(runs, f, indent=1)
                s, c = r["samples"], r["baseline_copula"]
                print(f"[{time.time() - wall0:6.0f} s] {table} seed {seed}: model TSTR {s['tstr']:.3f} det {s['detection_auc']:.3f} | "
                      f"copula TSTR {c['tstr']:.3f} det {c['detection_auc']:.3f} | train {r['seconds']['train']:.0f} s, "
                      f"score {r['seconds']['score']:.0f} s", flush=True)
    summary = summarise(runs)
    settings = {"max_steps": args.max_steps, "trees": args.trees, "forests": args.forests,
                "detection_trees": args.detection_trees, "seeds": args.seeds}
    meta = dict(settings, command="OMP_NUM_THREADS=1 python scripts/bench_tables.py " + " ".join(sys.argv[1:] if argv is None else argv),
                wall_s=time.time() - wall0, cpu_s=time.process_time() - cpu0,
                machine=f"{os.cpu_count()} CPU cores shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end)")
    print()
    print_table(summary)
    met = sum(v["target_met"] for v in summary.values())
    print(f"\ntarget met on {met} of {len(summary)} tables (goal: 3); wall {meta['wall_s']:.0f} s, CPU {meta['cpu_s']:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs, "tables_met": met}, f, indent=1)
    with open(args.output + ".md", "w") as f:
        f.write(markdown(summary, meta))
    os.remove(args.output + ".partial.json")
    print(f"wrote {args.output}.json and {args.output}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
