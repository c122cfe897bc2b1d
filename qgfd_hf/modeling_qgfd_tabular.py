# coding=utf-8
"""Tabular diffusion: `TabularAdapter` (rows <-> one token per column, or the seed's MLP latents)
and `TabularQGFDDiffusionModel` (a label column held clean), with its output conversion (rows).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import logging

from .configuration_qgfd_tabular import QGFDTabularConfig
from .modeling_qgfd import QGFDPreTrainedModel, register_model_class
from .modeling_qgfd_adapters import ADAPTERS, _get, _ModalityAdapter, _resolve_adapter_config, build_denoiser
from .modeling_qgfd_checks import check_float_tensor
from .modeling_qgfd_guidance import labels_from_uniform
from .scheduling_qgfd_sampling import sample_loop

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------


_QUANTILE_EPS = 1e-3  # the quantile transform maps [0, 1] into [eps, 1 - eps]: |z| <= 3.09


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor, side: str = "right") -> torch.Tensor:
    """Piecewise-linear interpolation row by row: x [F, N] on knots xp [F, Q] (non-decreasing,
    ties allowed) with values fp [F, Q]; constant beyond the ends. On a run of tied knots,
    side="right" takes the last of them, "left" the first (numpy's and sklearn's conventions)."""
    Q = xp.shape[1]
    if side == "right":  # xp[j] <= x < xp[j + 1]
        j = torch.searchsorted(xp, x.contiguous(), right=True) - 1
        lo = j.clamp(0, Q - 2)
        below, above = j < 0, j >= Q - 1
    else:  # xp[k - 1] < x <= xp[k]
        k = torch.searchsorted(xp, x.contiguous(), right=False)
        lo = (k - 1).clamp(0, Q - 2)
        below, above = k <= 0, k >= Q
    x0, x1 = xp.gather(1, lo), xp.gather(1, lo + 1)
    f0, f1 = fp.gather(1, lo), fp.gather(1, lo + 1)
    w = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    out = f0 + w * (f1 - f0)
    out = torch.where(below, fp[:, :1].expand_as(out), out)
    return torch.where(above, fp[:, -1:].expand_as(out), out)


def category_codes(num_categories: int, width: int, seed: int) -> "torch.Tensor":
    """The fixed codes [K, width] of a categorical column's K categories: -1 / +1 on the first
    coordinate for K <= 2, a +-1 one-hot (2 e_k - 1) on the first K coordinates for K <= width,
    else random Gaussian codes (numpy, seeded) of norm sqrt(width), nearly orthogonal."""
    import numpy as np

    K = num_categories
    codes = np.zeros((K, width), dtype=np.float32)
    if K <= 2:
        codes[:, 0] = [1.0] if K == 1 else [-1.0, 1.0]
    elif K <= width:
        codes[:, :K] = 2 * np.eye(K, dtype=np.float32) - 1
    else:
        r = np.random.default_rng(seed).standard_normal((K, width)).astype(np.float32)
        codes = r / np.linalg.norm(r, axis=1, keepdims=True) * np.sqrt(width)
    return torch.tensor(codes)


class TabularAdapter(_ModalityAdapter):
    """Rows of a table <-> latents; every statistic is fitted from data by `fit_normalization`.

    Rows are float tensors `features` [B, F] in the original units, a categorical column
    holding the index of its category in `config.columns[j]["categories"]`. A model whose
    statistics were never fitted refuses to encode or decode (`fitted` buffer).

    - `latent_space="columns"`: one token per column, [B, F, Dl]. Numeric columns: the
      quantile transform (the column's empirical CDF at `num_quantiles` knots, then the
      standard normal quantile, TabDDPM's choice) or (x - mean) / std, on the token's first
      coordinate; categorical columns: their category's fixed code (`category_codes`).
      Decoding inverts both: the inverse transform (integer columns rounded into their
      training range) and the nearest code. Exact up to the knots' interpolation.
    - `latent_space="mlp"` (the seed's): standardise, then a frozen random MLP
      F -> hidden -> L * Dl (variance-preserving init) reshaped to [B, L, Dl]; a learned MLP
      decoder back to F, trained by the reconstruction loss.

    Example:
        >>> cfg = QGFDTabularConfig(columns=[{"name": "x", "kind": "float"}, {"name": "n", "kind": "int"},
        ...                                  {"name": "c", "kind": "category", "categories": ["a", "b", "c"]}],
        ...                         d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> adapter = TabularAdapter(cfg)
        >>> rows = torch.tensor([[0.5, 3.0, 2.0], [1.5, 7.0, 0.0], [9.0, 5.0, 1.0]])
        >>> adapter.fit_normalization(rows)
        >>> x0 = adapter.data_to_latents({"features": rows})
        >>> x0.shape, torch.allclose(adapter.decode_latents(x0), rows, atol=1e-4)
        (torch.Size([3, 3, 3]), True)
    """

    modality = "tabular"

    def __init__(self, config, shared_cfg=None):
        config, _ = _resolve_adapter_config("tabular", config, shared_cfg)
        super().__init__(config, shared_cfg)
        F_, D = config.num_features, config.latent_dim
        cols = config.columns
        self.label_index = None
        self.numeric = [j for j, c in enumerate(cols) if c["kind"] != "category"]
        self.integer = [j for j, c in enumerate(cols) if c["kind"] == "int"]
        self.categorical = [j for j, c in enumerate(cols) if c["kind"] == "category"]
        self.register_buffer("feature_mean", torch.zeros(F_))
        self.register_buffer("feature_std", torch.ones(F_))
        self.register_buffer("fitted", torch.zeros(()))  # 1 once `fit_normalization` has run
        self._qgfd_init = "feature_stats"  # see QGFDPreTrainedModel._init_weights
        if config.latent_space == "columns":
            self.register_buffer("quantiles", torch.zeros(F_, config.num_quantiles))  # (F, Q) knots at `_levels()`
            codes, self.code_slices = [], {}
            for j in self.categorical:
                K = len(cols[j]["categories"])
                start = sum(len(c) for c in codes)
                codes.append(category_codes(K, D, seed=j))
                self.code_slices[j] = (start, start + K)
            self.register_buffer("category_codes", torch.cat(codes) if codes else torch.zeros(0, D))  # (sum K, Dl)
            names = [c["name"] for c in cols]
            self.label_index = names.index(config.label_column) if config.label_column is not None else None
            if self.label_index is not None and self.in_shared_space:
                raise ValueError(
                    f"`label_column`={config.label_column!r} (class-conditional generation) is implemented by "
                    "TabularQGFDDiffusionModel; the shared model generates all columns jointly: pass label_column=None."
                )
            if self.label_index is not None:  # the label's training frequencies (class-conditional sampling)
                self.register_buffer("label_probs", torch.zeros(len(cols[self.label_index]["categories"])))
        else:
            L, Hd = config.num_tokens, config.tabular_hidden_dim
            first, second = nn.Linear(F_, Hd), nn.Linear(Hd, L * D)
            first._qgfd_init, second._qgfd_init = "he", "lecun"
            self.encoder_mlp = nn.Sequential(first, nn.GELU(), second)
            if config.freeze_encoder:
                self.encoder_mlp.requires_grad_(False)
            self.decoder = nn.Sequential(nn.Linear(L * D, Hd), nn.GELU(), nn.Linear(Hd, Hd), nn.GELU(), nn.Linear(Hd, F_))

    @property
    def is_fitted(self) -> bool:
        # Cached on the host once true: reading the buffer on every encode would be a device sync
        # each training step. Loading a state dict forgets the cache (`_load_from_state_dict`).
        if not self.__dict__.get("_fitted_host", False):
            self.__dict__["_fitted_host"] = bool(self.fitted > 0)
        return self.__dict__["_fitted_host"]

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_fitted_host", None)
        return super()._load_from_state_dict(*args, **kwargs)

    def check_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"This tabular model was never fitted to data, so it cannot {what}: its column statistics are "
                "placeholders and every number would be silently wrong. Call `model.fit_normalization(features)` "
                "on the training rows first (`qgfd-hf train --modality tabular` does)."
            )

    # -- statistics -------------------------------------------------------------------------

    @torch.no_grad()
    def fit_normalization(self, features: torch.Tensor) -> None:
        """Fit every column statistic from training rows [N, F] (mean, std and, for "columns"
        latents, the quantile knots); constant numeric columns get std 1 (with a warning)."""
        self.check_features(features)
        if features.shape[0] < 2:
            raise ValueError(f"`fit_normalization` needs at least 2 rows, got {features.shape[0]}.")
        x = features.float()
        std = x.std(0)
        constant = (std < 1e-8) & torch.tensor([c["kind"] != "category" for c in self.modality_config.columns])
        if bool(constant.any()):
            names = [self.modality_config.columns[j]["name"] for j in constant.nonzero().flatten().tolist()]
            logger.warning(f"Columns {names} are constant in the fitted rows; their std is set to 1.")
        self.feature_mean.copy_(x.mean(0))
        self.feature_std.copy_(torch.where(std < 1e-8, torch.ones_like(std), std))
        if self.modality_config.latent_space == "columns":
            levels = self._levels(1, x.device)[0]
            self.quantiles.copy_(torch.quantile(x.t().contiguous(), levels, dim=1).t())  # (F, Q)
            if self.label_index is not None:
                counts = torch.bincount(x[:, self.label_index].long(), minlength=self.label_probs.numel()).float()
                self.label_probs.copy_(counts / counts.sum())
        self.fitted.fill_(1.0)
        self.__dict__["_fitted_host"] = True

    def check_features(self, features) -> None:
        """ValueError unless `features` is finite [B, F] and every categorical cell is a category index."""
        cols = self.modality_config.columns
        check_float_tensor("features", features, f"[B, num_features={len(cols)}]", 2, len(cols))
        for j in self.categorical:
            v, K = features[:, j], len(cols[j]["categories"])
            bad = (v != v.round()) | (v < 0) | (v >= K)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise ValueError(
                    f"Column {cols[j]['name']!r} is categorical: `features[:, {j}]` must hold the index (0..{K - 1}) of "
                    f"one of its {K} categories {cols[j]['categories'][:10]}, got {float(v[i])!r} in row {i}."
                )

    # -- "columns" latents ------------------------------------------------------------------

    def _levels(self, rows: int, device) -> torch.Tensor:
        """The quantile levels of the knots, 0 .. 1, as [rows, Q]."""
        Q = self.modality_config.num_quantiles
        return torch.linspace(0, 1, Q, device=device).expand(rows, Q).contiguous()

    def _codes(self, j: int, like: torch.Tensor) -> torch.Tensor:
        a, b = self.code_slices[j]
        return self.category_codes[a:b].to(like.dtype)  # (K, Dl)

    def _to_normal(self, x: torch.Tensor) -> torch.Tensor:
        """Numeric columns [B, Fn] -> standard-normal scores [B, Fn]."""
        idx = self.numeric
        if self.modality_config.numeric_transform == "standard":
            return (x - self.feature_mean[idx]) / self.feature_std[idx]
        knots, levels = self.quantiles[idx], self._levels(len(idx), x.device)
        xt = x.t().float()  # (Fn, B)
        u = 0.5 * (_interp(xt, knots, levels, "right") + _interp(xt, knots, levels, "left"))  # ties: their mid-level
        z = torch.special.ndtri(_QUANTILE_EPS + (1 - 2 * _QUANTILE_EPS) * u)
        return z.t().to(x.dtype)

    def _from_normal(self, z: torch.Tensor) -> torch.Tensor:
        """Standard-normal scores [B, Fn] -> numeric columns [B, Fn] in their units."""
        idx = self.numeric
        if self.modality_config.numeric_transform == "standard":
            return z * self.feature_std[idx] + self.feature_mean[idx]
        knots, levels = self.quantiles[idx], self._levels(len(idx), z.device)
        u = ((torch.special.ndtr(z.t().float()) - _QUANTILE_EPS) / (1 - 2 * _QUANTILE_EPS)).clamp(0, 1)  # (Fn, B)
        return _interp(u.contiguous(), levels.contiguous(), knots).t().to(z.dtype)

    def _columns_to_tokens(self, features: torch.Tensor) -> torch.Tensor:
        B, D = features.shape[0], self.modality_config.latent_dim
        tokens = features.new_zeros(B, features.shape[1], D)  # (B, F, Dl)
        if self.numeric:
            tokens[:, self.numeric, 0] = self._to_normal(features[:, self.numeric])
        for j in self.categorical:
            tokens[:, j] = self._codes(j, tokens)[features[:, j].long()]  # (B, Dl)
        return tokens

    def _tokens_to_columns(self, tokens: torch.Tensor) -> torch.Tensor:
        out = tokens.new_zeros(tokens.shape[0], tokens.shape[1])  # (B, F)
        if self.numeric:
            out[:, self.numeric] = self._from_normal(tokens[:, self.numeric, 0])
        if self.integer:
            lo, hi = self.quantiles[self.integer, 0], self.quantiles[self.integer, -1]  # the training range
            out[:, self.integer] = torch.maximum(torch.minimum(out[:, self.integer].round(), hi.round()), lo.round())
        for j in self.categorical:
            codes = self._codes(j, tokens)  # (K, Dl)
            scores = tokens[:, j] @ codes.t() - 0.5 * (codes**2).sum(-1)  # nearest code: -|x - c|^2 / 2 + const
            out[:, j] = scores.argmax(-1).to(out.dtype)
        return out

    def label_tokens_from_noise(self, x_T: torch.Tensor) -> torch.Tensor:
        """Class-conditional sampling: the label token [B, Dl] of each sample, its category drawn
        from the training frequencies by inverse CDF of the first coordinate of the label
        token's starting noise (so a sample's label depends on its own noise only)."""
        u = torch.special.ndtr(x_T[:, self.label_index, 0].float())  # (B,) uniform
        idx = labels_from_uniform(self.label_probs, u)  # (B,)
        tokens = self._codes(self.label_index, x_T)[idx]  # (B, Dl)
        return tokens * self.modality_config.latent_scale

    def label_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """The label tokens [B, Dl] of the requested categories `labels` [B] (indices of the label column's)."""
        return self._codes(self.label_index, self.category_codes)[labels] * self.modality_config.latent_scale

    # -- the adapter contract ---------------------------------------------------------------

    def tabular_to_latents(self, features: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, Dl] of rows [B, F] (original units, categories as indices)."""
        self.check_fitted("encode rows")
        self.check_features(features)
        if self.modality_config.latent_space == "columns":
            tokens = self._columns_to_tokens(features)  # (B, F, Dm)
        else:
            z = (features - self.feature_mean.to(features.dtype)) / self.feature_std.to(features.dtype)  # (B, F)
            with self._encoder_context():
                tokens = self.encoder_mlp(z)  # (B, L * Dm)
            tokens = tokens.reshape(features.shape[0], self.modality_config.num_tokens, -1)  # (B, L, Dm)
        return self.to_shared(tokens * self.modality_config.latent_scale)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, L, Dl] from `batch["features"]` [B, F]."""
        return self.tabular_to_latents(_get(batch, "features", "tabular"))

    def decode_standardized(self, latents: torch.Tensor) -> torch.Tensor:
        """"mlp" latents: the decoder's standardised rows [B, F]."""
        h = self.from_shared(latents)  # (B, L, Dm)
        return self.decoder(h.reshape(h.shape[0], -1))  # (B, L*Dm) -> (B, F)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Rows [B, F] in the original units: integer columns hold integers, categorical ones
        their category's index."""
        self.check_fitted("decode latents")
        if self.modality_config.latent_space == "columns":
            return self._tokens_to_columns(self.from_shared(latents) / self.modality_config.latent_scale)
        z = self.decode_standardized(latents)
        rows = z * self.feature_std.to(z.dtype) + self.feature_mean.to(z.dtype)
        if self.integer:
            rows[:, self.integer] = rows[:, self.integer].round()
        return rows

    def recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """"mlp" latents: MSE of the learned decoder on standardised rows; "columns": None (exact)."""
        if self.modality_config.latent_space == "columns":
            return None
        features = _get(batch, "features", "tabular")
        z = (features - self.feature_mean.to(features.dtype)) / self.feature_std.to(features.dtype)
        return F.mse_loss(self.decode_standardized(x0).float(), z.float())

# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


class TabularQGFDDiffusionModel(QGFDPreTrainedModel):
    """Unconditional diffusion over the rows of a table (`config.columns`: numeric, integer and
    categorical columns).

    - `fit_normalization(features)` once on the training rows: the column statistics (quantile
      knots, mean, std) are buffers, saved with the model; a model never fitted refuses to
      compute a loss, encode, decode or sample;
    - `data_to_latents({"features"})` / `tabular_to_latents(features)`: rows [B, F] (categories
      as indices) -> x0 [B, L, latent_dim] (L = F with the default "columns" latents);
    - `decode_latents(latents)` -> rows [B, F] in the original units (the pipeline maps category
      indices back to their values);
    - `compute_loss` adds the decoder's reconstruction loss ("mlp" latents only).

    Example:
        >>> cfg = QGFDTabularConfig(columns=[{"name": "x", "kind": "float"},
        ...                                  {"name": "y", "kind": "category", "categories": ["no", "yes"]}],
        ...                         d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> model = TabularQGFDDiffusionModel(cfg)
        >>> rows = torch.tensor([[0.3, 1.0], [2.5, 0.0], [1.1, 1.0]])
        >>> model.fit_normalization(rows)
        >>> model.latent_shape(2), model.decode_latents(model.tabular_to_latents(rows)).shape
        ((2, 2, 1), torch.Size([3, 2]))
    """

    config_class = QGFDTabularConfig
    hub_pipeline_tags = ("other", "other")  # the model card's pipeline_tag (the Hub's tabular tasks classify or regress)
    pipeline_outputs = ("rows", '[{"row": {column: value}}, ...]', 8)  # the card's example
    main_input_name = "features"

    def __init__(self, config: QGFDTabularConfig):
        super().__init__(config)
        self.adapter = TabularAdapter(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def tabular_to_latents(self, features: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, latent_dim] of rows [B, num_features]."""
        return self.adapter.tabular_to_latents(features)

    def fit_normalization(self, features: torch.Tensor) -> None:
        """Fit the column statistics to training rows `features` [N, F] (buffers, saved with the model)."""
        self.adapter.fit_normalization(features)

    @property
    def is_fitted(self) -> bool:
        """Whether `fit_normalization` has run (on this model or on the one saved)."""
        return self.adapter.is_fitted

    @property
    def num_classes(self) -> Optional[int]:
        """With `config.label_column`: its categories are the classes (`class_labels` index them)."""
        j = self.adapter.label_index
        return None if j is None else len(self.config.columns[j]["categories"])

    # The loss is `QGFDPreTrainedModel.diffusion_forward`'s; with `config.label_column`, the label's
    # token stays clean in x_t and out of the loss (the denoiser learns the other columns given the
    # label). Where `drop_condition` [B] is True (condition dropout), the label token is the null
    # token, zeros: no category's code is zero.

    def _clean_tokens(self, x_t, x0, drop_condition=None):
        j = self.adapter.label_index
        if j is None:
            return x_t
        label = x0[:, j : j + 1]  # (B, 1, Dl)
        if drop_condition is not None:
            label = torch.where(drop_condition[:, None, None], torch.zeros_like(label), label)  # the null label token
        return torch.cat([x_t[:, :j], label, x_t[:, j + 1 :]], 1)  # (B, L, Dl)

    def _loss_tokens(self, x0):
        j = self.adapter.label_index
        return None if j is None else torch.arange(x0.shape[1], device=x0.device) != j

    @torch.no_grad()
    def diffusion_sample(self, num_samples: Optional[int] = None, cond_tokens=None, cond_mask=None, *, schedule=None,
                         sampler: str = "ddim", num_inference_steps: Optional[int] = None, eta: float = 0.0,
                         generator: Optional[torch.Generator] = None, progress: bool = False, clip_sample: Optional[float] = None,
                         x_T: Optional[torch.Tensor] = None, timestep_spacing: Optional[str] = None,
                         steps_offset: Optional[int] = None, class_labels=None, guidance_scale: float = 1.0) -> torch.Tensor:
        """As `QGFDPreTrainedModel.diffusion_sample`, refused before the loop on a never-fitted
        model; with `config.label_column`, each sample's label is `class_labels` (indices of the
        label column's categories), else drawn first (from the training frequencies,
        `TabularAdapter.label_tokens_from_noise`), and held fixed while the other columns are
        denoised. `guidance_scale` != 1 guides against the null (zero) label token, for a model
        trained with `cond_dropout_prob` > 0."""
        self.adapter.check_fitted("sample")
        kwargs = dict(schedule=schedule, sampler=sampler, num_inference_steps=num_inference_steps, eta=eta, generator=generator,
                      progress=progress, clip_sample=clip_sample, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
        j = self.adapter.label_index
        if j is None:
            return super().diffusion_sample(num_samples, cond_tokens, cond_mask, x_T=x_T, class_labels=class_labels,
                                            guidance_scale=guidance_scale, **kwargs)
        self.encode_condition(cond_tokens=cond_tokens)  # unconditional: refuses conditioning
        if num_samples is None:
            num_samples = x_T.shape[0] if x_T is not None else len(class_labels) if isinstance(class_labels, (list, tuple, torch.Tensor)) else 1
        class_labels, guidance_scale = self.check_guidance(num_samples, class_labels, guidance_scale)
        if x_T is None:
            gen_device = generator.device if generator is not None else self.device
            x_T = torch.randn(self.latent_shape(num_samples), generator=generator, device=gen_device, dtype=torch.float32)
        x_T = x_T.to(device=self.device, dtype=self.dtype)
        if class_labels is None:
            label = self.adapter.label_tokens_from_noise(x_T)  # (B, Dl)
        else:
            label = self.adapter.label_tokens(class_labels.to(self.device)).to(x_T.dtype)  # (B, Dl)
        put = lambda x, tok: torch.cat([x[:, :j], tok[:, None], x[:, j + 1 :]], 1)  # the label's clean token at j

        # Classifier-free guidance (guidance_scale != 1): [label; null label] in one denoiser call.
        denoise_fn = self.make_denoise_fn(guidance_scale=guidance_scale,
                                          inputs=(lambda x: put(x, label), lambda x: put(x, torch.zeros_like(label))))
        kwargs["schedule"] = schedule if schedule is not None else self.get_schedule()
        x = sample_loop(denoise_fn, tuple(x_T.shape), prediction_type=self.config.prediction_type, device=self.device,
                        dtype=self.dtype, x_T=x_T, **kwargs)
        return put(x, label)

    # -- output conversion (the pipeline's outputs) ------------------------------------------

    @staticmethod
    def outputs_from_data(config, data, output_type: str = "data", tokenizer=None) -> list:
        """Rows [B, F] to `{"row": {column: value}}` (categories as their values, integer columns as
        ints), or `{"np": [F]}` (categories as indices)."""
        data = data.float()
        if output_type == "np":
            return [{"np": x} for x in data.numpy()]
        # The columns' own values: a category (as saved in `config.columns`), an int, a float.
        columns = getattr(config, "columns", None) or [{"name": f"feature_{i}", "kind": "float"} for i in range(data.shape[-1])]
        items = []
        for x in data:
            row = {}
            for c, v in zip(columns, x.tolist()):
                row[c["name"]] = c["categories"][int(v)] if c["kind"] == "category" else int(v) if c["kind"] == "int" else float(v)
            items.append({"row": row})
        return items


ADAPTERS["tabular"] = TabularAdapter
register_model_class(TabularQGFDDiffusionModel)

__all__ = ["TabularAdapter", "TabularQGFDDiffusionModel"]
