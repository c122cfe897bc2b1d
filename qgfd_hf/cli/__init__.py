# coding=utf-8
"""The `qgfd-hf` command line: `train`, `sample` and `demo`.

    qgfd-hf demo                                   # class-conditional MNIST, about 8 min on one CPU thread
    qgfd-hf demo --dataset digits                  # the fast path: scikit-learn's 8x8 digits
    qgfd-hf demo --modality text                   # the next Shakespeare line (--dataset reversal: the fast path)
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

Each modality is a `ModalityTask` in `qgfd_hf/tasks/<name>.py` (data, defaults, demo, scores):
this file only reads them (`qgfd_hf.tasks.base.get_task`). The flags and `--help` are
`parser.py`'s (`build_parser`); this file runs the commands.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional, Sequence

from ..data.packages import MissingDataPackageError
from ..tasks.base import get_task, task_names  # light: no torch at import
from .parser import _TRAINING_FIELDS, _trainer_defaults, build_parser  # noqa: F401  (_trainer_defaults: tests import it from here)


def _say(msg: str = "") -> None:
    """The CLI's own output (the library logs through transformers' logging instead); under
    `accelerate launch` only the first process speaks."""
    if os.environ.get("RANK", "0") == "0":
        print(msg, flush=True)


# ----------------------------------------------------------------------------------------
# From the parsed flags to a trained model
# ----------------------------------------------------------------------------------------


def _check_modality_flags(args) -> None:
    """A flag (or a built-in dataset) of another modality is refused, not ignored."""
    dataset = getattr(args, "dataset", None)
    if dataset is not None and dataset not in get_task(args.modality).datasets:
        owner = next((n for n in task_names() if dataset in get_task(n).datasets), None)
        if owner is not None:
            raise ValueError(f"--dataset {dataset} is {owner} data; it does not fit --modality {args.modality} (use --modality {owner}).")
    for dest, (owner, default) in getattr(args, "_owners", {}).items():
        if owner != args.modality and getattr(args, dest, default) != default:
            raise ValueError(f"--{dest.replace('_', '-')} is a {owner} flag; it does not apply to --modality {args.modality}.")


def _training_arguments(args, output_dir: str, settings: Optional[dict] = None):
    from ..training.arguments import QGFDTrainingArguments

    values = {k: v for k, v in (settings or {}).items() if k in _TRAINING_FIELDS}
    values.update({n: getattr(args, n) for n in _TRAINING_FIELDS if getattr(args, n, None) is not None})
    return QGFDTrainingArguments(output_dir=output_dir, seed=args.seed, progress=not args.no_progress,
                                 overwrite_output_dir=args.overwrite_output_dir, push_to_hub=args.push_to_hub, **values)


def _check_output_dir(args, output_dir: str) -> None:
    """Before the data is loaded: the folder can be written and holds no other run."""
    from ..training.checkpoints import check_output_dir

    check_output_dir(output_dir, resume=args.resume, overwrite=args.overwrite_output_dir, resume_from_checkpoint=args.resume_from_checkpoint)


def _describe_model(model) -> str:
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    qgfd = f"QGFD steps={cfg.qgfd_steps} alpha={cfg.qgfd_alpha} graph={cfg.qgfd_graph} mix={cfg.qgfd_mix}"
    stack = getattr(model.backbone, "stack", None)  # denoiser="pretrained": the backbone's own stack and sizes
    if stack is not None:
        sizes = f"{type(stack).__name__} width={getattr(model.backbone, 'width', '?')} layers={len(model.backbone.adaLN_modulation)}"
    else:
        sizes = f"d_model={cfg.d_model} layers={cfg.num_layers} heads={cfg.num_heads}"
    return (
        f"  model           {type(model).__name__}: {trainable / 1e6:.2f} M trainable of {total / 1e6:.2f} M parameters; "
        f"denoiser {cfg.denoiser} {sizes}; "
        f"latents {cfg.num_latent_tokens()} x {cfg.latent_dim}; {qgfd}; {cfg.prediction_type} prediction, {cfg.beta_schedule} schedule"
        + (f"; class-conditional ({cfg.num_classes} classes, label dropout {cfg.cond_dropout_prob})"
           if getattr(cfg, "num_classes", None) is not None else "")
        + (f"; motion compensation {cfg.motion_compensation} (frames centred, shifts in the latent)"
           if getattr(cfg, "motion_compensation", None) is not None else "")
    )


def _train(args, task, data, targs, settings: dict, metadata: dict):
    from accelerate.utils import set_seed

    from ..tasks.base import class_conditioning, with_class_labels
    from ..training.trainer import QGFDTrainer

    set_seed(args.seed)  # the model's initial weights
    class_conditioning(args, data, settings, task.name)
    model, processor, collator = task.build_model(args, data, settings)
    collator = with_class_labels(collator, model)
    _say(_describe_model(model))

    def sample_fn(m, step, folder):
        paths = task.write_validation_samples(m, processor, data, settings, folder, step)
        _say(f"  step {step}: samples in " + ", ".join(os.path.abspath(p) for p in paths.values()))

    trainer = QGFDTrainer(model, targs, data.train, data_collator=collator, processing_class=processor, metadata=metadata,
                          sample_fn=sample_fn)
    metrics = trainer.train(resume=args.resume)
    return trainer, metrics, processor


# ----------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    if args.output_dir is None:
        raise ValueError("--output-dir is required for train.")
    _set_threads(args.threads)
    _check_modality_flags(args)
    _check_output_dir(args, args.output_dir)
    task = get_task(args.modality)
    settings = task.settings(args)
    targs = _training_arguments(args, args.output_dir, settings)  # bad values refused before the data is read
    data = task.load_data(args, settings)
    _say(f"Training a {args.modality} model on {data.name} ({len(data.train)} examples) -> {args.output_dir}")
    trainer, metrics, _ = _train(args, task, data, targs, settings, {"dataset": data.card_name or data.name, "modality": args.modality})
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`, one process reports
        return 0
    if metrics.get("paused"):
        _say(f"  paused at step {metrics['global_step']}; checkpoint {os.path.abspath(metrics['checkpoint'])}")
        _say("  continue with the same command plus --resume")
        return 0
    _print_paths(args.output_dir, metrics)
    _say(f"Sample with: {task.sample_hint(os.path.join(args.output_dir, 'model'))}")
    return 0


def cmd_sample(args) -> int:
    from transformers import AutoConfig

    _set_threads(args.threads)
    config_file = os.path.join(args.model, "config.json")
    if os.path.isdir(args.model):
        if not os.path.isfile(config_file):
            raise ValueError(f"{args.model!r} holds no config.json: it is not a saved model folder (the demo's is <output-dir>/model).")
        try:
            with open(config_file) as f:
                model_type = json.load(f).get("model_type")
        except (OSError, ValueError) as e:
            raise ValueError(f"{config_file!r} cannot be read as JSON ({e}).") from e
        if model_type is None:
            raise ValueError(f"{config_file!r} has no `model_type`, so the model class is unknown; it is not a QGFD model folder.")
    elif os.sep in args.model or args.model.startswith(".") or os.path.splitext(args.model)[1]:
        raise ValueError(f"No model folder {args.model!r} (give the folder that holds config.json, e.g. <output-dir>/model).")
    try:
        # trust_remote_code=False: the installed qgfd_hf has the classes; never an interactive prompt.
        config = AutoConfig.from_pretrained(args.model, trust_remote_code=False)
    except Exception as e:
        raise ValueError(f"Could not load a model config from {args.model!r} ({type(e).__name__}: {e}).") from e
    modality = getattr(config, "modality", None)
    if modality not in task_names():
        raise ValueError(f"{args.model!r} is not a QGFD diffusion model folder (config modality {modality!r}; allowed: {', '.join(task_names())}).")
    if args.condition and not getattr(config, "conditional", False):
        raise ValueError(f"This {modality} model is unconditional; drop --condition (use --num-samples).")
    task = get_task(modality)
    task.check_output(args)  # a bad --output before anything else (sample_output checks it again where it writes)
    _say(_resolve_sampling(args, config, task))
    t0 = time.time()
    lines = task.sample_command(args.model, args)
    for line in lines:
        _say(line)
    _say(f"({time.time() - t0:.1f}s)")
    return 0


def _resolve_sampling(args, config, task) -> str:
    """`sample`'s sampler, steps and guidance scale, written into `args`: the flags where given,
    else the modality's defaults (those its demo samples with and `train --help` lists; the
    steps only with the modality's own sampler, else the pipeline's for the sampler asked for).
    Returns the line that says what is used."""
    from ..pipeline_qgfd_diffusion import default_num_inference_steps

    d, T = task.defaults, int(config.num_timesteps)
    if args.sampler is None:
        args.sampler = d.get("sampler", "ddim")
    if args.num_inference_steps is None:
        steps = d.get("num_inference_steps") if args.sampler == d.get("sampler") else None
        if steps is None:
            steps = default_num_inference_steps(args.sampler, T)
        # A default above what this model's T allows is lowered to that bound (a flag never is).
        args.num_inference_steps = min(steps, T - 1 if args.sampler == "dpmsolver++" else T)
    if args.guidance_scale is None and "guidance_scale" in d and (getattr(config, "cond_dropout_prob", 0) or 0) > 0:
        args.guidance_scale = d["guidance_scale"]  # the modality's default, for a model that learned the null condition
    K, label_column = getattr(config, "num_classes", None), getattr(config, "label_column", None)
    if getattr(config, "conditional", False):
        labels = "none (conditioned on the --condition texts)"
    elif args.class_label == ["unconditional"]:
        labels = "unconditional: the null label"
    elif args.class_label:  # the model checks them
        labels = ", ".join(map(str, args.class_label)) + (" (cycled over the samples)" if len(args.class_label) > 1 else "")
    elif label_column is not None:
        labels = f"none: the label column {label_column!r} is sampled with the rest (--class-label K for a category)"
    elif K is not None and getattr(config, "class_frequencies", None) is not None:
        labels = (f"none: each sample's label drawn from the training frequencies (--class-label K, 0 <= K < {K}, for a class; "
                  "--class-label unconditional for the null label)")
    elif K is not None:
        labels = (f"none: the null label, unconditional samples (the model was saved without its training label frequencies; "
                  f"--class-label K, 0 <= K < {K}, for a class)")
    else:
        labels = "none (the model has no classes)"
    scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    return (f"Sampling with {args.sampler}, {args.num_inference_steps} steps, guidance scale {scale:g}, class labels {labels} "
            f"(seed {args.seed})")


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}.")
        import torch

        try:
            torch.set_num_threads(threads)
        except (RuntimeError, ValueError, OverflowError) as e:  # e.g. more than a C int: "Overflow when unpacking long long"
            raise ValueError(f"--threads {threads} is refused by torch ({e}); give a thread count such as {os.cpu_count() or 1}.") from None


def cmd_demo(args) -> int:
    import torch

    # One thread by default: on a machine whose cores are shared with other jobs, two torch threads
    # that wait on each other can be many times slower than one.
    _set_threads(args.threads if args.threads is not None else 1)
    _check_modality_flags(args)
    task = get_task(args.modality)
    demo_datasets = task.demo_datasets or task.datasets[:1]
    if args.dataset is None:
        args.dataset = demo_datasets[0]
    elif args.dataset not in demo_datasets:
        raise ValueError(f"The {args.modality} demo scores --dataset {', '.join(demo_datasets)}; got {args.dataset!r} "
                         f"(train on other data with `qgfd-hf train --modality {args.modality} --dataset {args.dataset}`).")
    settings = task.settings(args, for_demo=True)
    if args.guidance_scale is not None and "guidance_scale" not in settings:
        raise ValueError(f"--guidance-scale is for the class-conditional demos ({', '.join(n for n in task_names() if 'guidance_scale' in get_task(n).defaults)}); "
                         f"the {args.modality} demo does not take it.")
    for name in ("num_samples", "num_inference_steps", "guidance_scale"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    args.data_dir = args.data_files = None
    output_dir = args.output_dir = args.output_dir or _fresh_demo_dir(args)  # tasks may keep files of the run there
    _check_output_dir(args, output_dir)
    targs = _training_arguments(args, output_dir, settings)
    t0 = time.time()
    data = task.load_data(args, settings)
    steps = settings.get("max_steps") if args.max_steps is None else args.max_steps
    _say(
        f"QGFD demo ({args.modality}): training on {data.name} ({len(data.train)} examples) for {steps} "
        f"steps on {torch.get_num_threads()} CPU thread(s) (--threads to change); output in {os.path.abspath(output_dir)}"
    )
    trainer, train_metrics, processor = _train(args, task, data, targs, settings, {"dataset": data.card_name or data.name, "modality": args.modality, "demo": True})
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`, one process samples and scores
        return 0
    model_dir = os.path.join(output_dir, "model")
    t = time.time()
    samples = task.generate(model_dir, data, settings, args)
    t_sample = time.time() - t
    t = time.time()
    result = task.evaluate(samples, data, settings)
    result["eval_seconds"] = round(time.time() - t, 1)
    result["sampling"] = {k: settings.get(k) for k in ("num_samples", "sampler", "num_inference_steps") if k in settings}
    result["sampling"]["seconds"] = round(t_sample, 1)
    result["files"] = task.write_samples(samples, data, output_dir, labels=settings.get("requested_labels"))
    # "train": the trainer's own measure (its loop, checkpoints included), the one the "final loss"
    # line prints too; "total" also holds loading the data, building and saving the model.
    result["seconds"] = {"train": round(train_metrics["train_runtime_s"], 1), "total": round(time.time() - t0, 1)}
    metrics_path = os.path.join(output_dir, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    metrics["demo"] = result
    _record_in_model_card(trainer, model_dir, task.card_metrics(result))
    with open(metrics_path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=2, default=_json_default)
    os.replace(metrics_path + ".tmp", metrics_path)
    _print_demo(task, result, output_dir, train_metrics)
    return 0


def _fresh_demo_dir(args) -> str:
    """`qgfd-demo-<modality>`, or with `-2`, `-3`, ... when an earlier demo is there (it is kept);
    with --resume or --overwrite-output-dir, the plain name."""
    base = f"qgfd-demo-{args.modality}"
    if args.resume or args.overwrite_output_dir or args.resume_from_checkpoint or not os.path.exists(base):
        return base
    i = 2
    while os.path.exists(f"{base}-{i}"):
        i += 1
    return f"{base}-{i}"


def _json_default(value):
    """numpy scalars and arrays in metrics.json."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _record_in_model_card(trainer, model_dir, recorded: dict) -> None:
    """Re-render the saved model's card with the demo's measured metrics beside the training ones."""
    from transformers import AutoConfig

    from ..training.checkpoints import write_model_card

    class _Holder:  # write_model_card takes anything with a QGFD `config`
        config = AutoConfig.from_pretrained(model_dir)

    write_model_card(_Holder(), model_dir, trainer.training_info(metrics=recorded))


def _print_paths(output_dir, metrics) -> None:
    _say(f"  final loss      {metrics.get('final_loss'):.4f} after {metrics['global_step']} steps (training {metrics['train_runtime_s']:.0f}s)")
    _say(f"  model           {os.path.abspath(os.path.join(output_dir, 'model'))}")
    _say(f"  loss curve      {os.path.abspath(os.path.join(output_dir, 'loss.png'))}")
    _say(f"  metrics         {os.path.abspath(os.path.join(output_dir, 'metrics.json'))}")
    _say(f"  checkpoints     {os.path.abspath(os.path.join(output_dir, 'checkpoints'))}")


def _print_demo(task, result, output_dir, train_metrics) -> None:
    _say("")
    _say(f"Done in {result['seconds']['total']:.0f}s (training {train_metrics['train_runtime_s']:.0f}s, sampling {result['sampling']['seconds']:.0f}s, "
         f"scoring {result['eval_seconds']:.0f}s; the rest loads the data and builds and saves the model).")
    for line in task.report_lines(result):
        _say(line)
    met = result["targets"]
    _say("Targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
    _say("")
    _say("Wrote:")
    for what, path in result["files"].items():
        _say(f"  {what:15s} {os.path.abspath(path)}")
    _print_paths(output_dir, train_metrics)
    _say("")
    _say(f"Sample again: {task.sample_hint(os.path.join(output_dir, 'model'))}")


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..registration_qgfd import register
    from transformers.utils import logging

    register()  # deferred by the console script (qgfd_hf_cli.py) until a command runs; idempotent

    # Quiet the libraries' own bars ("Writing model shards", "Generating train split", ...);
    # the training and sampling bars stay.
    logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, FloatingPointError, MissingDataPackageError) as e:
        # Bad input (data, flags, a data package not installed), a fault of the machine (a full disk) or a run that diverged (a
        # non-finite or exploding loss, non-finite samples): one clear line, no traceback; the exit
        # status is 2 like argparse's. QGFD_HF_TRACEBACK=1 shows the traceback.
        if os.environ.get("QGFD_HF_TRACEBACK"):
            raise
        print(f"qgfd-hf {args.command}: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
