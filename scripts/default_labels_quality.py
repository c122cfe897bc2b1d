"""Does a class-conditional digits model sampled without labels score like the labelled call?

    python -m qgfd_hf demo --dataset digits --output-dir runs/demo   # the model (about 4-6 minutes)
    python scripts/default_labels_quality.py runs/demo/model

Samples 360 digits from the saved demo model three ways through `pipeline("qgfd-diffusion")`
(DDPM, 100 steps, seed 0): with the held-out digits' labels (what the demo asks for), with no labels
(the default: labels drawn from the training label frequencies that the config records; a model
saved without them gets them from the training digits here), and with
`class_labels="unconditional"` (the null label). Each set is scored by the demo's digits evaluator
(an MLP trained on the training digits): Frechet distance to the held-out digits in its features,
mean confidence, and agreement with the requested labels (labelled call only), beside
real digits and a Gaussian.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a saved class-conditional digits model (qgfd-hf demo's model/)")
    parser.add_argument("--num-samples", type=int, default=360)
    args = parser.parse_args()

    import torch
    from qgfd_hf.data.core import dataset_class_frequencies, load_digits_dataset
    from qgfd_hf.metrics.core import DigitsEvaluator
    from qgfd_hf.tasks.base import pipeline_samples

    torch.set_num_threads(1)
    splits = load_digits_dataset(seed=0)
    train, test = splits["train"], splits["test"]
    model_dir = Path(args.model)
    config = json.loads((model_dir / "config.json").read_text())
    if not config.get("class_frequencies"):  # saved before the frequencies were recorded: record them in a copy
        tmp = Path(tempfile.mkdtemp())
        for f in model_dir.iterdir():
            if f.is_file():
                (tmp / f.name).write_bytes(f.read_bytes())
        config["class_frequencies"] = dataset_class_frequencies(train, config["num_classes"])
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model_dir = tmp
    evaluator = DigitsEvaluator(train["pixel_values"], train["label"], test["pixel_values"], test["label"], seed=0)
    n = args.num_samples
    requested = [int(v) for v in np.asarray(test["label"])[:n]]

    def run(**kw):  # [N, C, H, W] in [0, 1]
        images = pipeline_samples(str(model_dir), num_samples=n, num_inference_steps=100, sampler="ddpm", seed=0,
                                  progress=False, **kw)
        return images.transpose(0, 3, 1, 2)

    print(f"{'':30s}{'FD':>8s}{'confidence':>12s}{'agreement':>11s}")
    calls = (("labels (held-out digits')", dict(class_labels=requested), requested),
             ("no labels (the default)", {}, None),
             ("class_labels='unconditional'", dict(class_labels="unconditional"), None))
    for name, kw, labels in calls:
        result = evaluator.evaluate(run(**kw), requested_labels=labels)
        s = result["samples"]
        agree = f"{s['class_agreement']:.3f}" if "class_agreement" in s else "-"
        print(f"{name:30s}{s['fd']:8.3f}{s['confidence']:12.3f}{agree:>11s}")
    # The baselines are the same for every call (same number of images): print the last call's.
    for name, key in (("real digits", "baseline_real_train_vs_heldout"), ("Gaussian", "baseline_gaussian")):
        print(f"{name:30s}{result[key]['fd']:8.3f}{result[key]['confidence']:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
