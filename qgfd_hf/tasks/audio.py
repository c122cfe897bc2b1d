# coding=utf-8
"""Audio: data, defaults, demo and scores (the training side; the model is
`AudioQGFDDiffusionModel`).

- data: the generated sound classes (`--dataset sounds`, the demo's: ten kinds of synthetic
  sound, made by `make_sound_dataset`, no download), a folder of wav/flac files (`--data-dir`,
  datasets' audiofolder layout: a clip's label is its sub-folder's name), or csv files of paths
  with an optional label column (`--data-files`). Every clip is decoded before training starts
  (with `soundfile`), mixed to mono, resampled to the model's rate (`scipy.signal.resample_poly`)
  and cut or zero-padded to its length;
- model: log-magnitude STFT frames (`--audio-latent spectrogram`, the default: Griffin-Lim
  decoding), waveform frames or their MDCT (`waveform`, `mdct`: exact decoding), or frozen
  Wav2Vec2 states with a learned decoder (`wav2vec2`; `--backbone` a Wav2Vec2, else a small
  random one, offline). `build_model` fits the audio scale (and per-bin statistics) from the
  training clips;
- scores (the sounds): a classifier trained on the real clips' log-mel features (its
  confidence, the classes it recognises in the samples) and the Frechet distance in those
  features, beside real clips, a Gaussian and white noise (`SoundEvaluator`);
- what a person looks at: `samples.png` (log-mel spectrograms, real beside sampled) and
  `samples_wav/` (16-bit wav files).

Why `soundfile` and not `datasets.Audio`: `datasets` >= 4 decodes (and even encodes, when an
audiofolder is loaded) audio through torchcodec, which needs FFmpeg's shared libraries; the
loaders here read the file table through `datasets` (a `Dataset` of paths, or the csv through
`load_dataset("csv")`) and decode with soundfile, whose wheels bundle libsndfile.

Shapes: `N` clips, `S` samples per clip, `M` mel bands, `T` spectrogram frames.
"""

from __future__ import annotations

import math
import os
import warnings
import wave
from fractions import Fraction
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `qgfd-hf --help` imports this file
    import torch

from .modality_qgfd import ModalityTask, TaskData, demo_class_guidance, diffusion_values, pipeline_samples, register_task, sample_output

AUDIO_EXTENSIONS = (".wav", ".flac")
PATH_COLUMNS = ("path", "file_name", "audio")  # accepted names of a csv's path column, in order
MAX_RESAMPLE_FACTOR = 1000  # largest up/down of the polyphase filter (44.1 kHz -> 16 kHz is 160/441)

# ----------------------------------------------------------------------------------------
# Generated sound classes (the demo's data)
# ----------------------------------------------------------------------------------------

SOUND_CLASSES = (
    "tone_low", "tone_high", "chirp_up", "chirp_down", "harmonic",
    "am_tone", "noise_low", "noise_high", "clicks", "dual_tone",
)


def _band_noise(rng, n: int, low: float, high: float, sampling_rate: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sampling_rate)
    spec[(freqs < low) | (freqs > high)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-12)


def synth_sound(label: int, rng: np.random.Generator, sampling_rate: int = 8000, num_samples: int = 4000) -> np.ndarray:
    """One clip `[S]` (float32, peak <= 0.9) of sound class `label` (`SOUND_CLASSES[label]`).

    Each clip varies at random: onset, duration (50-70% of the clip), peak amplitude (0.3-0.9),
    pitch (x 0.95-1.05, all frequencies of the clip together), phase; 5 ms raised-cosine fades
    and a faint noise floor (std 0.002). Frequencies are given for 8 kHz and stay below 3.6 kHz
    (sampling rates below 8 kHz alias the high classes).

    Example:
        >>> clip = synth_sound(SOUND_CLASSES.index("chirp_up"), np.random.default_rng(0))
        >>> clip.shape, clip.dtype, bool(np.abs(clip).max() <= 0.91)
        ((4000,), dtype('float32'), True)
    """
    if not 0 <= label < len(SOUND_CLASSES):
        raise ValueError(f"Sound class {label!r} is not in 0..{len(SOUND_CLASSES) - 1} ({', '.join(SOUND_CLASSES)}).")
    sr = sampling_rate
    clip_s = num_samples / sr
    dur = rng.uniform(0.5, 0.7) * clip_s
    n = max(int(round(dur * sr)), 8)
    start = int(rng.integers(0, num_samples - n + 1))
    t = np.arange(n) / sr
    jit = math.exp(rng.uniform(math.log(0.95), math.log(1.05)))
    ph = rng.uniform(0, 2 * np.pi)
    name = SOUND_CLASSES[label]
    sine = lambda f: np.sin(2 * np.pi * f * jit * t + ph)
    if name == "tone_low":
        x = sine(330)
    elif name == "tone_high":
        x = sine(1320)
    elif name in ("chirp_up", "chirp_down"):  # exponential sweep 300 Hz <-> 2.4 kHz
        f0, f1 = (300 * jit, 2400 * jit) if name == "chirp_up" else (2400 * jit, 300 * jit)
        k = math.log(f1 / f0) / dur
        x = np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k + ph)
    elif name == "harmonic":  # 220 Hz and 7 overtones, amplitude 1 / h
        x = sum(np.sin(2 * np.pi * 220 * jit * h * t + ph * h) / h for h in range(1, 9))
    elif name == "am_tone":  # 880 Hz, amplitude-modulated at 12 Hz
        x = (1 - 0.9 * (0.5 + 0.5 * np.cos(2 * np.pi * 12 * jit * t))) * sine(880)
    elif name == "noise_low":
        x = _band_noise(rng, n, 150 * jit, 700 * jit, sr)
    elif name == "noise_high":
        x = _band_noise(rng, n, 2000 * jit, 3600 * jit, sr)
    elif name == "clicks":  # a 40 Hz train of short decaying pulses
        x = np.zeros(n)
        width = max(int(0.003 * sr), 4)
        pulse = np.exp(-np.arange(width) / (width / 6)) * np.sin(2 * np.pi * np.arange(width) / (width / 4) + ph)
        period = int(round(sr / (40 * jit)))
        for s in range(int(rng.integers(0, period)), n - width, period):
            x[s : s + width] += pulse
    else:  # dual_tone: 700 Hz + 1.7 kHz
        x = sine(700) + np.sin(2 * np.pi * 1700 * jit * t + 1.3 * ph)
    fade = min(int(0.005 * sr), n // 2)
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / max(fade, 1))
    env[:fade], env[n - fade :] = ramp, ramp[::-1]
    x = x * env
    x = x / (np.abs(x).max() + 1e-12) * rng.uniform(0.3, 0.9)
    out = rng.standard_normal(num_samples) * 0.002
    out[start : start + n] += x
    return out.astype(np.float32)


def make_sound_dataset(num_per_class: int = 200, sampling_rate: int = 8000, num_samples: int = 4000, seed: int = 0):
    """A `datasets.Dataset` of generated clips, `num_per_class` of each of the 10 `SOUND_CLASSES`.

    Columns: `input_values` (float32 `[S]`) and `label` (a `ClassLabel` named by `SOUND_CLASSES`),
    classes interleaved (0, 1, ..., 9, 0, ...).

    Example:
        >>> ds = make_sound_dataset(num_per_class=2, num_samples=800)
        >>> len(ds), ds.features["label"].names[:3], len(ds[0]["input_values"])
        (20, ['tone_low', 'tone_high', 'chirp_up'], 800)
    """
    if num_per_class < 1:
        raise ValueError(f"`num_per_class` must be >= 1, got {num_per_class}.")
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(SOUND_CLASSES)), num_per_class)
    clips = np.stack([synth_sound(int(y), rng, sampling_rate, num_samples) for y in labels])
    return clips_dataset(clips, label=(labels, list(SOUND_CLASSES)))


def clips_dataset(clips: np.ndarray, label=None, **columns):
    """A `Dataset` with `input_values` (float32 `[S]` each, stored as Arrow fixed-size lists
    straight from the array: `Dataset.from_dict` would convert clip by clip), optionally a
    `ClassLabel` column `label` given as (ids, names), and plain `columns`."""
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, Sequence, Value

    clips = np.ascontiguousarray(clips, dtype=np.float32)
    arrays = {"input_values": pa.FixedSizeListArray.from_arrays(pa.array(clips.reshape(-1)), clips.shape[1])}
    features = {"input_values": Sequence(Value("float32"), length=clips.shape[1])}
    for name, values in columns.items():
        arrays[name] = pa.array(list(values))
        features[name] = Value("string")
    if label is not None:
        ids, names = label
        arrays["label"] = pa.array(np.asarray(ids, dtype=np.int64))
        features["label"] = ClassLabel(names=list(names))
    features = Features(features)
    return Dataset(pa.table(arrays, schema=features.arrow_schema), info=DatasetInfo(features=features))


# ----------------------------------------------------------------------------------------
# Files: decoding, resampling, cutting (checked before training)
# ----------------------------------------------------------------------------------------


def read_audio(path: str):
    """(waveform float32 `[S]` mono, sampling rate) of a wav/flac file; ValueError naming the
    file when it cannot be read or holds NaN / inf. Several channels are averaged to mono."""
    try:
        import soundfile
    except ImportError as e:  # a dependency of qgfd_hf (setup.py); say so rather than fail obscurely
        raise ValueError("Reading audio files needs the `soundfile` package: pip install soundfile.") from e
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)  # (S, channels)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError, ... for broken files
        raise ValueError(f"Audio file {path!r} cannot be read ({type(e).__name__}: {e}); allowed: wav or flac files.") from e
    if data.shape[0] == 0:
        raise ValueError(f"Audio file {path!r} holds no samples.")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).any(1).sum())
        raise ValueError(f"Audio file {path!r} holds {bad} NaN or inf sample(s); audio samples must be finite.")
    return data.mean(1), int(rate)


def fit_clip(wave_: np.ndarray, rate: int, sampling_rate: int, num_samples: int, path: str = "the clip") -> np.ndarray:
    """Resample a mono waveform from `rate` to `sampling_rate` (polyphase, `resample_poly`) and cut
    it (keep the start) or zero-pad it (at the end) to `num_samples`."""
    from scipy.signal import resample_poly

    if rate < 1:
        raise ValueError(f"{path}: sampling rate {rate} Hz is not a positive rate.")
    if rate != sampling_rate:
        ratio = Fraction(sampling_rate, rate)
        if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_FACTOR:
            raise ValueError(
                f"{path}: sampling rate {rate} Hz cannot be resampled to {sampling_rate} Hz with a small polyphase filter "
                f"(ratio {ratio.numerator}/{ratio.denominator}; up and down must be <= {MAX_RESAMPLE_FACTOR}). "
                "Convert the file to a common rate (8000, 16000, 22050, 44100, 48000 Hz, ...) or pass --sampling-rate."
            )
        wave_ = resample_poly(wave_.astype(np.float64), ratio.numerator, ratio.denominator)
    wave_ = np.asarray(wave_, dtype=np.float32)[:num_samples]
    if len(wave_) < num_samples:
        wave_ = np.pad(wave_, (0, num_samples - len(wave_)))
    return wave_


def _list_audio_files(data_dir: str) -> List[str]:
    out = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return sorted(out)


def _clips_dataset(paths: Sequence[str], labels: Optional[Sequence[str]], sampling_rate: int, num_samples: int, where: str):
    """Decode every file (errors name the file), resample, cut/pad: a `Dataset` with `input_values`,
    `path` and (when labelled) a `ClassLabel` column `label` (names sorted)."""
    clips = []
    for path in paths:
        data, rate = read_audio(path)
        clips.append(fit_clip(data, rate, sampling_rate, num_samples, path=f"Audio file {path!r}"))
    label = None
    if labels is not None:
        names = sorted(set(labels))
        label = ([names.index(x) for x in labels], names)
    ds = clips_dataset(np.stack(clips), label=label, path=list(paths))
    from transformers.utils import logging

    logging.get_logger(__name__).info(f"{where}: {len(ds)} clips decoded at {sampling_rate} Hz, {num_samples} samples each.")
    return ds


def load_audio_folder(data_dir: str, sampling_rate: int, num_samples: int):
    """The wav/flac files of a folder (recursively) as a `Dataset` (see `_clips_dataset`).

    datasets' audiofolder layout: when every file sits in a sub-folder, the label of a clip is
    the name of its top sub-folder (`data_dir/dog/1.wav` -> "dog"); files directly in
    `data_dir` mean no labels. Other files are refused, naming them.
    """
    if not os.path.isdir(data_dir):
        raise ValueError(f"Audio folder {data_dir!r} does not exist or is not a folder.")
    files = _list_audio_files(data_dir)
    if not files:
        raise ValueError(f"Audio folder {data_dir!r} is empty; it needs wav or flac files ({', '.join(AUDIO_EXTENSIONS)}).")
    others = [os.path.relpath(f, data_dir) for f in files if not f.lower().endswith(AUDIO_EXTENSIONS) and os.path.basename(f) != "metadata.csv"]
    if others:
        raise ValueError(
            f"Audio folder {data_dir!r} holds {len(others)} file(s) that are not audio (allowed: {', '.join(AUDIO_EXTENSIONS)}), "
            f"e.g. {others[:5]}; move them out of the folder."
        )
    audio = [f for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    if not audio:
        raise ValueError(f"Audio folder {data_dir!r} holds no wav or flac files.")
    rel = [os.path.relpath(f, data_dir) for f in audio]
    tops = [r.split(os.sep)[0] if os.sep in r else None for r in rel]
    if all(t is not None for t in tops):
        labels = tops
    elif any(t is not None for t in tops):
        loose = [r for r, t in zip(rel, tops) if t is None]
        raise ValueError(
            f"Audio folder {data_dir!r} mixes labelled files (in sub-folders) with files directly in it (e.g. {loose[:3]}): "
            "put every file in a sub-folder named by its label, or none."
        )
    else:
        labels = None
    return _clips_dataset(audio, labels, sampling_rate, num_samples, f"Audio folder {data_dir!r}")


def load_audio_csv(data_files: Sequence[str], sampling_rate: int, num_samples: int, path_column: Optional[str] = None,
                   label_column: Optional[str] = "label"):
    """Clips listed in csv files (through `datasets.load_dataset("csv")`): a path column (relative
    paths are taken from the csv's folder) and an optional label column.

    Args:
        path_column: the column of file paths (default: the first of `PATH_COLUMNS` present).
        label_column: the labels' column; used when present (an explicitly named one must be).
    """
    from datasets import load_dataset

    files = list(data_files)
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"--data-files: {f!r} does not exist or is not a file.")
        if os.path.splitext(f)[1].lower() != ".csv":
            raise ValueError(f"--data-files for audio takes csv files of paths (and labels), got {f!r}.")
    paths, labels = [], []
    have_labels = None
    for f in files:
        table = load_dataset("csv", data_files=f, split="train")
        cols = list(table.column_names)
        col = path_column or next((c for c in PATH_COLUMNS if c in cols), None)
        if col is None or col not in cols:
            wanted = repr(path_column) if path_column else " or ".join(repr(c) for c in PATH_COLUMNS)
            raise ValueError(f"{f!r} has no path column {wanted}; it has {cols}. Name it with --audio-path-column.")
        if len(table) == 0:
            raise ValueError(f"{f!r} lists no files.")
        if label_column is not None and label_column not in cols and label_column != "label":
            raise ValueError(f"{f!r} has no label column {label_column!r}; it has {cols}.")
        labelled = label_column is not None and label_column in cols
        if have_labels is not None and labelled != have_labels:
            raise ValueError(f"{f!r} {'has' if labelled else 'lacks'} the label column {label_column!r}, unlike the other csv files.")
        have_labels = labelled
        base = os.path.dirname(os.path.abspath(f))
        for i, row in enumerate(table):
            p = row[col]
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"{f!r} row {i + 2}: column {col!r} is empty or not a path ({p!r}).")
            full = p if os.path.isabs(p) else os.path.join(base, p)
            if not os.path.isfile(full):
                raise ValueError(f"{f!r} row {i + 2}: audio file {p!r} does not exist (looked for {full!r}).")
            paths.append(full)
            if labelled:
                y = row[label_column]
                if y is None or (isinstance(y, float) and math.isnan(y)) or (isinstance(y, str) and not y.strip()):
                    raise ValueError(f"{f!r} row {i + 2}: the label column {label_column!r} is empty; every row needs a label.")
                labels.append(str(y))
    return _clips_dataset(paths, labels if have_labels else None, sampling_rate, num_samples, f"csv {files!r}")


def check_clips(dataset, num_samples: int, what: str) -> np.ndarray:
    """The `input_values` of `dataset` as float32 `[N, S]`; ValueError when empty, of the wrong
    length, or holding NaN / inf (naming the row)."""
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty.")
    if "input_values" not in dataset.column_names:
        raise ValueError(f"{what} has no column 'input_values'; it has {dataset.column_names}.")
    waves = np.asarray(dataset.with_format("numpy")["input_values"], dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != num_samples:
        raise ValueError(f"{what}: clips must be {num_samples} samples each, got an array of shape {list(waves.shape)}.")
    bad = ~np.isfinite(waves).all(1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{what}: {int(bad.sum())} clip(s) hold NaN or inf samples (rows {rows}).")
    return waves


class AudioCollator:
    """Rows with `input_values` ([S] each) -> `{"input_values": [B, S]}` float32."""

    def __init__(self, num_samples: int):
        self.num_samples = num_samples

    def __call__(self, rows: List[dict]) -> Dict[str, torch.Tensor]:
        import torch

        x = torch.stack([torch.as_tensor(np.asarray(r["input_values"], dtype=np.float32)) for r in rows])
        if x.shape[1] != self.num_samples:
            raise ValueError(f"Clips of {x.shape[1]} samples; the model takes {self.num_samples}.")
        return {"input_values": x}


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
    from .evaluation_qgfd import frechet_distance

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
# What a person looks at
# ----------------------------------------------------------------------------------------


def write_wav(path: str, waveform: np.ndarray, sampling_rate: int) -> str:
    """A mono 16-bit PCM wav (the stdlib `wave` module), clipped to [-1, 1]."""
    pcm = (np.clip(np.asarray(waveform, dtype=np.float64), -1, 1) * 32767).round().astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sampling_rate))
        f.writeframes(pcm.tobytes())
    return path


def save_spectrograms(path: str, sampled: np.ndarray, sampling_rate: int, real: Optional[np.ndarray] = None,
                      real_titles: Optional[Sequence[str]] = None, sampled_titles: Optional[Sequence[str]] = None, per_row: int = 10) -> str:
    """A PNG of log-mel spectrograms: a row of real clips (when given) above rows of sampled clips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", real, real_titles)] if real is not None and len(real) else []
    n = len(sampled)
    for i in range(0, n, per_row):
        rows.append(("sampled", sampled[i : i + per_row], None if sampled_titles is None else sampled_titles[i : i + per_row]))
    lm_all = [log_mel(r[1], sampling_rate) for r in rows]
    vmax = max(float(x.max()) for x in lm_all)
    vmin = vmax - 16  # 16 natural-log units (about 70 dB) of range
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.35 * len(rows)), squeeze=False)
    duration = sampled.shape[1] / sampling_rate
    for r, ((kind, _, titles), lm) in enumerate(zip(rows, lm_all)):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(lm):
                ax.axis("off")
                continue
            ax.imshow(lm[c], origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma", extent=(0, duration, 0, lm.shape[1]))
            if titles is not None:
                ax.set_title(str(titles[c]), fontsize=6)
            if c == 0:
                ax.set_ylabel(kind, fontsize=7)
    fig.suptitle(f"log-mel spectrograms ({sampling_rate} Hz, {duration:.2f} s per clip; time across, mel bands up)", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_audio_samples(samples: np.ndarray, sampling_rate: int, output_dir: str, prefix: str = "samples", real=None,
                        real_titles=None, sampled_titles=None, max_wavs: int = 20) -> Dict[str, str]:
    """`{prefix}.png` (spectrograms, real beside sampled) and `{prefix}_wav/sample_XXX.wav`."""
    samples = np.asarray(samples, dtype=np.float32)
    os.makedirs(output_dir, exist_ok=True)
    wav_dir = os.path.join(output_dir, f"{prefix}_wav")
    os.makedirs(wav_dir, exist_ok=True)
    for i, w in enumerate(samples[:max_wavs]):
        write_wav(os.path.join(wav_dir, f"sample_{i:03d}.wav"), w, sampling_rate)
    png = save_spectrograms(os.path.join(output_dir, f"{prefix}.png"), samples[:30], sampling_rate, real=real, real_titles=real_titles,
                            sampled_titles=None if sampled_titles is None else sampled_titles[:30])
    return {"spectrograms": png, "wav files": wav_dir}


# ----------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------


def _random_wav2vec2_config(settings: dict):
    """A small random Wav2Vec2 (offline): hop 80 samples (10 ms at 8 kHz)."""
    from transformers import Wav2Vec2Config

    w = settings["wav2vec2"]
    return Wav2Vec2Config(
        hidden_size=w["hidden_size"], num_hidden_layers=w["layers"], num_attention_heads=w["heads"], intermediate_size=2 * w["hidden_size"],
        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )


@register_task
class AudioTask(ModalityTask):
    name = "audio"
    summary = "audio clips: generated sound classes, a folder of wav/flac files, or csv files of paths"
    datasets = ("sounds",)
    data_help = "audio: a folder of wav/flac files (datasets' audiofolder: sub-folder = label), or csv files with a path column"
    output_suffixes = {".png": "log-mel spectrograms, with the clips in NAME_wav/",
                       ".wav": "one clip (--num-samples 1), with its spectrogram beside it as NAME.png"}
    defaults = dict(
        # data: 8 kHz, 0.5 s clips (the demo's generated sounds; folders and csv files are resampled and cut to it)
        sampling_rate=8000, clip_seconds=0.5, num_per_class=200, num_heldout_per_class=30,
        # model: log-magnitude STFT frames (hop 80 = 10 ms, 81 bins) -> 51 tokens of width 81, decoded by
        # Griffin-Lim. The exact latents (waveform frames, MDCT) do not learn within the demo's budget;
        # see docs/modality_audio.md for the three side by side.
        latent_space="spectrogram", frame_size=80,
        d_model=128, num_heads=4, num_layers=3, d_ff=256,
        # x0 ("sample") prediction: an under-trained eps / v model leaves a broadband noise floor
        num_timesteps=1000, beta_schedule="cosine", prediction_type="sample",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=100,
        # --audio-latent wav2vec2 without --backbone: a small random Wav2Vec2 (nothing can be downloaded)
        wav2vec2=dict(hidden_size=64, layers=2, heads=4), spectral_loss_weight=1.0,
        # training
        max_steps=800, batch_size=32, learning_rate=1e-3, warmup_steps=50, ema_decay=0.995,
        checkpoint_every=0,
        # sampling
        num_samples=200, sampler="ddim", num_inference_steps=25, guidance_scale=1.0,
    )

    def add_arguments(self, group) -> None:
        group.add_argument("--sampling-rate", type=int, default=None, help="audio: the model's rate in Hz (files are resampled; default 8000)")
        group.add_argument("--clip-seconds", type=float, default=None, help="audio: clip length (files are cut or zero-padded; default 0.5)")
        group.add_argument("--audio-latent", default=None, choices=("waveform", "mdct", "spectrogram", "wav2vec2"),
                           help="audio: waveform frames or their MDCT (both decode exactly), the log-magnitude STFT (Griffin-Lim), "
                                "or Wav2Vec2 states (learned decoder)")
        group.add_argument("--frame-size", type=int, default=None, help="audio: samples per waveform token (default 80); must divide the clip")
        group.add_argument("--spectral-loss-weight", type=float, default=None,
                           help="audio, --audio-latent wav2vec2: weight of the decoder's multi-resolution STFT loss (default 1; 0 = MSE only)")
        group.add_argument("--clips-per-class", type=int, default=None, help="audio: generated training clips per sound class (default 200)")
        group.add_argument("--audio-path-column", default=None, help=f"audio csv: the column of file paths (default: {' / '.join(PATH_COLUMNS)})")
        group.add_argument("--audio-label-column", default=None, help="audio csv: the column of labels (default 'label', if present)")

    def settings(self, args, for_demo: bool = False) -> Dict[str, object]:
        s = super().settings(args, for_demo)
        for flag in ("sampling_rate", "clip_seconds", "frame_size"):
            if getattr(args, flag, None) is not None:
                s[flag] = getattr(args, flag)
        if getattr(args, "audio_latent", None) is not None:
            s["latent_space"] = args.audio_latent
        if getattr(args, "spectral_loss_weight", None) is not None:
            if s["latent_space"] != "wav2vec2":
                raise ValueError("--spectral-loss-weight trains the Wav2Vec2 latents' decoder: it needs --audio-latent wav2vec2.")
            s["spectral_loss_weight"] = args.spectral_loss_weight
        if getattr(args, "clips_per_class", None) is not None:
            if args.clips_per_class < 1:
                raise ValueError(f"--clips-per-class must be >= 1, got {args.clips_per_class}.")
            s["num_per_class"] = args.clips_per_class
        return s

    def _clip_size(self, s) -> int:
        rate, seconds = s["sampling_rate"], s["clip_seconds"]
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ValueError(f"--sampling-rate must be an int >= 1 (Hz), got {rate!r}.")
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError(f"--clip-seconds must be > 0, got {seconds!r}.")
        n = int(round(seconds * rate))
        if s["latent_space"] != "wav2vec2":
            frame = s["frame_size"]
            if frame < 1 or n % frame:
                raise ValueError(
                    f"--clip-seconds {seconds} at {rate} Hz is {n} samples, not a multiple of --frame-size {frame} "
                    f"(waveform tokens are whole frames); e.g. --clip-seconds {max(1, round(n / frame)) * frame / rate:g}."
                )
        return n

    def load_data(self, args, settings) -> TaskData:
        s = settings
        num_samples = self._clip_size(s)
        rate = s["sampling_rate"]
        data_dir, files = getattr(args, "data_dir", None), getattr(args, "data_files", None)
        if sum(x is not None for x in (getattr(args, "dataset", None), data_dir, files)) > 1:
            raise ValueError("Give one of --dataset, --data-dir (an audio folder) or --data-files (csv files of paths).")
        if getattr(args, "clips_per_class", None) is not None and (data_dir is not None or files):
            raise ValueError("--clips-per-class sizes the generated sounds; it does not apply to --data-dir / --data-files.")
        if (args.audio_path_column or args.audio_label_column) and not files:
            raise ValueError("--audio-path-column / --audio-label-column name columns of --data-files csv files.")
        if data_dir is not None:
            data = TaskData(load_audio_folder(data_dir, rate, num_samples), f"audiofolder:{os.path.abspath(data_dir)}")
        elif files:
            ds = load_audio_csv(files, rate, num_samples, path_column=args.audio_path_column, label_column=args.audio_label_column or "label")
            data = TaskData(ds, f"csv:{','.join(os.path.abspath(f) for f in files)}")
        else:
            name = getattr(args, "dataset", None) or "sounds"
            if name != "sounds":
                raise ValueError(f"Unknown audio --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-dir / --data-files).")
            if rate < 8000:
                raise ValueError(f"The generated sounds reach 3.6 kHz: they need --sampling-rate >= 8000, got {rate}.")
            per_class, heldout = s["num_per_class"], s["num_heldout_per_class"]
            full = make_sound_dataset(per_class + heldout, rate, num_samples, seed=0)
            cut = per_class * len(SOUND_CLASSES)  # classes are interleaved: the split is stratified
            data = TaskData(full.select(range(cut)), name, test=full.select(range(cut, len(full))),
                            card_name="generated sound classes (qgfd_hf.modality_audio.make_sound_dataset)")
        check_clips(data.train, num_samples, f"The audio data {data.name!r}")
        data.train = data.train.with_format("numpy", columns=["input_values"], output_all_columns=True)
        labels = data.train.features["label"].names if "label" in data.train.features else None
        data.info.update(sampling_rate=rate, num_samples=num_samples, label_names=labels)
        return data

    def build_model(self, args, data, settings):
        from transformers import Wav2Vec2FeatureExtractor

        from . import create_qgfd_diffusion_model

        s = settings
        rate, num_samples = data.info["sampling_rate"], data.info["num_samples"]
        kwargs = dict(diffusion_values(args, s), num_samples=num_samples, sampling_rate=rate, latent_space=s["latent_space"])
        backbone = args.backbone
        if s["latent_space"] != "wav2vec2":
            if backbone is not None and args.denoiser != "pretrained":
                raise ValueError("--backbone (a Wav2Vec2) makes the latents only with --audio-latent wav2vec2 (or is the denoiser with --denoiser pretrained).")
            kwargs["frame_size"] = s["frame_size"]
        else:
            if args.frame_size is not None:
                raise ValueError("--frame-size is for --audio-latent waveform, mdct or spectrogram; Wav2Vec2's convolutions set its frames.")
            backbone = backbone if backbone is not None else _random_wav2vec2_config(s)
            kwargs["spectral_loss_weight"] = s["spectral_loss_weight"]
        if args.denoiser is not None:
            kwargs["denoiser"] = args.denoiser
            if args.denoiser == "pretrained" and backbone is None:
                raise ValueError("--denoiser pretrained needs --backbone: a Wav2Vec2 (Hub id or folder) whose stack becomes the denoiser.")
        extractor = Wav2Vec2FeatureExtractor(sampling_rate=rate, do_normalize=False, return_attention_mask=False)
        model, _, _ = create_qgfd_diffusion_model("audio", backbone, None, processor=extractor, **kwargs)
        # Statistics from the training clips (saved in config.json): the audio scale, and for
        # Wav2Vec2 latents the latent scale (unit-std latents).
        import torch

        waves = torch.from_numpy(check_clips(data.train, num_samples, f"The audio data {data.name!r}"))
        model.fit_audio_scale(waves)
        if s["latent_space"] == "wav2vec2":
            model.fit_latent_scale({"input_values": waves[:256]})
        return model, extractor, AudioCollator(num_samples)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        import torch
        from transformers import AutoModel

        n = settings["num_samples"]
        waves = pipeline_samples(
            model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"],
            sampler=settings["sampler"], seed=args.seed, progress=not args.no_progress, **demo_class_guidance(model_dir, data, n, settings),
        )
        if data.test is not None:  # how well the latent space decodes held-out clips
            model = AutoModel.from_pretrained(model_dir).eval()
            real = check_clips(data.test, data.info["num_samples"], "The held-out clips")[:100]  # 10 of each class
            with torch.no_grad():
                rec = model.decode_latents(model.data_to_latents({"input_values": torch.from_numpy(real)})).numpy()
            data.info["reconstruction"] = {
                "latent_space": model.config.latent_space,
                "snr_db": snr_db(real, rec),
                "log_mel_distance": log_mel_distance(real, rec, data.info["sampling_rate"]),
            }
        return waves

    def evaluate(self, samples, data, settings):
        if data.test is None or "label" not in data.test.column_names:
            raise ValueError(f"Audio samples are scored against labelled held-out clips (the generated sounds); data {data.name!r} has none.")
        n = data.info["num_samples"]
        ev = SoundEvaluator(check_clips(data.train, n, "train"), data.train["label"], check_clips(data.test, n, "test"), data.test["label"],
                            data.info["sampling_rate"], num_classes=len(data.info["label_names"]), seed=0)
        scores = ev.evaluate(np.asarray(samples))
        scores["class_names"] = list(data.info["label_names"])
        if "reconstruction" in data.info:
            scores["reconstruction"] = data.info["reconstruction"]
        return {"metrics": scores, "targets": audio_targets_met(scores)}

    def write_samples(self, samples, data, output_dir, prefix="samples"):
        rate = data.info["sampling_rate"] if data is not None else None
        real = titles = None
        if data is not None and data.test is not None and data.info.get("label_names"):
            labels = np.asarray(data.test["label"])
            first = [int(np.flatnonzero(labels == c)[0]) for c in range(len(data.info["label_names"])) if (labels == c).any()]
            real = check_clips(data.test.select(first), data.info["num_samples"], "test")
            titles = [data.info["label_names"][int(labels[i])] for i in first]
        return write_audio_samples(samples, rate, output_dir, prefix=prefix, real=real, real_titles=titles)

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        s, r, g, n = m["samples"], m["baseline_real_train_vs_heldout"], m["baseline_gaussian"], m["baseline_noise"]
        lines = [
            f"Sample quality ({s['num_clips']} samples; classifier: MLP on log-mel features of the real clips, "
            f"{m['classifier_test_accuracy']:.1%} held-out accuracy):",
            f"  {'':34s}{'model':>10s}{'real clips':>12s}{'Gaussian':>10s}{'noise':>10s}",
            f"  {'FD, log-mel features (lower=better)':34s}{s['fd']:10.2f}{r['fd']:12.2f}{g['fd']:10.2f}{n['fd']:10.2f}",
            f"  {'classes recognised (of 10)':34s}{s['classes_recognised']:10d}{r['classes_recognised']:12d}{g['classes_recognised']:10d}{n['classes_recognised']:10d}",
            f"  {'mean classifier confidence':34s}{s['confidence']:10.3f}{r['confidence']:12.3f}{g['confidence']:10.3f}{n['confidence']:10.3f}",
            "  (real clips: training clips scored against the held-out ones; Gaussian: full-covariance Gaussian of the training "
            "waveforms; noise: white noise at their RMS)",
            "  samples per class: " + ", ".join(f"{c} {k}" for c, k in zip(m["class_names"], s["class_counts"])),
        ]
        if "reconstruction" in m:
            rec = m["reconstruction"]
            lines.append(f"  latent space {rec['latent_space']}: held-out clips decode at {rec['snr_db']:.1f} dB SNR, "
                         f"log-mel distance {rec['log_mel_distance']:.3f}")
        return lines

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        s, g, n = m["samples"], m["baseline_gaussian"], m["baseline_noise"]
        out = {
            "Frechet distance to held-out clips (log-mel features)": round(s["fd"], 2),
            "same, Gaussian baseline": round(g["fd"], 2),
            "same, white-noise baseline": round(n["fd"], 2),
            "same, real training clips": round(m["baseline_real_train_vs_heldout"]["fd"], 2),
            "sound classes recognised (of 10)": s["classes_recognised"],
            "classifier mean confidence": round(s["confidence"], 3),
        }
        if "reconstruction" in m:
            out["reconstruction SNR of held-out clips (dB)"] = round(m["reconstruction"]["snr_db"], 1)
        return out

    # -- the `sample` command ---------------------------------------------------------------

    def sample_hint(self, model_dir: str) -> str:
        return f"qgfd-hf sample {model_dir} --num-samples 20"

    def check_output(self, args) -> str:
        suffix = super().check_output(args)
        n = getattr(args, "num_samples", None) or 1
        if suffix == ".wav" and n != 1:
            stem = os.path.splitext(args.output)[0]
            raise ValueError(f"--output {args.output!r} names one .wav file, but {n} samples are asked for: pass --num-samples 1, "
                             f"or --output {stem}.png (spectrograms, with the clips in {stem}_wav/).")
        return suffix

    def sample_command(self, model, args) -> List[str]:
        from transformers import AutoConfig

        out_dir, prefix, suffix = sample_output(model, args, self)  # refused before sampling
        waves = self.sample_saved(model, args)
        rate = int(AutoConfig.from_pretrained(model).sampling_rate)
        if suffix == ".wav":  # one clip, exactly where --output says
            os.makedirs(out_dir, exist_ok=True)
            paths = {"wav file": write_wav(os.path.join(out_dir, prefix + suffix), waves[0], rate),
                     "spectrogram": save_spectrograms(os.path.join(out_dir, prefix + ".png"), waves[:1], rate)}
        else:
            paths = write_audio_samples(waves, rate, out_dir, prefix=prefix, max_wavs=len(waves))
        return [f"{len(waves)} samples at {rate} Hz:"] + [f"  {what:15s} {os.path.abspath(p)}" for what, p in paths.items()]
