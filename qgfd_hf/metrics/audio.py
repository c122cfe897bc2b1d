# coding=utf-8
"""Audio scores: log-mel features, SNR and log-mel distance, and `SoundEvaluator` (a classifier
trained on the real clips' log-mel features, its confidence and the classes it recognises in the
samples, the Frechet distance in those features), beside real clips, a Gaussian and white noise.

Shapes: `N` clips, `S` samples per clip, `M` mel bands, `T` spectrogram frames.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional

import numpy as np


# ----------------------------------------------------------------------------------------
# Log-mel features, the metrics and their baselines
# ----------------------------------------------------------------------------------------


def mel_filterbank(sampling_rate: int, n_fft: int, n_mels: int, fmin: float = 50.0, fmax: Optional[float] = None) -> np.ndarray:
    """Triangular mel filters `[M, n_fft / 2 + 1]` (HTK mel scale)."""
    fmax = fmax or sampling_rate / 2
    hz_to_mel = lambda f: 2595 * np.log10(1 + f / 700)
    mel_to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / sampling_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)


def log_mel(waves, sampling_rate: int, n_fft: Optional[int] = None, n_mels: int = 32) -> np.ndarray:
    """Log-mel spectrograms `[N, M, T]` of waveforms `[N, S]` (Hann window of 32 ms, hop 1/4)."""
    w = np.asarray(waves, dtype=np.float64)
    n_fft = n_fft or 2 ** int(round(math.log2(0.032 * sampling_rate)))
    hop = n_fft // 4
    if w.ndim != 2 or w.shape[1] < n_fft:
        raise ValueError(f"Waveforms must be [N, S] with S >= {n_fft}, got shape {list(w.shape)}.")
    count = (w.shape[1] - n_fft) // hop + 1
    idx = np.arange(n_fft)[None] + hop * np.arange(count)[:, None]  # (T, n_fft)
    power = np.abs(np.fft.rfft(w[:, idx] * np.hanning(n_fft), axis=-1)) ** 2  # (N, T, n_fft / 2 + 1)
    return np.log(power @ mel_filterbank(sampling_rate, n_fft, n_mels).T + 1e-6).transpose(0, 2, 1)  # (N, M, T)


def log_mel_features(waves, sampling_rate: int) -> np.ndarray:
    """Features `[N, 192]` of waveforms: per mel band the mean and std over time (64), and the
    log-mel pooled to a 16 band x 8 time-segment grid (128; it tells a rising chirp from a falling one)."""
    lm = log_mel(waves, sampling_rate)  # (N, 32, T)
    N, M, T = lm.shape
    seg = T // 8
    grid = lm[:, :, : seg * 8].reshape(N, M // 2, 2, 8, seg).mean((2, 4)).reshape(N, -1)  # (N, 16 * 8)
    return np.concatenate([lm.mean(2), lm.std(2), grid], 1)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio 10 log10(sum ref^2 / sum (ref - est)^2) over all clips, in dB."""
    ref, est = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    err = float(((ref - est) ** 2).sum())
    return float("inf") if err == 0 else float(10 * np.log10(float((ref**2).sum()) / err))


def log_mel_distance(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int) -> float:
    """Mean absolute difference of the log-mel spectrograms (natural log units)."""
    return float(np.abs(log_mel(reference, sampling_rate) - log_mel(estimate, sampling_rate)).mean())


class SoundEvaluator:
    """Classifier-based scores of waveforms, fitted once on real labelled clips.

    A scikit-learn `MLPClassifier` (one hidden layer, fixed seed) on standardised
    `log_mel_features` of the real training clips. For a set of waveforms:

    (a) `confidence`: the classifier's mean top-class probability;
    (b) `classes_recognised`: classes that are the confident top class (p >= 0.8) of at least
        1% of the clips (and at least one), with the per-class counts of the top class;
    (c) `fd`: the Frechet distance between the clips' standardised log-mel features and the
        held-out real clips' [FID, Heusel et al. 2017, Eq. 6].

    Baselines, same number of clips: `real` (training clips against the held-out ones: what a
    perfect generator scores), `gaussian` (a full-covariance Gaussian of the training waveforms:
    their mean, autocorrelation and spectrum, but no sounds), `noise` (white noise at the
    training clips' RMS).
    """

    def __init__(self, train_waves, train_labels, test_waves, test_labels, sampling_rate: int, num_classes: Optional[int] = None,
                 seed: int = 0):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler

        self.sampling_rate, self.seed = sampling_rate, seed
        self.train_x = np.asarray(train_waves, dtype=np.float32)
        self.train_y = np.asarray(train_labels)
        self.num_classes = int(num_classes or self.train_y.max() + 1)
        feats = log_mel_features(self.train_x, sampling_rate)
        self.scaler = StandardScaler().fit(feats)
        self.clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=300, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.scaler.transform(feats), self.train_y)
        self._test_feats = self.features(test_waves)
        self.classifier_accuracy = float(self.clf.score(self._test_feats, np.asarray(test_labels)))
        self.num_test = len(self._test_feats)

    def features(self, waves) -> np.ndarray:
        w = np.asarray(waves, dtype=np.float64)
        if not np.isfinite(w).all():
            raise ValueError("Waveforms contain NaN or inf.")
        return self.scaler.transform(log_mel_features(w, self.sampling_rate))

    def score(self, waves) -> Dict[str, object]:
        feats = self.features(waves)
        probs = self.clf.predict_proba(feats)  # (N, classes)
        top, conf = probs.argmax(1), probs.max(1)
        counts = np.bincount(top, minlength=self.num_classes)
        confident = np.bincount(top[conf >= 0.8], minlength=self.num_classes)
        need = max(1, int(math.ceil(0.01 * len(feats))))
        return {
            "num_clips": int(len(feats)),
            "confidence": float(conf.mean()),
            "classes_recognised": int((confident >= need).sum()),
            "class_counts": counts.tolist(),
            "fd": _fd(feats, self._test_feats),
        }

    def real_samples(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return self.train_x[rng.choice(len(self.train_x), size=min(n, len(self.train_x)), replace=False)]

    def gaussian_samples(self, n: int) -> np.ndarray:
        """Draws of N(mean, empirical covariance) of the training waveforms, without forming the
        S x S covariance: x = mean + (X - mean)^T z / sqrt(N - 1), z ~ N(0, I_N)."""
        rng = np.random.default_rng(self.seed)
        x = self.train_x.astype(np.float64)
        mu = x.mean(0)
        z = rng.standard_normal((n, len(x))) / math.sqrt(len(x) - 1)
        return (mu + z @ (x - mu)).astype(np.float32)

    def noise_samples(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        rms = float(np.sqrt((self.train_x.astype(np.float64) ** 2).mean()))
        return (rng.standard_normal((n, self.train_x.shape[1])) * rms).astype(np.float32)

    def evaluate(self, samples) -> Dict[str, object]:
        n = len(samples)
        return {
            "samples": self.score(samples),
            "baseline_real_train_vs_heldout": self.score(self.real_samples(n)),
            "baseline_gaussian": self.score(self.gaussian_samples(n)),
            "baseline_noise": self.score(self.noise_samples(n)),
            "classifier_test_accuracy": self.classifier_accuracy,
            "num_heldout": self.num_test,
        }


def _fd(a, b) -> float:
    from .core import frechet_distance

    return frechet_distance(a, b)


def audio_targets_met(result: Dict[str, object], min_classes: int = 8) -> Dict[str, bool]:
    """The demo's targets: FD below the Gaussian's and the noise's, more classes recognised than
    either of them, and at least `min_classes` of 10 recognised."""
    s, g, n = result["samples"], result["baseline_gaussian"], result["baseline_noise"]
    return {
        "fd_below_gaussian_and_noise": s["fd"] < min(g["fd"], n["fd"]),
        "more_classes_than_gaussian_and_noise": s["classes_recognised"] > max(g["classes_recognised"], n["classes_recognised"]),
        f"at_least_{min_classes}_of_10_classes": s["classes_recognised"] >= min_classes,
    }
