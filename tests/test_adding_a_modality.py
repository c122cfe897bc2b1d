"""A new modality is three new files and nothing else edited (docs/architecture.md, "Adding a modality").

The package is copied into a temporary folder, "points" (N points in 3-D, built on the base classes)
is added there as `configuration_qgfd_points.py`, `modeling_qgfd_points.py` and
`tasks/points.py`, and a fresh process that imports the copy must find it everywhere a modality is
listed: `MODALITIES`, the public names, `AutoConfig` / `AutoModel`, the factory, the model card and
the command line's tasks. Its saved folder must then load and sample with `trust_remote_code` where
qgfd_hf cannot be imported.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers_subprocess import run_without_qgfd_hf

REPO_ROOT = Path(__file__).resolve().parent.parent

NEW_FILES = {
    "configuration_qgfd_points.py": '''
        """Configuration of the points model (a test's modality): N points in 3-D, one latent token each."""
        from .configuration_qgfd import QGFDConfig, _check_int


        class QGFDPointsConfig(QGFDConfig):
            model_type = "qgfd_points"
            _fixed_modality = "points"

            def __init__(self, num_points: int = 4, **kwargs):
                self.num_points = num_points
                kwargs.setdefault("latent_dim", 3)
                super().__init__(**kwargs)

            def _validate_modality(self):
                _check_int("num_points", self.num_points)

            def num_latent_tokens(self) -> int:
                return self.num_points


        QGFDPointsConfig.register_for_auto_class()

        __all__ = ["QGFDPointsConfig"]
    ''',
    "modeling_qgfd_points.py": '''
        """The points model (a test's modality): latents are the coordinates times latent_scale."""
        from .configuration_qgfd_points import QGFDPointsConfig
        from .modeling_qgfd import QGFDPreTrainedModel, register_model_class
        from .modeling_qgfd_adapters import ADAPTERS, _get, _ModalityAdapter, build_denoiser


        class PointsAdapter(_ModalityAdapter):
            modality = "points"

            def data_to_latents(self, batch):
                return _get(batch, "points", self.modality) * self.modality_config.latent_scale  # (B, N, 3)

            def decode_latents(self, latents):
                return latents / self.modality_config.latent_scale


        class PointsQGFDDiffusionModel(QGFDPreTrainedModel):
            config_class = QGFDPointsConfig
            main_input_name = "points"

            def __init__(self, config):
                super().__init__(config)
                self.adapter = PointsAdapter(config)
                self.backbone = build_denoiser(config)
                self.build_condition_embeddings()
                self.post_init()

            @staticmethod
            def outputs_from_data(config, data, output_type="data", tokenizer=None):
                return [{"np": x.numpy()} if output_type == "np" else {"points": x} for x in data.float()]


        ADAPTERS["points"] = PointsAdapter
        register_model_class(PointsQGFDDiffusionModel)

        __all__ = ["PointsAdapter", "PointsQGFDDiffusionModel"]
    ''',
    "tasks/points.py": '''
        """The points task (a test's modality): its name is all the command line needs to list it."""
        from .base import ModalityTask, register_task


        @register_task
        class PointsTask(ModalityTask):
            name = "points"
    ''',
}

CHECK = """
import json
import torch
from transformers import AutoConfig, AutoModel
import qgfd_hf
from qgfd_hf import DiffusionConfig, create_qgfd_diffusion_model
from qgfd_hf.modelcard_qgfd import render_model_card
from qgfd_hf.tasks import get_task, task_names

assert qgfd_hf.__file__.startswith({pkg!r}), qgfd_hf.__file__
config = AutoConfig.for_model("qgfd_points", num_points=5, d_model=32, num_heads=4, num_layers=1, d_ff=32)
model = AutoModel.from_config(config)
built, _, _ = create_qgfd_diffusion_model("points", None, DiffusionConfig(d_model=32, num_heads=4, num_layers=1, d_ff=32, latent_dim=3))
model.save_pretrained({folder!r})
print(json.dumps({{
    "modalities": list(qgfd_hf.MODALITIES),
    "exports": [n for n in ("QGFDPointsConfig", "PointsAdapter", "PointsQGFDDiffusionModel") if n in qgfd_hf.__all__],
    "config": type(config).__name__,
    "model": type(model).__name__,
    "factory": type(built).__name__,
    "loss": float(model(points=torch.randn(4, 5, 3)).loss),
    "card": "pipeline_tag: other" in render_model_card(model),
    "tasks": task_names(),
    "task": type(get_task("points")).__name__,
    "auto_map": json.load(open({folder!r} + "/config.json"))["auto_map"],
}}))
"""


def test_a_new_modality_is_three_files(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(REPO_ROOT / "qgfd_hf", pkg / "qgfd_hf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "model_cards", pkg / "model_cards")
    for name, text in NEW_FILES.items():
        (pkg / "qgfd_hf" / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    folder = tmp_path / "saved"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHECK.format(pkg=str(pkg), folder=str(folder))], cwd=pkg, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:][:3000]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modalities"] == ["audio", "image", "points", "tabular", "text", "video"]
    assert out["exports"] == ["QGFDPointsConfig", "PointsAdapter", "PointsQGFDDiffusionModel"]
    assert (out["config"], out["model"], out["factory"]) == ("QGFDPointsConfig", "PointsQGFDDiffusionModel", "PointsQGFDDiffusionModel")
    assert out["loss"] > 0 and out["card"]
    assert "points" in out["tasks"] and out["task"] == "PointsTask"
    assert out["auto_map"]["AutoModel"] == "modeling_qgfd_points.PointsQGFDDiffusionModel"

    # Its folder travels without qgfd_hf: the model's files and the pipeline's, by their relative imports.
    assert {"configuration_qgfd_points.py", "modeling_qgfd_points.py"} <= {p.name for p in folder.glob("*.py")}
    printed = run_without_qgfd_hf(f"""
        from transformers import pipeline
        pipe = pipeline(model={str(folder)!r}, trust_remote_code=True, device="cpu")
        out = pipe(num_samples=2, num_inference_steps=2)
        print(type(pipe.model).__name__, len(out), tuple(out[0]["points"].shape))
    """)
    assert printed.strip().splitlines()[-1] == "PointsQGFDDiffusionModel 2 (5, 3)"
