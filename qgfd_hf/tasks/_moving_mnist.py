# coding=utf-8
"""The video task's Moving MNIST scoring and report (`qgfd_hf/tasks/video.py` calls these): the
MNIST judge per frame (`metrics.moving_mnist.MovingMnistEvaluator`), beside real held-out clips and
per-class Gaussians in pixels and in the model's latent space."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

# held-out clips: the first `reference_clips` are the FD's reference, the rest the real baseline's pool
TRAIN_CLIPS_FOR_BASELINES = 10000  # training clips the class Gaussians are fitted to (about 1000 a class)


def moving_mnist_evaluator(data, settings: Dict, seed: int = 0):
    """The evaluator of `data` (the video task's Moving MNIST data): the judge (`MnistJudge.load`),
    training clips (rendered once, fixed seed) for the Gaussians, and the held-out clips."""
    from ..data.moving_mnist import make_moving_mnist
    from ..metrics.mnist import MnistJudge
    from ..metrics.moving_mnist import MovingMnistEvaluator

    mm = data.info["moving_mnist"]
    F, S = data.info["num_frames"], data.info["frame_size"]
    n = min(TRAIN_CLIPS_FOR_BASELINES, len(mm["train_labels"]))
    train = make_moving_mnist(mm["train_images"][:n], mm["train_labels"][:n], F, S, seed=seed + 7)
    test, test_labels = mm["test_clips"], mm["test_labels"]
    k = min(int(settings.get("reference_clips", 2000)), len(test) // 2)
    judge = settings.get("judge") or MnistJudge.load(seed=0)
    return MovingMnistEvaluator(judge, train["pixel_values"].astype(np.float32) / 255.0, train["label"],
                                test[:k].astype(np.float32) / 255.0, test[k:].astype(np.float32) / 255.0, test_labels[k:], seed=seed)


def evaluate_moving_mnist(samples, data, settings: Dict, codec=None) -> Dict:
    """`{"metrics": ..., "targets": ...}` of Moving MNIST samples (a class-conditional model's: the
    requested labels in `settings`)."""
    from ..metrics.moving_mnist import moving_mnist_targets_met

    labels = settings.get("requested_labels")
    if labels is None:
        raise ValueError("Moving MNIST samples are scored against the classes they asked for: train a class-conditional model "
                         "(the demo's default; --class-conditional).")
    scores = moving_mnist_evaluator(data, settings).evaluate(samples, labels, codec=codec)
    scores["guidance_scale"] = settings.get("guidance_scale", 1.0)
    return {"metrics": scores, "targets": moving_mnist_targets_met(scores)}


ROWS = (
    ("Frechet distance, judge features (lower=better)", "fd", ".3f"),
    ("mean frame confidence", "confidence", ".3f"),
    ("clips keeping one identity (all frames)", "consistent", ".1%"),
    ("frames of the requested class", "class_agreement", ".3f"),
    ("clips all of the requested class", "clips_on_requested_class", ".1%"),
    ("frame-to-frame shift match", "shift_match", ".3f"),
    ("classes present (of 10)", "classes_present", "d"),
)


def moving_mnist_report_lines(m: Dict) -> List[str]:
    s, r, g, lg = m["samples"], m["baseline_real_heldout"], m["baseline_class_gaussian"], m.get("baseline_latent_class_gaussian")
    cols = [("model", s), ("real held-out", r), ("class Gaussian", g)] + ([("latent class Gauss.", lg)] if lg else [])
    widths = [max(len(name) + 2, 10) for name, _ in cols]
    acc = m.get("judge_test_accuracy")
    lines = [f"Sample quality ({s['num_clips']} clips of Moving MNIST; judge: MNIST CNN per frame, a 28x28 window around its "
             f"centre of mass" + (f", {acc:.2%} MNIST test accuracy" if acc is not None else "") + "):",
             f"  {'':48s}" + "".join(f"{name:>{w}s}" for (name, _), w in zip(cols, widths))]
    for title, key, fmt in ROWS:
        lines.append(f"  {title:48s}" + "".join(f"{c[key]:{w}{fmt}}" for (_, c), w in zip(cols, widths)))
    return lines + [
        f"  (class-conditional, guidance scale {m.get('guidance_scale', 1.0)}: each clip asked for a held-out clip's class; FD against "
        f"{m['num_reference_clips']} held-out clips' frames; real held-out: clips of other test digits, same classes;",
        "   class Gaussian: a full-covariance Gaussian per class fitted to 10,000 training clips' pixels"
        + ("; latent: the same fitted to their latents, the model's own space, and decoded)" if lg else ")"),
    ]


def moving_mnist_card_metrics(m: Dict) -> Dict[str, object]:
    s, r, g, lg = m["samples"], m["baseline_real_heldout"], m["baseline_class_gaussian"], m.get("baseline_latent_class_gaussian")
    out = {
        "Frechet distance to held-out frames (MNIST judge features)": round(s["fd"], 3),
        "same, real held-out clips": round(r["fd"], 3),
        "same, per-class Gaussian in pixels": round(g["fd"], 3),
        "mean frame confidence": round(s["confidence"], 3),
        "clips keeping one identity": round(s["consistent"], 3),
        "frames of the requested class": round(s["class_agreement"], 3),
    }
    if lg:
        out.update({"same FD, per-class Gaussian in the model's latent space": round(lg["fd"], 3),
                    "clips keeping one identity, latent Gaussian": round(lg["consistent"], 3)})
    return out
