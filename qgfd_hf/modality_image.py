# coding=utf-8
"""Images: data, defaults, demo and scores (the training side; the model is
`ImageQGFDDiffusionModel`).

- data: scikit-learn's 8x8 digits (`--dataset digits`, the demo's, real images shipped with
  scikit-learn), an image folder (`--data-dir`, datasets' imagefolder), or a Hub dataset
  (`--dataset cifar10`, online);
- model: pixel patches by default; ViT patch latents with `--backbone` (a ViT), or the ViT's
  own stack as the denoiser with `--denoiser pretrained`;
- scores (digits): Frechet distance in a digit classifier's features, its confidence, the
  classes present, beside real digits and a Gaussian (`evaluation_qgfd.DigitsEvaluator`);
- what a person looks at: `samples.png`, a grid.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

from .modality_qgfd import ModalityTask, TaskData, demo_class_guidance, diffusion_values, pipeline_samples, register_task


def save_image_grid(images: np.ndarray, path: str, nrow: Optional[int] = None, cell: int = 32, pad: int = 2) -> str:
    """A PNG grid of images `[N, C, H, W]` in [0, 1], each upscaled (nearest) to `cell` pixels."""
    from PIL import Image

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Images must be [N, C, H, W] with C in (1, 3), got {list(images.shape)}.")
    n = len(images)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol_rows = int(math.ceil(n / nrow))
    grid = Image.new("RGB", (nrow * (cell + pad) + pad, ncol_rows * (cell + pad) + pad), (128, 128, 128))
    for i, img in enumerate(images):
        arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
        tile = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).convert("RGB").resize((cell, cell), Image.NEAREST)
        r, c = divmod(i, nrow)
        grid.paste(tile, (pad + c * (cell + pad), pad + r * (cell + pad)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return path


@register_task
class ImageTask(ModalityTask):
    name = "image"
    summary = "images: digits (scikit-learn), an image folder, or a Hub dataset"
    datasets = ("digits", "cifar10")
    data_help = "image: a local image folder (datasets' imagefolder)"
    defaults = dict(
        # model: pixel patches (the digits: 2x2 patches -> 16 tokens of width 4; 0.2 M parameters)
        d_model=64, num_heads=4, num_layers=3, d_ff=128,
        # v-prediction on the cosine schedule: cleaner digits than eps on the linear one at this budget
        num_timesteps=1000, beta_schedule="cosine", prediction_type="v",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        # training
        max_steps=3000, batch_size=128, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=500,
        # class-conditional on the digits' labels (DiT's label embedding, 10% label dropout); other
        # image data: --class-conditional
        class_conditional=True,
        # sampling: as many samples as held-out digits, so the FDs compare like with like; a
        # class-conditional model is asked for the held-out digits' classes
        num_samples=360, sampler="ddpm", num_inference_steps=100, guidance_scale=1.0,
    )

    def settings(self, args, for_demo: bool = False):
        s = dict(self.defaults)
        if getattr(args, "data_dir", None) is not None or getattr(args, "dataset", None) not in (None, "digits"):
            s["class_conditional"] = False  # labelled digits by default; other data: --class-conditional
        return s

    def add_arguments(self, group) -> None:
        group.add_argument("--image-size", type=int, default=None, help="image: side in pixels (pixel latents; default 32 for folders)")
        group.add_argument("--num-channels", type=int, default=None, help="image: 1 (grey) or 3 (RGB)")
        group.add_argument("--patch-size", type=int, default=None, help="image: pixel patch side (default 2 up to 16 px, else 4)")
        group.add_argument("--latent-space", default=None, choices=("pixels", "vit"), help="image: pixels (patches, no encoder) or vit")

    def load_data(self, args, settings) -> TaskData:
        from .data_qgfd import check_dataset_for_modality, load_digits_dataset, load_hub_image_dataset, load_image_folder

        if args.data_dir is not None and args.dataset is not None:
            raise ValueError("Give either --dataset or --data-dir, not both.")
        if getattr(args, "data_files", None):
            raise ValueError("--data-files is for tables and text; for images use --data-dir (an image folder) or --dataset.")
        for flag in ("image_size", "num_channels", "patch_size"):
            value = getattr(args, flag, None)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")
        if args.data_dir is not None:
            data = TaskData(load_image_folder(args.data_dir), f"imagefolder:{os.path.abspath(args.data_dir)}")
            size, channels = args.image_size or 32, args.num_channels or 3
        else:
            name = args.dataset or "digits"
            if name == "digits":
                if args.image_size not in (None, 8) or args.num_channels not in (None, 1):
                    raise ValueError("The digits are 8x8 greyscale: --image-size 8 --num-channels 1 (or leave them out).")
                splits = load_digits_dataset(seed=0)
                data = TaskData(splits["train"], name, test=splits["test"], card_name="scikit-learn 8x8 digits (sklearn.datasets.load_digits)")
                size, channels = 8, 1
            elif name in self.datasets:
                data = TaskData(load_hub_image_dataset(name), name)
                size, channels = args.image_size or 32, args.num_channels or 3
            else:
                raise ValueError(f"Unknown image --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-dir for a folder).")
        check_dataset_for_modality(data.train, "image", f"The dataset {data.name!r}")
        data.info.update(image_size=size, num_channels=channels)
        return data

    def build_model(self, args, data, settings):
        from . import create_qgfd_diffusion_model
        from .data_qgfd import ImageCollator, check_image_fits_model

        # With --denoiser pretrained the backbone is the denoiser: pixel latents unless --latent-space vit.
        latent_space = args.latent_space or ("vit" if args.backbone and args.denoiser != "pretrained" else "pixels")
        if args.denoiser == "pretrained" and args.backbone is None:
            raise ValueError("--denoiser pretrained needs --backbone: a ViT (Hub id or folder) whose layers become the denoiser.")
        size, channels = data.info["image_size"], data.info["num_channels"]
        if latent_space == "vit":
            given = [f"--{n.replace('_', '-')}" for n in ("image_size", "num_channels", "patch_size") if getattr(args, n, None) is not None]
            if given:
                raise ValueError(f"With ViT latents the image sizes come from the ViT backbone; drop {', '.join(given)}.")
            kwargs = dict(latent_space="vit")
        else:
            patch = args.patch_size or (2 if size <= 16 else 4)
            kwargs = dict(image_size=size, num_channels=channels, patch_size=patch, latent_space=latent_space)
        kwargs.update(diffusion_values(args, settings))
        if args.denoiser is not None:
            kwargs["denoiser"] = args.denoiser
        model, processor, _ = create_qgfd_diffusion_model("image", args.backbone, None, **kwargs)
        cfg = model.config
        check_image_fits_model(data.train, cfg.num_channels, cfg.image_size, f"The dataset {data.name!r}")
        return model, processor, ImageCollator(cfg.num_channels, cfg.image_size, cfg.image_mean, cfg.image_std)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        n = settings["num_samples"]
        images = pipeline_samples(
            model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"], sampler=settings["sampler"],
            seed=args.seed, progress=not args.no_progress, **demo_class_guidance(model_dir, data, n, settings),
        )
        return images.transpose(0, 3, 1, 2)  # the pipeline's [N, H, W, C] -> [N, C, H, W]

    def evaluate(self, samples, data, settings):
        from .evaluation_qgfd import DigitsEvaluator, image_targets_met

        if data.name != "digits":
            raise ValueError(f"Image samples are scored on the digits only (got data {data.name!r}).")
        evaluator = DigitsEvaluator(data.train["pixel_values"], data.train["label"], data.test["pixel_values"], data.test["label"], seed=0)
        scores = evaluator.evaluate(samples, requested_labels=settings.get("requested_labels"))
        if settings.get("requested_labels") is not None:
            scores["guidance_scale"] = settings.get("guidance_scale", 1.0)
        return {"metrics": scores, "targets": image_targets_met(scores)}

    def write_samples(self, samples, data, output_dir, prefix="samples"):
        path = save_image_grid(samples[:100], os.path.join(output_dir, f"{prefix}.png"), nrow=10 if len(samples) >= 10 else None, cell=40)
        return {"samples": path}

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        s, r, g = m["samples"], m["baseline_real_train_vs_heldout"], m["baseline_gaussian"]
        return [
            f"Sample quality ({s['num_images']} samples; classifier: MLP on the training digits, {m['classifier_test_accuracy']:.1%} test accuracy):",
            f"  {'':32s}{'model':>10s}{'real digits':>13s}{'Gaussian':>11s}",
            f"  {'Frechet distance (lower=better)':32s}{s['fd']:10.3f}{r['fd']:13.3f}{g['fd']:11.3f}",
            f"  {'mean confidence':32s}{s['confidence']:10.3f}{r['confidence']:13.3f}{g['confidence']:11.3f}",
            f"  {'classes present (of 10)':32s}{s['classes_present']:10d}{r['classes_present']:13d}{g['classes_present']:11d}",
        ] + ([
            f"  {'agreement with requested class':32s}{s['class_agreement']:10.3f}{m['classifier_test_accuracy']:13.3f}{'-':>11s}"
            f"   (guidance scale {m.get('guidance_scale', 1.0)}; real digits: the classifier's held-out accuracy)",
        ] if "class_agreement" in s else []) + [
            "  (real digits: training digits scored against the held-out ones; Gaussian: a full-covariance Gaussian fitted to the training pixels)",
        ]

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        s, g = m["samples"], m["baseline_gaussian"]
        return {
            "Frechet distance to held-out digits (classifier features)": round(s["fd"], 3),
            "same, Gaussian baseline": round(g["fd"], 3),
            "same, real training digits": round(m["baseline_real_train_vs_heldout"]["fd"], 3),
            "classifier mean confidence": round(s["confidence"], 3),
            "digit classes present (of 10)": s["classes_present"],
            **({"classifier agreement with the requested class": round(s["class_agreement"], 3)} if "class_agreement" in s else {}),
        }

    def sample_hint(self, model_dir: str) -> str:
        return f"qgfd-hf sample {model_dir} --num-samples 64  (class-conditional: --class-label 3 --guidance-scale 2)"

    def sample_saved(self, model, args):
        return super().sample_saved(model, args).transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
