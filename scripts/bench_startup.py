"""Start-up cost: `import qgfd_hf` and `qgfd-hf --help` beside what they build on.

    python scripts/bench_startup.py                 # 7 runs of each, medians
    python scripts/bench_startup.py --repeats 15 --json startup.json

Each command runs in a fresh interpreter (`subprocess`), so nothing is cached in-process; the
table gives the median wall time and its ratio to `import torch, transformers` measured in the
same run (the machine is shared: read the ratios, not the seconds). The rows:

- `import torch, transformers`: the floor (transformers itself imports lazily);
- `+ PreTrainedModel, Pipeline, AutoModel`: what registering QGFD models and the pipeline with
  transformers' Auto classes needs (qgfd_hf registers them on import);
- `import qgfd_hf`: the package;
- `qgfd-hf --help`, `python -m qgfd_hf --help`: the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ("import torch, transformers", [sys.executable, "-c", "import torch, transformers"]),
    ("+ PreTrainedModel, Pipeline, AutoModel",
     [sys.executable, "-c", "import torch; from transformers import PreTrainedModel, Pipeline, AutoModel, AutoConfig"]),
    ("import qgfd_hf", [sys.executable, "-c", "import qgfd_hf"]),
    ("python -m qgfd_hf --help", [sys.executable, "-m", "qgfd_hf", "--help"]),
]


def time_command(cmd, repeats: int, env) -> list:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=None, help="also write the timings here")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    commands = list(COMMANDS)
    if shutil.which("qgfd-hf"):
        commands.append(("qgfd-hf --help", [shutil.which("qgfd-hf"), "--help"]))
    results = {}
    for name, cmd in commands:
        results[name] = time_command(cmd, args.repeats, env)
    floor = statistics.median(results[COMMANDS[0][0]])
    print(f"| command | median s (of {args.repeats}) | / import torch, transformers |")
    print("|---|---|---|")
    for name, times in results.items():
        m = statistics.median(times)
        print(f"| `{name}` | {m:.2f} | {m / floor:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {"median_s": statistics.median(v), "runs_s": v} for k, v in results.items()}, f, indent=2)


if __name__ == "__main__":
    main()
