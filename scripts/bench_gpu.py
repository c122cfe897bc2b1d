"""GPU benchmark: the QGFD kernel against flash SDPA, patched Llama- and ViT-sized models against
unpatched ones, and the image demo's training steps per second; each QGFD number is a ratio
against its baseline measured in the same run. Prints a markdown table, writes JSON, and prints
the issue's targets as met / missed:

- kernel: QGFD forward <= 1.15 (T + 1) x SDPA forward at L >= 4096 (bf16, B=1, H=16, Dh=64);
- kernel: O(L) memory: the peak memory above the inputs grows at most 1.25x as fast as L;
- patched models: forward + backward <= 1.3x unpatched at T = 1.

On one H200 (about 5 minutes, well under 8):

    python scripts/bench_gpu.py --json docs/benchmarks_gpu.json

A smoke run on the CPU (tiny sizes, seconds; what tests/test_bench_gpu.py runs):

    python scripts/bench_gpu.py --device cpu --quick --json /tmp/bench_gpu.json

Sections can be skipped (`--skip kernel models demo`). The patched Llama is a few layers of a
Llama-7B-shaped config (hidden 4096, 32 heads, MLP 11008) with random weights, built from the
config (nothing is downloaded); ViT-Base is built from `ViTConfig()`'s defaults. On a GPU the
kernel and SDPA run under `sdpa_kernel(FLASH_ATTENTION)`, so both use flash attention (an error,
not a slower fallback, if flash cannot run a call).
"""

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import qgfd_hf
from qgfd_hf import qgfd_attention


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke test)")
    p.add_argument("--json", default="bench_gpu.json", help="where to write the results")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median; default 10, 2 with --quick)")
    p.add_argument("--skip", nargs="*", default=[], choices=("kernel", "models", "demo"))
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, device: torch.device, repeats: int, warmup: int):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn) -> float:
        """Median seconds of `fn()` over `repeats`, after `warmup` calls."""
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def peak_bytes(self, fn) -> int:
        """Peak memory allocated during `fn()` above what was allocated before it (CUDA only; 0 on the CPU)."""
        if not self.cuda:
            fn()
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        fn()
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) - before


def flash_only(device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


# ----------------------------------------------------------------------------------------
# 1. The kernel against flash SDPA
# ----------------------------------------------------------------------------------------


def bench_kernel(b: Bench, quick: bool):
    lengths = [64, 128, 256] if quick else [1024, 2048, 4096, 8192, 16384, 32768]
    heads, head_dim = (2, 16) if quick else (16, 64)
    dtype = torch.bfloat16 if b.cuda else torch.float32
    rows = []
    with torch.no_grad(), flash_only(b.device):
        for L in lengths:
            g = torch.Generator(device=b.device).manual_seed(0)
            q, k, v = (torch.randn(1, heads, L, head_dim, device=b.device, dtype=dtype, generator=g) for _ in range(3))
            sdpa = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
            t_sdpa, m_sdpa = b.time(sdpa), b.peak_bytes(sdpa)
            for steps in (1, 2):
                fast = lambda: qgfd_attention(q, k, v, steps=steps, alpha=0.5)  # noqa: E731
                t_fast, m_fast = b.time(fast), b.peak_bytes(fast)
                rows.append({"L": L, "T": steps, "sdpa_ms": 1e3 * t_sdpa, "qgfd_ms": 1e3 * t_fast,
                             "ratio": t_fast / t_sdpa, "floor": steps + 1,
                             "sdpa_peak_mib": m_sdpa / 2**20, "qgfd_peak_mib": m_fast / 2**20})
            del q, k, v
    return {"dtype": str(dtype), "B": 1, "H": heads, "Dh": head_dim, "rows": rows}


# ----------------------------------------------------------------------------------------
# 2. Patched models against unpatched: forward + backward
# ----------------------------------------------------------------------------------------


def _llama(quick, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    if quick:
        cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, max_position_embeddings=256)
        batch, length = 1, 64
    else:  # Llama-7B's shape, 2 layers, random weights
        cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                          num_key_value_heads=32, max_position_embeddings=4096)
        batch, length = 1, 4096
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, length), device=device)
    shape = "tiny Llama" if quick else "Llama-7B shape, 2 layers"
    return model, lambda m: m(input_ids=ids, labels=ids, use_cache=False).loss, f"{shape}, B={batch}, L={length}"


def _vit(quick, device, dtype):
    from transformers import ViTConfig, ViTModel

    if quick:
        cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8)
        batch = 2
    else:
        cfg = ViTConfig()  # ViT-Base/16 at 224: 12 layers, hidden 768, 12 heads, L = 197
        batch = 64
    torch.manual_seed(0)
    model = ViTModel(cfg, add_pooling_layer=False).to(device=device, dtype=dtype).train()
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
    shape = "tiny ViT" if quick else "ViT-Base/16"
    return model, lambda m: m(pixel_values=x).last_hidden_state.float().square().mean(), f"{shape}, B={batch}, L={(cfg.image_size // cfg.patch_size) ** 2 + 1}"


def bench_models(b: Bench, quick: bool):
    dtype = torch.bfloat16 if b.cuda else torch.float32
    rows = []
    for name, make in (("llama", _llama), ("vit", _vit)):
        model, loss_fn, shape = make(quick, b.device, dtype)

        def step():
            loss_fn(model).backward()
            model.zero_grad(set_to_none=True)

        t_base, m_base = b.time(step), b.peak_bytes(step)
        qgfd_hf.patch_model(model, steps=1, alpha=0.5)
        t_qgfd, m_qgfd = b.time(step), b.peak_bytes(step)
        rows.append({"model": name, "shape": shape, "unpatched_ms": 1e3 * t_base, "qgfd_ms": 1e3 * t_qgfd, "ratio": t_qgfd / t_base,
                     "unpatched_peak_mib": m_base / 2**20, "qgfd_peak_mib": m_qgfd / 2**20})
        del model
        if b.cuda:
            torch.cuda.empty_cache()
    return {"dtype": str(dtype), "T": 1, "rows": rows}


# ----------------------------------------------------------------------------------------
# 3. The image demo's training step (scripts/train_image.py's CIFAR-10 model), steps per second
# ----------------------------------------------------------------------------------------


def bench_demo(b: Bench, quick: bool):
    from qgfd_hf import create_qgfd_diffusion_model
    from qgfd_hf.attention_qgfd import value_checks
    from qgfd_hf.training.ema import EMAModel

    size, batch = (8, 4) if quick else (32, 128)
    sizes = dict(d_model=32, num_layers=2, num_heads=4, d_ff=64) if quick else dict(d_model=256, num_layers=6, num_heads=4, d_ff=1024)
    rows = []
    for steps in (0, 1):
        torch.manual_seed(0)
        model, _, _ = create_qgfd_diffusion_model("image", None, None, latent_space="pixels", image_size=size, patch_size=4 if not quick else 2,
                                                  num_channels=3, beta_schedule="cosine", prediction_type="v", qgfd_steps=steps, **sizes)
        model.to(b.device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=3e-4, fused=b.cuda or None)
        ema = EMAModel(model, 0.999).to(b.device)
        data = {"pixel_values": torch.rand(batch, 3, size, size, device=b.device) * 2 - 1}
        g = torch.Generator(device=b.device).manual_seed(0)
        autocast = torch.autocast(b.device.type, dtype=torch.bfloat16, enabled=b.cuda)

        def train_step():  # what QGFDTrainer does per optimizer step (bf16 autocast on the GPU)
            with value_checks(False), autocast:
                loss = model.compute_loss(data, generator=g)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model)

        seconds = b.time(train_step)
        rows.append({"qgfd_steps": steps, "step_ms": 1e3 * seconds, "steps_per_s": 1.0 / seconds})
    rows[1]["ratio"] = rows[1]["step_ms"] / rows[0]["step_ms"]
    return {"model": f"pixels {size}x{size}, patch {4 if not quick else 2}, {sizes}", "batch": batch, "rows": rows}


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------


def targets(results):
    out = []
    kernel = results.get("kernel")
    if kernel:
        long = [r for r in kernel["rows"] if r["L"] >= 4096] or kernel["rows"][-1:]  # --quick: the longest
        worst = max(r["ratio"] / (1.15 * r["floor"]) for r in long)
        out.append(("kernel forward <= 1.15 (T + 1) x SDPA at L >= 4096", worst <= 1.0,
                    f"worst: {max(r['ratio'] for r in long):.2f}x at T+1 = {max(long, key=lambda r: r['ratio'] / r['floor'])['floor']}"))
        if kernel["rows"][0]["qgfd_peak_mib"] > 0:
            for steps in (1, 2):
                rs = [r for r in kernel["rows"] if r["T"] == steps]
                grow = (rs[-1]["qgfd_peak_mib"] / rs[0]["qgfd_peak_mib"]) / (rs[-1]["L"] / rs[0]["L"])
                out.append((f"kernel memory O(L) at T = {steps}", grow <= 1.25, f"peak grows {grow:.2f}x as fast as L"))
    models = results.get("models")
    if models:
        for r in models["rows"]:
            out.append((f"patched {r['model']} forward + backward <= 1.3x unpatched", r["ratio"] <= 1.3, f"{r['ratio']:.2f}x"))
    return out


def markdown(results) -> str:
    lines = [f"Device: {results['device']}; torch {results['torch']}; {'--quick' if results['quick'] else 'full sizes'}.", ""]
    if "kernel" in results:
        k = results["kernel"]
        lines += [f"Kernel, forward, {k['dtype']}, B={k['B']}, H={k['H']}, Dh={k['Dh']}:", "",
                  "| L | T | SDPA ms | QGFD ms | QGFD / SDPA | T + 1 | SDPA peak MiB | QGFD peak MiB |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['L']} | {r['T']} | {r['sdpa_ms']:.3f} | {r['qgfd_ms']:.3f} | {r['ratio']:.2f} | {r['floor']} | {r['sdpa_peak_mib']:.1f} | {r['qgfd_peak_mib']:.1f} |"
                  for r in k["rows"]]
        lines.append("")
    if "models" in results:
        m = results["models"]
        lines += [f"Patched models, forward + backward, {m['dtype']}, T = 1:", "",
                  "| model | shape | unpatched ms | QGFD ms | ratio | unpatched peak MiB | QGFD peak MiB |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['shape']} | {r['unpatched_ms']:.1f} | {r['qgfd_ms']:.1f} | {r['ratio']:.2f} | {r['unpatched_peak_mib']:.0f} | {r['qgfd_peak_mib']:.0f} |"
                  for r in m["rows"]]
        lines.append("")
    if "demo" in results:
        d = results["demo"]
        lines += [f"Image demo training step ({d['model']}, batch {d['batch']}):", "", "| qgfd_steps | ms / step | steps / s |", "|---|---|---|"]
        lines += [f"| {r['qgfd_steps']} | {r['step_ms']:.1f} | {r['steps_per_s']:.2f} |" for r in d["rows"]]
        lines += ["", f"QGFD (T = 1) / softmax (T = 0) step time: {d['rows'][1]['ratio']:.2f}", ""]
    lines += ["| target | result | |", "|---|---|---|"]
    # --quick: tiny sizes say nothing about the targets (a smoke test of the script, not a measurement).
    verdict = (lambda ok: "n/a (--quick)") if results["quick"] else (lambda ok: "met" if ok else "MISSED")
    lines += [f"| {name} | {verdict(ok)} | {detail} |" for name, ok, detail in results["targets"]]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run with --device cpu (and --quick for a smoke test).")
    repeats = args.repeats or (2 if args.quick else 10)
    b = Bench(device, repeats=repeats, warmup=1 if args.quick else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "torch": torch.__version__, "quick": args.quick, "repeats": repeats}
    sections = (("kernel", bench_kernel), ("models", bench_models), ("demo", bench_demo))
    for section, fn in sections:
        if section not in args.skip:
            start = time.perf_counter()
            results[section] = fn(b, args.quick)
            print(f"[{section}: {time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    results["targets"] = targets(results)
    print(markdown(results))
    with open(args.json, "w") as f:
        json.dump({**results, "targets": [{"target": n, "met": ok, "detail": d} for n, ok, d in results["targets"]]}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
