"""scripts/ab_qgfd_vs_softmax.py's tables: mean +- std per arm, and each arm paired against the
first seed by seed (the statistics are scripts/benchmarks_qgfd.paired_comparison's)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import ab_qgfd_vs_softmax as ab  # noqa: E402


def _rows(fds, agreements):
    return [{"final loss": 0.3, "trainable params (M)": 0.2, "FD (lower=better)": fd, "confidence": 0.9, "classes": 10,
             "FD Gaussian baseline": 2.27, "agreement with the requested class": a} for fd, a in zip(fds, agreements)]


def test_paired_table_against_the_first_arm():
    results = {"softmax": _rows([1.0, 1.2, 1.1], [0.9, 0.9, 0.8]), "qgfd-seed": _rows([0.9, 1.0, 1.2], [0.95, 0.9, 0.85])}
    text = ab.paired_table("image", results)
    assert text.startswith("Paired against softmax (image")
    row = [line for line in text.splitlines() if line.startswith("| qgfd-seed |")][0]
    fd_cell = row.split("|")[3]
    assert fd_cell.strip().startswith("-0.06667") and "(1/0/2)" in fd_cell  # FD differences -0.1, -0.2, +0.1
    assert "(2/1/0)" in row.split("|")[5]  # agreement: +0.05, 0, +0.05
    assert "FD Gaussian baseline" not in text and "classes" not in text.split("\n")[2]
    assert "+- " in ab.table("image", results)


def test_paired_table_needs_two_arms_and_two_seeds():
    assert ab.paired_table("image", {"softmax": _rows([1.0, 1.1], [0.9, 0.9])}) == ""
    assert ab.paired_table("image", {"softmax": _rows([1.0], [0.9]), "qgfd-seed": _rows([0.9], [0.9])}) == ""
