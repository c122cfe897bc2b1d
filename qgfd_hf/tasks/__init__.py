# coding=utf-8
"""The training side of each modality: one `ModalityTask` per file.

`base.py` holds `ModalityTask`, `TaskData` and the registry; every other module here is one
modality (`image.py`, `text.py`, `audio.py`, `video.py`, `tabular.py`) whose task class registers
itself with `@register_task`. A new modality is one new file here; `task_names()` finds it
without importing it and `get_task(name)` imports it. Datasets and loaders live in
`qgfd_hf.data`, scores in `qgfd_hf.metrics`.
"""

from .base import ModalityTask, TaskData, get_task, register_task, task_names

__all__ = ["ModalityTask", "TaskData", "get_task", "register_task", "task_names"]
