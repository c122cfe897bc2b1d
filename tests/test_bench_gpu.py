"""scripts/bench_gpu.py runs end to end on the CPU at tiny sizes (`--device cpu --quick`): every
section, the table, the JSON, the targets (reported as n/a at these sizes)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import bench_gpu  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_bench_gpu_quick_on_cpu(tmp_path, capsys):
    path = tmp_path / "bench.json"
    bench_gpu.main(["--device", "cpu", "--quick", "--json", str(path), "--repeats", "1"])
    table = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["quick"] and saved["device"] == "cpu"
    assert {r["L"] for r in saved["kernel"]["rows"]} == {64, 128, 256}
    assert [r["model"] for r in saved["models"]["rows"]] == ["llama", "vit"]
    assert [r["qgfd_steps"] for r in saved["demo"]["rows"]] == [0, 1]
    for row in saved["kernel"]["rows"] + saved["models"]["rows"]:
        assert row["ratio"] > 0
    assert len(saved["targets"]) == 3  # no memory target without CUDA's allocator stats
    assert "| L | T | SDPA ms |" in table and "n/a (--quick)" in table and "MISSED" not in table
