"""Sample quality against network evaluations: DDPM, DDIM and DPM-Solver++ on the digits demo (issue 13).

Trains the image demo's model on scikit-learn's 8x8 digits once (the CLI's `train`, the demo's
settings: v-prediction on the cosine schedule, 3000 steps), or loads a trained model folder; then,
for each sampler and each number of network evaluations (NFE = num_inference_steps), samples as
many digits as there are held-out ones (360) through `pipeline("qgfd-diffusion")`, for each seed,
and scores them with the demo's `DigitsEvaluator`: the Frechet distance (FD) of the digit
classifier's features to the held-out digits, and the classifier's mean confidence. The same
starting noise for every sampler at a given seed. Prints a markdown table with the Gaussian and
real-digit baselines beside, and writes `results.json` and `fd_vs_nfe.png` to `--output-dir`.

    python scripts/bench_samplers.py --output-dir bench-samplers --threads 1
    python scripts/bench_samplers.py --model bench-samplers/train/model --output-dir bench-samplers
    python scripts/bench_samplers.py --model DIR --nfe 10 20 --samplers dpmsolver++ --timestep-spacing trailing

Target (issue 13): DPM-Solver++ at 20 NFE within 10% of DDPM-100's FD.
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

SAMPLER_NAMES = ("ddpm", "ddim", "dpmsolver++")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a trained image model folder (default: train the digits demo model)")
    p.add_argument("--output-dir", default="bench-samplers")
    p.add_argument("--max-steps", type=int, default=3000, help="training steps when --model is not given")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLER_NAMES), choices=SAMPLER_NAMES)
    p.add_argument("--nfe", nargs="+", type=int, default=[10, 20, 50, 100], help="network evaluations (num_inference_steps)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one sample set per seed; FD is averaged over them")
    p.add_argument("--num-samples", type=int, default=360)
    p.add_argument("--timestep-spacing", default="linspace", choices=("linspace", "leading", "trailing"))
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def train_model(output_dir, max_steps, threads):
    """The digits demo's model, through the CLI; returns its folder."""
    from qgfd_hf.cli import main as cli

    train_dir = os.path.join(output_dir, "train")
    rc = cli(["train", "--modality", "image", "--dataset", "digits", "--output-dir", train_dir,
              "--max-steps", str(max_steps), "--threads", str(threads)])
    if rc != 0:
        raise SystemExit(f"training failed (exit status {rc})")
    return os.path.join(train_dir, "model")


def sample_digits(pipe, sampler, nfe, seed, num_samples, spacing):
    """`num_samples` images [N, 1, 8, 8] in [0, 1] and the seconds it took."""
    t0 = time.time()
    out = pipe(num_samples=num_samples, sampler=sampler, num_inference_steps=nfe, timestep_spacing=spacing,
               seed=seed, batch_size=num_samples, output_type="np", progress_bar=False)
    images = np.stack([o["np"] for o in out]).transpose(0, 3, 1, 2)  # [H, W, C] -> [N, C, H, W]
    return images, time.time() - t0


def markdown_table(results, baselines, target):
    lines = ["| sampler | NFE | FD (mean ± std over seeds) | confidence | classes | seconds / set |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['sampler']} | {r['nfe']} | {r['fd_mean']:.3f} ± {r['fd_std']:.3f} | {r['confidence_mean']:.3f} | "
                     f"{r['classes_present_min']} | {r['seconds_mean']:.1f} |")
    g, real = baselines["gaussian"], baselines["real_train_vs_heldout"]
    lines.append(f"| *Gaussian fitted to the training pixels* | - | {g['fd']:.3f} | {g['confidence']:.3f} | {g['classes_present']} | - |")
    lines.append(f"| *real training digits* | - | {real['fd']:.3f} | {real['confidence']:.3f} | {real['classes_present']} | - |")
    if target is not None:
        lines.append("")
        lines.append(f"Target: DPM-Solver++ at 20 NFE within 10% of DDPM-100's FD: FD {target['dpm20']:.3f} vs "
                     f"{target['ddpm100']:.3f} (ratio {target['ratio']:.3f}): {'met' if target['met'] else 'NOT met'}.")
    return "\n".join(lines)


def plot(results, baselines, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in SAMPLER_NAMES:
        rows = [r for r in results if r["sampler"] == name]
        if rows:
            ax.errorbar([r["nfe"] for r in rows], [r["fd_mean"] for r in rows], yerr=[r["fd_std"] for r in rows],
                        marker="o", capsize=3, label=name)
    ax.axhline(baselines["gaussian"]["fd"], color="gray", ls="--", label="Gaussian baseline")
    ax.axhline(baselines["real_train_vs_heldout"]["fd"], color="black", ls=":", label="real training digits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({r["nfe"] for r in results})
    ax.set_xticks(nfes)
    ax.set_xticklabels([str(n) for n in nfes])
    ax.set_xlabel("network evaluations (num_inference_steps)")
    ax.set_ylabel("FD to held-out digits (lower is better)")
    ax.set_title("Digits demo model: sample quality vs. NFE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    from transformers import pipeline

    import qgfd_hf  # the configs; "qgfd-diffusion" with the first config
    from qgfd_hf.data.core import load_digits_dataset
    from qgfd_hf.metrics.core import DigitsEvaluator

    # 1. The model: trained here once, or given.
    t0 = time.time()
    model_dir = args.model or train_model(args.output_dir, args.max_steps, args.threads)
    train_seconds = time.time() - t0 if args.model is None else None
    pipe = pipeline("qgfd-diffusion", model=model_dir, device="cpu")

    # 2. The evaluator and its baselines, as the digits demo's (`qgfd_hf.tasks.image.ImageTask.evaluate`).
    digits = load_digits_dataset(seed=0)
    evaluator = DigitsEvaluator(digits["train"]["pixel_values"], digits["train"]["label"],
                                digits["test"]["pixel_values"], digits["test"]["label"], seed=0)
    baselines = {"gaussian": evaluator.score(evaluator.gaussian_samples(args.num_samples)),
                 "real_train_vs_heldout": evaluator.score(evaluator.real_samples(args.num_samples))}

    # 3. Every sampler at every NFE, for every seed.
    results = []
    for sampler in args.samplers:
        for nfe in args.nfe:
            runs = []
            for seed in args.seeds:
                images, seconds = sample_digits(pipe, sampler, nfe, seed, args.num_samples, args.timestep_spacing)
                runs.append({**evaluator.score(images), "seed": seed, "seconds": seconds})
            fds = [r["fd"] for r in runs]
            results.append({
                "sampler": sampler, "nfe": nfe,
                "fd_mean": statistics.mean(fds), "fd_std": statistics.stdev(fds) if len(fds) > 1 else 0.0,
                "confidence_mean": statistics.mean(r["confidence"] for r in runs),
                "classes_present_min": min(r["classes_present"] for r in runs),
                "seconds_mean": statistics.mean(r["seconds"] for r in runs),
                "runs": [{k: r[k] for k in ("seed", "fd", "confidence", "classes_present", "seconds")} for r in runs],
            })
            print(f"{sampler:>12} NFE {nfe:>4}: FD {results[-1]['fd_mean']:.3f} ± {results[-1]['fd_std']:.3f}", flush=True)

    # 4. The target, the table, the plot and the JSON.
    by = {(r["sampler"], r["nfe"]): r["fd_mean"] for r in results}
    target = None
    if ("dpmsolver++", 20) in by and ("ddpm", 100) in by:
        ratio = by["dpmsolver++", 20] / by["ddpm", 100]
        target = {"dpm20": by["dpmsolver++", 20], "ddpm100": by["ddpm", 100], "ratio": ratio, "met": ratio <= 1.10}
    table = markdown_table(results, baselines, target)
    print()
    print(table)
    png = os.path.join(args.output_dir, "fd_vs_nfe.png")
    plot(results, baselines, png)
    report = {
        "model": os.path.abspath(model_dir), "train_seconds": train_seconds, "timestep_spacing": args.timestep_spacing,
        "num_samples": args.num_samples, "seeds": args.seeds, "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, qgfd_hf {qgfd_hf.__version__}",
        "baselines": {k: {m: v[m] for m in ("fd", "confidence", "classes_present")} for k, v in baselines.items()},
        "results": results, "target": target, "table_markdown": table,
    }
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {png} and {os.path.join(args.output_dir, 'results.json')}")


if __name__ == "__main__":
    main()
