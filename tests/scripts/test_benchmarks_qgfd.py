"""Tests for scripts/benchmarks_qgfd.py: each task generator is deterministic under its seed and its
answers agree with an independent check; the harness trains on a tiny budget; the statistics
match known values."""

import math
import os
import sys
from collections import deque

import numpy as np
import pytest
import torch

# scripts/ holds the benchmarks (the library never imports them); its scripts import them by name.
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from benchmarks_qgfd import (  # noqa: E402
    LISTOPS_VOCAB,
    Arm,
    Budget,
    HopClassifier,
    arm_grid,
    bootstrap_interval,
    induction_hops,
    listops,
    make_task,
    paired_comparison,
    pointer_chasing,
    reachability,
    seen_in_training,
    shared_inputs,
    summarize,
    t_interval,
    train_and_evaluate,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("task,k", [("pointer", 1), ("pointer", 3), ("induction", 2), ("reachability", 2), ("listops", 2)])
def test_generators_are_deterministic_under_a_seed(task, k):
    a, b, c = make_task(task, 50, 7, k), make_task(task, 50, 7, k), make_task(task, 50, 8, k)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.tokens, c.tokens)
    assert a.tokens.dtype == torch.long and a.tokens.dim() == 3 and len(a.labels) == 50
    assert 0 < int(a.tokens.max()) < a.vocab_size and int(a.tokens.min()) >= 0
    assert 0 <= int(a.labels.min()) and int(a.labels.max()) < a.num_classes


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_pointer_chasing_answers(hops):
    d = pointer_chasing(200, hops, seed=1)
    n = d.num_classes
    for tokens, label in zip(d.tokens[..., 0].tolist(), d.labels.tolist()):
        f, s = [t - 1 for t in tokens[:n]], tokens[n] - 1 - n
        assert sorted(f) == list(range(n))  # a permutation
        visited = [s]
        for _ in range(hops):
            visited.append(f[visited[-1]])
        assert len(set(visited)) == hops + 1  # no hop can be skipped
        assert label == visited[-1]


def _induction_answer(x, hops):
    """hop_k by string search: the position after the last earlier occurrence, k times."""
    i = len(x) - 1
    for _ in range(hops):
        j = max((p for p in range(i) if x[p] == x[i]), default=None)
        if j is None or j + 1 == i:
            return None
        i = j + 1
    return x[i]


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_induction_hops_answers(hops):
    d = induction_hops(200, hops, seed=2)
    v = d.num_classes
    assert d.causal
    for tokens, label in zip(d.tokens.tolist(), d.labels.tolist()):
        x = [t[0] - 1 for t in tokens]
        prev = [t[1] - 1 - v for t in tokens]
        assert prev[0] == v and prev[1:] == x[:-1]  # the previous-token feature
        assert _induction_answer(x, hops) == label


def _bfs_distance(edges, s, t):
    dist = {s: 0}
    queue = deque([s])
    while queue:
        u = queue.popleft()
        for a, b in edges:
            if a == u and b not in dist:
                dist[b] = dist[u] + 1
                queue.append(b)
    return dist.get(t, math.inf)


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_reachability_answers(hops):
    d = reachability(200, hops, seed=3)
    n = (d.vocab_size - 1) // 4
    for tokens, label in zip(d.tokens.tolist(), d.labels.tolist()):
        edges = [(u - 1, v - 1 - n) for u, v in tokens[:-1]]
        s, t = tokens[-1][0] - 1 - 2 * n, tokens[-1][1] - 1 - 3 * n
        assert len(set(edges)) == len(edges) and all(a != b for a, b in edges)
        dist = _bfs_distance(edges, s, t)
        assert label == int(dist <= hops)
        if label:
            assert dist == hops  # positives need every hop
    assert 0.35 < d.labels.float().mean() < 0.65  # balanced


def _eval_listops(tokens):
    """A stack evaluator over the token strings (independent of the generator's recursion)."""
    stack = []
    for tok in tokens:
        if tok.startswith("["):
            stack.append([tok[1:]])
        elif tok == "]":
            op, *args = stack.pop()
            value = {"MAX": max, "MIN": min, "MED": lambda a: int(np.sort(a)[(len(a) - 1) // 2]),
                     "SM": lambda a: sum(a) % 10}[op](args)
            if not stack:
                return value
            stack[-1].append(value)
        else:
            stack[-1].append(int(tok))
    raise AssertionError("unbalanced expression")


def test_listops_answers():
    d = listops(200, seed=4, max_depth=3, max_len=64)
    assert d.readout == 0 and d.padding is not None
    for tokens, pad, label in zip(d.tokens[..., 0].tolist(), d.padding.tolist(), d.labels.tolist()):
        assert tokens[0] == LISTOPS_VOCAB.index("<cls>")
        real = [LISTOPS_VOCAB[t] for t, p in zip(tokens, pad) if not p][1:]
        assert _eval_listops(real) == label
        assert sum(1 for t in real if t.startswith("[")) == real.count("]")


def test_generators_refuse_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        pointer_chasing(4, 1, seed=-1)
    with pytest.raises(ValueError, match="num_cells"):
        pointer_chasing(4, 3, seed=0, num_cells=3)
    with pytest.raises(ValueError, match="Unknown task"):
        make_task("sorting", 4, 0)


def test_arms_and_grid():
    assert Arm().name == "softmax-d1"
    assert Arm(depth=2, steps=3, graph="keys", mix="recurrent", learnable_alpha=True).name == "keys-recurrent-T3-learn-d2"
    grid = arm_grid()
    assert len(grid) == 3 + 3 * 2 * 2 * 3 * 2 and len({a.name for a in grid}) == len(grid)
    with pytest.raises(ValueError):
        Arm(graph="values", steps=1)


def test_harness_on_a_tiny_budget():
    train, test = pointer_chasing(32 * 12, 1, seed=0), pointer_chasing(64, 1, seed=99)
    budget = Budget(steps=12, batch_size=32, warmup_steps=3, eval_batch_size=64)
    soft = train_and_evaluate(Arm(), train, test, budget, seed=0, d_model=16, num_heads=2)
    again = train_and_evaluate(Arm(), train, test, budget, seed=0, d_model=16, num_heads=2)
    qgfd = train_and_evaluate(Arm(steps=2, learnable_alpha=True), train, test, budget, seed=0, d_model=16, num_heads=2)
    assert soft["accuracy"] == again["accuracy"] and soft["final_loss"] == again["final_loss"]  # reproducible
    assert 0 <= soft["accuracy"] <= 1 and soft["final_loss"] < math.log(8) + 0.5
    assert qgfd["params"] == soft["params"] + 2  # one learnable alpha per head
    assert len(qgfd["alphas"]) == 1 and len(qgfd["alphas"][0]) == 2 and soft["alphas"] == []
    # A padded task (ListOps) runs through the masked path.
    lo = listops(32, seed=0, max_len=32)
    r = train_and_evaluate(Arm(steps=1, graph="keys"), lo, lo, Budget(steps=2, batch_size=16, warmup_steps=1), seed=0, d_model=16, num_heads=2)
    assert math.isfinite(r["final_loss"])


def test_classifier_ignores_padding():
    d = listops(8, seed=5, max_len=40)
    model = HopClassifier.for_task(d, Arm(steps=2, graph="keys", mix="recurrent"), d_model=16, num_heads=2).eval()
    longer = torch.cat([d.tokens, torch.zeros(8, 8, 1, dtype=torch.long)], 1)
    model2 = HopClassifier(d.vocab_size, 10, 48, model.arm, d_model=16, num_heads=2, readout=0)
    model2.load_state_dict({k: (v if k != "pos.weight" else torch.cat([v, torch.zeros(8, 16)])) for k, v in model.state_dict().items()})
    with torch.no_grad():
        a = model(d.tokens, d.padding)
        b = model2.eval()(longer, longer[..., 0] == 0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_statistics_against_known_values():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    lo, hi = t_interval(x)
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * s / sqrt(n)
    assert lo == pytest.approx(3 - half) and hi == pytest.approx(3 + half)
    s = summarize(x)
    assert s["n"] == 5 and s["mean"] == 3 and s["std"] == pytest.approx(math.sqrt(2.5))
    b1, b2 = bootstrap_interval(x, seed=0), bootstrap_interval(x, seed=0)
    assert b1 == b2 and 1.5 < b1[0] < 3 < b1[1] < 4.5
    assert bootstrap_interval([2.0, 2.0]) == (2.0, 2.0)
    assert t_interval([0.7]) == (0.7, 0.7)
    # Paired t-test: d = [1, 2, 3], mean 2, sd 1, t = 2 sqrt(3), two-sided p = 0.07417 (df 2).
    c = paired_comparison([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert c["mean_diff"] == 2 and c["p_value"] == pytest.approx(0.0741799, abs=1e-6)
    assert (c["wins"], c["ties"], c["losses"]) == (3, 0, 0)
    same = paired_comparison([0.5, 0.6], [0.5, 0.6])
    assert same["p_value"] == 1.0 and same["ties"] == 2
    with pytest.raises(ValueError):
        paired_comparison([1.0, 2.0], [1.0])


def test_docstring_examples():
    import doctest

    import benchmarks_qgfd

    result = doctest.testmod(benchmarks_qgfd, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_make_task_size_and_shared_inputs():
    p = make_task("pointer", 20, 0, hops=2, size=12)
    assert p.num_classes == 12 and p.seq_len == 13 and torch.equal(p.tokens, pointer_chasing(20, 2, 0, num_cells=12).tokens)
    assert make_task("induction", 5, 0, hops=2, size=16).seq_len == 16
    r = make_task("reachability", 5, 0, hops=2, size=9)
    assert r.vocab_size == 1 + 4 * 9 and r.seq_len == 12 + 1  # round(4 * 9 / 3) = 12 edges and the query
    assert make_task("listops", 5, 0, hops=2, size=32).seq_len == 32
    with pytest.raises(ValueError, match="size"):
        make_task("pointer", 5, 0, hops=1, size=0)
    # shared_inputs counts test rows that occur in training, token for token.
    a, b = pointer_chasing(50, 1, seed=0), pointer_chasing(30, 1, seed=1)
    assert shared_inputs(a, a.batch(slice(0, 10))) == 10
    mixed = b.batch(slice(0, 30))
    mixed.tokens = torch.cat([a.tokens[:7], b.tokens[7:]])
    expected = 7 + sum(any(torch.equal(t, u) for u in a.tokens) for t in b.tokens[7:])
    assert shared_inputs(a, mixed) == expected
    assert shared_inputs(a, pointer_chasing(5, 1, seed=0, num_cells=9)) == 0  # other shapes share nothing
    seen = seen_in_training(a, mixed)
    assert seen[:7].all() and int(seen.sum()) == expected and len(mixed.batch(~seen)) == 30 - expected


def _eval_script():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "eval_qgfd.py"
    spec = importlib.util.spec_from_file_location("eval_qgfd_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_script_task_names_and_budgets_are_kept_apart(tmp_path):
    ev = _eval_script()
    assert ev.parse_task("pointer-k2") == ("pointer", 2, None)
    assert ev.parse_task("listops-d3") == ("listops", 3, None)
    assert ev.parse_task("reachability-k2-n9") == ("reachability", 2, 9)
    for bad in ("pointer", "pointer-2", "pointer-k2-16", "pointer-kx"):
        with pytest.raises(ValueError, match="Bad task"):
            ev.parse_task(bad)
    # The grid on a tiny budget writes one record per arm, with the test-in-train fraction; a rerun
    # skips them; the report never pools two budgets of one task.
    common = ["grid", "--arms", "core", "--only", "softmax-d1", "attention-seed-T1-learn-d1", "--tasks", "pointer-k1-n4",
              "--seeds", "0", "--batch-size", "8", "--d-model", "8", "--num-heads", "2", "--test-size", "16", "--out-dir", str(tmp_path)]
    ev.main(common + ["--steps", "3"])
    ev.main(common + ["--steps", "3"])  # resumes: nothing new
    ev.main(common + ["--steps", "4"])
    runs = ev.load_runs(str(tmp_path))
    assert len(runs) == 4 and {r["task"] for r in runs} == {"pointer-k1-n4"}
    assert all(0 <= r["test_in_train"] <= 1 and "accuracy_unseen" in r for r in runs)
    assert len({r["setting"] for r in runs}) == 2 and any("3 steps" in r["setting"] for r in runs)
    tables = ev.grid_tables(runs)
    assert tables.count("### pointer-k1-n4, ") == 2


def test_eval_script_unseen_accuracy():
    ev = _eval_script()
    assert ev.unseen_accuracy({"accuracy": 0.9, "accuracy_unseen": 0.7, "test_in_train": 0.5}) == (0.7, True)
    low, exact = ev.unseen_accuracy({"accuracy": 0.9, "test_in_train": 0.6})  # at best all 60% seen right: 30/40 unseen
    assert low == pytest.approx(0.75) and not exact
    assert ev.unseen_accuracy({"accuracy": 0.5, "test_in_train": 0.6}) == (0.0, False)
    assert ev.unseen_accuracy({"accuracy": 0.5}) == (None, False)
    assert ev.unseen_accuracy({"accuracy": 0.5, "test_in_train": 0.0}) == (0.5, True)
    assert ev.unseen_cell([{"accuracy": 1.0, "test_in_train": 0.5}, {"accuracy": 0.8, "accuracy_unseen": 0.6}]) == ">= 0.800"
    assert ev.unseen_cell([{"accuracy": 0.8, "accuracy_unseen": 0.6}]) == "0.600"


def test_eval_script_shared_table_keeps_budgets_apart(tmp_path):
    import json

    ev = _eval_script()
    scores = {"text_exact_match": 0.5, "text_heldout_loss": 0.2, "image_fd": 9.0, "image_confidence": 0.7}
    with open(tmp_path / "shared.jsonl", "w") as f:
        for steps, em in ((300, 0.0), (3000, 0.9)):
            for seed in (0, 1):
                f.write(json.dumps({"schedule": "joint", "attention": "softmax", "seed": seed, "steps_per_modality": steps,
                                    "final": dict(scores, text_exact_match=em), "cpu_s": 1.0}) + "\n")
    table = ev.shared_table(str(tmp_path))
    assert table.count("### ") == 2 and "### 300 optimizer steps" in table and "### 3000 optimizer steps" in table
    rows = [line for line in table.splitlines() if line.startswith("| joint")]
    assert len(rows) == 2 and "| 0.000 +- 0.000 |" in rows[0] and "| 0.900 +- 0.000 |" in rows[1]


def test_eval_script_factor_tables_balance_the_levels():
    ev = _eval_script()
    setting = "toy, 3 steps (lr 0.003, batch 8, width 8)"
    runs = []
    for graph in ("attention", "keys"):
        for steps in (1, 2):
            for seed in (0, 1):
                if (graph, steps, seed) == ("keys", 2, 1):
                    continue  # a run that is missing: its partner (attention, T=2, seed 1) leaves the graph comparison
                runs.append({"setting": setting, "arm": f"{graph}-seed-T{steps}-learn-d1", "steps": steps, "graph": graph, "mix": "seed",
                             "learnable_alpha": True, "alpha": 0.5, "depth": 1, "seed": seed,
                             "accuracy": 0.5 + 0.1 * (graph == "keys") + 0.01 * steps + 0.001 * seed})
    runs.append({"setting": setting, "arm": "softmax-d1", "steps": 0, "graph": "attention", "mix": "seed", "learnable_alpha": False,
                 "alpha": 0.5, "depth": 1, "seed": 0, "accuracy": 0.9})
    table = ev.factor_tables(runs, min_arms=4)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[3:5] for line in table.splitlines() if line.startswith("| ")}
    # graph: the 3 complete (T, seed) cells; attention 0.511, 0.521, 0.512 -> 0.5147; keys the same + 0.1
    assert rows[("graph", "attention")][0].strip() == "3" and float(rows[("graph", "attention")][1]) == pytest.approx(0.5147, abs=1e-3)
    assert float(rows[("graph", "keys")][1]) == pytest.approx(0.6147, abs=1e-3)
    # T: the (graph, seed) cells with both T; (keys, seed 1) has T = 1 only: T = 2 is 0.520, 0.521, 0.620
    assert rows[("T", "2")][0].strip() == "3" and float(rows[("T", "2")][1]) == pytest.approx(0.5537, abs=1e-3)
    assert ("softmax", "softmax-d1") in rows
    assert ev.factor_tables(runs, min_arms=5) == ""  # 4 QGFD arms: not a factorial to summarise
