"""Write constraints.txt: the installed versions of everything `qgfd_hf[test]` needs.

Run after the test suite passed with an upgraded environment (for example after
`QGFD_LATEST=1 bash .ci/run`, see docs/testing.md)::

    python scripts/freeze_constraints.py            # rewrites constraints.txt
    python scripts/freeze_constraints.py --check    # exit 1 if constraints.txt differs from what is installed

It walks the installed metadata from `qgfd_hf` (with the extras the tests use) through every
requirement whose marker holds here, and pins each distribution found to its installed version.
torch is left out (its build depends on the platform: CI installs `torch==2.13.0`, the CPU build),
and so are qgfd_hf itself and setuptools.
"""

import argparse
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("test", "tensorboard", "diffusers")
LEFT_OUT = {"qgfd-hf", "torch", "setuptools"}
HEADER = """\
# The versions the test suite was last run with (Python 3.11, torch 2.13.0 CPU build), for
# `pip install -c constraints.txt ...`: the README's test command and .ci/run install these, so a
# fresh machine tests what was tested. torch is not pinned here: install the build for your
# platform first (CI: `torch==2.13.0`, the CPU build on this project's CI machines).
# To test against the newest releases instead, see docs/testing.md (`QGFD_LATEST=1 bash .ci/run`).
# Regenerate after an upgrade that the suite passes with: python scripts/freeze_constraints.py
"""


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "qgfd_hf", extras=EXTRAS) -> dict:
    """{normalised name: (name, installed version)} for `root` and everything it needs here."""
    found, todo = {}, [(root, tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.setdefault(_key(name), (dist.metadata["Name"], dist.version))
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [dict(default_environment(), extra=e) for e in ("",) + wanted]
            if (req.marker is None or any(req.marker.evaluate(env) for env in envs)) and _key(req.name) not in found:
                todo.append((req.name, tuple(req.extras)))
    return found


def render() -> str:
    pins = [f"{name}=={version}" for key, (name, version) in sorted(closure().items()) if key not in LEFT_OUT]
    return HEADER + "\n".join(pins) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    parser.add_argument("--output", type=Path, default=ROOT / "constraints.txt")
    args = parser.parse_args()
    text = render()
    if args.check:
        same = args.output.exists() and args.output.read_text() == text
        print(f"{args.output}: {'up to date' if same else 'differs from the installed versions'}")
        return 0 if same else 1
    args.output.write_text(text)
    print(f"wrote {args.output} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
