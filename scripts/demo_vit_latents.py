"""The image demo in ViT latents with the ViT-latent settings changed: the runs behind
docs/modality_image.md's tuning table.

`qgfd-hf demo --latent-space vit` takes the image task's `VIT_DEFAULTS`
(qgfd_hf/modality_image.py); this script overrides some of them (`--set NAME=VALUE`, the value
read as JSON) and passes everything after `--` to `qgfd-hf demo --latent-space vit`:

    OMP_NUM_THREADS=1 python scripts/demo_vit_latents.py --set noise_shift='"auto"' -- --max-steps 1000 --output-dir runs/vit-auto
    OMP_NUM_THREADS=1 python scripts/demo_vit_latents.py --set decoder_noise_std=1.0 -- --output-dir runs/vit-tau1
"""

import argparse
import json
import sys

import qgfd_hf.modality_image as modality_image
from qgfd_hf.cli import main as cli_main


def parse_settings(pairs):
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in modality_image.VIT_DEFAULTS:
            raise ValueError(f"--set takes NAME=VALUE with NAME one of {sorted(modality_image.VIT_DEFAULTS)}, got {pair!r}.")
        out[name] = json.loads(value)
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE", help="VIT_DEFAULTS entries to change")
    args = parser.parse_args(own)
    settings = parse_settings(args.set)
    modality_image.VIT_DEFAULTS.update(settings)
    print(f"VIT_DEFAULTS: {modality_image.VIT_DEFAULTS}")
    return cli_main(["demo", "--modality", "image", "--latent-space", "vit", *demo_args])


if __name__ == "__main__":
    sys.exit(main())
