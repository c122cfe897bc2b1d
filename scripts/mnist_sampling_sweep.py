"""Score one saved MNIST model under several sampling settings (guidance scale, sampler, steps).

    python -m qgfd_hf demo --output-dir runs/mnist                     # the model (the demo's recipe)
    python scripts/mnist_sampling_sweep.py runs/mnist/model --guidance 1 2 3 4
    python scripts/mnist_sampling_sweep.py runs/mnist/model --sampler ddpm --steps 100 --guidance 2 --json sweep.json

Each setting samples `--num-samples` digits through `pipeline("qgfd-diffusion")` (seed 0), asking for
the held-out test digits' classes in turn as the demo does, and scores them with the demo's MNIST
evaluator (`qgfd_hf.metrics.mnist`: a CNN judge, FD in its features against held-out test digits,
agreement, k-NN precision/recall, the memorisation check) beside real held-out digits and the
per-class Gaussian. Sampling without labels (the training label frequencies) is one more row with
`--no-labels`. Nothing is trained: guidance and the sampler act at sampling time only.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a saved class-conditional MNIST model folder (qgfd-hf demo's <output-dir>/model)")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="classifier-free guidance scales")
    p.add_argument("--sampler", default="dpmsolver++", choices=("ddpm", "ddim", "dpmsolver++"))
    p.add_argument("--steps", type=int, nargs="+", default=[25], help="denoising steps")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--no-labels", action="store_true", help="also sample without class labels (training frequencies)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()

    import torch

    from qgfd_hf.data.mnist import load_mnist_arrays
    from qgfd_hf.metrics.mnist import MnistEvaluator, MnistJudge, mnist_targets_met
    from qgfd_hf.tasks.base import pipeline_samples

    torch.set_num_threads(args.threads)
    train_x, train_y = load_mnist_arrays("train")
    test_x, test_y = load_mnist_arrays("test")
    evaluator = MnistEvaluator(MnistJudge.load(), train_x / np.float32(255), train_y, test_x / np.float32(255), test_y, seed=0)
    n = args.num_samples
    requested = [int(test_y[i % len(test_y)]) for i in range(n)]
    settings = [(g, s, True) for g in args.guidance for s in args.steps]
    if args.no_labels:
        settings += [(g, s, False) for g in args.guidance for s in args.steps]
    rows = []
    header = f"{'labels':>7s}{'guidance':>9s}{'steps':>6s}{'FD':>8s}{'agree':>7s}{'conf':>7s}{'prec':>7s}{'recall':>7s}{'memo':>7s}{'sec':>6s}"
    print(header)
    for g, steps, labelled in settings:
        t = time.time()
        images = pipeline_samples(args.model, num_samples=n, num_inference_steps=steps, sampler=args.sampler, seed=0, progress=False,
                                  guidance_scale=g, **({"class_labels": requested} if labelled else {}))
        seconds = time.time() - t
        result = evaluator.evaluate(images.transpose(0, 3, 1, 2), requested_labels=requested if labelled else None)
        s = result["samples"]
        rows.append(dict(labels=labelled, guidance_scale=g, sampler=args.sampler, steps=steps, seconds=round(seconds, 1),
                         result=result, targets=mnist_targets_met(result)))
        print(f"{'yes' if labelled else 'no':>7s}{g:9.2f}{steps:6d}{s['fd']:8.2f}{s.get('class_agreement', float('nan')):7.3f}"
              f"{s['confidence']:7.3f}{s['precision']:7.3f}{s['recall']:7.3f}{s['share_nearer_than_heldout_p1']:7.3f}{seconds:6.0f}", flush=True)
    r, gs = rows[0]["result"]["baseline_real_heldout"], rows[0]["result"]["baseline_gaussian_per_class"]
    for name, b in (("real", r), ("gauss", gs)):
        print(f"{name:>7s}{'':9s}{'':6s}{b['fd']:8.2f}{b['class_agreement']:7.3f}{b['confidence']:7.3f}{b['precision']:7.3f}"
              f"{b['recall']:7.3f}{b['share_nearer_than_heldout_p1']:7.3f}")
    print(f"(judge test accuracy {rows[0]['result']['judge_test_accuracy']:.4f}; {n} samples per row; sampler {args.sampler}; "
          "memo: share of samples nearer a training digit than 99% of held-out digits are)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
