"""Start-up cost: `import qgfd_hf` and `qgfd-hf --help` beside what they build on, and the targets.

    python scripts/bench_startup.py                 # 5 runs of each, medians
    python scripts/bench_startup.py --repeats 9 --json startup.json

Each command runs in a fresh interpreter (`subprocess`, from the repository root, so it imports
this checkout's qgfd_hf), `--repeats` times, interleaved (round r runs every command once) so that
a change in the machine's load hits all rows alike. The table gives the median wall time, the
median CPU time of the child (user + sys, less sensitive to a loaded machine) and the ratio of the
wall time to `import torch, transformers` measured in the same run. The rows:

- `python -c pass`: the interpreter alone;
- `import torch, transformers`: the floor of the import target (transformers imports lazily);
- `import qgfd_hf`, and `import torch, transformers, qgfd_hf`;
- `the config registry`: `import torch, transformers.models.auto.configuration_auto`, where
  `AutoConfig` lives: `import qgfd_hf` registers its configs there (qgfd_hf/registration_qgfd.py);
  importing it indexes every transformers model folder;
- `from transformers import PreTrainedModel, Pipeline, AutoModel`, without and after
  `import qgfd_hf`: what any use of a transformers model costs anyway, and what registering the
  models and the pipeline would cost at import (qgfd_hf registers those with the first QGFD config);
- `the model and pipeline registries`: `import torch, transformers.modeling_utils, transformers.masking_utils,
  transformers.pipelines`;
- `qgfd-hf --help` (the console script's code, `qgfd_hf_cli:main`), `train --help`, `python -m qgfd_hf --help`
  (which imports the package, and so registers, first).

The targets (issue 15): `import qgfd_hf` <= `import torch, transformers` + 0.5 s; `qgfd-hf --help`
< 1 s (wall, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HEAVY = "from transformers import PreTrainedModel, Pipeline, AutoModel"
CONFIGS = "import transformers.models.auto.configuration_auto"
# Where the other registries live: `AttentionInterface` and `PreTrainedModel` (for `AutoModel.register`'s
# model classes) in modeling_utils, `AttentionMaskInterface` in masking_utils, `PIPELINE_REGISTRY` in pipelines.
REGISTRIES = "import transformers.modeling_utils, transformers.masking_utils, transformers.pipelines"
HELP = "import sys; from qgfd_hf_cli import main; sys.argv = ['qgfd-hf'] + sys.argv[1:]; sys.exit(main())"

COMMANDS = [
    ("python -c pass", [PY, "-c", "pass"]),
    ("import torch, transformers", [PY, "-c", "import torch, transformers"]),
    ("import qgfd_hf", [PY, "-c", "import qgfd_hf"]),
    ("import torch, transformers, qgfd_hf", [PY, "-c", "import torch, transformers, qgfd_hf"]),
    (HEAVY, [PY, "-c", "import torch; " + HEAVY]),
    ("import qgfd_hf; " + HEAVY, [PY, "-c", "import torch, qgfd_hf; " + HEAVY]),
    ("the config registry", [PY, "-c", "import torch, transformers; " + CONFIGS]),
    ("the model and pipeline registries", [PY, "-c", "import torch; " + REGISTRIES]),
    ("qgfd-hf --help", [PY, "-c", HELP, "--help"]),
    ("qgfd-hf train --help", [PY, "-c", HELP, "train", "--help"]),
    ("python -m qgfd_hf --help", [PY, "-m", "qgfd_hf", "--help"]),
]
FLOOR, IMPORT, HELP_ROW = "import torch, transformers", "import qgfd_hf", "qgfd-hf --help"
IMPORT_BUDGET_S, HELP_BUDGET_S = 0.5, 1.0


def run_once(cmd, env):
    """(wall seconds, CPU seconds of the child) of one run."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own CPU time
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd} exited with {proc.returncode}: {err.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the timings here")
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    runs = {name: [] for name, _ in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS:
            runs[name].append(run_once(cmd, env))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    print(f"| command | wall s (median of {args.repeats}) | CPU s | / import torch, transformers |")
    print("|---|---|---|---|")
    for name in runs:
        print(f"| `{name}` | {wall[name]:.2f} | {cpu[name]:.2f} | {wall[name] / wall[FLOOR]:.2f} |")
    diff = wall[IMPORT] - wall[FLOOR]
    on_top = wall["import torch, transformers, qgfd_hf"] - wall[FLOOR]
    print()
    print(f"import qgfd_hf - import torch, transformers = {diff:+.2f} s (ratio {wall[IMPORT] / wall[FLOOR]:.2f}); "
          f"qgfd_hf on top of them: {on_top:+.2f} s; target <= +{IMPORT_BUDGET_S} s: {'met' if diff <= IMPORT_BUDGET_S else 'MISSED'}")
    floor = wall["the config registry"]
    print(f"of which transformers' config registry (configuration_auto): {floor - wall[FLOOR]:+.2f} s; "
          f"qgfd_hf's own modules on top of it: {wall[IMPORT] - floor:+.2f} s; the model and pipeline registries, "
          f"registered by the first QGFD config: {wall['the model and pipeline registries'] - wall[FLOOR]:+.2f} s")
    print(f"qgfd-hf --help = {wall[HELP_ROW]:.2f} s wall ({cpu[HELP_ROW]:.2f} s CPU; the interpreter alone "
          f"{wall['python -c pass']:.2f} s); target < {HELP_BUDGET_S} s: {'met' if wall[HELP_ROW] < HELP_BUDGET_S else 'MISSED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {"median_wall_s": wall[k], "median_cpu_s": cpu[k], "runs": v} for k, v in runs.items()}, f, indent=2)


if __name__ == "__main__":
    main()
