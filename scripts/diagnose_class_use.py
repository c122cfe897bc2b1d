"""Does a class-conditional model use its class label? (issue 10, video)

For held-out examples of the demo's data, diffuses them to several timesteps t (the same noise
for every arm) and measures the denoiser's one-step x0 error (mean squared, in latent units; the
latents have variance about 1) given the true labels, shuffled labels and the null label. A
model that draws the class it is asked for has a clearly lower error with the true labels at mid
and high noise; equal errors mean the label is not used.

    python scripts/diagnose_class_use.py qgfd-demo-video/model
    python scripts/diagnose_class_use.py qgfd-demo/model --num-examples 300

Works on the image demo (digits) and the video demo (moving digits) models.
"""

import argparse

import numpy as np
import torch


def held_out(model, n):
    """(pixel_values normalised as the model's collator does, labels) of `n` held-out examples."""
    cfg = model.config
    if cfg.modality == "video":
        from qgfd_hf.data.video import load_moving_digits

        test = load_moving_digits(num_frames=cfg.num_frames, frame_size=cfg.image_size)["test"].with_format("numpy")[:n]
        shape = (1, 1, -1, 1, 1)
    elif cfg.modality == "image":
        from qgfd_hf.data.core import load_digits_dataset

        test = load_digits_dataset(seed=0)["test"].with_format("numpy")[:n]
        shape = (1, -1, 1, 1)
    else:
        raise ValueError(f"Only image and video demo models are diagnosed here, got modality {cfg.modality!r}.")
    x = torch.as_tensor(np.asarray(test["pixel_values"], dtype=np.float32))
    mean, std = torch.tensor(cfg.image_mean).view(shape), torch.tensor(cfg.image_std).view(shape)
    return (x - mean) / std, torch.as_tensor(test["label"])


def main(argv=None):
    from transformers import AutoModel

    from qgfd_hf.scheduling_qgfd import predict_x0_and_eps, q_sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a saved class-conditional model folder")
    p.add_argument("--num-examples", type=int, default=200)
    p.add_argument("--timesteps", nargs="+", type=int, default=[100, 300, 500, 700, 900])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(args.model).eval()
    K = model.config.num_classes
    if K is None:
        raise SystemExit(f"{args.model} is not class-conditional (num_classes is None).")
    pixels, labels = held_out(model, args.num_examples)
    n = len(labels)
    g = torch.Generator().manual_seed(args.seed)
    arms = {"true labels": labels, "shuffled labels": labels[torch.randperm(n, generator=g)], "null label": torch.full((n,), K)}
    print(f"{args.model}: {n} held-out examples; one-step x0 error (mean squared, latent units)")
    print(f"| t | {' | '.join(arms)} | shuffled / true |")
    print("|---:|" + "---:|" * (len(arms) + 1))
    with torch.no_grad():
        x0 = model.data_to_latents({"pixel_values": pixels})
        schedule = model.get_schedule()
        for step in args.timesteps:
            t = torch.full((n,), step)
            x_t, _ = q_sample(x0, t, schedule, torch.randn(x0.shape, generator=g))
            x0_hat = lambda L: predict_x0_and_eps(model.denoise(x_t, t, class_labels=L), x_t, t, schedule, model.config.prediction_type)[0]
            errors = [float(((x0_hat(L) - x0) ** 2).mean()) for L in arms.values()]
            print(f"| {step} | " + " | ".join(f"{e:.4f}" for e in errors) + f" | {errors[1] / errors[0]:.3f} |")


if __name__ == "__main__":
    main()
