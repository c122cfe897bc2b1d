"""Benchmark the QGFD kernel: fast path (value propagation) vs materialised reference vs plain SDPA.

fp32 on the CPU, B=1, H=8, Dh=64 by default. For every length L and step count T it times
forward and forward+backward of the three variants in one process, interleaved (each repeat
runs every variant once, so a burst of load from elsewhere hits them alike), and reports the
median of a few repeats after a warm-up; the ratios come from that same run.

Peak RSS is measured per variant in a fresh subprocess (this script re-invoked with
`--rss-child`): the child allocates the inputs, reads its RSS (the baseline), resets the
kernel's high-water mark (`/proc/self/clear_refs`), runs the variant once and reads the
high-water mark `VmHWM` (the peak). Not `ru_maxrss`: on Linux a child inherits its parent's
high-water mark at exec, so in a child of this (large) process it reports the parent's peak.
Where /proc is missing, `ru_maxrss` is reported instead. Last, the fast path runs at L=16384,
T=2, H=8, where one materialised p alone would take 8 GiB, to check that its peak RSS stays
under 2 GiB.

Run from the repository root (after `pip install -e .`, or with `PYTHONPATH=.`):

    python scripts/bench_kernel.py                                    # the full grid, writes nothing
    python scripts/bench_kernel.py --out docs/benchmarks_table.md     # also write the tables
    python scripts/bench_kernel.py --lengths 256 1024 --steps 1 2 --repeats 3 --no-rss --no-long  # quick look
    python scripts/bench_kernel.py --full                             # also the reference at L=4096 (slow)
    python scripts/bench_kernel.py --threads 1                        # one core: steadier on a shared machine

The reference materialises p and multiplies it by P: O(T L^3) compute and O(L^2) memory per
head, so by default it runs only up to L=2048 (`--ref-max-length`, or `--full` for all).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import qgfd_hf
from qgfd_hf import qgfd_attention, qgfd_attention_reference

VARIANTS = ("sdpa", "fast", "reference")
MODES = ("fwd", "fwd+bwd")


def make_inputs(L, heads, head_dim, requires_grad, seed=0):
    """q, k, v of shape (1, H, L, Dh), fp32."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, L, head_dim, generator=g).requires_grad_(requires_grad) for _ in range(3))


def variant_fn(variant, steps, args):
    kw = dict(steps=steps, alpha=0.5, graph=args.graph, mix=args.mix, is_causal=args.causal)
    if variant == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)
    if variant == "fast":
        return lambda q, k, v: qgfd_attention(q, k, v, **kw)
    return lambda q, k, v: qgfd_attention_reference(q, k, v, **kw)


def run_once(fn, inputs, mode):
    """One forward (no autograd graph) or forward+backward; returns seconds."""
    t0 = time.perf_counter()
    if mode == "fwd":
        with torch.no_grad():
            fn(*inputs)
    else:
        out = fn(*inputs)
        torch.autograd.grad(out.sum(), inputs)
    return time.perf_counter() - t0


def time_cell(variants, L, steps, mode, args):
    """Median seconds of each variant: `args.warmup` untimed runs, then `args.repeats` timed
    rounds, each running every variant once (interleaved)."""
    inputs = make_inputs(L, args.heads, args.head_dim, requires_grad=(mode == "fwd+bwd"))
    fns = {v: variant_fn(v, steps, args) for v in variants}
    for fn in fns.values():
        for _ in range(args.warmup):
            run_once(fn, inputs, mode)
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v, fn in fns.items():
            times[v].append(run_once(fn, inputs, mode))
    return {v: statistics.median(t) for v, t in times.items()}


def _proc_status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise OSError(f"{field} not in /proc/self/status")


def rss_child(args):
    """In a fresh process: RSS with only the inputs allocated, then the peak RSS of one run."""
    variant, L, steps, mode = args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]), args.rss_child[3]
    inputs = make_inputs(L, args.heads, args.head_dim, requires_grad=(mode == "fwd+bwd"))
    fn = variant_fn(variant, steps, args)
    try:
        base = _proc_status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        source = "VmHWM"
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        source = "ru_maxrss"
    seconds = run_once(fn, inputs, mode)
    peak = _proc_status_mib("VmHWM") if source == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"baseline_mib": base, "peak_mib": peak, "seconds": seconds, "source": source}))


def measure_rss(variant, L, steps, mode, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", variant, str(L), str(steps), mode,
           "--heads", str(args.heads), "--threads", str(torch.get_num_threads()), "--head-dim", str(args.head_dim), "--graph", args.graph, "--mix", args.mix]
    if args.causal:
        cmd.append("--causal")
    env = dict(os.environ)
    # The child imports the same qgfd_hf as this process, installed or not.
    root = os.path.dirname(os.path.dirname(os.path.abspath(qgfd_hf.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["exit %d" % res.returncode])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_ms(seconds):
    return "skipped" if seconds is None else f"{seconds * 1e3:.1f}"


def fmt_ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def timing_table(args):
    lines = [
        "| L | steps | pass | SDPA ms | fast ms | reference ms | fast / SDPA | target fast / SDPA | reference / fast |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for L in args.lengths:
        with_ref = args.full or L <= args.ref_max_length
        for steps in args.steps:
            for mode in MODES:
                variants = VARIANTS if with_ref else ("sdpa", "fast")
                t = time_cell(variants, L, steps, mode, args)
                sdpa, fast, ref = t["sdpa"], t["fast"], t.get("reference")
                target = f"<= {1.3 * (steps + 1):.1f}" if (mode == "fwd" and L >= 1024) else ""
                row = (f"| {L} | {steps} | {mode} | {fmt_ms(sdpa)} | {fmt_ms(fast)} | {fmt_ms(ref)} | "
                       f"{fmt_ratio(fast, sdpa)} | {target} | {fmt_ratio(ref, fast)} |")
                print(row, flush=True)
                lines.append(row)
    return lines


def rss_table(args):
    lines = [
        "| variant | L | steps | pass | peak RSS MiB | baseline (imports + inputs) MiB | peak - baseline MiB | run s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    runs = []
    for L in args.lengths:
        for variant in VARIANTS:
            if variant == "reference" and not (args.full or L <= args.ref_max_length):
                continue
            runs.append((variant, L, args.rss_steps, args.rss_mode))
    if not args.no_long:
        runs += [("sdpa", args.long_length, args.long_steps, "fwd"),
                 ("fast", args.long_length, args.long_steps, "fwd"),
                 ("fast", args.long_length, args.long_steps, "fwd+bwd")]
    for variant, L, steps, mode in runs:
        r = measure_rss(variant, L, steps if variant != "sdpa" else 0, mode, args)
        steps_col = "-" if variant == "sdpa" else str(steps)
        if "error" in r:
            row = f"| {variant} | {L} | {steps_col} | {mode} | failed: {r['error']} | | | |"
        else:
            row = (f"| {variant} | {L} | {steps_col} | {mode} | {r['peak_mib']:.0f} | {r['baseline_mib']:.0f} | "
                   f"{r['peak_mib'] - r['baseline_mib']:.0f} | {r['seconds']:.1f} |")
            if L == args.long_length and variant == "fast":
                verdict = "under" if r["peak_mib"] < 2048 else "OVER"
                print(f"L={L} fast {mode}: peak RSS {r['peak_mib']:.0f} MiB ({verdict} the 2 GiB target), "
                      f"{r['seconds']:.1f} s", flush=True)
        print(row, flush=True)
        lines.append(row)
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--graph", choices=qgfd_hf.GRAPHS, default="attention")
    p.add_argument("--mix", choices=qgfd_hf.MIXES, default="seed")
    p.add_argument("--causal", action="store_true", help="causal attention (default: full)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--ref-max-length", type=int, default=2048, help="run the reference only up to this L")
    p.add_argument("--full", action="store_true", help="run the reference at every L")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--rss-steps", type=int, default=2, help="steps for the RSS runs of the grid")
    p.add_argument("--rss-mode", choices=MODES, default="fwd+bwd", help="pass for the RSS runs of the grid")
    p.add_argument("--no-long", action="store_true", help="skip the long-sequence RSS check")
    p.add_argument("--long-length", type=int, default=16384)
    p.add_argument("--long-steps", type=int, default=2)
    p.add_argument("--out", help="also write the tables (markdown) to this file")
    p.add_argument("--rss-child", nargs=4, metavar=("VARIANT", "L", "STEPS", "PASS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    header = [
        f"torch {torch.__version__}, threads: {torch.get_num_threads()}, fp32 CPU, B=1, H={args.heads}, "
        f"Dh={args.head_dim}, graph={args.graph}, mix={args.mix}, {'causal' if args.causal else 'full (non-causal)'}; "
        f"median of {args.repeats} after {args.warmup} warm-up; reference only up to "
        f"L={'all' if args.full else args.ref_max_length}.",
        "",
    ]
    print(header[0], flush=True)
    lines = header + ["### Time", ""] + timing_table(args)
    if not args.no_rss:
        print(flush=True)
        lines += ["", f"### Peak RSS (grid: {args.rss_mode}, steps={args.rss_steps}; each run in a fresh process)", ""]
        lines += rss_table(args)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
