# coding=utf-8
"""Saving and sharing a QGFD diffusion model: `QGFDHubMixin` (a base of `QGFDPreTrainedModel`).

`save_pretrained` writes what transformers writes (`config.json`, `model.safetensors`, and the
code for `trust_remote_code`: the model's file and every file it imports relatively), plus the
tokenizer or processor, the pipeline's file (named in `custom_pipelines`), for a model with a
transformers backbone `modeling_qgfd_backbones.py` (named in `auto_map`, see that file), and a model
card. The pipeline, the backbones' entry and the model card are reached by name, never by a
relative import, so a folder carries only the code its model needs.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Mapping, Optional

from transformers.utils import logging

from .configuration_qgfd import QGFDConfig

logger = logging.get_logger(__name__)

# The pipeline that samples these models, by name: the model never imports it (the pipeline
# imports the model's contract). `save_pretrained` copies its file into the folder and names it in
# `custom_pipelines`, so `pipeline(model=dir, trust_remote_code=True)` finds it where qgfd_hf is
# not installed.
PIPELINE_TASK = "qgfd-diffusion"
PIPELINE_FILE = "pipeline_qgfd_diffusion.py"
PIPELINE_CLASS = "QGFDDiffusionPipeline"
# The entry module of a model with a transformers backbone (see modeling_qgfd_backbones.py): written by
# `save_pretrained` into such a model's folder only, with the import of the model's class after the marker.
BACKBONES_FILE = "modeling_qgfd_backbones.py"
BACKBONES_MARKER = "# The saved model's class (written by save_pretrained):"


def uses_transformers_backbone(config) -> bool:
    """Whether a config builds a transformers model (an encoder that makes x0, or the pretrained
    denoiser), in itself or in a modality config it holds (the shared model's)."""
    if getattr(config, "denoiser", "qgfd") == "pretrained" or getattr(config, "backbone_config", None) is not None:
        return True
    return any(isinstance(v, QGFDConfig) and uses_transformers_backbone(v) for v in vars(config).values())


def _save_backbones_entry(model, save_directory) -> None:
    """Write modeling_qgfd_backbones.py, with the import of the model's class, and the files it imports into
    the folder, and name it in config.json's auto_map: `trust_remote_code` loads the backbone code with the model."""
    from transformers.dynamic_module_utils import get_relative_import_files

    entry = Path(__file__).with_name(BACKBONES_FILE)
    if not entry.is_file():
        raise FileNotFoundError(f"{BACKBONES_FILE} is missing beside {Path(__file__).name}: cannot save a model with a backbone.")
    for file in get_relative_import_files(str(entry)):
        shutil.copyfile(file, Path(save_directory) / Path(file).name)
    text, cls = entry.read_text(encoding="utf-8"), type(model)
    head = text[: text.index(BACKBONES_MARKER) + len(BACKBONES_MARKER)]  # a re-saved copy drops the line written before
    line = f"from .{cls.__module__.rsplit('.', 1)[-1]} import {cls.__name__}  # noqa: F401\n"
    (Path(save_directory) / BACKBONES_FILE).write_text(head + "\n" + line, encoding="utf-8")
    config_file = Path(save_directory) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.setdefault("auto_map", {})["AutoModel"] = f"{entry.stem}.{cls.__name__}"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class QGFDHubMixin:
    """`save_pretrained` and `push_to_hub` of the QGFD diffusion models."""

    # The tokenizer / processor that prepares this model's data; the factory attaches it, and
    # `save_pretrained` writes it beside the weights so `from_pretrained` users and the
    # pipeline find it. A plain attribute: never part of the state dict.
    processor = None

    def save_pretrained(self, save_directory, *args, processor=None, training_info: Optional[Mapping] = None, model_card: bool = True, **kwargs):
        """Save the model as transformers does (`config.json`, `model.safetensors`, and this
        package's code for `trust_remote_code`), plus its tokenizer or processor, the pipeline's
        code and a model card `README.md`.

        Args:
            save_directory: the folder.
            processor (*optional*): the tokenizer / processor to save; defaults to `self.processor`.
            training_info (`dict`, *optional*): what training recorded (data, steps, metrics) for the card.
            model_card (`bool`, defaults to `True`): write `README.md`.
            **kwargs: passed to `PreTrainedModel.save_pretrained`; `push_to_hub=True` uploads with
                `push_to_hub` once every file above is written (`repo_id` defaults to the folder's name).
        """
        push = kwargs.pop("push_to_hub", False)
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "private", "token", "revision", "create_pr") if k in kwargs}
        # The pipeline travels with the code: where qgfd_hf is not installed,
        # `pipeline(model=dir, trust_remote_code=True)` reads this entry (the installed config
        # class drops it on load, see QGFDConfig). A copy of this code without the pipeline's
        # file (loaded with trust_remote_code, never used with a pipeline) saves no entry.
        pipeline_file = Path(__file__).with_name(PIPELINE_FILE)
        if pipeline_file.is_file():
            impl = f"{pipeline_file.stem}.{PIPELINE_CLASS}"
            self.config.custom_pipelines = {PIPELINE_TASK: {"impl": impl, "pt": ["AutoModel"], "type": "multimodal"}}
        # The latent lengths these weights were trained for: loading refuses a config.json whose
        # fields give other ones (QGFDConfig._check_saved_latent_tokens); the config drops it on load.
        self.config.saved_latent_tokens = self.config.latent_token_counts()
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.__dict__.pop("custom_pipelines", None)
            del self.config.saved_latent_tokens
        if not kwargs.get("is_main_process", True):
            return
        if pipeline_file.is_file():
            shutil.copy(pipeline_file, Path(save_directory) / PIPELINE_FILE)  # its relative imports travel with the model's
        if uses_transformers_backbone(self.config):
            _save_backbones_entry(self, save_directory)
        processor = processor if processor is not None else self.processor
        if processor is not None:
            processor.save_pretrained(save_directory)
        if model_card:
            try:
                # Imported by name, not `from .modelcard_qgfd import`: transformers copies every file a
                # model file imports relatively, and a saved folder needs no model card code.
                save_model_card = importlib.import_module(".modelcard_qgfd", __package__).save_model_card
                save_model_card(self, save_directory, training_info=training_info)
            except (FileNotFoundError, ModuleNotFoundError) as err:  # a trust_remote_code copy has no template
                logger.warning(f"No model card written: {err}")
        if push:
            repo_id = hub_kwargs.pop("repo_id", Path(save_directory).resolve().name)
            self.push_to_hub(repo_id, training_info=training_info, **hub_kwargs)

    def push_to_hub(self, repo_id: str, *, training_info: Optional[Mapping] = None, **kwargs):
        """Upload the saved model (code, weights, tokenizer / processor) and its model card in one
        commit. `transformers`' own `push_to_hub` would replace the card with a generic one.
        Keyword arguments: those of `qgfd_hf.push_to_hub_with_card` (`private`, `token`,
        `revision`, `commit_message`, `create_pr`, ...)."""
        push_to_hub_with_card = importlib.import_module(".modelcard_qgfd", __package__).push_to_hub_with_card  # see save_pretrained
        return push_to_hub_with_card(self, repo_id, training_info=training_info, **kwargs)
