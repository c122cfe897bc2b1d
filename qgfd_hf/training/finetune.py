# coding=utf-8
"""Fine-tuning a pretrained encoder with a classification head, softmax against QGFD, over seeds,
with paired statistics: does QGFD help a *pretrained* model once it is fine-tuned?

The model is `SentenceClassifier`: a transformers encoder (all-MiniLM-L6-v2's folder by default,
any `AutoModel` folder or config), its last hidden states mean-pooled over the attention mask
(sentence-transformers' pooling for MiniLM), dropout, and a linear head. The arms (`ARMS`):

| arm | attention while fine-tuning | attention at test time |
|---|---|---|
| `softmax` | softmax | softmax |
| `qgfd-warmup` | QGFD, T = `qgfd_steps` (1), alpha warmed up from 0 to `qgfd_alpha` over `qgfd_warmup_steps` | QGFD |
| `qgfd-learned` | QGFD with a learnable alpha per head (starting at `qgfd_alpha`) | QGFD |
| `qgfd-zero-shot` | softmax (it *is* the `softmax` arm's model) | QGFD, put in after fine-tuning |

Every arm of one seed starts from the same weights and head initialisation, sees the batches in
the same order, with the same steps and learning rate, so arms are compared seed by seed:
`paired_test` gives the mean paired difference, a paired t-test p-value and an exact (or Monte
Carlo) sign-flip permutation p-value.

The harness takes arrays, `(texts, labels)`, so any labelled text set plugs in:

    >>> from qgfd_hf.training.finetune import FinetuneSettings, compare_arms  # doctest: +SKIP
    >>> results = compare_arms(train_texts, train_labels, test_texts, test_labels, seeds=[0, 1, 2, 3, 4])  # doctest: +SKIP
    >>> results["tests"]["qgfd-warmup"]["mean_diff"], results["tests"]["qgfd-warmup"]["p_sign_flip"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

ARMS = ("softmax", "qgfd-warmup", "qgfd-learned", "qgfd-zero-shot")


@dataclass
class FinetuneSettings:
    """What every arm shares. `max_steps` optimizer steps of AdamW (`learning_rate`, linear decay
    after `lr_warmup_steps`), batches of `batch_size`, texts truncated to `max_length` tokens; the QGFD
    arms use `qgfd_steps` and `qgfd_alpha` (the warm-up arm over `qgfd_warmup_steps` steps)."""

    max_steps: int = 300
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    lr_warmup_steps: int = 30
    max_length: int = 128
    dropout: float = 0.1
    eval_batch_size: int = 128
    qgfd_steps: int = 1
    qgfd_alpha: float = 0.5
    qgfd_warmup_steps: int = 100

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "max_length", "eval_batch_size", "qgfd_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}.")
        for name in ("lr_warmup_steps", "qgfd_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
        if not 0 < self.qgfd_alpha <= 1:
            raise ValueError(f"`qgfd_alpha` must lie in (0, 1], got {self.qgfd_alpha!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must lie in [0, 1), got {self.dropout!r}.")


class SentenceClassifier(nn.Module):
    """A transformers encoder, mean pooling over the attention mask, dropout, a linear head -> logits [B, K]."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask, **kwargs):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, L, D)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, D)
        return self.head(self.dropout(pooled))  # (B, K)


def _check_arrays(texts, labels, what: str) -> np.ndarray:
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"`{what}_texts` must be a non-empty list of strings, got {type(texts).__name__}.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"`{what}_texts` must hold strings; item {bad[0]} is {texts[bad[0]]!r}.")
    labels = np.asarray(labels)
    if labels.shape != (len(texts),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"`{what}_labels` must be {len(texts)} ints >= 0 (one per text), got shape {labels.shape} and dtype {labels.dtype}.")
    return labels.astype(np.int64)


def _load_encoder(encoder, tokenizer):
    """(encoder module, tokenizer) from a folder / Hub id (loaded), a config (random), or a module."""
    from transformers import AutoModel, AutoTokenizer, PretrainedConfig

    if encoder is None:
        from ..data.packages import minilm_dir

        encoder = str(minilm_dir())
    if isinstance(encoder, str):
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(encoder)
        return AutoModel.from_pretrained(encoder), tokenizer
    if tokenizer is None:
        raise ValueError("An encoder given as a config or module needs `tokenizer=`.")
    if isinstance(encoder, PretrainedConfig):
        return AutoModel.from_config(encoder), tokenizer
    if isinstance(encoder, nn.Module):
        return copy.deepcopy(encoder), tokenizer
    raise ValueError(f"`encoder` must be a folder / Hub id, a transformers config or a module, got {type(encoder).__name__}.")


def _tokenize(tokenizer, texts, max_length):
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def evaluate_accuracy(model: SentenceClassifier, tokenizer, texts, labels, settings: FinetuneSettings) -> float:
    """Share of `texts` whose argmax logit is the label."""
    model.eval()
    correct = 0
    for start in range(0, len(texts), settings.eval_batch_size):
        batch = _tokenize(tokenizer, texts[start : start + settings.eval_batch_size], settings.max_length)
        correct += int((model(**batch).argmax(-1).numpy() == labels[start : start + settings.eval_batch_size]).sum())
    return correct / len(texts)


def _qgfd(settings: FinetuneSettings, **extra) -> dict:
    return dict(steps=settings.qgfd_steps, alpha=settings.qgfd_alpha, **extra)


def finetune_one(arm: str, seed: int, train_texts, train_labels, settings: FinetuneSettings, base_encoder, tokenizer,
                 num_labels: int) -> SentenceClassifier:
    """Fine-tune one arm (`softmax`, `qgfd-warmup` or `qgfd-learned`) from `base_encoder`; returns the model."""
    import qgfd_hf

    torch.manual_seed(seed)
    model = SentenceClassifier(copy.deepcopy(base_encoder), num_labels, settings.dropout)  # same head init for every arm of a seed
    if arm == "qgfd-warmup":
        qgfd_hf.patch_model(model.encoder, **_qgfd(settings, warmup_steps=settings.qgfd_warmup_steps))
    elif arm == "qgfd-learned":
        qgfd_hf.patch_model(model.encoder, **_qgfd(settings, learnable_alpha=True))
    elif arm != "softmax":
        raise ValueError(f"Unknown arm to fine-tune {arm!r}; allowed: 'softmax', 'qgfd-warmup', 'qgfd-learned'.")
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)

    def lr_at(step):  # linear warm-up, then linear decay to 0
        if step < settings.lr_warmup_steps:
            return (step + 1) / settings.lr_warmup_steps
        return max(0.0, (settings.max_steps - step) / max(1, settings.max_steps - settings.lr_warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = np.random.default_rng(seed)  # the batch order: the same for every arm of a seed
    order = np.concatenate([rng.permutation(len(train_texts)) for _ in range(math.ceil(settings.max_steps * settings.batch_size / len(train_texts)) + 1)])
    model.train()
    for step in range(settings.max_steps):
        qgfd_hf.set_qgfd_step(model, step)
        idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        batch = _tokenize(tokenizer, [train_texts[i] for i in idx], settings.max_length)
        loss = nn.functional.cross_entropy(model(**batch), torch.as_tensor(train_labels[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    qgfd_hf.set_qgfd_step(model, settings.max_steps)
    return model.eval()


def compare_arms(
    train_texts: Sequence[str],
    train_labels,
    test_texts: Sequence[str],
    test_labels,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    arms: Sequence[str] = ARMS,
    settings: Optional[FinetuneSettings] = None,
    encoder=None,
    tokenizer=None,
    progress: bool = False,
) -> Dict[str, object]:
    """Fine-tune and test every arm for every seed; paired statistics of each QGFD arm against softmax.

    Args:
        train_texts, train_labels, test_texts, test_labels: the texts (str) and integer labels (0..K-1).
        seeds: one paired run of every arm per seed.
        arms: a subset of `ARMS` (`qgfd-zero-shot` and the statistics need `softmax`).
        settings (`FinetuneSettings`, *optional*): steps, learning rate, QGFD settings.
        encoder: a folder / Hub id (default: all-MiniLM-L6-v2's folder), a transformers config
            (random weights, for tests) or an encoder module; tokenizer: needed with a config or module.
        progress (`bool`, defaults to `False`): a progress bar over the runs, and each run's accuracy printed.

    Returns:
        `{"accuracy": {arm: [per seed]}, "cpu_seconds": {arm: [per seed]}, "tests": {arm: paired_test
        against softmax} (empty with one seed), "seeds": [...], "settings": {...}}`.
    """
    settings = settings or FinetuneSettings()
    train_labels = _check_arrays(train_texts, train_labels, "train")
    test_labels = _check_arrays(test_texts, test_labels, "test")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"Unknown arms {unknown or arms!r}; allowed: {', '.join(ARMS)}.")
    if "qgfd-zero-shot" in arms and "softmax" not in arms:
        raise ValueError("The 'qgfd-zero-shot' arm is the 'softmax' arm's model with QGFD put in: include 'softmax'.")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct ints, got {seeds!r}.")
    num_labels = int(max(train_labels.max(), test_labels.max())) + 1
    base, tokenizer = _load_encoder(encoder, tokenizer)
    train_texts, test_texts = list(train_texts), list(test_texts)

    import qgfd_hf

    from tqdm.auto import tqdm

    accuracy = {a: [] for a in arms}
    cpu = {a: [] for a in arms}
    trained = [a for a in arms if a != "qgfd-zero-shot"]
    bar = tqdm(total=len(seeds) * len(trained), desc="fine-tuning runs", unit="run", disable=not progress)
    for seed in seeds:
        for arm in trained:
            start = time.process_time()
            model = finetune_one(arm, seed, train_texts, train_labels, settings, base, tokenizer, num_labels)
            accuracy[arm].append(evaluate_accuracy(model, tokenizer, test_texts, test_labels, settings))
            cpu[arm].append(time.process_time() - start)
            logger.info(f"seed {seed} {arm}: accuracy {accuracy[arm][-1]:.4f}")
            if progress:
                bar.write(f"seed {seed} {arm}: accuracy {accuracy[arm][-1]:.4f} ({cpu[arm][-1]:.0f} s CPU)")
            if arm == "softmax" and "qgfd-zero-shot" in arms:
                start = time.process_time()
                qgfd_hf.patch_model(model.encoder, **_qgfd(settings))  # QGFD put in after softmax fine-tuning
                accuracy["qgfd-zero-shot"].append(evaluate_accuracy(model, tokenizer, test_texts, test_labels, settings))
                cpu["qgfd-zero-shot"].append(time.process_time() - start)
                if progress:
                    bar.write(f"seed {seed} qgfd-zero-shot: accuracy {accuracy['qgfd-zero-shot'][-1]:.4f}")
            bar.update(1)
    bar.close()
    paired = "softmax" in arms and len(seeds) >= 2  # a paired test needs two seeds at least
    tests = {a: paired_test(accuracy[a], accuracy["softmax"]) for a in arms if a != "softmax" and paired}
    return {"accuracy": accuracy, "cpu_seconds": cpu, "tests": tests, "seeds": seeds, "settings": asdict(settings)}


def paired_test(a: Sequence[float], b: Sequence[float], num_permutations: int = 100_000, seed: int = 0) -> Dict[str, float]:
    """Paired comparison of a against b (one value per seed each).

    Returns `n`, `mean_diff` (mean of a - b), `std_diff` (sample standard deviation), `p_t` (two-sided
    paired t-test; NaN when every difference is equal) and `p_sign_flip` (two-sided sign-flip
    permutation test on the mean difference: exact over all 2^n sign patterns for n <= 16, else
    `num_permutations` random ones).

    Example:
        >>> r = paired_test([0.9, 0.8, 0.85], [0.7, 0.6, 0.65])
        >>> round(r["mean_diff"], 3), r["p_sign_flip"]
        (0.2, 0.25)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"`a` and `b` must be paired 1-d sequences of at least 2 values, got shapes {a.shape} and {b.shape}.")
    d = a - b
    n = len(d)
    mean, std = float(d.mean()), float(d.std(ddof=1))
    if std > 0:
        from scipy import stats

        t = mean / (std / math.sqrt(n))
        p_t = float(2 * stats.t.sf(abs(t), df=n - 1))
    else:
        p_t = float("nan") if mean == 0 else 0.0
    observed = abs(d.mean())
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(num_permutations, n))
    flipped = np.abs((signs * d).mean(1))
    p_flip = float((flipped >= observed - 1e-12).mean())
    return {"n": n, "mean_diff": mean, "std_diff": std, "p_t": p_t, "p_sign_flip": p_flip}


def format_results(results: Dict[str, object]) -> str:
    """A markdown table of `compare_arms`' results: accuracy mean +- std per arm, paired difference and p against softmax."""
    lines = ["| arm | accuracy (mean +- std over seeds) | per seed | difference vs softmax | p (t-test) | p (sign-flip) | CPU s / run |",
             "|---|---|---|---|---|---|---|"]
    for arm, accs in results["accuracy"].items():
        accs = np.asarray(accs)
        test = results["tests"].get(arm)
        diff = f"{test['mean_diff']:+.4f} +- {test['std_diff']:.4f}" if test else "-"
        p_t = f"{test['p_t']:.3g}" if test else "-"
        p_f = f"{test['p_sign_flip']:.3g}" if test else "-"
        lines.append(f"| {arm} | {accs.mean():.4f} +- {accs.std(ddof=1) if len(accs) > 1 else 0:.4f} | "
                     f"{', '.join(f'{x:.3f}' for x in accs)} | {diff} | {p_t} | {p_f} | {np.mean(results['cpu_seconds'][arm]):.0f} |")
    return "\n".join(lines)


__all__ = ["ARMS", "FinetuneSettings", "SentenceClassifier", "compare_arms", "evaluate_accuracy", "finetune_one", "format_results",
           "paired_test"]
