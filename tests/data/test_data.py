"""Tests of the data loaders: what they return, and the clear errors bad data gets before training."""

import numpy as np
import pytest
import torch
from PIL import Image

from qgfd_hf.data.core import (
    ImageCollator,
    Seq2SeqCollator,
    build_word_tokenizer,
    check_dataset_for_modality,
    check_image_fits_model,
    check_image_folder,
    check_text_fits,
    load_digits_dataset,
    load_image_folder,
    load_mrpc,
    make_reversal_dataset,
    train_test_split_dataset,
)


# -- digits ----------------------------------------------------------------------------------


def test_digits_splits_shapes_range_and_determinism():
    d = load_digits_dataset()
    assert len(d["train"]) == 1437 and len(d["test"]) == 360
    x = np.asarray(d["train"]["pixel_values"])
    assert x.shape == (1437, 1, 8, 8) and "float32" in str(d["train"].features["pixel_values"])
    assert x.min() == 0.0 and x.max() == 1.0
    assert sorted(set(d["test"]["label"])) == list(range(10))  # stratified: every class held out
    again = load_digits_dataset()
    assert np.array_equal(np.asarray(again["test"]["pixel_values"]), np.asarray(d["test"]["pixel_values"]))
    check_dataset_for_modality(d["train"], "image")
    check_image_fits_model(d["train"], 1, 8)
    with pytest.raises(ValueError, match=r"\[1, 8, 8\] but the model takes \[3, 32, 32\]"):
        check_image_fits_model(d["train"], 3, 32)


def test_image_collator_normalises_arrays_and_pil_images():
    col = ImageCollator(1, 4, image_mean=[0.5], image_std=[0.5])
    rows = [{"pixel_values": np.ones((1, 4, 4), np.float32)}, {"pixel_values": np.zeros((1, 4, 4), np.float32)}]
    out = col(rows)["pixel_values"]
    assert out.shape == (2, 1, 4, 4) and out[0].eq(1).all() and out[1].eq(-1).all()
    rgb = Image.new("RGB", (9, 7), (255, 255, 255))
    out = ImageCollator(3, 4)([{"image": rgb}])["pixel_values"]
    assert out.shape == (1, 3, 4, 4) and torch.allclose(out, torch.ones_like(out))
    with pytest.raises(ValueError, match="num_channels"):
        ImageCollator(2, 4)


# -- image folders ---------------------------------------------------------------------------


def _write_images(folder, n=3, size=(6, 6)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((np.random.default_rng(i).random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")


def test_image_folder_loads(tmp_path):
    _write_images(tmp_path / "imgs" / "cats")
    ds = load_image_folder(str(tmp_path / "imgs"))
    assert len(ds) == 3 and "image" in ds.column_names
    check_dataset_for_modality(ds, "image")
    batch = ImageCollator(3, 8)([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 3, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_image_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        check_image_folder(str(tmp_path / "empty"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"holds no images.*notes\.txt"):
        check_image_folder(str(tmp_path / "text"))
    _write_images(tmp_path / "mixed")
    (tmp_path / "mixed" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (tmp_path / "mixed" / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 of 5 image file\(s\) cannot be read: broken\.png .*empty\.jpg"):
        load_image_folder(str(tmp_path / "mixed"))


# -- MRPC-style pairs --------------------------------------------------------------------------


def _mrpc_csv(path, rows=None):
    import csv

    rows = rows or [
        {"sentence1": "The cat sat.", "sentence2": "A cat was sitting.", "label": 1, "idx": 0},
        {"sentence1": "It rained.", "sentence2": "Stocks fell.", "label": 0, "idx": 1},
        {"sentence1": "He left early.", "sentence2": "He departed early.", "label": 1, "idx": 2},
    ]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_mrpc_from_local_csv_json_parquet(tmp_path):
    ds = load_mrpc(_mrpc_csv(tmp_path / "train.csv"))
    assert ds.column_names == ["source", "target"] and len(ds) == 2  # label-1 pairs only
    assert ds[0] == {"source": "The cat sat.", "target": "A cat was sitting."}
    check_dataset_for_modality(ds, "text")
    import pandas as pd

    df = pd.read_csv(tmp_path / "train.csv")
    df.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "train.parquet")
    assert len(load_mrpc(str(tmp_path / "train.jsonl"))) == 2
    assert len(load_mrpc(str(tmp_path / "train.parquet"), positives_only=False)) == 3


def test_mrpc_errors(tmp_path):
    bad = _mrpc_csv(tmp_path / "bad.csv", [{"sentence1": "a", "text_b": "b", "label": 1}])
    with pytest.raises(ValueError, match=r"no column\(s\) \['sentence2'\]; it has \['sentence1', 'text_b', 'label'\]"):
        load_mrpc(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_mrpc(str(tmp_path / "missing.csv"))
    (tmp_path / "pairs.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unsupported extension '.xlsx'"):
        load_mrpc(str(tmp_path / "pairs.xlsx"))
    (tmp_path / "empty.csv").write_text("sentence1,sentence2,label\n")
    with pytest.raises(ValueError, match="hold no rows|Could not read"):
        load_mrpc(str(tmp_path / "empty.csv"))
    neg = _mrpc_csv(tmp_path / "neg.csv", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    with pytest.raises(ValueError, match="no row has label == 1"):
        load_mrpc(neg)


def test_mrpc_from_hub_offline_says_what_to_do(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="Could not load GLUE MRPC.*--data-files"):
        load_mrpc(None)


# -- the reversal task, tokenizer, collator ------------------------------------------------------


def test_reversal_dataset_and_tokenizer():
    ds = make_reversal_dataset(300, seed=1)
    assert len(ds) == 300 and len(set(ds["source"])) == 300
    for row in ds.select(range(20)):
        assert row["target"].split() == row["source"].split()[::-1]
        assert 3 <= len(row["source"].split()) <= 6
    assert make_reversal_dataset(300, seed=1)["source"] == ds["source"]
    tok = build_word_tokenizer()
    ids = tok("red cat sun")["input_ids"]
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0 and len(ids) == 4
    assert tok.decode(ids, skip_special_tokens=True) == "red cat sun"
    assert tok("purple")["input_ids"][0] == tok.unk_token_id
    train, test = train_test_split_dataset(ds, 50)
    assert len(train) == 250 and len(test) == 50 and not set(train["source"]) & set(test["source"])
    with pytest.raises(ValueError, match="distinct sequences"):
        make_reversal_dataset(100, vocab=("a", "b"), min_len=1, max_len=2)


def test_seq2seq_collator_and_length_checks():
    tok = build_word_tokenizer()
    ds = make_reversal_dataset(20)
    batch = Seq2SeqCollator(tok, max_length=7)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 7) and batch["attention_mask"].shape == (2, 7)
    assert batch["cond_input_ids"].shape[0] == 2 and batch["cond_attention_mask"].dtype == torch.long
    n = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, n - 1] == 1 and (batch["input_ids"][0, n:] == 0).all()  # </s>, then pads
    check_text_fits(ds, tok, 7)
    with pytest.raises(ValueError, match="longer than seq_len=4"):
        check_text_fits(ds, tok, 4)
    with pytest.raises(ValueError, match="more than the model's seq_len=3"):
        Seq2SeqCollator(tok, max_length=3)([ds[0]])


# -- modality checks ---------------------------------------------------------------------------


def test_modality_mismatch_and_bad_values_are_refused():
    from datasets import Dataset

    pairs = make_reversal_dataset(10)
    with pytest.raises(ValueError, match="does not fit modality 'image'.*use --modality text"):
        check_dataset_for_modality(pairs, "image")
    digits = load_digits_dataset()["test"]
    with pytest.raises(ValueError, match="does not fit modality 'text'.*use --modality image"):
        check_dataset_for_modality(digits, "text")
    with pytest.raises(ValueError, match="implemented for modalities"):
        check_dataset_for_modality(digits, "audio")
    with pytest.raises(ValueError, match="is empty"):
        check_dataset_for_modality(digits.select([]), "image")
    out_of_range = Dataset.from_dict({"pixel_values": [np.full((1, 8, 8), 16.0, np.float32)]})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_dataset_for_modality(out_of_range, "image")
    not_strings = Dataset.from_dict({"source": [1], "target": [2]})
    with pytest.raises(ValueError, match="must hold strings"):
        check_dataset_for_modality(not_strings, "text")
