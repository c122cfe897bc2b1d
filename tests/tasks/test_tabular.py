"""Tests of the tabular modality: the table loaders' checks, the column latents (exact round
trips, valid integers and categories), the never-fitted refusal, the scores against their
baselines, and tiny end-to-end runs of `train` -> `AutoModel` -> `pipeline` -> `sample` and of
`demo` through `qgfd_hf.cli.main` (qgfd_hf/tasks/tabular.py)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, pipeline

from qgfd_hf import QGFDTabularConfig, TabularQGFDDiffusionModel
from qgfd_hf.cli import main
from qgfd_hf.tasks.tabular import (
    TableEvaluator,
    TabularCollator,
    encode_table,
    fit_columns,
    gaussian_rows,
    load_sklearn_table,
    tabular_targets_met,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_ARGS = ["--preset", "tiny", "--batch-size", "8", "--no-progress", "--checkpoint-every", "0", "--warmup-steps", "0"]
TINY = dict(d_model=32, num_heads=4, num_layers=2, d_ff=64)
COLUMNS = [
    {"name": "x", "kind": "float"},
    {"name": "n", "kind": "int"},
    {"name": "color", "kind": "category", "categories": ["blue", "green", "red"]},
    {"name": "ok", "kind": "category", "categories": [False, True]},
]


def _table(n=40, seed=0):
    """A small mixed table: a skewed float, an int count, a 3-way string category, a bool, a label."""
    rng = np.random.default_rng(seed)
    color = rng.choice(["red", "green", "blue"], size=n)
    return pd.DataFrame({
        "x": np.round(rng.lognormal(size=n), 4),
        "n": rng.integers(0, 9, size=n),
        "color": color,
        "ok": rng.random(n) > 0.5,
        "y": np.where(color == "red", "pos", "neg"),
    })


def _refused(argv, capsys, pattern):
    import re

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(pattern, err), err


# -- loaders: bad input is refused before training ---------------------------------------


def test_bad_tables_are_refused_naming_file_column_and_value(tmp_path, capsys):
    train = ["train", "--modality", "tabular", "--output-dir", str(tmp_path / "out"), "--data-files"]
    good = tmp_path / "good.csv"
    _table().to_csv(good, index=False)
    _refused(train + [str(tmp_path / "nope.csv")], capsys, r"Data file .*nope\.csv' does not exist")
    (tmp_path / "t.xlsx").write_text("x")
    _refused(train + [str(tmp_path / "t.xlsx")], capsys, r"unsupported extension '\.xlsx'; allowed: \.csv, \.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    _refused(train + [str(tmp_path / "broken.parquet")], capsys, r"broken\.parquet' cannot be read as parquet")
    _refused(train + [str(good), "--label-column", "label"], capsys, r"no column\(s\) \['label'\] \(named by --label-column\); it has \['x', 'n'")
    _refused(train + [str(good), "--categorical-columns", "z"], capsys, r"no column\(s\) \['z'\] \(named by --categorical-columns\)")

    df = _table()
    df.loc[[3, 7], "x"] = np.nan
    df.to_csv(tmp_path / "nan.csv", index=False)
    _refused(train + [str(tmp_path / "nan.csv")], capsys, r"nan\.csv', column 'x': 2 empty or NaN cell\(s\), at rows \[3, 7\] .*csv lines \[5, 9\]")
    df = _table().astype({"x": object})
    df.loc[5, "x"] = "abc"
    df.to_csv(tmp_path / "text.csv", index=False)
    _refused(train + [str(tmp_path / "text.csv")], capsys, r"column 'x' holds numbers and 1 non-numeric value\(s\) \('abc' at rows \[5\].*--categorical-columns")
    df = _table().assign(c=3.0)
    df.to_csv(tmp_path / "const.csv", index=False)
    _refused(train + [str(tmp_path / "const.csv")], capsys, r"column 'c' is constant \(every row is 3\.0\)")
    _table(n=6).to_csv(tmp_path / "few.csv", index=False)
    _refused(train + [str(tmp_path / "few.csv")], capsys, r"few\.csv' has 6 rows; at least 10")
    _table(n=60).assign(id=[f"row{i}" for i in range(60)]).to_csv(tmp_path / "ids.csv", index=False)
    _refused(train + [str(tmp_path / "ids.csv")], capsys, r"column 'id' \(categorical\) has 60 distinct values in 60 rows")
    _table().drop(columns="ok").to_csv(tmp_path / "other.csv", index=False)
    _refused(train + [str(good), str(tmp_path / "other.csv")], capsys, r"other\.csv' has columns .* but .*good\.csv' has")
    _refused(["train", "--modality", "tabular", "--output-dir", str(tmp_path), "--data-dir", str(tmp_path)], capsys, "--data-dir is a folder; tables take --data-files")
    _refused(["train", "--modality", "tabular", "--output-dir", str(tmp_path), "--dataset", "wine", "--label-column", "y"], capsys, "has its own schema")
    _refused(["train", "--modality", "tabular", "--output-dir", str(tmp_path), "--dataset", "digits"], capsys, "is image data")
    _refused(train + [str(good), "--image-size", "8"], capsys, "--image-size is a image flag")


def test_unseen_category_is_refused_when_encoding():
    df = _table()
    columns = fit_columns(df, {"x": "float", "n": "int", "color": "category", "ok": "category", "y": "category"})
    assert columns[2]["categories"] == ["blue", "green", "red"] and columns[3]["categories"] == [False, True]
    new = df.head(3).copy()
    new.loc[1, "color"] = "purple"
    with pytest.raises(ValueError, match=r"column 'color': value\(s\) 'purple' never seen when the model was fitted; allowed: \['blue', 'green', 'red'\]"):
        encode_table(new, columns)
    with pytest.raises(ValueError, match="never seen"):
        TabularCollator(columns)([dict(r) for r in new.to_dict("records")])
    with pytest.raises(ValueError, match=r"lack the model's column\(s\) \['y'\]"):
        encode_table(df.drop(columns="y"), columns)


# -- the model: column latents, fitted statistics ----------------------------------------


def _rows(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(torch.randn(n, generator=g))  # skewed
    x[:5] = 0.0  # ties at the minimum
    return torch.stack([x, torch.randint(0, 9, (n,), generator=g).float(), torch.randint(0, 3, (n,), generator=g).float(),
                        torch.randint(0, 2, (n,), generator=g).float()], 1)


@pytest.mark.parametrize("transform", ["quantile", "standard"])
def test_column_latents_round_trip_exactly(transform):
    model = TabularQGFDDiffusionModel(QGFDTabularConfig(columns=COLUMNS, numeric_transform=transform, **TINY))
    assert model.latent_shape(2) == (2, 4, 3)  # one token per column; 3 categories -> width 3
    rows = _rows()
    model.fit_normalization(rows)
    x0 = model.tabular_to_latents(rows)
    torch.testing.assert_close(model.decode_latents(x0), rows, atol=1e-4, rtol=1e-4)
    # The numeric latents are about unit scale; the quantile transform's are normal scores,
    # bounded, and the skewed column's tail no longer sticks out (ties share a level).
    z = x0[:, 0, 0]
    assert 0.6 < float(z.std()) < 1.4 and abs(float(z.mean())) < 0.3
    if transform == "quantile":
        assert float(z.abs().max()) < 3.1 and torch.unique(z[:5]).numel() == 1
    else:
        assert float(z.max()) > 4


def test_decoded_noise_is_valid_rows():
    model = TabularQGFDDiffusionModel(QGFDTabularConfig(columns=COLUMNS, **TINY))
    rows = _rows()
    model.fit_normalization(rows)
    out = model.decode_latents(torch.randn(200, 4, 3) * 3)
    assert bool((out[:, 1] == out[:, 1].round()).all()) and out[:, 1].min() >= rows[:, 1].min() and out[:, 1].max() <= rows[:, 1].max()
    assert set(out[:, 2].tolist()) <= {0.0, 1.0, 2.0} and set(out[:, 3].tolist()) <= {0.0, 1.0}
    assert out[:, 0].min() >= rows[:, 0].min() and out[:, 0].max() <= rows[:, 0].max()  # quantiles: the training range


def test_many_categories_take_random_codes_and_still_decode():
    cats = [f"c{i}" for i in range(40)]
    cfg = QGFDTabularConfig(columns=[{"name": "z", "kind": "float"}, {"name": "c", "kind": "category", "categories": cats}], **TINY)
    assert cfg.latent_dim == 16  # capped: 40 categories get 16-wide random codes
    model = TabularQGFDDiffusionModel(cfg)
    rows = torch.stack([torch.randn(80), torch.arange(80.0) % 40], 1)
    model.fit_normalization(rows)
    torch.testing.assert_close(model.decode_latents(model.tabular_to_latents(rows))[:, 1], rows[:, 1])


def test_bad_features_and_configs_raise():
    model = TabularQGFDDiffusionModel(QGFDTabularConfig(columns=COLUMNS, **TINY))
    model.fit_normalization(_rows())
    bad = _rows()
    bad[4, 2] = 3.0
    with pytest.raises(ValueError, match=r"Column 'color' is categorical: `features\[:, 2\]` must hold the index \(0\.\.2\).* got 3\.0 in row 4"):
        model.tabular_to_latents(bad)
    bad[4, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.tabular_to_latents(bad)
    with pytest.raises(ValueError, match=r"`num_tokens`=3 applies to latent_space='mlp'"):
        QGFDTabularConfig(num_features=5, num_tokens=3, **TINY)
    with pytest.raises(ValueError, match="latent_space='mlp' .* numeric columns only"):
        QGFDTabularConfig(columns=COLUMNS, latent_space="mlp", **TINY)
    with pytest.raises(ValueError, match="`categories` must be a list of distinct values"):
        QGFDTabularConfig(columns=[{"name": "c", "kind": "category", "categories": ["a", "a"]}], **TINY)
    with pytest.raises(ValueError, match="duplicate names"):
        QGFDTabularConfig(columns=[{"name": "a", "kind": "float"}, {"name": "a", "kind": "int"}], **TINY)
    with pytest.raises(ValueError, match="Unknown numeric_transform"):
        QGFDTabularConfig(numeric_transform="log", **TINY)


@pytest.mark.parametrize("latent_space", ["columns", "mlp"])
def test_a_never_fitted_model_refuses_to_train_or_sample(latent_space, tmp_path):
    columns = COLUMNS if latent_space == "columns" else COLUMNS[:2]
    model = TabularQGFDDiffusionModel(QGFDTabularConfig(columns=columns, latent_space=latent_space, num_timesteps=10, **TINY))
    rows = _rows()[:, : len(columns)]
    assert not model.is_fitted
    for call in (lambda: model.compute_loss({"features": rows}), lambda: model.decode_latents(torch.zeros(model.latent_shape(2))),
                 lambda: model.diffusion_sample(2, num_inference_steps=2)):
        with pytest.raises(ValueError, match="never fitted to data.*fit_normalization"):
            call()
    model.save_pretrained(tmp_path / "unfitted")  # saved unfitted, it stays unfitted
    pipe = pipeline("qgfd-diffusion", model=str(tmp_path / "unfitted"), device="cpu")
    with pytest.raises(ValueError, match="never fitted"):
        pipe(num_samples=2, num_inference_steps=2, progress_bar=False)
    model.fit_normalization(rows)
    assert torch.isfinite(model.compute_loss({"features": rows})["loss"])
    model.save_pretrained(tmp_path / "fitted")
    again = AutoModel.from_pretrained(tmp_path / "fitted")
    assert again.is_fitted
    torch.testing.assert_close(again.decode_latents(again.tabular_to_latents(rows)), model.decode_latents(model.tabular_to_latents(rows)))


def test_the_label_is_drawn_from_its_frequencies_and_held_fixed(tmp_path):
    cfg = QGFDTabularConfig(columns=COLUMNS, label_column="color", num_timesteps=10, **TINY)
    model = TabularQGFDDiffusionModel(cfg).eval()
    rows = _rows(n=60)
    model.fit_normalization(rows)
    probs = torch.bincount(rows[:, 2].long(), minlength=3).float() / 60
    torch.testing.assert_close(model.adapter.label_probs, probs)
    # Training: the label's token is clean in x_t, so changing its noise changes nothing.
    x0, t = model.tabular_to_latents(rows), torch.full((60,), 9)
    noise = torch.randn_like(x0)
    other = noise.clone()
    other[:, 2] = torch.randn_like(other[:, 2])
    torch.testing.assert_close(model.diffusion_forward(x0, t, noise=noise), model.diffusion_forward(x0, t, noise=other))
    # Sampling (untrained): labels come out in their training frequencies, per sample from its own noise.
    model.save_pretrained(tmp_path / "m")
    pipe = pipeline("qgfd-diffusion", model=str(tmp_path / "m"), device="cpu")
    out = pipe(num_samples=600, num_inference_steps=2, seed=0, progress_bar=False)
    freq = pd.Series([o["row"]["color"] for o in out]).value_counts(normalize=True)
    assert np.allclose([freq.get(c, 0) for c in ["blue", "green", "red"]], probs.numpy(), atol=0.06)
    few = pipe(num_samples=600, num_inference_steps=2, seed=0, progress_bar=False, batch_size=7)
    assert [o["row"]["color"] for o in few] == [o["row"]["color"] for o in out]
    with pytest.raises(ValueError, match="`label_column`='x' must name a categorical column"):
        QGFDTabularConfig(columns=COLUMNS, label_column="x", **TINY)
    from qgfd_hf import QGFDSharedConfig, SharedQGFDDiffusionModel

    with pytest.raises(ValueError, match="the shared model generates all columns jointly"):
        SharedQGFDDiffusionModel(QGFDSharedConfig(modalities=["tabular"], tabular_config=cfg, latent_dim=16, **TINY))


# -- scores beside baselines -------------------------------------------------------------


@pytest.fixture(scope="module")
def wine():
    train, test, label = load_sklearn_table("wine")
    kinds = {c: ("category" if c == label else "float") for c in train.columns}
    return train, test, label, fit_columns(train, kinds)


def test_scores_know_real_from_noise(wine):
    train, test, label, columns = wine
    ev = TableEvaluator(train, test, columns, label, trees=30, detection_trees=20, forests=1)
    # Real rows (the held-out ones scored against themselves and the training rows) score well.
    real = ev.score(train)
    assert real["tstr"] > 0.9 and real["w1"] < 0.3 and real["tvd"] < 0.1
    # Noise: uniform over each column's range, random labels: far, detected, useless to a classifier.
    rng = np.random.default_rng(0)
    noise = pd.DataFrame({c["name"]: rng.uniform(train[c["name"]].min(), train[c["name"]].max(), len(train)) for c in columns if c["kind"] == "float"})
    noise[label] = rng.choice(columns[-1]["categories"], len(train))
    noise = noise[[c["name"] for c in columns]]
    bad = ev.score(noise)
    assert bad["w1"] > 2 * real["w1"] and bad["detection_auc"] > 0.95 and bad["tstr"] < 0.7
    # The Gaussian lies in between on W1, and is told apart less easily than noise.
    gauss = ev.score(gaussian_rows(train, columns, label, len(train)))
    assert real["w1"] < gauss["w1"] < bad["w1"] and gauss["detection_auc"] < bad["detection_auc"]
    assert gauss["label_counts"].keys() == real["label_counts"].keys()
    # The targets read the comparison: noise beats nothing.
    result = {"samples": bad, "baseline_real": dict(real, tstr=ev.tstr(train)), "baseline_gaussian": gauss}
    assert not any(tabular_targets_met(result).values())


def test_memorised_rows_are_flagged(wine):
    train, test, label, columns = wine
    ev = TableEvaluator(train, test, columns, label, trees=10, detection_trees=10, forests=1)
    assert ev.score(train.sample(len(train), replace=True, random_state=0))["dcr_ratio"] == 0.0
    assert 0.5 < ev.score(test)["dcr_ratio"] < 1.5


# -- the built-in tables: schemas and splits ------------------------------------------------

# name: (training rows, held-out rows, label or None, regression targets, numeric columns, label categories)
SCHEMAS = {
    "breast-cancer": (455, 114, "diagnosis", [], 30, ["benign", "malignant"]),
    "wine": (142, 36, "cultivar", [], 13, ["class_0", "class_1", "class_2"]),
    "diabetes": (353, 89, None, ["progression"], 11, None),
    "iris": (120, 30, "species", [], 4, ["setosa", "versicolor", "virginica"]),
    "linnerud": (16, 4, None, ["Weight", "Waist", "Pulse"], 6, None),
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_builtin_table_schema_and_split(name):
    from qgfd_hf.tasks.tabular import SKLEARN_TABLES, column_kinds

    n_train, n_test, label, targets, n_numeric, categories = SCHEMAS[name]
    train, test, got_label = load_sklearn_table(name)
    table = SKLEARN_TABLES[name]
    assert got_label == label == table.label and list(table.targets) == targets and table.num_train == n_train
    assert (len(train), len(test)) == (n_train, n_test) and list(train.columns) == list(test.columns)
    kinds = column_kinds(train, name, label)
    assert sum(k != "category" for k in kinds.values()) == n_numeric
    assert list(train.columns[-len(targets):]) == targets if targets else list(train.columns)[-1] == label
    # no row is in both splits (iris itself holds one duplicated row), and the split is fixed by the seed
    both = pd.concat([train, test])
    assert both.duplicated().sum() == (1 if name == "iris" else 0) and len(both) == n_train + n_test
    again, _, _ = load_sklearn_table(name)
    pd.testing.assert_frame_equal(train, again)
    if label is not None:  # stratified: the classes in the same proportions on both sides
        assert sorted(train[label].unique()) == categories and kinds[label] == "category"
        p, q = train[label].value_counts(normalize=True), test[label].value_counts(normalize=True)
        assert (p - q).abs().max() < 0.03
    else:
        assert all(kinds[t] in ("int", "float") for t in targets) and "category" not in kinds.values()
    assert not train.isna().any().any()
    if name == "diabetes":  # original units: ages in years, sex 1 / 2
        assert kinds["age"] == "int" and train["age"].between(19, 79).all() and set(train["sex"]) == {1, 2}
    if name == "wine":
        assert kinds["magnesium"] == kinds["proline"] == "int"


def test_table_names_and_aliases():
    from qgfd_hf.tasks.tabular import table_name

    assert table_name("breast_cancer") == "breast-cancer" and table_name("iris") == "iris"
    with pytest.raises(ValueError, match="Unknown table 'titanic'; allowed: breast-cancer, wine, diabetes, iris, linnerud"):
        load_sklearn_table("titanic")
    with pytest.raises(ValueError, match="`test_fraction` must be in"):
        load_sklearn_table("iris", test_fraction=1.5)


# -- end to end through the CLI ------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_train_each_builtin_table_for_three_steps(name, tmp_path, capsys):
    n_train, _, label, targets, _, _ = SCHEMAS[name]
    out = tmp_path / name
    code = main(["train", "--modality", "tabular", "--dataset", name, "--output-dir", str(out), "--max-steps", "3"] + TINY_ARGS)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert f"on {name} ({n_train} examples)" in stdout
    model = AutoModel.from_pretrained(out / "model")
    assert model.is_fitted and model.config.label_column == label
    names = [c["name"] for c in model.config.columns]
    assert names[-len(targets):] == targets if targets else names[-1] == label
    card = (out / "model" / "README.md").read_text()
    assert "scikit-learn" in card and "origin:" in card and "BSD-3-Clause" in card
    rows = pipeline("qgfd-diffusion", model=str(out / "model"), device="cpu")(num_samples=4, num_inference_steps=2, seed=0, progress_bar=False)
    assert len(rows) == 4 and list(rows[0]["row"]) == names




def test_train_on_a_csv_then_automodel_pipeline_and_sample(tmp_path, capsys):
    df = _table(n=48)
    df.to_csv(tmp_path / "table.csv", index=False)
    out = tmp_path / "run"
    code = main(["train", "--modality", "tabular", "--data-files", str(tmp_path / "table.csv"), "--label-column", "y",
                 "--output-dir", str(out), "--max-steps", "3"] + TINY_ARGS)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "latents 5 x 3" in stdout and "TabularQGFDDiffusionModel" in stdout  # one token per column, width 3
    model = AutoModel.from_pretrained(out / "model")
    assert model.is_fitted and [c["kind"] for c in model.config.columns] == ["float", "int", "category", "category", "category"]
    assert model.config.columns[4]["categories"] == ["neg", "pos"]
    rows = pipeline("qgfd-diffusion", model=str(out / "model"), device="cpu")(num_samples=20, num_inference_steps=3, seed=0, progress_bar=False)
    assert len(rows) == 20 and list(rows[0]["row"]) == ["x", "n", "color", "ok", "y"]
    for r in (o["row"] for o in rows):
        assert isinstance(r["x"], float) and df["x"].min() <= r["x"] <= df["x"].max()
        assert isinstance(r["n"], int) and 0 <= r["n"] <= 8
        assert r["color"] in {"red", "green", "blue"} and isinstance(r["ok"], bool) and r["y"] in {"pos", "neg"}
    code = main(["sample", str(out / "model"), "--num-samples", "12", "--num-inference-steps", "3", "--no-progress"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    sampled = pd.read_csv(out / "sample-seed0.csv")  # beside the model folder
    assert list(sampled.columns) == list(df.columns) and len(sampled) == 12 and sampled["n"].dtype == np.int64
    assert (out / "sample-seed0_marginals.png").read_bytes()[:4] == b"\x89PNG" and "12 sampled rows" in stdout


def test_the_saved_model_loads_and_samples_without_qgfd_hf(tmp_path):
    from helpers_subprocess import run_without_qgfd_hf

    model = TabularQGFDDiffusionModel(QGFDTabularConfig(columns=COLUMNS, num_timesteps=10, **TINY))
    model.fit_normalization(_rows())
    model.save_pretrained(tmp_path / "model")
    out = run_without_qgfd_hf(f"""
        from transformers import pipeline
        pipe = pipeline("qgfd-diffusion", model={str(tmp_path / "model")!r}, trust_remote_code=True)
        rows = pipe(num_samples=3, num_inference_steps=2, seed=0, progress_bar=False)
        print(sorted(rows[0]["row"]), rows[0]["row"]["color"] in ("blue", "green", "red"), type(pipe.model).__module__)
    """)
    assert "['color', 'n', 'ok', 'x'] True transformers_modules." in out


def test_demo_code_path_on_a_tiny_budget(tmp_path, capsys, monkeypatch):
    import functools

    import qgfd_hf.tasks.tabular as tabular

    # Small forests: the code path, not the numbers (the full demo's are in docs/modality_tabular.md).
    monkeypatch.setattr(tabular, "TableEvaluator", functools.partial(TableEvaluator, trees=10, detection_trees=10, forests=1))
    out = tmp_path / "demo"
    code = main(["demo", "--modality", "tabular", "--output-dir", str(out), "--max-steps", "3", "--num-samples", "60",
                 "--num-inference-steps", "3"] + TINY_ARGS)
    stdout, err = capsys.readouterr()
    assert code == 0, err
    demo = json.loads((out / "metrics.json").read_text())["demo"]
    m = demo["metrics"]
    assert m["num_train"] == 455 and m["num_heldout"] == 114 and m["samples"]["num_rows"] == 60
    for key in ("samples", "baseline_real", "baseline_gaussian", "baseline_copula", "baseline_smote"):
        assert {"tstr", "w1", "tvd", "corr_error", "detection_auc", "dcr_ratio"} <= set(m[key]) and 0 <= m[key]["tstr"] <= 1
    assert 0.85 < m["baseline_real"]["tstr"] <= 1.0 and m["baseline_real"]["w1"] < m["baseline_gaussian"]["w1"]
    assert set(demo["targets"]) == {"w1_below_gaussian", "detection_auc_below_gaussian", "tstr_above_gaussian", "tstr_within_0.03_of_trtr",
                                    "tstr_above_copula", "detection_auc_below_copula"}
    sampled = pd.read_csv(out / "samples.csv")
    assert len(sampled) == 60 and set(sampled["diagnosis"]) <= {"benign", "malignant"} and sampled.shape[1] == 31
    for name in ("samples_marginals.png", "samples_correlations.png", "loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert "TSTR accuracy" in stdout and "Gaussian" in stdout and "copula" in stdout and "SMOTE" in stdout and "detection AUC" in stdout
    card = (out / "model" / "README.md").read_text()
    assert "TSTR accuracy" in card and "load_breast_cancer" in card
