# coding=utf-8
"""Tables: data, defaults, demo and scores (the training side; the model is
`TabularQGFDDiffusionModel`; the scores and baselines are `qgfd_hf.metrics.tabular`).

- data: five real tables bundled with scikit-learn (`SKLEARN_TABLES`; `--dataset`), each with
  its label (classification: the class, generated first, the other columns given it) or its
  regression target(s) (generated jointly with the other columns): `breast-cancer` (the demo's:
  569 rows, 30 numeric columns, the diagnosis), `wine` (178 rows, 13 columns, the cultivar),
  `iris` (150 rows, 4 columns, the species), `diabetes` (442 rows, 10 columns in their original
  units, target: disease progression after one year) and `linnerud` (20 rows: 3 exercises, targets
  weight, waist and pulse); classification tables split 80/20 stratified by the label,
  regression tables 80/20 at random, seed 0; integral columns are integer columns. Or the
  user's csv / parquet / json files (`--data-files`, read through `datasets`) with numeric and
  categorical columns (string and bool columns, and those named in `--categorical-columns`)
  and an optional class label (`--label-column`, categorical). Everything is checked before
  training, with the file, column and value named (`check_table`);
- model: one token per column (see `TabularAdapter`): the denoiser attends across columns;
  the schema (kinds, categories) and the column statistics are fitted from the training rows
  by `build_model` and saved with the model;
- scores (`TableEvaluator`, `qgfd_hf/metrics/tabular.py`): TSTR (random forests trained on
  synthetic rows, tested on the real held-out rows: accuracy, or R^2 for regression targets)
  beside TRTR and three baselines (a per-class Gaussian, a Gaussian copula, SMOTE-style
  interpolation); W1 and TVD to the held-out rows, the correlation error, a random forest's
  real-vs-synthetic detection AUC, the distance to the closest training row (privacy);
- what a person looks at: `samples.csv` (the sampled rows, in the table's own columns and
  types), `marginals.png` (per-column histograms, real beside sampled) and
  `correlations.png` (the numeric columns' correlation matrices, real beside sampled); the
  PNGs are drawn by `_tabular_plots.py`.
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# The scores and baselines live in qgfd_hf/metrics/tabular.py; re-exported here for callers of this module.
from ..metrics.tabular import BASELINES, TableEvaluator, copula_rows, correlation_error, gaussian_rows, smote_rows, tabular_targets_met
from ._tabular_plots import save_correlations_png, save_marginals_png
from .base import ModalityTask, TaskData, diffusion_values, guidance_kwargs, pipeline_samples, register_task, sample_output

TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".json": "json", ".jsonl": "json"}
MIN_ROWS = 10


class SklearnTable(NamedTuple):
    """A table bundled with scikit-learn: its loader, the label column (classification) or the
    target columns (regression), how the model card names it, and where the data comes from."""

    loader: str
    label: Optional[str]
    targets: Tuple[str, ...]
    card_name: str
    source: str
    num_train: int  # training rows after the 80/20 split (checked by the tests)


_SKLEARN = "scikit-learn (BSD-3-Clause)"
SKLEARN_TABLES = {
    "breast-cancer": SklearnTable(
        "load_breast_cancer", "diagnosis", (), "scikit-learn breast cancer (sklearn.datasets.load_breast_cancer)",
        f"Breast Cancer Wisconsin (Diagnostic), Wolberg, Street and Mangasarian, UCI Machine Learning Repository (1995), via {_SKLEARN}", 455),
    "wine": SklearnTable(
        "load_wine", "cultivar", (), "scikit-learn wine (sklearn.datasets.load_wine)",
        f"Wine, Forina et al., UCI Machine Learning Repository (1991), via {_SKLEARN}", 142),
    "diabetes": SklearnTable(
        "load_diabetes", None, ("progression",), "scikit-learn diabetes (sklearn.datasets.load_diabetes, original units)",
        f"Diabetes, Efron, Hastie, Johnstone and Tibshirani, 'Least Angle Regression', Annals of Statistics (2004), via {_SKLEARN}", 353),
    "iris": SklearnTable(
        "load_iris", "species", (), "scikit-learn iris (sklearn.datasets.load_iris)",
        f"Iris, Fisher, 'The use of multiple measurements in taxonomic problems', Annals of Eugenics (1936), via {_SKLEARN}", 120),
    "linnerud": SklearnTable(
        "load_linnerud", None, ("Weight", "Waist", "Pulse"), "scikit-learn Linnerud (sklearn.datasets.load_linnerud)",
        f"Linnerud, Tenenhaus, 'La regression PLS: theorie et pratique' (1998), via {_SKLEARN}", 16),
}
TABLE_ALIASES = {"breast_cancer": "breast-cancer"}  # the name before issue 24


# ----------------------------------------------------------------------------------------
# Data: reading, checking, the schema, encoding
# ----------------------------------------------------------------------------------------


def table_name(name: str) -> str:
    """The canonical `--dataset` name of a scikit-learn table (aliases resolved); unknown names raise."""
    name = TABLE_ALIASES.get(name, name)
    if name not in SKLEARN_TABLES:
        raise ValueError(f"Unknown table {name!r}; allowed: {', '.join(SKLEARN_TABLES)}.")
    return name


def load_sklearn_table(name: str, test_fraction: float = 0.2, seed: int = 0):
    """(train, test, label column or None) of a scikit-learn table as pandas DataFrames: the real
    rows shipped with scikit-learn (diabetes in its original units), a class label as a column
    of category names, regression targets as numeric columns after the inputs, columns whose
    values are all whole numbers as int64; split stratified by the label (classification) or at
    random (regression) with a fixed seed. The regression targets are
    `SKLEARN_TABLES[name].targets`."""
    import pandas as pd
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    table = SKLEARN_TABLES[table_name(name)]
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
    bunch = getattr(sklearn.datasets, table.loader)(**({"scaled": False} if table.loader == "load_diabetes" else {}))
    df = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
    if table.label is not None:
        df[table.label] = np.asarray(bunch.target_names, dtype=object)[bunch.target].astype(str)
    else:
        target = np.asarray(bunch.target, dtype=np.float64).reshape(len(df), -1)
        for j, col in enumerate(table.targets):
            df[col] = target[:, j]
    for col in df.columns:
        if col != table.label and np.all(df[col].to_numpy() == np.round(df[col].to_numpy())):
            df[col] = df[col].astype("int64")
    stratify = df[table.label] if table.label is not None else None
    train, test = train_test_split(df, test_size=test_fraction, random_state=seed, stratify=stratify)
    return train.sort_index().reset_index(drop=True), test.sort_index().reset_index(drop=True), table.label


def read_table_files(files: Sequence[str]):
    """The rows of csv / parquet / json files (one table, read through `datasets`) as a pandas
    DataFrame, each file checked: it exists, it reads, it has rows, the files share columns."""
    import pandas as pd
    from datasets import load_dataset

    files = [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    if not files:
        raise ValueError("No data files given (--data-files table.csv).")
    frames, first_cols = [], None
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"Data file {f!r} does not exist.")
        ext = os.path.splitext(f)[1].lower()
        if ext not in TABLE_FORMATS:
            raise ValueError(f"Data file {f!r}: unsupported extension {ext!r}; allowed: {', '.join(TABLE_FORMATS)}.")
        try:
            df = load_dataset(TABLE_FORMATS[ext], data_files=[f], split="train").to_pandas()
        except Exception as e:  # pyarrow / pandas raise many types on broken files
            raise ValueError(f"Data file {f!r} cannot be read as {TABLE_FORMATS[ext]} ({type(e).__name__}: {e}).") from e
        if len(df) == 0:
            raise ValueError(f"Data file {f!r} holds no rows.")
        if first_cols is not None and list(df.columns) != first_cols:
            raise ValueError(f"Data file {f!r} has columns {list(df.columns)}, but {files[0]!r} has {first_cols}; one table needs the same columns.")
        first_cols = list(df.columns)
        check_cells(df, f"Data file {f!r}", csv=ext == ".csv")
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _rows(index, csv: bool) -> str:
    shown = [int(i) for i in index[:5]]
    where = f"rows {shown}" + (" (counting data rows from 0; csv lines " + str([i + 2 for i in shown]) + ")" if csv else " (from 0)")
    return where + (f" and {len(index) - 5} more" if len(index) > 5 else "")


def check_cells(df, what: str, csv: bool = False) -> None:
    """Raise on empty / NaN cells, naming the column and the rows."""
    for col in df.columns:
        missing = np.flatnonzero(df[col].isna().to_numpy())
        if len(missing):
            raise ValueError(
                f"{what}, column {col!r}: {len(missing)} empty or NaN cell(s), at {_rows(missing, csv)}. "
                "Every cell needs a value: fill or drop those rows before training."
            )


def _is_numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def column_kinds(df, what: str, label_column: Optional[str] = None, categorical_columns: Sequence[str] = ()) -> Dict[str, str]:
    """Each column's kind ("float", "int" or "category") from its dtype and the flags, after
    checking the table: enough rows, the named columns exist, no empty cells, no stray text in
    a numeric column, no constant column, no identifier-like categorical column."""
    import pandas as pd

    have = list(df.columns)
    named = ([label_column] if label_column is not None else []) + list(categorical_columns)
    missing = [c for c in named if c not in have]
    if missing:
        flag = "--label-column" if label_column in missing else "--categorical-columns"
        raise ValueError(f"{what} has no column(s) {missing} (named by {flag}); it has {have}.")
    if len(df) < MIN_ROWS:
        raise ValueError(f"{what} has {len(df)} rows; at least {MIN_ROWS} are needed to fit the column statistics and train.")
    check_cells(df, what)
    kinds = {}
    for col in have:
        s = df[col]
        if col in named or pd.api.types.is_bool_dtype(s):
            kinds[col] = "category"
        elif _is_numeric(s):
            kinds[col] = "int" if pd.api.types.is_integer_dtype(s) else "float"
        else:
            numbers = pd.to_numeric(s, errors="coerce")
            bad = np.flatnonzero(numbers.isna().to_numpy())
            if numbers.notna().mean() >= 0.5:  # mostly numbers: a numeric column with stray text
                values = [repr(v) for v in s.iloc[bad[:3]]]
                raise ValueError(
                    f"{what}, column {col!r} holds numbers and {len(bad)} non-numeric value(s) ({', '.join(values)} at "
                    f"{_rows(bad, False)}). A numeric column takes numbers only; fix those cells, or name the column in "
                    "--categorical-columns to treat every value as a category."
                )
            kinds[col] = "category"
        distinct = s.nunique()
        if distinct < 2:
            raise ValueError(f"{what}, column {col!r} is constant (every row is {_python(s.iloc[0])!r}): it carries nothing to learn; drop it.")
        if kinds[col] == "category" and distinct > max(20, len(df) // 2):
            role = "the label column" if col == label_column else "categorical"
            raise ValueError(
                f"{what}, column {col!r} ({role}) has {distinct} distinct values in {len(df)} rows: that looks like an "
                "identifier or a continuous value, not categories. Drop it, or leave it out of --categorical-columns / --label-column."
            )
    return kinds


def _python(value):
    """numpy scalars -> plain Python values (JSON in config.json)."""
    return value.item() if hasattr(value, "item") else value


def fit_columns(df, kinds: Dict[str, str]) -> List[dict]:
    """The schema `QGFDTabularConfig(columns=...)` takes, fitted from the training rows: each
    column's name, kind and (categorical) sorted categories."""
    columns = []
    for col in df.columns:
        c = {"name": str(col), "kind": kinds[col]}
        if kinds[col] == "category":
            c["categories"] = [_python(v) for v in sorted(df[col].unique().tolist(), key=lambda v: (str(type(v)), v))]
        columns.append(c)
    return columns


def encode_table(df, columns: Sequence[dict], what: str = "The rows") -> np.ndarray:
    """Rows -> the model's `features` [N, F] float32 (categories as their indices); a column the
    model does not know, or a category never seen when it was fitted, raises."""
    names = [c["name"] for c in columns]
    missing = [n for n in names if n not in df.columns]
    if missing:
        raise ValueError(f"{what} lack the model's column(s) {missing}; the model's columns are {names}.")
    out = np.zeros((len(df), len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        values = df[c["name"]]
        if values.isna().any():
            raise ValueError(f"{what}, column {c['name']!r}: {int(values.isna().sum())} empty or NaN cell(s); every cell needs a value.")
        if c["kind"] == "category":
            index = {v: i for i, v in enumerate(c["categories"])}
            unseen = sorted({repr(v) for v in values if v not in index})
            if unseen:
                raise ValueError(
                    f"{what}, column {c['name']!r}: value(s) {', '.join(unseen[:5])} never seen when the model was fitted; "
                    f"allowed: {c['categories'][:20]}."
                )
            out[:, j] = [index[v] for v in values]
        else:
            try:
                out[:, j] = values.to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{what}, column {c['name']!r} is numeric in the model but holds non-numbers ({e}).") from e
    return out


def rows_to_frame(rows: Sequence[dict], columns: Sequence[dict]):
    """The pipeline's rows (column -> value dicts) as a DataFrame in the model's column order and dtypes."""
    import pandas as pd

    df = pd.DataFrame([dict(r) for r in rows], columns=[c["name"] for c in columns])
    for c in columns:
        if c["kind"] == "int":
            df[c["name"]] = df[c["name"]].astype("int64")
        elif c["kind"] == "float":
            df[c["name"]] = df[c["name"]].astype("float64")
    df.attrs["qgfd_columns"] = [dict(c) for c in columns]  # the schema travels with the frame
    return df


class TabularCollator:
    """Raw rows (dicts, as a `datasets.Dataset` yields them) -> `{"features": [B, F]}` float32,
    in the model's column order, categories as their indices (`encode_table`)."""

    def __init__(self, columns: Sequence[dict]):
        self.columns = list(columns)
        self.names = [c["name"] for c in self.columns]
        self.index = {j: {v: i for i, v in enumerate(c["categories"])} for j, c in enumerate(self.columns) if c["kind"] == "category"}

    def __call__(self, rows: List[dict]):
        import torch

        out = np.zeros((len(rows), len(self.names)), dtype=np.float32)
        for i, r in enumerate(rows):
            for j, name in enumerate(self.names):
                v = r[name]
                if j in self.index:
                    if v not in self.index[j]:
                        raise ValueError(f"Column {name!r}: value {v!r} never seen when the model was fitted; allowed: {self.columns[j]['categories'][:20]}.")
                    v = self.index[j][v]
                out[i, j] = v
        return {"features": torch.from_numpy(out)}


# ----------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------


@register_task
class TabularTask(ModalityTask):
    name = "tabular"
    summary = "tables: scikit-learn breast cancer / wine / diabetes / iris / linnerud, or your csv / parquet / json"
    datasets = tuple(SKLEARN_TABLES)
    data_help = "tabular: csv / parquet / json tables (numeric and categorical columns; --label-column)"
    # the formats tables are read from (TABLE_FORMATS), so that samples can be fed back as --data-files
    output_suffixes = {".csv": "the sampled rows", ".parquet": "the sampled rows", ".json": "the sampled rows, a JSON list of records",
                       ".jsonl": "the sampled rows, a JSON line each"}
    defaults = dict(
        # one token per column, each a scalar (a quantile-normalised value, or a +-1 code of a
        # binary category): 31 tokens of width 1 for breast cancer; 0.27 M parameters
        d_model=64, num_heads=4, num_layers=3, d_ff=128,
        # columns have no order: a learned embedding per column instead of sinusoids
        position_embedding="learned",
        num_timesteps=1000, beta_schedule="cosine", prediction_type="v",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        model_kwargs=dict(numeric_transform="quantile", num_quantiles=1000),
        # 3 layers x 1400 steps cost about what 2 x 2000 did and scored TSTR 0.937 against 0.926
        # (one sample set each; the sampling seed alone moves TSTR by ~0.004; docs/modality_tabular.md)
        max_steps=1400, batch_size=64, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=1000,
        # sampling: as many rows as the training set (None), so every generator scores alike
        num_samples=None, sampler="ddim", num_inference_steps=50,
    )

    def settings(self, args, for_demo: bool = False) -> Dict[str, object]:
        """The defaults, with the batch no larger than a built-in table's training rows (linnerud
        has 16: it trains full-batch); `--batch-size` still overrides."""
        s = super().settings(args, for_demo)
        name = TABLE_ALIASES.get(getattr(args, "dataset", None), getattr(args, "dataset", None))
        if getattr(args, "data_files", None) is None and name in SKLEARN_TABLES:
            s["batch_size"] = min(s["batch_size"], SKLEARN_TABLES[name].num_train)
        return s

    def add_arguments(self, group) -> None:
        group.add_argument("--label-column", default=None, help="tabular: the class label column (categorical; scored by TSTR in the demo)")
        group.add_argument("--categorical-columns", nargs="+", default=None,
                           help="tabular: columns to treat as categorical besides string / bool ones (e.g. integer codes)")
        group.add_argument("--numeric-transform", default=None, choices=("quantile", "standard"),
                           help="tabular: numeric columns to the latent by their quantiles (default) or (x - mean) / std")

    def load_data(self, args, settings) -> TaskData:
        from datasets import Dataset

        if getattr(args, "data_dir", None) is not None:
            raise ValueError("--data-dir is a folder; tables take --data-files table.csv (csv, parquet or json) or --dataset.")
        files = getattr(args, "data_files", None)
        label = getattr(args, "label_column", None)
        forced = list(getattr(args, "categorical_columns", None) or [])
        if files and args.dataset is not None:
            raise ValueError("Give either --dataset or --data-files, not both.")
        if files:
            what = f"The table {[os.path.basename(str(f)) for f in files]}" if len(files) > 1 else f"Data file {str(files[0])!r}"
            df = read_table_files(files)
            kinds = column_kinds(df, what, label, forced)
            data = TaskData(Dataset.from_pandas(df, preserve_index=False), "table:" + ",".join(os.path.abspath(str(f)) for f in files))
        else:
            name = TABLE_ALIASES.get(args.dataset, args.dataset) or self.datasets[0]
            if name not in SKLEARN_TABLES:
                raise ValueError(f"Unknown tabular --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-files for your table).")
            table = SKLEARN_TABLES[name]
            train, test, builtin_label = load_sklearn_table(name, seed=0)
            if label is not None or forced:
                schema = f"label column {builtin_label!r}" if builtin_label is not None else f"regression target(s) {list(table.targets)}"
                raise ValueError(f"--dataset {name} has its own schema ({schema}); drop --label-column / --categorical-columns.")
            label = builtin_label
            kinds = column_kinds(train, f"The table {name!r}", label)
            data = TaskData(Dataset.from_pandas(train, preserve_index=False), name, test=Dataset.from_pandas(test, preserve_index=False),
                            card_name=f"{table.card_name}; origin: {table.source}")
            data.info["targets"] = list(table.targets)
        data.info.update(kinds=kinds, label_column=label)
        return data

    def build_model(self, args, data, settings):
        import torch

        from .. import create_qgfd_diffusion_model

        if args.backbone is not None or args.denoiser == "pretrained" or getattr(args, "denoiser_weights", None) is not None:
            raise ValueError("Tables have no pretrained backbone: drop --backbone / --denoiser pretrained / --denoiser-weights (the denoiser is a fresh QGFD Transformer).")
        train = data.train.to_pandas()
        # The training path fits every statistic: the schema's categories here, the column
        # quantiles / mean / std in `fit_normalization` (both saved with the model).
        columns = fit_columns(train, data.info["kinds"])
        model_kwargs = dict(settings.get("model_kwargs", {}))
        if getattr(args, "numeric_transform", None) is not None:
            model_kwargs["numeric_transform"] = args.numeric_transform
        # A class label is generated first and the other columns given it (TabDDPM's class-conditional sampling).
        kwargs = dict(diffusion_values(args, settings), columns=columns, label_column=data.info["label_column"], **model_kwargs)
        model, _, _ = create_qgfd_diffusion_model("tabular", None, None, **kwargs)
        model.fit_normalization(torch.from_numpy(encode_table(train, columns, f"The table {data.name!r}")))
        return model, None, TabularCollator(columns)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        from transformers import AutoConfig

        columns = AutoConfig.from_pretrained(model_dir).columns
        n = settings.get("num_samples") or len(data.train)
        out = pipeline_samples(model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"], sampler=settings["sampler"],
                               seed=args.seed, progress=not args.no_progress, output_type="data")
        return rows_to_frame([o["row"] for o in out], columns)

    def evaluator(self, data, seed: int = 0, **kwargs) -> TableEvaluator:
        """The `TableEvaluator` of `data` (its held-out rows, label or regression targets)."""
        if data.test is None:
            raise ValueError(f"Tabular samples are scored against held-out rows; the data {data.name!r} has none.")
        train = data.train.to_pandas()
        columns = fit_columns(train, data.info["kinds"])
        return TableEvaluator(train, data.test.to_pandas(), columns, data.info["label_column"], seed=seed,
                              targets=data.info.get("targets") or None, **kwargs)

    def evaluate(self, samples, data, settings):
        scores = self.evaluator(data).evaluate(samples)
        return {"metrics": scores, "targets": tabular_targets_met(scores)}

    def write_samples(self, samples, data, output_dir, prefix="samples", suffix=".csv", labels=None):
        """The rows as `{prefix}{suffix}` (csv, parquet, json or jsonl: `output_suffixes`), and
        `{prefix}_marginals.png` / `{prefix}_correlations.png` beside them."""
        os.makedirs(output_dir, exist_ok=True)
        columns = _columns_of_frame(samples, data)
        real = data.train.to_pandas() if data is not None else None
        paths = {"samples": os.path.join(output_dir, f"{prefix}{suffix}")}
        if suffix == ".csv":
            samples.to_csv(paths["samples"], index=False)
        elif suffix == ".parquet":
            samples.to_parquet(paths["samples"], index=False)
        elif suffix in (".json", ".jsonl"):
            samples.to_json(paths["samples"], orient="records", lines=suffix == ".jsonl")
        else:
            raise ValueError(f"Tables are written as {', '.join(self.output_suffixes)}, got {suffix!r}.")
        paths["marginals"] = save_marginals_png(samples, real, columns, os.path.join(output_dir, f"{prefix}_marginals.png"))
        if real is not None and sum(c["kind"] != "category" for c in columns) >= 2:
            paths["correlations"] = save_correlations_png(samples, real, columns, os.path.join(output_dir, f"{prefix}_correlations.png"))
        return paths

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        gens = [("model", m["samples"]), ("real rows", m["baseline_real"])]
        gens += [(name, m[f"baseline_{key}"]) for key, name in (("gaussian", "Gaussian"), ("copula", "copula"), ("smote", "SMOTE"))
                 if f"baseline_{key}" in m]
        s = m["samples"]
        fmt = lambda v: f"{v:10.3f}" if v is not None else f"{'-':>10s}"
        row = lambda label, key: f"  {label:40s}" + "".join(fmt(g[key]) for _, g in gens)
        lines = [
            f"Sample quality ({s['num_rows']} sampled rows; {m['num_heldout']} real held-out rows; classifiers: random forests):",
            f"  {'':40s}" + "".join(f"{name:>10s}" for name, _ in gens),
        ]
        if s["tstr"] is not None:
            what = "R^2" if m.get("tstr_metric") == "r2" else "accuracy"
            lines.append(row(f"TSTR {what} on held-out (higher=better)", "tstr"))
        lines.append(row("mean W1, standardised (lower=better)", "w1"))
        if s["tvd"] is not None:
            lines.append(row("categorical TVD (lower=better)", "tvd"))
        if s.get("corr_error") is not None:
            lines.append(row("correlation error (lower=better)", "corr_error"))
        lines.append(row("detection AUC (0.5=best)", "detection_auc"))
        lines.append(row("closest-row distance ratio (1=no copies)", "dcr_ratio"))
        lines.append(row("spread: std / real std, mean (1=best)", "spread_ratio"))
        if "label_counts" in s:
            lines.append(f"  label counts: model {s['label_counts']}, real training rows {m['baseline_real']['label_counts']}")
        lines.append("  (real rows: TSTR is TRTR, trained on the real training rows; distances from as many training rows; detection:")
        lines.append("   held-out vs training rows. Baselines fitted to the training rows, per class: a full-covariance Gaussian,")
        lines.append("   a Gaussian copula with empirical marginals, SMOTE interpolation between same-class nearest neighbours)")
        return lines

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        s, r = m["samples"], m["baseline_real"]
        baselines = [(name, m[f"baseline_{key}"]) for key, name in (("gaussian", "per-class Gaussian"), ("copula", "Gaussian copula"),
                                                                     ("smote", "SMOTE")) if f"baseline_{key}" in m]
        out = {}
        if s["tstr"] is not None:
            what = "R^2" if m.get("tstr_metric") == "r2" else "accuracy"
            out[f"TSTR {what} (random forest, real held-out rows)"] = round(s["tstr"], 3)
            out["TSTR: TRTR (trained on the real training rows)"] = round(r["tstr"], 3)
            out.update({f"TSTR: {name}": round(g["tstr"], 3) for name, g in baselines})
        out["mean Wasserstein-1 to held-out rows, standardised numeric columns"] = round(s["w1"], 3)
        out.update({f"Wasserstein-1: {name}": round(g["w1"], 3) for name, g in baselines})
        out["real-vs-synthetic detection AUC (random forest, 5-fold)"] = round(s["detection_auc"], 3)
        out.update({f"detection AUC: {name}": round(g["detection_auc"], 3) for name, g in baselines})
        return out

    # -- the `sample` command ---------------------------------------------------------------

    def sample_hint(self, model_dir: str) -> str:
        return f"qgfd-hf sample {model_dir} --num-samples 500"

    def sample_command(self, model, args) -> List[str]:
        from transformers import AutoConfig

        out_dir, prefix, suffix = sample_output(model, args, self)  # refused before sampling
        columns = AutoConfig.from_pretrained(model).columns
        out = pipeline_samples(model, num_samples=args.num_samples, num_inference_steps=args.num_inference_steps, sampler=args.sampler,
                               seed=args.seed, progress=not args.no_progress, output_type="data", **guidance_kwargs(args))
        samples = rows_to_frame([o["row"] for o in out], columns)
        paths = self.write_samples(samples, None, out_dir, prefix=prefix, suffix=suffix)
        return [f"{len(samples)} sampled rows:"] + [f"  {what:15s} {os.path.abspath(p)}" for what, p in paths.items()]


def _columns_of_frame(samples, data: Optional[TaskData]) -> List[dict]:
    """The schema of sampled rows: the model's (`rows_to_frame`), else the training data's, else
    read off the frame's dtypes."""
    if "qgfd_columns" in samples.attrs:
        return samples.attrs["qgfd_columns"]
    if data is not None:
        return fit_columns(data.train.to_pandas(), data.info["kinds"])
    import pandas as pd

    kinds = {c: ("float" if pd.api.types.is_float_dtype(samples[c]) else "int" if _is_numeric(samples[c]) else "category") for c in samples.columns}
    return fit_columns(samples, kinds)


__all__ = [
    "BASELINES", "SKLEARN_TABLES", "SklearnTable", "TableEvaluator", "TabularCollator", "TabularTask", "column_kinds", "copula_rows",
    "correlation_error", "encode_table", "fit_columns", "gaussian_rows", "load_sklearn_table", "read_table_files", "rows_to_frame",
    "smote_rows", "table_name", "tabular_targets_met",
]
