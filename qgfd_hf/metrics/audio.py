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


# ----------------------------------------------------------------------------------------
# Spoken digits: scored as SC09 generators are (a digit classifier judges the samples)
# ----------------------------------------------------------------------------------------


def speech_features(waves, sampling_rate: int, n_mels: int = 32, segments: int = 16) -> np.ndarray:
    """Features `[N, M * segments + 2 M]` of spoken clips: the log-mel spectrogram (32 bands, 32 ms
    window) pooled to `segments` equal time segments, and per band the mean and std over time."""
    lm = log_mel(waves, sampling_rate, n_mels=n_mels)  # (N, M, T)
    N, M, T = lm.shape
    seg = T // segments
    grid = lm[:, :, : seg * segments].reshape(N, M, segments, seg).mean(3).reshape(N, -1)
    return np.concatenate([grid, lm.mean(2), lm.std(2)], 1)


class SpokenDigitEvaluator:
    """A digit classifier (the judge) trained on real clips of the held-out voices only, so that it
    is independent of the voices the generator was trained on; it scores sets of clips against the
    digits they were asked to be, as SC09 generators are scored [Donahue et al. 2019; Kong et al.
    2021, DiffWave]:

    (a) `recognised`: the share of clips whose top class is the requested digit;
    (b) `confidence`: the judge's mean top-class probability, and `p_requested`, its mean
        probability of the requested digit;
    (c) `fd`: the Frechet distance, in the judge's hidden layer (128 ReLU units, its features),
        between the clips and the reference clips (the held-out voices' second renderings);
    (d) `class_counts`: how many clips the judge puts in each class.

    The judge is a scikit-learn `MLPClassifier` (one hidden layer, fixed seed) on standardised
    `speech_features`.
    """

    def __init__(self, judge_waves, judge_labels, reference_waves, reference_labels, sampling_rate: int, num_classes: int = 10,
                 seed: int = 0):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler

        self.sampling_rate, self.num_classes = sampling_rate, int(num_classes)
        feats = speech_features(np.asarray(judge_waves, dtype=np.float64), sampling_rate)
        self.scaler = StandardScaler().fit(feats)
        self.clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=400, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.scaler.transform(feats), np.asarray(judge_labels))
        self.num_judge = len(feats)
        ref = self._inputs(reference_waves)
        self.reference_accuracy = float(self.clf.score(ref, np.asarray(reference_labels)))
        self._reference = self._hidden(ref)
        self.num_reference = len(ref)

    def _inputs(self, waves) -> np.ndarray:
        w = np.asarray(waves, dtype=np.float64)
        if not np.isfinite(w).all():
            raise ValueError("Waveforms contain NaN or inf.")
        return self.scaler.transform(speech_features(w, self.sampling_rate))

    def _hidden(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.clf.coefs_[0] + self.clf.intercepts_[0], 0)

    def score(self, waves, requested) -> Dict[str, object]:
        x = self._inputs(waves)
        requested = np.asarray(requested, dtype=np.int64)
        if requested.shape != (len(x),):
            raise ValueError(f"{len(x)} clips need {len(x)} requested labels, got shape {list(requested.shape)}.")
        probs = self.clf.predict_proba(x)  # (N, classes)
        top = probs.argmax(1)
        return {
            "num_clips": int(len(x)),
            "recognised": float((top == requested).mean()),
            "confidence": float(probs.max(1).mean()),
            "p_requested": float(probs[np.arange(len(x)), requested].mean()),
            "class_counts": np.bincount(top, minlength=self.num_classes).tolist(),
            "fd": _fd(self._hidden(x), self._reference),
        }

    def evaluate(self, samples, requested, baselines: Dict[str, tuple]) -> Dict[str, object]:
        """Scores of `samples` (asked to be `requested`) and of each baseline `{name: (clips, labels)}`."""
        out = {"samples": self.score(samples, requested)}
        for name, (waves, labels) in baselines.items():
            out[f"baseline_{name}"] = self.score(waves, labels)
        out.update(judge_reference_accuracy=self.reference_accuracy, num_judge=self.num_judge, num_reference=self.num_reference)
        return out


def latent_gaussian_samples(latents, labels, requested, seed: int = 0) -> np.ndarray:
    """A per-class Gaussian in a model's latent space: for each requested class c, a draw of
    N(mean_c, covariance_c) of that class's training latents `[N, ...]` (full covariance of rank
    n_c - 1, drawn without forming it: x = mean + (X - mean)^T z / sqrt(n_c - 1), z ~ N(0, I))."""
    lat = np.asarray(latents, dtype=np.float64)
    labels, requested = np.asarray(labels), np.asarray(requested)
    flat = lat.reshape(len(lat), -1)
    rng = np.random.default_rng(seed)
    out = np.empty((len(requested), flat.shape[1]), dtype=np.float64)
    for c in np.unique(requested):
        x = flat[labels == c]
        if len(x) < 2:
            raise ValueError(f"Class {int(c)} has {len(x)} training latent(s); a Gaussian needs at least 2.")
        mu = x.mean(0)
        where = np.flatnonzero(requested == c)
        z = rng.standard_normal((len(where), len(x))) / math.sqrt(len(x) - 1)
        out[where] = mu + z @ (x - mu)
    return out.reshape((len(requested),) + lat.shape[1:]).astype(np.float32)


def speech_targets_met(result: Dict[str, object], min_recognised: float = 0.8) -> Dict[str, bool]:
    """The spoken-digit demo's targets: at least 80% of the samples recognised as the requested
    digit, and an FD below the per-class latent Gaussian's."""
    s, g = result["samples"], result["baseline_latent_gaussian"]
    return {
        f"recognised_at_least_{round(100 * min_recognised)}pct": s["recognised"] >= min_recognised,
        "fd_below_latent_gaussian": s["fd"] < g["fd"],
    }
