"""Train an unconditional QGFD image diffusion model: CIFAR-10, a local image folder, or the 8x8 digits.

Two latent spaces: `pixels` (non-overlapping patches of the image, no encoder: small images,
offline) and `vit` (a frozen pretrained ViT's patch states, plus a learned decoder back to
pixels). The steps below are what `qgfd-hf train --modality image` does, written out.

    # online: CIFAR-10 from the Hub, pixel patches of 4x4
    python scripts/train_image.py --dataset cifar10 --output-dir runs/cifar --max-steps 50000

    # a local folder of images (any sizes; resized), e.g. one subfolder per class
    python scripts/train_image.py --data-dir ./my_images --image-size 32 --output-dir runs/mine

    # ViT latents with a pretrained encoder (Hub id or folder)
    python scripts/train_image.py --dataset cifar10 --latent-space vit --backbone google/vit-base-patch16-224 --output-dir runs/vit

    # offline, seconds per hundred steps: scikit-learn's digits (what `qgfd-hf demo` trains)
    python scripts/train_image.py --dataset digits --output-dir runs/digits --max-steps 3000

    # several processes; stop and continue
    accelerate launch --num_processes 4 scripts/train_image.py --dataset cifar10 --output-dir runs/cifar
    python scripts/train_image.py --dataset cifar10 --output-dir runs/cifar --resume
"""

import argparse
import os

from accelerate.utils import set_seed

from qgfd_hf import create_qgfd_diffusion_model
from qgfd_hf.tasks.image import save_image_grid
from qgfd_hf.tasks.base import pipeline_samples
from qgfd_hf.data.core import (
    ImageCollator,
    check_dataset_for_modality,
    check_image_fits_model,
    load_digits_dataset,
    load_hub_image_dataset,
    load_image_folder,
)
from qgfd_hf.training.trainer import QGFDTrainer
from qgfd_hf.training.arguments import QGFDTrainingArguments


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--dataset", default=None, help="cifar10 (Hub) or digits (scikit-learn)")
    p.add_argument("--data-dir", default=None, help="a local image folder instead")
    p.add_argument("--latent-space", default="pixels", choices=("pixels", "vit"))
    p.add_argument("--backbone", default=None, help="ViT Hub id or folder, for --latent-space vit")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--qgfd-steps", type=int, default=1)
    p.add_argument("--qgfd-alpha", type=float, default=0.5)
    p.add_argument("--max-steps", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    p.add_argument("--checkpoint-every", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    return p.parse_args()


def main():
    args = parse_args()

    # 1. Data, checked before the model is built: a folder must hold readable images.
    if args.data_dir is not None:
        train, name, channels, size = load_image_folder(args.data_dir), f"image folder {args.data_dir}", 3, args.image_size
    elif args.dataset == "digits":
        train, name, channels, size = load_digits_dataset()["train"], "scikit-learn 8x8 digits", 1, 8
        args.patch_size = min(args.patch_size, 2)
    elif args.dataset is not None:
        train, name, channels, size = load_hub_image_dataset(args.dataset), args.dataset, 3, args.image_size
    else:
        raise SystemExit("Give --dataset (cifar10, digits) or --data-dir.")
    check_dataset_for_modality(train, "image")

    # 2. The model: QGFD denoiser over patch latents (pixels) or frozen ViT states (vit).
    set_seed(args.seed)
    sizes = dict(d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads, d_ff=4 * args.d_model,
                 beta_schedule="cosine", prediction_type="v", qgfd_steps=args.qgfd_steps, qgfd_alpha=args.qgfd_alpha)
    if args.latent_space == "pixels":
        model, processor, _ = create_qgfd_diffusion_model(
            "image", None, None, latent_space="pixels", image_size=size, patch_size=args.patch_size, num_channels=channels, **sizes)
    else:
        model, processor, _ = create_qgfd_diffusion_model("image", args.backbone, None, latent_space="vit", **sizes)
    check_image_fits_model(train, model.config.num_channels, model.config.image_size)
    collator = ImageCollator(model.config.num_channels, model.config.image_size, model.config.image_mean, model.config.image_std)

    # 3. Train.
    training_args = QGFDTrainingArguments(
        args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        warmup_steps=min(1000, args.max_steps // 10), mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every, seed=args.seed,
    )
    trainer = QGFDTrainer(model, training_args, train, collator, processing_class=processor,
                          metadata={"dataset": name, "modality": "image"})
    metrics = trainer.train(resume=args.resume)
    if not trainer.accelerator.is_main_process:
        return

    # 4. A grid of 64 samples through pipeline("qgfd-diffusion").
    images = pipeline_samples(training_args.model_dir, num_samples=64, num_inference_steps=100, sampler="ddpm").transpose(0, 3, 1, 2)  # [N, C, H, W]
    grid = save_image_grid(images, os.path.join(args.output_dir, "samples.png"), nrow=8, cell=max(32, size))
    print(f"final loss {metrics['final_loss']:.4f}; model in {training_args.model_dir}; samples in {grid}")


if __name__ == "__main__":
    main()
