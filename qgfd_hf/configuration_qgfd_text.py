# coding=utf-8
"""Configuration of the text diffusion model: `QGFDTextConfig` ("qgfd_text").
"""

from __future__ import annotations

from typing import Optional

from .configuration_qgfd import QGFDConfig, _backbone_width, _check_bool, _check_int


class QGFDTextConfig(QGFDConfig):
    """Config of `TextQGFDDiffusionModel`: diffusion over a T5's token embeddings (Diffusion-LM).

    Args:
        seq_len (`int`, defaults to 64): L, the length of generated (and training) sequences;
            shorter inputs are padded with the pad token, longer ones raise.
        conditional (`bool`, defaults to `True`): condition on a source text through the T5
            encoder's states, projected to `d_model`.
        pad_token_id (`int`, *optional*): the pad token (default: the backbone's, else 0).
        clamp_to_embeddings (`bool`, defaults to `False`): when sampling, replace the predicted
            x0 by its nearest token embedding at every step (Diffusion-LM's clamping trick).
        train_condition_encoder (`bool`, defaults to `True`): the T5 encoder layers that encode
            the source text learn with the denoiser; the token embeddings (the latent space)
            stay frozen while `freeze_encoder` is True. On a word-reversal task with a random
            tiny T5, 2000 steps reached 93% exact match with it and 17% without. False keeps
            the whole T5 frozen.
        **kwargs: `QGFDConfig` arguments. `backbone_config` must be a text encoder config
            (T5 or any config with `vocab_size` and `d_model`/`hidden_size`);
            `latent_dim` is its width.

    Example:
        >>> from transformers import T5Config
        >>> cfg = QGFDTextConfig(backbone_config=T5Config(vocab_size=50, d_model=32, num_layers=1, num_heads=4, d_kv=8),
        ...                      d_model=32, num_heads=4, num_layers=2, d_ff=64, seq_len=8)
        >>> cfg.latent_dim, cfg.num_latent_tokens()
        (32, 8)
    """

    model_type = "qgfd_text"
    _fixed_modality = "text"
    # denoiser="pretrained": T5 (relative positions, any latent length) or a BERT-family encoder (up to its absolute positions).
    pretrained_stacks = ("t5", "mt5", "bert", "roberta", "distilbert")

    def __init__(
        self,
        seq_len: int = 64,
        conditional: bool = True,
        pad_token_id: Optional[int] = None,
        clamp_to_embeddings: bool = False,
        train_condition_encoder: bool = True,
        **kwargs,
    ):
        self.seq_len = seq_len
        self.pad_token_id = pad_token_id
        self.clamp_to_embeddings = clamp_to_embeddings
        self.train_condition_encoder = train_condition_encoder
        super().__init__(conditional=conditional, **kwargs)

    def _validate_modality(self):
        _check_int("seq_len", self.seq_len)
        _check_bool("clamp_to_embeddings", self.clamp_to_embeddings)
        _check_bool("train_condition_encoder", self.train_condition_encoder)
        self._require_backbone(["vocab_size"], "text encoder (e.g. T5)")
        self._resolve_latent_dim(_backbone_width(self.backbone_config), "the text encoder's embedding width")
        if self.pad_token_id is None:
            self.pad_token_id = getattr(self.backbone_config, "pad_token_id", None) or 0
        _check_int("pad_token_id", self.pad_token_id, minimum=0)
        if self.pad_token_id >= self.backbone_config.vocab_size:
            raise ValueError(f"`pad_token_id`={self.pad_token_id} is outside the vocabulary (size {self.backbone_config.vocab_size}).")

    def num_latent_tokens(self) -> int:
        return self.seq_len


QGFDTextConfig.register_for_auto_class()

__all__ = ["QGFDTextConfig"]
