"""`qgfd-hf --help` (and `train --help`, `sample --help`, `demo --help`, `--version`) work without building
anything (no training data loaded: `datasets` is not imported); the defaults the help shows are the trainer's.
(`import qgfd_hf` imports torch and transformers to register its configs; the time: scripts/bench_startup.py.)"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_help_and_version_load_no_training_data():
    code = """
import contextlib, io, json, sys
from qgfd_hf.cli import main
texts = {}
for argv in (["--help"], ["train", "--help"], ["sample", "--help"], ["demo", "--help"], ["--version"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    texts[" ".join(argv)] = out.getvalue()
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "datasets")
print(json.dumps({"heavy": heavy, "texts": texts}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    texts = got["texts"]
    assert texts["--version"].strip() == "qgfd-hf 0.1.0"
    assert "the modalities' defaults" in texts["train --help"] and "the modalities' defaults" in texts["demo --help"]
    assert "gradient clipping (0 = off) (default: 1.0)" in texts["train --help"]  # a trainer default, read without torch


def test_help_defaults_are_the_trainers():
    from qgfd_hf.cli import _TRAINING_FIELDS, _trainer_defaults
    from qgfd_hf.training.arguments import QGFDTrainingArguments

    expected = {f.name: f.default for f in dataclasses.fields(QGFDTrainingArguments)
                if f.default is not dataclasses.MISSING and f.default is not None and f.name in _TRAINING_FIELDS}
    assert _trainer_defaults() == expected
    assert json.dumps(_trainer_defaults(), sort_keys=True) == json.dumps(expected, sort_keys=True)  # same types (1.0, not 1)


def test_console_script_help_imports_neither_torch_nor_transformers():
    """The `qgfd-hf` console script (qgfd_hf_cli.py) defers `import qgfd_hf`'s registration while it
    imports the command line, so `--help` never loads torch or transformers; a command registers."""
    code = """
import contextlib, io, json, os, sys
from qgfd_hf_cli import main
for argv in (["--help"], ["train", "--help"], ["demo", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "datasets", "accelerate"})
print(json.dumps({"heavy": heavy, "env": "QGFD_HF_DEFER_REGISTRATION" in os.environ}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"heavy": [], "env": False}


def test_a_command_run_through_the_console_script_registers_first():
    code = """
import contextlib, io, sys
from qgfd_hf_cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
r = sys.modules["qgfd_hf.registration_qgfd"]
assert not r._registered
main(["sample", "/nonexistent/model"])  # an error (exit status 2), after registering
print(r._registered)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "True"
