"""qgfd_hf.modelcard_qgfd: README.md cards rendered from model_cards/qgfd_diffusion.md.

The QGFD config classes live in another issue; a small stand-in config with the same
attribute names is enough here, as render_model_card reads the config by duck typing.
"""

import re

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from transformers import PretrainedConfig, PreTrainedModel

from hub_server import HUB_PIPELINE_TAGS
from qgfd_hf import ALL_MODALITIES as MODALITIES
from qgfd_hf.modelcard_qgfd import (
    pipeline_tag_for,
    hub_base_model,
    push_to_hub_with_card,
    render_model_card,
    save_model_card,
    template_path,
)


class StandInConfig(PretrainedConfig):
    model_type = "qgfd_standin"

    def __init__(
        self, modality="text", backbone_name=None, qgfd_steps=2, qgfd_alpha=0.5, qgfd_graph="attention",
        qgfd_mix="seed", key_temperature=1.0, num_timesteps=1000, beta_schedule="linear",
        prediction_type="epsilon", d_model=32, num_layers=2, num_heads=4, latent_dim=16, **kwargs,
    ):
        self.modality, self.backbone_name = modality, backbone_name
        self.qgfd_steps, self.qgfd_alpha, self.qgfd_graph = qgfd_steps, qgfd_alpha, qgfd_graph
        self.qgfd_mix, self.key_temperature = qgfd_mix, key_temperature
        self.num_timesteps, self.beta_schedule, self.prediction_type = num_timesteps, beta_schedule, prediction_type
        self.d_model, self.num_layers, self.num_heads, self.latent_dim = d_model, num_layers, num_heads, latent_dim
        super().__init__(**kwargs)


class StandInModel(PreTrainedModel):
    config_class = StandInConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.d_model, config.d_model)
        self.post_init()

    def forward(self, x):
        return self.proj(x)


def front_matter(text):
    m = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert m, "the card must open with a YAML block"
    return m.group(1)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("conditional", [None, True, False])
def test_metadata_parses_round_trips_and_uses_hub_tasks(modality, conditional):
    config = StandInConfig(modality=modality)
    if conditional is not None:
        config.conditional = conditional
    text = render_model_card(config, repo_id="user/qgfd-model")

    data = ModelCard(text).data  # huggingface_hub's own parser
    expected_conditional = (modality == "text") if conditional is None else conditional
    assert data.library_name == "qgfd_hf"
    assert data.pipeline_tag == pipeline_tag_for(modality, expected_conditional)
    assert data.pipeline_tag in HUB_PIPELINE_TAGS
    assert data.tags == ["qgfd", "diffusion", modality]
    assert data.license == "apache-2.0"
    assert data.base_model is None and data.datasets is None

    block = front_matter(text)
    assert yaml.safe_load(block) == data.to_dict()
    assert ModelCardData(**yaml.safe_load(block)).to_yaml() == block
    assert "${" not in text and "$" not in text.replace("$$", "")


def test_pipeline_tags_are_the_honest_ones():
    assert pipeline_tag_for("text", True) == "text2text-generation"
    assert pipeline_tag_for("text", False) == "text-generation"
    assert pipeline_tag_for("image", False) == "unconditional-image-generation"
    assert pipeline_tag_for("image", True) == "text-to-image"
    assert pipeline_tag_for("audio", True) == "text-to-audio"
    assert pipeline_tag_for("video", True) == "text-to-video"
    # No Hub task for unconditional audio/video, for generating table rows, or for a shared denoiser.
    for key in [("audio", False), ("video", False), ("tabular", True), ("tabular", False), ("shared", True)]:
        assert pipeline_tag_for(*key) == "other"
    assert {pipeline_tag_for(m, c) for m in MODALITIES for c in (True, False)} <= HUB_PIPELINE_TAGS


def test_base_model_only_for_a_hub_backbone(tmp_path, monkeypatch):
    assert hub_base_model("google-t5/t5-small") == "google-t5/t5-small"
    assert hub_base_model("t5-small") == "t5-small"
    assert hub_base_model(None) is None
    assert hub_base_model(str(tmp_path)) is None  # an existing folder
    assert hub_base_model("/no/such/folder") is None  # a path, not a Hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "tiny_t5").mkdir(parents=True)
    assert hub_base_model("models/tiny_t5") is None  # looks like an id, but it is a local folder
    assert hub_base_model(StandInConfig()) is None  # a config object
    assert hub_base_model(["google-t5/t5-small", "/local/vit"]) == ["google-t5/t5-small"]

    hub_card = render_model_card(StandInConfig(backbone_name="google-t5/t5-small"))
    assert ModelCard(hub_card).data.base_model == "google-t5/t5-small"
    assert "https://huggingface.co/google-t5/t5-small" in hub_card
    local_card = render_model_card(StandInConfig(backbone_name=str(tmp_path)))
    assert "base_model" not in front_matter(local_card)
    assert f"folder `{tmp_path}`" in local_card


def test_settings_tables_show_the_config_and_leave_out_what_it_lacks():
    config = StandInConfig(modality="image", qgfd_steps=3, qgfd_graph="keys", beta_schedule="cosine")
    config.qgfd_warmup_steps = 100  # any other qgfd_* setting is listed too
    del config.latent_dim
    text = render_model_card(config)
    assert "| `qgfd_steps` | `3` |" in text
    assert '| `qgfd_graph` | `"keys"` |' in text
    assert '| `beta_schedule` | `"cosine"` |' in text
    assert "| `qgfd_warmup_steps` | `100` |" in text
    assert "`latent_dim`" not in text.split("<details>")[0]

    bare = PretrainedConfig()
    bare.modality = "tabular"
    text = render_model_card(bare)
    assert text.count("Not recorded in this model's config.") == 3
    assert ModelCard(text).data.pipeline_tag == "other"


def test_training_section_only_when_training_recorded_something():
    config = StandInConfig()
    for info in (None, {}, {"datasets": [], "metrics": {}}):
        assert "## Training" not in render_model_card(config, training_info=info)

    text = render_model_card(
        config,
        training_info={"datasets": ["wmt/wmt16", "/data/pairs.jsonl"], "metrics": {"eval_loss": 0.25}, "steps": 2000},
    )
    assert "## Training" in text and "`/data/pairs.jsonl`" in text
    assert "| `eval_loss` | `0.25` |" in text and "| `steps` | `2000` |" in text
    assert ModelCard(text).data.datasets == ["wmt/wmt16"]  # only Hub ids go into the metadata


def test_usage_code_is_valid_python_and_names_the_repo():
    text = render_model_card(StandInConfig(modality="text"), repo_id="user/qgfd-text")
    assert 'pipeline("qgfd-diffusion", model="user/qgfd-text")' in text
    assert 'AutoModel.from_pretrained("user/qgfd-text")' in text
    assert 'trust_remote_code=True' in text
    assert 'pipe("a conditioning text"' in text
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        compile(block, "<card>", "exec")
    assert text.splitlines().count("# qgfd-text") == 1

    unconditional = render_model_card(StandInConfig(modality="image", num_timesteps=20))
    assert "pipe(num_samples=4, num_inference_steps=20" in unconditional
    assert "# QGFD image diffusion model" in unconditional


def test_bad_configs_get_a_clear_value_error():
    no_modality = PretrainedConfig()
    with pytest.raises(ValueError, match="no `modality`"):
        render_model_card(no_modality)
    with pytest.raises(ValueError, match=r"Unknown modality 'speech'.*audio, image, tabular, text, video, shared"):
        render_model_card(StandInConfig(modality="speech"))
    config = StandInConfig()
    config.conditional = "yes"
    with pytest.raises(ValueError, match="must be a bool"):
        render_model_card(config)
    with pytest.raises(ValueError, match="must be a mapping"):
        render_model_card(StandInConfig(), training_info=["steps", 10])


def test_a_model_renders_like_its_config_and_save_writes_readme(tmp_path):
    model = StandInModel(StandInConfig(modality="audio"))
    assert render_model_card(model) == render_model_card(model.config)
    path = save_model_card(model, tmp_path, repo_id="user/qgfd-audio")
    assert path == tmp_path / "README.md"
    assert ModelCard.load(path).data.pipeline_tag == "other"


def test_template_lives_in_model_cards():
    path = template_path()
    assert path.name == "qgfd_diffusion.md" and path.parent.name == "model_cards"
    with pytest.raises(FileNotFoundError, match="looked in"):
        template_path("no_such_template.md")


def test_push_to_hub_with_card_keeps_the_card_that_transformers_push_would_replace(hub):
    model = StandInModel(StandInConfig(modality="image", backbone_name="google/vit-base-patch16-224"))

    # transformers' own push_to_hub swaps README.md for a generic card (the reason for the helper):
    class WritesCard(StandInModel):
        def save_pretrained(self, save_directory, **kwargs):
            super().save_pretrained(save_directory, **kwargs)
            save_model_card(self, save_directory)

    WritesCard(model.config).push_to_hub("user/plain")
    assert ModelCard(hub.read_file("user/plain", "README.md").decode()).data.library_name == "transformers"

    commit = push_to_hub_with_card(model, "user/qgfd-image", training_info={"steps": 10}, tags=["demo"])
    card = ModelCard(hub.read_file("user/qgfd-image", "README.md").decode())
    assert card.data.library_name == "qgfd_hf"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert card.data.tags == ["qgfd", "diffusion", "image", "demo"]
    assert 'model="user/qgfd-image"' in card.text and "## Training" in card.text
    assert hub.list_files("user/qgfd-image") == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert hub.list_commits("user/qgfd-image") == ["Upload StandInModel", "initial commit"]
    assert commit.oid == HfApi().repo_info("user/qgfd-image").sha

    loaded = StandInModel.from_pretrained("user/qgfd-image")
    torch.testing.assert_close(loaded.proj.weight, model.proj.weight)


def test_the_cards_usage_comment_states_what_the_pipeline_returns():
    """The usage line's comment names the keys the pipeline really returns (issue 12: the text card
    said strings; the pipeline returns {"generated_text": ...})."""
    from test_pipeline_qgfd_diffusion import image_model, make_pipe, text_model
    from test_modeling_qgfd import make_tokenizer

    text, image = text_model(), image_model()
    out_text = make_pipe(text, tokenizer=make_tokenizer())("a b", num_inference_steps=2, progress_bar=False, seed=0)
    out_image = make_pipe(image)(num_samples=1, num_inference_steps=2, progress_bar=False, seed=0)
    for model, out in ((text, out_text), (image, out_image)):
        card = render_model_card(model)
        usage = next(line for line in card.splitlines() if " = pipe(" in line)
        for key in out[0]:
            assert f'"{key}"' in usage, (key, usage)


def test_save_pretrained_with_push_to_hub_uploads_the_complete_folder(hub, tmp_path):
    """`save_pretrained(dir, push_to_hub=True)` uploads after the card, the pipeline's code (and, for
    a backbone model, the rewritten auto_map) are written: transformers' own upload comes before
    them and would publish a generic card and no pipeline."""
    import os

    from test_pipeline_qgfd_diffusion import image_model

    folder = tmp_path / "qgfd-pixels"
    image_model().save_pretrained(folder, push_to_hub=True, repo_id="user/qgfd-pixels")
    files = hub.list_files("user/qgfd-pixels")
    assert set(os.listdir(folder)) <= set(files), sorted(set(os.listdir(folder)) - set(files))
    assert "pipeline_qgfd_diffusion.py" in files
    assert ModelCard(hub.read_file("user/qgfd-pixels", "README.md").decode()).data.library_name == "qgfd_hf"
    assert len(hub.list_commits("user/qgfd-pixels")) == 2  # one upload, after the initial commit
