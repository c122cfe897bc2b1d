"""Does QGFD help, and where? (issue 14). Trains small models on tasks that need k = 1, 2, 3 hops
(pointer chasing, k-hop induction heads, graph reachability) and on ListOps (a small Long Range
Arena task), with softmax attention and QGFD arms at depth 1, 2, 3, over seeds, at one budget;
then the shared text+image denoiser (sequential against joint training) and QGFD patched into a
model pretrained here (alpha warm-up from 0). Every table in docs/evaluation.md comes from here.

    # the grid (appends one JSON line per run to --out-dir/runs-<tag>.jsonl; resumes: runs already
    # there are skipped). Split it over processes with --tasks; the "reduced" arm set is what
    # docs/evaluation.md reports, "full" is the whole factorial (75 arms per task).
    python scripts/eval_qgfd.py grid --tasks pointer-k1 pointer-k2 pointer-k3 reachability-k1 reachability-k2 reachability-k3 --tag a
    python scripts/eval_qgfd.py grid --tasks induction-k1 induction-k2 induction-k3 --tag b
    python scripts/eval_qgfd.py grid --tasks listops-d3 --tag c
    python scripts/eval_qgfd.py grid --arms full --seeds 0 1 2 3 4 --tag full      # all 75 arms (hours on a CPU)

    # the shared denoiser: sequential text -> images against joint (alternating batches), +- QGFD
    python scripts/eval_qgfd.py shared --seeds 0 1 --steps 1500

    # fine-tuning: a tiny BERT pretrained here on pointer-k2, patched with QGFD (warm-up from 0)
    python scripts/eval_qgfd.py finetune --seeds 0 1 2 3 4

    # tables (markdown), plots (PNG) and one JSON of all runs, from what the commands above wrote
    python scripts/eval_qgfd.py report --out docs/evaluation_results.md

The demo tasks (digits FD, word reversal) are `scripts/ab_qgfd_vs_softmax.py` (see docs/ab.md):

    python scripts/ab_qgfd_vs_softmax.py --tasks text --arms softmax qgfd-seed qgfd-keys-rec --seeds 0 1 2 \
        --work-dir eval-runs/ab-full --out eval-runs/ab-text-full.md

Run with OMP_NUM_THREADS=1 (the script also sets one torch thread): costs are CPU seconds of one thread.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from qgfd_hf.benchmarks_qgfd import (
    Arm,
    Budget,
    arm_grid,
    make_task,
    paired_comparison,
    summarize,
    train_and_evaluate,
)

TASK_CONFIGS = [f"{t}-k{k}" for t in ("pointer", "induction", "reachability") for k in (1, 2, 3)] + ["listops-d3"]
TEST_SEED = 10_000  # the test set: the same for every seed and arm, never drawn for training


def reduced_arms():
    """The arms docs/evaluation.md reports: depth for softmax; T, graph, mix and fixed alpha at
    depth 1 for QGFD; the seed's rule at depth 2 (does QGFD still add with depth?)."""
    seed_rule = dict(graph="attention", mix="seed")
    return [
        Arm(depth=1), Arm(depth=2), Arm(depth=3),
        Arm(depth=1, steps=1, learnable_alpha=True, **seed_rule),
        Arm(depth=1, steps=2, learnable_alpha=True, **seed_rule),
        Arm(depth=1, steps=3, learnable_alpha=True, **seed_rule),
        Arm(depth=1, steps=2, learnable_alpha=False, **seed_rule),
        Arm(depth=1, steps=2, learnable_alpha=True, graph="attention", mix="recurrent"),
        Arm(depth=1, steps=2, learnable_alpha=True, graph="keys", mix="recurrent"),
        Arm(depth=2, steps=2, learnable_alpha=True, **seed_rule),
    ]


def parse_task(config: str):
    """"pointer-k2" -> ("pointer", 2); "listops-d3" -> ("listops", 3)."""
    task, _, k = config.rpartition("-")
    return task, int(k[1:])


# ----------------------------------------------------------------------------------------
# 1. The grid
# ----------------------------------------------------------------------------------------


def run_grid(args):
    arms = arm_grid() if args.arms == "full" else reduced_arms()
    budget = Budget(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate)
    path = os.path.join(args.out_dir, f"runs-{args.tag}.jsonl")
    os.makedirs(args.out_dir, exist_ok=True)
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(r["task"], r["arm"], r["seed"]) for r in map(json.loads, f)}
    print(f"{len(arms)} arms x {len(args.tasks)} tasks x {len(args.seeds)} seeds -> {path} ({len(done)} already there)", flush=True)
    data = {}
    for seed in args.seeds:  # seeds outermost: a stopped grid still has every arm at the first seeds
        for config in args.tasks:
            task, k = parse_task(config)
            if config not in data:
                data[config] = make_task(task, args.test_size, TEST_SEED, k)
            test = data[config]
            train = make_task(task, budget.steps * budget.batch_size, seed, k)  # fresh examples, one pass
            for arm in arms:
                if (test.name, arm.name, seed) in done:
                    continue
                record = train_and_evaluate(arm, train, test, budget, seed, d_model=args.d_model, num_heads=args.num_heads)
                record["majority_accuracy"], record["test_size"] = test.majority_accuracy(), len(test)
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] {test.name} {arm.name} seed {seed}: acc {record['accuracy']:.3f} "
                      f"loss {record['final_loss']:.3f} cpu {record['cpu_s']:.1f}s", flush=True)


# ----------------------------------------------------------------------------------------
# 2. The shared denoiser: sequential against joint training, with and without QGFD
# ----------------------------------------------------------------------------------------


def run_shared(args):
    from shared_denoiser_eval import run_shared_eval  # scripts/shared_denoiser_eval.py

    run_shared_eval(args)


# ----------------------------------------------------------------------------------------
# 3. Fine-tuning a pretrained model with QGFD patched in
# ----------------------------------------------------------------------------------------


def run_finetune(args):
    from finetune_eval import run_finetune_eval  # scripts/finetune_eval.py

    run_finetune_eval(args)


# ----------------------------------------------------------------------------------------
# 4. The report: tables, plots, one JSON
# ----------------------------------------------------------------------------------------


def load_runs(out_dir):
    runs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "runs-*.jsonl"))):
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    return runs


def fmt_ci(s):
    return f"{s['mean']:.3f} +- {s['std']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def fmt_diff(c):
    return f"{c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] p={c['p_value']:.2g} ({c['wins']}/{c['ties']}/{c['losses']})"


def by_seed(runs, task, arm):
    return {r["seed"]: r for r in runs if r["task"] == task and r["arm"] == arm}


def paired(runs, task, arm, ref):
    a, b = by_seed(runs, task, arm), by_seed(runs, task, ref)
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2 or arm == ref:
        return "-"
    return fmt_diff(paired_comparison([a[s]["accuracy"] for s in seeds], [b[s]["accuracy"] for s in seeds]))


def grid_tables(runs):
    tasks = [t for t in dict.fromkeys(r["task"] for r in runs)]
    order = {a.name: i for i, a in enumerate(reduced_arms() + arm_grid())}
    out = []
    for task in tasks:
        rs = [r for r in runs if r["task"] == task]
        arms = sorted(dict.fromkeys(r["arm"] for r in rs), key=lambda a: order.get(a, 1e9))
        maj = rs[0]["majority_accuracy"]
        out.append(f"### {task}\n\nmajority-class accuracy {maj:.3f}; accuracy on {rs[0].get('test_size', 'the')} test "
                   f"examples; mean +- std [95% t-interval] over seeds; paired differences against softmax at depth 1 "
                   f"and 2: mean [95% t-interval] p (wins/ties/losses over seeds).\n")
        out.append("| arm | seeds | accuracy | vs softmax-d1 | vs softmax-d2 | params | CPU s / run | learned alpha |")
        out.append("|---|---:|---|---|---|---:|---:|---|")
        for arm in arms:
            a = [r for r in rs if r["arm"] == arm]
            s = summarize([r["accuracy"] for r in a])
            alphas = [v for r in a for layer in r["alphas"] for v in layer]
            alpha = f"{np.mean(alphas):.2f}" if alphas and a[0]["learnable_alpha"] else ""
            out.append(f"| {arm} | {s['n']} | {fmt_ci(s)} | {paired(runs, task, arm, 'softmax-d1')} | "
                       f"{paired(runs, task, arm, 'softmax-d2')} | {a[0]['params']} | {np.mean([r['cpu_s'] for r in a]):.1f} | {alpha} |")
        out.append("")
    return "\n".join(out)


def plot_grid(runs, plot_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plot_dir, exist_ok=True)
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    paths = []
    for x_name, key in (("depth", "depth"), ("T", "steps")):
        cols = min(4, len(tasks))
        fig, axes = plt.subplots(math.ceil(len(tasks) / cols), cols, figsize=(3.6 * cols, 2.9 * math.ceil(len(tasks) / cols)),
                                 squeeze=False)
        for ax, task in zip(axes.flat, tasks):
            rs = [r for r in runs if r["task"] == task]
            if key == "depth":  # one line per attention family that has more than one depth
                groups = {}
                for r in rs:
                    groups.setdefault(r["family"], []).append(r)
            else:  # one line per (graph, mix, alpha mode, depth) that has more than one T; softmax is T = 0
                groups = {}
                for r in rs:
                    fam = "softmax" if r["steps"] == 0 else f"{r['graph']}-{r['mix']}-{'learn' if r['learnable_alpha'] else 'fixed'}"
                    groups.setdefault(f"{fam}-d{r['depth']}", []).append(r)
                for name in list(groups):
                    if not name.startswith("softmax"):
                        groups[name] = groups[name] + groups.get(f"softmax-d{name.rsplit('-d', 1)[1]}", [])
            for name, g in groups.items():
                xs = sorted(set(r[key] for r in g))
                if len(xs) < 2:
                    continue
                means = [np.mean([r["accuracy"] for r in g if r[key] == x]) for x in xs]
                cis = [summarize([r["accuracy"] for r in g if r[key] == x]) for x in xs]
                ax.errorbar(xs, means, yerr=[[m - c["ci_low"] for m, c in zip(means, cis)], [c["ci_high"] - m for m, c in zip(means, cis)]],
                            marker="o", capsize=3, label=name)
            ax.axhline(rs[0]["majority_accuracy"], color="grey", ls=":", lw=1)
            ax.set_title(task, fontsize=9)
            ax.set_xlabel(x_name)
            ax.set_ylabel("test accuracy")
            ax.set_xticks(sorted(set(r[key] for r in rs)))
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        fig.tight_layout()
        path = os.path.join(plot_dir, f"accuracy_vs_{x_name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def run_report(args):
    runs = load_runs(args.out_dir)
    sections = ["# Evaluation results (generated by `python scripts/eval_qgfd.py report`)\n"]
    if runs:
        b = runs[0]["budget"]
        sections.append(f"Grid: {len(runs)} runs; budget per run: {b['steps']} steps of batch {b['batch_size']}, AdamW lr "
                        f"{b['learning_rate']} (warm-up {b['warmup_steps']}, cosine), width {runs[0]['d_model']}, "
                        f"{runs[0]['num_heads']} heads.\n")
        sections.append(grid_tables(runs))
        for p in plot_grid(runs, args.plot_dir):
            sections.append(f"![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(args.out)))})\n")
    for name in ("shared", "finetune"):
        path = os.path.join(args.out_dir, f"{name}.md")
        if os.path.exists(path):
            with open(path) as f:
                sections.append(f.read())
    text = "\n".join(sections)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "all_runs.json"), "w") as f:
        json.dump(runs, f, indent=1)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="train the arms on the tasks")
    g.add_argument("--tasks", nargs="+", default=TASK_CONFIGS, choices=TASK_CONFIGS)
    g.add_argument("--arms", choices=("reduced", "full"), default="reduced")
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--learning-rate", type=float, default=3e-3)
    g.add_argument("--d-model", type=int, default=32)
    g.add_argument("--num-heads", type=int, default=4)
    g.add_argument("--test-size", type=int, default=1000)
    g.add_argument("--tag", default="a", help="the runs file: runs-<tag>.jsonl (one per process)")
    s = sub.add_parser("shared", help="the shared text+image denoiser: sequential against joint, +- QGFD")
    s.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    s.add_argument("--steps", type=int, default=1500, help="optimizer steps per modality (joint: twice this, alternating)")
    s.add_argument("--batch-size", type=int, default=64)
    f = sub.add_parser("finetune", help="QGFD patched into a model pretrained here, alpha warm-up from 0")
    f.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    f.add_argument("--pretrain-steps", type=int, default=600)
    f.add_argument("--finetune-steps", type=int, default=300)
    f.add_argument("--warmup", type=int, default=100)
    r = sub.add_parser("report", help="tables, plots and one JSON from what the other commands wrote")
    r.add_argument("--out", default="docs/evaluation_results.md")
    r.add_argument("--plot-dir", default="docs/evaluation")
    for sp in (g, s, f, r):
        sp.add_argument("--out-dir", default="eval-runs")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    {"grid": run_grid, "shared": run_shared, "finetune": run_finetune, "report": run_report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
