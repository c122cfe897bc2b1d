# coding=utf-8
"""Text diffusion: `TextAdapter` (T5 token embeddings <-> latents, the source text's T5 states as
the condition) and `TextQGFDDiffusionModel` (Diffusion-LM), with its output conversion.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import logging

from .configuration_qgfd_text import QGFDTextConfig
from .modeling_qgfd import QGFDPreTrainedModel, register_model_class
from .modeling_qgfd_adapters import ADAPTERS, _check_ids, _check_mask, _get, _ModalityAdapter, _resolve_adapter_config, build_encoder, build_denoiser
from .scheduling_qgfd import DDPMBetaSchedule, diffusion_target, predict_x0_and_eps
from .scheduling_qgfd_sampling import sample_loop

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------


class TextAdapter(_ModalityAdapter):
    """Text <-> T5 token-embedding latents, and T5-encoded conditioning (Diffusion-LM style).

    - latents: `E[input_ids] * latent_scale` [B, L, Dl] with E the T5 input embedding (frozen
      by default), padded with the pad token to `seq_len` by `data_to_latents`;
    - decoding: nearest embedding, `logits = 2 x E'^T - ||E'||^2` with E' the embedding
      matrix in latent space; decode(encode(ids)) == ids exactly;
    - conditioning: the T5 encoder's states of a source text, projected to the denoiser's
      `d_model` (the seed handed T5-width states to a backbone of another width).

    Args:
        config (`QGFDTextConfig`, or the seed's Hub id / folder / backbone config with `shared_cfg`).
        shared_cfg (`QGFDSharedConfig` or `DiffusionConfig`, *optional*): inside the shared model,
            map latents to its `latent_dim` and conditioning to its `d_model`.

    Example:
        >>> from transformers import T5Config
        >>> t5 = T5Config(vocab_size=50, d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)
        >>> adapter = TextAdapter(QGFDTextConfig(backbone_config=t5, d_model=32, num_heads=4, num_layers=2, d_ff=64, seq_len=6))
        >>> ids = torch.tensor([[5, 6, 7, 1]])
        >>> x0 = adapter.data_to_latents({"input_ids": ids})
        >>> x0.shape, adapter.decode_latents(x0)[0, :4].tolist()
        (torch.Size([1, 6, 32]), [5, 6, 7, 1])
    """

    modality = "text"

    def __init__(self, config, shared_cfg=None):
        config, pretrained = _resolve_adapter_config("text", config, shared_cfg)
        super().__init__(config, shared_cfg)
        self._set_encoder(build_encoder("text", config.backbone_config))
        self.vocab_size = self.encoder.get_input_embeddings().weight.shape[0]
        if config.freeze_encoder and config.conditional and config.train_condition_encoder:
            # The layers that encode the source text learn; the token embeddings, which define
            # the latent space (and feed those layers), stay as they are.
            embeddings = self.encoder.get_input_embeddings().weight
            for p in self.encoder.parameters():
                p.requires_grad_(p is not embeddings)
        if config.conditional:
            self.cond_proj = nn.Linear(config.latent_dim, self.d_model)  # T5 width -> denoiser width
        if pretrained is not None:
            self.load_pretrained_encoder(pretrained)
            self.fit_embedding_scale()

    def fit_embedding_scale(self) -> float:
        """Set `latent_scale` = 1 / std(E), so that token latents have about unit std."""
        std = float(self.encoder.get_input_embeddings().weight.detach().float().std())
        self.modality_config.latent_scale = 1.0 / std
        return self.modality_config.latent_scale

    def latent_embeddings(self) -> torch.Tensor:
        """E' [V, Dl]: every token's latent (embedding x latent_scale, in the shared space if any)."""
        with self._encoder_context():
            E = self.encoder.get_input_embeddings().weight * self.modality_config.latent_scale  # (V, Dm)
            return self.to_shared(E)

    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token latents [B, L, Dl] of `input_ids` [B, L]; masked positions get the pad token's."""
        _check_ids("input_ids", input_ids, self.vocab_size)
        if attention_mask is not None:
            mask = _check_mask("attention_mask", attention_mask, input_ids.shape)
            input_ids = input_ids.masked_fill(~mask, self.modality_config.pad_token_id)
        with self._encoder_context():
            x = self.encoder.get_input_embeddings()(input_ids) * self.modality_config.latent_scale  # (B, L, Dm)
            return self.to_shared(x)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, seq_len, Dl] from `batch["input_ids"]` [B, L <= seq_len] (and `attention_mask`)."""
        ids = _get(batch, "input_ids", "text")
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        _check_ids("input_ids", ids, self.vocab_size)
        S, L = self.modality_config.seq_len, ids.shape[1]
        if L > S:
            raise ValueError(f"`input_ids` has length {L}, longer than the model's seq_len={S}; truncate to {S} tokens.")
        if L < S:  # right-pad to the fixed length the model samples
            ids = F.pad(ids, (0, S - L), value=self.modality_config.pad_token_id)
            if mask is not None:
                mask = F.pad(mask, (0, S - L), value=0)
        return self.embed(ids, mask)

    def encode_condition(self, input_ids=None, attention_mask=None, token_type_ids=None, **unknown):
        """Conditioning tokens [B, Lc, d_model] and mask [B, Lc] (True = valid) of a source text."""
        if unknown:
            raise ValueError(f"Unknown conditioning inputs {sorted(unknown)}; the text model takes input_ids and attention_mask.")
        if not self.modality_config.conditional:
            return super().encode_condition(input_ids=input_ids, attention_mask=attention_mask)
        if input_ids is None:
            raise ValueError("This text model is conditional: pass the source text's `input_ids`.")
        _check_ids("input_ids", input_ids, self.vocab_size)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else _check_mask("attention_mask", attention_mask, input_ids.shape)
        grad = self.modality_config.train_condition_encoder or not self.modality_config.freeze_encoder
        with contextlib.nullcontext() if grad else torch.no_grad():
            states = self.encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # (B, Lc, Dm)
        return self.cond_proj(states), mask

    def _encoder_trains(self) -> bool:
        return not self.modality_config.freeze_encoder or (
            self.modality_config.conditional and self.modality_config.train_condition_encoder
        )

    def decode_embeddings(self, latents: torch.Tensor) -> torch.Tensor:
        """Token logits [B, L, V] of latents [B, L, Dl]: 2 x E'^T - ||E'||^2 (argmax = nearest embedding)."""
        E = self.latent_embeddings().to(latents.dtype)  # (V, Dl)
        return 2 * latents @ E.t() - (E * E).sum(-1)  # (B, L, V)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] of latents [B, L, Dl] (rounding to the nearest embedding)."""
        return self.decode_embeddings(latents).argmax(-1)

    def round_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Each latent replaced by its nearest token latent [B, L, Dl] (Diffusion-LM's clamp)."""
        return self.latent_embeddings().to(latents.dtype)[self.decode_latents(latents)]

# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


class TextQGFDDiffusionModel(QGFDPreTrainedModel):
    """Text diffusion in a T5's token-embedding space (Diffusion-LM), conditioned on a source
    text through the T5 encoder.

    - `data_to_latents({"input_ids", "attention_mask"})` -> x0 [B, seq_len, latent_dim]
      (padded with the pad token to `seq_len`);
    - `encode_condition(input_ids=..., attention_mask=...)` -> T5 encoder states of the
      source text projected to `d_model` [B, Lc, d_model], mask [B, Lc];
    - `decode_latents(latents)` -> token ids [B, L] (nearest embedding);
      `decode_to_text(latents, tokenizer)` -> strings;
    - training batches: `input_ids` / `attention_mask` (the target text) and, when
      conditional, `cond_input_ids` / `cond_attention_mask` (the source text).

    Example:
        >>> from transformers import T5Config
        >>> t5 = T5Config(vocab_size=64, d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)
        >>> model = TextQGFDDiffusionModel(QGFDTextConfig(backbone_config=t5, seq_len=8, d_model=32, num_heads=4,
        ...                                               num_layers=2, d_ff=64))
        >>> ids = torch.tensor([[5, 9, 1], [7, 1, 0]])
        >>> batch = {"input_ids": ids, "cond_input_ids": ids}
        >>> model.compute_loss(batch, generator=torch.Generator().manual_seed(0))["loss"].item() > 0
        True
        >>> model.decode_latents(model.data_to_latents(batch))[:, :3].tolist()
        [[5, 9, 1], [7, 1, 0]]
    """

    config_class = QGFDTextConfig
    hub_pipeline_tags = ("text-generation", "text2text-generation")  # the model card's pipeline_tag: (unconditional, conditional)
    pipeline_outputs = ("texts", '[{"generated_text": str}, ...], one dict per sample', 4)  # the card's example: (name, what, samples)
    main_input_name = "input_ids"

    def __init__(self, config: QGFDTextConfig):
        super().__init__(config)
        self.adapter = TextAdapter(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def _fixed_length(self) -> bool:
        return False  # any length up to the positions' limit (the seed encodes unpadded batches)

    def _condition_from_batch(self, batch):
        has_cond = isinstance(batch, Mapping) and batch.get("cond_input_ids") is not None
        if not self.is_conditional:
            if has_cond:
                raise ValueError("This text model is unconditional, but the batch has `cond_input_ids`.")
            return None, None
        if not has_cond:
            raise ValueError("This text model is conditional: its batches need `cond_input_ids` (and `cond_attention_mask`).")
        return self.encode_condition(input_ids=batch["cond_input_ids"], attention_mask=batch.get("cond_attention_mask"))

    # -- the seed's methods -----------------------------------------------------------------

    def encode_text(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Clean latents x0 [B, L, latent_dim]: the tokens' T5 embeddings x latent_scale (no padding added)."""
        return self.adapter.embed(input_ids, attention_mask)

    def diffusion_forward(
        self,
        x0_embeds: torch.Tensor,
        t: torch.Tensor,
        cond_input_ids: Optional[torch.Tensor] = None,
        cond_attention_mask: Optional[torch.Tensor] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        noise: Optional[torch.Tensor] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        drop_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The diffusion loss (scalar) of x0_embeds [B, L, D] at timesteps t [B], conditioned on
        a source text (`cond_input_ids`) or on ready `cond_tokens`; the null source text for the
        samples where `drop_condition` [B] is True."""
        if cond_input_ids is not None:
            if cond_tokens is not None:
                raise ValueError("Pass either `cond_input_ids` or `cond_tokens`, not both.")
            cond_tokens, cond_mask = self.encode_condition(input_ids=cond_input_ids, attention_mask=cond_attention_mask)
        return super().diffusion_forward(x0_embeds, t, schedule=schedule, cond_tokens=cond_tokens, cond_mask=cond_mask, noise=noise,
                                         drop_condition=drop_condition)

    def decode_embeddings(self, latents: torch.Tensor) -> torch.Tensor:
        """Token logits [B, L, V] (2 x E^T - ||E||^2: the argmax is the nearest token embedding)."""
        self.check_latents("latents", latents)
        return self.adapter.decode_embeddings(latents)

    def decode_to_text(self, latents: torch.Tensor, tokenizer, skip_special_tokens: bool = True) -> list:
        """Strings from latents [B, L, D], through the nearest embedding and `tokenizer`."""
        return tokenizer.batch_decode(self.decode_latents(latents).tolist(), skip_special_tokens=skip_special_tokens)

    def make_denoise_fn(self, cond_tokens=None, cond_mask=None, schedule=None, clamp: Optional[bool] = None, class_labels=None,
                        guidance_scale: float = 1.0):
        """`denoise_fn(x_t, t)`; with `clamp` (default `config.clamp_to_embeddings`) the predicted
        x0 is replaced by its nearest token embedding, and the output re-expressed for the
        prediction type (Diffusion-LM's clamping trick). Guidance (`guidance_scale`) comes first,
        then the clamping of the guided x0."""
        base = super().make_denoise_fn(cond_tokens, cond_mask, schedule, class_labels=class_labels, guidance_scale=guidance_scale)
        clamp = self.config.clamp_to_embeddings if clamp is None else clamp
        if not clamp:
            return base
        schedule = schedule if schedule is not None else self.get_schedule()
        ptype = self.config.prediction_type

        def clamped(x_t, t):
            x0, _ = predict_x0_and_eps(base(x_t, t), x_t, t, schedule, ptype)
            x0 = self.adapter.round_latents(x0)
            _, eps = predict_x0_and_eps(x0, x_t, t, schedule, "sample")  # the eps that the rounded x0 implies
            return diffusion_target(x0, eps, t, schedule, ptype)  # re-expressed for the prediction type

        return clamped

    @torch.no_grad()
    def diffusion_sample(
        self,
        num_samples: Optional[int] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        *,
        cond_input_ids: Optional[torch.Tensor] = None,
        cond_attention_mask: Optional[torch.Tensor] = None,
        clamp: Optional[bool] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        guidance_scale: float = 1.0,
        class_labels=None,
        **sampler_kwargs,
    ) -> torch.Tensor:
        """Sample latents [B, seq_len, D] that `decode_to_text` turns into strings.

        Args:
            num_samples (`int`, *optional*): B (default: the conditioning's batch size).
            cond_tokens, cond_mask: from `encode_condition`; or, instead,
            cond_input_ids (`[B, Lc]`), cond_attention_mask (`[B, Lc]`): the source texts.
            clamp (`bool`, *optional*): Diffusion-LM's clamping (default `config.clamp_to_embeddings`).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance against the learned null
                source text (a model trained with `cond_dropout_prob` > 0); 1 = none.
            **sampler_kwargs: `sampler`, `num_inference_steps`, `eta`, `generator`, `progress`, ... as
                `QGFDPreTrainedModel.diffusion_sample`.
        """
        if cond_input_ids is not None:
            if cond_tokens is not None:
                raise ValueError("Pass either `cond_input_ids` or `cond_tokens`, not both.")
            cond_tokens, cond_mask = self.encode_condition(input_ids=cond_input_ids, attention_mask=cond_attention_mask)
        if self.is_conditional and cond_tokens is None:
            raise ValueError("This text model is conditional: pass `cond_input_ids` (the source texts).")
        if num_samples is None:
            num_samples = cond_tokens.shape[0] if cond_tokens is not None else 1
        if cond_tokens is not None and cond_tokens.shape[0] != num_samples:
            raise ValueError(f"`num_samples`={num_samples} differs from the conditioning's batch size {cond_tokens.shape[0]}.")
        _, guidance_scale = self.check_guidance(num_samples, class_labels, guidance_scale)
        schedule = schedule if schedule is not None else self.get_schedule()

        return sample_loop(
            self.make_denoise_fn(cond_tokens, cond_mask, schedule, clamp=clamp, guidance_scale=guidance_scale),
            self.latent_shape(num_samples),
            schedule,
            prediction_type=self.config.prediction_type,
            device=self.device,
            dtype=self.dtype,
            progress=sampler_kwargs.pop("progress", False),
            **sampler_kwargs,
        )

    # -- output conversion (the pipeline's outputs) ------------------------------------------

    @staticmethod
    def outputs_from_data(config, data, output_type: str = "data", tokenizer=None) -> list:
        """Token ids [B, L] (`decode_latents`) to `{"generated_text": str}` through `tokenizer`, or
        `{"np": ids [L]}` for `output_type="np"`."""
        if output_type == "np":
            return [{"np": x} for x in data.numpy()]
        if tokenizer is None:
            raise ValueError("Decoding text needs the model's tokenizer; pass `tokenizer=` to the pipeline.")
        return [{"generated_text": s} for s in tokenizer.batch_decode(data.tolist(), skip_special_tokens=True)]


ADAPTERS["text"] = TextAdapter
register_model_class(TextQGFDDiffusionModel)

__all__ = ["TextAdapter", "TextQGFDDiffusionModel"]
