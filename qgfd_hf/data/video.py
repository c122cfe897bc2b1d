# coding=utf-8
"""Video data: the moving digits (the demo's) and folders of clips, read and checked before
training starts; and the collator.

- moving digits: each clip is one of scikit-learn's real 8x8 digits drifting across a 16x16
  frame over 4 frames, from a random start at a random constant velocity, labelled with its
  digit (generated here, no download);
- a folder of clips: one sub-folder of frame images per clip, or `.npy` / `.npz` arrays
  `[F, H, W]`, `[F, C, H, W]` or `[F, H, W, C]`, labelled by their parent folder's name or by a
  `metadata.csv` (`file_name,label`), read through `datasets`.

Shapes: `N` clips, `F` frames, `C` channels, `S` frame side (H = W = S).
"""

from __future__ import annotations

import csv
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np


CLIP_ARRAY_EXTENSIONS = (".npy", ".npz")
METADATA_FILE = "metadata.csv"  # as datasets' imagefolder: file_name (the clip, relative to the folder), label


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
    from .core import IMAGE_EXTENSIONS

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

    from .core import IMAGE_EXTENSIONS

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
