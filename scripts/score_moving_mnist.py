"""Score a Moving MNIST video demo's saved samples again (the demo's table), without training:
`samples.npy` of a `qgfd-hf demo --modality video` run, its model's latent space for the latent
Gaussian, and the same held-out clips and requested classes as the demo (each sample asks for the
class of the held-out clip of its index, cycled).

    python scripts/score_moving_mnist.py runs/video-demo            # prints the demo's table
    python scripts/score_moving_mnist.py runs/video-demo --guidance-scale 2   # samples again (DDIM 50, seed 0) with guidance
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main(argv=None):
    from transformers import AutoConfig

    from qgfd_hf.data.moving_mnist import moving_mnist_data
    from qgfd_hf.tasks._moving_mnist import evaluate_moving_mnist, moving_mnist_report_lines
    from qgfd_hf.tasks.base import TaskData
    from qgfd_hf.tasks.video import MOVING_MNIST, VideoTask

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the demo's --output-dir (samples.npy and model/)")
    p.add_argument("--reference-clips", type=int, default=VideoTask.defaults["reference_clips"])
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="sample the model again (as the demo: DDIM 50 steps, seed 0, the demo's classes) with this guidance scale")
    args = p.parse_args(argv)
    samples = np.load(os.path.join(args.run, "samples.npy"))  # (N, F, 1, S, S)
    model_dir = os.path.join(args.run, "model")
    if args.guidance_scale is not None:
        from qgfd_hf.data.mnist import load_mnist_arrays
        from qgfd_hf.tasks.base import pipeline_samples

        test_labels = load_mnist_arrays("test")[1]
        wanted = [int(test_labels[i % len(test_labels)]) for i in range(len(samples))]
        samples = pipeline_samples(model_dir, num_samples=len(samples), num_inference_steps=VideoTask.defaults["num_inference_steps"],
                                   sampler="ddim", seed=0, progress=False, class_labels=wanted,
                                   guidance_scale=args.guidance_scale).transpose(0, 1, 4, 2, 3)
    cfg = AutoConfig.from_pretrained(model_dir)
    F, S = samples.shape[1], samples.shape[-1]
    mm = moving_mnist_data(F, S, seed=0)
    data = TaskData(mm["train"], MOVING_MNIST, info=dict(num_frames=F, num_channels=1, frame_size=S, moving_mnist=mm))
    labels = [int(mm["test_labels"][i % len(mm["test_labels"])]) for i in range(len(samples))]
    recorded = json.load(open(os.path.join(args.run, "metrics.json")))["demo"]["metrics"].get("guidance_scale", 1.0)
    settings = {"requested_labels": labels, "reference_clips": args.reference_clips, "model_dir": model_dir,
                "guidance_scale": recorded if args.guidance_scale is None else args.guidance_scale}
    codec = VideoTask()._codec(settings) if getattr(cfg, "motion_compensation", None) else None
    result = evaluate_moving_mnist(samples, data, settings, codec)
    print("\n".join(moving_mnist_report_lines(result["metrics"])))
    print("Targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["targets"].items()))
    return result


if __name__ == "__main__":
    main()
