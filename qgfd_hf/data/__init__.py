# coding=utf-8
"""Datasets for training QGFD diffusion models, checked before training starts: one module per source.

| module | holds |
|---|---|
| `core.py` | the checks every modality shares, scikit-learn's digits, image folders and Hub image datasets, MRPC and the word-reversal task with its tokenizer, the image / text / class-label collators |
| `audio.py` | the generated sound classes, audio folders and csv files read and resampled to fixed-length clips |
| `video.py` | the moving digits, clip folders (frame folders or arrays, with an optional `metadata.csv`) |

Each loader returns a `datasets.Dataset` (or a `DatasetDict` of splits) with the columns its
modality's collator reads; bad data raises a `ValueError` that says what is wrong and what is
allowed, before training.
"""
