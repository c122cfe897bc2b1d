"""Tests of the video modality (`qgfd_hf/tasks/video.py`, `data/video.py`, `metrics/video.py`): the clip-folder loader and its
errors, the moving-digits data, the scores against their baselines, the denoiser's factorised
space-time positions, the fitted normalisation, and tiny end-to-end runs of `train`, `sample` and
`demo` through `qgfd_hf.cli.main`."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from qgfd_hf import QGFDImageConfig, QGFDVideoConfig, VideoQGFDDiffusionModel
from qgfd_hf.cli import main
from qgfd_hf.metrics.video import MovingDigitsEvaluator, centre_frames, frame_shift_match, video_targets_met
from qgfd_hf.data.video import load_clip_folder, load_moving_digits, make_moving_digits
from qgfd_hf.tasks.video import save_frame_strip
from qgfd_hf.modeling_qgfd import QGFDDiffusionBackbone
from qgfd_hf.modeling_qgfd_embeddings import sinusoidal_embedding

TINY = ["--preset", "tiny", "--batch-size", "4", "--no-progress", "--checkpoint-every", "0", "--warmup-steps", "0"]
SMALL = dict(d_model=32, num_heads=4, num_layers=2, d_ff=64)


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _clip(rng, frames=3, size=8):
    return (rng.random((frames, size, size)) * 0.8).astype(np.float32)


def _write_frames(folder, clip):
    folder.mkdir(parents=True)
    for f, frame in enumerate(clip):
        Image.fromarray((frame * 255).round().astype(np.uint8)).save(folder / f"frame_{f:03d}.png")


def _clip_folder(root, n_per_label=3, frames=3, size=8):
    """root/LABEL/... with frame folders, .npy [F, H, W] and .npz [F, H, W, 1] clips."""
    rng = np.random.default_rng(0)
    for label in ("circle", "square"):
        for i in range(n_per_label):
            clip = _clip(rng, frames, size)
            if i % 3 == 0:
                _write_frames(root / label / f"clip{i}", clip)
            elif i % 3 == 1:
                (root / label).mkdir(parents=True, exist_ok=True)
                np.save(root / label / f"clip{i}.npy", clip)
            else:
                np.savez(root / label / f"clip{i}.npz", frames=(clip[..., None] * 255).round().astype(np.uint8))
    return root


# -- the loader: what it reads, and what it refuses before training ---------------------------------


def test_clip_folder_reads_frame_folders_and_arrays_with_labels(tmp_path):
    ds = load_clip_folder(str(_clip_folder(tmp_path / "clips")))
    assert len(ds) == 6 and ds.features["label"].names == ["circle", "square"]
    x = ds.with_format("numpy")[:]["pixel_values"]
    assert x.shape == (6, 3, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert ds["label"] == [0, 0, 0, 1, 1, 1]
    # the PNG frames and the uint8 .npz come back at 1/255 precision, the .npy exactly
    npy = np.load(tmp_path / "clips" / "circle" / "clip1.npy")
    assert np.array_equal(x[1, :, 0], npy)
    # metadata.csv labels instead of folder names; clips at the top level have no label otherwise
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        np.save(flat / f"c{i}.npy", _clip(np.random.default_rng(i)))
    assert "label" not in load_clip_folder(str(flat)).column_names
    (flat / "metadata.csv").write_text("file_name,label\nc0.npy,left\nc1.npy,right\n")
    ds = load_clip_folder(str(flat))
    assert ds.features["label"].names == ["left", "right"] and ds["label"] == [0, 1]


def _refused(argv, capsys, tmp_path, pattern):
    out_dir = tmp_path / "out"
    code, _, err = _run(argv + ["--output-dir", str(out_dir)], capsys)
    assert code == 2, err
    assert err.startswith("qgfd-hf train: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert not out_dir.exists()  # refused before training started


def _bad_folder(tmp_path, case):
    d = tmp_path / case
    d.mkdir()
    rng = np.random.default_rng(0)
    good = _clip(rng)
    if case == "empty":
        return d, r"Video folder .*empty' is empty"
    if case == "no_clips":
        (d / "notes.txt").write_text("hello")
        return d, r"holds no clips .*notes\.txt"
    if case == "loose_frames":
        Image.new("L", (8, 8)).save(d / "frame0.png")
        return d, r"frame images \(frame0\.png, \.\.\.\) lie in the folder itself"
    np.save(d / "a.npy", good)
    if case == "unreadable_frame":
        _write_frames(d / "b", good)
        (d / "b" / "frame_001.png").write_bytes(b"not a png")
        return d, r"Clip 'b' .*frame_001\.png: cannot be read as an image"
    if case == "frame_count":
        np.save(d / "b.npy", _clip(rng, frames=5))
        return d, r"Clip 'b\.npy' .*has 5 frame\(s\) .*clips have 3 frame\(s\)"
    if case == "frame_size":
        np.save(d / "b.npy", _clip(rng, size=10))
        return d, r"Clip 'b\.npy' .*10x10 pixels; .*8x8 pixels"
    if case == "nan":
        bad = good.copy()
        bad[1, 2, 3] = np.nan
        np.save(d / "b.npy", bad)
        return d, r"Clip 'b\.npy' .*1 NaN or inf value\(s\); allowed: finite floats in \[0, 1\]"
    if case == "range":
        np.save(d / "b.npy", good * 255)
        return d, r"Clip 'b\.npy' .*values in \[[\d.]+, 2\d\d(\.\d+)?\]; allowed: floats in \[0, 1\] \(or uint8 0\.\.255\)"
    if case == "dtype":
        np.save(d / "b.npy", (good * 100).astype(np.int64))
        return d, r"Clip 'b\.npy' .*values of type int64; allowed: uint8"
    if case == "shape":
        np.save(d / "b.npy", good[0])
        return d, r"Clip 'b\.npy' .*an array of shape \[8, 8\]; allowed: \[F, H, W\], \[F, C, H, W\] or \[F, H, W, C\]"
    if case == "not_numpy":
        (d / "b.npy").write_bytes(b"garbage")
        return d, r"Clip 'b\.npy' .*cannot be read as a numpy array"
    if case == "metadata":
        (d / "metadata.csv").write_text("file_name,label\nzzz.npy,x\n")
        return d, r"metadata\.csv: no row for clip\(s\) \['a\.npy'\]"
    raise ValueError(case)


BAD = ["empty", "no_clips", "loose_frames", "unreadable_frame", "frame_count", "frame_size", "nan", "range", "dtype", "shape",
       "not_numpy", "metadata"]


@pytest.mark.parametrize("case", BAD)
def test_bad_clip_folders_are_refused_naming_the_file(tmp_path, capsys, case):
    d, pattern = _bad_folder(tmp_path, case)
    _refused(["train", "--modality", "video", "--data-dir", str(d)], capsys, tmp_path, pattern)


def test_flags_must_fit_the_clips(tmp_path, capsys):
    d = _clip_folder(tmp_path / "clips")
    _refused(["train", "--modality", "video", "--data-dir", str(d), "--num-frames", "4"], capsys, tmp_path, r"has 3 frame\(s\).*clips have 4")
    _refused(["train", "--modality", "video", "--data-dir", str(d), "--frame-patch-size", "3"], capsys, tmp_path,
             r"--frame-patch-size 3 must divide the frame side 8")
    _refused(["train", "--modality", "video", "--data-dir", str(d), "--tubelet-frames", "2"], capsys, tmp_path,
             r"--tubelet-frames 2 must divide the clips' 3 frames")
    _refused(["train", "--modality", "video", "--data-dir", str(d), "--image-size", "8"], capsys, tmp_path,
             "--image-size is a image flag; it does not apply to --modality video")
    _refused(["train", "--modality", "video", "--dataset", "moving_digits", "--data-dir", str(d)], capsys, tmp_path, "either --dataset or --data-dir")


# -- the demo's data and scores -----------------------------------------------------------------


def test_moving_digits_drift_at_constant_velocity_inside_the_frame():
    digits = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32) + 0.01  # every pixel lit: the box is exact
    out = make_moving_digits(digits, np.arange(20) % 10, clips_per_image=2, num_frames=4, frame_size=16, seed=1)
    clips, start, vel = out["pixel_values"], out["start"], out["velocity"]
    assert clips.shape == (40, 4, 1, 16, 16) and out["label"].tolist() == list(np.repeat(np.arange(20) % 10, 2))
    assert len({tuple(v) for v in vel}) > 5  # random velocities, per clip
    for m in range(40):
        for f in range(4):
            r, c = start[m] + vel[m] * f
            assert 0 <= r <= 8 and 0 <= c <= 8
            assert np.array_equal(clips[m, f, 0, r : r + 8, c : c + 8], digits[m // 2])
            assert clips[m, f].sum() == pytest.approx(digits[m // 2].sum(), rel=1e-5)  # nothing else in the frame


def test_centring_undoes_the_drift():
    digit = np.zeros((16, 16))
    digit[2:6, 3:5] = 1
    moved = np.roll(digit, (7, 6), axis=(0, 1))
    a, b = centre_frames(np.stack([digit, moved]))
    assert np.array_equal(a, b) and a.sum() == digit.sum()


@pytest.fixture(scope="module")
def evaluator_and_data():
    d = load_moving_digits(num_frames=2, frame_size=12, train_clips_per_digit=1)
    assert len(d["train"]) + len(d["test"]) == 1797 and d["train"].features["pixel_values"].shape == (2, 1, 12, 12)
    train, test = d["train"].with_format("numpy")[:], d["test"].with_format("numpy")[:]
    ev = MovingDigitsEvaluator(train["pixel_values"], train["label"], test["pixel_values"], test["label"], max_train_frames=800)
    return ev, train, test


def test_scores_real_clips_well_and_noise_badly(evaluator_and_data):
    ev, train, test = evaluator_and_data
    assert ev.classifier_accuracy > 0.9
    result = ev.evaluate(test["pixel_values"][:200])
    real, gauss = result["baseline_real_train_vs_heldout"], result["baseline_gaussian"]
    assert real["consistent"] > 0.9 and real["confidence"] > 0.9 and real["classes_present"] == 10
    assert real["fd"] < 0.5 * gauss["fd"] and gauss["consistent"] < 0.5
    noise = ev.score(np.random.default_rng(0).random((200, 2, 1, 12, 12)))
    assert noise["fd"] > 3 * real["fd"] and noise["consistent"] < real["consistent"] - 0.3
    # a clip whose second frame shows another digit is inconsistent
    x = test["pixel_values"][:200].copy()
    other = np.roll(np.arange(200), 1)
    labels = test["label"][:200]
    keep = labels[other] != labels
    x[:, 1] = x[other, 1]
    assert ev.score(x[keep])["consistent"] < 0.3


def test_shift_match_is_one_for_a_rigid_drift_and_low_for_jumps():
    d = load_moving_digits(num_frames=3, frame_size=12, train_clips_per_digit=1)
    x = d["train"].with_format("numpy")[:100]["pixel_values"]
    assert np.allclose(frame_shift_match(x), 1.0)
    assert frame_shift_match(np.random.default_rng(0).random(x.shape)).mean() < 0.3
    jumped = x.copy()
    jumped[:, 2] = x[np.roll(np.arange(100), 1), 2]  # another clip's frame: a new shape, often a jump
    assert frame_shift_match(jumped)[:, 1].mean() < 0.8 and np.allclose(frame_shift_match(jumped)[:, 0], 1.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_shift_match(x[:, :1])


def test_class_conditional_scores_and_class_gaussian(evaluator_and_data):
    ev, train, test = evaluator_and_data
    labels = test["label"][:200]
    result = ev.evaluate(test["pixel_values"][:200], requested_labels=labels)
    s, real, cg = result["samples"], result["baseline_real_train_vs_heldout"], result["baseline_class_gaussian"]
    assert s["class_agreement"] > 0.9 and s["clips_on_requested_class"] > 0.85
    assert real["class_agreement"] > 0.9  # drawn from the classes asked for
    # the class Gaussian's clips come from the right classes' pixel statistics: more of them agree with the class
    # asked for than the pooled Gaussian's (chance: 0.1)
    assert cg["class_agreement"] > result["baseline_gaussian"]["class_agreement"]
    # the wrong labels: agreement collapses
    wrong = ev.score(test["pixel_values"][:200], requested_labels=(labels + 1) % 10)
    assert wrong["class_agreement"] < 0.1
    with pytest.raises(ValueError, match="one class label in 0..9 per clip"):
        ev.score(test["pixel_values"][:10], requested_labels=[1, 2])
    with pytest.raises(ValueError, match="one class label in 0..9 per clip"):
        ev.gaussian_samples(2, labels=[3, 10])
    targets = video_targets_met(result)
    assert set(targets) == {"fd_below_gaussian", "confidence_above_gaussian", "consistent_above_gaussian", "consistent_at_least_0.8"}
    assert targets["fd_below_gaussian"] and targets["consistent_at_least_0.8"]  # real clips pass


def test_gaussian_baselines_in_a_latent_space(evaluator_and_data):
    ev, train, test = evaluator_and_data
    S = train["pixel_values"].shape[-1]
    identity = (lambda clips: np.asarray(clips).reshape(len(clips), -1), lambda flat: np.clip(flat, 0, 1).reshape(-1, 2, 1, S, S))
    labels = test["label"][:50]
    # the pixels as the "latent space": the same Gaussians, draw for draw
    assert np.allclose(ev.gaussian_samples(50, seed=3, codec=identity), ev.gaussian_samples(50, seed=3))
    assert np.allclose(ev.gaussian_samples(50, seed=3, labels=labels, codec=identity), ev.gaussian_samples(50, seed=3, labels=labels))
    result = ev.evaluate(test["pixel_values"][:50], requested_labels=labels, codec=identity)
    assert result["baseline_latent_class_gaussian"] == result["baseline_class_gaussian"]
    assert result["baseline_latent_gaussian"] == result["baseline_gaussian"]
    targets = video_targets_met(result)
    assert {"fd_below_latent_gaussian", "confidence_above_latent_gaussian", "consistent_above_latent_gaussian"} <= set(targets)
    assert targets["fd_below_latent_gaussian"] and targets["consistent_above_latent_gaussian"]  # real clips beat it
    # a model's motion-compensated latent space: encode / decode round-trips the clips
    from qgfd_hf.metrics.video import latent_codec

    cfg = QGFDVideoConfig(num_frames=2, tubelet_frames=2, motion_compensation="centroid", latent_space="pixels", image_size=S,
                          patch_size=4, num_channels=1, normalization_fitted=False, **SMALL)
    model = VideoQGFDDiffusionModel(cfg).eval()
    model.fit_normalization(torch.from_numpy(train["pixel_values"][:200]))
    encode, decode = latent_codec(model, batch_size=64)
    flat = encode(test["pixel_values"][:100])
    assert flat.shape == (100, cfg.num_latent_tokens() * cfg.latent_dim)
    assert np.allclose(decode(flat), test["pixel_values"][:100], atol=1e-5)


def test_frame_strip_puts_real_clips_beside_samples(tmp_path):
    clips = np.random.default_rng(0).random((5, 3, 1, 8, 8))
    path = save_frame_strip(clips, str(tmp_path / "s.png"), real=clips[:4], cell=10, pad=2)
    with Image.open(path) as im:
        w, h = im.size
    block = 3 * 12 + 2
    assert h == 5 * 12 + 2 and w == 2 * block + 7  # two blocks of 3 frames and the gap (3/4 of a cell) between them
    assert Image.open(save_frame_strip(clips, str(tmp_path / "t.png"), cell=10)).size == (block, 5 * 12 + 2)


# -- the model side: space-time positions, fitted normalisation -----------------------------------


def test_video_denoiser_knows_frame_row_and_column():
    cfg = QGFDVideoConfig(num_frames=3, latent_space="pixels", image_size=8, patch_size=4, num_channels=1, **SMALL)
    assert cfg.position_grid == [3, 2, 2]
    pos = QGFDDiffusionBackbone(cfg).positions(12, "cpu", torch.float32).view(3, 2, 2, 32)  # (F, rows, columns, D)
    time_part, space_part = pos[..., :12], pos[..., 12:]  # the first axis's share of d_model is 32 - 2 * 10
    assert torch.equal(time_part[0], time_part[0, :1, :1].expand(2, 2, 12))  # the frame share is the same across a frame
    assert not torch.equal(time_part[0], time_part[1])
    assert torch.equal(space_part[0], space_part[2]) and not torch.equal(space_part[0, 0, 0], space_part[0, 0, 1])
    learned = QGFDDiffusionBackbone(QGFDVideoConfig(num_frames=3, latent_space="pixels", image_size=8, patch_size=4,
                                                    num_channels=1, position_embedding="learned", **SMALL))
    assert [t.num_embeddings for t in learned.pos_embed_axes] == [3, 2, 2] and not hasattr(learned, "pos_embed")
    assert learned.positions(12, "cpu", torch.float32).shape == (12, 32)
    # 1-D positions on request, and for every other model as before
    flat = QGFDVideoConfig(num_frames=3, latent_space="pixels", image_size=8, patch_size=4, num_channels=1, position_grid=None, **SMALL)
    image = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **SMALL)
    assert image.position_grid is None
    for c, L in ((flat, 12), (image, 16)):
        assert torch.equal(QGFDDiffusionBackbone(c).positions(L, "cpu", torch.float32), sinusoidal_embedding(torch.arange(L), 32))
    assert QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, position_grid="auto", **SMALL).position_grid == [4, 4]
    with pytest.raises(ValueError, match=r"`position_grid`=\[2, 2\] holds 4 tokens, but the latents have 12"):
        QGFDVideoConfig(num_frames=3, latent_space="pixels", image_size=8, patch_size=4, num_channels=1, position_grid=[2, 2], **SMALL)


def test_never_fitted_model_refuses_to_train_or_sample():
    cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1,
                          normalization_fitted=False, **SMALL)
    model = VideoQGFDDiffusionModel(cfg)
    clips = torch.rand(6, 2, 1, 8, 8) * 0.5
    for call in (lambda: model.compute_loss({"pixel_values": clips}), lambda: model.diffusion_sample(2, num_inference_steps=2),
                 lambda: model.decode_latents(torch.zeros(1, 8, 16))):
        with pytest.raises(ValueError, match="normalisation was never fitted.*fit_normalization"):
            call()
    model.fit_normalization(clips)
    assert cfg.normalization_fitted is True
    assert cfg.image_mean[0] == pytest.approx(float(clips.mean()), rel=1e-4) and cfg.image_std[0] == pytest.approx(float(clips.std()), rel=1e-3)
    x0 = model.data_to_latents({"pixel_values": (clips - cfg.image_mean[0]) / cfg.image_std[0]})
    assert float(x0.std()) == pytest.approx(1.0, rel=1e-3)
    assert torch.isfinite(model.compute_loss({"pixel_values": clips})["loss"])
    with pytest.raises(ValueError, match=r"at least 2 clips in \[0, 1\]"):
        model.fit_normalization(clips * 3)


def test_tubelet_tokens_hold_one_patch_over_several_frames_and_round_trip(tmp_path):
    kw = dict(num_frames=4, latent_space="pixels", image_size=8, patch_size=4, num_channels=1, normalization_fitted=False, **SMALL)
    cfg = QGFDVideoConfig(tubelet_frames=2, **kw)
    assert (cfg.num_latent_tokens(), cfg.latent_dim, cfg.position_grid) == (8, 32, [2, 2, 2])
    model = VideoQGFDDiffusionModel(cfg)
    clips = torch.rand(5, 4, 1, 8, 8)
    model.fit_normalization(clips)
    x = (clips - cfg.image_mean[0]) / cfg.image_std[0]
    x0 = model.video_to_latents(x)  # (B, F/T * N, T * p * p)
    assert x0.shape == (5, 8, 32)
    patches = model.adapter.patchify(x.reshape(20, 1, 8, 8)).reshape(5, 4, 4, 16)  # (B, F, N, p * p)
    # token (tubelet 1, patch 3) = patch 3 of frames 2 and 3, side by side
    assert torch.allclose(x0[:, 1 * 4 + 3], torch.cat([patches[:, 2, 3], patches[:, 3, 3]], -1) * cfg.latent_scale)
    assert torch.allclose(model.decode_latents(x0), clips, atol=1e-6)
    assert torch.isfinite(model.compute_loss({"pixel_values": x})["loss"])
    model.save_pretrained(tmp_path / "m")
    loaded = VideoQGFDDiffusionModel.from_pretrained(tmp_path / "m")
    assert loaded.config.tubelet_frames == 2 and loaded.config.latent_dim == 32
    torch.manual_seed(0)
    a = model.diffusion_sample(2, num_inference_steps=2)
    torch.manual_seed(0)
    assert torch.equal(a, loaded.diffusion_sample(2, num_inference_steps=2))
    # one tubelet over all frames: 4 tokens of one patch place each, the frame axis of size 1
    whole = QGFDVideoConfig(tubelet_frames=4, **kw)
    assert (whole.num_latent_tokens(), whole.latent_dim, whole.position_grid) == (4, 64, [1, 2, 2])
    assert QGFDVideoConfig(**kw).latent_dim == 16  # the default: a token per frame's patch, as saved models have
    with pytest.raises(ValueError, match=r"`tubelet_frames`=3 must divide `num_frames`=4"):
        QGFDVideoConfig(tubelet_frames=3, **kw)
    with pytest.raises(ValueError, match=r'`tubelet_frames`=2 needs latent_space="pixels"'):
        QGFDVideoConfig(num_frames=2, tubelet_frames=2, latent_space="vit", backbone_config={"model_type": "vit", "image_size": 8,
                        "patch_size": 4, "num_channels": 1, "hidden_size": 32}, **SMALL)


def test_motion_compensation_centres_the_frames_and_keeps_the_shifts_in_the_latent(tmp_path):
    digits = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    clips = torch.from_numpy(make_moving_digits(digits, np.arange(6), clips_per_image=2, num_frames=4, frame_size=16, seed=1)["pixel_values"])
    kw = dict(num_frames=4, latent_space="pixels", image_size=16, patch_size=4, num_channels=1, normalization_fitted=False, **SMALL)
    cfg = QGFDVideoConfig(tubelet_frames=4, motion_compensation="centroid", **kw)
    assert (cfg.num_latent_tokens(), cfg.latent_dim, cfg.motion_channels) == (16, 4 * 16 + 2 * 4, 8)
    model = VideoQGFDDiffusionModel(cfg)
    model.fit_normalization(clips)
    shifts = model.adapter.centroid_shifts(clips)  # (B, F, 2)
    assert cfg.motion_scale == pytest.approx(float(shifts.float().std()))
    # a rigid drift: the centred frames are one image, so every tubelet token holds one patch 4 times
    centred = model.adapter.shift_frames(clips, shifts, torch.zeros(1, 1, 1, 1))
    assert torch.equal(centred, centred[:, :1].expand_as(centred)) and torch.allclose(centred.sum((2, 3, 4)), clips.sum((2, 3, 4)))
    x = (clips - cfg.image_mean[0]) / cfg.image_std[0]
    x0 = model.video_to_latents(x)
    pixels, motion = x0[..., :64], x0[..., 64:]
    assert torch.allclose(pixels, pixels[..., :16].repeat(1, 1, 4))
    assert torch.allclose(motion, (shifts.float().reshape(12, 1, 8) / cfg.motion_scale * cfg.latent_scale).expand(12, 16, 8))
    assert float(x0.std()) == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(model.decode_latents(x0), clips, atol=1e-6)  # exact: the digits stay inside the frame
    assert model.sample_clip_value >= float(x0.abs().max())
    # decoding rounds the shifts' mean over the tokens: a small error on them moves nothing
    assert torch.allclose(model.decode_latents(x0 + torch.cat([torch.zeros_like(pixels), 0.1 * torch.randn_like(motion)], -1)), clips, atol=1e-6)
    assert torch.isfinite(model.compute_loss({"pixel_values": x})["loss"])
    model.save_pretrained(tmp_path / "m")
    loaded = VideoQGFDDiffusionModel.from_pretrained(tmp_path / "m")
    assert loaded.config.motion_compensation == "centroid" and loaded.config.motion_scale == cfg.motion_scale
    assert torch.allclose(loaded.decode_latents(x0), clips, atol=1e-6)
    # per-frame tokens take it too; a black frame is not moved
    per_frame = VideoQGFDDiffusionModel(QGFDVideoConfig(motion_compensation="centroid", **kw))
    per_frame.fit_normalization(clips)
    assert per_frame.video_to_latents(x).shape == (12, 64, 16 + 8)
    assert torch.equal(per_frame.adapter.centroid_shifts(torch.zeros(1, 4, 1, 16, 16)), torch.zeros(1, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Unknown motion_compensation 'flow'; allowed: None, 'centroid'"):
        QGFDVideoConfig(motion_compensation="flow", **kw)
    with pytest.raises(ValueError, match=r"`motion_scale` must lie in \(0.0, inf\), got 0"):
        QGFDVideoConfig(motion_compensation="centroid", motion_scale=0, **kw)
    with pytest.raises(ValueError, match=r'`motion_compensation`=\'centroid\' needs latent_space="pixels"'):
        QGFDVideoConfig(num_frames=2, motion_compensation="centroid", latent_space="vit", backbone_config={"model_type": "vit",
                        "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 32}, **SMALL)


def test_noise_shift_scales_the_fitted_latents():
    kw = dict(num_frames=2, latent_space="pixels", image_size=8, patch_size=4, num_channels=1, normalization_fitted=False, **SMALL)
    clips = torch.rand(6, 2, 1, 8, 8)
    stds = {}
    for shift in (1.0, 4.0):
        model = VideoQGFDDiffusionModel(QGFDVideoConfig(noise_shift=shift, **kw))
        model.fit_normalization(clips)
        cfg = model.config
        x0 = model.video_to_latents((clips - cfg.image_mean[0]) / cfg.image_std[0])
        stds[shift] = float(x0.std())
        assert torch.allclose(model.decode_latents(x0), clips, atol=1e-6)  # decoding undoes the shift
    assert stds[1.0] == pytest.approx(1.0, rel=1e-3) and stds[4.0] == pytest.approx(0.25, rel=1e-3)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="noise_shift"):
            QGFDVideoConfig(noise_shift=bad, **kw)


# -- end to end through the CLI -------------------------------------------------------------------


def test_train_save_automodel_pipeline_and_sample_from_files_on_disk(tmp_path, capsys):
    from transformers import AutoModel, pipeline

    d = _clip_folder(tmp_path / "clips", n_per_label=4)
    out = tmp_path / "run"
    code, stdout, err = _run(["train", "--modality", "video", "--data-dir", str(d), "--frame-patch-size", "4", "--max-steps", "3",
                              "--output-dir", str(out)] + TINY, capsys)
    assert code == 0, err
    assert "VideoQGFDDiffusionModel" in stdout and "latents 12 x 16" in stdout and "final loss" in stdout
    model = AutoModel.from_pretrained(str(out / "model"))
    assert isinstance(model, VideoQGFDDiffusionModel)
    cfg = model.config
    assert cfg.normalization_fitted is True and cfg.position_grid == [3, 2, 2] and cfg.image_mean[0] != 0.5
    assert cfg.tubelet_frames == 1  # the task's default tubelets span gcd(3, 4) = 1 frame
    assert cfg.num_classes is None  # class-conditional by default on the moving digits only; folders: --class-conditional
    assert cfg.motion_compensation is None  # so is motion compensation
    frames = pipeline("qgfd-diffusion", model=str(out / "model"))(num_samples=2, num_inference_steps=2, seed=0, progress_bar=False)
    assert frames[0]["frames"].shape == (3, 8, 8, 1) and frames[0]["frames"].dtype == np.uint8
    code, stdout, err = _run(["sample", str(out / "model"), "--num-samples", "3", "--num-inference-steps", "2", "--no-progress",
                              "--output", str(tmp_path / "s.png")], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "s.npy").shape == (3, 3, 1, 8, 8)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size[1] == 3 * 50 + 2  # three rows: one clip each


def test_pretrained_vit_stack_as_the_video_denoiser(tmp_path, capsys):
    from transformers import AutoConfig, ViTConfig, ViTModel

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=8,
                       patch_size=4, num_channels=1)).save_pretrained(vit)
    d = _clip_folder(tmp_path / "clips", n_per_label=2)
    out = tmp_path / "run"
    code, _, err = _run(["train", "--modality", "video", "--data-dir", str(d), "--backbone", str(vit), "--denoiser", "pretrained",
                         "--max-steps", "2", "--output-dir", str(out)] + TINY, capsys)
    assert code == 0, err
    config = AutoConfig.from_pretrained(str(out / "model"))
    assert config.denoiser == "pretrained" and config.latent_space == "pixels" and config.num_frames == 3
    # ViT latents encode single frames: no motion compensation
    _refused(["train", "--modality", "video", "--data-dir", str(d), "--backbone", str(vit), "--motion-compensation", "centroid"],
             capsys, tmp_path, "drop --frame-patch-size / --tubelet-frames / --motion-compensation")


def test_demo_code_path_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = _run(["demo", "--modality", "video", "--dataset", "moving_digits", "--num-frames", "2", "--frame-side", "12", "--frame-patch-size", "4",
                              "--max-steps", "3", "--num-samples", "12", "--num-inference-steps", "2", "--output-dir", str(out)] + TINY, capsys)
    assert code == 0, err
    assert "clips keeping one class" in stdout and "Targets: fd_below_gaussian" in stdout
    assert "class-conditional (10 classes, label dropout 0.1)" in stdout and "frames of the requested class" in stdout
    demo = json.loads((out / "metrics.json").read_text())["demo"]
    m = demo["metrics"]
    assert m["samples"]["num_clips"] == m["baseline_gaussian"]["num_clips"] == m["baseline_class_gaussian"]["num_clips"] == 12
    assert 0 <= m["samples"]["class_agreement"] <= 1 and -1 <= m["samples"]["shift_match"] <= 1 and m["guidance_scale"] == 1.0
    assert set(demo["targets"]) == {"fd_below_gaussian", "confidence_above_gaussian", "consistent_above_gaussian", "consistent_at_least_0.8",
                                    "fd_below_latent_gaussian", "confidence_above_latent_gaussian", "consistent_above_latent_gaussian"}
    # motion-compensated latents are not pixels: the Gaussians are fitted there too
    assert m["baseline_latent_class_gaussian"]["num_clips"] == m["baseline_latent_gaussian"]["num_clips"] == 12
    assert "latent class Gauss." in stdout
    assert np.load(out / "samples.npy").shape == (12, 2, 1, 12, 12)
    cfg = json.loads((out / "model" / "config.json").read_text())
    # gcd(2, 4) frames a token; the moving digits' motion compensation adds 2 shifts per frame
    assert cfg["tubelet_frames"] == 2 and cfg["latent_dim"] == 32 + 4 and cfg["position_grid"] == [1, 3, 3]
    assert cfg["motion_compensation"] == "centroid" and "motion compensation centroid" in stdout
    assert (out / "samples.png").exists() and "clips keeping one digit class" in (out / "model" / "README.md").read_text()


def test_diagnose_class_use_script_on_a_tiny_model(tmp_path, capsys):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
    import diagnose_class_use

    torch.manual_seed(0)
    cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=12, patch_size=4, num_channels=1, num_classes=10, **SMALL)
    VideoQGFDDiffusionModel(cfg).save_pretrained(tmp_path / "m")
    diagnose_class_use.main([str(tmp_path / "m"), "--num-examples", "16", "--timesteps", "5", "20"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 5 |") or line.startswith("| 20 |")]
    assert len(rows) == 2
    errors = [float(v) for v in rows[1].strip("|").split("|")[1:4]]
    assert all(np.isfinite(errors)) and min(errors) > 0
    # an untrained model's adaLN-Zero layers ignore the label: the three errors agree
    assert max(errors) - min(errors) < 1e-6
    cfg = QGFDVideoConfig(num_frames=2, latent_space="pixels", image_size=12, patch_size=4, num_channels=1, **SMALL)
    VideoQGFDDiffusionModel(cfg).save_pretrained(tmp_path / "u")
    with pytest.raises(SystemExit, match="not class-conditional"):
        diagnose_class_use.main([str(tmp_path / "u")])
