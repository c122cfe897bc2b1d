"""The image demo in ViT latents with the ViT-latent settings changed: the runs behind
docs/modality_image.md's tuning table.

`qgfd-hf demo --latent-space vit` takes the image task's `VIT_DEFAULTS`
(qgfd_hf/tasks/image.py); this script overrides some of them (`--set NAME=VALUE`, the value
read as JSON) and passes everything after `--` to `qgfd-hf demo --latent-space vit`:

    OMP_NUM_THREADS=1 python scripts/demo_vit_latents.py --set noise_shift='"auto"' -- --max-steps 1000 --output-dir runs/vit-auto
    OMP_NUM_THREADS=1 python scripts/demo_vit_latents.py --set decoder_noise_std=1.0 -- --output-dir runs/vit-tau1

`--decoder-fd MODEL` scores instead the trained model's decoder alone: 360 real training digits,
encoded and decoded (also with 0.3 noise per latent coordinate), beside the same 360 digits raw:

    OMP_NUM_THREADS=1 python scripts/demo_vit_latents.py --decoder-fd runs/vit-auto/model
"""

import argparse
import json
import sys

import qgfd_hf.tasks.image as modality_image
from qgfd_hf.cli import main as cli_main


def parse_settings(pairs):
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in modality_image.VIT_DEFAULTS:
            raise ValueError(f"--set takes NAME=VALUE with NAME one of {sorted(modality_image.VIT_DEFAULTS)}, got {pair!r}.")
        out[name] = json.loads(value)
    return out


def decoder_fd(model_dir: str, n: int = 360, noise: float = 0.3) -> None:
    import numpy as np
    import torch
    from transformers import AutoModel

    from qgfd_hf.data.core import load_digits_dataset
    from qgfd_hf.metrics.core import DigitsEvaluator

    torch.manual_seed(0)
    splits = load_digits_dataset(seed=0)
    train, test = splits["train"], splits["test"]
    evaluator = DigitsEvaluator(train["pixel_values"], train["label"], test["pixel_values"], test["label"], seed=0)
    model = AutoModel.from_pretrained(model_dir).eval()
    cfg = model.config
    x = torch.tensor(np.array(train["pixel_values"][:n]))  # (n, 1, 8, 8) in [0, 1]
    with torch.no_grad():
        x0 = model.image_to_latents((x - cfg.image_mean[0]) / cfg.image_std[0])
        rows = {"raw digits": x.numpy(), "encode + decode": model.decode_latents(x0).numpy(),
                f"encode + {noise} noise + decode": model.decode_latents(x0 + noise * cfg.latent_scale * torch.randn_like(x0)).numpy()}
    for name, images in rows.items():
        s = evaluator.evaluate(images)["samples"]
        mse = float(((images - x.numpy()) ** 2).mean())
        print(f"{name:32s} FD {s['fd']:.3f}  confidence {s['confidence']:.3f}  pixel MSE {mse:.4f}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="VIT_DEFAULTS entries to change")
    parser.add_argument("--decoder-fd", default=None, metavar="MODEL", help="score a trained model's decoder alone")
    args = parser.parse_args(own)
    if args.decoder_fd is not None:
        decoder_fd(args.decoder_fd)
        return 0
    settings = parse_settings(args.set)
    modality_image.VIT_DEFAULTS.update(settings)
    print(f"VIT_DEFAULTS: {modality_image.VIT_DEFAULTS}")
    return cli_main(["demo", "--modality", "image", "--dataset", "digits", "--latent-space", "vit", *demo_args])


if __name__ == "__main__":
    sys.exit(main())
