"""What qgfd_hf registers with transformers (the configs at `import qgfd_hf`, the models and the pipeline
with the first QGFD config) is there in every import order, through public API only; the attention implementation "qgfd" and the wrappers of transformers methods come only with the first
request for QGFD (`register_qgfd_attention`, `patch_model`, ...).

Each case runs in a fresh process (the test process has imported everything already): a prelude
that imports qgfd_hf and transformers' modules in some order, then `CHECK`, which prints what is
registered and wrapped after the import and a first QGFD config, and again after
`qgfd_hf.register_qgfd_attention()`.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_fresh(code: str, timeout: float = 600) -> str:
    """Run `code` in a fresh interpreter from the repository root (so it imports this checkout's qgfd_hf)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    return proc.stdout


# What is registered and wrapped, as one JSON line (only reads; it imports the modules it looks at).
CHECK = """
import json, sys
from transformers import AttentionInterface, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.pipelines import PIPELINE_REGISTRY
import qgfd_hf

config = CONFIG_MAPPING["qgfd_image"](latent_space="pixels", image_size=8, patch_size=2, num_channels=1, d_model=32, num_heads=4, num_layers=1, d_ff=32)
from transformers import AutoModel
model_class = type(AutoModel.from_config(config)).__name__

def wrapped_by(fn):
    return getattr(getattr(fn, "__code__", None), "co_filename", "").rsplit("/", 1)[-1]

types = ["qgfd", "qgfd_text", "qgfd_image", "qgfd_audio", "qgfd_video", "qgfd_tabular", "qgfd_shared"]

def state():
    return {
        "attention": "qgfd" in AttentionInterface().valid_keys(),
        "mask": "qgfd" in ALL_MASK_ATTENTION_FUNCTIONS.valid_keys(),
        "configs": all(t in CONFIG_MAPPING for t in types),
        "model": model_class,
        "models": sorted(MODEL_MAPPING[CONFIG_MAPPING[t]].__name__ for t in types[1:]),
        "pipeline": "qgfd-diffusion" in PIPELINE_REGISTRY.get_supported_tasks(),
        "model_hooks": sorted({wrapped_by(getattr(PreTrainedModel, n)) for n in
                               ("post_init", "set_attn_implementation", "get_correct_attn_implementation", "_initialize_weights")}),
        "config_hooks": sorted({wrapped_by(PreTrainedConfig.to_dict), wrapped_by(PreTrainedConfig.validate_output_attentions),
                                wrapped_by(PreTrainedConfig.output_attentions.fset)}),
        "patching_imported": any(m.startswith("qgfd_hf.patching") for m in sys.modules),
    }

imported = state()
qgfd_hf.register_qgfd_attention()
print(json.dumps({"import": imported, "registered": state()}))
"""

AUTO = {
    "configs": True,
    "model": "ImageQGFDDiffusionModel",
    "models": sorted(f"{m}QGFDDiffusionModel" for m in ("Text", "Image", "Audio", "Video", "Tabular", "Shared")),
    "pipeline": True,
}
EXPECTED = {
    # `import qgfd_hf` and a first QGFD config: the Auto classes and the pipeline; transformers' methods as
    # transformers wrote them.
    "import": dict(AUTO, attention=False, mask=False, model_hooks=["modeling_utils.py"], config_hooks=["configuration_utils.py"],
                   patching_imported=False),
    # `register_qgfd_attention()`: "qgfd" and its mask function, and the wrappers.
    "registered": dict(AUTO, attention=True, mask=True, model_hooks=["patching_hooks_qgfd.py"], config_hooks=["patching_hooks_qgfd.py"],
                       patching_imported=True),
}

ORDERS = {
    "qgfd_hf first": "import qgfd_hf",
    "after modeling_utils": "import transformers.modeling_utils\nimport qgfd_hf",
    "after AutoModel": "from transformers import AutoModel\nimport qgfd_hf",
    "after a model class": "from transformers import T5Model\nimport qgfd_hf",
    # transformers.pipelines imports modeling_auto halfway through its __init__: the models'
    # registration (which imports Pipeline from it) must wait until it has finished.
    "then pipeline": "import qgfd_hf\nfrom transformers import pipeline",
    "after masking_utils, a name first": "import transformers.masking_utils\nfrom qgfd_hf import QGFDConfig",
    "two threads": """
        import threading, qgfd_hf
        threads = [threading.Thread(target=__import__, args=(m,)) for m in ("transformers.pipelines", "transformers.models.t5.modeling_t5")]
        [t.start() for t in threads]
        [t.join() for t in threads]
    """,
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_every_import_order_registers_everything_and_qgfd_only_when_asked(order):
    out = run_fresh(textwrap.dedent(ORDERS[order]) + CHECK)
    assert json.loads(out.strip().splitlines()[-1]) == EXPECTED


def test_import_adds_no_import_hook_and_leaves_lazy_auto_mapping_alone():
    """`import qgfd_hf` registers through transformers' public API only: no `sys.meta_path` entry, no
    wrapped method of transformers' private `_LazyAutoMapping`, no wrapped transformers method; the
    Auto classes and the pipeline are registered once a QGFD config exists; transformers refuses
    "qgfd" loudly until it is registered."""
    out = run_fresh("""
        import json, sys
        from transformers import BertConfig, BertModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
        from transformers.models.auto.auto_factory import _LazyAutoMapping
        finders = list(sys.meta_path)
        mapping = dict(vars(_LazyAutoMapping))
        classes = (PreTrainedModel, PreTrainedConfig, GenerationMixin)
        methods = [dict(vars(c)) for c in classes]
        import qgfd_hf
        from transformers import AttentionInterface
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_MAPPING
        qgfd_hf.QGFDTabularConfig(num_features=3, d_model=32, num_heads=4, num_layers=1, d_ff=32)  # registers the models
        from transformers.pipelines import PIPELINE_REGISTRY
        print(json.dumps({
            "new_finders": [repr(f) for f in sys.meta_path if f not in finders and
                            getattr(f, "__module__", type(f).__module__).startswith("qgfd_hf")],
            "changed": sorted(k for k, v in vars(_LazyAutoMapping).items() if mapping.get(k) is not v),
            "registered": ["qgfd" in AttentionInterface().valid_keys(), "qgfd_video" in CONFIG_MAPPING,
                           "qgfd-diffusion" in PIPELINE_REGISTRY.get_supported_tasks(),
                           MODEL_MAPPING[CONFIG_MAPPING["qgfd_video"]].__name__],
            "transformers_changed": sorted(f"{c.__name__}.{k}" for c, before in zip(classes, methods)
                                           for k, v in vars(c).items() if before.get(k) is not v),
        }))
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
        try:
            BertModel(config).set_attn_implementation("qgfd")
        except ValueError as e:
            print("refused:", 'attn_implementation="qgfd"' in str(e))
        qgfd_hf.register_qgfd_attention()
        model = BertModel(config)
        model.set_attn_implementation("qgfd")
        print("after register_qgfd_attention:", qgfd_hf.is_qgfd_patched(model))
    """)
    got = json.loads(out.strip().splitlines()[-3])
    assert got["new_finders"] == []
    assert got["changed"] == []
    assert got["registered"] == [False, True, True, "VideoQGFDDiffusionModel"]
    assert got["transformers_changed"] == []
    assert out.strip().splitlines()[-2:] == ["refused: True", "after register_qgfd_attention: True"]


def test_public_names_resolve_lazily():
    import qgfd_hf

    assert len(qgfd_hf.__all__) == len(set(qgfd_hf.__all__))
    assert {"patch_model", "QGFDConfig", "create_qgfd_diffusion_model", "value_checks", "classifier_free_guidance"} <= set(qgfd_hf.__all__)
    for name in qgfd_hf.__all__:
        assert getattr(qgfd_hf, name) is not None, name
    assert set(qgfd_hf.__all__) <= set(dir(qgfd_hf))
    assert qgfd_hf.training.QGFDTrainingArguments  # a subpackage, imported on first use
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        qgfd_hf.not_a_name


@pytest.mark.slow
def test_a_saved_folder_loads_and_samples_with_transformers_imported_first(tmp_path):
    import torch

    from qgfd_hf import DiffusionConfig, create_qgfd_diffusion_model

    torch.manual_seed(0)
    model, _, _ = create_qgfd_diffusion_model("image", None, DiffusionConfig.from_preset("tiny", latent_dim=4),
                                              image_size=8, patch_size=2, num_channels=1)
    model.save_pretrained(tmp_path / "model")
    out = run_fresh(f"""
        from transformers import AutoModel, AutoModelForSeq2SeqLM, T5Config, pipeline
        import qgfd_hf
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r})
        print(type(model).__module__, type(model).__name__)
        out = pipeline("qgfd-diffusion", model={str(tmp_path / "model")!r}, device="cpu")(num_samples=2, seed=0, num_inference_steps=2, progress_bar=False)
        print(out[0]["image"].size)
        config = T5Config(d_model=8, d_kv=2, d_ff=8, num_layers=1, num_decoder_layers=1, num_heads=4, vocab_size=10)
        AutoModelForSeq2SeqLM.from_config(config).save_pretrained({str(tmp_path / "t5")!r})
        qgfd_hf.register_qgfd_attention()  # transformers' own route to "qgfd"
        t5 = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / "t5")!r}, attn_implementation="qgfd")
        print(qgfd_hf.is_qgfd_patched(t5))
    """)
    assert out.strip().splitlines()[-3:] == ["qgfd_hf.modeling_qgfd_image ImageQGFDDiffusionModel", "(8, 8)", "True"]


# The transformers methods qgfd_hf wraps for QGFD-patched transformers models (patching_hooks_qgfd):
# a model that patches none must leave them as they are.
WRAPPED = {
    "PreTrainedModel": ("post_init", "set_attn_implementation", "_initialize_weights", "get_correct_attn_implementation"),
    "PreTrainedConfig": ("to_dict", "validate_output_attentions"),
    "GenerationMixin": ("_prepare_cache_for_generation",),
}


def test_loading_a_saved_pixel_model_with_remote_code_leaves_transformers_alone(tmp_path):
    """A pixel-space image model contains no transformers model: loading it with trust_remote_code
    where qgfd_hf cannot be imported, and sampling it, must not wrap any transformers method."""
    from helpers_subprocess import run_without_qgfd_hf

    from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig

    config = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, d_model=32,
                             num_heads=4, num_layers=1, d_ff=32)
    ImageQGFDDiffusionModel(config).save_pretrained(tmp_path / "model")
    out = run_without_qgfd_hf(f"""
        import json, torch, transformers
        from transformers import AutoModel, GenerationMixin, PreTrainedConfig, PreTrainedModel
        owners = dict(PreTrainedModel=PreTrainedModel, PreTrainedConfig=PreTrainedConfig, GenerationMixin=GenerationMixin)
        wrapped = {json.dumps(WRAPPED)}
        def methods():
            return {{f"{{o}}.{{n}}": owners[o].__dict__[n] for o, names in wrapped.items() for n in names}}
        before = methods()
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            model.diffusion_sample(num_samples=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        after = methods()
        print(json.dumps(dict(module=type(model).__module__,
                              changed=sorted(k for k in before if before[k] is not after[k]),
                              patching=sorted(m for m in __import__("sys").modules if m.rsplit(".", 1)[-1].startswith("patching_")))))
    """)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.")
    assert result["changed"] == [], f"loading a pixel model wrapped {result['changed']}"
    assert result["patching"] == []


def test_a_remote_code_model_with_a_transformers_encoder_still_gets_qgfd(tmp_path):
    """The other side: a model that builds a QGFD-patched transformers encoder (ViT latents with
    `backbone_qgfd`) imports the patching code when it builds it, and runs QGFD there."""
    from helpers_subprocess import run_without_qgfd_hf

    from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig

    vit = dict(model_type="vit", image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=32)
    config = QGFDImageConfig(latent_space="vit", backbone_config=vit, backbone_qgfd={"steps": 1, "alpha": 0.5},
                             normalization_fitted=False, d_model=32, num_heads=4, num_layers=1, d_ff=32)
    ImageQGFDDiffusionModel(config).save_pretrained(tmp_path / "model")
    out = run_without_qgfd_hf(f"""
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        encoder = model.adapter.encoder
        print(encoder.config._attn_implementation)
    """)
    assert out.split()[-1] == "qgfd"


def test_import_registers_the_configs_and_the_first_config_registers_the_models_and_the_pipeline(tmp_path):
    """`import qgfd_hf` imports neither transformers' modeling_utils nor its pipelines (2 s); the first
    QGFD config made registers the models and the pipeline, so every Auto route finds them: a saved
    folder through `AutoModel.from_pretrained` and `pipeline(model=folder)`, without trust_remote_code."""
    out = run_fresh(f"""
        import json, sys
        import qgfd_hf
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        lazy = {{"modeling_utils": "transformers.modeling_utils" in sys.modules,
                 "pipelines": "transformers.pipelines" in sys.modules,
                 "models_registered": sys.modules["qgfd_hf.registration_qgfd"]._models_registered,
                 "config": CONFIG_MAPPING["qgfd_tabular"].__name__}}
        config = qgfd_hf.QGFDTabularConfig(num_features=3, d_model=32, num_heads=4, num_layers=1, d_ff=32)
        model = qgfd_hf.TabularQGFDDiffusionModel(config)
        model.save_pretrained({str(tmp_path)!r})
        print(json.dumps(lazy))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == {
        "modeling_utils": False, "pipelines": False, "models_registered": False, "config": "QGFDTabularConfig"}
    out = run_fresh(f"""
        import json
        import qgfd_hf
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(tmp_path)!r})
        pipe = pipeline("qgfd-diffusion", model={str(tmp_path)!r})
        print(json.dumps([type(model).__name__, type(pipe).__name__, type(pipe.model).__name__]))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == ["TabularQGFDDiffusionModel", "QGFDDiffusionPipeline", "TabularQGFDDiffusionModel"]


def test_an_unpickled_model_registers_the_models_and_the_pipeline(tmp_path):
    """Unpickling skips `__init__` (`torch.load` of a whole model, spawned workers): the config's
    `__setstate__` registers, so the pipeline and the Auto classes know the model in a new process."""
    path = tmp_path / "model.pt"
    run_fresh(f"""
        import torch, qgfd_hf
        config = qgfd_hf.QGFDTabularConfig(num_features=3, d_model=32, num_heads=4, num_layers=1, d_ff=32)
        torch.save(qgfd_hf.TabularQGFDDiffusionModel(config), {str(path)!r})
    """)
    out = run_fresh(f"""
        import json, sys, torch
        import qgfd_hf
        from transformers import AutoModel, pipeline
        model = torch.load({str(path)!r}, weights_only=False)
        pipe = pipeline("qgfd-diffusion", model=model)
        again = AutoModel.from_config(model.config)
        print(json.dumps([type(pipe).__name__, type(again).__name__]))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == ["QGFDDiffusionPipeline", "TabularQGFDDiffusionModel"]


def test_two_threads_making_their_first_configs_both_find_the_models():
    """The thread that registers holds a lock while it imports; another thread's first config waits
    for it instead of returning with the models not yet registered."""
    out = run_fresh("""
        import json, threading
        import qgfd_hf
        from transformers import AutoModel
        results, errors = [], []
        def build(n):
            try:
                config = qgfd_hf.QGFDTabularConfig(num_features=n, d_model=32, num_heads=4, num_layers=1, d_ff=32)
                results.append(type(AutoModel.from_config(config)).__name__)
            except Exception as e:  # the race: "Unrecognized configuration class"
                errors.append(repr(e))
        threads = [threading.Thread(target=build, args=(n,)) for n in (3, 4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(json.dumps({"results": results, "errors": errors}))
    """)
    assert json.loads(out.strip().splitlines()[-1]) == {"results": ["TabularQGFDDiffusionModel"] * 2, "errors": []}
