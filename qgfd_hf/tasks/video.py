# coding=utf-8
"""Video: data, defaults, demo and scores (the training side; the model is
`VideoQGFDDiffusionModel`).

- data: moving digits (`--dataset moving_digits`, the demo's): each clip is one of
  scikit-learn's real 8x8 digits drifting across a 16x16 frame over 4 frames, from a random
  start at a random constant velocity, labelled with its digit (generated here, no download);
  or a folder of clips (`--data-dir`): one sub-folder of frame images per clip, or `.npy` /
  `.npz` arrays `[F, H, W]`, `[F, C, H, W]` or `[F, H, W, C]`, labelled by their parent
  folder's name or by a `metadata.csv` (`file_name,label`), read through `datasets`;
- model: pixel patches of every frame, grouped into tubelets (a token = one patch place over
  up to 4 frames, `--tubelet-frames`), the denoiser's positions factorised over tubelet, row and
  column (`position_grid`); the pixel mean / std and the latent scale are fitted from the
  training clips; `--backbone VIT` for ViT latents, `--denoiser pretrained` for ViT's stack;
- scores (moving digits): a digit classifier trained on real frames gives each frame's class
  and confidence; the share of clips whose frames agree on one class; the Frechet distance in
  the classifier's features; beside real clips and a Gaussian fitted to the real clips;
- what a person looks at: `samples.png`, a frame strip (a row per clip, its frames left to
  right; real clips on the left, samples on the right), and `samples.npy` (the clips).

Shapes: `N` clips, `F` frames, `C` channels, `S` frame side (H = W = S), `P` = S * S pixels.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np

from .modality_qgfd import ModalityTask, TaskData, demo_class_guidance, diffusion_values, pipeline_samples, register_task

CLIP_ARRAY_EXTENSIONS = (".npy", ".npz")
METADATA_FILE = "metadata.csv"  # as datasets' imagefolder: file_name (the clip, relative to the folder), label
NUM_CLASSES = 10


# ----------------------------------------------------------------------------------------
# Demo data: moving digits
# ----------------------------------------------------------------------------------------


def make_moving_digits(images: np.ndarray, labels: np.ndarray, clips_per_image: int = 1, num_frames: int = 4,
                       frame_size: int = 16, seed: int = 0) -> Dict[str, np.ndarray]:
    """Clips of digits drifting across a black frame: for every image (`[N, h, w]` in [0, 1]),
    `clips_per_image` clips, each from a random start with a random constant integer velocity
    (per clip) that keeps the digit inside the frame on every one of `num_frames` frames.

    Returns `{"pixel_values": [M, F, 1, S, S] float32, "label": [M], "start": [M, 2], "velocity": [M, 2]}`.

    Example:
        >>> clips = make_moving_digits(np.ones((2, 8, 8)), np.array([3, 5]), clips_per_image=2)
        >>> clips["pixel_values"].shape, clips["label"].tolist()
        ((4, 4, 1, 16, 16), [3, 3, 5, 5])
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"`images` must be [N, h, w], got shape {list(images.shape)}.")
    h, w = images.shape[1:]
    room = (frame_size - h, frame_size - w)  # the digit's top-left corner lies in [0, room]
    if min(room) < 0 or num_frames < 1 or clips_per_image < 1:
        raise ValueError(f"Need frame_size >= the digit's size, num_frames >= 1, clips_per_image >= 1; got "
                         f"frame_size={frame_size} for {h}x{w} digits, num_frames={num_frames}, clips_per_image={clips_per_image}.")
    rng = np.random.default_rng(seed)
    index = np.repeat(np.arange(len(images)), clips_per_image)
    M, steps = len(index), max(num_frames - 1, 1)
    start = np.stack([rng.integers(0, r + 1, size=M) for r in room], 1)  # (M, 2)
    # velocity v with 0 <= start + v * (F - 1) <= room: v in [-start // steps, (room - start) // steps]
    low = -(start // steps)
    high = (np.array(room)[None] - start) // steps
    velocity = low + (rng.random((M, 2)) * (high - low + 1)).astype(np.int64)  # uniform integers in [low, high]
    clips = np.zeros((M, num_frames, 1, frame_size, frame_size), dtype=np.float32)
    for m in range(M):
        for f in range(num_frames):
            r, c = start[m] + velocity[m] * f
            clips[m, f, 0, r : r + h, c : c + w] = images[index[m]]
    return {"pixel_values": clips, "label": np.asarray(labels)[index].astype(np.int64), "start": start, "velocity": velocity}


def load_moving_digits(num_frames: int = 4, frame_size: int = 16, train_clips_per_digit: int = 3, test_fraction: float = 0.2, seed: int = 0):
    """The demo's data: scikit-learn's 8x8 digits (intensities / 16) split into train / test
    (stratified by label, fixed seed: the image demo's split), then moving-digit clips made from
    each split's own digits, so no held-out digit is seen in training. A `DatasetDict` with
    columns `pixel_values` ([F, 1, S, S] float32 in [0, 1]) and `label` (0..9)."""
    from datasets import Array4D, Dataset, DatasetDict, Features, Value
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)
    features = Features({"pixel_values": Array4D(shape=(num_frames, 1, frame_size, frame_size), dtype="float32"), "label": Value("int64")})
    splits = {}
    for i, (name, idx, per_digit) in enumerate((("train", idx_train, train_clips_per_digit), ("test", idx_test, 1))):
        idx = np.sort(idx)
        clips = make_moving_digits(images[idx], labels[idx], per_digit, num_frames, frame_size, seed=seed + i)
        splits[name] = Dataset.from_dict({"pixel_values": clips["pixel_values"], "label": clips["label"]}, features=features)
    return DatasetDict(splits)


# ----------------------------------------------------------------------------------------
# A folder of clips
# ----------------------------------------------------------------------------------------


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def find_clips(data_dir: str) -> List[str]:
    """The clips in `data_dir` (recursively): every `.npy` / `.npz` file, and every folder that
    holds frame images. Raises if there are none, or if frame images sit loose in `data_dir`."""
    from .data_qgfd import IMAGE_EXTENSIONS

    if not os.path.isdir(data_dir):
        raise ValueError(f"Video folder {data_dir!r} does not exist or is not a folder.")
    clips, seen = [], []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = [f for f in files if not f.startswith(".")]
        seen += [os.path.join(root, f) for f in files]
        frames = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        if frames and os.path.abspath(root) == os.path.abspath(data_dir):
            raise ValueError(f"Video folder {data_dir!r}: frame images ({frames[0]}, ...) lie in the folder itself; "
                             "put each clip's frames in a sub-folder of their own (data_dir/clip_001/frame_000.png, ...).")
        if frames:
            clips.append(root)
        clips += [os.path.join(root, f) for f in files if f.lower().endswith(CLIP_ARRAY_EXTENSIONS)]
    if not seen:
        raise ValueError(f"Video folder {data_dir!r} is empty.")
    if not clips:
        others = [os.path.relpath(f, data_dir) for f in seen[:5]]
        raise ValueError(f"Video folder {data_dir!r} holds no clips (a sub-folder of frame images per clip, or "
                         f"{'/'.join(CLIP_ARRAY_EXTENSIONS)} arrays); it has e.g. {others}.")
    return sorted(clips, key=lambda p: _natural_key(os.path.relpath(p, data_dir)))


def _array_to_fchw(a: np.ndarray, where: str) -> np.ndarray:
    """A clip array [F, H, W], [F, C, H, W] or [F, H, W, C] -> float32 [F, C, H, W] in [0, 1]."""
    allowed = "[F, H, W], [F, C, H, W] or [F, H, W, C] with C in (1, 3) and square frames"
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[1] in (1, 3) and a.shape[2] == a.shape[3]:
            pass
        elif a.shape[3] in (1, 3) and a.shape[1] == a.shape[2]:
            a = a.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"{where}: an array of shape {list(a.shape)}; allowed: {allowed}.")
    else:
        raise ValueError(f"{where}: an array of shape {list(a.shape)}; allowed: {allowed}.")
    if a.shape[2] != a.shape[3]:
        raise ValueError(f"{where}: frames of {a.shape[2]}x{a.shape[3]} pixels; allowed: {allowed}.")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{where}: values of type {a.dtype}; allowed: uint8 (0..255) or floats in [0, 1].")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: {int((~np.isfinite(a)).sum())} NaN or inf value(s); allowed: finite floats in [0, 1].")
    if a.min() < 0 or a.max() > 1:
        raise ValueError(f"{where}: values in [{a.min():.4g}, {a.max():.4g}]; allowed: floats in [0, 1] (or uint8 0..255).")
    return a


def read_clip(path: str, where: Optional[str] = None) -> np.ndarray:
    """One clip as float32 [F, C, S, S] in [0, 1]: an `.npy` / `.npz` array (an `.npz` holds one
    array, or one named `frames`), or a folder of frame images (in natural name order)."""
    from PIL import Image

    from .data_qgfd import IMAGE_EXTENSIONS

    where = where or path
    if os.path.isdir(path):
        names = sorted((f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")), key=_natural_key)
        frames, mode = [], None
        for name in names:
            try:
                with Image.open(os.path.join(path, name)) as im:
                    im.load()
                    im_mode = "L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB"
                    if mode is not None and im_mode != mode:
                        raise ValueError(f"{where}/{name}: a {'grey' if im_mode == 'L' else 'colour'} frame among "
                                         f"{'grey' if mode == 'L' else 'colour'} ones; a clip's frames must share one mode.")
                    mode = im_mode
                    arr = np.asarray(im.convert(mode), dtype=np.uint8)
            except Exception as e:  # PIL raises many types for broken files
                if isinstance(e, ValueError) and str(e).startswith(where):
                    raise
                raise ValueError(f"{where}/{name}: cannot be read as an image ({type(e).__name__}: {e}).") from e
            if frames and arr.shape != frames[0].shape:
                raise ValueError(f"{where}/{name}: a frame of {arr.shape[1]}x{arr.shape[0]} pixels among frames of "
                                 f"{frames[0].shape[1]}x{frames[0].shape[0]}; a clip's frames must share one size.")
            frames.append(arr)
        return _array_to_fchw(np.stack(frames) if mode == "RGB" else np.stack(frames)[:, None], where)
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if len(keys) != 1 and "frames" not in keys:
                    raise ValueError(f"{where}: an .npz must hold one array or one named 'frames'; it holds {keys}.")
                a = z["frames" if "frames" in keys else keys[0]]
        else:
            a = np.load(path, allow_pickle=False)
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: cannot be read as a numpy array ({type(e).__name__}: {e}).") from e
    except Exception as e:
        raise ValueError(f"{where}: cannot be read as a numpy array ({type(e).__name__}: {e}).") from e
    return _array_to_fchw(np.asarray(a), where)


def _read_metadata(data_dir: str, clips: Sequence[str]) -> Optional[Dict[str, str]]:
    """{clip (relative path): label} from `data_dir/metadata.csv`, or None when there is none."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0].keys()) if rows else []
    if "file_name" not in fields or "label" not in fields:
        raise ValueError(f"{path}: needs columns file_name (the clip, relative to the folder) and label; it has {fields}.")
    table = {os.path.normpath(r["file_name"]): r["label"] for r in rows}
    rel = [os.path.normpath(os.path.relpath(c, data_dir)) for c in clips]
    missing = [r for r in rel if r not in table]
    if missing:
        raise ValueError(f"{path}: no row for clip(s) {missing[:5]}; every clip needs a label (file_name = {rel[0]!r}, ...).")
    unknown = [k for k in table if k not in rel]
    if unknown:
        raise ValueError(f"{path}: file_name(s) {unknown[:5]} are not clips in {data_dir!r} (clips are e.g. {rel[:3]}).")
    return {r: table[r] for r in rel}


def load_clip_folder(data_dir: str, num_frames: Optional[int] = None, frame_size: Optional[int] = None,
                     num_channels: Optional[int] = None):
    """A folder of clips as a `datasets.Dataset` (columns `pixel_values` [F, C, S, S] float32 in
    [0, 1], `clip`, and `label` where the clips have one), every clip read and checked first.

    Labels: `metadata.csv` (columns file_name, label) if the folder has one, else the name of
    each clip's parent folder when every clip sits in a sub-folder (data_dir/LABEL/clip...), else none.
    Every clip must have `num_frames` frames of `frame_size` pixels and `num_channels` channels
    (default: those of the first clip); the error names the first clip that does not.
    """
    from datasets import Array4D, ClassLabel, Dataset, Features, Value

    paths = find_clips(data_dir)
    arrays, first = [], None
    for path in paths:
        rel = os.path.relpath(path, data_dir)
        a = read_clip(path, where=f"Clip {rel!r} in {data_dir!r}")
        if first is None:
            first = rel
            num_frames = num_frames or a.shape[0]
            num_channels = num_channels or a.shape[1]
            frame_size = frame_size or a.shape[2]
        want = (num_frames, num_channels, frame_size, frame_size)
        if a.shape != want:
            src = "the model's" if first == rel else f"the model's (as {first!r})"
            raise ValueError(f"Clip {rel!r} in {data_dir!r} has {a.shape[0]} frame(s) of {a.shape[1]} channel(s) and "
                             f"{a.shape[2]}x{a.shape[3]} pixels; {src} clips have {num_frames} frame(s) of {num_channels} "
                             f"channel(s) and {frame_size}x{frame_size} pixels (--num-frames, --frame-side, or make the clips alike).")
        arrays.append(a)
    columns = {"pixel_values": np.stack(arrays), "clip": [os.path.relpath(p, data_dir) for p in paths]}
    features = {"pixel_values": Array4D(shape=(num_frames, num_channels, frame_size, frame_size), dtype="float32"), "clip": Value("string")}
    labels = _read_metadata(data_dir, paths)
    if labels is None:
        parents = [os.path.basename(os.path.dirname(os.path.relpath(p, data_dir))) for p in paths]
        labels = dict(zip(columns["clip"], parents)) if all(parents) else None
    if labels is not None:
        names = sorted(set(labels.values()), key=_natural_key)
        columns["label"] = [names.index(labels[c]) for c in columns["clip"]]
        features["label"] = ClassLabel(names=names)
    return Dataset.from_dict(columns, features=Features(features))


class VideoCollator:
    """Rows with `pixel_values` ([F, C, S, S] in [0, 1]) -> `{"pixel_values": [B, F, C, S, S]}`
    float32, normalised as the model expects: `(x - image_mean) / image_std` per channel."""

    def __init__(self, image_mean: Sequence[float], image_std: Sequence[float]):
        import torch

        if len(image_mean) != len(image_std) or min(image_std) <= 0:
            raise ValueError(f"`image_mean`/`image_std` need one value per channel (std > 0), got {image_mean} and {image_std}.")
        self.mean = torch.tensor(list(image_mean), dtype=torch.float32).view(1, 1, -1, 1, 1)
        self.std = torch.tensor(list(image_std), dtype=torch.float32).view(1, 1, -1, 1, 1)

    def __call__(self, rows: List[dict]):
        import torch

        x = torch.stack([torch.as_tensor(np.asarray(r["pixel_values"], dtype=np.float32)) for r in rows])  # (B, F, C, S, S)
        return {"pixel_values": (x - self.mean) / self.std}


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
        classifier's hidden features (`evaluation_qgfd.frechet_distance`).

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
        from .evaluation_qgfd import frechet_distance  # here, as in modality_audio: `qgfd-hf --help` imports this file

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


# ----------------------------------------------------------------------------------------
# What a person looks at
# ----------------------------------------------------------------------------------------


def save_frame_strip(clips: np.ndarray, path: str, real: Optional[np.ndarray] = None, rows: int = 12, cell: int = 48, pad: int = 2) -> str:
    """A PNG frame strip: each row one clip, its frames left to right (upscaled, nearest, to
    `cell` pixels); with `real`, real clips in a block on the left and `clips` on the right.
    Clips are `[N, F, C, S, S]` in [0, 1] (C = 1 or 3)."""
    from PIL import Image

    blocks = [np.asarray(b, dtype=np.float32)[:rows] for b in ([real] if real is not None else []) + [clips]]
    for b in blocks:
        if b.ndim != 5 or b.shape[2] not in (1, 3):
            raise ValueError(f"Clips must be [N, F, C, S, S] with C in (1, 3), got {list(b.shape)}.")
    F = blocks[-1].shape[1]
    n = max(len(b) for b in blocks)
    gap = 3 * cell // 4
    block_w = F * (cell + pad) + pad
    grid = Image.new("RGB", (len(blocks) * block_w + (len(blocks) - 1) * gap, n * (cell + pad) + pad), (128, 128, 128))
    for k, block in enumerate(blocks):
        x0 = k * (block_w + gap)
        for i, clip in enumerate(block):
            for f, frame in enumerate(clip):
                arr = (np.clip(frame, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)  # (S, S, C)
                tile = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB").resize((cell, cell), Image.NEAREST)
                grid.paste(tile, (x0 + pad + f * (cell + pad), pad + i * (cell + pad)))
    if len(blocks) == 2:  # a white bar between real clips and samples
        bar = Image.new("RGB", (max(gap // 4, 2), grid.size[1]), (255, 255, 255))
        grid.paste(bar, (block_w + (gap - bar.size[0]) // 2, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return path


# ----------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------


@register_task
class VideoTask(ModalityTask):
    name = "video"
    summary = "video clips: moving digits (generated from scikit-learn's digits) or a folder of clips"
    datasets = ("moving_digits",)
    data_help = ("video: a folder of clips (a sub-folder of frame images per clip, or .npy/.npz arrays [F, H, W], "
                 "[F, C, H, W] or [F, H, W, C]), labels from parent folder names or metadata.csv")
    demo_data_only = {"class_conditional": False, "motion_compensation": None}
    output_suffixes = {".png": "the frame strip, with the clips beside it as NAME.npy",
                       ".npy": "the clips [N, F, C, H, W], with the frame strip beside it as NAME.png"}
    defaults = dict(
        # model: 4x4-pixel patches of every 16x16 frame, a token = one patch place over 4 frames
        # (tubelets; None: gcd(frames, 4)) -> 16 tokens of width 64; positions factorised over
        # (tubelet, row, column); d_model 128 >= the token width (docs/modality_video.md)
        d_model=128, num_heads=4, num_layers=3, d_ff=256, patch_size=4,
        num_timesteps=1000, beta_schedule="cosine", prediction_type="v",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        tubelet_frames=None, noise_shift=1.0,
        # global motion compensation (QGFDVideoConfig.motion_compensation): the moving digits drift
        # rigidly, so centred frames make a clip one image and one trajectory; other data: none
        motion_compensation="centroid",
        # the demo's data: 3 clips per training digit (4311 clips), 1 per held-out digit (360)
        num_frames=4, frame_size=16, train_clips_per_digit=3,
        # training: 1500 steps of 64 clips, about 4 CPU minutes in all
        max_steps=1500, batch_size=64, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=500,
        # class-conditional on the digits' labels (DiT's label embedding, 10% label dropout), as the
        # image demo; other data: --class-conditional
        class_conditional=True,
        # sampling: as many clips as held-out clips, so the FDs compare like with like; a
        # class-conditional model is asked for the held-out clips' classes
        num_samples=360, sampler="ddim", num_inference_steps=50, guidance_scale=1.0,
    )

    def add_arguments(self, group) -> None:
        group.add_argument("--num-frames", type=int, default=None, help="video: frames per clip (default: the data's; moving digits 4)")
        group.add_argument("--frame-side", type=int, default=None, help="video: frame side in pixels (default: the data's; moving digits 16)")
        group.add_argument("--frame-patch-size", type=int, default=None, help="video: pixel patch side per frame (default 4, or side / 4 above 16 px)")
        group.add_argument("--tubelet-frames", type=int, default=None,
                           help="video: frames per token (tubelets: one patch place over T frames; default gcd(frames, 4); 1 = a token per frame's patch)")
        group.add_argument("--noise-shift", type=float, default=None,
                           help="video: shift of the noise schedule (latents get std 1 / shift: SNR / shift^2; default: the task's)")
        group.add_argument("--motion-compensation", default=None, choices=("none", "centroid"),
                           help="video: centroid = frames centred on their intensity centroid, the shifts in the latent (one "
                                "bright object on black that moves rigidly; default on the moving digits); none = raw frames "
                                "(default for other data)")
        group.add_argument("--frame-positions", default=None, choices=("grid", "1d"),
                           help="video: the denoiser's positions: grid (frame, row, column; default) or 1d (over the F x N tokens)")

    def load_data(self, args, settings) -> TaskData:
        if getattr(args, "data_dir", None) is not None and getattr(args, "dataset", None) is not None:
            raise ValueError("Give either --dataset or --data-dir, not both.")
        if getattr(args, "data_files", None):
            raise ValueError("--data-files is for tables and text; for video use --data-dir (a folder of clips) or --dataset moving_digits.")
        for flag in ("num_frames", "frame_side", "frame_patch_size", "tubelet_frames"):
            value = getattr(args, flag, None)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")
        if getattr(args, "data_dir", None) is not None:
            ds = load_clip_folder(args.data_dir, num_frames=args.num_frames, frame_size=args.frame_side)
            data = TaskData(ds.with_format("numpy"), f"clipfolder:{os.path.abspath(args.data_dir)}")
        else:
            name = getattr(args, "dataset", None) or "moving_digits"
            if name != "moving_digits":
                raise ValueError(f"Unknown video --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-dir for a folder of clips).")
            frames = args.num_frames or settings["num_frames"]
            size = args.frame_side or settings["frame_size"]
            if size < 8:
                raise ValueError(f"Moving digits need --frame-side >= 8 (the digits are 8x8), got {size}.")
            splits = load_moving_digits(frames, size, settings["train_clips_per_digit"], seed=0)
            data = TaskData(splits["train"].with_format("numpy"), name, test=splits["test"].with_format("numpy"),
                            card_name="moving digits: scikit-learn's 8x8 digits drifting across the frame (qgfd_hf.modality_video.load_moving_digits)")
        if len(data.train) == 0:
            raise ValueError(f"The dataset {data.name!r} is empty.")
        F, C, S, _ = data.train.features["pixel_values"].shape
        data.info.update(num_frames=F, num_channels=C, frame_size=S)
        return data

    def build_model(self, args, data, settings):
        import torch

        from . import create_qgfd_diffusion_model

        if args.denoiser == "pretrained" and args.backbone is None:
            raise ValueError("--denoiser pretrained needs --backbone: a ViT (Hub id or folder) whose layers become the denoiser.")
        F, C, S = data.info["num_frames"], data.info["num_channels"], data.info["frame_size"]
        pick = lambda flag: getattr(args, flag, None) if getattr(args, flag, None) is not None else settings[flag]
        kwargs = dict(num_frames=F, normalization_fitted=False, noise_shift=pick("noise_shift"))
        motion = pick("motion_compensation")
        motion = None if motion == "none" else motion
        if args.backbone is not None and args.denoiser != "pretrained":  # ViT latents of every frame
            if args.frame_patch_size is not None or args.tubelet_frames is not None or getattr(args, "motion_compensation", None) not in (None, "none"):
                raise ValueError("With ViT latents the tokens are the ViT's patches of single frames; drop --frame-patch-size / "
                                 "--tubelet-frames / --motion-compensation.")
            kwargs.update(latent_space="vit")
        else:
            tubelet = pick("tubelet_frames") or math.gcd(F, 4)  # None: tokens over up to 4 frames
            if F % tubelet:
                raise ValueError(f"--tubelet-frames {tubelet} must divide the clips' {F} frames.")
            kwargs.update(tubelet_frames=tubelet)
            patch = args.frame_patch_size or (settings["patch_size"] if S <= 16 else max(S // 4, 1))
            if S % patch:
                raise ValueError(f"--frame-patch-size {patch} must divide the frame side {S}.")
            kwargs.update(latent_space="pixels", image_size=S, num_channels=C, patch_size=patch, motion_compensation=motion)
        if args.frame_positions == "1d":
            kwargs["position_grid"] = None
        kwargs.update(diffusion_values(args, settings))
        if args.denoiser is not None:
            kwargs["denoiser"] = args.denoiser
        model, _, _ = create_qgfd_diffusion_model("video", args.backbone, None, **kwargs)
        cfg = model.config
        if (cfg.num_channels, cfg.image_size) != (C, S):
            raise ValueError(f"The dataset {data.name!r} has clips of {C} channel(s) and {S}x{S} pixels, but the model takes "
                             f"{cfg.num_channels} channel(s) and {cfg.image_size}x{cfg.image_size} (the ViT backbone's); "
                             "use clips of that size or pixel latents (no --backbone).")
        n = min(len(data.train), 20000)
        model.fit_normalization(torch.from_numpy(np.ascontiguousarray(data.train[:n]["pixel_values"])))
        return model, model.processor, VideoCollator(cfg.image_mean, cfg.image_std)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        n = settings["num_samples"]
        settings["model_dir"] = model_dir  # evaluate fits the Gaussian baselines in its latent space too (motion compensation)
        clips = pipeline_samples(
            model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"], sampler=settings["sampler"],
            seed=args.seed, progress=not args.no_progress, **demo_class_guidance(model_dir, data, n, settings),
        )
        return clips.transpose(0, 1, 4, 2, 3)  # the pipeline's [N, F, H, W, C] -> [N, F, C, H, W]

    def evaluate(self, samples, data, settings):
        if data.name != "moving_digits":
            raise ValueError(f"Video samples are scored on the moving digits only (got data {data.name!r}).")
        train, test = data.train[:], data.test[:]
        evaluator = MovingDigitsEvaluator(train["pixel_values"], train["label"], test["pixel_values"], test["label"], seed=0)
        codec = None
        if settings.get("model_dir") is not None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(settings["model_dir"]).eval()
            if getattr(model.config, "motion_compensation", None) is not None:  # latents are not pixels
                codec = latent_codec(model)
        scores = evaluator.evaluate(samples, requested_labels=settings.get("requested_labels"), codec=codec)
        if settings.get("requested_labels") is not None:
            scores["guidance_scale"] = settings.get("guidance_scale", 1.0)
        return {"metrics": scores, "targets": video_targets_met(scores)}

    def write_samples(self, samples, data, output_dir, prefix="samples"):
        os.makedirs(output_dir, exist_ok=True)
        real = data.test[:12]["pixel_values"] if data is not None and data.test is not None else None
        strip = save_frame_strip(samples, os.path.join(output_dir, f"{prefix}.png"), real=real)
        frames = os.path.join(output_dir, f"{prefix}.npy")
        np.save(frames, np.asarray(samples, dtype=np.float32))
        return {"frame strip": strip, "frames (npy)": frames}

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        s, r, g, cg = m["samples"], m["baseline_real_train_vs_heldout"], m["baseline_gaussian"], m.get("baseline_class_gaussian")
        lg = latent_baseline(m)
        lg_name = "latent class Gauss." if m.get("baseline_latent_class_gaussian") else "latent Gaussian"
        cols = [s, r, g] + ([cg] if cg else []) + ([lg] if lg else [])
        widths = (10, 12, 11) + ((16,) if cg else ()) + ((21,) if lg else ())
        row = lambda name, key, fmt: f"  {name:34s}" + "".join(f"{c[key]:{w}{fmt}}" for c, w in zip(cols, widths))
        lines = [
            f"Sample quality ({s['num_clips']} clips; classifier: MLP on centred training frames, "
            f"{m['classifier_test_accuracy']:.1%} test accuracy per frame):",
            f"  {'':34s}{'model':>10s}{'real clips':>12s}{'Gaussian':>11s}" + (f"{'class Gaussian':>16s}" if cg else "")
            + (f"{lg_name:>21s}" if lg else ""),
            row("Frechet distance (lower=better)", "fd", ".3f"),
            row("mean frame confidence", "confidence", ".3f"),
            row("clips keeping one class", "consistent", ".1%"),
            row("frame-to-frame shift match", "shift_match", ".3f"),
            row("classes present (of 10)", "classes_present", "d"),
        ]
        if cg:
            lines += [row("frames of the requested class", "class_agreement", ".3f"),
                      row("clips all of the requested class", "clips_on_requested_class", ".1%"),
                      f"  (class-conditional, guidance scale {m.get('guidance_scale', 1.0)}: each clip asked for a held-out clip's class; "
                      "real clips and the class Gaussian are drawn for the same classes)"]
        if lg:
            lines.append("  (latent: the same Gaussian fitted to the training clips' motion-compensated latents, the model's own space, "
                         "and decoded)")
        return lines + [
            "  (real clips: training clips scored against the held-out ones; Gaussian: a full-covariance Gaussian fitted to the training clips;",
            "   shift match: the best correlation of each frame with the previous one moved by whole pixels, 1 = a rigid drift)",
        ]

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        s, g, r = m["samples"], m["baseline_gaussian"], m["baseline_real_train_vs_heldout"]
        out = {
            "Frechet distance to held-out frames (classifier features)": round(s["fd"], 3),
            "same, Gaussian baseline": round(g["fd"], 3),
            "same, real training clips": round(r["fd"], 3),
            "mean frame confidence": round(s["confidence"], 3),
            "clips keeping one digit class": round(s["consistent"], 3),
            "clips keeping one class, Gaussian baseline": round(g["consistent"], 3),
            "frame-to-frame shift match": round(s["shift_match"], 3),
        }
        cg = m.get("baseline_class_gaussian")
        if cg:
            out.update({
                "same FD, class-conditional Gaussian baseline": round(cg["fd"], 3),
                "clips keeping one class, class-conditional Gaussian": round(cg["consistent"], 3),
                "clips all of the requested class": round(s["clips_on_requested_class"], 3),
            })
        lg = latent_baseline(m)
        if lg:
            out.update({"same FD, the Gaussian in the model's latent space": round(lg["fd"], 3),
                        "clips keeping one class, the Gaussian in the latent space": round(lg["consistent"], 3)})
        return out

    def sample_hint(self, model_dir: str) -> str:
        return f"qgfd-hf sample {model_dir} --num-samples 12"

    def sample_saved(self, model, args):
        return super().sample_saved(model, args).transpose(0, 1, 4, 2, 3)  # [N, F, H, W, C] -> [N, F, C, H, W]
