# coding=utf-8
"""The demo's sample-quality metrics on scikit-learn's 8x8 digits, with their baselines.

A small MLP classifier (scikit-learn `MLPClassifier`, fixed seed) is trained on the real
training digits. For a set of images (pixels in [0, 1], `[N, 1, 8, 8]` or `[N, 64]`):

(a) `confidence`: the classifier's mean top-class probability (do samples look like *a* digit?);
(b) `classes_present`: how many of the 10 classes are the top class of at least one image
    (does the model cover the classes?), with the per-class counts;
(c) `fd`: the Frechet distance [FID, Heusel et al. 2017, Eq. 6] between the images and the
    held-out real digits in the classifier's hidden features,
    `|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`.

Baselines, computed the same way and with the same number of images as the samples:

- `real`: real training digits (a random subset) against the held-out ones: what a perfect
  generator would score (FD > 0 only through sampling noise);
- `gaussian`: samples from a full-covariance Gaussian fitted to the training pixels (clipped
  to [0, 1]): a generator that knows pixel means and correlations but not digits. A model
  should beat its FD.

Shapes: `N` images, `P` = 64 pixels, `F` hidden features.
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

NUM_CLASSES = 10


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sets of features `[N, F]` (float64).

    Tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2) (same eigenvalues as S_a S_b), which avoids the
    complex round-off of a general matrix square root.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Features must be [N, F] with the same F, got {list(a.shape)} and {list(b.shape)}.")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Need at least 2 rows in each set, got {len(a)} and {len(b)}.")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))  # (F, F)
    w, v = np.linalg.eigh(s_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2)
    m = sqrt_a @ s_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def _flat(images) -> np.ndarray:
    x = np.asarray(images, dtype=np.float64)
    x = x.reshape(len(x), -1)
    if x.shape[1] != 64:
        raise ValueError(f"Digits are 8x8 = 64 pixels per image, got {x.shape[1]}.")
    if not np.isfinite(x).all():
        raise ValueError("Images contain NaN or inf.")
    return x


class DigitsEvaluator:
    """Classifier-based metrics for 8x8 digit images, fitted once on the real training digits.

    Args:
        train_images, train_labels: the real training digits (pixels in [0, 1]) and labels.
        test_images: the held-out real digits, the reference set of the Frechet distance.
        test_labels: their labels (for the classifier's test accuracy, reported as a sanity check).
        hidden_size (`int`, defaults to 128): the classifier's one hidden layer (the FD features).
        seed (`int`, defaults to 0): the classifier's and the baselines' seed.

    Example:
        >>> from qgfd_hf.data.core import load_digits_dataset
        >>> d = load_digits_dataset()
        >>> ev = DigitsEvaluator(d["train"]["pixel_values"], d["train"]["label"], d["test"]["pixel_values"], d["test"]["label"])
        >>> ev.classifier_accuracy > 0.9
        True
    """

    def __init__(self, train_images, train_labels, test_images, test_labels=None, hidden_size: int = 128, seed: int = 0):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.seed = seed
        self.train_x = _flat(train_images)
        self.train_y = np.asarray(train_labels)
        self.test_x = _flat(test_images)
        # 200 Adam epochs: ~98% test accuracy in a few seconds (not "converged" by sklearn's tolerance).
        self.clf = MLPClassifier(hidden_layer_sizes=(hidden_size,), alpha=1e-3, max_iter=200, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.train_x, self.train_y)
        self.classifier_accuracy = float(self.clf.score(self.test_x, np.asarray(test_labels))) if test_labels is not None else None
        self._test_feats = self.features(self.test_x)

    def features(self, images) -> np.ndarray:
        """The classifier's hidden activations `[N, F]` (ReLU of the first layer)."""
        x = _flat(images)
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0)

    def score(self, images) -> Dict[str, object]:
        """(a) confidence, (b) classes present and counts, (c) FD to the held-out digits."""
        x = _flat(images)
        probs = self.clf.predict_proba(x)  # (N, 10)
        top = probs.argmax(1)
        counts = np.bincount(top, minlength=NUM_CLASSES)
        return {
            "num_images": int(len(x)),
            "confidence": float(probs.max(1).mean()),
            "classes_present": int((counts > 0).sum()),
            "class_counts": counts.tolist(),
            "fd": frechet_distance(self.features(x), self._test_feats),
        }

    def gaussian_samples(self, n: int, seed: Optional[int] = None) -> np.ndarray:
        """`n` images from a full-covariance Gaussian fitted to the training pixels, clipped to [0, 1]."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        mu = self.train_x.mean(0)
        cov = np.cov(self.train_x, rowvar=False)
        return np.clip(rng.multivariate_normal(mu, cov, size=n, method="eigh"), 0, 1)

    def real_samples(self, n: int, seed: Optional[int] = None) -> np.ndarray:
        """`n` real training digits drawn without replacement (the real-vs-held-out baseline)."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        n = min(n, len(self.train_x))
        return self.train_x[rng.choice(len(self.train_x), size=n, replace=False)]

    def class_agreement(self, images, labels) -> float:
        """The fraction of images the classifier assigns to the class asked for (`labels` [N])."""
        labels = np.asarray(labels)
        x = _flat(images)
        if labels.shape != (len(x),):
            raise ValueError(f"Need one requested label per image: {len(x)} images, labels of shape {list(labels.shape)}.")
        return float((self.clf.predict(x) == labels).mean())

    def evaluate(self, samples, requested_labels=None) -> Dict[str, object]:
        """The samples' metrics beside the real and Gaussian baselines (same number of images);
        with `requested_labels` (class-conditional samples), the samples' `class_agreement`."""
        n = len(_flat(samples))
        scores = self.score(samples)
        if requested_labels is not None:
            scores["class_agreement"] = self.class_agreement(samples, requested_labels)
        return {
            "samples": scores,
            "baseline_real_train_vs_heldout": self.score(self.real_samples(n)),
            "baseline_gaussian": self.score(self.gaussian_samples(n)),
            "classifier_test_accuracy": self.classifier_accuracy,
            "num_heldout": int(len(self.test_x)),
        }


def image_targets_met(result: Dict[str, object], min_confidence: float = 0.85) -> Dict[str, bool]:
    """The demo's targets: FD below the Gaussian baseline's, confidence >= 0.85, all 10 classes."""
    s, g = result["samples"], result["baseline_gaussian"]
    return {
        "fd_below_gaussian": s["fd"] < g["fd"],
        "confidence_at_least_0.85": s["confidence"] >= min_confidence,
        "all_10_classes": s["classes_present"] == NUM_CLASSES,
    }


def exact_match(predictions, references) -> float:
    """Fraction of predictions equal to their reference after whitespace normalisation."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise ValueError("No references to score.")
    norm = lambda s: " ".join(str(s).split())
    return sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / len(references)
