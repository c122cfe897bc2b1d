# coding=utf-8
"""Video scores (moving digits): a digit classifier trained on real frames gives each frame's class
and confidence; the share of clips whose frames agree on one class; the Frechet distance in the
classifier's features; beside real clips and a Gaussian fitted to the real clips
(`MovingDigitsEvaluator`); and the frame-shift match of a clip's motion.

Shapes: `N` clips, `F` frames, `C` channels, `S` frame side (H = W = S), `P` = S * S pixels.
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import numpy as np


NUM_CLASSES = 10  # the digits


# ----------------------------------------------------------------------------------------
# Scores: a digit classifier on real frames
# ----------------------------------------------------------------------------------------


def _clips(x, what: str = "clips") -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 5:
        if x.shape[2] != 1:
            raise ValueError(f"{what}: digit clips are grey [N, F, 1, S, S], got {list(x.shape)}.")
        x = x[:, :, 0]
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{what} must be [N, F, S, S] or [N, F, 1, S, S], got {list(x.shape)}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf.")
    return x


def centre_frames(frames: np.ndarray) -> np.ndarray:
    """Frames [M, S, S] shifted (whole pixels, zeros shifted in) so that each one's centre of
    mass sits at the middle: the classifier then sees a digit's shape, wherever it drifted."""
    M, S = frames.shape[0], frames.shape[-1]
    grid = np.arange(S, dtype=np.float64)
    mass = frames.sum((1, 2))  # (M,)
    safe = np.where(mass > 0, mass, 1.0)
    com_r = np.where(mass > 0, (frames.sum(2) * grid).sum(1) / safe, (S - 1) / 2)
    com_c = np.where(mass > 0, (frames.sum(1) * grid).sum(1) / safe, (S - 1) / 2)
    dr = np.clip(np.round((S - 1) / 2 - com_r).astype(np.int64), -S, S)
    dc = np.clip(np.round((S - 1) / 2 - com_c).astype(np.int64), -S, S)
    padded = np.pad(frames, ((0, 0), (S, S), (S, S)))  # (M, 3S, 3S)
    rows = (S - dr)[:, None] + np.arange(S)  # (M, S)
    cols = (S - dc)[:, None] + np.arange(S)
    return padded[np.arange(M)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (M, S, S)


class MovingDigitsEvaluator:
    """Classifier-based scores of moving-digit clips, fitted once on the real training clips.

    A small MLP (scikit-learn, fixed seed) learns the digit of single frames from the training
    clips' frames, each centred on its centre of mass first (`centre_frames`: the MLP is not
    translation-invariant, the digits drift). For a set of clips (pixels in [0, 1], `[N, F, S, S]` or `[N, F, 1, S, S]`):

    (a) `confidence`: the classifier's mean top-class probability over all frames;
    (b) `consistent`: the share of clips whose F frames all get the same top class (does a
        clip keep its digit while it moves?); `classes_present`: top classes of at least one clip
        (a clip's class: the most frequent of its frames');
    (c) `fd`: the Frechet distance between the frames and the held-out clips' frames in the
        classifier's hidden features (`metrics.core.frechet_distance`).

    Baselines (`evaluate`), with as many clips as the samples: `real`, training clips against the
    held-out ones; `gaussian`, a full-covariance Gaussian fitted to the training clips' F * P
    pixels (clipped to [0, 1]).

    Example:
        >>> d = load_moving_digits(train_clips_per_digit=1)
        >>> ev = MovingDigitsEvaluator(d["train"]["pixel_values"], d["train"]["label"], d["test"]["pixel_values"],
        ...                            d["test"]["label"], max_train_frames=2000)
        >>> ev.classifier_accuracy > 0.8
        True
    """

    def __init__(self, train_clips, train_labels, test_clips, test_labels=None, hidden_size: int = 128,
                 max_train_frames: int = 4000, seed: int = 0):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.seed = seed
        self.train_clips = _clips(train_clips, "training clips")
        self.test_clips = _clips(test_clips, "held-out clips")
        self.train_labels = np.asarray(train_labels)
        N, F, S = self.train_clips.shape[:3]
        frames = centre_frames(self.train_clips.reshape(N * F, S, S)).reshape(N * F, S * S)  # (N*F, P)
        frame_labels = np.repeat(np.asarray(train_labels), F)
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(frames), size=min(max_train_frames, len(frames)), replace=False)
        self.clf = MLPClassifier(hidden_layer_sizes=(hidden_size,), alpha=1e-3, max_iter=100, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(frames[keep], frame_labels[keep])
        self.classifier_accuracy = None
        if test_labels is not None:
            t = self.test_clips
            self.classifier_accuracy = float(self.clf.score(self._frames(t), np.repeat(np.asarray(test_labels), t.shape[1])))
        self._test_feats = self.features(self.test_clips)

    def _frames(self, clips) -> np.ndarray:
        x = _clips(clips)
        if x.shape[1:] != self.train_clips.shape[1:]:
            raise ValueError(f"Clips of shape {list(x.shape[1:])}; the evaluator's are {list(self.train_clips.shape[1:])}.")
        S = x.shape[-1]
        return centre_frames(x.reshape(-1, S, S)).reshape(-1, S * S)  # (N*F, P), centred

    def features(self, clips) -> np.ndarray:
        """The classifier's hidden activations of every frame `[N * F, hidden]` (ReLU of the first layer)."""
        return np.maximum(self._frames(clips) @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0)

    def score(self, clips, requested_labels=None) -> Dict[str, object]:
        """(a) confidence, (b) clips whose frames agree, classes present, (c) FD to the held-out
        frames, (d) `shift_match` (`frame_shift_match`); with `requested_labels` [N] (one class per
        clip), `class_agreement` (frames of the class asked for) and `clips_on_requested_class`."""
        from .core import frechet_distance  # here, as in metrics/audio.py: `qgfd-hf --help` imports this file

        x = _clips(clips)
        N, F = x.shape[:2]
        probs = self.clf.predict_proba(self._frames(x)).reshape(N, F, -1)  # (N, F, 10)
        top = probs.argmax(-1)  # (N, F)
        clip_class = np.array([np.bincount(row, minlength=NUM_CLASSES).argmax() for row in top])
        counts = np.bincount(clip_class, minlength=NUM_CLASSES)
        out = {
            "num_clips": int(N),
            "confidence": float(probs.max(-1).mean()),
            "consistent": float((top == top[:, :1]).all(1).mean()),
            "classes_present": int((counts > 0).sum()),
            "class_counts": counts.tolist(),
            "fd": frechet_distance(self.features(x), self._test_feats),
            "shift_match": float(frame_shift_match(x).mean()),
        }
        if requested_labels is not None:
            labels = _requested(requested_labels, N)
            out["class_agreement"] = float((top == labels[:, None]).mean())
            out["clips_on_requested_class"] = float((top == labels[:, None]).all(1).mean())
        return out

    def gaussian_samples(self, n: int, seed: Optional[int] = None, labels=None, codec=None) -> np.ndarray:
        """`n` clips from a full-covariance Gaussian fitted to the training clips' pixels, clipped
        to [0, 1]; with `labels` [n], clip i from the Gaussian of class `labels[i]`'s clips. With
        `codec` (`(encode, decode)`: clips [N, F, 1, S, S] in [0, 1] <-> flat latents [N, D], a
        model's latent space), the Gaussian is fitted to the training clips' latents and its
        samples decoded."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        if codec is not None:
            flat = np.asarray(codec[0](self.train_clips[:, :, None]), dtype=np.float64)  # (N, D)
        else:
            flat = self.train_clips.reshape(len(self.train_clips), -1)  # (N, F*P)
        if labels is None:
            x = rng.multivariate_normal(flat.mean(0), np.cov(flat, rowvar=False), size=n, method="eigh")
        else:
            labels, x = _requested(labels, n), np.zeros((n, flat.shape[1]))
            for k in np.unique(labels):
                rows, where = flat[self.train_labels == k], labels == k
                if len(rows) < 2:
                    raise ValueError(f"Class {int(k)} has {len(rows)} training clip(s); a class Gaussian needs at least 2.")
                x[where] = rng.multivariate_normal(rows.mean(0), np.cov(rows, rowvar=False), size=int(where.sum()), method="eigh")
        if codec is not None:
            return _clips(codec[1](x))
        return np.clip(x, 0, 1).reshape(n, *self.train_clips.shape[1:])

    def real_samples(self, n: int, seed: Optional[int] = None, labels=None) -> np.ndarray:
        """`n` real training clips drawn without replacement (the real-vs-held-out baseline); with
        `labels` [n], clip i drawn from class `labels[i]`'s clips."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        if labels is None:
            return self.train_clips[rng.choice(len(self.train_clips), size=min(n, len(self.train_clips)), replace=False)]
        labels, out = _requested(labels, n), np.zeros((n,) + self.train_clips.shape[1:])
        for k in np.unique(labels):
            pool, where = np.flatnonzero(self.train_labels == k), np.flatnonzero(labels == k)
            if len(pool) == 0:
                raise ValueError(f"Class {int(k)} has no training clips.")
            out[where] = self.train_clips[rng.choice(pool, size=len(where), replace=len(where) > len(pool))]
        return out

    def evaluate(self, samples, requested_labels=None, codec=None) -> Dict[str, object]:
        """The samples' scores beside the real and Gaussian baselines (same number of clips).
        With `requested_labels` (a class-conditional model's samples), the real clips are drawn
        from the classes asked for, and `baseline_class_gaussian` (a Gaussian per class) is added.
        With `codec` (the model's latent space, see `gaussian_samples`), the same Gaussians fitted
        in that space: `baseline_latent_gaussian` (and `baseline_latent_class_gaussian`)."""
        n = len(_clips(samples))
        out = {
            "samples": self.score(samples, requested_labels),
            "baseline_real_train_vs_heldout": self.score(self.real_samples(n, labels=requested_labels), requested_labels),
            "baseline_gaussian": self.score(self.gaussian_samples(n), requested_labels),
            "classifier_test_accuracy": self.classifier_accuracy,
            "num_heldout": int(len(self.test_clips)),
        }
        if requested_labels is not None:
            out["baseline_class_gaussian"] = self.score(self.gaussian_samples(n, labels=requested_labels), requested_labels)
        if codec is not None:
            out["baseline_latent_gaussian"] = self.score(self.gaussian_samples(n, codec=codec), requested_labels)
            if requested_labels is not None:
                out["baseline_latent_class_gaussian"] = self.score(self.gaussian_samples(n, labels=requested_labels, codec=codec),
                                                                   requested_labels)
        return out


def latent_codec(model, batch_size: int = 512):
    """`(encode, decode)` of a video model's latent space for `MovingDigitsEvaluator`: clips
    [N, F, C, S, S] in [0, 1] <-> flat latents [N, L * latent_dim] (numpy), through the model's
    normalisation, `video_to_latents` and `decode_latents`."""
    import torch

    cfg = model.config
    mean = torch.tensor(cfg.image_mean).view(1, 1, -1, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 1, -1, 1, 1)
    shape = model.latent_shape(1)[1:]  # (L, latent_dim)

    @torch.no_grad()
    def encode(clips):
        x = torch.from_numpy(np.ascontiguousarray(clips, dtype=np.float32))
        return torch.cat([model.video_to_latents(((b - mean) / std).to(model.device, model.dtype)).float().cpu().flatten(1)
                          for b in x.split(batch_size)]).numpy()

    @torch.no_grad()
    def decode(flat):
        z = torch.from_numpy(np.asarray(flat, dtype=np.float32)).reshape(-1, *shape)
        return torch.cat([model.decode_latents(b.to(model.device, model.dtype)).float().cpu() for b in z.split(batch_size)]).numpy()

    return encode, decode


def _requested(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"Need one class label in 0..{NUM_CLASSES - 1} per clip: {n} clips, labels {labels.tolist()[:8]}... of shape {list(labels.shape)}.")
    return labels


def frame_shift_match(clips, max_shift: int = 3) -> np.ndarray:
    """How well each frame is the previous one moved: for every pair of consecutive frames, the
    largest correlation (Pearson, over the pixels) between frame f + 1 and frame f shifted by
    whole pixels (up to `max_shift` each way, zeros shifted in). `[N, F - 1]` in [-1, 1]; 1.0 for
    a rigid drift inside the frame (the moving digits), lower for blobs that change shape or
    jump; 0 where a frame is constant.

    Example:
        >>> clip = np.zeros((1, 2, 8, 8)); clip[0, 0, 1:4, 1:4] = 1; clip[0, 1, 2:5, 3:6] = 1
        >>> frame_shift_match(clip).round(3).tolist()
        [[1.0]]
    """
    x = _clips(clips)
    N, F, S = x.shape[:3]
    if F < 2:
        raise ValueError(f"frame_shift_match needs clips of at least 2 frames, got {F}.")
    prev, nxt = x[:, :-1], x[:, 1:]  # (N, F-1, S, S)
    padded = np.pad(prev, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    nxt = nxt - nxt.mean((-1, -2), keepdims=True)
    norm_next = np.sqrt((nxt**2).sum((-1, -2)))  # (N, F-1)
    best = np.full((N, F - 1), -1.0)
    for dr in range(-max_shift, max_shift + 1):
        for dc in range(-max_shift, max_shift + 1):
            moved = padded[:, :, max_shift - dr : max_shift - dr + S, max_shift - dc : max_shift - dc + S]  # prev moved by (dr, dc)
            moved = moved - moved.mean((-1, -2), keepdims=True)
            denom = np.sqrt((moved**2).sum((-1, -2))) * norm_next
            corr = np.where(denom > 0, (moved * nxt).sum((-1, -2)) / np.where(denom > 0, denom, 1.0), 0.0)
            best = np.maximum(best, corr)
    return best


def latent_baseline(result: Dict[str, object]) -> Optional[Dict[str, object]]:
    """The scores of the Gaussian fitted in the model's latent space (`evaluate(codec=...)`): per
    class where the samples asked for classes, else the pooled one; None when not scored."""
    return result.get("baseline_latent_class_gaussian") or result.get("baseline_latent_gaussian")


def video_targets_met(result: Dict[str, object], min_consistent: float = 0.8) -> Dict[str, bool]:
    """The demo's targets: beat the Gaussian on FD, confidence and consistency (for a
    class-conditional model, the class-conditional Gaussian: the stronger baseline); >= 80%
    consistent clips; where the scores have it, beat the same Gaussian fitted in the model's
    latent space (motion-compensated latents are not pixels)."""
    s = result["samples"]
    g = result.get("baseline_class_gaussian") or result["baseline_gaussian"]
    out = {
        "fd_below_gaussian": s["fd"] < g["fd"],
        "confidence_above_gaussian": s["confidence"] > g["confidence"],
        "consistent_above_gaussian": s["consistent"] > g["consistent"],
        f"consistent_at_least_{min_consistent}": s["consistent"] >= min_consistent,
    }
    lg = latent_baseline(result)
    if lg:  # a latent space other than pixels: the same Gaussian there is the fair baseline too
        out.update({"fd_below_latent_gaussian": s["fd"] < lg["fd"], "confidence_above_latent_gaussian": s["confidence"] > lg["confidence"],
                    "consistent_above_latent_gaussian": s["consistent"] > lg["consistent"]})
    return out
