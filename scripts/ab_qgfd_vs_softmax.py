"""A/B: does QGFD attention help? The demo's tasks, trained with plain softmax attention and
with QGFD, at the same budget, over several seeds.

Each run is one `qgfd-hf demo` (same data, model size, optimizer, steps, sampler and metrics as
the main job in docs/demos.md), in its own process, with only the attention settings changed:

    softmax        --qgfd-alpha 0                                   (plain attention, exactly)
    qgfd-seed      the demo's QGFD: graph=attention, mix=seed, steps=1, alpha=0.5
    qgfd-keys-rec  --qgfd-graph keys --qgfd-mix recurrent --qgfd-steps 2 (alpha=0.5)
    pretrained     --denoiser pretrained: a transformers stack as the denoiser (issue 7), with the
                   demo's QGFD settings and adaLN-Zero. Text: the demo's T5 (random: there is no
                   download here); images: --vit-backbone, or else a ViT sized like the demo's
                   denoiser (64 wide, 3 layers, 4 heads, random init) that this script saves. With
                   random weights this arm measures the architecture, not pretraining.

Examples:

    python scripts/ab_qgfd_vs_softmax.py --out docs/ab.md                      # both tasks, 3 seeds, 3 arms
    python scripts/ab_qgfd_vs_softmax.py --tasks image --seeds 0 1 2 --max-steps 1000 --out docs/ab.md
    python scripts/ab_qgfd_vs_softmax.py --arms softmax qgfd-seed --tasks text --seeds 0 --max-steps 200

Runs are kept under --work-dir; a run whose metrics.json exists is not run again (so an
interrupted A/B continues where it stopped). The table reports mean +- standard deviation over
seeds of the final training loss (mean of the last logged window) and the demo's metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ARMS = {
    "softmax": ["--qgfd-alpha", "0"],
    "qgfd-seed": [],
    "qgfd-keys-rec": ["--qgfd-graph", "keys", "--qgfd-mix", "recurrent", "--qgfd-steps", "2"],
    "pretrained": ["--denoiser", "pretrained"],
}
TASKS = ("image", "text")


def run_one(task: str, arm: str, seed: int, args) -> dict:
    out_dir = os.path.join(args.work_dir, f"{task}-{arm}-seed{seed}")
    metrics_path = os.path.join(out_dir, "metrics.json")
    if not os.path.exists(metrics_path):
        cmd = [sys.executable, "-m", "qgfd_hf", "demo", "--modality", task, "--seed", str(seed), "--output-dir", out_dir,
               "--no-progress", "--checkpoint-every", "0", *ARMS[arm]]
        if task == "image":
            cmd += ["--dataset", "digits"]  # the 8x8 digits: the A/B's published numbers
        if task == "text":  # the word-reversal task this A/B was measured on (the text demo's default is now Shakespeare)
            cmd += ["--dataset", "reversal"]
        if arm == "pretrained" and task == "image":
            cmd += ["--backbone", args.vit_backbone or random_vit(args.work_dir)]
        if args.max_steps is not None:
            cmd += ["--max-steps", str(args.max_steps)]
        if args.num_samples is not None and task == "image":
            cmd += ["--num-samples", str(args.num_samples)]
        print(f"[{time.strftime('%H:%M:%S')}] {task} {arm} seed {seed}: {' '.join(cmd[1:])}", flush=True)
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"run failed ({task}, {arm}, seed {seed}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        print(f"    done in {time.time() - t:.0f}s", flush=True)
    with open(metrics_path) as f:
        return json.load(f)


def random_vit(work_dir: str) -> str:
    """A ViT sized like the demo's denoiser (random weights), for the image `pretrained` arm offline."""
    from transformers import ViTConfig, ViTModel

    path = os.path.join(work_dir, "vit-random-64x3")
    if not os.path.exists(os.path.join(path, "config.json")):
        import torch

        torch.manual_seed(0)
        config = ViTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                           image_size=8, patch_size=2, num_channels=1)
        ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    return path


def trainable_params_m(model_dir: str) -> float:
    """Millions of parameters that training updates (frozen encoders excluded)."""
    import qgfd_hf  # noqa: F401  (the configs; the folder's config registers the models)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6


def summarise(task: str, m: dict) -> dict:
    demo = m["demo"]["metrics"]
    row = {"final loss": m.get("final_loss"), "trainable params (M)": trainable_params_m(m["model_dir"])}
    if task == "image":
        row["FD (lower=better)"] = demo["samples"]["fd"]
        row["confidence"] = demo["samples"]["confidence"]
        row["classes"] = demo["samples"]["classes_present"]
        if "class_agreement" in demo["samples"]:  # a class-conditional demo (the default since issue 13)
            row["agreement with the requested class"] = demo["samples"]["class_agreement"]
        row["FD Gaussian baseline"] = demo["baseline_gaussian"]["fd"]
    else:
        row["exact match"] = demo["exact_match"]
    return row


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    if s <= 1e-9 * abs(m):  # the same value in every run (float noise only)
        s = 0.0
    return f"{m:.4g} +- {s:.2g}"


def table(task: str, results: dict) -> str:
    arms = list(results)
    cols = list(next(iter(results.values()))[0].keys())
    lines = [f"| {task} arm | seeds | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for arm in arms:
        rows = results[arm]
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(mean_std([r[c] for r in rows]) for c in cols) + " |")
    return "\n".join(lines)


def paired_table(task: str, results: dict) -> str:
    """Each arm against the first, seed by seed (the same seeds in the same order): the mean
    difference of every metric with its 95% t-interval, the paired t-test's p and wins / ties /
    losses (a "win" is a larger value: for FD and the loss, a larger value is worse)."""
    from benchmarks_qgfd import paired_comparison

    arms = list(results)
    if len(arms) < 2 or len(results[arms[0]]) < 2:
        return ""
    base = arms[0]
    cols = [c for c in results[base][0] if c not in ("trainable params (M)", "classes", "FD Gaussian baseline")]
    lines = [f"Paired against {base} ({task}; a - {base}: mean [95% t-interval] p (larger/equal/smaller over seeds)):", "",
             f"| {task} arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for arm in arms[1:]:
        cells = []
        for c in cols:
            a, b = [r[c] for r in results[arm]], [r[c] for r in results[base]]
            if any(v is None for v in a + b):
                cells.append("n/a")
                continue
            d = paired_comparison(a, b)
            cells.append(f"{d['mean_diff']:+.4g} [{d['ci_low']:+.3g}, {d['ci_high']:+.3g}] p={d['p_value']:.2g} "
                         f"({d['wins']}/{d['ties']}/{d['losses']})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run (default: the demo's)")
    p.add_argument("--num-samples", type=int, default=None, help="image: samples scored per run (default: the demo's)")
    p.add_argument("--work-dir", default="ab-runs")
    p.add_argument("--vit-backbone", default=None, help="image `pretrained` arm: a ViT (Hub id or folder); default: a random ViT")
    p.add_argument("--out", default=None, help="write the markdown tables here")
    args = p.parse_args(argv)

    sections = [
        f"Command: `python scripts/ab_qgfd_vs_softmax.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"Seeds: {args.seeds}; budget: {args.max_steps or 'the demo default'} optimizer steps per run; "
        "values are mean +- standard deviation over seeds.",
    ]
    for task in args.tasks:
        results = {arm: [summarise(task, run_one(task, arm, s, args)) for s in args.seeds] for arm in args.arms}
        sections.append(table(task, results))
        paired = paired_table(task, results)
        if paired:
            sections.append(paired)
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
