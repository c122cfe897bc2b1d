"""Forward time of QGFD-patched vs unpatched transformers models of realistic size.

Models are built from configs (random weights, nothing downloaded): a t5-small-sized
T5ForConditionalGeneration, a ViT-Base-sized ViTModel at 224 px and a Wav2Vec2-Base-sized
Wav2Vec2Model on 2 s of 16 kHz audio. For each model the unpatched forward and the patched
forward at steps 1, 2, 4 are timed in ONE run, interleaved round by round (so a busy machine
slows them alike); each time is the median over the rounds after warm-up, and each ratio is
patched / unpatched from those medians (a second table gives the minimum over rounds, which a
machine shared with other work disturbs least). Prints markdown tables.

    python scripts/bench_patch.py
    python scripts/bench_patch.py --threads 1 --repeats 9 --out /tmp/bench.md
    python scripts/bench_patch.py --models vit --batch-size 8 --repeats 10
    python scripts/bench_patch.py --device cuda --dtype bfloat16 --out docs/bench_gpu.md

Target (issue 3): steps=1 patched / unpatched <= 1.5 for the ViT-Base-sized model.
"""

import argparse
import platform
import statistics
import time

import torch
from transformers import T5Config, T5ForConditionalGeneration, ViTConfig, ViTModel, Wav2Vec2Config, Wav2Vec2Model

import qgfd_hf


def build(name, batch_size, device, dtype):
    """(label, input description, model, inputs) of a realistic-size model built from its config."""
    g = torch.Generator().manual_seed(0)
    if name == "t5":
        config = T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, vocab_size=32128,
                          decoder_start_token_id=0)  # t5-small
        model = T5ForConditionalGeneration(config)
        inputs = dict(input_ids=torch.randint(0, 32128, (batch_size, 256), generator=g),
                      decoder_input_ids=torch.randint(0, 32128, (batch_size, 64), generator=g))
        label, shape = "T5-small (60M)", f"{batch_size} x (256 enc + 64 dec) tokens"
    elif name == "vit":
        config = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           image_size=224, patch_size=16)  # ViT-Base/16
        model = ViTModel(config, add_pooling_layer=False)
        inputs = dict(pixel_values=torch.randn(batch_size, 3, 224, 224, generator=g))
        label, shape = "ViT-Base/16 (86M)", f"{batch_size} x 224 px (197 tokens)"
    elif name == "wav2vec2":
        config = Wav2Vec2Config()  # Wav2Vec2-Base: 768 wide, 12 layers, 12 heads, 7 conv layers
        model = Wav2Vec2Model(config)
        inputs = dict(input_values=torch.randn(batch_size, 32000, generator=g))
        label, shape = "Wav2Vec2-Base (95M)", f"{batch_size} x 2 s @ 16 kHz (99 frames)"
    else:
        raise ValueError(f"Unknown model {name!r}; choose from t5, vit, wav2vec2.")
    model = model.to(device=device, dtype=dtype).eval()
    inputs = {k: v.to(device) if not v.is_floating_point() else v.to(device=device, dtype=dtype) for k, v in inputs.items()}
    return label, shape, model, inputs


def timed_forward(model, inputs, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(name, args):
    label, shape, model, inputs = build(name, args.batch_size, args.device, getattr(torch, args.dtype))
    variants = [0] + args.steps  # 0: unpatched
    times = {v: [] for v in variants}
    for round_ in range(args.warmup + args.repeats):
        for v in variants:
            if qgfd_hf.is_qgfd_patched(model):
                qgfd_hf.unpatch_model(model)
            if v:
                qgfd_hf.patch_model(model, steps=v, alpha=args.alpha, graph=args.graph)
            t = timed_forward(model, inputs, args.device)
            if round_ >= args.warmup:
                times[v].append(t)
    return label, shape, times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["t5", "vit", "wav2vec2"])
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--graph", default="attention", choices=["attention", "keys"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps_cols = " | ".join(f"steps={s}" for s in args.steps)
    tables = {"median": [], "min": []}
    for name in args.models:
        label, shape, times = bench(name, args)
        for stat, fn in (("median", statistics.median), ("min", min)):
            t = {v: fn(ts) for v, ts in times.items()}
            cells = [f"{t[s] * 1e3:.0f} ms ({t[s] / t[0]:.2f}x)" for s in args.steps]
            tables[stat].append(f"| {label} | {shape} | {t[0] * 1e3:.0f} ms | " + " | ".join(cells) + " |")
        print(tables["median"][-1], flush=True)
    out = []
    for stat in ("median", "min"):
        out.append(f"{stat.capitalize()} over rounds; patched time (patched / unpatched):\n")
        out.append(f"| model | input | unpatched | {steps_cols} |")
        out.append("|" + "---|" * (3 + len(args.steps)))
        out += tables[stat] + [""]
    device = args.device
    if device == "cpu":
        device = f"cpu ({platform.machine()}, {torch.get_num_threads()} thread(s))"
    out.append(f"{device}, {args.dtype}, torch {torch.__version__}; graph={args.graph}, alpha={args.alpha}; "
               f"{args.repeats} interleaved rounds after {args.warmup} warm-up round(s).")
    table = "\n".join(out)
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
