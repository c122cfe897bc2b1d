"""What a saved model folder carries: the Python files `save_pretrained` copies for `trust_remote_code`.

    python scripts/saved_folder_lines.py                 # one tiny model per modality, a table
    python scripts/saved_folder_lines.py --files image   # the files of one model, with their lines
    python scripts/saved_folder_lines.py --executed      # which of the pixel folder's statements a run executes (needs `coverage`)

transformers copies the file that defines the model class and, recursively, every file it imports
relatively (`from .x import y`, found by a regular expression, so imports inside functions count
too). The table gives, for each modality's model saved from a tiny config, the number of .py files
in the folder, their lines (blank lines, comments and docstrings included, as `wc -l` counts them),
and their lines of code (`code_lines`: without blank lines, comment-only lines and docstrings).
"""

import argparse
import ast
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = dict(d_model=32, num_heads=4, num_layers=1, d_ff=32)


def tiny_models():
    """(name, model) for a pixel-space image model, a model of each other modality and an image model
    with a ViT backbone, from tiny configs."""
    from qgfd_hf import (
        AudioQGFDDiffusionModel,
        ImageQGFDDiffusionModel,
        QGFDAudioConfig,
        QGFDImageConfig,
        QGFDTabularConfig,
        QGFDVideoConfig,
        TabularQGFDDiffusionModel,
        VideoQGFDDiffusionModel,
    )

    yield "image (pixels)", ImageQGFDDiffusionModel(
        QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **TINY))
    yield "video (pixels)", VideoQGFDDiffusionModel(
        QGFDVideoConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_frames=2, **TINY))
    yield "audio (waveform)", AudioQGFDDiffusionModel(QGFDAudioConfig(latent_space="waveform", **TINY))
    yield "tabular", TabularQGFDDiffusionModel(QGFDTabularConfig(num_features=3, **TINY))
    # A model with a transformers backbone (ViT latents, QGFD-patched): its folder also carries
    # modeling_qgfd_backbones.py, modeling_qgfd_pretrained.py and the patching files.
    vit = dict(model_type="vit", image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=32)
    yield "image (ViT latents)", ImageQGFDDiffusionModel(
        QGFDImageConfig(latent_space="vit", backbone_config=vit, backbone_qgfd={"steps": 1, "alpha": 0.5},
                        normalization_fitted=False, **TINY))


def code_lines(source: str) -> int:
    """Lines of `source` that hold code: not blank, not a comment alone, not part of a docstring."""
    lines = source.splitlines()
    skip = {i for i, line in enumerate(lines, 1) if not line.strip() or line.lstrip().startswith("#")}
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                skip.update(range(first.lineno, first.end_lineno + 1))
    return len(lines) - len(skip)


def folder_lines(model):
    """{file name: (lines, lines of code)} of the .py files `save_pretrained` writes for `model`."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        files = {}
        for p in Path(tmp).glob("*.py"):
            text = p.read_text(encoding="utf-8")
            files[p.name] = (len(text.splitlines()), code_lines(text))
    return files


# What `--executed` runs from a saved class-conditional pixel model's folder, in a process where qgfd_hf
# cannot be imported: load, the loss and its backward pass, each sampler with guidance, and a save.
EXECUTED_RUN = """
import sys, tempfile
sys.modules["qgfd_hf"] = None
import torch
from transformers import AutoModel, pipeline
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True)
model(pixel_values=torch.rand(2, 1, 8, 8), class_labels=torch.tensor([0, 1])).loss.backward()
pipe = pipeline(model=folder, trust_remote_code=True, device="cpu")
for sampler in ("ddpm", "ddim", "dpmsolver++"):
    pipe(num_samples=2, num_inference_steps=3, sampler=sampler, guidance_scale=2.0, class_labels=[0, 1])
pipe(num_samples=2, num_inference_steps=3, output_type="np")
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
"""


def executed_statements() -> None:
    """Print, per file of a pixel image model's folder, its statements and how many `EXECUTED_RUN` executes."""
    import json
    import os
    import subprocess
    from collections import defaultdict

    from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig

    try:
        import coverage  # noqa: F401
    except ImportError:
        raise SystemExit("--executed needs coverage: pip install coverage") from None
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "model", Path(tmp) / "modules"
        config = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, num_classes=10, **TINY)
        ImageQGFDDiffusionModel(config).save_pretrained(folder, model_card=False)
        (Path(tmp) / "run.py").write_text(EXECUTED_RUN)
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_MODULES_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        run = [sys.executable, "-m", "coverage", "run", f"--include={cache}/*", "--data-file", str(Path(tmp) / "cov"), "run.py", str(folder)]
        subprocess.run(run, cwd=tmp, env=env, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "coverage", "json", "--data-file", str(Path(tmp) / "cov"), "-o", str(Path(tmp) / "cov.json")],
                       cwd=tmp, env=env, check=True, capture_output=True)
        report = json.loads((Path(tmp) / "cov.json").read_text())["files"]
    executed, statements = defaultdict(set), defaultdict(set)  # a file may be imported from two module copies
    for path, data in report.items():
        name = Path(path).name
        executed[name] |= set(data["executed_lines"])
        statements[name] |= set(data["executed_lines"]) | set(data["missing_lines"])
    print("| file | statements | executed |\n|---|---:|---:|")
    for name in sorted(n for n in statements if n != "__init__.py"):
        print(f"| {name} | {len(statements[name])} | {len(executed[name])} |")
    print(f"| all | {sum(map(len, statements.values()))} | {sum(map(len, executed.values()))} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", metavar="MODALITY", help="list the files of the first model whose name starts with this")
    parser.add_argument("--executed", action="store_true", help=executed_statements.__doc__)
    args = parser.parse_args()
    if args.executed:
        executed_statements()
        return 0
    print("| model | .py files | lines | code lines |\n|---|---:|---:|---:|")
    for name, model in tiny_models():
        files = folder_lines(model)
        if args.files and name.startswith(args.files):
            for file, (n, code) in sorted(files.items(), key=lambda kv: kv[1]):
                print(f"    {n:6d} {code:6d} {file}")
        print(f"| {name} | {len(files)} | {sum(n for n, _ in files.values())} | {sum(c for _, c in files.values())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
