"""Does QGFD help, and where? (issue 14). Trains small models on tasks that need k = 1, 2, 3 hops
(pointer chasing, k-hop induction heads, graph reachability) and on ListOps (a small Long Range
Arena task), with softmax attention and QGFD arms at depth 1, 2, 3, over seeds, at one budget;
then the shared text+image denoiser (sequential against joint training) and QGFD patched into a
model pretrained here (alpha warm-up from 0). Every table in docs/evaluation.md comes from here.

    # the grid (appends one JSON line per run to --out-dir/runs-<tag>.jsonl and resumes: runs
    # already there are skipped; split it over processes with --tasks and --tag). Arm sets: "core"
    # (5 arms), "reduced" (10 arms: depth 1-3, T 1-3, both graphs and mixes, fixed alpha), "full"
    # (the whole factorial: 75 arms per task, hours of CPU).
    python scripts/eval_qgfd.py grid --arms core --tasks pointer-k2 induction-k1 --tag core     # what docs/evaluation.md reports over 5 seeds
    python scripts/eval_qgfd.py grid --tasks pointer-k1 pointer-k2 pointer-k3 --tag a            # the reduced arm set, every task
    python scripts/eval_qgfd.py grid --tasks induction-k1 induction-k2 induction-k3 --tag b
    python scripts/eval_qgfd.py grid --tasks listops-d3 --tag c
    python scripts/eval_qgfd.py grid --tasks reachability-k1 reachability-k2 reachability-k3 --tag d
    python scripts/eval_qgfd.py grid --arms full --tag full                                      # all 75 arms x 10 tasks x 5 seeds

    # the shared denoiser: sequential text -> images against joint (alternating batches), +- QGFD
    python scripts/eval_qgfd.py shared --seeds 0 1 --steps 300

    # fine-tuning: a tiny BERT pretrained here on pointer-k1, patched with QGFD (warm-up from 0)
    python scripts/eval_qgfd.py finetune --seeds 0 1 2 --pretrain-steps 400 --finetune-steps 200 --warmup 50 --test-size 500

    # tables (markdown), plots (PNG) and one JSON of all runs, from what the commands above wrote
    python scripts/eval_qgfd.py report --out docs/evaluation_results.md --plot-dir docs/evaluation

The demo tasks (digits FD, word reversal) are `scripts/ab_qgfd_vs_softmax.py` (see docs/ab.md):

    python scripts/ab_qgfd_vs_softmax.py --tasks text --arms softmax qgfd-seed qgfd-keys-rec --seeds 0 1 2 \
        --work-dir eval-runs/ab-full --out eval-runs/ab-text-full.md

Run with OMP_NUM_THREADS=1 (the script also sets one torch thread): costs are CPU seconds of one thread.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from benchmarks_qgfd import (
    Arm,
    Budget,
    arm_grid,
    make_task,
    paired_comparison,
    seen_in_training,
    summarize,
    train_and_evaluate,
)

TASK_CONFIGS = [f"{t}-k{k}" for t in ("pointer", "induction", "reachability") for k in (1, 2, 3)] + ["listops-d3"]
TEST_SEED = 10_000  # the test set: the same for every seed and arm, never drawn for training


def reduced_arms():
    """The arms docs/evaluation.md reports: depth for softmax; T, graph, mix and fixed alpha at
    depth 1 for QGFD; the seed's rule at depth 2 (does QGFD still add with depth?)."""
    seed_rule = dict(graph="attention", mix="seed")
    return [
        Arm(depth=1), Arm(depth=2), Arm(depth=3),
        Arm(depth=1, steps=1, learnable_alpha=True, **seed_rule),
        Arm(depth=1, steps=2, learnable_alpha=True, **seed_rule),
        Arm(depth=1, steps=3, learnable_alpha=True, **seed_rule),
        Arm(depth=1, steps=2, learnable_alpha=False, **seed_rule),
        Arm(depth=1, steps=2, learnable_alpha=True, graph="attention", mix="recurrent"),
        Arm(depth=1, steps=2, learnable_alpha=True, graph="keys", mix="recurrent"),
        Arm(depth=2, steps=2, learnable_alpha=True, **seed_rule),
    ]


def core_arms():
    """The few arms run over 5 seeds on this shared CPU: softmax at depth 1 and 2, and one QGFD
    layer with the seed's rule (T = 1, 2) or the key graph (recurrent mix, T = 2)."""
    return [Arm(depth=1), Arm(depth=2),
            Arm(depth=1, steps=1, learnable_alpha=True), Arm(depth=1, steps=2, learnable_alpha=True),
            Arm(depth=1, steps=2, learnable_alpha=True, graph="keys", mix="recurrent")]


ARM_SETS = {"core": core_arms, "reduced": reduced_arms, "full": arm_grid}


def parse_task(config: str):
    """"pointer-k2" -> ("pointer", 2, None); "listops-d3" -> ("listops", 3, None); "pointer-k2-n16" ->
    ("pointer", 2, 16) (n: `make_task`'s size: cells, sequence length, nodes or maximum length)."""
    parts = config.split("-")
    try:
        if len(parts) == 2 and parts[1][:1] in "kd":
            return parts[0], int(parts[1][1:]), None
        if len(parts) == 3 and parts[1][:1] in "kd" and parts[2][:1] == "n":
            return parts[0], int(parts[1][1:]), int(parts[2][1:])
    except ValueError:
        pass
    raise ValueError(f"Bad task {config!r}: allowed <task>-k<hops>[-n<size>] (listops: listops-d<depth>[-n<length>]), "
                     f"task one of pointer, induction, reachability, listops; e.g. {TASK_CONFIGS[:3]}")


def task_config(value: str) -> str:
    """argparse type of --tasks: a valid task configuration, unchanged."""
    try:
        parse_task(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return value


# ----------------------------------------------------------------------------------------
# 1. The grid
# ----------------------------------------------------------------------------------------


def run_grid(args):
    arms = ARM_SETS[args.arms]()
    if args.only:
        unknown = sorted(set(args.only) - {a.name for a in arms})
        if unknown:
            raise SystemExit(f"--only: {unknown} not in the {args.arms!r} arm set; allowed: {[a.name for a in arms]}")
        arms = [a for a in arms if a.name in args.only]
    budget = Budget(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate)
    path = os.path.join(args.out_dir, f"runs-{args.tag}.jsonl")
    os.makedirs(args.out_dir, exist_ok=True)
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(setting(r), r["arm"], r["seed"]) for r in map(json.loads, f)}
    print(f"{len(arms)} arms x {len(args.tasks)} tasks x {len(args.seeds)} seeds -> {path} ({len(done)} already there)", flush=True)
    data = {}
    for seed in args.seeds:  # seeds outermost: a stopped grid still has every arm at the first seeds
        for config in args.tasks:
            task, k, size = parse_task(config)
            if config not in data:
                data[config] = make_task(task, args.test_size, TEST_SEED, k, size)
            test = data[config]
            train = make_task(task, budget.steps * budget.batch_size, seed, k, size)  # fresh examples, one pass
            if size is not None:
                train.name = test.name = config
            seen = seen_in_training(train, test)  # test inputs that training also shows (memory, not the rule)
            unseen = {"unseen": test.batch(~seen)}
            for arm in arms:
                if (setting({"task": test.name, "budget": asdict(budget), "d_model": args.d_model}), arm.name, seed) in done:
                    continue
                record = train_and_evaluate(arm, train, test, budget, seed, d_model=args.d_model, num_heads=args.num_heads,
                                            extra_tests=unseen)
                record["majority_accuracy"], record["test_size"] = test.majority_accuracy(), len(test)
                record["test_in_train"] = float(seen.float().mean())
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] {test.name} {arm.name} seed {seed}: acc {record['accuracy']:.3f} "
                      f"loss {record['final_loss']:.3f} cpu {record['cpu_s']:.1f}s", flush=True)


# ----------------------------------------------------------------------------------------
# 2. The shared denoiser: sequential against joint training, with and without QGFD
# ----------------------------------------------------------------------------------------

SHARED_QGFD = {  # the demo's QGFD (docs/ab.md "qgfd-seed") and plain attention, exactly
    "softmax": dict(qgfd_alpha=0.0),
    "qgfd-seed": dict(qgfd_steps=1, qgfd_alpha=0.5, qgfd_graph="attention", qgfd_mix="seed", qgfd_warmup_steps=200),
}


def build_shared(seed, attention):
    """train_shared.py's model: a 3-layer, 64-wide shared denoiser, a random small T5 for the
    reversal task's conditioning, 2x2 pixel patches of the 8x8 digits, a 32-wide shared latent."""
    from accelerate.utils import set_seed
    from transformers import T5Config

    from qgfd_hf import create_qgfd_diffusion_model
    from qgfd_hf.data.core import REVERSAL_VOCAB, build_word_tokenizer

    tokenizer = build_word_tokenizer(REVERSAL_VOCAB)
    t5 = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=0,
                  eos_token_id=1, decoder_start_token_id=0)
    set_seed(seed)
    model, _, _ = create_qgfd_diffusion_model(
        "shared", {"text": t5, "image": None}, None, tokenizer=tokenizer,
        modality_kwargs={"text": dict(conditional=True, seq_len=7, freeze_encoder=True, train_condition_encoder=True),
                         "image": dict(latent_space="pixels", image_size=8, patch_size=2, num_channels=1)},
        d_model=64, num_layers=3, num_heads=4, d_ff=128, latent_dim=32, beta_schedule="cosine", prediction_type="v",
        **SHARED_QGFD[attention])
    return model, tokenizer


def shared_phase(model, streams, steps, seed, lr=2e-3):
    """One training phase: `steps` AdamW steps (warm-up min(100, steps/10), cosine, clip 1.0, EMA
    0.999, as QGFDTrainer does), the modality of step i being streams[i % len(streams)]. Ends with
    the EMA weights in the model (what train_shared.py samples and carries to its next phase)."""
    from qgfd_hf import set_qgfd_step
    from qgfd_hf.training.ema import EMAModel

    budget = Budget(steps=steps, learning_rate=lr, warmup_steps=min(100, steps // 10), weight_decay=0.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ema = EMAModel(model, 0.999)
    gen = torch.Generator().manual_seed(seed)
    losses = {m: [] for m, _ in streams}
    model.train()
    for step in range(steps):
        modality, batches = streams[step % len(streams)]
        set_qgfd_step(model, step)
        for group in opt.param_groups:
            group["lr"] = budget.lr_at(step)
        loss = model.compute_loss(next(batches), generator=gen, modality=modality)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses[modality].append(loss.item())
    ema.copy_to(model)
    return {m: float(np.mean(v[-max(1, len(v) // 10):])) for m, v in losses.items() if v}


def batch_stream(data, collator, batch_size, seed):
    """Endless shuffled batches of `data` (a datasets.Dataset), in an order fixed by `seed`."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=g).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collator(data.select(order[i:i + batch_size]).to_list())


def shared_scores(model, tokenizer, text_heldout, evaluator, num_images=100):
    """Text exact match on the held-out reversal pairs (DDIM 50, as train_shared.py), the text
    diffusion loss on them (fixed noise: a retention measure that does not need the text to be
    learned to the letter), and the digits' FD / confidence of DDIM-50 samples (the demo's
    classifier features)."""
    from qgfd_hf.data.core import Seq2SeqCollator
    from qgfd_hf.metrics.core import exact_match

    model.eval()
    with torch.no_grad():
        batch = Seq2SeqCollator(tokenizer, 7)(text_heldout.to_list())
        text_loss = float(model.compute_loss(batch, generator=torch.Generator().manual_seed(0), modality="text")["diffusion_loss"])
    enc = tokenizer(list(text_heldout["source"]), padding=True, return_tensors="pt")
    with torch.no_grad():
        cond, mask = model.encode_condition(modality="text", input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        lat = model.diffusion_sample(cond.shape[0], cond, mask, modality="text", num_inference_steps=50,
                                     generator=torch.Generator().manual_seed(0))
        em = exact_match(model.decode_to_text(lat, tokenizer), text_heldout["target"])
        lat = model.diffusion_sample(num_images, modality="image", num_inference_steps=50,
                                     generator=torch.Generator().manual_seed(0))
        images = model.decode_latents(lat, modality="image").float().clamp(0, 1).numpy()
    score = evaluator.score(images)
    model.train()
    return {"text_exact_match": em, "text_heldout_loss": text_loss, "image_fd": score["fd"], "image_confidence": score["confidence"]}


def run_shared(args):
    from qgfd_hf.data.core import (
        ImageCollator,
        Seq2SeqCollator,
        load_digits_dataset,
        make_reversal_dataset,
        train_test_split_dataset,
    )
    from qgfd_hf.metrics.core import DigitsEvaluator

    text_train, text_heldout = train_test_split_dataset(make_reversal_dataset(4000), 200)
    digits = load_digits_dataset()
    evaluator = DigitsEvaluator(digits["train"]["pixel_values"], digits["train"]["label"], digits["test"]["pixel_values"],
                                digits["test"]["label"])
    path = os.path.join(args.out_dir, "shared.jsonl")
    os.makedirs(args.out_dir, exist_ok=True)
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(r["schedule"], r["attention"], r["seed"], r["steps_per_modality"]) for r in map(json.loads, f)}
    for seed in args.seeds:
        for attention in SHARED_QGFD:
            for schedule in ("sequential", "joint"):
                if (schedule, attention, seed, args.steps) in done:
                    continue
                model, tokenizer = build_shared(seed, attention)
                cfg = model.config.modality_config("image")
                text = ("text", batch_stream(text_train, Seq2SeqCollator(tokenizer, 7), args.batch_size, seed))
                image = ("image", batch_stream(digits["train"], ImageCollator(1, 8, cfg.image_mean, cfg.image_std), args.batch_size, seed))
                cpu = time.process_time()
                record = {"schedule": schedule, "attention": attention, "seed": seed, "steps_per_modality": args.steps}
                if schedule == "sequential":  # text, then images: two phases, each its own optimizer and schedule
                    record["loss_text"] = shared_phase(model, [text], args.steps, seed)["text"]
                    record["after_text_phase"] = shared_scores(model, tokenizer, text_heldout, evaluator)
                    record["loss_image"] = shared_phase(model, [image], args.steps, seed + 1)["image"]
                else:  # one phase of 2 x steps, text and image batches alternating
                    losses = shared_phase(model, [text, image], 2 * args.steps, seed)
                    record["loss_text"], record["loss_image"] = losses["text"], losses["image"]
                record["final"] = shared_scores(model, tokenizer, text_heldout, evaluator)
                record["cpu_s"] = time.process_time() - cpu
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] shared {schedule} {attention} seed {seed}: {record}", flush=True)


def shared_table(out_dir):
    """One table per budget (steps per modality): runs at different budgets are never pooled."""
    path = os.path.join(out_dir, "shared.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rs = [json.loads(line) for line in f if line.strip()]

    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{np.mean(values):.3f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"

    lines = ["## Shared denoiser: sequential against joint training\n"]
    for steps in sorted({r["steps_per_modality"] for r in rs}):
        at = [r for r in rs if r["steps_per_modality"] == steps]
        lines += [f"### {steps} optimizer steps per modality\n",
                  f"Sequential: {steps} text, then {steps} image; joint: {2 * steps} alternating text and image batches; "
                  f"mean +- std over seeds {sorted(set(r['seed'] for r in at))}. Text: exact match on 200 held-out "
                  "reversal pairs; images: FD (lower is better) and classifier confidence of 100 DDIM-50 samples; held-out "
                  "text loss: the x0 diffusion loss on the 200 held-out pairs with fixed noise (lower is better).\n",
                  "| schedule | attention | seeds | text EM after text phase | text EM at the end | held-out text loss after "
                  "text phase | held-out text loss at the end | image FD at the end | image confidence | CPU s |",
                  "|---|---|---:|---|---|---|---|---|---|---:|"]
        for schedule in ("sequential", "joint"):
            for attention in SHARED_QGFD:
                g = [r for r in at if r["schedule"] == schedule and r["attention"] == attention]
                if not g:
                    continue
                lines.append(f"| {schedule} | {attention} | {len(g)} | "
                             f"{cell([r.get('after_text_phase', {}).get('text_exact_match') for r in g])} | "
                             f"{cell([r['final']['text_exact_match'] for r in g])} | "
                             f"{cell([r.get('after_text_phase', {}).get('text_heldout_loss') for r in g])} | "
                             f"{cell([r['final']['text_heldout_loss'] for r in g])} | {cell([r['final']['image_fd'] for r in g])} | "
                             f"{cell([r['final']['image_confidence'] for r in g])} | {np.mean([r['cpu_s'] for r in g]):.0f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# 3. Fine-tuning: QGFD patched into a model pretrained here, alpha warm-up from 0
# ----------------------------------------------------------------------------------------


class BertReadout(torch.nn.Module):
    """A tiny BertModel (no dropout) and a linear head on the task's readout position."""

    def __init__(self, data, width=64, layers=2):
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=data.vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=2 * width, max_position_embeddings=data.seq_len, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = torch.nn.Linear(width, data.num_classes)
        self.readout = data.readout

    def forward(self, tokens, padding=None):
        mask = None if padding is None else (~padding).long()
        h = self.bert(input_ids=tokens[..., 0], attention_mask=mask).last_hidden_state  # (B, L, D)
        return self.head(h[:, self.readout])


FINETUNE_ARMS = {  # what is patched in before fine-tuning (None: the pretrained softmax model, fine-tuned as it is)
    "softmax": None,
    "qgfd-warmup": dict(steps=1, alpha=0.5, graph="attention", mix="seed"),  # warmup_steps from --warmup
    "qgfd-no-warmup": dict(steps=1, alpha=0.5, graph="attention", mix="seed", warmup_steps=0),
}


def run_finetune(args):
    import copy

    from qgfd_hf import patch_model, set_qgfd_step
    from benchmarks_qgfd import evaluate_accuracy, train_model

    path = os.path.join(args.out_dir, "finetune.jsonl")
    os.makedirs(args.out_dir, exist_ok=True)
    done = set()
    if os.path.exists(path):
        with open(path) as f:
            done = {(r["target"], r["arm"], r["seed"]) for r in map(json.loads, f)}
    tests = {k: make_task("pointer", args.test_size, TEST_SEED, k) for k in (1, 2)}
    checkpoints = sorted({0, 25, 50, args.warmup, 2 * args.warmup, args.finetune_steps})
    for seed in args.seeds:
        # 1. Pretrain with softmax attention on pointer-k1.
        torch.manual_seed(seed)
        pretrained = BertReadout(tests[1])
        train_model(pretrained, make_task("pointer", args.pretrain_steps * 64, seed, 1), Budget(steps=args.pretrain_steps), seed)
        pretrained.eval()
        base = {k: evaluate_accuracy(pretrained, t) for k, t in tests.items()}
        for k in (1, 2):  # 2. Fine-tune on the same task (k=1) and on a task that needs one more hop (k=2).
            train = make_task("pointer", args.finetune_steps * 64, seed + 100, k)
            for arm, settings in FINETUNE_ARMS.items():
                if (f"pointer-k{k}", arm, seed) in done:
                    continue
                model = copy.deepcopy(pretrained)
                if settings is not None:
                    patch_model(model.bert, **{"warmup_steps": args.warmup, **settings})
                curve = []

                def callback(step, m):  # accuracy at full alpha (eval) and at the warm-up's alpha (train mode, no dropout)
                    if step in checkpoints:
                        set_qgfd_step(m, step)
                        m.eval()
                        full = evaluate_accuracy(m, tests[k])
                        m.train()
                        curve.append({"step": step, "acc_full_alpha": full, "acc_warmup_alpha": evaluate_accuracy(m, tests[k])})

                stats = train_model(model, train, Budget(steps=args.finetune_steps, learning_rate=1e-3, warmup_steps=20), seed,
                                    callback=callback)
                record = {"target": f"pointer-k{k}", "arm": arm, "seed": seed, "pretrained_acc": base[k], "curve": curve,
                          "final_acc": curve[-1]["acc_full_alpha"], **stats, "warmup": args.warmup if arm == "qgfd-warmup" else 0}
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"[{time.strftime('%H:%M:%S')}] finetune pointer-k{k} {arm} seed {seed}: pretrained {base[k]:.3f} "
                      f"curve {[(c['step'], round(c['acc_full_alpha'], 3), round(c['acc_warmup_alpha'], 3)) for c in curve]}", flush=True)


def finetune_table(out_dir):
    path = os.path.join(out_dir, "finetune.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rs = [json.loads(line) for line in f if line.strip()]
    steps = [c["step"] for c in rs[0]["curve"]]
    lines = ["## Fine-tuning a pretrained model with QGFD patched in\n",
             "A tiny BERT (2 layers, 64 wide, no dropout) pretrained here with softmax attention on pointer-k1, then "
             "fine-tuned on pointer-k1 (the same task) and on pointer-k2 (one hop more), each arm from the same "
             "pretrained weights with the same data and budget. Test accuracy, mean +- std over seeds "
             f"{sorted(set(r['seed'] for r in rs))}, at fine-tuning steps {steps}: at full alpha (eval mode) / at the "
             "warm-up's current alpha (train mode; no dropout, so the only difference is alpha).\n",
             "| target | arm | seeds | pretrained (softmax) | " + " | ".join(f"step {s}" for s in steps) + " | final vs softmax (paired) |",
             "|---|---|---:|---|" + "---|" * len(steps) + "---|"]
    for target in dict.fromkeys(r["target"] for r in rs):
        ref = {r["seed"]: r["final_acc"] for r in rs if r["target"] == target and r["arm"] == "softmax"}
        for arm in FINETUNE_ARMS:
            g = [r for r in rs if r["target"] == target and r["arm"] == arm]
            if not g:
                continue
            cells = []
            for i in range(len(steps)):
                full = [r["curve"][i]["acc_full_alpha"] for r in g]
                warm = [r["curve"][i]["acc_warmup_alpha"] for r in g]
                cells.append(f"{np.mean(full):.3f} / {np.mean(warm):.3f}")
            seeds = sorted(set(ref) & {r["seed"] for r in g})
            diff = "-" if arm == "softmax" or len(seeds) < 2 else fmt_diff(paired_comparison(
                [next(r["final_acc"] for r in g if r["seed"] == s) for s in seeds], [ref[s] for s in seeds]))
            pre = [r["pretrained_acc"] for r in g]
            lines.append(f"| {target} | {arm} | {len(g)} | {np.mean(pre):.3f} +- {np.std(pre, ddof=1) if len(pre) > 1 else 0:.3f} | "
                         + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# 4. The report: tables, plots, one JSON
# ----------------------------------------------------------------------------------------


def load_runs(out_dir):
    runs = []
    for path in sorted(glob.glob(os.path.join(out_dir, "runs-*.jsonl"))):
        with open(path) as f:
            runs += [json.loads(line) for line in f if line.strip()]
    unique = {}
    for r in runs:  # a run that two processes made (the same task, budget, arm and seed) counts once
        r["setting"] = setting(r)
        unique.setdefault((r["setting"], r["arm"], r["seed"]), r)
    return sorted(unique.values(), key=lambda r: (r["task"], r["budget"]["steps"], r["d_model"], r["budget"]["learning_rate"]))


def setting(run):
    """What a table compares arms at: the task and the budget, e.g. "pointer-k2, 4000 steps (lr 0.003, width 32)".
    Runs of one task at different budgets are never pooled."""
    b = run["budget"]
    return f"{run['task']}, {b['steps']} steps (lr {b['learning_rate']:g}, batch {b['batch_size']}, width {run['d_model']})"


def fmt_ci(s):
    return f"{s['mean']:.3f} +- {s['std']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"


def fmt_diff(c):
    return f"{c['mean_diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] p={c['p_value']:.2g} ({c['wins']}/{c['ties']}/{c['losses']})"


def by_seed(runs, task, arm):
    return {r["seed"]: r for r in runs if r["setting"] == task and r["arm"] == arm}


def paired(runs, task, arm, ref):
    a, b = by_seed(runs, task, arm), by_seed(runs, task, ref)
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2 or arm == ref:
        return "-"
    return fmt_diff(paired_comparison([a[s]["accuracy"] for s in seeds], [b[s]["accuracy"] for s in seeds]))


def unseen_accuracy(run):
    """(accuracy on the test examples training never showed, exact): measured when the run recorded
    it; else the lower bound max(0, (acc - f) / (1 - f)) from the accuracy and the seen fraction f
    (every seen example right); None when unknown."""
    if run.get("accuracy_unseen") is not None:
        return run["accuracy_unseen"], True
    f = run.get("test_in_train")
    if f is None or f >= 1:
        return None, False
    return max(0.0, (run["accuracy"] - f) / (1 - f)), f == 0  # no test input seen: the bound is the accuracy


def unseen_cell(runs):
    """Mean over seeds of `unseen_accuracy`: "0.981" when measured, ">= 0.97" when some seeds only give the bound."""
    values = [unseen_accuracy(r) for r in runs]
    if not values or any(v is None for v, _ in values):
        return ""
    mean = np.mean([v for v, _ in values])
    return f"{mean:.3f}" if all(exact for _, exact in values) else f">= {mean:.3f}"


def grid_tables(runs):
    tasks = list(dict.fromkeys(r["setting"] for r in runs))
    order = {a.name: i for i, a in enumerate(reduced_arms() + arm_grid())}
    out = []
    for task in tasks:
        rs = [r for r in runs if r["setting"] == task]
        arms = sorted(dict.fromkeys(r["arm"] for r in rs), key=lambda a: order.get(a, 1e9))
        maj = rs[0]["majority_accuracy"]
        seen = [r["test_in_train"] for r in rs if "test_in_train" in r]
        seen = (f"test examples that training also showed: {min(seen):.1%}-{max(seen):.1%} (over seeds); " if seen
                else "")
        out.append(f"### {task}\n\nmajority-class accuracy {maj:.3f}; {seen}accuracy on {rs[0].get('test_size', 'the')} test "
                   f"examples; mean +- std [95% t-interval] over seeds; paired differences against softmax at depth 1 "
                   f"and 2: mean [95% t-interval] p (wins/ties/losses over seeds).\n")
        out.append("| arm | seeds | accuracy | on unseen test inputs | vs softmax-d1 | vs softmax-d2 | params | CPU s / run | learned alpha |")
        out.append("|---|---:|---|---|---|---|---:|---:|---|")
        for arm in arms:
            a = [r for r in rs if r["arm"] == arm]
            s = summarize([r["accuracy"] for r in a])
            alphas = [v for r in a for layer in r["alphas"] for v in layer]
            alpha = f"{np.mean(alphas):.2f}" if alphas and a[0]["learnable_alpha"] else ""
            out.append(f"| {arm} | {s['n']} | {fmt_ci(s)} | {unseen_cell(a)} | {paired(runs, task, arm, 'softmax-d1')} | "
                       f"{paired(runs, task, arm, 'softmax-d2')} | {a[0]['params']} | {np.mean([r['cpu_s'] for r in a]):.1f} | {alpha} |")
        out.append("")
    return "\n".join(out)


FACTORS = (("graph", lambda r: r["graph"]), ("mix", lambda r: r["mix"]), ("T", lambda r: r["steps"]),
           ("alpha", lambda r: "learned" if r["learnable_alpha"] else f"fixed {r['alpha']:g}"), ("depth", lambda r: r["depth"]))


def factor_tables(runs, min_arms=24):
    """Main effects of the QGFD factors (graph, mix, T, alpha mode, depth) for each setting whose
    QGFD arms form a factorial (at least `min_arms` arms): per factor and level, the mean test
    accuracy over the runs at that level, balanced (only combinations of the other factors that
    were run at every level of this one, on the same seeds), beside softmax at each depth."""
    def mean_std(acc):
        return f"{len(acc)} | {np.mean(acc):.3f} | {np.std(acc, ddof=1) if len(acc) > 1 else 0:.3f}"

    out = []
    for task in dict.fromkeys(r["setting"] for r in runs):
        rs = [r for r in runs if r["setting"] == task]
        qgfd = [r for r in rs if r["steps"] > 0]
        if len({r["arm"] for r in qgfd}) < min_arms:
            continue
        no_recurrent_t1 = not any(r["mix"] == "recurrent" and r["steps"] == 1 for r in qgfd)
        out += [f"### Main effects: {task}\n",
                f"{len({r['arm'] for r in qgfd})} QGFD arms; per factor, the mean accuracy (and its std over runs) at each level "
                "over the runs whose other factors (and seed) were run at every level of this one, so each level averages "
                "the same combinations."
                + (" At T = 1 the two mixes are the same operator (c_0 = 1 - alpha, c_1 = alpha), so the recurrent mix was "
                   "run at T = 2, 3 only and the mix compares T = 2, 3." if no_recurrent_t1 else "") + "\n",
                "| factor | level | runs | mean accuracy | std | best arm at this level (mean over seeds) |", "|---|---|---:|---:|---:|---|"]
        for name, key in FACTORS:
            others = [k for n, k in FACTORS if n != name]
            levels = sorted({key(r) for r in qgfd}, key=str)
            cells = {}
            for r in qgfd:
                cells.setdefault((tuple(k(r) for k in others), r["seed"]), {}).setdefault(key(r), []).append(r["accuracy"])
            full = {c: v for c, v in cells.items() if len(v) == len(levels)}
            for level in levels:
                acc = [a for v in full.values() for a in v[level]]
                if not acc:
                    continue
                by_arm = {}
                for r in qgfd:
                    if key(r) == level:
                        by_arm.setdefault(r["arm"], []).append(r["accuracy"])
                best = max(by_arm, key=lambda a: np.mean(by_arm[a]))
                out.append(f"| {name} | {level} | {mean_std(acc)} | {best} ({np.mean(by_arm[best]):.3f}) |")
        for r_arm in sorted({r["arm"] for r in rs if r["steps"] == 0}):
            out.append(f"| softmax | {r_arm} | {mean_std([r['accuracy'] for r in rs if r['arm'] == r_arm])} | |")
        out.append("")
    return "\n".join(out)


MAX_PLOT_LINES = 6  # QGFD lines per panel; a factorial's panel shows its best ones


def plot_grid(runs, plot_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plot_dir, exist_ok=True)
    tasks = list(dict.fromkeys(r["setting"] for r in runs))
    paths = []
    for x_name, key in (("depth", "depth"), ("T", "steps")):
        cols = min(4, len(tasks))
        fig, axes = plt.subplots(math.ceil(len(tasks) / cols), cols, figsize=(3.6 * cols, 2.9 * math.ceil(len(tasks) / cols)),
                                 squeeze=False)
        for ax, task in zip(axes.flat, tasks):
            rs = [r for r in runs if r["setting"] == task]
            if key == "depth":  # one line per attention family that has more than one depth
                groups = {}
                for r in rs:
                    groups.setdefault(r["family"], []).append(r)
            else:  # one line per (graph, mix, alpha mode, depth) that has more than one T; softmax is T = 0
                groups = {}
                for r in rs:
                    fam = "softmax" if r["steps"] == 0 else f"{r['graph']}-{r['mix']}-{'learn' if r['learnable_alpha'] else 'fixed'}"
                    groups.setdefault(f"{fam}-d{r['depth']}", []).append(r)
                for name in list(groups):
                    if not name.startswith("softmax"):
                        groups[name] = groups[name] + groups.get(f"softmax-d{name.rsplit('-d', 1)[1]}", [])
            title = task.replace(" (", "\n(")
            qgfd_lines = [n for n, g in groups.items() if not n.startswith("softmax") and (key == "depth" or len({r[key] for r in g}) > 1)]
            if len(qgfd_lines) > MAX_PLOT_LINES:  # a factorial: the best lines, the rest in the main-effects table
                mean_acc = lambda n: np.mean([r["accuracy"] for r in groups[n] if r["steps"] > 0])
                keep = set(sorted(qgfd_lines, key=mean_acc, reverse=True)[:MAX_PLOT_LINES])
                groups = {n: g for n, g in groups.items() if n.startswith("softmax") or n in keep}
                title += f"\n(the {MAX_PLOT_LINES} best of {len(qgfd_lines)} QGFD lines; all: main-effects table)"
            single = 0
            for name, g in groups.items():
                xs = sorted(set(r[key] for r in g))
                if len(xs) < 2 and key != "depth":
                    continue
                means = [np.mean([r["accuracy"] for r in g if r[key] == x]) for x in xs]
                cis = [summarize([r["accuracy"] for r in g if r[key] == x]) for x in xs]
                style = dict(marker="o")
                if len(xs) < 2:  # a QGFD family at one depth: a marker beside softmax's curve ("one QGFD layer vs k softmax layers")
                    single += 1
                    xs, style = [xs[0] + 0.04 * single], dict(marker="s", ls="none")
                ax.errorbar(xs, means, yerr=[[m - c["ci_low"] for m, c in zip(means, cis)], [c["ci_high"] - m for m, c in zip(means, cis)]],
                            capsize=3, label=f"{name} (n={min(c['n'] for c in cis)})", **style)
            ax.axhline(rs[0]["majority_accuracy"], color="grey", ls=":", lw=1)
            ax.set_title(title, fontsize=8)
            ax.set_ylim(0, 1.02)  # accuracy; a 2-seed t-interval can reach past 1
            ax.set_xlabel(x_name)
            ax.set_ylabel("test accuracy")
            ax.set_xticks(sorted(set(r[key] for r in rs)))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        fig.tight_layout()
        path = os.path.join(plot_dir, f"accuracy_vs_{x_name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def run_report(args):
    runs = load_runs(args.out_dir)
    sections = ["# Evaluation results (generated by `python scripts/eval_qgfd.py report`)\n"]
    if runs:
        warm = sorted({r["budget"]["warmup_steps"] for r in runs})
        sections.append(f"Grid: {len(runs)} runs. Every run: AdamW (warm-up {', '.join(map(str, warm))} steps, then cosine), "
                        f"{runs[0]['num_heads']} heads, fresh training examples; each table names its task and budget "
                        "(steps, peak learning rate, batch, width), and runs at different budgets are never pooled.\n")
        sections.append(grid_tables(runs))
        factors = factor_tables(runs)
        if factors:
            sections.append(factors)
        for p in plot_grid(runs, args.plot_dir):
            sections.append(f"![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(args.out)))})\n")
    for table in (shared_table(args.out_dir), finetune_table(args.out_dir)):
        if table:
            sections.append(table)
    text = "\n".join(sections)
    with open(args.out, "w") as f:
        f.write(text)
    os.makedirs(args.plot_dir, exist_ok=True)
    with open(os.path.join(args.plot_dir, "all_runs.json"), "w") as f:  # every grid run, one JSON
        json.dump(runs, f, indent=1)
    print(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="train the arms on the tasks")
    g.add_argument("--tasks", nargs="+", default=TASK_CONFIGS, type=task_config, metavar="TASK",
                   help=f"<task>-k<hops>[-n<size>] (default: {' '.join(TASK_CONFIGS)})")
    g.add_argument("--arms", choices=tuple(ARM_SETS), default="reduced")
    g.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    g.add_argument("--only", nargs="+", default=None, metavar="ARM", help="run only these arms of the set (e.g. softmax-d2)")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--learning-rate", type=float, default=3e-3)
    g.add_argument("--d-model", type=int, default=32)
    g.add_argument("--num-heads", type=int, default=4)
    g.add_argument("--test-size", type=int, default=1000)
    g.add_argument("--tag", default="a", help="the runs file: runs-<tag>.jsonl (one per process)")
    s = sub.add_parser("shared", help="the shared text+image denoiser: sequential against joint, +- QGFD")
    s.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    s.add_argument("--steps", type=int, default=1500, help="optimizer steps per modality (joint: twice this, alternating)")
    s.add_argument("--batch-size", type=int, default=64)
    f = sub.add_parser("finetune", help="QGFD patched into a model pretrained here, alpha warm-up from 0")
    f.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    f.add_argument("--pretrain-steps", type=int, default=600)
    f.add_argument("--finetune-steps", type=int, default=300)
    f.add_argument("--warmup", type=int, default=100)
    f.add_argument("--test-size", type=int, default=1000)
    r = sub.add_parser("report", help="tables, plots and one JSON from what the other commands wrote")
    r.add_argument("--out", default="docs/evaluation_results.md")
    r.add_argument("--plot-dir", default="docs/evaluation")
    for sp in (g, s, f, r):
        sp.add_argument("--out-dir", default="eval-runs")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    {"grid": run_grid, "shared": run_shared, "finetune": run_finetune, "report": run_report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
