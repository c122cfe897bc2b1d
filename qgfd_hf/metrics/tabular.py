# coding=utf-8
"""Table scores and the baselines they are read beside.

- baselines, each fitted to the real training rows (per class of the label column for a
  classification table; on the whole table for a regression one):
  - `gaussian_rows`: a full-covariance Gaussian of the numeric columns;
  - `copula_rows`: a Gaussian copula: each numeric column's empirical marginal (its sorted
    training values, interpolated) joined by a Gaussian dependence (the correlation of the
    columns' normal scores);
  - `smote_rows`: SMOTE-style interpolation: a random point on the segment between a training
    row and one of its `k` nearest neighbours (same class), TabDDPM's strongest simple baseline;
- `correlation_error`: the mean absolute difference of two tables' correlation matrices (the
  numeric columns' Pearson correlations, over the pairs of columns);
- `TableEvaluator`: TSTR (random forests trained on the rows, tested on the real held-out
  rows: accuracy for a class label, R^2 for regression targets), W1, TVD, correlation error,
  detection AUC and the closest-row distance (privacy), for the model's samples and every
  baseline; `tabular_targets_met` reads them.

Rows are pandas DataFrames in the schema's columns (`columns`: dicts with "name", "kind" in
"float" / "int" / "category" and, for categories, "categories"), as
`qgfd_hf.tasks.tabular.fit_columns` makes them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


BASELINES = ("gaussian", "copula", "smote")


# ----------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------


def _groups(train, label: Optional[str]):
    return [(None, train)] if label is None else list(train.groupby(label, sort=True))


def _per_group(train, columns: Sequence[dict], label: Optional[str], n: int, seed: int, draw_numeric) -> "object":
    """`n` rows: per class of `label` (classes in their training proportions; the whole table
    when `label` is None), the numeric columns from `draw_numeric(group, numeric names, k, rng)`
    ([k, numeric] floats; or `(floats, {categorical column: k values})` for a sampler that draws
    those columns too), other categorical columns from their per-class frequencies, integer
    columns rounded; the rows shuffled."""
    import pandas as pd

    if n < 1:
        raise ValueError(f"The number of rows to draw must be >= 1, got {n}.")
    names = [c["name"] for c in columns]
    if label is not None and label not in names:
        raise ValueError(f"The label column {label!r} is not among the columns {names}.")
    rng = np.random.default_rng(seed)
    numeric = [c["name"] for c in columns if c["kind"] != "category"]
    groups = _groups(train, label)
    counts = rng.multinomial(n, [len(g) / len(train) for _, g in groups])
    parts = []
    for (value, g), k in zip(groups, counts):
        if k == 0:
            continue
        part = pd.DataFrame(index=range(k))
        drawn_categories = {}
        if numeric:
            draw = draw_numeric(g, numeric, k, rng)
            if isinstance(draw, tuple):
                draw, drawn_categories = draw
            for j, name in enumerate(numeric):
                part[name] = draw[:, j]
        for c in columns:
            if c["name"] in drawn_categories:
                part[c["name"]] = drawn_categories[c["name"]]
            elif c["kind"] == "category" and c["name"] != label:
                freq = g[c["name"]].value_counts(normalize=True)
                part[c["name"]] = rng.choice(np.asarray(freq.index, dtype=object), size=k, p=freq.to_numpy())
            elif c["kind"] == "int":
                part[c["name"]] = np.round(part[c["name"]]).astype("int64")
        if label is not None:
            part[label] = value
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)[names]
    return out.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def gaussian_rows(train, columns: Sequence[dict], label: Optional[str], n: int, seed: int = 0):
    """`n` rows from the baseline: per class of `label`, a full-covariance Gaussian of the numeric
    columns (classes in their training proportions); other categorical columns drawn from their
    per-class frequencies; integer columns rounded."""

    def draw(g, numeric, k, rng):
        x = g[numeric].to_numpy(dtype=np.float64)
        cov = np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((len(numeric), len(numeric)))
        return rng.multivariate_normal(x.mean(0), np.atleast_2d(cov), size=k, method="eigh")

    return _per_group(train, columns, label, n, seed, draw)


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Columns [N, F] -> their normal scores: the standard normal quantile of the mid-ranks
    (ties share their mean rank), (rank - 0.5) / N."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    return ndtri((rankdata(x, axis=0) - 0.5) / len(x))


def copula_rows(train, columns: Sequence[dict], label: Optional[str], n: int, seed: int = 0):
    """`n` rows from a Gaussian copula fitted per class of `label` (the whole table when None):
    the dependence is the correlation matrix R of the numeric columns' normal scores
    (`_normal_scores`); a row is z ~ N(0, R), u = Phi(z), and each column's empirical quantile
    function at u (its sorted training values, linearly interpolated), so every value lies within
    its column's training range (for the class). Categorical columns other than the label: their
    per-class frequencies; integer columns rounded. A class of one row repeats it."""
    from scipy.special import ndtr

    def draw(g, numeric, k, rng):
        x = g[numeric].to_numpy(dtype=np.float64)
        if len(x) < 2:
            return np.repeat(x, k, axis=0)
        z = _normal_scores(x)
        corr = np.atleast_2d(np.corrcoef(z, rowvar=False))
        corr = np.where(np.isfinite(corr), corr, 0.0)  # a constant column: independent of the others
        np.fill_diagonal(corr, 1.0)
        u = ndtr(rng.multivariate_normal(np.zeros(len(numeric)), corr, size=k, method="eigh"))
        levels = (np.arange(len(x)) + 0.5) / len(x)  # the sorted values sit at their mid-rank levels
        return np.stack([np.interp(u[:, j], levels, np.sort(x[:, j])) for j in range(len(numeric))], 1)

    return _per_group(train, columns, label, n, seed, draw)


def smote_rows(train, columns: Sequence[dict], label: Optional[str], n: int, seed: int = 0, k_neighbors: int = 5):
    """`n` rows by SMOTE-style interpolation (as TabDDPM's SMOTE baseline): per class of `label`
    (the whole table when None; classes in their training proportions), a random training row,
    one of its `k_neighbors` nearest neighbours in the same class (numeric columns standardised
    by the class's std), and a uniform point on the segment between them: x + lam (neighbour - x),
    lam ~ U(0, 1), the same lam for every numeric column. Categorical columns other than the label
    are taken from the row or its neighbour (lam < 0.5: the row); integer columns rounded. A
    class of one row repeats it."""
    if not isinstance(k_neighbors, int) or isinstance(k_neighbors, bool) or k_neighbors < 1:
        raise ValueError(f"`k_neighbors` must be an int >= 1, got {k_neighbors!r}.")
    categorical = [c["name"] for c in columns if c["kind"] == "category" and c["name"] != label]

    def draw(g, numeric, k, rng):
        x = g[numeric].to_numpy(dtype=np.float64)
        base = rng.integers(0, len(g), size=k)
        if len(g) > 1:
            scale = x.std(0)
            xs = x / np.where(scale > 0, scale, 1.0)
            d = ((xs[:, None, :] - xs[None, :, :]) ** 2).sum(-1)
            np.fill_diagonal(d, np.inf)
            nearest = np.argsort(d, axis=1, kind="stable")[:, : min(k_neighbors, len(g) - 1)]  # [rows, k]
            other = nearest[base, rng.integers(0, nearest.shape[1], size=k)]
        else:
            other = base
        lam = rng.random(k)
        from_pair = {name: np.where(lam < 0.5, v[base], v[other]) for name in categorical for v in [g[name].to_numpy(dtype=object)]}
        return x[base] + lam[:, None] * (x[other] - x[base]), from_pair

    return _per_group(train, columns, label, n, seed, draw)


def baseline_rows(name: str, train, columns: Sequence[dict], label: Optional[str], n: int, seed: int = 0):
    """`n` rows of the baseline `name` (one of `BASELINES`)."""
    makers = {"gaussian": gaussian_rows, "copula": copula_rows, "smote": smote_rows}
    if name not in makers:
        raise ValueError(f"Unknown table baseline {name!r}; allowed: {', '.join(BASELINES)}.")
    return makers[name](train, columns, label, n, seed=seed)


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------


def correlation_error(rows, reference, columns: Sequence[str]) -> float:
    """Mean over the pairs i < j of `columns` (numeric) of |corr_rows[i, j] - corr_reference[i, j]|
    (Pearson): 0 for tables with the same correlations, at most 2. A constant column's
    correlations count as 0. Needs at least two columns."""
    columns = list(columns)
    if len(columns) < 2:
        raise ValueError(f"The correlation error needs at least 2 numeric columns, got {columns}.")
    missing = [c for c in columns if c not in rows.columns or c not in reference.columns]
    if missing:
        raise ValueError(f"Column(s) {missing} missing from the rows compared (columns: {list(rows.columns)} / {list(reference.columns)}).")

    def corr(df):
        x = df[columns].to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(x, rowvar=False)
        return np.nan_to_num(c, nan=0.0)

    iu = np.triu_indices(len(columns), k=1)
    return float(np.abs(corr(rows) - corr(reference))[iu].mean())


class TableEvaluator:
    """Scores of synthetic rows against the real ones, with the same number of rows for every
    generator scored (the model's samples, the baselines, real training rows).

    - `tstr`: random forests trained on the rows (the mean over `forests` forest seeds; for real
      training rows this is TRTR), tested on the real held-out rows: with a class `label`, the
      held-out accuracy of classifiers fed the other columns; with regression `targets`, the
      held-out R^2 of regressors fed the other columns (averaged over the targets,
      `sklearn.metrics.r2_score`'s uniform average; 1 = perfect, 0 = the held-out mean, negative =
      worse than that);
    - `w1`: mean over numeric columns of the Wasserstein-1 distance to the held-out rows, each
      column divided by its training std; `tvd`: mean total variation distance of the
      categorical columns' frequencies to the held-out rows';
    - `corr_error`: `correlation_error` of the numeric columns to the held-out rows;
    - `detection_auc`: ROC AUC of a random forest telling the rows from real training rows,
      5-fold cross-validated (0.5: indistinguishable; 1: always told apart);
    - `spread_ratio`: the numeric columns' std over their training std, averaged (shrinkage
      towards the mean shows as < 1);
    - `dcr_ratio`: median distance from each row to its closest real training row (standardised
      numeric columns, one-hot categories), divided by the same for the real held-out rows
      (about 1: as close as new real rows are; near 0: copies of training rows); `dcr` the
      median distance itself.

    Args:
        train, test: the real training and held-out rows (DataFrames in the schema's columns).
        columns: the schema (`fit_columns`); label: the class label column (None: no
            classification TSTR).
        targets (`list[str]`, *optional*): regression target columns (numeric), for a table
            without a label; TSTR is then R^2.
        seed (`int`, defaults to 0): the forests' and the baselines' seed.
        trees (`int`, defaults to 100), detection_trees (`int`, defaults to 100): the forests' sizes
            for TSTR and for detection; forests (`int`, defaults to 5): TSTR's forests (seeds) averaged.
        baselines (`tuple`, defaults to `BASELINES`): the baselines `evaluate` scores.
    """

    def __init__(self, train, test, columns: Sequence[dict], label: Optional[str], seed: int = 0, trees: int = 100,
                 detection_trees: int = 100, forests: int = 5, targets: Optional[Sequence[str]] = None,
                 baselines: Sequence[str] = BASELINES):
        self.train, self.test = train.reset_index(drop=True), test.reset_index(drop=True)
        self.columns, self.label, self.seed = list(columns), label, seed
        self.trees, self.detection_trees, self.forests = trees, detection_trees, forests
        kinds = {c["name"]: c["kind"] for c in self.columns}
        self.targets = list(targets or [])
        if self.targets and label is not None:
            raise ValueError(f"Give a class `label` ({label!r}) or regression `targets` ({self.targets}), not both.")
        bad = [t for t in self.targets if kinds.get(t) not in ("float", "int")]
        if bad:
            raise ValueError(f"Regression targets must be numeric columns; {bad} are not (columns: {kinds}).")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"Unknown table baseline(s) {unknown}; allowed: {', '.join(BASELINES)}.")
        self.baselines = tuple(baselines)
        self.numeric = [c["name"] for c in self.columns if c["kind"] != "category"]
        self.categorical = [c for c in self.columns if c["kind"] == "category"]
        self.std = self.train[self.numeric].std().replace(0, 1.0).to_numpy() if self.numeric else np.ones(0)
        self.mean = self.train[self.numeric].mean().to_numpy() if self.numeric else np.zeros(0)
        self._train_matrix = self._matrix(self.train)
        self._test_dcr = self._dcr(self.test)

    def _matrix(self, df, with_label: bool = True) -> np.ndarray:
        """Standardised numeric columns and one-hot categories (the training categories);
        `with_label=False` drops the label and the regression targets (a predictor's inputs)."""
        keep = [j for j, name in enumerate(self.numeric) if with_label or name not in self.targets]
        names = [self.numeric[j] for j in keep]
        parts = [(df[names].to_numpy(dtype=np.float64) - self.mean[keep]) / self.std[keep]] if names else []
        for c in self.categorical:
            if c["name"] == self.label and not with_label:
                continue
            values = df[c["name"]].to_numpy(dtype=object)
            parts.append(np.stack([values == v for v in c["categories"]], 1).astype(np.float64))
        return np.concatenate(parts, 1) if parts else np.zeros((len(df), 0))

    def _forest(self, trees: Optional[int] = None, seed: Optional[int] = None, regression: bool = False):
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        cls = RandomForestRegressor if regression else RandomForestClassifier
        return cls(n_estimators=trees or self.trees, random_state=self.seed if seed is None else seed, n_jobs=1)

    @property
    def tstr_metric(self) -> Optional[str]:
        return "accuracy" if self.label is not None else "r2" if self.targets else None

    def tstr(self, rows) -> Optional[float]:
        """Held-out accuracy (class label) or R^2 (regression targets) of forests trained on
        `rows`, averaged over `forests` seeds (one test row is 1/114 = 0.009 of accuracy on breast
        cancer: a single forest's seed moves TSTR by about that)."""
        from sklearn.metrics import r2_score

        if self.tstr_metric is None:
            return None
        x, x_test = self._matrix(rows, with_label=False), self._matrix(self.test, with_label=False)
        scores = []
        if self.label is not None:
            y, y_test = rows[self.label].astype(str).to_numpy(), self.test[self.label].astype(str).to_numpy()
        else:
            y, y_test = rows[self.targets].to_numpy(dtype=np.float64), self.test[self.targets].to_numpy(dtype=np.float64)
            y = y[:, 0] if len(self.targets) == 1 else y
        for k in range(self.forests):
            if self.label is not None:
                clf = self._forest(seed=self.seed + k).fit(x, y)
                scores.append(float((clf.predict(x_test) == y_test).mean()))
            else:
                reg = self._forest(seed=self.seed + k, regression=True).fit(x, y)
                scores.append(float(r2_score(y_test, reg.predict(x_test).reshape(len(x_test), -1))))
        return float(np.mean(scores))

    def w1(self, rows) -> Dict[str, float]:
        from scipy.stats import wasserstein_distance

        out = {}
        for j, name in enumerate(self.numeric):
            out[name] = float(wasserstein_distance(rows[name].to_numpy(float) / self.std[j], self.test[name].to_numpy(float) / self.std[j]))
        return out

    def tvd(self, rows) -> Dict[str, float]:
        out = {}
        for c in self.categorical:
            p = rows[c["name"]].astype(str).value_counts(normalize=True)
            q = self.test[c["name"]].astype(str).value_counts(normalize=True)
            keys = set(p.index) | set(q.index)
            out[c["name"]] = float(0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys))
        return out

    def corr_error(self, rows) -> Optional[float]:
        return correlation_error(rows, self.test, self.numeric) if len(self.numeric) >= 2 else None

    def detection_auc(self, rows, reference=None) -> float:
        """Cross-validated AUC of a forest telling `rows` from `reference` (default: the training rows)."""
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        real = self._train_matrix if reference is None else self._matrix(reference)
        fake = self._matrix(rows)
        x = np.concatenate([real, fake])
        y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
        cv = StratifiedKFold(min(5, len(real), len(fake)), shuffle=True, random_state=self.seed)
        return float(cross_val_score(self._forest(self.detection_trees), x, y, cv=cv, scoring="roc_auc").mean())

    def _dcr(self, rows) -> float:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=1).fit(self._train_matrix)
        return float(np.median(nn.kneighbors(self._matrix(rows))[0][:, 0]))

    def score(self, rows) -> Dict[str, object]:
        w1, tvd = self.w1(rows), self.tvd(rows)
        dcr = self._dcr(rows)
        out = {
            "num_rows": int(len(rows)),
            "tstr": self.tstr(rows),
            "w1": float(np.mean(list(w1.values()))) if w1 else None,
            "tvd": float(np.mean(list(tvd.values()))) if tvd else None,
            "corr_error": self.corr_error(rows),
            "detection_auc": self.detection_auc(rows),
            "dcr": dcr,
            "dcr_ratio": dcr / max(self._test_dcr, 1e-12),
            # the measured failure: samples shrunk to 0.73 of the real spread
            "spread_ratio": float(np.mean(rows[self.numeric].to_numpy(float).std(0) / self.std)) if self.numeric else None,
            "w1_per_column": w1,
            "tvd_per_column": tvd,
        }
        if self.label is not None:
            out["label_counts"] = {str(k): int(v) for k, v in rows[self.label].astype(str).value_counts().sort_index().items()}
        return out

    def real_scores(self, n: int) -> Dict[str, object]:
        """The real baseline for `n` sampled rows: real training rows (all of them for TSTR, i.e.
        TRTR; a random subset of `n` for the distances), and, for detection, the held-out rows told
        from as many training rows (what a perfect generator would score); its `dcr` is the
        held-out rows' (training rows are their own closest rows)."""
        rng = np.random.default_rng(self.seed)
        real = self.train.iloc[rng.choice(len(self.train), size=min(n, len(self.train)), replace=False)].reset_index(drop=True)
        scores = self.score(real)
        scores["tstr"] = self.tstr(self.train)  # TRTR: the whole training set
        scores["dcr"], scores["dcr_ratio"] = self._test_dcr, 1.0  # the held-out rows' closest-row distance
        subset = self.train.iloc[rng.choice(len(self.train), size=min(len(self.test), len(self.train)), replace=False)]
        scores["detection_auc"] = self.detection_auc(self.test, reference=subset)  # held-out vs as many training rows
        return scores

    def evaluate(self, samples) -> Dict[str, object]:
        """The samples' scores beside the real baseline (`real_scores`) and each of `baselines`
        drawn with as many rows (`baseline_<name>`)."""
        n = len(samples)
        out = {"samples": self.score(samples), "baseline_real": self.real_scores(n)}
        for name in self.baselines:
            out[f"baseline_{name}"] = self.score(baseline_rows(name, self.train, self.columns, self.label, n, seed=self.seed))
        out.update(num_train=int(len(self.train)), num_heldout=int(len(self.test)), tstr_metric=self.tstr_metric)
        return out


def tabular_targets_met(result: Dict[str, object], tstr_gap: float = 0.03) -> Dict[str, bool]:
    """The targets: beat the Gaussian on W1 and on the classifier metrics (TSTR, detection AUC);
    TSTR within `tstr_gap` of TRTR; with a copula baseline scored, beat it on TSTR and on
    detection AUC (issue 24's target), both AUCs read as max(AUC, 0.5): below 0.5 is
    cross-validation's bias on indistinguishable sets, so a tie at 0.5 is not a win (as
    scripts/bench_tables.py reads it)."""
    s, r, g = result["samples"], result["baseline_real"], result["baseline_gaussian"]
    targets = {"w1_below_gaussian": s["w1"] is not None and s["w1"] < g["w1"],
               "detection_auc_below_gaussian": s["detection_auc"] < g["detection_auc"]}
    if s["tstr"] is not None:
        targets["tstr_above_gaussian"] = s["tstr"] > g["tstr"]
        targets[f"tstr_within_{tstr_gap}_of_trtr"] = s["tstr"] >= r["tstr"] - tstr_gap
    c = result.get("baseline_copula")
    if c is not None:
        targets["detection_auc_below_copula"] = max(s["detection_auc"], 0.5) < max(c["detection_auc"], 0.5)
        if s["tstr"] is not None:
            targets["tstr_above_copula"] = s["tstr"] > c["tstr"]
    return targets


__all__: List[str] = ["BASELINES", "TableEvaluator", "baseline_rows", "copula_rows", "correlation_error", "gaussian_rows",
                      "smote_rows", "tabular_targets_met"]
