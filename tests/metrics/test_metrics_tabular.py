"""Tests of the table scores and baselines on hand-made tables with known answers
(qgfd_hf/metrics/tabular.py): the correlation error, the Gaussian copula, SMOTE interpolation,
and regression TSTR (R^2)."""

import numpy as np
import pandas as pd
import pytest

from qgfd_hf.metrics.tabular import TableEvaluator, baseline_rows, copula_rows, correlation_error, smote_rows, tabular_targets_met

COLUMNS = [
    {"name": "a", "kind": "float"},
    {"name": "b", "kind": "float"},
    {"name": "n", "kind": "int"},
    {"name": "y", "kind": "category", "categories": ["p", "q"]},
]


def _table(n=60, seed=0):
    """Two well-separated classes: class p near (0, 0), class q near (10, 20); b ~ 2a within a class."""
    rng = np.random.default_rng(seed)
    y = np.where(np.arange(n) % 3 == 0, "q", "p")
    a = rng.normal(size=n) + np.where(y == "q", 10.0, 0.0)
    b = 2 * a + 0.1 * rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "n": rng.integers(0, 5, size=n) + np.where(y == "q", 10, 0), "y": y})


def test_correlation_error_known_answers():
    df = _table()
    assert correlation_error(df, df, ["a", "b", "n"]) == 0.0
    x = np.arange(10.0)
    same, flipped = pd.DataFrame({"u": x, "v": x}), pd.DataFrame({"u": x, "v": -x})
    assert correlation_error(same, flipped, ["u", "v"]) == pytest.approx(2.0)  # corr +1 vs -1
    # three columns: (u, v) differs by 2, (u, w) by 0, (v, w) by 2 |corr(x, w)|
    w = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1.0])
    c = np.corrcoef(x, w)[0, 1]
    assert correlation_error(same.assign(w=w), flipped.assign(w=w), ["u", "v", "w"]) == pytest.approx((2 + 0 + 2 * abs(c)) / 3)
    # a constant column counts as uncorrelated, not NaN
    assert correlation_error(same.assign(v=1.0), same, ["u", "v"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 numeric columns"):
        correlation_error(same, same, ["u"])
    with pytest.raises(ValueError, match=r"\['z'\] missing"):
        correlation_error(same, same, ["u", "z"])


def test_copula_keeps_marginal_ranges_per_class_and_the_dependence():
    train = _table(n=90)
    out = copula_rows(train, COLUMNS, "y", 600, seed=1)
    assert list(out.columns) == ["a", "b", "n", "y"] and len(out) == 600 and out["n"].dtype == np.int64
    for cls, g in train.groupby("y"):
        o = out[out["y"] == cls]
        for col in ("a", "b", "n"):  # the empirical quantile function stays within the class's range
            assert o[col].min() >= g[col].min() and o[col].max() <= g[col].max()
        assert np.corrcoef(o["a"], o["b"])[0, 1] > 0.95  # b ~ 2a survives the copula
    assert abs((out["y"] == "q").mean() - 1 / 3) < 0.06  # classes in their training proportions
    # the marginals match: the copula's quantiles are the training quantiles
    np.testing.assert_allclose(np.quantile(out[out.y == "p"]["a"], [0.25, 0.5, 0.75]),
                               np.quantile(train[train.y == "p"]["a"], [0.25, 0.5, 0.75]), atol=0.25)
    again = copula_rows(train, COLUMNS, "y", 600, seed=1)
    pd.testing.assert_frame_equal(out, again)  # seeded
    whole = copula_rows(train, COLUMNS, None, 300, seed=0)  # no label: one copula, labels by frequency
    assert set(whole["y"]) == {"p", "q"} and whole["a"].min() >= train["a"].min() and whole["a"].max() <= train["a"].max()


def test_smote_rows_lie_on_segments_between_same_class_neighbours():
    train = _table(n=30)
    out = smote_rows(train, COLUMNS, "y", 200, seed=0, k_neighbors=3)
    assert list(out.columns) == ["a", "b", "n", "y"] and len(out) == 200
    for _, row in out.iterrows():
        g = train[train["y"] == row["y"]][["a", "b"]].to_numpy()
        p = row[["a", "b"]].to_numpy(float)
        # some pair (i, j) of same-class rows has p = g_i + lam (g_j - g_i), lam in [0, 1]
        d = g[None, :, :] - g[:, None, :]  # [i, j, 2]
        lam = np.einsum("ijk,ijk->ij", p - g[:, None, :], d) / np.maximum(np.einsum("ijk,ijk->ij", d, d), 1e-12)
        lam = np.clip(lam, 0, 1)
        resid = np.linalg.norm(g[:, None, :] + lam[..., None] * d - p, axis=-1)
        assert resid.min() < 1e-9
    # with k = 1 each point sits between a row and its nearest neighbour: never beyond the class's range
    one = smote_rows(train, COLUMNS, "y", 100, seed=1, k_neighbors=1)
    for cls, g in train.groupby("y"):
        o = one[one["y"] == cls]
        assert o["a"].between(g["a"].min(), g["a"].max()).all()
    with pytest.raises(ValueError, match="`k_neighbors` must be an int >= 1, got 0"):
        smote_rows(train, COLUMNS, "y", 10, k_neighbors=0)
    with pytest.raises(ValueError, match="Unknown table baseline 'vae'; allowed: gaussian, copula, smote"):
        baseline_rows("vae", train, COLUMNS, "y", 10)


def test_regression_tstr_is_r2_and_targets_read_the_copula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    df = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "t": 3 * x[:, 0] + 0.1 * rng.normal(size=120)})
    cols = [{"name": c, "kind": "float"} for c in df.columns]
    ev = TableEvaluator(df[:90], df[90:], cols, None, targets=["t"], trees=20, forests=1, detection_trees=10, baselines=("copula",))
    assert ev.tstr_metric == "r2" and ev.tstr(df[:90]) > 0.8  # the target is learnable from x1
    shuffled = df[:90].assign(t=rng.permutation(df["t"][:90].to_numpy()))
    assert ev.tstr(shuffled) < 0.2  # the link broken: R^2 near or below 0
    result = ev.evaluate(df[:90])
    assert set(result) >= {"samples", "baseline_real", "baseline_copula"} and "baseline_gaussian" not in result
    assert result["samples"]["corr_error"] is not None and result["tstr_metric"] == "r2"
    result["baseline_gaussian"] = result["baseline_copula"]
    targets = tabular_targets_met(result)
    assert {"tstr_above_copula", "detection_auc_below_copula"} <= set(targets)
    # detection AUCs are read as max(AUC, 0.5): 0.44 vs 0.46 is a tie at the floor, not a win
    cell = lambda tstr, det: dict(result["samples"], tstr=tstr, detection_auc=det)
    floor = dict(result, samples=cell(0.9, 0.44), baseline_copula=cell(0.8, 0.46))
    assert tabular_targets_met(floor)["tstr_above_copula"] and not tabular_targets_met(floor)["detection_auc_below_copula"]
    assert tabular_targets_met(dict(floor, baseline_copula=cell(0.8, 0.6)))["detection_auc_below_copula"]
    with pytest.raises(ValueError, match="Regression targets must be numeric"):
        TableEvaluator(_table(), _table(), COLUMNS, None, targets=["y"])
    with pytest.raises(ValueError, match="not both"):
        TableEvaluator(_table(), _table(), COLUMNS, "y", targets=["a"])
    with pytest.raises(ValueError, match=r"Unknown table baseline\(s\) \['vae'\]"):
        TableEvaluator(_table(), _table(), COLUMNS, "y", baselines=("vae",))
