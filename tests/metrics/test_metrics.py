"""Tests of the demo's metrics: the Frechet distance, the digits classifier and its baselines."""

import numpy as np
import pytest

from qgfd_hf.data.core import load_digits_dataset
from qgfd_hf.metrics.core import DigitsEvaluator, exact_match, frechet_distance, image_targets_met


def _fd_scipy(a, b):
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_frechet_distance_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.5, size=(300, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, b) == pytest.approx(_fd_scipy(a, b), rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # 1-d closed form: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    x = np.array([[0.0], [2.0]])  # mean 1, var 2
    y = np.array([[3.0], [7.0]])  # mean 5, var 8
    assert frechet_distance(x, y) == pytest.approx(16 + (np.sqrt(2) - np.sqrt(8)) ** 2)
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(a, b[:, :3])


@pytest.fixture(scope="module")
def evaluator():
    d = load_digits_dataset()
    return DigitsEvaluator(d["train"]["pixel_values"], d["train"]["label"], d["test"]["pixel_values"], d["test"]["label"])


def test_classifier_and_baselines_rank_as_expected(evaluator):
    assert evaluator.classifier_accuracy > 0.95
    result = evaluator.evaluate(evaluator.real_samples(360, seed=1))  # real digits as the "samples"
    real, gauss = result["samples"], result["baseline_gaussian"]
    assert real["classes_present"] == 10 and sum(real["class_counts"]) == 360
    assert real["confidence"] > 0.95
    assert real["fd"] < gauss["fd"] / 2  # real digits are far closer to held-out digits than the Gaussian's
    assert image_targets_met(result) == {"fd_below_gaussian": True, "confidence_at_least_0.85": True, "all_10_classes": True}
    # Noise is no digit: low confidence, far away.
    noise = np.random.default_rng(0).random((360, 64))
    scored = evaluator.score(noise)
    assert scored["fd"] > gauss["fd"] and scored["confidence"] < real["confidence"]
    # Only ones: one class.
    ones = evaluator.test_x[np.asarray(load_digits_dataset()["test"]["label"]) == 1]
    assert evaluator.score(ones)["classes_present"] <= 2


def test_evaluator_is_deterministic_and_checks_inputs(evaluator):
    g1, g2 = evaluator.gaussian_samples(50), evaluator.gaussian_samples(50)
    assert np.array_equal(g1, g2) and g1.min() >= 0 and g1.max() <= 1
    assert evaluator.score(g1) == evaluator.score(g2)
    with pytest.raises(ValueError, match="64 pixels"):
        evaluator.score(np.zeros((4, 1, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        evaluator.score(np.full((4, 64), np.nan))


def test_exact_match():
    assert exact_match(["a b", "c  d", "e"], ["a b", "c d", "f"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        exact_match(["a", "b"], ["a"])
