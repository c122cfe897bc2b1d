# coding=utf-8
"""Benchmarks for QGFD attention: tasks with checkable answers, small models, an equal-budget
harness, and the statistics that compare arms over seeds (issue 14: "Does QGFD help, and where?").

QGFD's `p = p0 * sum_k c_k P^k` lets one attention layer compose its attention over several
hops. The tasks here need k = 1, 2, 3 hops of content-based lookup, so that "does one QGFD layer
do what k softmax layers do?" can be measured:

- `pointer_chasing`: n cells each hold a pointer to another cell; the query asks for f^k(s).
- `induction_hops`: the k-hop induction head of Sanford et al. (2024): from the last token,
  jump k times to the token after the most recent earlier occurrence of the current token.
  Each token also carries its previous token (the "previous-token head" is given), causal.
- `reachability`: a directed graph as a list of edge tokens; is t reachable from s in <= k edges?
- `listops`: ListOps-style nested expressions (MAX, MIN, MED, SM) up to 64 tokens long, the
  Long Range Arena task in small: the answer depends on the whole bracket structure.

Every generator is a pure function of its seed (numpy's PCG64) and returns a `TaskData` whose
labels were computed from the structure it sampled; the tests recompute them independently.

`HopClassifier` is a pre-LN Transformer encoder whose attention layers are
`QGFDMultiheadAttention`; an `Arm` names its attention (softmax or QGFD: graph, mix, T, fixed or
learnable alpha) and depth. `train_and_evaluate` trains one arm at a fixed budget (steps, batch,
AdamW, warmup + cosine learning rate, gradient clipping) on the same data stream for every arm of
a seed, so arms of one seed can be compared paired. `summarize` and `paired_comparison` give
mean, standard deviation, t-intervals, a bootstrap interval and a paired t-test.

Shapes: `N` examples, `B` batch, `L` sequence length, `F` token features, `D` width, `C` classes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import logging

from qgfd_hf.attention_qgfd import QGFDSettings
from qgfd_hf.modeling_qgfd_attention import QGFDAlpha, QGFDMultiheadAttention, set_qgfd_step

logger = logging.get_logger(__name__)

TASKS = ("pointer", "induction", "reachability", "listops")


# ----------------------------------------------------------------------------------------
# Task data
# ----------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Examples of one task.

    Attributes:
        tokens (`torch.LongTensor` `[N, L, F]`): F token ids per position, in one shared
            vocabulary (each feature its own id range; 0 is padding). A position's input
            embedding is the sum of its F token embeddings and its position embedding.
        labels (`torch.LongTensor` `[N]`): the answer, in [0, num_classes).
        padding (`torch.BoolTensor` `[N, L]`, *optional*): True at padded positions.
        vocab_size, num_classes (`int`); readout (`int`): the position whose output is classified;
        causal (`bool`): the task is read left to right (causal attention).
        name (`str`): e.g. `"pointer-k2"`.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    vocab_size: int
    num_classes: int
    readout: int
    causal: bool = False
    padding: Optional[torch.Tensor] = None
    name: str = ""

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def batch(self, index) -> "TaskData":
        return TaskData(self.tokens[index], self.labels[index], self.vocab_size, self.num_classes, self.readout,
                        self.causal, None if self.padding is None else self.padding[index], self.name)

    def majority_accuracy(self) -> float:
        """Accuracy of always answering the most frequent label (the floor a model must beat)."""
        return float(torch.bincount(self.labels, minlength=self.num_classes).max()) / len(self)


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    return np.random.Generator(np.random.PCG64(int(seed)))


def _check_positive(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


def pointer_chasing(num_examples: int, hops: int, seed: int, num_cells: int = 8) -> TaskData:
    """k-hop pointer chasing: cell i holds f(i) (f a random permutation); the query token holds s;
    the answer is f^hops(s). The chain s, f(s), ..., f^hops(s) never repeats a cell, so no hop
    can be skipped.

    Tokens (F = 1): cell i -> 1 + f(i); the query (last position) -> 1 + num_cells + s.
    """
    _check_positive("num_examples", num_examples)
    _check_positive("hops", hops)
    _check_positive("num_cells", num_cells, minimum=hops + 1)
    rng = _rng(seed)
    n = num_cells
    f = np.argsort(rng.random((num_examples, n)), axis=1)  # (N, n) random permutations
    s = rng.integers(0, n, num_examples)
    while True:
        chain = [s]
        for _ in range(hops):
            chain.append(f[np.arange(num_examples), chain[-1]])
        chain = np.stack(chain, 1)  # (N, hops + 1)
        srt = np.sort(chain, 1)
        bad = (srt[:, 1:] == srt[:, :-1]).any(1)  # a cycle shorter than hops: resample those rows
        if not bad.any():
            break
        f[bad] = np.argsort(rng.random((int(bad.sum()), n)), axis=1)
        s[bad] = rng.integers(0, n, int(bad.sum()))
    tokens = np.concatenate([1 + f, (1 + n + s)[:, None]], 1)[..., None]  # (N, n + 1, 1)
    return TaskData(torch.as_tensor(tokens), torch.as_tensor(chain[:, -1]), vocab_size=1 + 2 * n, num_classes=n,
                    readout=n, name=f"pointer-k{hops}")


def induction_jump(x: np.ndarray, i: int) -> int:
    """The k-hop induction step: 1 + the most recent j < i with x[j] == x[i], or -1 if none."""
    earlier = np.nonzero(x[:i] == x[i])[0]
    return int(earlier[-1]) + 1 if len(earlier) else -1


def induction_hops(num_examples: int, hops: int, seed: int, seq_len: int = 24, vocab: int = 8) -> TaskData:
    """k-hop induction heads (Sanford et al., 2024, "hop_k"): from the last position, jump hops
    times with `induction_jump`; the answer is the token where the chain ends. Sequences where a
    jump has no earlier occurrence, or lands where it stood, are resampled.

    Tokens (F = 2): x[i] -> 1 + x[i]; the previous token x[i-1] -> 1 + vocab + x[i-1] (position 0:
    1 + 2 vocab). Causal.
    """
    _check_positive("num_examples", num_examples)
    _check_positive("hops", hops)
    _check_positive("seq_len", seq_len, minimum=hops + 2)
    _check_positive("vocab", vocab, minimum=2)
    rng = _rng(seed)
    xs = np.empty((num_examples, seq_len), dtype=np.int64)
    labels = np.empty(num_examples, dtype=np.int64)
    filled = 0
    while filled < num_examples:
        x = rng.integers(0, vocab, seq_len)
        i = seq_len - 1
        for _ in range(hops):
            j = induction_jump(x, i)
            if j < 0 or j == i:
                break
            i = j
        else:
            xs[filled], labels[filled] = x, x[i]
            filled += 1
    prev = np.concatenate([np.full((num_examples, 1), 2 * vocab), vocab + xs[:, :-1]], 1)
    tokens = np.stack([1 + xs, 1 + prev], -1)  # (N, L, 2)
    return TaskData(torch.as_tensor(tokens), torch.as_tensor(labels), vocab_size=2 + 2 * vocab, num_classes=vocab,
                    readout=seq_len - 1, causal=True, name=f"induction-k{hops}")


def graph_distances(adjacency: np.ndarray) -> np.ndarray:
    """Shortest-path lengths of boolean adjacency matrices `[..., n, n]` (inf where unreachable;
    0 on the diagonal), by repeated boolean products."""
    n = adjacency.shape[-1]
    adj = adjacency.astype(np.int64)
    dist = np.full(adjacency.shape, np.inf)
    reach = np.broadcast_to(np.eye(n, dtype=np.int64), adjacency.shape).copy()
    dist[reach.astype(bool)] = 0
    for d in range(1, n):
        reach = np.minimum(reach + reach @ adj, 1)
        dist[(reach > 0) & np.isinf(dist)] = d
    return dist


def reachability(num_examples: int, hops: int, seed: int, num_nodes: int = 6, num_edges: int = 8) -> TaskData:
    """Graph reachability: a random directed graph (num_edges distinct edges u -> v, u != v) as a
    list of edge tokens in random order, and a query (s, t). Label 1 when t is reachable from s in
    at most `hops` edges. Half the examples are positives at distance exactly `hops` (so every hop
    is needed), half negatives at distance > hops (or unreachable).

    Tokens (F = 2): edge u -> v: (1 + u, 1 + n + v); query (last position): (1 + 2n + s, 1 + 3n + t).
    """
    _check_positive("num_examples", num_examples)
    _check_positive("hops", hops)
    _check_positive("num_nodes", num_nodes, minimum=2)
    if not hops < num_nodes:
        raise ValueError(f"`hops` must be < num_nodes={num_nodes}, got {hops}.")
    _check_positive("num_edges", num_edges, minimum=hops)
    if num_edges > num_nodes * (num_nodes - 1):
        raise ValueError(f"`num_edges` must be <= num_nodes * (num_nodes - 1) = {num_nodes * (num_nodes - 1)}, got {num_edges}.")
    rng = _rng(seed)
    n, N = num_nodes, num_examples
    offdiag = ~np.eye(n, dtype=bool)
    pairs = np.argwhere(offdiag)  # (n(n-1), 2) candidate edges
    want_pos = rng.random(N) < 0.5
    edges = np.empty((N, num_edges, 2), dtype=np.int64)
    query = np.empty((N, 2), dtype=np.int64)
    todo = np.arange(N)
    while len(todo):
        m = len(todo)
        chosen = np.argsort(rng.random((m, len(pairs))), 1)[:, :num_edges]  # (m, E) distinct edges
        e = pairs[chosen]  # (m, E, 2)
        adj = np.zeros((m, n, n), dtype=bool)
        adj[np.arange(m)[:, None], e[..., 0], e[..., 1]] = True
        dist = graph_distances(adj)
        cand = np.where(want_pos[todo, None, None], dist == hops, (dist > hops) & offdiag)  # (m, n, n)
        ok = cand.any((1, 2))
        pick = np.argmax(np.where(cand, rng.random(cand.shape), -1).reshape(m, -1), 1)
        done = todo[ok]
        edges[done] = e[ok]
        query[done] = np.stack([pick[ok] // n, pick[ok] % n], 1)
        todo = todo[~ok]
    tokens = np.concatenate([np.stack([1 + edges[..., 0], 1 + n + edges[..., 1]], -1),
                             np.stack([1 + 2 * n + query[:, 0], 1 + 3 * n + query[:, 1]], -1)[:, None]], 1)
    return TaskData(torch.as_tensor(tokens), torch.as_tensor(want_pos.astype(np.int64)), vocab_size=1 + 4 * n,
                    num_classes=2, readout=num_edges, name=f"reachability-k{hops}")


LISTOPS_OPS = ("MAX", "MIN", "MED", "SM")
# ListOps vocabulary: 0 pad, 1 CLS, 2..11 digits, 12..15 "[MAX" "[MIN" "[MED" "[SM", 16 "]".
LISTOPS_VOCAB = ["<pad>", "<cls>"] + [str(d) for d in range(10)] + ["[" + op for op in LISTOPS_OPS] + ["]"]


def listops_apply(op: str, args: Sequence[int]) -> int:
    """The value of one ListOps operator: MAX, MIN, MED (the lower median), SM (sum mod 10)."""
    if op == "MAX":
        return max(args)
    if op == "MIN":
        return min(args)
    if op == "MED":
        return sorted(args)[(len(args) - 1) // 2]
    if op == "SM":
        return sum(args) % 10
    raise ValueError(f"Unknown ListOps operator {op!r}; allowed: {LISTOPS_OPS}.")


def _listops_tree(rng, depth: int, max_args: int, p_nest: float):
    """A random expression: returns (tokens as strings, value)."""
    op = LISTOPS_OPS[rng.integers(len(LISTOPS_OPS))]
    toks, vals = ["[" + op], []
    for _ in range(int(rng.integers(2, max_args + 1))):
        if depth > 1 and rng.random() < p_nest:
            t, v = _listops_tree(rng, depth - 1, max_args, p_nest)
        else:
            v = int(rng.integers(10))
            t = [str(v)]
        toks += t
        vals.append(v)
    return toks + ["]"], listops_apply(op, vals)


def listops(num_examples: int, seed: int, max_depth: int = 3, max_len: int = 64, max_args: int = 4,
            p_nest: float = 0.35) -> TaskData:
    """ListOps in small (Nangia & Bowman, 2018; Long Range Arena): nested MAX / MIN / MED / SM over
    digits, at most `max_depth` deep and `max_len` tokens (with a leading CLS token, read out);
    the answer is the expression's value (10 classes). Padded to `max_len`.
    """
    _check_positive("num_examples", num_examples)
    _check_positive("max_depth", max_depth)
    _check_positive("max_args", max_args, minimum=2)
    _check_positive("max_len", max_len, minimum=5)
    rng = _rng(seed)
    index = {t: i for i, t in enumerate(LISTOPS_VOCAB)}
    tokens = np.zeros((num_examples, max_len), dtype=np.int64)
    labels = np.empty(num_examples, dtype=np.int64)
    filled = 0
    while filled < num_examples:
        toks, value = _listops_tree(rng, max_depth, max_args, p_nest)
        if len(toks) + 1 > max_len:
            continue
        tokens[filled, : len(toks) + 1] = [index["<cls>"]] + [index[t] for t in toks]
        labels[filled] = value
        filled += 1
    tokens_t = torch.as_tensor(tokens)
    return TaskData(tokens_t[..., None], torch.as_tensor(labels), vocab_size=len(LISTOPS_VOCAB), num_classes=10,
                    readout=0, padding=tokens_t == 0, name=f"listops-d{max_depth}")


def make_task(task: str, num_examples: int, seed: int, hops: int = 1, size: Optional[int] = None) -> TaskData:
    """One task by name (`TASKS`): `hops` is k for pointer / induction / reachability, the
    maximum nesting depth for listops. `size` (default: each generator's own) is the number of
    cells (pointer), the sequence length (induction), the number of nodes (reachability; with
    `round(4 size / 3)` edges, the default's ratio of 8 edges on 6 nodes) or the maximum length
    (listops)."""
    if size is not None:
        _check_positive("size", size)
    if task == "pointer":
        return pointer_chasing(num_examples, hops, seed, **({} if size is None else {"num_cells": size}))
    if task == "induction":
        return induction_hops(num_examples, hops, seed, **({} if size is None else {"seq_len": size}))
    if task == "reachability":
        extra = {} if size is None else {"num_nodes": size, "num_edges": round(4 * size / 3)}
        return reachability(num_examples, hops, seed, **extra)
    if task == "listops":
        return listops(num_examples, seed, max_depth=hops, **({} if size is None else {"max_len": size}))
    raise ValueError(f"Unknown task {task!r}; allowed: {', '.join(TASKS)}.")


def seen_in_training(train: TaskData, test: TaskData) -> torch.Tensor:
    """`[len(test)]` booleans: True where the test example also occurs, token for token, among the
    training examples. A small task (pointer chasing on 8 cells has 8! * 8 = 322,560 inputs) seen
    for many steps can have most of its test set in training; accuracy on the rest
    (`test.batch(~seen)`) measures the rule, not memory."""
    if train.tokens.shape[1:] != test.tokens.shape[1:]:
        return torch.zeros(len(test), dtype=torch.bool)
    seen = {row.tobytes() for row in train.tokens.reshape(len(train), -1).numpy()}
    return torch.tensor([row.tobytes() in seen for row in test.tokens.reshape(len(test), -1).numpy()], dtype=torch.bool)


def shared_inputs(train: TaskData, test: TaskData) -> int:
    """How many test examples also occur among the training examples (see `seen_in_training`)."""
    return int(seen_in_training(train, test).sum())


# ----------------------------------------------------------------------------------------
# Arms and the model
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One model variant: its attention and its depth.

    Args:
        depth (`int`): number of Transformer blocks.
        steps (`int`): QGFD's T (0 = softmax attention).
        graph, mix (`str`): QGFD's graph ("attention", the seed's rule, or "keys") and mix.
        alpha (`float`): QGFD's alpha (the initial value when learnable).
        learnable_alpha (`bool`): one learnable alpha per head and layer.
    """

    depth: int = 1
    steps: int = 0
    graph: str = "attention"
    mix: str = "seed"
    alpha: float = 0.5
    learnable_alpha: bool = False

    def __post_init__(self):
        _check_positive("depth", self.depth)
        QGFDSettings(steps=self.steps, alpha=self.alpha, graph=self.graph, mix=self.mix,
                     learnable_alpha=self.learnable_alpha)  # ValueError on anything invalid

    @property
    def family(self) -> str:
        """The attention without the depth, e.g. `"softmax"` or `"attention-seed-T2-learn"`."""
        if self.steps == 0:
            return "softmax"
        return f"{self.graph}-{self.mix}-T{self.steps}" + ("-learn" if self.learnable_alpha else f"-a{self.alpha:g}")

    @property
    def name(self) -> str:
        return f"{self.family}-d{self.depth}"

    def qgfd_kwargs(self) -> dict:
        return dict(qgfd_steps=self.steps, qgfd_alpha=self.alpha, graph=self.graph, mix=self.mix,
                    learnable_alpha=self.learnable_alpha)


def arm_grid(depths: Sequence[int] = (1, 2, 3), steps: Sequence[int] = (1, 2, 3),
             graphs: Sequence[str] = ("attention", "keys"), mixes: Sequence[str] = ("seed", "recurrent"),
             alphas: Sequence[str] = ("fixed", "learn"), fixed_alpha_depths: Optional[Sequence[int]] = None,
             alpha: float = 0.5) -> List[Arm]:
    """The arms of the evaluation: softmax at every depth, and QGFD for every graph, mix, T and
    alpha mode at every depth. `fixed_alpha_depths` limits the fixed-alpha arms to those depths
    (the learnable ones run at every depth)."""
    arms = [Arm(depth=d) for d in depths]
    for d in depths:
        for g in graphs:
            for m in mixes:
                for t in steps:
                    for a in alphas:
                        if a not in ("fixed", "learn"):
                            raise ValueError(f"Unknown alpha mode {a!r}; allowed: 'fixed', 'learn'.")
                        if a == "fixed" and fixed_alpha_depths is not None and d not in fixed_alpha_depths:
                            continue
                        arms.append(Arm(depth=d, steps=t, graph=g, mix=m, alpha=alpha, learnable_alpha=a == "learn"))
    return arms


class HopBlock(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, arm: Arm):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = QGFDMultiheadAttention(d_model, num_heads, **arm.qgfd_kwargs())
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x, padding=None, is_causal=False):
        mask = None if padding is None else padding[:, None, None, :]  # (B, 1, 1, L): never mistaken for [Lq, Lk]
        x = x + self.attn(self.ln1(x), attn_mask=mask, is_causal=is_causal)
        return x + self.mlp(self.ln2(x))


class HopClassifier(nn.Module):
    """A small Transformer encoder classifier whose attention layers are `QGFDMultiheadAttention`.

    Args:
        vocab_size, num_classes, seq_len (`int`): from the task.
        arm (`Arm`): attention and depth.
        d_model, num_heads, d_ff (`int`): width, heads, MLP width (defaults 48, 4, 2 * d_model).
        readout (`int`): the position whose output is classified. causal (`bool`): causal attention.

    Example:

    ```python
    >>> import torch
    >>> from benchmarks_qgfd import Arm, HopClassifier, pointer_chasing
    >>> data = pointer_chasing(4, hops=2, seed=0)
    >>> model = HopClassifier.for_task(data, Arm(depth=1, steps=1, learnable_alpha=True), d_model=32)
    >>> model(data.tokens).shape
    torch.Size([4, 8])

    ```
    """

    def __init__(self, vocab_size: int, num_classes: int, seq_len: int, arm: Arm, d_model: int = 48,
                 num_heads: int = 4, d_ff: Optional[int] = None, readout: int = -1, causal: bool = False):
        super().__init__()
        self.arm, self.readout, self.causal = arm, readout, causal
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(HopBlock(d_model, num_heads, d_ff or 2 * d_model, arm) for _ in range(arm.depth))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        self._init_weights()

    @classmethod
    def for_task(cls, data: TaskData, arm: Arm, **kwargs) -> "HopClassifier":
        return cls(data.vocab_size, data.num_classes, data.seq_len, arm, readout=data.readout, causal=data.causal, **kwargs)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()  # padding adds nothing

    def forward(self, tokens: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, L, _ = tokens.shape
        # 1. Embed: the sum of the F token embeddings and the position embedding, (B, L, D).
        x = self.tok(tokens).sum(2) + self.pos(torch.arange(L, device=tokens.device))
        # 2. Blocks; padded keys are masked (the seed mask: True = masked out, [B, L]).
        for block in self.blocks:
            x = block(x, padding=padding, is_causal=self.causal)
        # 3. Classify the readout position, (B, C).
        return self.head(self.ln_f(x[:, self.readout]))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def learned_alphas(model: nn.Module) -> List[List[float]]:
    """The current alpha of each QGFD layer (one value per head when learnable)."""
    out = []
    for m in model.modules():
        if isinstance(m, QGFDAlpha):
            a = m()
            out.append(a.detach().flatten().tolist() if isinstance(a, torch.Tensor) else [float(a)])
    return out


# ----------------------------------------------------------------------------------------
# The harness: one arm, one seed, a fixed budget
# ----------------------------------------------------------------------------------------


@dataclass
class Budget:
    """What every arm gets: the same steps, batch, optimizer and schedule.

    Args:
        steps (`int`): optimizer steps. batch_size (`int`). learning_rate (`float`): AdamW's peak.
        weight_decay (`float`): on matrices. warmup_steps (`int`): linear warm-up, then cosine to 0.
        max_grad_norm (`float`): gradient clipping. eval_batch_size (`int`).
    """

    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 40
    max_grad_norm: float = 1.0
    eval_batch_size: int = 512

    def __post_init__(self):
        _check_positive("steps", self.steps)
        _check_positive("batch_size", self.batch_size)
        _check_positive("warmup_steps", self.warmup_steps, minimum=0)
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, budget: Budget) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=budget.learning_rate)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: TaskData, batch_size: int = 512,
                      forward: Optional[Callable] = None) -> float:
    """Accuracy of `model` on `data` (the model's mode is left as it is)."""
    forward = forward or (lambda m, b: m(b.tokens, b.padding))
    correct = 0
    for i in range(0, len(data), batch_size):
        b = data.batch(slice(i, i + batch_size))
        correct += int((forward(model, b).argmax(-1) == b.labels).sum())
    return correct / len(data)


def train_model(model: nn.Module, train: TaskData, budget: Budget, seed: int,
                forward: Optional[Callable] = None, callback: Optional[Callable] = None) -> dict:
    """Train `model` on `train` for `budget.steps` steps of `budget.batch_size` examples drawn in an
    order fixed by `seed` (the same order for every model). Each step: `set_qgfd_step` (alpha
    warm-up), forward, cross-entropy, backward, clip, AdamW with warm-up + cosine lr.
    `callback(step, model)`, if given, runs before each step and after the last.
    Returns {final_loss (mean of the last 10% of steps), wall_s, cpu_s}."""
    forward = forward or (lambda m, b: m(b.tokens, b.padding))
    g = torch.Generator().manual_seed(int(seed))
    n = len(train)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(math.ceil(budget.steps * budget.batch_size / n))])
    opt = make_optimizer(model, budget)
    losses = []
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(budget.steps):
        if callback is not None:
            callback(step, model)
        set_qgfd_step(model, step)
        for group in opt.param_groups:
            group["lr"] = budget.lr_at(step)
        b = train.batch(order[step * budget.batch_size:(step + 1) * budget.batch_size])
        loss = F.cross_entropy(forward(model, b), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if budget.max_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), budget.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            logger.warning(f"non-finite loss at step {step}; stopping this run")
            break
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if callback is not None:
        callback(budget.steps, model)
    tail = losses[-max(1, len(losses) // 10):]
    return {"final_loss": sum(tail) / len(tail), "wall_s": wall, "cpu_s": cpu}


def train_and_evaluate(arm: Arm, train: TaskData, test: TaskData, budget: Budget, seed: int,
                       d_model: int = 48, num_heads: int = 4, extra_tests: Optional[Dict[str, TaskData]] = None) -> dict:
    """Build a `HopClassifier` for `arm` (initialised from `seed`), train it on `train` at `budget`
    and score it on `test` (and on each of `extra_tests`, recorded as `accuracy_<name>`). Returns a
    flat record (arm fields, accuracy, loss, cost, alphas)."""
    torch.manual_seed(int(seed))
    model = HopClassifier.for_task(train, arm, d_model=d_model, num_heads=num_heads)
    stats = train_model(model, train, budget, seed)
    model.eval()
    accuracy = evaluate_accuracy(model, test, budget.eval_batch_size)
    return {"task": train.name, "arm": arm.name, "family": arm.family, **asdict(arm), "seed": int(seed),
            "accuracy": accuracy, "train_accuracy": evaluate_accuracy(model, train.batch(slice(0, len(test))), budget.eval_batch_size),
            **stats, "params": count_parameters(model), "alphas": learned_alphas(model) if arm.steps else [],
            "budget": asdict(budget), "d_model": d_model, "num_heads": num_heads,
            **{f"accuracy_{k}": evaluate_accuracy(model, v, budget.eval_batch_size) if len(v) else None
               for k, v in (extra_tests or {}).items()}}


# ----------------------------------------------------------------------------------------
# Statistics over seeds
# ----------------------------------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def t_interval(values: Sequence[float], confidence: float = 0.95):
    """Two-sided t confidence interval of the mean, `(low, high)`; (mean, mean) for one value."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("`values` is empty.")
    m = float(x.mean())
    if len(x) < 2:
        return m, m
    half = t_quantile(0.5 + confidence / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return m - half, m + half


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, num_resamples: int = 10000, seed: int = 0):
    """Percentile bootstrap interval of the mean, `(low, high)`, deterministic under `seed`."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("`values` is empty.")
    means = x[_rng(seed).integers(0, len(x), (num_resamples, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict:
    """n, mean, std (ddof=1), the t-interval and the bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    lo, hi = t_interval(x, confidence)
    blo, bhi = bootstrap_interval(x, confidence)
    return {"n": int(len(x)), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            "ci_low": lo, "ci_high": hi, "boot_low": blo, "boot_high": bhi}


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Paired comparison of a against b (the same seeds in the same order): the mean difference
    a - b, its t-interval, the two-sided paired t-test p-value, and wins / ties / losses of a."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"`a` and `b` must be 1-d and of the same nonzero length, got {a.shape} and {b.shape}.")
    d = a - b
    lo, hi = t_interval(d, confidence)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if len(d) < 2:
        p = float("nan")
    elif sd == 0:
        p = 1.0 if d.mean() == 0 else 0.0
    else:
        from scipy import stats

        t = float(d.mean()) / (sd / math.sqrt(len(d)))
        p = float(2 * stats.t.sf(abs(t), len(d) - 1))
    return {"n": int(len(d)), "mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_value": p,
            "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum())}
