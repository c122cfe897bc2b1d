"""Tests of the QGFD configurations (qgfd_hf/configuration_qgfd.py)."""

import json

import pytest
import torch
from transformers import AutoConfig, T5Config, ViTConfig, Wav2Vec2Config

import qgfd_hf
from qgfd_hf import (
    QGFD_PRESETS,
    DiffusionConfig,
    QGFDAudioConfig,
    QGFDConfig,
    QGFDDiffusionBackbone,
    QGFDImageConfig,
    QGFDSharedConfig,
    QGFDTabularConfig,
    QGFDTextConfig,
    QGFDVideoConfig,
)
from qgfd_hf.configuration_qgfd import QGFD_PRESET_PARAMS_M

TINY = dict(d_model=32, num_heads=4, num_layers=2, d_ff=64)


def t5():
    return T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)


def vit():
    return ViTConfig(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)


def w2v2():
    return Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
                          conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)


def test_diffusion_config_keeps_the_seed_defaults():
    cfg = DiffusionConfig()
    assert (cfg.d_model, cfg.num_heads, cfg.num_layers, cfg.d_ff, cfg.latent_dim, cfg.num_timesteps, cfg.qgfd_steps) == (
        512, 8, 4, 2048, 512, 1000, 1)
    assert (cfg.beta_schedule, cfg.beta_start, cfg.beta_end, cfg.prediction_type) == ("linear", 1e-4, 2e-2, "epsilon")
    assert cfg.to_dict()["qgfd_alpha"] == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_heads=3), "num_heads"),
        (dict(d_model=0), "d_model"),
        (dict(num_layers=0), "num_layers"),
        (dict(latent_dim=-1), "latent_dim"),
        (dict(num_timesteps=1), "num_timesteps"),
        (dict(dropout=1.0), "dropout"),
        (dict(qgfd_alpha=1.5), "alpha"),
        (dict(qgfd_steps=-1), "steps"),
        (dict(qgfd_graph="nope"), "graph"),
        (dict(qgfd_mix="nope"), "mix"),
        (dict(beta_schedule="exp"), "'linear', 'cosine', 'sqrt'"),
        (dict(beta_start=0.1, beta_end=0.01), "beta_start <= beta_end"),
        (dict(beta_end=1.0), "beta_end"),
        (dict(prediction_type="noise"), "'epsilon', 'sample', 'v'"),
        (dict(time_conditioning="film"), "'adaln', 'add'"),
        (dict(position_embedding="rope"), "'sinusoidal', 'learned', 'none'"),
        (dict(d_model=32.0), "d_model"),
    ],
)
def test_out_of_range_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        QGFDTabularConfig(**{**TINY, **kwargs})


def test_presets_and_their_parameter_counts():
    for name, sizes in QGFD_PRESETS.items():
        cfg = DiffusionConfig.from_preset(name)
        assert cfg.d_model == sizes["d_model"] == cfg.latent_dim
        if name in ("tiny", "small"):  # the big ones are checked by arithmetic below
            n = sum(p.numel() for p in QGFDDiffusionBackbone(cfg).parameters())
            assert round(n / 1e6, 2 if name == "tiny" else 1) == QGFD_PRESET_PARAMS_M[name]
    # Count per block without building: self-attn 4D^2+4D, cross-attn 4D^2+4D, FFN 2 D Dff + D + Dff,
    # adaLN 6D^2+6D, norm_cross 2D.
    for name in ("base", "large"):
        D, Dff, L = QGFD_PRESETS[name]["d_model"], QGFD_PRESETS[name]["d_ff"], QGFD_PRESETS[name]["num_layers"]
        block = 2 * (4 * D * D + 4 * D) + 2 * D * Dff + D + Dff + 6 * D * D + 6 * D + 2 * D
        rest = (D * D + D) * 2 + (256 * D + D + D * D + D) + 2 * D + (2 * D * D + 2 * D)  # in/out proj, time MLP, cond_norm, adaLN_final
        assert round((L * block + rest) / 1e6, 1) == QGFD_PRESET_PARAMS_M[name]
    with pytest.raises(ValueError, match="'tiny'"):
        DiffusionConfig.from_preset("huge")


def test_model_types_are_distinct_and_registered():
    classes = [QGFDConfig, QGFDTextConfig, QGFDImageConfig, QGFDAudioConfig, QGFDVideoConfig, QGFDTabularConfig, QGFDSharedConfig]
    types = [c.model_type for c in classes]
    assert types == ["qgfd", "qgfd_text", "qgfd_image", "qgfd_audio", "qgfd_video", "qgfd_tabular", "qgfd_shared"]
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for cls in classes:
        assert CONFIG_MAPPING[cls.model_type] is cls
    assert type(AutoConfig.for_model("qgfd_tabular", **TINY)) is QGFDTabularConfig


def test_text_config_derives_sizes_from_t5():
    cfg = QGFDTextConfig(backbone_config=t5(), seq_len=8, **TINY)
    assert cfg.modality == "text" and cfg.conditional and cfg.latent_dim == 32 and cfg.pad_token_id == 0
    assert cfg.num_latent_tokens() == 8
    with pytest.raises(ValueError, match="latent_dim`=64 must equal the text encoder's embedding width \\(32\\)"):
        QGFDTextConfig(backbone_config=t5(), latent_dim=64, **TINY)
    with pytest.raises(ValueError, match="needs `backbone_config`"):
        QGFDTextConfig(**TINY)
    with pytest.raises(ValueError, match="seq_len"):
        QGFDTextConfig(backbone_config=t5(), seq_len=0, **TINY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        QGFDTextConfig(backbone_config=t5(), pad_token_id=50, **TINY)
    with pytest.raises(ValueError, match="is for modality 'text'"):
        QGFDTextConfig(backbone_config=t5(), modality="image", **TINY)


def test_image_and_video_configs():
    cfg = QGFDImageConfig(backbone_config=vit(), **TINY)
    assert (cfg.image_size, cfg.patch_size, cfg.num_channels, cfg.latent_dim) == (16, 4, 3, 48)
    assert cfg.num_latent_tokens() == 16 and cfg.image_mean == [0.5] * 3
    pixels = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **TINY)
    assert pixels.latent_dim == 4 and pixels.num_latent_tokens() == 16 and pixels.image_std == [0.5]
    video = QGFDVideoConfig(num_frames=3, backbone_config=vit(), **TINY)
    assert video.num_latent_tokens() == 48 and video.modality == "video"
    with pytest.raises(ValueError, match="disagrees with the ViT"):
        QGFDImageConfig(backbone_config=vit(), image_size=32, **TINY)
    with pytest.raises(ValueError, match="must divide"):
        QGFDImageConfig(latent_space="pixels", image_size=10, patch_size=4, **TINY)
    with pytest.raises(ValueError, match="'vit', 'pixels'"):
        QGFDImageConfig(latent_space="vae", **TINY)
    with pytest.raises(ValueError, match="image_mean"):
        QGFDImageConfig(latent_space="pixels", image_mean=[0.5, 0.5], **TINY)
    with pytest.raises(ValueError, match="image_std"):
        QGFDImageConfig(latent_space="pixels", image_std=[0.5, 0.0, 1.0], **TINY)
    with pytest.raises(ValueError, match="ViT"):
        QGFDImageConfig(backbone_config=t5(), **TINY)
    with pytest.raises(ValueError, match="num_frames"):
        QGFDVideoConfig(num_frames=0, latent_space="pixels", **TINY)
    with pytest.raises(ValueError, match="is for text models.*For class labels pass num_classes"):
        QGFDImageConfig(latent_space="pixels", conditional=True, **TINY)


def test_audio_config_computes_the_frame_count():
    cfg = QGFDAudioConfig(backbone_config=w2v2(), num_samples=400, **TINY)
    # Wav2Vec2's conv stack: (400 - 10) // 5 + 1 = 79, (79 - 4) // 4 + 1 = 19.
    assert cfg.num_latent_tokens() == 19 and cfg.hop_and_receptive_field() == (20, 25)
    with pytest.raises(ValueError, match="receptive field"):
        QGFDAudioConfig(backbone_config=w2v2(), num_samples=20, **TINY)


def test_tabular_config():
    cfg = QGFDTabularConfig(latent_space="mlp", num_features=3, num_tokens=2, feature_names=["a", "b", "c"], **TINY)
    assert cfg.latent_dim == 32 and cfg.num_latent_tokens() == 2
    with pytest.raises(ValueError, match="feature_names"):
        QGFDTabularConfig(num_features=3, feature_names=["a"], **TINY)
    with pytest.raises(ValueError, match="no pretrained encoder"):
        QGFDTabularConfig(backbone_config=t5(), **TINY)


def test_common_fields_are_checked():
    with pytest.raises(ValueError, match="'qgfd'"):
        QGFDTabularConfig(denoiser="pretrained", **TINY)
    with pytest.raises(ValueError, match="freeze_encoder"):
        QGFDTabularConfig(freeze_encoder="yes", **TINY)
    with pytest.raises(ValueError, match="latent_scale"):
        QGFDTabularConfig(latent_scale=0.0, **TINY)
    with pytest.raises(ValueError, match="recon_weight"):
        QGFDTabularConfig(recon_weight=-1.0, **TINY)
    with pytest.raises(ValueError, match="Unknown QGFD setting"):
        QGFDTextConfig(backbone_config=t5(), backbone_qgfd={"stepz": 1}, **TINY)
    with pytest.raises(ValueError, match="alpha"):
        QGFDTextConfig(backbone_config=t5(), backbone_qgfd={"alpha": 2.0}, **TINY)
    with pytest.raises(ValueError, match="no `backbone_config`"):
        QGFDTabularConfig(backbone_qgfd={"steps": 1}, **TINY)
    with pytest.raises(ValueError, match="decoder_dim"):
        QGFDTabularConfig(decoder_dim=30, **TINY)
    with pytest.raises(ValueError, match="modality"):
        QGFDConfig(modality="smell")
    with pytest.raises(ValueError, match="backbone_config"):
        QGFDTextConfig(backbone_config=42, **TINY)


def test_save_and_load_keeps_every_value_and_the_nested_backbone(tmp_path):
    cfg = QGFDTextConfig(backbone_config=t5(), seq_len=12, latent_scale=0.25, qgfd_steps=2, qgfd_graph="keys",
                         qgfd_mix="recurrent", backbone_qgfd={"steps": 1, "alpha": 0.3}, beta_schedule="cosine",
                         prediction_type="v", **TINY)
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "t5" and saved["auto_map"]["AutoConfig"] == "configuration_qgfd_text.QGFDTextConfig"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is QGFDTextConfig and type(loaded.backbone_config) is T5Config
    for key in ("seq_len", "latent_scale", "qgfd_steps", "qgfd_graph", "qgfd_mix", "backbone_qgfd", "beta_schedule",
                "prediction_type", "latent_dim", "d_model", "conditional"):
        assert getattr(loaded, key) == getattr(cfg, key), key
    assert loaded.backbone_config.d_model == 32
    assert loaded.qgfd_settings().mix == "recurrent"


def test_shared_config_nests_modality_configs(tmp_path):
    text = QGFDTextConfig(backbone_config=t5(), seq_len=8, **TINY)
    image = QGFDImageConfig(latent_space="pixels", image_size=8, patch_size=2, num_channels=1, **TINY)
    cfg = QGFDSharedConfig(modalities=["text", "image"], text_config=text, image_config=image, latent_dim=16, **TINY)
    assert cfg.conditional and cfg.num_latent_tokens("image") == 16 and cfg.num_latent_tokens() == 8
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is QGFDSharedConfig and type(loaded.text_config) is QGFDTextConfig
    assert type(loaded.text_config.backbone_config) is T5Config and loaded.image_config.latent_dim == 4
    with pytest.raises(ValueError, match="`audio_config` is None"):
        QGFDSharedConfig(modalities=["audio"], **TINY)
    with pytest.raises(ValueError, match="'audio', 'image', 'tabular', 'text', 'video'"):
        QGFDSharedConfig(modalities=["smell"], **TINY)
    with pytest.raises(ValueError, match="modalities"):
        QGFDSharedConfig(modalities=[], **TINY)
    with pytest.raises(ValueError, match="duplicates"):
        QGFDSharedConfig(modalities=["image", "image"], image_config=image, **TINY)


def test_from_diffusion_config_and_back():
    diff = DiffusionConfig(latent_dim=32, qgfd_steps=3, prediction_type="sample", **TINY)
    cfg = QGFDTextConfig.from_diffusion_config(diff, backbone_config=t5(), seq_len=4)
    assert cfg.qgfd_steps == 3 and cfg.prediction_type == "sample" and cfg.seq_len == 4
    assert cfg.diffusion_config() == diff
    with pytest.raises(ValueError, match="diffusion_cfg"):
        QGFDTextConfig.from_diffusion_config(42)


def test_schedule_reads_the_config():
    cfg = QGFDTabularConfig(num_timesteps=50, beta_schedule="sqrt", **TINY)
    schedule = qgfd_hf.DDPMBetaSchedule.from_config(cfg)
    assert schedule.num_timesteps == 50 and schedule.betas.dtype == torch.float64


def test_a_config_subclass_without_its_own_init_is_refused():
    # transformers 5 turns such a subclass into a dataclass whose __init__ skips every QGFDConfig check.
    with pytest.raises(TypeError, match="must define __init__"):
        class NoInit(QGFDImageConfig):
            model_type = "qgfd_no_init"
