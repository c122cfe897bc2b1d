"""qgfd_hf.training.finetune: the fine-tuning harness (softmax vs QGFD arms over seeds, paired
statistics) on a tiny random BERT and a word-level tokenizer (no download), and its statistics."""

import itertools

import numpy as np
import pytest
import torch
from transformers import BertConfig

import qgfd_hf
from qgfd_hf.training.finetune import ARMS, FinetuneSettings, compare_arms, finetune_one, format_results, paired_test
from test_modeling_qgfd import WORDS, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def toy_task(n, seed):
    """Label 0 if the text holds "red", 1 if "blue", 2 if "green" (plus filler words)."""
    rng = np.random.default_rng(seed)
    fillers = [w for w in WORDS if w not in ("red", "blue", "green")]
    labels = rng.integers(0, 3, size=n)
    texts = []
    for y in labels:
        words = list(rng.choice(fillers, size=4)) + [("red", "blue", "green")[y]]
        rng.shuffle(words)
        texts.append(" ".join(words))
    return texts, labels


def tiny_bert():
    return BertConfig(vocab_size=len(WORDS) + 3, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=16, pad_token_id=0)


SETTINGS = FinetuneSettings(max_steps=40, batch_size=16, learning_rate=3e-3, lr_warmup_steps=5, qgfd_warmup_steps=20, max_length=8)


def test_every_arm_runs_and_arms_are_paired():
    torch.manual_seed(0)
    train, test = toy_task(200, 0), toy_task(60, 1)
    results = compare_arms(*train, *test, seeds=[0, 1], settings=SETTINGS, encoder=tiny_bert(), tokenizer=make_tokenizer())
    assert set(results["accuracy"]) == set(ARMS) and all(len(v) == 2 for v in results["accuracy"].values())
    assert all(0 <= a <= 1 for v in results["accuracy"].values() for a in v)
    # The task is learnable: fine-tuned softmax beats chance (1/3) clearly.
    assert min(results["accuracy"]["softmax"]) > 0.6, results["accuracy"]
    assert set(results["tests"]) == {"qgfd-warmup", "qgfd-learned", "qgfd-zero-shot"}
    for test_result in results["tests"].values():
        assert test_result["n"] == 2 and 0 < test_result["p_sign_flip"] <= 1
    table = format_results(results)
    assert table.count("\n") == 1 + len(ARMS) and "| softmax |" in table


def test_arms_differ_only_in_attention():
    """Same seed: same head initialisation and batches; the QGFD arms run QGFD (warm-up / learnable
    alpha), softmax does not, and a QGFD arm with alpha -> its softmax twin at the first step."""
    train = toy_task(64, 0)
    settings = FinetuneSettings(max_steps=1, batch_size=8, learning_rate=1e-3, lr_warmup_steps=0, qgfd_warmup_steps=10, max_length=8,
                                dropout=0.0)
    from transformers import AutoModel

    torch.manual_seed(0)
    config = tiny_bert()
    config.attention_probs_dropout_prob = config.hidden_dropout_prob = 0.0  # no random draws that differ between kernels
    encoder = AutoModel.from_config(config)
    labels = np.asarray(train[1])
    soft = finetune_one("softmax", 3, train[0], labels, settings, encoder, make_tokenizer(), 3)
    warm = finetune_one("qgfd-warmup", 3, train[0], labels, settings, encoder, make_tokenizer(), 3)
    learned = finetune_one("qgfd-learned", 3, train[0], labels, settings, encoder, make_tokenizer(), 3)
    assert not qgfd_hf.is_qgfd_patched(soft.encoder)
    assert qgfd_hf.get_qgfd_settings(warm.encoder).warmup_steps == 10
    assert qgfd_hf.get_qgfd_settings(learned.encoder).learnable_alpha
    # With warm-up, step 0 trains with alpha 0: exactly the softmax arm's first (and only) step.
    warm_state = warm.state_dict()
    for k, v in soft.state_dict().items():
        torch.testing.assert_close(warm_state[k], v, rtol=0, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="Unknown arm to fine-tune 'qgfd-zero-shot'"):
        finetune_one("qgfd-zero-shot", 0, train[0], labels, settings, encoder, make_tokenizer(), 3)


def test_paired_test_statistics():
    # Exact sign-flip: with every difference positive, only the all-+ and all-- patterns are as extreme.
    r = paired_test([0.9, 0.8, 0.85, 0.7, 0.75], [0.7, 0.65, 0.6, 0.6, 0.7])
    assert r["n"] == 5 and r["mean_diff"] == pytest.approx(0.15)
    assert r["p_sign_flip"] == pytest.approx(2 / 32)
    # The t-test agrees with scipy's paired t-test.
    from scipy import stats

    a, b = [0.81, 0.79, 0.84, 0.80, 0.83], [0.80, 0.80, 0.82, 0.78, 0.80]
    assert paired_test(a, b)["p_t"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-9)
    # Sign-flip by brute force on a mixed case.
    d = np.subtract(a, b)
    brute = np.mean([abs(np.mean(np.multiply(s, d))) >= abs(d.mean()) - 1e-12 for s in itertools.product((1, -1), repeat=5)])
    assert paired_test(a, b)["p_sign_flip"] == pytest.approx(brute)
    # No difference at all: p_t is undefined, the sign-flip p is 1.
    same = paired_test([0.5, 0.5], [0.5, 0.5])
    assert np.isnan(same["p_t"]) and same["p_sign_flip"] == 1.0
    # More than 16 seeds: Monte Carlo, close to the exact answer's order.
    big = paired_test(np.full(20, 0.6) + np.linspace(0, 0.01, 20), np.full(20, 0.5))
    assert big["p_sign_flip"] < 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"paired 1-d sequences of at least 2 values"):
        paired_test([0.1], [0.2])
    with pytest.raises(ValueError, match=r"`train_labels` must be 3 ints >= 0"):
        compare_arms(["a", "b", "c"], [0, 1], ["a"], [0], encoder=tiny_bert(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match=r"`test_texts` must hold strings; item 0 is 3"):
        compare_arms(["a"], [0], [3], [0], encoder=tiny_bert(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match=r"Unknown arms \['attn'\]"):
        compare_arms(["a"], [0], ["a"], [0], arms=["attn"], encoder=tiny_bert(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match="include 'softmax'"):
        compare_arms(["a"], [0], ["a"], [0], arms=["qgfd-zero-shot"], encoder=tiny_bert(), tokenizer=make_tokenizer())
    with pytest.raises(ValueError, match=r"`qgfd_alpha` must lie in \(0, 1\], got 0"):
        FinetuneSettings(qgfd_alpha=0)
    with pytest.raises(ValueError, match=r"`max_steps` must be an int >= 1, got 0"):
        FinetuneSettings(max_steps=0)
    with pytest.raises(ValueError, match="needs `tokenizer=`"):
        compare_arms(["a"], [0], ["a"], [0], encoder=tiny_bert())
