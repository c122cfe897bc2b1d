# coding=utf-8
"""Moving MNIST scores: the MNIST judge (`metrics.mnist.MnistJudge`, a CNN trained on MNIST's
training digits) reads every frame, after a 28x28 window is cut around the frame's centre of mass
(clamped to the frame).

For a set of clips (`[N, F, S, S]` or `[N, F, 1, S, S]` in [0, 1]) and the class each asked for:

- `confidence`: the judge's mean top-class probability over all frames;
- `consistent`: identity kept across frames, the share of clips whose frames all get the same top class;
- `fd`: the Frechet distance between the frames' and held-out clips' frames' judge features;
- `class_agreement`: the share of frames of the requested class (`clips_on_requested_class`: clips
  whose every frame is);
- `shift_match`: `metrics.video.frame_shift_match` (1 = a rigid drift).

Baselines (`MovingMnistEvaluator.evaluate`), as many clips as the samples, for the same classes:
real held-out clips (from test digits other than those of the FD's reference clips); a
full-covariance Gaussian per class fitted to training clips' pixels; and, given the model's
`codec`, the same per-class Gaussians fitted in the model's latent space and decoded.

Shapes: `N` clips, `F` frames, `S` frame side, `D` = F * S * S pixels.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from .video import _clips, _requested, frame_shift_match

WINDOW = 28  # the judge's input side (MNIST's)


def crop_around_mass(frames, window: int = WINDOW) -> np.ndarray:
    """Frames `[M, S, S]` (S >= window) -> `[M, window, window]`: the window whose centre is the
    frame's intensity centre of mass (rounded), shifted to lie inside the frame; black frames
    give the central window."""
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] < window:
        raise ValueError(f"Frames must be [M, S, S] with S >= {window}, got {list(x.shape)}.")
    M, S = x.shape[:2]
    if S == window:
        return x
    grid = np.arange(S, dtype=np.float64)
    mass = x.sum((1, 2), dtype=np.float64)
    safe = np.where(mass > 0, mass, 1.0)
    centre = (S - 1) / 2
    com_r = np.where(mass > 0, (x.sum(2) * grid).sum(1) / safe, centre)
    com_c = np.where(mass > 0, (x.sum(1) * grid).sum(1) / safe, centre)
    top = np.clip(np.floor(com_r - (window - 1) / 2 + 0.5).astype(np.int64), 0, S - window)
    left = np.clip(np.floor(com_c - (window - 1) / 2 + 0.5).astype(np.int64), 0, S - window)
    rows = top[:, None] + np.arange(window)
    cols = left[:, None] + np.arange(window)
    return x[np.arange(M)[:, None, None], rows[:, :, None], cols[:, None, :]]


def class_gaussian_samples(flat: np.ndarray, labels: np.ndarray, requested: np.ndarray, rng) -> np.ndarray:
    """Samples of one full-covariance Gaussian per class (mean and sample covariance of the rows
    `flat` [n, D] of that class), one per entry of `requested`, drawn without forming the D x D
    covariance: mean + X_c^T z / sqrt(n_k - 1), z ~ N(0, I), X_c the class's centred rows (the
    same distribution, exactly)."""
    out = np.zeros((len(requested), flat.shape[1]))
    for k in np.unique(requested):
        rows, where = np.asarray(flat[labels == k], dtype=np.float64), requested == k
        if len(rows) < 2:
            raise ValueError(f"Class {int(k)} has {len(rows)} training clip(s); a class Gaussian needs at least 2.")
        centred = rows - rows.mean(0)
        z = rng.standard_normal((int(where.sum()), len(rows)))
        out[where] = rows.mean(0) + z @ centred / np.sqrt(len(rows) - 1)
    return out


class MovingMnistEvaluator:
    """Scores of Moving MNIST clips by an MNIST judge, fitted once.

    Args:
        judge: an object with `probabilities(images)` -> [M, 10] and `features(images)` -> [M, K]
            of images [M, 1, 28, 28] in [0, 1] (`metrics.mnist.MnistJudge`).
        train_clips, train_labels: training clips (the pixel Gaussians' and latent Gaussians' data).
        reference_clips: held-out clips, the FD's reference.
        real_clips, real_labels: other held-out clips (other test digits): the real baseline.
    """

    def __init__(self, judge, train_clips, train_labels, reference_clips, real_clips, real_labels, seed: int = 0, batch_size: int = 2048):
        self.judge, self.seed, self.batch_size = judge, seed, batch_size
        self.train_clips = _clips(train_clips, "training clips").astype(np.float32)
        self.train_labels = _requested(np.asarray(train_labels), len(self.train_clips))
        self.real_clips = _clips(real_clips, "held-out clips").astype(np.float32)
        self.real_labels = _requested(np.asarray(real_labels), len(self.real_clips))
        reference = _clips(reference_clips, "held-out reference clips")
        if reference.shape[1:] != self.train_clips.shape[1:] or self.real_clips.shape[1:] != self.train_clips.shape[1:]:
            raise ValueError(f"Clip shapes differ: training {list(self.train_clips.shape[1:])}, reference "
                             f"{list(reference.shape[1:])}, held-out {list(self.real_clips.shape[1:])}.")
        self._ref_feats = self._judge(reference)[1]
        self.judge_test_accuracy = getattr(judge, "test_accuracy", None)

    def _judge(self, clips):
        """(probabilities [N, F, 10], features [N * F, K]) of every frame's window."""
        x = _clips(clips)
        if x.shape[1:] != self.train_clips.shape[1:]:
            raise ValueError(f"Clips of shape {list(x.shape[1:])}; the evaluator's are {list(self.train_clips.shape[1:])}.")
        N, F, S = x.shape[:3]
        windows = crop_around_mass(np.clip(x, 0, 1).reshape(N * F, S, S))[:, None]  # (N*F, 1, 28, 28)
        probs, feats = [], []
        for i in range(0, len(windows), self.batch_size):
            b = windows[i : i + self.batch_size]
            probs.append(np.asarray(self.judge.probabilities(b)))
            feats.append(np.asarray(self.judge.features(b)))
        return np.concatenate(probs).reshape(N, F, -1), np.concatenate(feats)

    def score(self, clips, requested_labels=None) -> Dict[str, object]:
        from .core import frechet_distance

        x = _clips(clips)
        N = len(x)
        probs, feats = self._judge(x)
        top = probs.argmax(-1)  # (N, F)
        clip_class = np.array([np.bincount(row, minlength=probs.shape[-1]).argmax() for row in top])
        out = {
            "num_clips": int(N),
            "confidence": float(probs.max(-1).mean()),
            "consistent": float((top == top[:, :1]).all(1).mean()),
            "classes_present": int((np.bincount(clip_class, minlength=10) > 0).sum()),
            "fd": float(frechet_distance(feats, self._ref_feats)),
            "shift_match": float(frame_shift_match(x).mean()) if x.shape[1] > 1 else 1.0,
        }
        if requested_labels is not None:
            labels = _requested(requested_labels, N)
            out["class_agreement"] = float((top == labels[:, None]).mean())
            out["clips_on_requested_class"] = float((top == labels[:, None]).all(1).mean())
        return out

    def real_samples(self, labels) -> np.ndarray:
        """Held-out clips for the classes `labels` [n] (each class's clips in turn, without
        replacement while they last)."""
        rng = np.random.default_rng(self.seed)
        labels, out = np.asarray(labels), np.zeros((len(labels),) + self.real_clips.shape[1:], dtype=np.float32)
        for k in np.unique(labels):
            pool, where = np.flatnonzero(self.real_labels == k), np.flatnonzero(labels == k)
            if len(pool) == 0:
                raise ValueError(f"Class {int(k)} has no held-out clips.")
            out[where] = self.real_clips[rng.choice(pool, size=len(where), replace=len(where) > len(pool))]
        return out

    def gaussian_samples(self, labels, codec=None) -> np.ndarray:
        """Clips from a full-covariance Gaussian per class (`class_gaussian_samples`), fitted to
        the training clips' pixels (clipped to [0, 1]), or with `codec` (`(encode, decode)`, the
        model's latent space: `metrics.video.latent_codec`) to their latents, and decoded."""
        rng = np.random.default_rng(self.seed)
        labels = np.asarray(labels)
        if codec is not None:
            flat = np.asarray(codec[0](self.train_clips[:, :, None]), dtype=np.float64)
            return _clips(codec[1](class_gaussian_samples(flat, self.train_labels, labels, rng)))
        flat = self.train_clips.reshape(len(self.train_clips), -1)
        return np.clip(class_gaussian_samples(flat, self.train_labels, labels, rng), 0, 1).reshape(len(labels), *self.train_clips.shape[1:])

    def evaluate(self, samples, requested_labels, codec=None) -> Dict[str, object]:
        """The samples' scores beside real held-out clips and the class Gaussians (in pixels, and
        with `codec` in the model's latent space), all for the classes `requested_labels`."""
        n = len(_clips(samples))
        labels = _requested(np.asarray(requested_labels), n)
        out = {
            "samples": self.score(samples, labels),
            "baseline_real_heldout": self.score(self.real_samples(labels), labels),
            "baseline_class_gaussian": self.score(self.gaussian_samples(labels), labels),
            "judge_test_accuracy": self.judge_test_accuracy,
            "num_reference_clips": int(len(self._ref_feats) // self.train_clips.shape[1]),
        }
        if codec is not None:
            out["baseline_latent_class_gaussian"] = self.score(self.gaussian_samples(labels, codec=codec), labels)
        return out


def moving_mnist_targets_met(result: Dict[str, object]) -> Dict[str, bool]:
    """Issue 23's targets: beat the per-class Gaussian in the model's latent space on FD and on
    consistency (identity kept across frames); and the pixel class Gaussian on FD."""
    s, g = result["samples"], result["baseline_class_gaussian"]
    out = {"fd_below_class_gaussian": s["fd"] < g["fd"]}
    lg = result.get("baseline_latent_class_gaussian")
    if lg:
        out.update({"fd_below_latent_class_gaussian": s["fd"] < lg["fd"], "consistent_above_latent_class_gaussian": s["consistent"] > lg["consistent"]})
    return out


__all__ = ["MovingMnistEvaluator", "class_gaussian_samples", "crop_around_mass", "moving_mnist_targets_met"]
