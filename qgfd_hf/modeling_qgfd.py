# coding=utf-8
"""The QGFD diffusion denoiser and the base class of every QGFD diffusion model.

The denoiser `QGFDDiffusionBackbone` is eps_theta(x_t, t, cond): a stack of pre-LN
Transformer blocks whose self-attention is QGFD attention, with cross-attention to
conditioning tokens and DiT's adaLN-Zero timestep conditioning (or the seed's additive
time embedding). It predicts once for a given t; the samplers in `scheduling_qgfd` run the
loop over timesteps.

Its layers (`DecoderBlock`, ...) are in `modeling_qgfd_blocks`. `QGFDPreTrainedModel`
implements the contract that the pipeline and the training code call on every modality model (`latent_shape`, `encode_condition`, `denoise`,
`data_to_latents`, `decode_latents`, `postprocess`, `get_schedule`, `compute_loss`), with
conditioning and guidance from `modeling_qgfd_guidance`. Each modality's model and adapter
live in `modeling_qgfd_<modality>.py` and register themselves in `MODEL_CLASSES` here; the
factory and the Auto classes are in `modeling_qgfd_auto.py`.

Shapes: `B` batch, `L` latent length, `Lc` conditioning length, `D` d_model,
`Dl` latent_dim, `H` heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .modeling_qgfd_attention import QGFDAlpha
from .modeling_qgfd_blocks import DecoderBlock, _zero_init, modulate
from .configuration_qgfd import DIFFUSION_FIELDS, QGFD_FIELDS, QGFDConfig
from .modeling_qgfd_checks import check_condition, check_float_tensor, check_timesteps
from .modeling_qgfd_embeddings import TimestepEmbedding, grid_coordinates, grid_sinusoidal_embedding, sinusoidal_embedding
from .modeling_qgfd_guidance import QGFDGuidanceMixin
from .modeling_qgfd_hub import QGFDHubMixin
from .scheduling_qgfd import DDPMBetaSchedule, diffusion_target, min_snr_weights, q_sample

logger = logging.get_logger(__name__)


# modality -> model class: the five single-modality models (MODEL_CLASSES) and also "shared"
# (ALL_MODEL_CLASSES). Each `modeling_qgfd_<modality>.py` registers its class on import.
MODEL_CLASSES: Dict[str, type] = {}
ALL_MODEL_CLASSES: Dict[str, type] = {}


def register_model_class(model_cls: type) -> type:
    """Add a modality's model class to `MODEL_CLASSES` / `ALL_MODEL_CLASSES` (keyed by its config's
    modality) and mark it for `AutoModel` in saved `config.json`s (`auto_map`)."""
    modality = model_cls.config_class._fixed_modality
    ALL_MODEL_CLASSES[modality] = model_cls
    if modality != "shared":
        MODEL_CLASSES[modality] = model_cls
    model_cls.register_for_auto_class("AutoModel")
    return model_cls


# ----------------------------------------------------------------------------------------
# The denoiser
# ----------------------------------------------------------------------------------------


def _qgfd_block_kwargs(cfg) -> Dict[str, Any]:
    """`EncoderBlock` QGFD keyword arguments from a config's `qgfd_*` fields."""
    kwargs = {"qgfd_steps": cfg.qgfd_steps, "qgfd_alpha": cfg.qgfd_alpha}
    for name, field in QGFD_FIELDS.items():
        if name not in ("qgfd_steps", "qgfd_alpha"):
            kwargs[field] = getattr(cfg, name)
    return kwargs


class QGFDDiffusionBackbone(nn.Module):
    """eps_theta(x_t, t, cond): the QGFD diffusion Transformer.

    1. project latents to d_model and add positions (1-D, or factorised over the config's
       `position_grid`: frame, row, column);
    2. embed t (sinusoids + MLP), plus an optional extra embedding (modality, class);
    3. run the `DecoderBlock`s (QGFD self-attention, cross-attention to `cond_tokens`),
       conditioned on the time embedding by adaLN-Zero (or by adding it to every token);
    4. final norm (adaLN-modulated), then project back to `latent_dim`.

    The output is the model's prediction for the config's `prediction_type` (epsilon by
    default). It runs once per call: the samplers own the loop over timesteps.

    Args:
        cfg (`DiffusionConfig` or `QGFDConfig`): sizes, QGFD settings, `time_conditioning`,
            `position_embedding`, `num_timesteps`.
        cross_attention (`bool`, *optional*): build cross-attention; default
            `cfg.conditional` for a `QGFDConfig` and True for the seed's `DiffusionConfig`.

    Example:
        >>> from qgfd_hf import DiffusionConfig
        >>> cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=16)
        >>> net = QGFDDiffusionBackbone(cfg)
        >>> x_t, t = torch.randn(2, 10, 16), torch.tensor([3, 500])
        >>> cond, mask = torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.long)
        >>> net(x_t, t, cond_tokens=cond, cond_mask=mask).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, cfg, cross_attention: Optional[bool] = None):
        super().__init__()
        # Duck-typed: with trust_remote_code the config class comes from another copy of
        # configuration_qgfd.py than this file's, so isinstance would fail.
        missing = [name for name in DIFFUSION_FIELDS if not hasattr(cfg, name)]
        if missing or getattr(cfg, "latent_dim", None) is None:
            raise ValueError(f"`cfg` must be a DiffusionConfig or a QGFDConfig, got {type(cfg).__name__} (missing {missing or ['latent_dim']}).")
        latent_dim = cfg.latent_dim
        default_cross = bool(getattr(cfg, "conditional", True))  # the seed's DiffusionConfig: always
        self.cross_attention = default_cross if cross_attention is None else bool(cross_attention)
        self.d_model, self.latent_dim = cfg.d_model, latent_dim
        self.num_timesteps = cfg.num_timesteps
        self.time_conditioning = cfg.time_conditioning
        self.position_embedding = cfg.position_embedding
        self.max_position_embeddings = cfg.max_position_embeddings
        grid = getattr(cfg, "position_grid", None)  # None: 1-D positions (the seed's DiffusionConfig has no grid)
        self.position_grid = tuple(grid) if grid else None

        self.in_proj = nn.Linear(latent_dim, cfg.d_model)
        if self.position_embedding == "learned" and self.position_grid is not None:
            # A factorised table: one embedding per grid axis (frame, row, column), summed.
            self.pos_embed_axes = nn.ModuleList(nn.Embedding(n, cfg.d_model) for n in self.position_grid)
        elif self.position_embedding == "learned":
            self.pos_embed = nn.Embedding(cfg.max_position_embeddings, cfg.d_model)
        self.time_embed = TimestepEmbedding(cfg.d_model)
        if self.cross_attention:
            self.cond_norm = nn.LayerNorm(cfg.d_model, eps=1e-6)
        self.blocks = nn.ModuleList(
            DecoderBlock(
                cfg.d_model,
                cfg.num_heads,
                cfg.d_ff,
                dropout=cfg.dropout,
                cross_attention=self.cross_attention,
                time_conditioning=cfg.time_conditioning,
                **_qgfd_block_kwargs(cfg),
            )
            for _ in range(cfg.num_layers)
        )
        adaln = cfg.time_conditioning == "adaln"
        self.norm_out = nn.LayerNorm(cfg.d_model, eps=1e-6, elementwise_affine=not adaln)
        if adaln:
            self.adaLN_final = nn.Sequential(nn.SiLU(), _zero_init(nn.Linear(cfg.d_model, 2 * cfg.d_model)))
        # Zero-initialised output (DiT): the untrained model predicts 0.
        self.out_proj = _zero_init(nn.Linear(cfg.d_model, latent_dim))

    def positions(self, length: int, device, dtype) -> Optional[torch.Tensor]:
        """Position embeddings [L, D] (None for position_embedding="none"); factorised over
        `position_grid` when the config has one."""
        if self.position_embedding == "none":
            return None
        if self.position_grid is not None:
            if length != math.prod(self.position_grid):
                raise ValueError(f"Latent length {length} does not fit `position_grid`={list(self.position_grid)} ({math.prod(self.position_grid)} tokens).")
            if self.position_embedding == "sinusoidal":
                return grid_sinusoidal_embedding(self.position_grid, self.d_model, device).to(dtype)
            coords = grid_coordinates(self.position_grid, device)  # (L, k)
            return sum(table(coords[:, a]) for a, table in enumerate(self.pos_embed_axes))  # (L, D)
        if self.position_embedding == "learned":
            if length > self.max_position_embeddings:
                raise ValueError(f"Latent length {length} exceeds `max_position_embeddings`={self.max_position_embeddings}.")
            return self.pos_embed.weight[:length]
        return sinusoidal_embedding(torch.arange(length, device=device), self.d_model).to(dtype)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        extra_embedding: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the model output for x_t at step t.

        Args:
            x_t (`torch.FloatTensor` `[B, L, latent_dim]`): noisy latents.
            t (`torch.LongTensor` `[B]`, or an int): timesteps in [0, num_timesteps).
            cond_tokens (`torch.FloatTensor` `[B, Lc, d_model]`, *optional*): conditioning tokens.
            cond_mask (`[B, Lc]`, *optional*): 1/True = valid token (HF `attention_mask` convention).
            extra_embedding (`torch.FloatTensor` `[B, d_model]`, *optional*): added to the time
                embedding (the shared model's modality embedding; class conditioning).

        Returns:
            `torch.FloatTensor` `[B, L, latent_dim]`: eps (or x0, or v) prediction.
        """
        check_float_tensor("x_t", x_t, f"[B, L, latent_dim={self.latent_dim}]", 3, self.latent_dim)
        B, L, _ = x_t.shape
        t = check_timesteps(t, B, self.num_timesteps, x_t.device)
        cond_mask = check_condition(cond_tokens, cond_mask, B, self.d_model)
        if cond_tokens is not None and not self.cross_attention:
            raise ValueError("This denoiser is unconditional (built without cross-attention); pass cond_tokens=None.")
        if extra_embedding is not None:
            check_float_tensor("extra_embedding", extra_embedding, f"[B, d_model={self.d_model}]", 2, self.d_model)

        # 1. Latents to the model width, plus positions.
        h = self.in_proj(x_t)  # (B, L, D)
        pos = self.positions(L, x_t.device, h.dtype)
        if pos is not None:
            h = h + pos[None]
        # 2. Time (and extra) embedding c.
        c = self.time_embed(t)  # (B, D)
        if extra_embedding is not None:
            c = c + extra_embedding.to(c.dtype)
        if self.time_conditioning == "add":
            h = h + c[:, None]  # the seed: the time embedding added to every token
        if cond_tokens is not None:
            cond_tokens = self.cond_norm(cond_tokens.to(h.dtype))
        # 3. The QGFD blocks.
        for block in self.blocks:
            h = block(h, c, cond_tokens=cond_tokens, cond_mask=cond_mask)
        # 4. Output head.
        if self.time_conditioning == "adaln":
            shift, scale = self.adaLN_final(c).chunk(2, dim=-1)  # each (B, D)
            h = modulate(self.norm_out(h), shift, scale)
        else:
            h = self.norm_out(h)
        return self.out_proj(h)  # (B, L, Dl)


# ----------------------------------------------------------------------------------------
# The base model and the uniform contract
# ----------------------------------------------------------------------------------------


@dataclass
class QGFDDiffusionOutput(ModelOutput):
    """Training losses of a QGFD diffusion model.

    Args:
        loss (`torch.FloatTensor` `[]`): diffusion_loss + recon_weight * recon_loss.
        diffusion_loss (`torch.FloatTensor` `[]`): MSE between the denoiser's output and its target.
        recon_loss (`torch.FloatTensor` `[]`): MSE of the learned decoder (0 when the modality has none).
    """

    loss: Optional[torch.FloatTensor] = None
    diffusion_loss: Optional[torch.FloatTensor] = None
    recon_loss: Optional[torch.FloatTensor] = None


class QGFDPreTrainedModel(QGFDGuidanceMixin, QGFDHubMixin, PreTrainedModel):
    """Base class of the QGFD diffusion models: weight init, and the uniform contract that the
    pipeline and the training code use on every modality.

    Subclasses hold `self.adapter` (data <-> latents, conditioning) and `self.backbone`
    (the denoiser `build_denoiser` makes: `QGFDDiffusionBackbone`, or `PretrainedDenoiser` for
    `denoiser="pretrained"`). The contract:

    - `config.modality`, `is_conditional`;
    - `latent_shape(batch_size) -> (B, L, latent_dim)`;
    - `encode_condition(**cond_inputs) -> (cond_tokens [B, Lc, d_model] | None, cond_mask [B, Lc] | None)`;
    - `denoise(x_t, t, cond_tokens=None, cond_mask=None) -> model_output [B, L, latent_dim]`;
    - `data_to_latents(batch) -> x0 [B, L, latent_dim]`; `decode_latents(latents) -> data`;
    - `get_schedule() -> DDPMBetaSchedule`; `sample_clip_value` (a bound for `clip_sample`, or None);
    - `compute_loss(batch, generator=None) -> {"loss", "diffusion_loss", "recon_loss"}`
      (also `forward(**batch)`, so DDP / accelerate wrappers see a forward pass).
    """

    config_class = QGFDConfig
    base_model_prefix = "qgfd"
    main_input_name = "x_t"
    _no_split_modules = ["DecoderBlock", "EncoderBlock"]
    supports_gradient_checkpointing = False
    # The model card's pipeline_tag (unconditional, conditional) and pipeline outputs (name, what, samples): per modality.
    hub_pipeline_tags = ("other", "other")
    pipeline_outputs = ("samples", "[{...}, ...], one dict per sample (`outputs_from_data`)", 4)

    # -- weights --------------------------------------------------------------------------

    def post_init(self):
        super().post_init()
        # transformers gathers tied weights (T5's shared / embed_tokens) from direct children
        # only; our pretrained encoders sit inside adapters, so gather them at any depth.
        for name, module in self.named_modules():
            if module is self or not isinstance(module, PreTrainedModel) or "." not in name:
                continue
            for key, target in (getattr(module, "all_tied_weights_keys", None) or {}).items():
                self.all_tied_weights_keys[f"{name}.{key}"] = f"{name}.{target}"

    def _init_weights(self, module: nn.Module):
        """Initialise our modules; pretrained sub-models (T5, ViT, Wav2Vec2) use their own."""
        super()._init_weights(module)  # norms 1/0, embeddings and linears N(0, initializer_range)
        rule = getattr(module, "_qgfd_init", None)
        if isinstance(module, nn.Linear):
            if rule == "zeros":
                # adaLN-Zero modulations and the denoiser's output layer start at 0 (DiT):
                # every block starts as the identity and the untrained model predicts 0.
                init.zeros_(module.weight)
            elif rule in ("he", "lecun"):
                # The frozen random tabular encoder: variance-preserving ("he" before the GELU,
                # "lecun" after it), so that its latents come out at about unit scale.
                gain = math.sqrt(2.0) if rule == "he" else 1.0
                init.normal_(module.weight, mean=0.0, std=gain / math.sqrt(module.in_features))
            else:
                # Every other linear layer of ours: Xavier uniform, as DiT.
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif rule == "orthogonal" and isinstance(getattr(module, "weight", None), torch.Tensor):
            # Adapters' fixed projection into the shared latent space: (semi-)orthogonal, scaled
            # so that latents keep their per-coordinate scale (`SharedProjection`).
            init.orthogonal_(module.weight, gain=module.gain)
        elif isinstance(module, QGFDAlpha) and module.logit is not None:
            # A learnable QGFD alpha starts at settings.alpha (as QGFDAlpha.__init__ sets it).
            s = module.settings
            frac = min(max(s.alpha / s.alpha_max, 1e-3), 1 - 1e-3)
            init.constant_(module.logit, math.log(frac / (1 - frac)))
        elif rule == "feature_stats":
            # Tabular normalisation statistics: identity until fitted to data.
            init.zeros_(module.feature_mean)
            init.ones_(module.feature_std)
        elif rule == "bin_scale":
            # Audio MDCT / spectrogram latents' per-bin statistics: identity until fitted (`fit_audio_scale`).
            init.ones_(module.bin_scale)
            if getattr(module, "bin_mean", None) is not None:
                init.zeros_(module.bin_mean)

    # -- the contract ---------------------------------------------------------------------

    @property
    def is_conditional(self) -> bool:
        """Whether `denoise` expects conditioning tokens (text models with a source text)."""
        return bool(self.config.conditional)

    def latent_shape(self, batch_size: int) -> Tuple[int, int, int]:
        """(B, L, latent_dim) of the latents this model samples."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}.")
        return (batch_size, self.config.num_latent_tokens(), self.config.latent_dim)

    def _fixed_length(self) -> bool:
        """Whether every latent sequence must have exactly `num_latent_tokens()` tokens."""
        return True

    def check_latents(self, name: str, latents) -> None:
        """ValueError unless `latents` is finite, [B, L, latent_dim] (L fixed where the modality needs it)."""
        L = self.config.num_latent_tokens()
        hint = f"[B, {L if self._fixed_length() else 'L'}, latent_dim={self.config.latent_dim}]"
        check_float_tensor(name, latents, hint, 3, self.config.latent_dim)
        if self._fixed_length() and latents.shape[1] != L:
            raise ValueError(f"`{name}` must have shape {hint}, got {list(latents.shape)}.")

    def encode_condition(self, **cond_inputs) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Conditioning tokens [B, Lc, d_model] and mask [B, Lc] (True = valid) from raw inputs.

        Unconditional models return (None, None) and refuse any input.
        """
        if not self.is_conditional:
            if any(v is not None for v in cond_inputs.values()):
                raise ValueError(f"This {self.config.modality} model is unconditional; it takes no conditioning, got {sorted(cond_inputs)}.")
            return None, None
        return self.adapter.encode_condition(**cond_inputs)

    def denoise(
        self,
        x_t: torch.Tensor,
        t,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """One denoiser call: the model output (config.prediction_type) for x_t at step t.

        Args:
            x_t (`torch.FloatTensor` `[B, L, latent_dim]`): noisy latents.
            t (`torch.LongTensor` `[B]`): timesteps in [0, num_timesteps).
            cond_tokens (`[B, Lc, d_model]`), cond_mask (`[B, Lc]`, 1 = valid): from `encode_condition`;
                required by conditional models, refused by unconditional ones.
            class_labels (`torch.LongTensor` `[B]`): class-conditional models (`config.num_classes`):
                each sample's class, or `num_classes` (the null label) for the unconditional output.

        Returns:
            `torch.FloatTensor` `[B, L, latent_dim]`.
        """
        self.check_latents("x_t", x_t)
        if self.is_conditional and cond_tokens is None:
            raise ValueError("This model is conditional: pass `cond_tokens` (from `encode_condition`).")
        extra = self.embed_class_labels(class_labels, x_t.shape[0], x_t.device)
        return self.backbone(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, extra_embedding=extra)

    def data_to_latents(self, batch) -> torch.Tensor:
        """Clean latents x0 [B, L, latent_dim] from a batch of data (see the modality's docstring)."""
        return self.adapter.data_to_latents(batch)

    def decode_latents(self, latents: torch.Tensor):
        """Data from latents [B, L, latent_dim] (see the modality's docstring for the output)."""
        self.check_latents("latents", latents)
        return self.adapter.decode_latents(latents)

    def postprocess(self, latents: torch.Tensor, data, output_type: str = "data", tokenizer=None) -> list:
        """The pipeline's outputs, one dict per sample: `{"latent": tensor}` for `output_type="latent"`,
        else the modality's own conversion of `data` (`decode_latents(latents)`), `outputs_from_data`."""
        if output_type == "latent":
            return [{"latent": x} for x in latents]
        return self.outputs_from_data(self.config, data, output_type, tokenizer)

    @staticmethod
    def outputs_from_data(config, data, output_type: str = "data", tokenizer=None) -> list:
        """Decoded data to one dict per sample: `{"np": array}` for `output_type="np"`, else the
        modality's form (each modality model overrides this)."""
        raise ValueError(f"The pipeline cannot turn {config.modality!r} latents into data; use output_type='latent'.")

    def get_schedule(self, device=None) -> DDPMBetaSchedule:
        """The noise schedule of `config` (float64), on `device` (default: the model's)."""
        key = (self.config.num_timesteps, self.config.beta_start, self.config.beta_end, self.config.beta_schedule)
        cached = self.__dict__.get("_schedule")
        if cached is None or cached[0] != key:
            cached = (key, DDPMBetaSchedule.from_config(self.config))
            self.__dict__["_schedule"] = cached  # not a submodule: never saved, never cast
        schedule = cached[1]
        return schedule.to(device if device is not None else self.device)

    @property
    def sample_clip_value(self) -> Optional[float]:
        """A bound on clean latents for `sample_loop(clip_sample=...)`, where the latent space has
        one (pixel patches: normalised pixels x latent_scale); None otherwise."""
        return None

    def _condition_from_batch(self, batch: Mapping) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Conditioning of a training batch (text: `cond_input_ids`, `cond_attention_mask`)."""
        return None, None

    def _recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        return self.adapter.recon_loss(batch, x0)

    def compute_loss(self, batch, generator: Optional[torch.Generator] = None) -> QGFDDiffusionOutput:
        """The training loss on a batch: t ~ U{0..T-1}, noise ~ N(0, I), prediction-type target.

        Args:
            batch (`dict` or `torch.Tensor`): the modality's data (see `data_to_latents`), and
                for conditional text models `cond_input_ids` / `cond_attention_mask`, for
                class-conditional models `class_labels` [B]. In training mode each sample's
                condition is replaced by the null condition with probability `cond_dropout_prob`.
            generator (`torch.Generator`, *optional*): draws t and the noise (reproducible losses).

        Returns:
            `QGFDDiffusionOutput` (a dict): `loss` = diffusion_loss + recon_weight * recon_loss.
        """
        x0 = self.data_to_latents(batch)
        cond_tokens, cond_mask = self._condition_from_batch(batch)
        class_labels = self._class_labels_from_batch(batch, x0.shape[0])
        t, noise = self._draw_t_and_noise(x0, generator)
        # Condition dropout (DiT's label dropout): these samples train the null condition.
        drop = self._draw_condition_dropout(x0.shape[0], generator, x0.device)
        extra = {k: v for k, v in (("class_labels", class_labels), ("drop_condition", drop)) if v is not None}
        diffusion_loss = self.diffusion_forward(x0, t, cond_tokens=cond_tokens, cond_mask=cond_mask, noise=noise, **extra)
        recon = self._recon_loss(batch, x0)
        recon = recon if recon is not None else diffusion_loss.new_zeros(())
        loss = diffusion_loss + self.config.recon_weight * recon
        return QGFDDiffusionOutput(loss=loss, diffusion_loss=diffusion_loss, recon_loss=recon)

    def forward(self, batch=None, generator: Optional[torch.Generator] = None, **batch_kwargs) -> QGFDDiffusionOutput:
        """`compute_loss` on `batch` (or on the keyword arguments: `model(**batch)`)."""
        if batch is None:
            batch = batch_kwargs
        elif batch_kwargs:
            raise ValueError(f"Pass the batch either as `batch` or as keywords, not both (got {sorted(batch_kwargs)}).")
        return self.compute_loss(batch, generator=generator)

    def _draw_t_and_noise(self, x0: torch.Tensor, generator: Optional[torch.Generator]):
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.config.num_timesteps, (x0.shape[0],), generator=generator, device=gen_device)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
        return t.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)

    def diffusion_forward(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        schedule: Optional[DDPMBetaSchedule] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        drop_condition: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The diffusion loss (scalar MSE) for clean latents x0 at timesteps t (the seed's method).

        1. x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps [DDPM Eq. 4];
        2. target: eps, x0 or v (config.prediction_type);
        3. MSE between `denoise(x_t, t, cond, class_labels)` and the target, with the null
           condition for the samples where `drop_condition` [B] is True;
        4. with `config.snr_gamma`, each example's MSE weighted by min-SNR-gamma.
        """
        self.check_latents("x0", x0)
        if drop_condition is not None:
            cond_tokens, cond_mask, class_labels = self.null_condition_like(drop_condition, cond_tokens, cond_mask, class_labels)
        schedule = schedule if schedule is not None else self.get_schedule(x0.device)
        t = check_timesteps(t, x0.shape[0], self.config.num_timesteps, x0.device)
        x_t, noise = q_sample(x0, t, schedule, noise)
        x_t = self._clean_tokens(x_t, x0, drop_condition)
        target = diffusion_target(x0, noise, t, schedule, self.config.prediction_type)
        model_output = self.denoise(x_t, t, cond_tokens=cond_tokens, cond_mask=cond_mask, **({} if class_labels is None else {"class_labels": class_labels}))
        keep = self._loss_tokens(x0)
        if keep is not None:
            model_output, target = model_output[:, keep], target[:, keep]  # (B, L', Dl)
        gamma = getattr(self.config, "snr_gamma", None)
        if gamma is None:
            return F.mse_loss(model_output.float(), target.float())
        # 4. min-SNR-gamma: each example's MSE weighted by min(SNR(t), gamma), written for the target
        per_example = ((model_output.float() - target.float()) ** 2).flatten(1).mean(1)  # (B,)
        return (min_snr_weights(t, schedule, gamma, self.config.prediction_type) * per_example).mean()

    def _clean_tokens(self, x_t: torch.Tensor, x0: torch.Tensor, drop_condition: Optional[torch.Tensor]) -> torch.Tensor:
        """x_t as the denoiser sees it in training: tokens that stay clean (the tabular label) put back."""
        return x_t

    def _loss_tokens(self, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """The latent tokens [L] (bool) the loss covers; None: all of them."""
        return None

    @torch.no_grad()
    def fit_latent_scale(self, batch) -> float:
        """Set `config.latent_scale` so that the latents of `batch` have unit std; returns it.

        Call it once on a representative batch before training (as Stable Diffusion's scale
        factor): a model trained with one scale must be sampled with the same.
        """
        x0 = self.data_to_latents(batch).float()
        std = float(x0.std())
        if not std > 0:
            raise ValueError("The batch's latents have zero spread; cannot fit a latent scale.")
        self.config.latent_scale = float(self.config.latent_scale / std)
        return self.config.latent_scale


__all__ = [
    "ALL_MODEL_CLASSES",
    "MODEL_CLASSES",
    "QGFDDiffusionBackbone",
    "QGFDDiffusionOutput",
    "QGFDPreTrainedModel",
    "register_model_class",
]
