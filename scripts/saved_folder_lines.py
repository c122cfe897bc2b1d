"""What a saved model folder carries: the Python files `save_pretrained` copies for `trust_remote_code`.

    python scripts/saved_folder_lines.py                 # one tiny model per modality, a table
    python scripts/saved_folder_lines.py --files image   # the files of one model, with their lines

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", metavar="MODALITY", help="list the files of the first model whose name starts with this")
    args = parser.parse_args()
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
