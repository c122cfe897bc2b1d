# coding=utf-8
"""The `qgfd-hf` argument parser: `build_parser` and the flags of `train`, `sample` and `demo`.

Importing it imports neither torch nor transformers, so `qgfd-hf --help` stays fast
(tests/cli/test_cli_startup.py): the modalities' flags and defaults come from their task files
(`qgfd_hf.tasks.base.get_task`, numpy only), and the training flags' defaults are read off
`training/arguments.py`'s source (`_trainer_defaults`), not imported.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Dict, Tuple

from ..tasks.base import get_task, task_names  # light: no torch at import


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=None, help="denoiser size: tiny, small, base or large (QGFD_PRESETS); the flags below override it")
    g.add_argument("--d-model", type=int, default=None, help="denoiser width")
    g.add_argument("--num-heads", type=int, default=None, help="attention heads")
    g.add_argument("--num-layers", type=int, default=None, help="denoiser blocks")
    g.add_argument("--d-ff", type=int, default=None, help="feed-forward width")
    g.add_argument("--num-timesteps", type=int, default=None, help="diffusion steps T (default 1000)")
    g.add_argument("--beta-schedule", default=None, help="linear, cosine or sqrt")
    g.add_argument("--prediction-type", default=None, help="epsilon, sample or v")
    g.add_argument("--qgfd-steps", type=int, default=None, help="QGFD diffusion steps (0 = plain attention)")
    g.add_argument("--qgfd-alpha", type=float, default=None, help="QGFD alpha in [0, 1] (0 = plain attention)")
    g.add_argument("--qgfd-graph", default=None, help="attention (the seed's rule) or keys")
    g.add_argument("--qgfd-mix", default=None, help="seed or recurrent")
    g.add_argument("--qgfd-warmup-steps", type=int, default=None, help="alpha warms up over this many optimizer steps")
    g.add_argument("--snr-gamma", type=float, default=None,
                   help="min-SNR-gamma loss weighting (Hang et al. 2023; 5 is the paper's): each example's loss weighted by "
                        "min(SNR(t), gamma) (default: the modality's; none: the plain MSE)")
    g.add_argument("--backbone", default=None, help="pretrained encoder (Hub id or folder): t5-small for text, a ViT for --latent-space vit")
    g.add_argument("--denoiser", default=None, choices=("qgfd", "pretrained"),
                   help="qgfd: a fresh QGFD Transformer (default); pretrained: the --backbone's own Transformer stack "
                        "(T5 encoder, BERT / RoBERTa / DistilBERT encoder, ViT, Wav2Vec2), QGFD-patched and trained, with adaLN-Zero "
                        "timestep conditioning")
    g.add_argument("--denoiser-weights", default=None, choices=("pretrained", "random"),
                   help="with --denoiser pretrained: pretrained copies the --backbone's weights into the stack (default); random keeps "
                        "the same stack at random initialisation (the control for 'does pretraining help the denoiser?')")
    g.add_argument("--class-conditional", action=argparse.BooleanOptionalAction, default=None,
                   help="condition on the data's class labels (its label column: the digits', sub-folder names) with a DiT label "
                        "embedding, so samples can ask for a class (sample --class-label) and take guidance")
    g.add_argument("--cond-dropout-prob", type=float, default=None,
                   help="probability that a training example's condition (class label, source text, table label) is replaced by the "
                        "learned null condition, for classifier-free guidance (default 0.1 when class-conditional, else 0)")


def _add_modality_args(p: argparse.ArgumentParser) -> Dict[str, Tuple[str, object]]:
    """Every task's own flags, in one group; returns {dest: (modality, default)} to refuse a flag of
    another modality that was given (any value but its default: `--no-x` of a `--x/--no-x` flag too)."""
    g = p.add_argument_group("modality-specific (each flag names its modality)")
    owners: Dict[str, Tuple[str, object]] = {}
    for name in task_names():
        before = {a.dest for a in p._actions}
        get_task(name).add_arguments(g)
        owners.update({a.dest: (name, a.default) for a in p._actions if a.dest not in before})
    return owners


def _add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--output-dir", default=None, help="checkpoints, model/, loss.png and metrics.json go here")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=None, help="global batch of one micro-step (split across processes)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=None, help="micro-steps per optimizer step")
    g.add_argument("--learning-rate", "--lr", type=float, default=None, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (matrices only)")
    g.add_argument("--lr-schedule", default=None, help="cosine, linear or constant (after the warm-up)")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up, in optimizer steps")
    g.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping (0 = off)")
    g.add_argument("--mixed-precision", default=None, help="no, fp16 or bf16")
    g.add_argument("--ema-decay", type=float, default=None, help="EMA of the weights used for sampling and saving (0 = off)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints (0 = none)")
    g.add_argument("--keep-last", type=int, default=None, help="checkpoints to keep")
    g.add_argument("--log-every", type=int, default=None, help="optimizer steps between loss records")
    g.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and the noise (0 <= seed < 2**32)")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its newest intact checkpoint")
    g.add_argument("--resume-from-checkpoint", default=None, metavar="PATH", help="continue from this checkpoint folder")
    g.add_argument("--overwrite-output-dir", action="store_true",
                   help="replace the earlier run in --output-dir (without it, a new run into a run's folder is refused)")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes (default 0)")
    g.add_argument("--sample-every", type=int, default=None, metavar="N",
                   help="write validation samples (PNG, wav, rows, ... by modality) into <output-dir>/samples every N steps (default 0: none)")
    g.add_argument("--report-to", default=None, help="experiment trackers: none (default), tensorboard (logs in <output-dir>/logs), wandb, ...")
    g.add_argument("--push-to-hub", action="store_true", help="upload the final model folder to the Hub (the repo is created before training)")
    g.add_argument("--hub-model-id", default=None, metavar="USER/NAME", help="the Hub repo for --push-to-hub (default: the output folder's name)")
    g.add_argument("--stop-after", type=int, default=None, help="pause after this many steps (checkpoint, no final model); --resume continues")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (demo default: 1, robust on busy machines)")


def _datasets_help() -> str:
    return "; ".join(f"{n}: {', '.join(get_task(n).datasets)}" for n in task_names() if get_task(n).datasets)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help: the value, or "the modality's" where each modality sets
    its own (listed at the end of `train --help` and `demo --help`)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction, argparse._VersionAction)):
            return text
        if action.default is None:
            if not action.option_strings:
                return text
            trainer_default = _trainer_defaults().get(action.dest)
            set_by_tasks = any(action.dest in get_task(n).defaults for n in task_names())
            if set_by_tasks:
                return text + " (default: the modality's" + (f"; else {trainer_default}" if trainer_default is not None else "") + ")"
            if trainer_default is not None:
                return text + f" (default: {trainer_default})"
            if action.dest in _MODEL_FLAG_DESTS:
                return text + " (default: the model config's)"
            return text
        return text + " (default: %(default)s)"


_MODEL_FLAG_DESTS = ("preset", "d_model", "num_heads", "num_layers", "d_ff", "num_timesteps", "beta_schedule", "prediction_type",
                     "qgfd_steps", "qgfd_alpha", "qgfd_graph", "qgfd_mix", "qgfd_warmup_steps", "backbone", "denoiser", "denoiser_weights", "cond_dropout_prob")


@functools.lru_cache(maxsize=None)
def _trainer_defaults() -> dict:
    """`QGFDTrainingArguments`' defaults of the training flags, read off training/arguments.py's source (its
    fields' literal defaults) rather than imported: importing it imports torch and accelerate, and
    `--help` should not wait for them (tests/cli/test_cli_startup.py checks this against the dataclass)."""
    import ast

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "arguments.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "QGFDTrainingArguments")
    defaults = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:  # not a literal (a `field(...)`): no default shown
                continue
            if value is not None and node.target.id in _TRAINING_FIELDS:
                defaults[node.target.id] = value
    return defaults


_SHOWN_DEFAULTS = ("d_model", "num_layers", "num_heads", "d_ff", "prediction_type", "beta_schedule", "qgfd_steps", "qgfd_alpha",
                   "max_steps", "batch_size", "learning_rate", "ema_decay", "sampler", "num_inference_steps", "num_samples")


def _modality_defaults_epilog() -> str:
    lines = ["the modalities' defaults (used by train and demo alike; each flag overrides them):"]
    for name in task_names():
        task = get_task(name)
        shown = " ".join(f"{k}={task.defaults[k]}" for k in _SHOWN_DEFAULTS if k in task.defaults)
        lines.append(f"  {name:9s} {task.summary}")
        lines.append(f"  {'':9s} datasets: {', '.join(task.datasets) or '-'}; {shown}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="qgfd-hf",
        description="Train and sample QGFD diffusion models (Transformers with QGFD attention as denoisers).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qgfd-hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    modalities = task_names()
    epilog = _modality_defaults_epilog()

    p = sub.add_parser("train", help="train a model on a dataset", description="Train a QGFD diffusion model with accelerate.",
                       formatter_class=_HelpFormatter, epilog=epilog)
    p.add_argument("--modality", required=True, choices=modalities)
    p.add_argument("--dataset", default=None, help=f"a built-in dataset ({_datasets_help()}; the first of each is its demo's)")
    p.add_argument("--data-dir", default=None, help="a local folder of files: " + "; ".join(get_task(n).data_help for n in modalities if "folder" in get_task(n).data_help))
    p.add_argument("--data-files", nargs="+", default=None, help="local data files: " + "; ".join(get_task(n).data_help for n in modalities if "folder" not in get_task(n).data_help))
    _add_model_args(p)
    p.set_defaults(_owners=_add_modality_args(p))
    _add_training_args(p)

    p = sub.add_parser("sample", help="sample from a trained model", description="Sample through pipeline('qgfd-diffusion').",
                       formatter_class=_HelpFormatter)
    p.add_argument("model", help="a saved model folder (or Hub id)")
    p.add_argument("--num-samples", type=int, default=16, help="unconditional models: how many samples")
    p.add_argument("--condition", nargs="+", default=None, help="conditional text models: the source text(s)")
    p.add_argument("--class-label", type=_class_label, nargs="+", default=None, metavar="K",
                   help="class-conditional models (tables: the label column's category index): the class of the samples; several are "
                        "cycled over --num-samples; 'unconditional': the null label (default: each sample's label drawn from the "
                        "training frequencies)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the modality's, 1 = none; other scales need a model trained with "
                        "--cond-dropout-prob > 0)")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="denoising steps (default: the modality's with its sampler, as the demo samples; with another --sampler, "
                        "the pipeline's: all T for ddpm, 50 for ddim, 20 for dpmsolver++)")
    p.add_argument("--sampler", default=None, choices=("ddim", "ddpm", "dpmsolver++"), help="the sampler")
    p.add_argument("--timestep-spacing", default=None, choices=("linspace", "leading", "trailing"), help="as diffusers (default linspace)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None,
                   help="the file the samples go to, exactly as given; its suffix says what is written ("
                        + "; ".join(f"{n}: {', '.join(get_task(n).output_suffixes)}" for n in modalities)
                        + "; other files of the samples go beside it, named after it) (default: sample-seed<SEED> beside the "
                        "model folder, never overwriting earlier samples; text: printed only)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: robust when cores are shared)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser(
        "demo",
        help="train a small model on real data, sample, and score it beside baselines (minutes on CPU)",
        description="The main job: train on data that ships with the dependencies, sample through "
        "pipeline('qgfd-diffusion'), and report metrics beside their baselines.",
        formatter_class=_HelpFormatter, epilog=epilog,
    )
    p.add_argument("--modality", default="image", choices=modalities)
    p.add_argument("--dataset", default=None, help="the demo's data, one the modality scores (default: its first; image: mnist, "
                   "or digits, the fast 8x8 path)")
    p.add_argument("--num-samples", type=int, default=None, help="samples to generate and score")
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale of a class-conditional demo's samples (default: the modality's; 1 = none)")
    _add_model_args(p)
    p.set_defaults(_owners=_add_modality_args(p))
    _add_training_args(p)
    return parser


_TRAINING_FIELDS = (
    "stop_after", "num_workers", "resume_from_checkpoint", "sample_every", "report_to", "hub_model_id", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "weight_decay", "lr_schedule",
    "warmup_steps", "max_grad_norm", "mixed_precision", "ema_decay", "checkpoint_every", "keep_last", "log_every",
)


def _class_label(value: str):
    """A `--class-label` value: a class index (an int) or 'unconditional' (the null label)."""
    if value == "unconditional":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a class index (an int K) nor 'unconditional'; allowed: K [K ...] or unconditional") from None
