# coding=utf-8
"""Audio data: the generated sound classes (the demo's), folders of wav/flac files and csv files of
paths, every clip decoded (with `soundfile`), mixed to mono, resampled to the model's rate and cut
or zero-padded to its length before training starts; and the collator.

Why `soundfile` and not `datasets.Audio`: `datasets` >= 4 decodes (and even encodes, when an
audiofolder is loaded) audio through torchcodec, which needs FFmpeg's shared libraries; the
loaders here read the file table through `datasets` (a `Dataset` of paths, or the csv through
`load_dataset("csv")`) and decode with soundfile, whose wheels bundle libsndfile.

Shapes: `N` clips, `S` samples per clip.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: `qgfd-hf --help` imports this file
    import torch


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
