# coding=utf-8
"""Audio: data, defaults, demo and scores (the training side; the model is
`AudioQGFDDiffusionModel`).

- data: spoken digits (`--dataset spoken-digits`, the demo's: "zero".."nine" synthesised by
  espeak-ng in 6 English accents x its voice variants, split by voice; `qgfd_hf/data/speech.py`,
  the optional package espeakng-loader), the generated sound classes (`--dataset sounds`: ten
  kinds of synthetic sound, made by `make_sound_dataset`; the tests' fast path), a folder of wav/flac files (`--data-dir`,
  datasets' audiofolder layout: a clip's label is its sub-folder's name), or csv files of paths
  with an optional label column (`--data-files`). Every clip is decoded before training starts
  (with `soundfile`), mixed to mono, resampled to the model's rate (`scipy.signal.resample_poly`)
  and cut or zero-padded to its length (the loaders: `qgfd_hf/data/audio.py`);
- model: log-magnitude STFT frames (`--audio-latent spectrogram`, the default: Griffin-Lim
  decoding), waveform frames or their MDCT (`waveform`, `mdct`: exact decoding), or frozen
  Wav2Vec2 states with a learned decoder (`wav2vec2`; `--backbone` a Wav2Vec2, else a small
  random one, offline). `build_model` fits the audio scale (and per-bin statistics) from the
  training clips;
- scores (spoken digits): a digit classifier trained on real clips of the held-out voices judges
  the samples (recognised as the requested digit, confidence, FD in its hidden layer), beside real
  clips of the training voices and a per-class Gaussian in the model's latent space
  (`SpokenDigitEvaluator`);
- scores (the sounds): a classifier trained on the real clips' log-mel features (its
  confidence, the classes it recognises in the samples) and the Frechet distance in those
  features, beside real clips, a Gaussian and white noise (`SoundEvaluator`, in
  `qgfd_hf/metrics/audio.py`);
- what a person looks at: `samples.png` (log-mel spectrograms, real beside sampled) and
  `samples_wav/` (16-bit wav files).

Shapes: `N` clips, `S` samples per clip, `M` mel bands, `T` spectrogram frames.
"""

from __future__ import annotations

import math
import os
import wave
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data.audio import PATH_COLUMNS, SOUND_CLASSES, AudioCollator, check_clips, load_audio_csv, load_audio_folder, make_sound_dataset
from ..metrics.audio import (SoundEvaluator, SpokenDigitEvaluator, audio_targets_met, latent_gaussian_samples, log_mel, log_mel_distance,
                             snr_db, speech_targets_met)
from .base import ModalityTask, TaskData, demo_class_guidance, denoiser_kwargs, diffusion_values, pipeline_samples, register_task, sample_output

# ----------------------------------------------------------------------------------------
# What a person looks at
# ----------------------------------------------------------------------------------------


def write_wav(path: str, waveform: np.ndarray, sampling_rate: int) -> str:
    """A mono 16-bit PCM wav (the stdlib `wave` module), clipped to [-1, 1]."""
    pcm = (np.clip(np.asarray(waveform, dtype=np.float64), -1, 1) * 32767).round().astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sampling_rate))
        f.writeframes(pcm.tobytes())
    return path


def save_spectrograms(path: str, sampled: np.ndarray, sampling_rate: int, real: Optional[np.ndarray] = None,
                      real_titles: Optional[Sequence[str]] = None, sampled_titles: Optional[Sequence[str]] = None, per_row: int = 10) -> str:
    """A PNG of log-mel spectrograms: a row of real clips (when given) above rows of sampled clips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", real, real_titles)] if real is not None and len(real) else []
    n = len(sampled)
    for i in range(0, n, per_row):
        rows.append(("sampled", sampled[i : i + per_row], None if sampled_titles is None else sampled_titles[i : i + per_row]))
    lm_all = [log_mel(r[1], sampling_rate) for r in rows]
    vmax = max(float(x.max()) for x in lm_all)
    vmin = vmax - 16  # 16 natural-log units (about 70 dB) of range
    cols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.35 * len(rows)), squeeze=False)
    duration = sampled.shape[1] / sampling_rate
    for r, ((kind, _, titles), lm) in enumerate(zip(rows, lm_all)):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(lm):
                ax.axis("off")
                continue
            ax.imshow(lm[c], origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma", extent=(0, duration, 0, lm.shape[1]))
            if titles is not None:
                ax.set_title(str(titles[c]), fontsize=6)
            if c == 0:
                ax.set_ylabel(kind, fontsize=7)
    fig.suptitle(f"log-mel spectrograms ({sampling_rate} Hz, {duration:.2f} s per clip; time across, mel bands up)", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_audio_samples(samples: np.ndarray, sampling_rate: int, output_dir: str, prefix: str = "samples", real=None,
                        real_titles=None, sampled_titles=None, max_wavs: int = 20) -> Dict[str, str]:
    """`{prefix}.png` (spectrograms, real beside sampled) and `{prefix}_wav/sample_XXX.wav`."""
    samples = np.asarray(samples, dtype=np.float32)
    os.makedirs(output_dir, exist_ok=True)
    wav_dir = os.path.join(output_dir, f"{prefix}_wav")
    os.makedirs(wav_dir, exist_ok=True)
    for i, w in enumerate(samples[:max_wavs]):
        name = f"sample_{i:03d}" + ("" if sampled_titles is None else f"_{sampled_titles[i]}")  # the class it was asked for
        write_wav(os.path.join(wav_dir, f"{name}.wav"), w, sampling_rate)
    png = save_spectrograms(os.path.join(output_dir, f"{prefix}.png"), samples[:30], sampling_rate, real=real, real_titles=real_titles,
                            sampled_titles=None if sampled_titles is None else sampled_titles[:30])
    return {"spectrograms": png, "wav files": wav_dir}


# ----------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------


def _random_wav2vec2_config(settings: dict):
    """A small random Wav2Vec2 (offline): hop 80 samples (10 ms at 8 kHz)."""
    from transformers import Wav2Vec2Config

    w = settings["wav2vec2"]
    return Wav2Vec2Config(
        hidden_size=w["hidden_size"], num_hidden_layers=w["layers"], num_attention_heads=w["heads"], intermediate_size=2 * w["hidden_size"],
        conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )


@register_task
class AudioTask(ModalityTask):
    name = "audio"
    summary = "audio clips: spoken digits (espeak-ng), generated sound classes, a folder of wav/flac files, or csv files of paths"
    datasets = ("spoken-digits", "sounds")
    data_help = "audio: a folder of wav/flac files (datasets' audiofolder: sub-folder = label), or csv files with a path column"
    output_suffixes = {".png": "log-mel spectrograms, with the clips in NAME_wav/",
                       ".wav": "one clip (--num-samples 1), with its spectrogram beside it as NAME.png"}
    defaults = dict(
        # data: 8 kHz, 0.8 s clips (the demo's spoken digits; other data gets 0.5 s, `demo_data_only`;
        # folders and csv files are resampled and cut to it). The generated sounds: 200 + 30 per class.
        sampling_rate=8000, clip_seconds=0.8, num_per_class=200, num_heldout_per_class=30,
        # model: log-magnitude STFT frames (spoken digits: hop 128 = 16 ms, 32 ms window, 129 bins ->
        # 51 tokens of width 129; other data: hop 80, 81 bins), decoded by Griffin-Lim. The exact
        # latents (waveform frames, MDCT) do not learn within the demo's budget; see docs/modality_audio.md.
        latent_space="spectrogram", frame_size=128,
        # class-conditional on the digits (samples are asked for a digit); other data: --class-conditional
        class_conditional=True,
        d_model=128, num_heads=4, num_layers=3, d_ff=256,
        # x0 ("sample") prediction: an under-trained eps / v model leaves a broadband noise floor
        num_timesteps=1000, beta_schedule="cosine", prediction_type="sample",
        qgfd_steps=1, qgfd_alpha=0.5, qgfd_warmup_steps=100,
        # --audio-latent wav2vec2 without --backbone: a small random Wav2Vec2 (nothing can be downloaded)
        wav2vec2=dict(hidden_size=64, layers=2, heads=4), spectral_loss_weight=1.0,
        # training (spoken digits: 1600 steps, 348-358 s of CPU for the whole demo at 1 thread; other data: 800)
        max_steps=1600, batch_size=32, learning_rate=1e-3, warmup_steps=50, ema_decay=0.995,
        checkpoint_every=0,
        # sampling; spoken digits: classifier-free guidance 4 (label dropout 0.1 in training): the digit
        # asked for is heard far more often than without guidance (docs/modality_audio.md)
        num_samples=200, sampler="ddim", num_inference_steps=25, guidance_scale=4.0,
    )

    # the spoken digits' settings that other data (the sounds, folders, csv files) does not get
    demo_data_only = {"class_conditional": False, "clip_seconds": 0.5, "frame_size": 80, "max_steps": 800, "guidance_scale": 1.0}

    def add_arguments(self, group) -> None:
        group.add_argument("--sampling-rate", type=int, default=None, help="audio: the model's rate in Hz (files are resampled; default 8000)")
        group.add_argument("--clip-seconds", type=float, default=None, help="audio: clip length (files are cut or zero-padded; default 0.8 for the spoken digits, else 0.5)")
        group.add_argument("--audio-latent", default=None, choices=("waveform", "mdct", "spectrogram", "wav2vec2"),
                           help="audio: waveform frames or their MDCT (both decode exactly), the log-magnitude STFT (Griffin-Lim), "
                                "or Wav2Vec2 states (learned decoder)")
        group.add_argument("--frame-size", type=int, default=None, help="audio: samples per token (the STFT hop for spectrogram latents; default 128 for the spoken digits, else 80); must divide the clip")
        group.add_argument("--spectral-loss-weight", type=float, default=None,
                           help="audio, --audio-latent wav2vec2: weight of the decoder's multi-resolution STFT loss (default 1; 0 = MSE only)")
        group.add_argument("--clips-per-class", type=int, default=None, help="audio: generated training clips per sound class (default 200)")
        group.add_argument("--audio-path-column", default=None, help=f"audio csv: the column of file paths (default: {' / '.join(PATH_COLUMNS)})")
        group.add_argument("--audio-label-column", default=None, help="audio csv: the column of labels (default 'label', if present)")

    def settings(self, args, for_demo: bool = False) -> Dict[str, object]:
        s = super().settings(args, for_demo)
        if getattr(args, "data_files", None):  # csv files are other data too (the base class looks at --dataset and --data-dir)
            s.update(self.demo_data_only)
        for flag in ("sampling_rate", "clip_seconds", "frame_size"):
            if getattr(args, flag, None) is not None:
                s[flag] = getattr(args, flag)
        if getattr(args, "audio_latent", None) is not None:
            s["latent_space"] = args.audio_latent
        if getattr(args, "spectral_loss_weight", None) is not None:
            if s["latent_space"] != "wav2vec2":
                raise ValueError("--spectral-loss-weight trains the Wav2Vec2 latents' decoder: it needs --audio-latent wav2vec2.")
            s["spectral_loss_weight"] = args.spectral_loss_weight
        if getattr(args, "clips_per_class", None) is not None:
            if getattr(args, "dataset", None) in (None, self.datasets[0]):
                raise ValueError("--clips-per-class sizes the generated sounds (--dataset sounds); the spoken digits are every voice "
                                 "saying every digit once.")
            if args.clips_per_class < 1:
                raise ValueError(f"--clips-per-class must be >= 1, got {args.clips_per_class}.")
            s["num_per_class"] = args.clips_per_class
        return s

    def _clip_size(self, s) -> int:
        rate, seconds = s["sampling_rate"], s["clip_seconds"]
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            raise ValueError(f"--sampling-rate must be an int >= 1 (Hz), got {rate!r}.")
        if not seconds > 0 or not math.isfinite(seconds):
            raise ValueError(f"--clip-seconds must be > 0, got {seconds!r}.")
        n = int(round(seconds * rate))
        if s["latent_space"] != "wav2vec2":
            frame = s["frame_size"]
            if frame < 1 or n % frame:
                raise ValueError(
                    f"--clip-seconds {seconds} at {rate} Hz is {n} samples, not a multiple of --frame-size {frame} "
                    f"(waveform tokens are whole frames); e.g. --clip-seconds {max(1, round(n / frame)) * frame / rate:g}."
                )
        return n

    def load_data(self, args, settings) -> TaskData:
        s = settings
        num_samples = self._clip_size(s)
        rate = s["sampling_rate"]
        data_dir, files = getattr(args, "data_dir", None), getattr(args, "data_files", None)
        if sum(x is not None for x in (getattr(args, "dataset", None), data_dir, files)) > 1:
            raise ValueError("Give one of --dataset, --data-dir (an audio folder) or --data-files (csv files of paths).")
        if getattr(args, "clips_per_class", None) is not None and (data_dir is not None or files):
            raise ValueError("--clips-per-class sizes the generated sounds; it does not apply to --data-dir / --data-files.")
        if (args.audio_path_column or args.audio_label_column) and not files:
            raise ValueError("--audio-path-column / --audio-label-column name columns of --data-files csv files.")
        if data_dir is not None:
            data = TaskData(load_audio_folder(data_dir, rate, num_samples), f"audiofolder:{os.path.abspath(data_dir)}")
        elif files:
            ds = load_audio_csv(files, rate, num_samples, path_column=args.audio_path_column, label_column=args.audio_label_column or "label")
            data = TaskData(ds, f"csv:{','.join(os.path.abspath(f) for f in files)}")
        elif (getattr(args, "dataset", None) or self.datasets[0]) == "spoken-digits":
            data = self._spoken_digits(rate, num_samples)
        else:
            name = getattr(args, "dataset", None)
            if name != "sounds":
                raise ValueError(f"Unknown audio --dataset {name!r}; allowed: {', '.join(self.datasets)} (or --data-dir / --data-files).")
            if rate < 8000:
                raise ValueError(f"The generated sounds reach 3.6 kHz: they need --sampling-rate >= 8000, got {rate}.")
            per_class, heldout = s["num_per_class"], s["num_heldout_per_class"]
            full = make_sound_dataset(per_class + heldout, rate, num_samples, seed=0)
            cut = per_class * len(SOUND_CLASSES)  # classes are interleaved: the split is stratified
            data = TaskData(full.select(range(cut)), name, test=full.select(range(cut, len(full))),
                            card_name="generated sound classes (qgfd_hf.data.audio.make_sound_dataset)")
        check_clips(data.train, num_samples, f"The audio data {data.name!r}")
        data.train = data.train.with_format("numpy", columns=["input_values"], output_all_columns=True)
        labels = data.train.features["label"].names if "label" in data.train.features else None
        data.info.update(sampling_rate=rate, num_samples=num_samples, label_names=labels)
        return data

    def _spoken_digits(self, rate: int, num_samples: int) -> TaskData:
        import datasets.config

        from ..data.speech import CARD_NAME, load_spoken_digits

        if rate < 8000:
            raise ValueError(f"The spoken digits need --sampling-rate >= 8000 (speech reaches 4 kHz), got {rate}.")
        cache = os.path.join(str(datasets.config.HF_DATASETS_CACHE), "qgfd_hf")
        train, test = load_spoken_digits(rate, num_samples, heldout_fraction=0.2, seed=0, cache_dir=cache)
        data = TaskData(train, "spoken-digits", test=test, card_name=CARD_NAME)
        data.info["voices"] = {"train": sorted(set(train["voice"])), "heldout": sorted(set(test["voice"]))}
        return data

    def build_model(self, args, data, settings):
        from transformers import Wav2Vec2FeatureExtractor

        from .. import create_qgfd_diffusion_model

        s = settings
        rate, num_samples = data.info["sampling_rate"], data.info["num_samples"]
        kwargs = dict(diffusion_values(args, s), num_samples=num_samples, sampling_rate=rate, latent_space=s["latent_space"])
        backbone = args.backbone
        if s["latent_space"] != "wav2vec2":
            if backbone is not None and args.denoiser != "pretrained":
                raise ValueError("--backbone (a Wav2Vec2) makes the latents only with --audio-latent wav2vec2 (or is the denoiser with --denoiser pretrained).")
            kwargs["frame_size"] = s["frame_size"]
        else:
            if args.frame_size is not None:
                raise ValueError("--frame-size is for --audio-latent waveform, mdct or spectrogram; Wav2Vec2's convolutions set its frames.")
            backbone = backbone if backbone is not None else _random_wav2vec2_config(s)
            kwargs["spectral_loss_weight"] = s["spectral_loss_weight"]
        kwargs.update(denoiser_kwargs(args))
        if args.denoiser == "pretrained" and backbone is None:
            raise ValueError("--denoiser pretrained needs --backbone: a Wav2Vec2 (Hub id or folder) whose stack becomes the denoiser.")
        extractor = Wav2Vec2FeatureExtractor(sampling_rate=rate, do_normalize=False, return_attention_mask=False)
        model, _, _ = create_qgfd_diffusion_model("audio", backbone, None, processor=extractor, **kwargs)
        # Statistics from the training clips (saved in config.json): the audio scale, and for
        # Wav2Vec2 latents the latent scale (unit-std latents).
        import torch

        waves = torch.from_numpy(check_clips(data.train, num_samples, f"The audio data {data.name!r}"))
        model.fit_audio_scale(waves)
        if s["latent_space"] == "wav2vec2":
            model.fit_latent_scale({"input_values": waves[:256]})
        return model, extractor, AudioCollator(num_samples)

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir, data, settings, args):
        import torch
        from transformers import AutoModel

        n = settings["num_samples"]
        waves = pipeline_samples(
            model_dir, num_samples=n, num_inference_steps=settings["num_inference_steps"],
            sampler=settings["sampler"], seed=args.seed, progress=not args.no_progress, **demo_class_guidance(model_dir, data, n, settings),
        )
        data.info["requested_labels"] = settings.get("requested_labels")
        if data.test is not None:  # how well the latent space decodes held-out clips
            model = AutoModel.from_pretrained(model_dir).eval()
            real = check_clips(data.test, data.info["num_samples"], "The held-out clips")[:100]  # 10 of each class
            with torch.no_grad():
                rec = model.decode_latents(model.data_to_latents({"input_values": torch.from_numpy(real)})).numpy()
            data.info["reconstruction"] = {
                "latent_space": model.config.latent_space,
                "snr_db": snr_db(real, rec),
                "log_mel_distance": log_mel_distance(real, rec, data.info["sampling_rate"]),
            }
            if data.name == "spoken-digits" and settings.get("requested_labels") is not None:
                data.info["latent_gaussian"] = self._latent_gaussian(model, data, settings["requested_labels"])
        return waves

    @staticmethod
    def _latent_gaussian(model, data, requested, per_class: int = 300):
        """The baseline: per-class Gaussians of the training clips' latents (`per_class` of each
        class, seeded), drawn for the requested labels and decoded by the model."""
        import torch

        labels = np.asarray(data.train["label"])
        rng = np.random.default_rng(0)
        rows = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
        waves = check_clips(data.train.select(rows), data.info["num_samples"], "train")
        with torch.no_grad():
            lat = torch.cat([model.data_to_latents({"input_values": torch.from_numpy(w)}) for w in np.array_split(waves, 8)]).numpy()
            drawn = latent_gaussian_samples(lat, labels[rows], requested, seed=0)
            return np.concatenate([model.decode_latents(torch.from_numpy(z)).numpy() for z in np.array_split(drawn, 4)])

    def evaluate(self, samples, data, settings):
        if data.name == "spoken-digits":
            return self._evaluate_speech(samples, data, settings)
        if data.test is None or "label" not in data.test.column_names:
            raise ValueError(f"Audio samples are scored against labelled held-out clips (the generated sounds); data {data.name!r} has none.")
        n = data.info["num_samples"]
        ev = SoundEvaluator(check_clips(data.train, n, "train"), data.train["label"], check_clips(data.test, n, "test"), data.test["label"],
                            data.info["sampling_rate"], num_classes=len(data.info["label_names"]), seed=0)
        scores = ev.evaluate(np.asarray(samples))
        scores["class_names"] = list(data.info["label_names"])
        if "reconstruction" in data.info:
            scores["reconstruction"] = data.info["reconstruction"]
        return {"metrics": scores, "targets": audio_targets_met(scores)}

    def _evaluate_speech(self, samples, data, settings):
        requested = settings.get("requested_labels")
        if requested is None:
            raise ValueError("The spoken digits are scored against the digits the samples were asked for: train the model "
                             "class-conditional (the demo's default; drop --no-class-conditional).")
        n = data.info["num_samples"]
        held = check_clips(data.test, n, "held-out")
        rendering = np.asarray(data.test["rendering"])
        labels = np.asarray(data.test["label"])
        judge, ref = rendering == "0", rendering == "1"
        ev = SpokenDigitEvaluator(held[judge], labels[judge], held[ref], labels[ref], data.info["sampling_rate"],
                                  num_classes=len(data.info["label_names"]), seed=0)
        # real clips of the training voices, as many as samples, of the same requested digits
        train_labels = np.asarray(data.train["label"])
        rng = np.random.default_rng(0)
        requested = np.asarray(requested)
        rows = np.empty(len(requested), dtype=np.int64)
        for c in np.unique(requested):
            where = np.flatnonzero(requested == c)
            rows[where] = rng.choice(np.flatnonzero(train_labels == c), size=len(where), replace=len(where) > (train_labels == c).sum())
        baselines = {"real_training_voices": (check_clips(data.train.select(rows), n, "train"), requested)}
        if "latent_gaussian" in data.info:
            baselines["latent_gaussian"] = (data.info["latent_gaussian"], requested)
        scores = ev.evaluate(np.asarray(samples), requested, baselines)
        scores.update(class_names=list(data.info["label_names"]), guidance_scale=settings.get("guidance_scale", 1.0),
                      num_voices={k: len(v) for k, v in data.info["voices"].items()})
        if "reconstruction" in data.info:
            scores["reconstruction"] = data.info["reconstruction"]
        targets = speech_targets_met(scores) if "baseline_latent_gaussian" in scores else {}
        return {"metrics": scores, "targets": targets}

    def write_samples(self, samples, data, output_dir, prefix="samples", labels=None):
        rate = data.info["sampling_rate"] if data is not None else None
        real = titles = None
        if data is not None and data.test is not None and data.info.get("label_names"):
            labels = np.asarray(data.test["label"])
            first = [int(np.flatnonzero(labels == c)[0]) for c in range(len(data.info["label_names"])) if (labels == c).any()]
            real = check_clips(data.test.select(first), data.info["num_samples"], "test")
            titles = [data.info["label_names"][int(labels[i])] for i in first]
        asked = None
        if data is not None and data.info.get("requested_labels") is not None and data.info.get("label_names"):
            asked = [data.info["label_names"][int(k)] for k in data.info["requested_labels"]]
        return write_audio_samples(samples, rate, output_dir, prefix=prefix, real=real, real_titles=titles, sampled_titles=asked)

    def report_lines(self, result) -> List[str]:
        m = result["metrics"]
        lines = self._speech_lines(m) if "judge_reference_accuracy" in m else self._sounds_lines(m)
        if "reconstruction" in m:
            rec = m["reconstruction"]
            lines.append(f"  latent space {rec['latent_space']}: held-out clips decode at {rec['snr_db']:.1f} dB SNR, "
                         f"log-mel distance {rec['log_mel_distance']:.3f}")
        return lines

    @staticmethod
    def _sounds_lines(m) -> List[str]:
        s, r, g, n = m["samples"], m["baseline_real_train_vs_heldout"], m["baseline_gaussian"], m["baseline_noise"]
        lines = [
            f"Sample quality ({s['num_clips']} samples; classifier: MLP on log-mel features of the real clips, "
            f"{m['classifier_test_accuracy']:.1%} held-out accuracy):",
            f"  {'':34s}{'model':>10s}{'real clips':>12s}{'Gaussian':>10s}{'noise':>10s}",
            f"  {'FD, log-mel features (lower=better)':34s}{s['fd']:10.2f}{r['fd']:12.2f}{g['fd']:10.2f}{n['fd']:10.2f}",
            f"  {'classes recognised (of 10)':34s}{s['classes_recognised']:10d}{r['classes_recognised']:12d}{g['classes_recognised']:10d}{n['classes_recognised']:10d}",
            f"  {'mean classifier confidence':34s}{s['confidence']:10.3f}{r['confidence']:12.3f}{g['confidence']:10.3f}{n['confidence']:10.3f}",
            "  (real clips: training clips scored against the held-out ones; Gaussian: full-covariance Gaussian of the training "
            "waveforms; noise: white noise at their RMS)",
            "  samples per class: " + ", ".join(f"{c} {k}" for c, k in zip(m["class_names"], s["class_counts"])),
        ]
        return lines

    @staticmethod
    def _speech_lines(m) -> List[str]:
        s, r = m["samples"], m["baseline_real_training_voices"]
        g = m.get("baseline_latent_gaussian")
        cols = [("model", s), ("real clips", r)] + ([("Gaussian", g)] if g else [])
        head = "".join(f"{name:>12s}" for name, _ in cols)
        row = lambda label, key, fmt: f"  {label:40s}" + "".join(f"{format(x[key], fmt):>12s}" for _, x in cols)
        v = m["num_voices"]
        lines = [
            f"Sample quality ({s['num_clips']} samples, each asked for a digit; judge: MLP on log-mel features trained on "
            f"{m['num_judge']} real clips of {v['heldout']} held-out voices, never trained on; "
            f"{m['judge_reference_accuracy']:.1%} on their second renderings):",
            f"  {'':40s}{head}",
            row("recognised as the requested digit", "recognised", ".3f"),
            row("judge's mean confidence", "confidence", ".3f"),
            row("judge's mean p(requested digit)", "p_requested", ".3f"),
            row("FD, judge's hidden layer (lower=better)", "fd", ".2f"),
            f"  (real clips: the {v['train']} training voices' own clips of the same digits; Gaussian: per-digit Gaussian of "
            "the training clips' latents, decoded by the model; FD against the held-out voices' second renderings)",
            "  samples per judged digit: " + ", ".join(f"{c} {k}" for c, k in zip(m["class_names"], s["class_counts"])),
        ]
        return lines

    def card_metrics(self, result) -> Dict[str, object]:
        m = result["metrics"]
        if "judge_reference_accuracy" in m:
            s, r, g = m["samples"], m["baseline_real_training_voices"], m.get("baseline_latent_gaussian")
            out = {
                "share recognised as the requested digit (judge trained on held-out voices)": round(s["recognised"], 3),
                "same, real clips of the training voices": round(r["recognised"], 3),
                "Frechet distance in the judge's hidden layer": round(s["fd"], 2),
                "Frechet distance, real clips of the training voices": round(r["fd"], 2),
                "judge mean confidence": round(s["confidence"], 3),
            }
            if g:
                out["Frechet distance, per-digit latent Gaussian"] = round(g["fd"], 2)
                out["share recognised, per-digit latent Gaussian"] = round(g["recognised"], 3)
            return out
        s, g, n = m["samples"], m["baseline_gaussian"], m["baseline_noise"]
        out = {
            "Frechet distance to held-out clips (log-mel features)": round(s["fd"], 2),
            "same, Gaussian baseline": round(g["fd"], 2),
            "same, white-noise baseline": round(n["fd"], 2),
            "same, real training clips": round(m["baseline_real_train_vs_heldout"]["fd"], 2),
            "sound classes recognised (of 10)": s["classes_recognised"],
            "classifier mean confidence": round(s["confidence"], 3),
        }
        if "reconstruction" in m:
            out["reconstruction SNR of held-out clips (dB)"] = round(m["reconstruction"]["snr_db"], 1)
        return out

    # -- the `sample` command ---------------------------------------------------------------

    def sample_hint(self, model_dir: str) -> str:
        return f"qgfd-hf sample {model_dir} --num-samples 20"

    def check_output(self, args) -> str:
        suffix = super().check_output(args)
        n = getattr(args, "num_samples", None) or 1
        if suffix == ".wav" and n != 1:
            stem = os.path.splitext(args.output)[0]
            raise ValueError(f"--output {args.output!r} names one .wav file, but {n} samples are asked for: pass --num-samples 1, "
                             f"or --output {stem}.png (spectrograms, with the clips in {stem}_wav/).")
        return suffix

    def sample_command(self, model, args) -> List[str]:
        from transformers import AutoConfig

        out_dir, prefix, suffix = sample_output(model, args, self)  # refused before sampling
        waves = self.sample_saved(model, args)
        rate = int(AutoConfig.from_pretrained(model).sampling_rate)
        if suffix == ".wav":  # one clip, exactly where --output says
            os.makedirs(out_dir, exist_ok=True)
            paths = {"wav file": write_wav(os.path.join(out_dir, prefix + suffix), waves[0], rate),
                     "spectrogram": save_spectrograms(os.path.join(out_dir, prefix + ".png"), waves[:1], rate)}
        else:
            paths = write_audio_samples(waves, rate, out_dir, prefix=prefix, max_wavs=len(waves))
        return [f"{len(waves)} samples at {rate} Hz:"] + [f"  {what:15s} {os.path.abspath(p)}" for what, p in paths.items()]
