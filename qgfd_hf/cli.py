# coding=utf-8
"""The `qgfd-hf` command line: `train`, `sample` and `demo`.

    qgfd-hf demo                                   # image model on scikit-learn's digits, <= 5 min on CPU
    qgfd-hf demo --modality text                   # reverse a word sequence (conditional text model)
    qgfd-hf train --modality image --dataset digits --output-dir runs/digits --max-steps 3000
    qgfd-hf train --modality image --data-dir ./my_images --image-size 32 --output-dir runs/mine
    qgfd-hf train --modality text --dataset mrpc --backbone t5-small --output-dir runs/mrpc
    qgfd-hf train ... --resume                     # continue from the newest checkpoint
    qgfd-hf sample runs/digits/model --num-samples 64 --output samples.png
    qgfd-hf sample runs/rev/model --condition "red cat sun"

`python -m qgfd_hf` is the same program. Several processes (or GPUs):

    accelerate launch --num_processes 4 -m qgfd_hf train ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m qgfd_hf train ...   # 2 CPU processes

(on accelerate 1.x `accelerate launch --cpu --num_processes 2` starts a single process,
huggingface/accelerate#2741; the second form starts two).

The demo's hyperparameters live in `DEMO_SETTINGS`, one table per modality.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict, Optional, Sequence

import numpy as np
import torch

# ----------------------------------------------------------------------------------------
# The demo's settings (tuned to reach the targets within 5 minutes on 2 CPU cores)
# ----------------------------------------------------------------------------------------

DEMO_SETTINGS: Dict[str, dict] = {
    "image": dict(
        # model: pixel patches of the 8x8 digits, 2x2 patches -> 16 tokens of width 4 (0.2 M parameters)
        d_model=64, num_heads=4, num_layers=3, d_ff=128, patch_size=2,
        # v-prediction on the cosine schedule: cleaner digits than eps on the linear one at this budget
        num_timesteps=1000, beta_schedule="cosine", prediction_type="v",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        # training
        max_steps=3000, batch_size=128, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=500,
        # sampling: as many samples as held-out digits, so the FDs compare like with like
        num_samples=360, sampler="ddpm", num_inference_steps=100,
    ),
    "text": dict(
        # denoiser over the token embeddings of a small random T5 (no download), conditioned on
        # the T5 encoder's states of the source sequence
        d_model=64, num_heads=4, num_layers=3, d_ff=128,
        t5_d_model=32, t5_layers=2, t5_heads=4, t5_d_ff=64,
        # Diffusion-LM's choices: the sqrt schedule and x0 ("sample") prediction
        num_timesteps=1000, beta_schedule="sqrt", prediction_type="sample",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        # The T5 is random: its token embeddings (the latent space) stay frozen, while its encoder
        # layers that read the source learn (train_condition_encoder, the model's default); frozen
        # random encoder states do not tell the denoiser where a source word sits.
        model_kwargs=dict(freeze_encoder=True, train_condition_encoder=True),
        num_pairs=4000, num_heldout=200, min_len=3, max_len=6,
        max_steps=3000, batch_size=64, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=500,
        sampler="ddim", num_inference_steps=50,
    ),
}

IMAGE_DATASETS = ("digits", "cifar10")
TEXT_DATASETS = ("reversal", "mrpc")


def _say(msg: str = "") -> None:
    """The CLI's own output (the library logs through transformers' logging instead); under
    `accelerate launch` only the first process speaks."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=None, help="denoiser size: tiny, small, base or large (QGFD_PRESETS); the flags below override it")
    g.add_argument("--d-model", type=int, default=None)
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--d-ff", type=int, default=None)
    g.add_argument("--num-timesteps", type=int, default=None, help="diffusion steps T (default 1000)")
    g.add_argument("--beta-schedule", default=None, help="linear, cosine or sqrt")
    g.add_argument("--prediction-type", default=None, help="epsilon, sample or v")
    g.add_argument("--qgfd-steps", type=int, default=None, help="QGFD diffusion steps (0 = plain attention)")
    g.add_argument("--qgfd-alpha", type=float, default=None, help="QGFD alpha in [0, 1] (0 = plain attention)")
    g.add_argument("--qgfd-graph", default=None, help="attention (the seed's rule) or keys")
    g.add_argument("--qgfd-mix", default=None, help="seed or recurrent")
    g.add_argument("--qgfd-warmup-steps", type=int, default=None, help="alpha warms up over this many optimizer steps")
    g.add_argument("--backbone", default=None, help="pretrained encoder (Hub id or folder): t5-small for text, a ViT for --latent-space vit")
    g.add_argument("--denoiser", default=None, choices=("qgfd", "pretrained"),
                   help="qgfd: a fresh QGFD Transformer (default); pretrained: the --backbone's own Transformer stack "
                        "(T5 encoder, ViT), QGFD-patched and trained, with adaLN-Zero timestep conditioning")
    g.add_argument("--latent-space", default=None, help="images: pixels (patches, no encoder) or vit")
    g.add_argument("--image-size", type=int, default=None)
    g.add_argument("--num-channels", type=int, default=None)
    g.add_argument("--patch-size", type=int, default=None)
    g.add_argument("--seq-len", type=int, default=None, help="text: length of generated sequences (tokens)")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--output-dir", default=None, help="checkpoints, model/, loss.png and metrics.json go here")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=None, help="global batch of one micro-step (split across processes)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=None)
    g.add_argument("--learning-rate", "--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--lr-schedule", default=None, help="cosine, linear or constant (after the warm-up)")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--max-grad-norm", type=float, default=None)
    g.add_argument("--mixed-precision", default=None, help="no, fp16 or bf16")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA of the weights used for sampling and saving (0 = off)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints (0 = none)")
    g.add_argument("--keep-last", type=int, default=None, help="checkpoints to keep")
    g.add_argument("--log-every", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    g.add_argument("--stop-after", type=int, default=None, help="pause after this many steps (checkpoint, no final model); --resume continues")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (demo default: 1, robust on busy machines)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qgfd-hf",
        description="Train and sample QGFD diffusion models (Transformers with QGFD attention as denoisers).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a dataset", description="Train a QGFD diffusion model with accelerate.")
    p.add_argument("--modality", required=True, choices=("image", "text"))
    p.add_argument("--dataset", default=None, help=f"image: {', '.join(IMAGE_DATASETS)} (Hub, online); text: {', '.join(TEXT_DATASETS)}")
    p.add_argument("--data-dir", default=None, help="image: a local image folder (datasets' imagefolder)")
    p.add_argument("--data-files", nargs="+", default=None, help="text: local csv/json/parquet with sentence1, sentence2, label (MRPC's columns)")
    _add_model_args(p)
    _add_training_args(p)

    p = sub.add_parser("sample", help="sample from a trained model", description="Sample through pipeline('qgfd-diffusion').")
    p.add_argument("model", help="a saved model folder (or Hub id)")
    p.add_argument("--num-samples", type=int, default=16, help="unconditional models: how many samples")
    p.add_argument("--condition", nargs="+", default=None, help="conditional text models: the source text(s)")
    p.add_argument("--num-inference-steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm", "dpmsolver++"))
    p.add_argument("--timestep-spacing", default=None, choices=("linspace", "leading", "trailing"), help="as diffusers (default linspace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="images: the PNG grid to write (default: samples.png beside the model)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: robust when cores are shared)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "demo",
        help="train a small model, sample, and score it (<= 5 min on CPU)",
        description="The main job: train on data that ships with the dependencies, sample through "
        "pipeline('qgfd-diffusion'), and report metrics beside their baselines.",
    )
    p.add_argument("--modality", default="image", choices=("image", "text"))
    p.add_argument("--num-samples", type=int, default=None, help="image: samples to generate and score")
    p.add_argument("--num-inference-steps", type=int, default=None)
    _add_model_args(p)
    _add_training_args(p)
    return parser


_TRAINING_FIELDS = (
    "stop_after", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "lr_schedule",
    "warmup_steps", "max_grad_norm", "mixed_precision", "ema_decay", "checkpoint_every", "keep_last", "log_every",
)
_DIFFUSION_FIELDS = (
    "d_model", "num_heads", "num_layers", "d_ff", "num_timesteps", "beta_schedule", "prediction_type",
    "qgfd_steps", "qgfd_alpha", "qgfd_graph", "qgfd_mix", "qgfd_warmup_steps",
)


def _given(args, names, defaults=None) -> dict:
    """The flags the user set, over `defaults`."""
    out = dict(defaults or {})
    out.update({n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
    return out


def _training_arguments(args, output_dir: str, defaults: Optional[dict] = None):
    from .training_qgfd import QGFDTrainingArguments

    values = _given(args, _TRAINING_FIELDS, {k: v for k, v in (defaults or {}).items() if k in _TRAINING_FIELDS})
    return QGFDTrainingArguments(output_dir=output_dir, seed=args.seed, progress=not args.no_progress, **values)


def _diffusion_values(args, defaults: dict) -> dict:
    """The denoiser's settings (`DiffusionConfig` fields): the demo's defaults, then --preset,
    then the individual flags. `latent_dim` is left to the factory (the encoder's width)."""
    from .configuration_qgfd import QGFD_PRESETS

    values = {k: v for k, v in defaults.items() if k in _DIFFUSION_FIELDS}
    if args.preset is not None:
        if args.preset not in QGFD_PRESETS:
            raise ValueError(f"Unknown --preset {args.preset!r}; allowed: {', '.join(QGFD_PRESETS)}.")
        values.update(QGFD_PRESETS[args.preset])
    values.update(_given(args, _DIFFUSION_FIELDS))
    return values


# ----------------------------------------------------------------------------------------
# Data + model for each modality
# ----------------------------------------------------------------------------------------


class _ImageJob:
    """Image data (checked), the model built for it, and its collator."""

    def __init__(self, args, defaults: dict):
        from .data_qgfd import check_dataset_for_modality, load_digits_dataset, load_hub_image_dataset, load_image_folder

        self.test = None
        self.card_name = None
        if args.data_dir is not None and args.dataset is not None:
            raise ValueError("Give either --dataset or --data-dir, not both.")
        if getattr(args, "data_files", None):
            raise ValueError("--data-files is for text pairs; for images use --data-dir (an image folder) or --dataset.")
        if args.data_dir is not None:
            self.train = load_image_folder(args.data_dir)
            self.name = f"imagefolder:{os.path.abspath(args.data_dir)}"
            size, channels = args.image_size or 32, args.num_channels or 3
        else:
            name = args.dataset or "digits"
            if name == "digits":
                self.card_name = "scikit-learn 8x8 digits (sklearn.datasets.load_digits)"
                splits = load_digits_dataset(seed=0)
                self.train, self.test = splits["train"], splits["test"]
                size, channels = 8, 1
                if args.image_size not in (None, 8) or args.num_channels not in (None, 1):
                    raise ValueError("The digits are 8x8 greyscale: --image-size 8 --num-channels 1 (or leave them out).")
            elif name in TEXT_DATASETS:
                raise ValueError(f"--dataset {name} is text; it does not fit --modality image (use --modality text).")
            else:
                self.train = load_hub_image_dataset(name)
                size, channels = args.image_size or 32, args.num_channels or 3
            self.name = name
        check_dataset_for_modality(self.train, "image", f"The dataset {self.name!r}")
        self.image_size, self.num_channels = size, channels
        self.defaults = defaults

    def build_model(self, args):
        from .data_qgfd import ImageCollator, check_image_fits_model
        from . import create_qgfd_diffusion_model

        # With --denoiser pretrained the backbone is the denoiser: pixel latents unless --latent-space vit.
        latent_space = args.latent_space or ("vit" if args.backbone and args.denoiser != "pretrained" else "pixels")
        if args.denoiser == "pretrained" and args.backbone is None:
            raise ValueError("--denoiser pretrained needs --backbone: a ViT (Hub id or folder) whose layers become the denoiser.")
        patch = args.patch_size or self.defaults.get("patch_size", 2 if self.image_size <= 16 else 4)
        kwargs = dict(image_size=self.image_size, num_channels=self.num_channels, patch_size=patch, latent_space=latent_space)
        if latent_space == "vit":
            kwargs = dict(latent_space="vit")  # sizes come from the ViT
        kwargs.update(_diffusion_values(args, self.defaults))
        if args.denoiser is not None:
            kwargs["denoiser"] = args.denoiser
        model, processor, _ = create_qgfd_diffusion_model("image", args.backbone, None, **kwargs)
        check_image_fits_model(self.train, model.config.num_channels, model.config.image_size, f"The dataset {self.name!r}")
        collator = ImageCollator(model.config.num_channels, model.config.image_size, model.config.image_mean, model.config.image_std)
        return model, processor, collator


class _TextJob:
    """Text pairs (checked), a tokenizer, the model built for them, and its collator."""

    def __init__(self, args, defaults: dict):
        from .data_qgfd import check_dataset_for_modality, load_mrpc, make_reversal_dataset, train_test_split_dataset

        if getattr(args, "data_dir", None) is not None:
            raise ValueError("--data-dir is an image folder; text takes --dataset reversal|mrpc or --data-files.")
        name = getattr(args, "dataset", None) or ("mrpc" if getattr(args, "data_files", None) else "reversal")
        self.defaults = defaults
        self.test = None
        self.card_name = "nyu-mll/glue" if name == "mrpc" and not getattr(args, "data_files", None) else None
        if name in IMAGE_DATASETS:
            raise ValueError(f"--dataset {name} is images; it does not fit --modality text (use --modality image).")
        if name == "reversal":
            self.card_name = "generated word-sequence reversal pairs (qgfd_hf.data_qgfd.make_reversal_dataset)"
            d = defaults
            pairs = make_reversal_dataset(d.get("num_pairs", 4000), min_len=d.get("min_len", 3), max_len=d.get("max_len", 6), seed=0)
            self.train, self.test = train_test_split_dataset(pairs, d.get("num_heldout", 200), seed=0)
        elif name == "mrpc":
            self.train = load_mrpc(getattr(args, "data_files", None))
        else:
            raise ValueError(f"Unknown text --dataset {name!r}; allowed: {', '.join(TEXT_DATASETS)}.")
        self.name = name
        check_dataset_for_modality(self.train, "text", f"The dataset {name!r}")

    def build_model(self, args):
        from transformers import AutoTokenizer, T5Config

        from .data_qgfd import REVERSAL_VOCAB, Seq2SeqCollator, build_word_tokenizer, check_text_fits
        from . import create_qgfd_diffusion_model

        d = self.defaults
        if args.backbone is not None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(args.backbone)
            except Exception as e:
                raise ValueError(f"Could not load the tokenizer of --backbone {args.backbone!r} ({type(e).__name__}: {e}).") from e
            backbone = args.backbone
        elif self.name == "reversal":
            tokenizer = build_word_tokenizer(REVERSAL_VOCAB)
            backbone = T5Config(
                vocab_size=len(tokenizer), d_model=d["t5_d_model"], d_kv=d["t5_d_model"] // d["t5_heads"], d_ff=d["t5_d_ff"],
                num_layers=d["t5_layers"], num_heads=d["t5_heads"], pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            )
        else:
            raise ValueError("--dataset mrpc needs a pretrained T5: --backbone t5-small (or a local T5 folder).")
        seq_len = args.seq_len or (d.get("max_len", 6) + 1 if self.name == "reversal" else 64)
        check_text_fits(self.train, tokenizer, seq_len, f"The dataset {self.name!r}")
        kwargs = dict(_diffusion_values(args, d), seq_len=seq_len, conditional=True, **d.get("model_kwargs", {}))
        if args.denoiser is not None:
            kwargs["denoiser"] = args.denoiser
        model, tok, _ = create_qgfd_diffusion_model("text", backbone, None, tokenizer=tokenizer, **kwargs)
        tokenizer = tok or tokenizer
        return model, tokenizer, Seq2SeqCollator(tokenizer, seq_len)


def _make_job(args, defaults):
    return _ImageJob(args, defaults) if args.modality == "image" else _TextJob(args, defaults)


def _train(args, job, output_dir: str, defaults: dict, metadata: dict):
    from accelerate.utils import set_seed

    from .training_qgfd import QGFDTrainer

    set_seed(args.seed)  # the model's initial weights
    model, processor, collator = job.build_model(args)
    targs = _training_arguments(args, output_dir, defaults)
    trainer = QGFDTrainer(model, targs, job.train, data_collator=collator, processing_class=processor, metadata=metadata)
    metrics = trainer.train(resume=args.resume)
    return trainer, metrics, processor


# ----------------------------------------------------------------------------------------
# Sampling, through the pipeline
# ----------------------------------------------------------------------------------------


def generate(model_or_path, inputs=None, *, num_samples: Optional[int] = None, num_inference_steps: int = 50,
             sampler: str = "ddim", seed: int = 0, batch_size: int = 256, progress: bool = True,
             timestep_spacing: Optional[str] = None):
    """Samples through `pipeline("qgfd-diffusion")` (registered by `import qgfd_hf`): image arrays
    `[N, C, H, W]` in [0, 1] for an unconditional image model, or one string per input text
    for a conditional text model."""
    from transformers import pipeline

    pipe = pipeline("qgfd-diffusion", model=model_or_path)
    kwargs = dict(num_inference_steps=num_inference_steps, sampler=sampler, seed=seed, batch_size=batch_size, progress_bar=progress,
                  timestep_spacing=timestep_spacing)
    if inputs is None:
        out = pipe(num_samples=num_samples, output_type="np", **kwargs)
        return np.stack([o["np"] for o in out]).transpose(0, 3, 1, 2)  # the pipeline's [H, W, C] -> [N, C, H, W]
    out = pipe(list(inputs), **kwargs)  # one list of samples per input text
    return [group[0]["generated_text"] for group in out]


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


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    if args.output_dir is None:
        raise ValueError("--output-dir is required for train.")
    _set_threads(args.threads)
    # The demo's datasets come with the demo's tuned settings (each flag still overrides them).
    demo_data = {"image": "digits", "text": "reversal"}[args.modality]
    is_demo_data = (args.dataset or (demo_data if not (args.data_dir or args.data_files) else None)) == demo_data
    defaults = dict(DEMO_SETTINGS[args.modality]) if is_demo_data else {}
    job = _make_job(args, defaults)
    _say(f"Training a {args.modality} model on {job.name} ({len(job.train)} examples) -> {args.output_dir}")
    trainer, metrics, _ = _train(args, job, args.output_dir, defaults, {"dataset": job.card_name or job.name, "modality": args.modality})
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`, one process reports
        return 0
    if metrics.get("paused"):
        _say(f"  paused at step {metrics['global_step']}; checkpoint {os.path.abspath(metrics['checkpoint'])}")
        _say("  continue with the same command plus --resume")
        return 0
    _print_paths(args.output_dir, metrics)
    return 0


def cmd_sample(args) -> int:
    from transformers import AutoConfig

    _set_threads(args.threads)
    try:
        config = AutoConfig.from_pretrained(args.model)
    except Exception as e:
        raise ValueError(f"Could not load a model config from {args.model!r} ({type(e).__name__}: {e}).") from e
    t0 = time.time()
    if getattr(config, "modality", None) == "text" and getattr(config, "conditional", False):
        if not args.condition:
            raise ValueError("This text model is conditional: give --condition with the source text(s).")
        outs = generate(args.model, args.condition, num_inference_steps=args.num_inference_steps, sampler=args.sampler, seed=args.seed, progress=not args.no_progress,
                        timestep_spacing=args.timestep_spacing)
        for src, out in zip(args.condition, outs):
            _say(f"{src!r} -> {out!r}")
        return 0
    if args.condition:
        raise ValueError(f"This {getattr(config, 'modality', '?')} model is unconditional; drop --condition (use --num-samples).")
    images = generate(args.model, num_samples=args.num_samples, num_inference_steps=args.num_inference_steps, sampler=args.sampler, seed=args.seed, progress=not args.no_progress,
                      timestep_spacing=args.timestep_spacing)
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.model)), "samples.png")
    save_image_grid(images, out)
    _say(f"{len(images)} samples in {time.time() - t0:.1f}s -> {out}")
    return 0


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}.")
        torch.set_num_threads(threads)


def cmd_demo(args) -> int:
    # One thread by default: on a machine whose cores are shared with other jobs, two torch threads
    # that wait on each other can be many times slower than one.
    _set_threads(args.threads if args.threads is not None else 1)
    defaults = dict(DEMO_SETTINGS[args.modality])
    for name in ("num_samples", "num_inference_steps"):
        if getattr(args, name, None) is not None:
            defaults[name] = getattr(args, name)
    args.dataset = "digits" if args.modality == "image" else "reversal"
    args.data_dir = args.data_files = None
    output_dir = args.output_dir or f"qgfd-demo-{args.modality}"
    t0 = time.time()
    job = _make_job(args, defaults)
    _say(
        f"QGFD demo ({args.modality}): training on {job.name} ({len(job.train)} examples) for {defaults['max_steps'] if args.max_steps is None else args.max_steps} "
        f"steps on {torch.get_num_threads()} CPU thread(s) (--threads to change); output in {os.path.abspath(output_dir)}"
    )
    trainer, train_metrics, processor = _train(args, job, output_dir, defaults, {"dataset": job.card_name or job.name, "modality": args.modality, "demo": True})
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`, one process samples and scores
        return 0
    model_dir = os.path.join(output_dir, "model")
    t_train = time.time() - t0
    if args.modality == "image":
        result = _demo_image_eval(args, job, defaults, model_dir, output_dir)
    else:
        result = _demo_text_eval(args, job, defaults, model_dir, output_dir, processor)
    result["seconds"] = {"train": round(t_train, 1), "total": round(time.time() - t0, 1)}
    metrics_path = os.path.join(output_dir, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    metrics["demo"] = result
    _record_in_model_card(trainer, model_dir, args.modality, result)
    with open(metrics_path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(metrics_path + ".tmp", metrics_path)
    _print_demo(args.modality, result, output_dir, train_metrics)
    return 0


def _demo_image_eval(args, job, d, model_dir, output_dir) -> dict:
    from .evaluation_qgfd import DigitsEvaluator, image_targets_met

    t = time.time()
    images = generate(model_dir, num_samples=d["num_samples"], num_inference_steps=d["num_inference_steps"], sampler=d["sampler"], seed=args.seed, progress=not args.no_progress)
    t_sample = time.time() - t
    grid = save_image_grid(images[:100], os.path.join(output_dir, "samples.png"), nrow=10, cell=40)
    t = time.time()
    evaluator = DigitsEvaluator(job.train["pixel_values"], job.train["label"], job.test["pixel_values"], job.test["label"], seed=0)
    scores = evaluator.evaluate(images)
    return {
        "metrics": scores,
        "targets": image_targets_met(scores),
        "sampling": {"num_samples": len(images), "sampler": d["sampler"], "num_inference_steps": d["num_inference_steps"], "seconds": round(t_sample, 1)},
        "eval_seconds": round(time.time() - t, 1),
        "samples_png": grid,
    }


def _demo_text_eval(args, job, d, model_dir, output_dir, tokenizer) -> dict:
    from .evaluation_qgfd import exact_match

    sources, targets = list(job.test["source"]), list(job.test["target"])
    t = time.time()
    preds = generate(model_dir, sources, num_inference_steps=d["num_inference_steps"], sampler=d["sampler"], seed=args.seed, progress=not args.no_progress)
    t_sample = time.time() - t
    acc = exact_match(preds, targets)
    path = os.path.join(output_dir, "samples.jsonl")
    with open(path, "w") as f:
        for s, p, r in zip(sources, preds, targets):
            f.write(json.dumps({"source": s, "sample": p, "reference": r, "exact": " ".join(p.split()) == r}) + "\n")
    return {
        "metrics": {"exact_match": acc, "num_heldout": len(targets)},
        "targets": {"exact_match_at_least_0.8": acc >= 0.8},
        "examples": [{"source": s, "sample": p, "reference": r} for s, p, r in list(zip(sources, preds, targets))[:5]],
        "sampling": {"sampler": d["sampler"], "num_inference_steps": d["num_inference_steps"], "seconds": round(t_sample, 1)},
        "samples_jsonl": path,
    }


def _record_in_model_card(trainer, model_dir, modality, result) -> None:
    """Re-render the saved model's card with the demo's measured metrics beside the training ones."""
    from transformers import AutoConfig

    from .training_qgfd import write_model_card

    m = result["metrics"]
    if modality == "image":
        s, g = m["samples"], m["baseline_gaussian"]
        recorded = {
            "Frechet distance to held-out digits (classifier features)": round(s["fd"], 3),
            "same, Gaussian baseline": round(g["fd"], 3),
            "same, real training digits": round(m["baseline_real_train_vs_heldout"]["fd"], 3),
            "classifier mean confidence": round(s["confidence"], 3),
            "digit classes present (of 10)": s["classes_present"],
        }
    else:
        recorded = {f"exact match, {m['num_heldout']} held-out pairs": round(m["exact_match"], 3)}

    class _Holder:  # write_model_card takes anything with a QGFD `config`
        config = AutoConfig.from_pretrained(model_dir)

    write_model_card(_Holder(), model_dir, trainer.training_info(metrics=recorded))


def _print_paths(output_dir, metrics) -> None:
    _say(f"  final loss      {metrics.get('final_loss'):.4f} after {metrics['global_step']} steps ({metrics['train_runtime_s']:.0f}s)")
    _say(f"  model           {os.path.abspath(os.path.join(output_dir, 'model'))}")
    _say(f"  loss curve      {os.path.abspath(os.path.join(output_dir, 'loss.png'))}")
    _say(f"  metrics         {os.path.abspath(os.path.join(output_dir, 'metrics.json'))}")
    _say(f"  checkpoints     {os.path.abspath(os.path.join(output_dir, 'checkpoints'))}")


def _print_demo(modality, result, output_dir, train_metrics) -> None:
    _say("")
    _say(f"Done in {result['seconds']['total']:.0f}s (training {result['seconds']['train']:.0f}s).")
    m = result["metrics"]
    if modality == "image":
        s, r, g = m["samples"], m["baseline_real_train_vs_heldout"], m["baseline_gaussian"]
        _say(f"Sample quality ({s['num_images']} samples; classifier: MLP on the training digits, {m['classifier_test_accuracy']:.1%} test accuracy):")
        _say(f"  {'':32s}{'model':>10s}{'real digits':>13s}{'Gaussian':>11s}")
        _say(f"  {'Frechet distance (lower=better)':32s}{s['fd']:10.3f}{r['fd']:13.3f}{g['fd']:11.3f}")
        _say(f"  {'mean confidence':32s}{s['confidence']:10.3f}{r['confidence']:13.3f}{g['confidence']:11.3f}")
        _say(f"  {'classes present (of 10)':32s}{s['classes_present']:10d}{r['classes_present']:13d}{g['classes_present']:11d}")
        _say(f"  (real digits: training digits scored against the held-out ones; Gaussian: a full-covariance Gaussian fitted to the training pixels)")
    else:
        _say(f"Exact match on {m['num_heldout']} held-out pairs: {m['exact_match']:.1%}")
        for ex in result["examples"][:3]:
            _say(f"  {ex['source']!r} -> {ex['sample']!r} (reference {ex['reference']!r})")
    met = result["targets"]
    _say("Targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
    _say("")
    _say("Wrote:")
    if modality == "image":
        _say(f"  samples         {os.path.abspath(result['samples_png'])}")
    else:
        _say(f"  samples         {os.path.abspath(result['samples_jsonl'])}")
    _print_paths(output_dir, train_metrics)
    _say("")
    _say(f"Sample again: qgfd-hf sample {os.path.join(output_dir, 'model')}" + (" --num-samples 64" if modality == "image" else ' --condition "red cat sun"'))


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from transformers.utils import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    # Quiet the libraries' own bars ("Writing model shards", "Generating train split", ...);
    # the training and sampling bars stay.
    logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    try:
        return COMMANDS[args.command](args)
    except ValueError as e:
        # Bad input (data, flags): one clear line, no traceback; the exit status is 2 like argparse's.
        if os.environ.get("QGFD_HF_TRACEBACK"):
            raise
        print(f"qgfd-hf {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
