# coding=utf-8
"""Datasets for training QGFD diffusion models, checked before training starts.

Every loader returns a `datasets.Dataset` (or a `DatasetDict` of splits) with the columns a
modality's collator reads:

| modality | columns                                | collator output (the `batch` of `compute_loss`) |
|----------|----------------------------------------|-------------------------------------------------|
| image    | `pixel_values` ([C, H, W] in [0, 1])   | `pixel_values` `[B, C, H, W]`, normalised         |
|          | or `image` (PIL, from an image folder) |                                                 |
| text     | `source`, `target` (strings)           | `input_ids`, `attention_mask` `[B, L]` (target); |
|          |                                        | `cond_input_ids`, `cond_attention_mask` (source) |

Sources:

- `load_digits_dataset`: scikit-learn's 8x8 digits (1797 real images, shipped with
  scikit-learn: no download), split into train / test with a fixed seed.
- `load_image_folder`: `datasets.load_dataset("imagefolder", data_dir=...)`, after checking
  that the folder holds images and that every one of them opens.
- `load_hub_image_dataset`: e.g. CIFAR-10 through `datasets.load_dataset("cifar10")` (online).
- `load_mrpc`: GLUE MRPC paraphrase pairs through `datasets.load_dataset("glue", "mrpc")`
  (online) or local csv / json / parquet files with the same columns.
- `make_reversal_dataset` + `build_word_tokenizer`: the generated seq2seq task of the text
  demo (a word sequence -> the same words reversed) with a word-level tokenizer built offline.

Bad data raises a `ValueError` that says what is wrong and what is allowed, before training.
"""

from __future__ import annotations

import os
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TABLE_EXTENSIONS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
MRPC_COLUMNS = ("sentence1", "sentence2", "label")
MODALITY_COLUMNS = {"image": (("pixel_values",), ("image",)), "text": (("source", "target"),)}

# The text demo's vocabulary: short, distinct English words (one token each).
REVERSAL_VOCAB = ("red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "star", "rock")
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's pad / eos / unk convention


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------


def check_columns(dataset, required: Sequence[str], what: str = "the dataset") -> None:
    """Raise if `dataset` lacks one of `required` columns (naming the columns it has)."""
    have = list(dataset.column_names)
    missing = [c for c in required if c not in have]
    if missing:
        raise ValueError(f"{what} has no column(s) {missing}; it has {have}. Needed: {list(required)}.")


def check_dataset_for_modality(dataset, modality: str, what: str = "the dataset") -> None:
    """Raise if the dataset cannot feed a model of `modality` (wrong columns, empty, bad values)."""
    if modality not in MODALITY_COLUMNS:
        raise ValueError(f"Training data is implemented for modalities {sorted(MODALITY_COLUMNS)}, got {modality!r}.")
    if len(dataset) == 0:
        raise ValueError(f"{what} is empty.")
    options = MODALITY_COLUMNS[modality]
    have = set(dataset.column_names)
    if not any(set(cols) <= have for cols in options):
        wanted = " or ".join(str(list(c)) for c in options)
        hint = ""
        if modality == "image" and {"source", "target"} <= have:
            hint = " It looks like text pairs: use --modality text."
        elif modality == "text" and ({"pixel_values", "image"} & have):
            hint = " It looks like images: use --modality image."
        raise ValueError(f"{what} does not fit modality {modality!r}: it needs columns {wanted}, it has {sorted(have)}.{hint}")
    if modality == "image" and "pixel_values" in have:
        first = np.asarray(dataset[0]["pixel_values"], dtype=np.float32)
        if first.ndim != 3:
            raise ValueError(f"{what}: `pixel_values` must be [C, H, W] per row, got shape {list(first.shape)}.")
        if not np.isfinite(first).all() or first.min() < 0 or first.max() > 1:
            raise ValueError(f"{what}: `pixel_values` must be finite and in [0, 1], got range [{first.min()}, {first.max()}].")
    if modality == "text":
        for col in ("source", "target"):
            value = dataset[0][col]
            if not isinstance(value, str):
                raise ValueError(f"{what}: column {col!r} must hold strings, got {type(value).__name__}.")


def check_image_fits_model(dataset, num_channels: int, image_size: int, what: str = "the dataset") -> None:
    """Raise if `pixel_values` rows are not [num_channels, image_size, image_size] (an image
    column is resized and converted by the collator instead, so it always fits)."""
    if "pixel_values" not in dataset.column_names:
        return
    shape = list(np.asarray(dataset[0]["pixel_values"]).shape)
    if shape != [num_channels, image_size, image_size]:
        raise ValueError(
            f"{what}: images are {shape} but the model takes [{num_channels}, {image_size}, {image_size}] "
            "(num_channels, image_size, image_size); build the model for this data or resize it."
        )


# ----------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------


def load_digits_dataset(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as a `DatasetDict` with "train" and "test" splits.

    Columns: `pixel_values` (float32 [1, 8, 8], the 0..16 intensities divided by 16, so in
    [0, 1]) and `label` (0..9). The split is stratified by label, fixed by `seed`.
    """
    from datasets import Dataset, DatasetDict
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}.")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels)

    def split(idx):
        return Dataset.from_dict({"pixel_values": images[idx], "label": labels[idx]})

    return DatasetDict(train=split(np.sort(idx_train)), test=split(np.sort(idx_test)))


def _list_files(data_dir: str) -> List[str]:
    out = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return sorted(out)


def check_image_folder(data_dir: str) -> List[str]:
    """The image files in `data_dir` (recursively); raise if there are none or any fails to open."""
    from PIL import Image

    if not os.path.isdir(data_dir):
        raise ValueError(f"Image folder {data_dir!r} does not exist or is not a folder.")
    files = _list_files(data_dir)
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ValueError(f"Image folder {data_dir!r} is empty.")
    if not images:
        others = [os.path.relpath(f, data_dir) for f in files[:5]]
        raise ValueError(f"Image folder {data_dir!r} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}); it has e.g. {others}.")
    bad = []
    for f in images:
        try:
            with Image.open(f) as im:
                im.verify()  # reads the header and checks the file's integrity without decoding it all
            with Image.open(f) as im:
                im.load()
        except Exception as e:  # PIL raises many types for broken files
            bad.append(f"{os.path.relpath(f, data_dir)} ({type(e).__name__}: {e})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"Image folder {data_dir!r}: {len(bad)} of {len(images)} image file(s) cannot be read: {shown}.")
    return images


def load_image_folder(data_dir: str, split: str = "train"):
    """`datasets.load_dataset("imagefolder", data_dir=...)` after `check_image_folder`; column `image`."""
    from datasets import load_dataset

    check_image_folder(data_dir)
    ds = load_dataset("imagefolder", data_dir=data_dir, split=split)
    check_columns(ds, ["image"], f"Image folder {data_dir!r}")
    return ds


def load_hub_image_dataset(name: str = "cifar10", split: str = "train", image_column: Optional[str] = None):
    """An image dataset from the Hub (needs the network), its image column renamed to `image`."""
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split)
    except Exception as e:  # offline, or no such dataset
        raise ValueError(
            f"Could not load the image dataset {name!r} from the Hub ({type(e).__name__}: {e}). "
            "Offline, use a local image folder (--data-dir) or --dataset digits."
        ) from e
    if image_column is None:
        image_column = next((c for c in ("image", "img", "pixel_values") if c in ds.column_names), None)
        if image_column is None:
            raise ValueError(f"{name!r} has no image column (tried image, img, pixel_values); it has {ds.column_names}.")
    check_columns(ds, [image_column], f"The dataset {name!r}")
    if image_column != "image" and image_column != "pixel_values":
        ds = ds.rename_column(image_column, "image")
    return ds


def dataset_num_classes(ds, label_column: str = "label", what: str = "The data") -> int:
    """K, the classes of a dataset's label column (a `ClassLabel`'s names, else the ints 0..K-1 it holds)."""
    if label_column not in ds.column_names:
        raise ValueError(
            f"{what} has no {label_column!r} column to condition on (columns: {ds.column_names}); class-conditional "
            "training reads the labels from it (image / audio folders: the sub-folder names)."
        )
    feature = ds.features[label_column]
    if hasattr(feature, "names"):
        return len(feature.names)
    values = np.asarray(ds[label_column])
    if values.dtype.kind not in "iu" or values.size == 0 or values.min() < 0:
        raise ValueError(f"{what}: the {label_column!r} column must hold class indices 0..K-1 (ints), got dtype {values.dtype}.")
    return int(values.max()) + 1


def dataset_class_frequencies(ds, num_classes: int, label_column: str = "label") -> List[float]:
    """The frequencies [K] of a dataset's labels 0..K-1 (floats summing to 1): what a class-conditional
    model records (`config.class_frequencies`) and draws a sample's label from when none is asked for."""
    counts = np.bincount(np.asarray(ds[label_column], dtype=np.int64), minlength=num_classes)[:num_classes]
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"The {label_column!r} column holds no labels in [0, {num_classes}) to count.")
    return [float(c) / total for c in counts]


class ClassLabelCollator:
    """Wraps a modality's collator and adds `class_labels` [B] (long), the rows' `label_column`:
    the batch a class-conditional model's `compute_loss` takes.

    Example:
        >>> collate = ClassLabelCollator(lambda rows: {"x": torch.tensor([r["x"] for r in rows])}, num_classes=3)
        >>> collate([{"x": 1.0, "label": 2}, {"x": 0.5, "label": 0}])["class_labels"].tolist()
        [2, 0]
    """

    def __init__(self, collator, num_classes: int, label_column: str = "label"):
        self.collator, self.num_classes, self.label_column = collator, num_classes, label_column

    def __call__(self, rows: List[dict]) -> Dict[str, torch.Tensor]:
        batch = self.collator(rows)
        labels = [r[self.label_column] for r in rows]
        if any(isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= y < self.num_classes for y in labels):
            bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= y < self.num_classes]
            raise ValueError(f"Labels must be class indices in [0, {self.num_classes}), got {bad[:5]}.")
        batch["class_labels"] = torch.tensor([int(y) for y in labels], dtype=torch.long)
        return batch


class ImageCollator:
    """Rows -> `{"pixel_values": [B, C, H, W]}` float32, normalised as the model expects:
    `(x - image_mean) / image_std` of images x in [0, 1] (the image processor's convention).

    Rows carry either `pixel_values` (already [C, H, W] in [0, 1]) or `image` (a PIL image,
    converted to `num_channels` channels and resized to `image_size`).
    """

    def __init__(self, num_channels: int, image_size: int, image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None):
        if num_channels not in (1, 3):
            raise ValueError(f"`num_channels` must be 1 (grey) or 3 (RGB), got {num_channels!r}.")
        self.num_channels = num_channels
        self.image_size = image_size
        mean = [0.0] * num_channels if image_mean is None else list(image_mean)
        std = [1.0] * num_channels if image_std is None else list(image_std)
        if len(mean) != num_channels or len(std) != num_channels or min(std) <= 0:
            raise ValueError(f"`image_mean`/`image_std` need {num_channels} values (std > 0), got {mean} and {std}.")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def _from_pil(self, image) -> torch.Tensor:
        from PIL import Image

        image = image.convert("L" if self.num_channels == 1 else "RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def __call__(self, rows: List[dict]) -> Dict[str, torch.Tensor]:
        if "pixel_values" in rows[0]:
            x = torch.stack([torch.as_tensor(np.asarray(r["pixel_values"], dtype=np.float32)) for r in rows])
        else:
            x = torch.stack([self._from_pil(r["image"]) for r in rows])  # (B, C, H, W) in [0, 1]
        return {"pixel_values": (x.clamp(0, 1) - self.mean) / self.std}


# ----------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------


def load_mrpc(data_files=None, split: str = "train", positives_only: bool = True):
    """MRPC paraphrase pairs as `source` (sentence1) -> `target` (sentence2).

    Args:
        data_files: `None` for `datasets.load_dataset("glue", "mrpc")` (needs the network), or a
            path (or list of paths) to local .csv / .json / .jsonl / .parquet files with the
            columns sentence1, sentence2 and label.
        positives_only: keep the pairs labelled as paraphrases (label == 1), the ones worth
            learning to generate.
    """
    from datasets import load_dataset

    if data_files is None:
        try:
            ds = load_dataset("glue", "mrpc", split=split)
        except Exception as e:
            raise ValueError(
                f"Could not load GLUE MRPC from the Hub ({type(e).__name__}: {e}). Offline, pass local files "
                f"(--data-files pairs.csv) with columns {list(MRPC_COLUMNS)}."
            ) from e
        what = "GLUE MRPC"
    else:
        files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
        if not files:
            raise ValueError("`data_files` is an empty list.")
        kinds = set()
        for f in files:
            if not os.path.isfile(f):
                raise ValueError(f"Data file {str(f)!r} does not exist.")
            ext = os.path.splitext(str(f))[1].lower()
            if ext not in TABLE_EXTENSIONS:
                raise ValueError(f"Data file {str(f)!r}: unsupported extension {ext!r}; allowed: {', '.join(TABLE_EXTENSIONS)}.")
            kinds.add(TABLE_EXTENSIONS[ext])
        if len(kinds) > 1:
            raise ValueError(f"Data files mix formats {sorted(kinds)}; use one format.")
        try:
            ds = load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train")
        except Exception as e:
            raise ValueError(f"Could not read the data files {[str(f) for f in files]} ({type(e).__name__}: {e}).") from e
        what = f"The data files {[os.path.basename(str(f)) for f in files]}"
    if len(ds) == 0:
        raise ValueError(f"{what} hold no rows.")
    check_columns(ds, MRPC_COLUMNS, what)
    # Empty cells: a csv's empty field arrives as None, which str() would turn into the word "None".
    for col in MRPC_COLUMNS:
        values = ds[col]
        empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
        if empty:
            rows = ", ".join(str(i + 1) for i in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise ValueError(f"{what}: column {col!r} is empty in data row(s) {rows}; fill or remove those rows.")
    labels = ds["label"]
    bad = sorted({repr(v) for v in labels if isinstance(v, bool) or not isinstance(v, (int, float, str)) or str(v).strip() not in ("0", "1", "0.0", "1.0")})
    if bad:
        raise ValueError(f"{what}: column 'label' must hold 0 or 1 (1 = a paraphrase), got {', '.join(bad[:5])}.")
    if positives_only:
        total = len(ds)
        ds = ds.filter(lambda r: int(float(r["label"])) == 1)
        if len(ds) == 0:
            raise ValueError(f"{what}: no row has label == 1 (a paraphrase).")
        if len(ds) < total:
            logger.warning(
                f"{what}: kept the {len(ds)} of {total} rows with label == 1 (paraphrase pairs, the ones to learn to "
                f"generate); {total - len(ds)} rows with label 0 were left out."
            )
    ds = ds.map(lambda r: {"source": str(r["sentence1"]), "target": str(r["sentence2"])}, remove_columns=ds.column_names)
    return ds


def make_reversal_dataset(
    num_examples: int = 4000,
    vocab: Sequence[str] = REVERSAL_VOCAB,
    min_len: int = 3,
    max_len: int = 6,
    seed: int = 0,
):
    """The text demo's task: `source` is a random word sequence, `target` the same words reversed.

    Returns a `Dataset` of `num_examples` distinct pairs (columns `source`, `target`), drawn
    with a fixed `seed`.
    """
    from datasets import Dataset

    if not 1 <= min_len <= max_len:
        raise ValueError(f"Need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}.")
    if len(set(vocab)) < 2:
        raise ValueError(f"`vocab` needs at least 2 distinct words, got {list(vocab)}.")
    possible = sum(len(set(vocab)) ** n for n in range(min_len, max_len + 1))
    if num_examples > possible:
        raise ValueError(f"Only {possible} distinct sequences exist for this vocab and length; asked for {num_examples}.")
    rng = random.Random(seed)
    seen, sources = set(), []
    while len(sources) < num_examples:
        words = tuple(rng.choice(vocab) for _ in range(rng.randint(min_len, max_len)))
        if words not in seen:
            seen.add(words)
            sources.append(words)
    return Dataset.from_dict({"source": [" ".join(w) for w in sources], "target": [" ".join(reversed(w)) for w in sources]})


def build_word_tokenizer(vocab: Iterable[str] = REVERSAL_VOCAB):
    """A word-level tokenizer built offline (no download): `<pad>`=0, `</s>`=1, `<unk>`=2, then
    the words; splits on whitespace and appends `</s>` (as T5's tokenizer does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(vocab))
    clash = [w for w in words if w in SPECIAL_TOKENS]
    if clash:
        raise ValueError(f"Vocabulary words {clash} clash with the special tokens {list(SPECIAL_TOKENS)}.")
    table = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + words)}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", table["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


class Seq2SeqCollator:
    """Rows with `source` and `target` -> the target's `input_ids` / `attention_mask` padded to
    `max_length` (the model's generated length) and the source's `cond_input_ids` /
    `cond_attention_mask` (padded to the longest in the batch, at most `max_source_length`).

    A target longer than `max_length` tokens (with `</s>`) raises a `ValueError`: a truncated
    target would teach the model to stop early.
    """

    def __init__(self, tokenizer, max_length: int, max_source_length: Optional[int] = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_source_length = max_source_length or max_length

    def __call__(self, rows: List[dict]) -> Dict[str, torch.Tensor]:
        tgt = self.tokenizer([r["target"] for r in rows], padding="max_length", max_length=self.max_length, truncation=False, return_tensors=None)
        too_long = [len(ids) for ids in tgt["input_ids"] if len(ids) > self.max_length]
        if too_long:
            raise ValueError(f"A target has {max(too_long)} tokens, more than the model's seq_len={self.max_length}; filter the data or build the model with a longer seq_len.")
        src = self.tokenizer([r["source"] for r in rows], padding="longest", max_length=self.max_source_length, truncation=True, return_tensors="pt")
        return {
            "input_ids": torch.tensor(tgt["input_ids"]),
            "attention_mask": torch.tensor(tgt["attention_mask"]),
            "cond_input_ids": src["input_ids"],
            "cond_attention_mask": src["attention_mask"],
        }


def check_text_fits(dataset, tokenizer, max_length: int, what: str = "the dataset") -> None:
    """Raise, before training, if any target needs more than `max_length` tokens or uses unknown words."""
    lengths = [len(ids) for ids in tokenizer(list(dataset["target"]))["input_ids"]]
    over = [n for n in lengths if n > max_length]
    if over:
        raise ValueError(
            f"{what}: {len(over)} of {len(lengths)} targets are longer than seq_len={max_length} tokens "
            f"(the longest has {max(over)}); build the model with seq_len >= {max(over)} or filter the data."
        )


def train_test_split_dataset(dataset, test_size: int, seed: int = 0) -> Tuple[object, object]:
    """Split a `Dataset` into (train, test) with a fixed seed; `test_size` rows go to test."""
    if not 0 < test_size < len(dataset):
        raise ValueError(f"`test_size` must lie in (0, {len(dataset)}), got {test_size}.")
    parts = dataset.train_test_split(test_size=test_size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
