# coding=utf-8
"""The PNGs a person looks at: image grids, and clips as frame strips, labelled by class or not.
Used by the image and video tasks (a module whose name starts with `_` is not a modality)."""

from __future__ import annotations

import math
import os
from typing import List, Optional

import numpy as np


def _tile(image: np.ndarray, cell: int):
    """One image `[C, H, W]` in [0, 1] (C = 1 or 3) as an RGB PIL tile of `cell` x `cell` pixels (nearest)."""
    from PIL import Image

    arr = (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB").resize((cell, cell), Image.NEAREST)


def _save(grid, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return path


def save_image_grid(images: np.ndarray, path: str, nrow: Optional[int] = None, cell: int = 32, pad: int = 2) -> str:
    """A PNG grid of images `[N, C, H, W]` in [0, 1], each upscaled (nearest) to `cell` pixels."""
    from PIL import Image

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Images must be [N, C, H, W] with C in (1, 3), got {list(images.shape)}.")
    n = len(images)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol_rows = int(math.ceil(n / nrow))
    grid = Image.new("RGB", (nrow * (cell + pad) + pad, ncol_rows * (cell + pad) + pad), (128, 128, 128))
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid.paste(_tile(img, cell), (pad + c * (cell + pad), pad + r * (cell + pad)))
    return _save(grid, path)


def save_labelled_grid(images: np.ndarray, labels, path: str, per_class: int = 10, cell: int = 40, pad: int = 2,
                       names: Optional[List[str]] = None) -> str:
    """A PNG with one row per requested class (sorted), each row labelled on the left and holding up to
    `per_class` of that class's images `[N, C, H, W]` in [0, 1] (`labels` [N]: the class asked for):
    `save_class_strip` with one-frame clips."""
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or labels.shape != (len(images),):
        raise ValueError(f"Need images [N, C, H, W] with C in (1, 3) and one label each, got {list(images.shape)} and {list(labels.shape)}.")
    return save_class_strip(images[:, None], labels, path, per_class=per_class, cell=cell, pad=pad, class_names=names)


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
                grid.paste(_tile(frame, cell), (x0 + pad + f * (cell + pad), pad + i * (cell + pad)))
    if len(blocks) == 2:  # a white bar between real clips and samples
        bar = Image.new("RGB", (max(gap // 4, 2), grid.size[1]), (255, 255, 255))
        grid.paste(bar, (block_w + (gap - bar.size[0]) // 2, 0))
    return _save(grid, path)


def save_class_strip(clips: np.ndarray, labels, path: str, real: Optional[np.ndarray] = None, real_labels=None,
                     per_class: int = 2, cell: int = 40, pad: int = 2, class_names=None) -> str:
    """A PNG of a class-conditional model's clips: one row per requested class (sorted), labelled
    on the left ("class 3", or `class_names[3]`); in the row, a real clip of that class (when
    `real` / `real_labels` have one) left of a white bar, then the first `per_class` sampled
    clips that asked for it, each its frames left to right. Clips are `[N, F, C, S, S]` in [0, 1]."""
    from PIL import Image, ImageDraw

    clips = np.asarray(clips, dtype=np.float32)
    labels = np.asarray(labels)
    if clips.ndim != 5 or clips.shape[2] not in (1, 3) or labels.shape != (len(clips),):
        raise ValueError(f"Need clips [N, F, C, S, S] (C in 1, 3) and one label per clip; got {list(clips.shape)} and {list(labels.shape)} labels.")
    has_real = real is not None and real_labels is not None
    real_labels = np.asarray(real_labels) if has_real else None
    F = clips.shape[1]
    clip_w = F * (cell + pad) + pad
    classes = sorted(set(labels.tolist()))
    names = {k: str(class_names[k]) if class_names is not None else f"class {k}" for k in classes}
    label_w, gap = max(64, 6 * max(len(n) for n in names.values()) + 12), cell // 2
    width = label_w + (clip_w + gap if has_real else 0) + per_class * clip_w + (per_class - 1) * pad
    grid = Image.new("RGB", (width, len(classes) * (cell + pad) + pad), (128, 128, 128))
    draw = ImageDraw.Draw(grid)

    def paste(clip, x0, y0):
        for f, frame in enumerate(clip):
            grid.paste(_tile(frame, cell), (x0 + pad + f * (cell + pad), y0))

    for row, k in enumerate(classes):
        y0 = pad + row * (cell + pad)
        draw.text((4, y0 + cell // 2 - 6), names[k], fill=(255, 255, 255))
        x0 = label_w
        if has_real:
            match = np.flatnonzero(real_labels == k)
            if len(match):
                paste(np.asarray(real[match[0]], dtype=np.float32), x0, y0)
            x0 += clip_w + gap
        for i, j in enumerate(np.flatnonzero(labels == k)[:per_class]):
            paste(clips[j], x0 + i * (clip_w + pad), y0)
    if has_real:
        bar_x = label_w + clip_w + gap // 2 - 1
        draw.rectangle([bar_x, 0, bar_x + 2, grid.size[1]], fill=(255, 255, 255))
    return _save(grid, path)


__all__ = ["save_class_strip", "save_frame_strip", "save_image_grid", "save_labelled_grid"]
