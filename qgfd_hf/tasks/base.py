# coding=utf-8
"""A modality's training side, described once: `ModalityTask` and its registry.

The model side of a modality (its config, adapter and model class) lives in
`configuration_qgfd` / `modeling_qgfd_*`, the files a saved folder carries for
`trust_remote_code`. Everything else a modality needs to be trained and judged is one
`ModalityTask` subclass in one file `qgfd_hf/tasks/<name>.py`:

| what                   | the task's                                   |
|------------------------|----------------------------------------------|
| CLI flags of its own   | `add_arguments(group)`                         |
| data (checked)         | `load_data(args, settings) -> TaskData`        |
| defaults               | `defaults` (one table, for `train` and `demo`) |
| model + collator       | `build_model(args, data, settings)`            |
| samples                | `generate(model_dir, data, settings, args)`    |
| scores vs baselines    | `evaluate(samples, data, settings)`            |
| what a person looks at | `write_samples(samples, data, output_dir)`     |
| the printed report     | `report_lines(result)`, `card_metrics(result)` |

The `qgfd-hf` CLI, the demos and the scripts read tasks from `get_task(name)`; adding a
modality adds a file `qgfd_hf/tasks/<name>.py` whose task class is decorated with
`@register_task`, and nothing else: every module of `qgfd_hf.tasks` but this one (and any
whose name starts with `_`) is a modality. `task_names()` lists the modalities without
importing them (the CLI's `--help` stays fast); `get_task` imports the one asked for.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

_TASKS: Dict[str, "ModalityTask"] = {}
_NOT_TASKS = ("base",)  # modules of qgfd_hf.tasks that hold no modality


def register_task(cls):
    """Class decorator: register a `ModalityTask` subclass under `cls.name`."""
    if not cls.name or not isinstance(cls.name, str):
        raise ValueError(f"{cls.__name__}.name must be a non-empty string, got {cls.name!r}.")
    _TASKS[cls.name] = cls()
    return cls


def task_names() -> List[str]:
    """The modalities that have a task file, in a fixed order (image, text first), without importing them."""
    here = os.path.dirname(os.path.abspath(__file__))
    names = [m.name for m in pkgutil.iter_modules([here]) if m.name not in _NOT_TASKS and not m.name.startswith("_")]
    first = [n for n in ("image", "text") if n in names]
    return first + sorted(n for n in names if n not in first)


def get_task(name: str) -> "ModalityTask":
    """The registered task of modality `name` (importing its `qgfd_hf/tasks/<name>.py`)."""
    if name not in _TASKS:
        if name not in task_names():
            raise ValueError(f"Unknown modality {name!r}; allowed: {', '.join(task_names())}.")
        importlib.import_module(f".{name}", __package__)
        if name not in _TASKS:
            raise ValueError(f"qgfd_hf/tasks/{name}.py registers no task named {name!r} (@register_task).")
    return _TASKS[name]


@dataclass
class TaskData:
    """A modality's data, loaded and checked before any model is built.

    Args:
        train: the training rows (a `datasets.Dataset`).
        name: the data's short name (a built-in dataset, or `kind:path` for the user's files).
        test: held-out rows the demo scores against (None for the user's own data).
        card_name: how the model card names the data (default: `name`).
        info: whatever the task derived from the data and needs later (sizes, column specs, ...).
    """

    train: Any
    name: str
    test: Any = None
    card_name: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)


class ModalityTask:
    """Base class of a modality's training side; see the module docstring for the contract.

    Class attributes:
        name: the modality (`--modality NAME`).
        summary: one line for `--help`.
        datasets: built-in `--dataset` names; the first one is the demo's.
        data_help: what `--data-dir` / `--data-files` take for this modality.
        defaults: the one table of settings (model sizes, diffusion, training, sampling) used by
            `train` and `demo` alike; flags override them.
        demo_data_only: settings whose default holds for the demo data (`datasets[0]`) only,
            with the value other data gets instead (`settings`).
        demo_datasets: the built-in datasets the demo scores (`qgfd-hf demo --dataset`; default
            `datasets[0]` alone).
        output_suffixes: the file types `qgfd-hf sample --output PATH` may name, each with what
            it writes (the first one is the default); `check_output` refuses any other.
    """

    name: str = ""
    summary: str = ""
    datasets: Tuple[str, ...] = ()
    data_help: str = ""
    defaults: Dict[str, Any] = {}
    demo_data_only: Dict[str, Any] = {"class_conditional": False}  # other data: --class-conditional
    output_suffixes: Dict[str, str] = {}
    demo_datasets: Tuple[str, ...] = ()  # the datasets `qgfd-hf demo --dataset` takes (empty: `datasets[0]` only)

    # -- data and model ---------------------------------------------------------------------

    def add_arguments(self, group) -> None:
        """Add this modality's own flags to an argparse group (names must not clash across tasks)."""

    def settings(self, args, for_demo: bool = False) -> Dict[str, Any]:
        """The defaults for this run (a copy); tasks may adapt them to the data source. The
        defaults named in `demo_data_only` (a task's `class_conditional`, say) hold for its demo
        data (`datasets[0]`) only: other data (a folder, another dataset) gets the value given
        there, and asks for more with the flag (`--class-conditional`)."""
        s = dict(self.defaults)
        other_data = getattr(args, "data_dir", None) is not None or getattr(args, "dataset", None) not in (None, self.datasets[0])
        if other_data:
            s.update({k: v for k, v in self.demo_data_only.items() if k in s})
        return s

    def load_data(self, args, settings: Dict[str, Any]) -> TaskData:
        raise NotImplementedError

    def build_model(self, args, data: TaskData, settings: Dict[str, Any]):
        """(model, processor or None, collator) for `data`, with every statistic the model needs
        (normalisation, latent scale) fitted from `data.train`."""
        raise NotImplementedError

    # -- samples and scores -----------------------------------------------------------------

    def generate(self, model_dir: str, data: TaskData, settings: Dict[str, Any], args):
        """Samples from the saved model (through `pipeline("qgfd-diffusion")`)."""
        raise NotImplementedError

    def evaluate(self, samples, data: TaskData, settings: Dict[str, Any]) -> Dict[str, Any]:
        """`{"metrics": ..., "targets": {name: bool}}`, the metrics beside their baselines."""
        raise NotImplementedError

    def write_samples(self, samples, data: Optional[TaskData], output_dir: str, prefix: str = "samples", labels=None) -> Dict[str, str]:
        """Write what a person looks at (PNG, wav, csv, ...); returns {what: path}. `labels`: the
        class asked for of each sample (class-conditional samples), for files that show it."""
        raise NotImplementedError

    def report_lines(self, result: Dict[str, Any]) -> List[str]:
        """The demo's table, as lines."""
        return []

    def card_metrics(self, result: Dict[str, Any]) -> Dict[str, Any]:
        """The demo's metrics as the model card records them."""
        return {}

    # -- the `sample` command ---------------------------------------------------------------

    def sample_hint(self, model_dir: str) -> str:
        """The `qgfd-hf sample` command line the demo and `train` print at the end."""
        return f"qgfd-hf sample {model_dir} --num-samples 16"

    def check_output(self, args) -> str:
        """The file type (suffix) that `qgfd-hf sample` writes: that of `--output PATH`, else the
        task's default. A path whose suffix is not one of `output_suffixes` (or that has none;
        `.PNG` is not `.png`) is refused with a ValueError naming the path and the allowed
        suffixes: the samples go exactly where `--output` says, never to a name changed behind
        the user's back."""
        path = getattr(args, "output", None)
        if not path:
            return next(iter(self.output_suffixes))
        suffix = os.path.splitext(path)[1]
        if suffix not in self.output_suffixes:
            allowed = "; ".join(f"{k} ({v})" for k, v in self.output_suffixes.items())
            got = f"has the suffix {suffix!r}" if suffix else "has no suffix"
            raise ValueError(f"--output {path!r} {got}, which {self.name} samples cannot be written as; allowed: {allowed}.")
        return suffix

    def sample_command(self, model: str, args) -> List[str]:
        """`qgfd-hf sample`: sample the saved model, write the samples, return the lines to print."""
        out_dir, prefix, _ = sample_output(model, args, self)  # a bad --output is refused before sampling
        samples = self.sample_saved(model, args)
        paths = self.write_samples(samples, None, out_dir, prefix=prefix)
        return [f"{len(samples)} samples:"] + [f"  {what:15s} {os.path.abspath(p)}" for what, p in paths.items()]

    def write_validation_samples(self, model, processor, data: TaskData, settings: Dict[str, Any], folder: str, step: int) -> Dict[str, str]:
        """`train --sample-every N`: a few samples of the model being trained (DDIM, 25 steps,
        seed 0, so that every step's samples start from the same noise), written as `step-N.*`."""
        import argparse

        ns = argparse.Namespace(num_samples=settings.get("validation_samples", 16), num_inference_steps=25, sampler="ddim",
                                seed=0, no_progress=True, condition=None)
        K = getattr(model.config, "num_classes", None) if not isinstance(model, str) else None
        if K is not None:  # a class-conditional model: every class in turn
            ns.class_label = list(range(K))
        samples = self.sample_saved(model, ns)
        return self.write_samples(samples, None, folder, prefix=f"step-{step:08d}")

    def sample_saved(self, model: str, args):
        """Unconditional samples of the saved model for `qgfd-hf sample` (the pipeline's arrays)."""
        return pipeline_samples(
            model, num_samples=args.num_samples, num_inference_steps=args.num_inference_steps, sampler=args.sampler,
            seed=args.seed, progress=not args.no_progress, timestep_spacing=getattr(args, "timestep_spacing", None),
            **guidance_kwargs(args),
        )


# ----------------------------------------------------------------------------------------
# Shared helpers of the tasks
# ----------------------------------------------------------------------------------------


def pipeline_samples(model_or_path, inputs=None, *, num_samples: Optional[int] = None, num_inference_steps: Optional[int] = 50,
                     sampler: str = "ddim", seed: int = 0, batch_size: int = 256, progress: bool = True,
                     output_type: str = "np", tokenizer=None, **pipe_kwargs):
    """Samples through `pipeline("qgfd-diffusion")` (registered with the first QGFD config, `registration_qgfd`).

    `model_or_path`: a saved folder, a Hub id, or a model object (then pass its `tokenizer` if
    it is conditional). Unconditional models: the pipeline's `output_type` items (default the
    `"np"` arrays, stacked into one array). Conditional models (`inputs` given): one list of
    outputs per input.
    """
    import numpy as np
    from transformers import pipeline

    pipe = pipeline("qgfd-diffusion", model=model_or_path, **({"tokenizer": tokenizer} if tokenizer is not None else {}))
    kwargs = dict(num_inference_steps=num_inference_steps, sampler=sampler, seed=seed, batch_size=batch_size,
                  progress_bar=progress, **pipe_kwargs)
    if inputs is None:
        out = pipe(num_samples=num_samples, output_type=output_type, **kwargs)
        return np.stack([o["np"] for o in out]) if output_type == "np" else out
    return pipe(list(inputs), **kwargs)


# The model fields that `class_conditioning` resolves (into the settings) and `diffusion_values` passes on.
CONDITIONING_FIELDS = ("num_classes", "cond_dropout_prob", "class_frequencies")
LOSS_FIELDS = ("snr_gamma",)  # the model's loss settings (the config's, beside the denoiser's)
LABEL_COLUMN = "label"  # every task's data names its class labels so (digits, folders' sub-folder names, csv)


def class_conditioning(args, data: TaskData, settings: Dict[str, Any], modality: str) -> None:
    """`--class-conditional` and `--cond-dropout-prob`, for every task in one place: resolve them
    against the data and write the model fields `num_classes` / `class_frequencies` / `cond_dropout_prob` into `settings`.

    - images, audio, video: class-conditional (`--class-conditional`, or the task's default
      `class_conditional`) on the data's `label` column, K = its classes;
    - tables: class-conditional through their label column already (`--label-column`);
      `--class-conditional` only checks that there is one;
    - text: conditioned on the source text; `--cond-dropout-prob` trains its null text.
    """
    from ..data.core import dataset_class_frequencies, dataset_num_classes

    flag = getattr(args, "class_conditional", None)
    wanted = settings.get("class_conditional", False) if flag is None else flag
    p = getattr(args, "cond_dropout_prob", None)
    if p is not None:
        settings["cond_dropout_prob"] = p
    if not wanted:
        return
    if modality == "text":
        raise ValueError("Text models are conditioned on their source text, not on class labels: drop --class-conditional "
                         "(--cond-dropout-prob trains the null text that guidance needs).")
    if modality == "tabular":
        if data.info.get("label_column") is None:
            raise ValueError("--class-conditional for tables needs a label column: --label-column NAME (it is generated first, the rest given it).")
        return
    K = settings["num_classes"] = dataset_num_classes(data.train, LABEL_COLUMN, f"The dataset {data.name!r}")
    # The training labels' frequencies, recorded in the config: a sample asked for without a label draws it from them.
    settings["class_frequencies"] = dataset_class_frequencies(data.train, K, LABEL_COLUMN)


def with_class_labels(collator, model):
    """The task's collator, adding the rows' labels as `class_labels` when the model is class-conditional."""
    from ..data.core import ClassLabelCollator

    K = getattr(model.config, "num_classes", None)
    return collator if K is None else ClassLabelCollator(collator, K, LABEL_COLUMN)


def demo_class_guidance(model_dir: str, data: TaskData, num_samples: int, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The demo's class labels for a class-conditional saved model (`{}` for an unconditional
    one): the held-out rows' labels, cycled over the `num_samples` samples, so that the samples'
    classes match the held-out set the distances are measured against; and the task's
    `guidance_scale`. The labels are also recorded as `settings["requested_labels"]`, for
    `evaluate` (agreement with the class asked for)."""
    from transformers import AutoConfig

    settings["requested_labels"] = None
    K = getattr(AutoConfig.from_pretrained(model_dir), "num_classes", None)
    if K is None:
        if settings.get("guidance_scale", 1.0) != 1.0:
            raise ValueError(f"Guidance scale {settings['guidance_scale']} needs a class-conditional model (--class-conditional); "
                             "this one has no class labels.")
        return {}
    labels = list(data.test[LABEL_COLUMN]) if data.test is not None and LABEL_COLUMN in data.test.column_names else list(range(K))
    requested = [int(labels[i % len(labels)]) for i in range(num_samples)]
    settings["requested_labels"] = requested
    return dict(class_labels=requested, guidance_scale=settings.get("guidance_scale", 1.0))


def guidance_kwargs(args) -> Dict[str, Any]:
    """`qgfd-hf sample --class-label K [K ...] --guidance-scale S` as pipeline keywords: one label
    for every sample, or several cycled over the `--num-samples` samples; `--class-label
    unconditional`: `class_labels="unconditional"`."""
    out: Dict[str, Any] = {}
    labels = getattr(args, "class_label", None)
    if labels and "unconditional" in labels:
        if len(labels) > 1:
            raise ValueError(f"--class-label unconditional stands alone (the null label for every sample), got {' '.join(map(str, labels))}.")
        out["class_labels"] = "unconditional"
    elif labels:
        n = getattr(args, "num_samples", None) or len(labels)
        out["class_labels"] = labels[0] if len(labels) == 1 else [labels[i % len(labels)] for i in range(n)]
    if getattr(args, "guidance_scale", None) is not None:
        out["guidance_scale"] = args.guidance_scale
    return out


def diffusion_values(args, settings: dict) -> dict:
    """The denoiser's settings (`DiffusionConfig` fields): the task's defaults, then --preset,
    then the individual flags; and the conditioning fields `class_conditioning` resolved."""
    from ..configuration_qgfd import DIFFUSION_FIELDS, QGFD_PRESETS

    names = [n for n in DIFFUSION_FIELDS if n != "latent_dim"]
    values = {k: v for k, v in settings.items() if k in names or k in CONDITIONING_FIELDS or k in LOSS_FIELDS}
    preset = getattr(args, "preset", None)
    if preset is not None:
        if preset not in QGFD_PRESETS:
            raise ValueError(f"Unknown --preset {preset!r}; allowed: {', '.join(QGFD_PRESETS)}.")
        values.update(QGFD_PRESETS[preset])
    values.update({n: getattr(args, n) for n in (*names, *LOSS_FIELDS) if getattr(args, n, None) is not None})
    return values


def denoiser_kwargs(args) -> Dict[str, str]:
    """The factory's denoiser choice from `--denoiser` and `--denoiser-weights` (only those given)."""
    out = {}
    if getattr(args, "denoiser", None) is not None:
        out["denoiser"] = args.denoiser
    weights = getattr(args, "denoiser_weights", None)
    if weights is not None:
        if weights == "random" and out.get("denoiser") != "pretrained":
            raise ValueError("--denoiser-weights random is for --denoiser pretrained (the --backbone's own stack, kept at random init).")
        out["denoiser_weights"] = weights
    return out


def sample_output(model: str, args, task: ModalityTask) -> Tuple[str, str, str]:
    """(folder, file prefix, suffix) for `qgfd-hf sample`: `--output PATH` as given (its suffix
    checked by `task.check_output`), else `sample-seed<S>` beside the model folder with the task's
    default suffix; that prefix gets `-1`, `-2`, ... when taken, so that no earlier samples (the
    demo's among them) are overwritten."""
    suffix = task.check_output(args)
    if getattr(args, "output", None):
        out_dir, name = os.path.split(os.path.abspath(args.output))
        return out_dir, name[: len(name) - len(suffix)], suffix
    out_dir = os.path.dirname(os.path.abspath(model.rstrip("/\\"))) if os.path.isdir(model) else os.getcwd()
    base = prefix = f"sample-seed{args.seed}"
    taken = lambda p: os.path.isdir(out_dir) and any(f == p or f.startswith(p + ".") or f.startswith(p + "_") for f in os.listdir(out_dir))
    i = 0
    while taken(prefix):
        i += 1
        prefix = f"{base}-{i}"
    return out_dir, prefix, suffix


__all__ = ["ModalityTask", "TaskData", "class_conditioning", "demo_class_guidance", "denoiser_kwargs", "diffusion_values", "guidance_kwargs", "with_class_labels", "get_task", "pipeline_samples", "register_task", "task_names"]
