# coding=utf-8
"""Model cards (README.md) for QGFD diffusion models.

`render_model_card(config)` fills the template ``model_cards/qgfd_diffusion.md`` and returns
the text of a README.md: YAML metadata the Hub reads (``library_name: qgfd_hf``,
``pipeline_tag``, ``tags``, ``base_model`` when the backbone came from the Hub, ``license``,
``datasets``), the QGFD and diffusion settings as tables, usage code, and a Training section
only when `training_info` records something.

The template is a `string.Template`: ``${name}`` placeholders, ``$$`` for a literal dollar
sign. It is looked up (`template_path`) in:

1. ``qgfd_hf/model_cards/`` -- an installed wheel: setup.py maps the repository's top-level
   ``model_cards/`` folder into the package as ``qgfd_hf.model_cards``;
2. ``<repository>/model_cards/`` -- a source checkout or an editable install.

The config is read by duck typing (the attributes of `QGFDConfig`): ``modality``,
``backbone_name``, ``to_dict()``, the QGFD settings ``qgfd_steps``, ``qgfd_alpha``,
``qgfd_graph``, ``qgfd_mix``, ``key_temperature`` (and any other ``qgfd_*`` key), the
diffusion settings ``num_timesteps``, ``beta_schedule``, ``prediction_type``, and the
denoiser's ``d_model``, ``num_layers``, ``num_heads``, ``latent_dim``. A setting the config
lacks is left out of the tables; only ``modality`` is required. ``conditional`` (bool), when
the config has it, says whether the model samples from a conditioning text; otherwise text
models are conditional and the other modalities are not (as in the seed).

`transformers`' `push_to_hub` replaces README.md with the card already on the Hub or with
its own generic card; `push_to_hub_with_card` uploads this card instead.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

TEMPLATE_NAME = "qgfd_diffusion.md"


def _model_class(modality: str):
    """The model class of `modality`: its `hub_pipeline_tags` (the Hub's task ids, PIPELINE_DATA in
    huggingface.js, for (unconditional, conditional) models; "other" where the Hub has no task for
    what the model does) and `pipeline_outputs` (what the pipeline returns) are on the card."""
    from .configuration_qgfd import all_modalities
    from .modeling_qgfd import ALL_MODEL_CLASSES
    from .registration_qgfd import register_models

    register_models()  # imports every modality's files: the registries then list them all
    if modality not in all_modalities():
        raise ValueError(f"Unknown modality {modality!r}; expected one of {', '.join(all_modalities())}.")
    return ALL_MODEL_CLASSES[modality]


# (config attribute, meaning) per table; rows whose attribute the config lacks are left out.
QGFD_SETTINGS = (
    ("qgfd_steps", "T, the highest power of the graph P (0 = plain attention)"),
    ("qgfd_alpha", "diffusion strength in [0, 1] (0 = plain attention)"),
    ("qgfd_graph", '"attention": P = p0; "keys": P from key similarities'),
    ("qgfd_mix", '"seed": (1-a) p0 + a p0 P^T; "recurrent": p_{t+1} = (1-a) p0 + a p_t P'),
    ("key_temperature", "temperature of the key graph"),
)
DIFFUSION_SETTINGS = (
    ("num_timesteps", "training timesteps"),
    ("beta_schedule", "noise schedule"),
    ("beta_start", "first beta"),
    ("beta_end", "last beta"),
    ("prediction_type", 'the denoiser\'s target: "epsilon", "sample" (x0) or "v"'),
)
DENOISER_SETTINGS = (
    ("denoiser", '"qgfd": a fresh QGFD Transformer; "pretrained": the backbone\'s own stack (its config sets the sizes below)'),
    ("d_model", "width (of conditioning tokens and decoders with a pretrained denoiser)"),
    ("num_layers", "blocks (fresh denoiser only)"),
    ("num_heads", "attention heads (fresh denoiser only)"),
    ("latent_dim", "width of the latents x_t"),
)

_NO_REPO = "<folder or Hub id of this model>"


def template_path(name: str = TEMPLATE_NAME) -> Path:
    """The path of the model card template `name` (see the module docstring for where it is looked up).

    Raises:
        FileNotFoundError: neither place holds it (the message lists both).
    """
    here = Path(__file__).resolve().parent
    candidates = (here / "model_cards" / name, here.parent / "model_cards" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Model card template {name!r} not found; looked in: {', '.join(str(p) for p in candidates)}. "
        "Install qgfd_hf from a wheel or sdist (which packages model_cards/), or run from a source checkout."
    )


def pipeline_tag_for(modality: str, conditional: bool) -> str:
    """The Hub `pipeline_tag` of a model of `modality`, conditional or not (its model class's `hub_pipeline_tags`)."""
    return _model_class(modality).hub_pipeline_tags[bool(conditional)]


def hub_base_model(backbone_name: Any) -> str | list[str] | None:
    """`backbone_name` when it names a Hub model, else None (a list keeps its Hub ids).

    A local folder (one that exists, or a path that is no valid Hub id such as
    ``/tmp/t5``), a config object or None is not a Hub model.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if isinstance(backbone_name, (list, tuple)):
        ids = [b for b in (hub_base_model(x) for x in backbone_name) if b is not None]
        return ids or None
    if not isinstance(backbone_name, str) or not backbone_name or os.path.exists(backbone_name):
        return None
    try:
        validate_repo_id(backbone_name)
    except HFValidationError:
        return None
    return backbone_name


def _config_of(obj: Any):
    """The config of a config, a model (`.config`) or a pipeline (`.model.config`)."""
    if hasattr(obj, "to_dict"):
        return obj
    if hasattr(obj, "config"):
        return obj.config
    if hasattr(getattr(obj, "model", None), "config"):
        return obj.model.config
    raise ValueError(f"Expected a config, a model or a pipeline, got {type(obj).__name__}.")


def _format_value(value: Any) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _table(rows: list[tuple[str, Any, str]], headers=("Setting", "Value", "Meaning")) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def _settings_section(config, config_dict: Mapping[str, Any]) -> str:
    qgfd = list(QGFD_SETTINGS)
    named = {name for name, _ in qgfd}
    qgfd += [(k, "") for k in sorted(config_dict) if k.startswith("qgfd_") and k not in named]
    parts = []
    for title, spec in (("QGFD attention", qgfd), ("Diffusion", DIFFUSION_SETTINGS), ("Denoiser", DENOISER_SETTINGS)):
        rows = [
            (f"`{name}`", _format_value(getattr(config, name)), meaning)
            for name, meaning in spec
            if hasattr(config, name)
        ]
        body = _table(rows) if rows else "Not recorded in this model's config."
        parts.append(f"### {title}\n\n{body}\n")
    return "\n".join(parts)


def _training_section(training_info: Mapping[str, Any] | None) -> tuple[str, list[str]]:
    """The Training section (empty when nothing was recorded) and the Hub dataset ids to list in the metadata."""
    if training_info is None:
        return "", []
    if not isinstance(training_info, Mapping):
        raise ValueError(f"`training_info` must be a mapping (or None), got {type(training_info).__name__}.")
    info = {k: v for k, v in training_info.items() if v is not None and v != {} and v != []}
    if not info:
        return "", []
    datasets = info.pop("datasets", None)
    metrics = info.pop("metrics", None)
    if isinstance(datasets, str):
        datasets = [datasets]
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ValueError(f"`training_info['metrics']` must be a mapping name -> value, got {metrics!r}.")
    parts = ["## Training\n"]
    hub_datasets = []
    if datasets:
        hub_datasets = [d for d in datasets if hub_base_model(d) is not None]
        parts.append("Data: " + ", ".join(f"`{d}`" for d in datasets) + ".\n")
    if info:
        parts.append(_table([(f"`{k}`", _format_value(v)) for k, v in info.items()], ("Setting", "Value")) + "\n")
    if metrics:
        parts.append("### Metrics\n")
        parts.append(_table([(f"`{k}`", _format_value(v)) for k, v in metrics.items()], ("Metric", "Value")) + "\n")
    return "\n" + "\n".join(parts), hub_datasets


def render_model_card(
    config: Any,
    *,
    training_info: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = "apache-2.0",
    tags: list[str] | None = None,
) -> str:
    """Render the README.md of a QGFD diffusion model.

    Args:
        config: the model's config (`QGFDConfig` or anything with its attributes), or a model
            or pipeline holding one.
        training_info (`Mapping`, *optional*): what training recorded. ``datasets`` (a name or a
            list; Hub ids also go into the metadata), ``metrics`` (name -> value) and any other
            key (steps, batch size, learning rate, ...) as a settings table. Without it, or
            with nothing in it, the card has no Training section.
        repo_id (`str`, *optional*): the Hub id (or folder) the usage code loads from; the
            card title is its last part.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the license the weights are
            shared under, as a Hub license id. Defaults to the library's; pass the backbone's
            when it is stricter, or None to leave it out.
        tags (`list[str]`, *optional*): tags added after ``qgfd``, ``diffusion`` and the modality.

    Returns:
        `str`: the card, YAML front matter first.

    Raises:
        ValueError: the config has no or an unknown ``modality``, a non-bool ``conditional``,
            or `training_info` is not a mapping.
        FileNotFoundError: the template cannot be found (see `template_path`).

    Example:

    ```python
    >>> from qgfd_hf.modelcard_qgfd import render_model_card
    >>> card = render_model_card(model.config, repo_id="user/qgfd-text")  # doctest: +SKIP
    >>> print(card.splitlines()[1])  # doctest: +SKIP
    base_model: google-t5/t5-small
    ```
    """
    from huggingface_hub import ModelCardData

    config = _config_of(config)
    modality = getattr(config, "modality", None)
    if modality is None:
        raise ValueError("The config has no `modality`; a model card needs it to pick the Hub's pipeline_tag.")
    model_class = _model_class(modality)
    conditional = getattr(config, "conditional", None)
    if conditional is None:  # a text model samples from a source text unless its config says otherwise
        conditional = modality == "text"
    elif not isinstance(conditional, bool):
        raise ValueError(f"`config.conditional` must be a bool, got {conditional!r}.")
    backbone_name = getattr(config, "backbone_name", None)
    base_model = hub_base_model(backbone_name)
    config_dict = config.to_dict()
    shown = config.to_diff_dict() if hasattr(config, "to_diff_dict") else config_dict  # what config.json holds
    training, hub_datasets = _training_section(training_info)

    all_tags = ["qgfd", "diffusion", modality] + [t for t in (tags or []) if t not in ("qgfd", "diffusion", modality)]
    metadata = ModelCardData(
        library_name="qgfd_hf",
        pipeline_tag=model_class.hub_pipeline_tags[conditional],
        tags=all_tags,
        base_model=base_model,
        license=license,
        datasets=hub_datasets or None,
    )

    name, what, count = model_class.pipeline_outputs
    timesteps = getattr(config, "num_timesteps", None)
    steps = min(50, timesteps) if isinstance(timesteps, int) and timesteps > 0 else 50
    call_args = f"num_inference_steps={steps}, sampler=\"ddim\", seed=0"
    num_classes = getattr(config, "num_classes", None)
    guided = (getattr(config, "cond_dropout_prob", 0) or 0) > 0
    if conditional:
        pipeline_call = f'{name} = pipe("a conditioning text", {call_args})  # {what}'
        conditioning_sentence = "It samples conditioned on a text: pass one, or a list, to the pipeline."
        if guided:
            pipeline_call += f'\n{name} = pipe("a conditioning text", guidance_scale=2.0, {call_args})  # with classifier-free guidance'
            conditioning_sentence += " It was trained with condition dropout, so it takes classifier-free guidance (`guidance_scale`)."
    elif isinstance(num_classes, int):
        labels = [c % num_classes for c in (3, 7)]
        scale = ", guidance_scale=4.0" if guided else ""
        pipeline_call = f"{name} = pipe(class_labels={labels}{scale}, {call_args})  # {what}, of classes {labels}"
        drawn = getattr(config, "class_frequencies", None) is not None
        default = (" Without `class_labels` each sample's label is drawn from the training labels' frequencies." if drawn
                   else " Without `class_labels` it samples unconditionally (its null label)." if guided else "")
        conditioning_sentence = (
            f"It is class-conditional ({num_classes} classes): pass `class_labels` (one per sample, or one int for `num_samples`)."
            + default
            + (" It was trained with label dropout, so it takes classifier-free guidance (`guidance_scale`)"
               + (", and `class_labels=\"unconditional\"` samples with the null label." if drawn else ".")
               if guided else " It was trained without label dropout: no guidance.")
        )
    else:
        pipeline_call = f"{name} = pipe(num_samples={count}, {call_args})  # {what}"
        conditioning_sentence = "It is unconditional: ask the pipeline for `num_samples`."
    if base_model and isinstance(base_model, str):
        backbone_sentence = f"Its latents come from the pretrained [`{base_model}`](https://huggingface.co/{base_model}). "
    elif isinstance(backbone_name, str) and backbone_name:
        backbone_sentence = f"Its latents come from a pretrained model loaded from the folder `{backbone_name}`. "
    else:
        backbone_sentence = ""

    template = string.Template(template_path().read_text(encoding="utf-8"))
    return template.substitute(
        metadata=metadata.to_yaml(),
        title=repo_id.rstrip("/").split("/")[-1] if repo_id else f"QGFD {modality} diffusion model",
        modality=modality,
        backbone_sentence=backbone_sentence,
        conditioning_sentence=conditioning_sentence,
        model_ref=repo_id or _NO_REPO,
        pipeline_call=pipeline_call,
        settings=_settings_section(config, config_dict),
        training=training,
        config_json=json.dumps(shown, indent=2, sort_keys=True, default=str),
    )


def save_model_card(obj: Any, save_directory: str | os.PathLike, **kwargs) -> Path:
    """Write `render_model_card(obj, **kwargs)` to ``save_directory/README.md`` and return its path."""
    path = Path(save_directory) / "README.md"
    path.write_text(render_model_card(obj, **kwargs), encoding="utf-8")
    return path


def push_to_hub_with_card(
    obj: Any,
    repo_id: str,
    *,
    training_info: Mapping[str, Any] | None = None,
    license: str | None = "apache-2.0",
    tags: list[str] | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = None,
):
    """`push_to_hub` for a model (or pipeline) whose README.md must be this library's card.

    `transformers`' `PushToHubMixin.push_to_hub` saves into a temporary folder and then
    overwrites README.md with the card already on the Hub, or with a generic transformers
    card. This does the same upload in one commit, with the card from `render_model_card`
    (rendered with `repo_id`, so its usage code names the repo). A QGFD model can expose it as
    ``def push_to_hub(self, repo_id, **kwargs): return push_to_hub_with_card(self, repo_id, **kwargs)``.

    Returns:
        `huggingface_hub.CommitInfo` of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(library_name="qgfd_hf")
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        obj.save_pretrained(tmp, **save_kwargs)
        save_model_card(obj, tmp, training_info=training_info, repo_id=repo_id, license=license, tags=tags)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message or f"Upload {type(obj).__name__}",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )


def push_folder_to_hub(
    obj: Any,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    training_info: Mapping[str, Any] | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
):
    """Upload a folder that `save_pretrained` wrote (the trainer's `model/`) as it is, in one
    commit, with its card re-rendered for `repo_id` (so the card's usage code names the repo).
    `obj` is the model the folder was saved from (for its card)."""
    from huggingface_hub import HfApi

    api = HfApi(library_name="qgfd_hf")
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    save_model_card(obj, folder, training_info=training_info, repo_id=repo_id)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or f"Upload {type(obj).__name__}",
                             token=token)
