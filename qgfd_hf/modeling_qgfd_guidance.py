# coding=utf-8
"""Conditioning and classifier-free guidance, written once for every QGFD diffusion model.

`QGFDGuidanceMixin` (a base of `QGFDPreTrainedModel`) holds class labels (`ClassEmbedding`), the
learned null condition, condition dropout in training (DiT's label dropout), the checks of a
sampling request, and the sampling entry point: `make_denoise_fn` (the conditional and the
unconditional passes in one batched denoiser call, combined by `classifier_free_guidance`) and
`diffusion_sample`, which hands that function to `scheduling_qgfd_sampling.sample_loop`.

Shapes: `B` batch, `L` latent length, `Lc` conditioning length, `D` d_model, `Dl` latent_dim.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .modeling_qgfd_checks import _INT_DTYPES, check_class_labels, check_guidance_scale, check_timesteps
from .modeling_qgfd_embeddings import ClassEmbedding
from .scheduling_qgfd import DDPMBetaSchedule
from .scheduling_qgfd_sampling import sample_loop


UNCONDITIONAL = "unconditional"  # `class_labels="unconditional"`: the null label, an explicit choice


def labels_from_uniform(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Class indices [B] drawn from the frequencies `probs` [K] by inverse CDF of the uniforms `u` [B]
    (the class-conditional default of every modality; tables take `u` from their label token's noise)."""
    cdf = torch.cumsum(probs.float(), 0)
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=cdf.numel() - 1)


def classifier_free_guidance(cond_output: torch.Tensor, uncond_output: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """out_u + s (out_c - out_u) [Ho & Salimans 2022, Eq. 6].

    The weights (1 - s, s) sum to 1 and, at fixed x_t and t, the eps, x0 and v predictions are
    affine functions of one another, so guiding the model's own output (whatever its
    `prediction_type`) is the same as guiding eps: the guided x0 and v follow from the guided eps.
    """
    return uncond_output + guidance_scale * (cond_output - uncond_output)


class QGFDGuidanceMixin:
    """Class labels, the null condition, condition dropout and classifier-free guidance of a QGFD
    model, and its sampling entry point (`make_denoise_fn`, `diffusion_sample`). It relies on the
    model's `config`, `backbone`, `denoise`, `latent_shape`, `get_schedule`, `device` and `dtype`."""

    def build_condition_embeddings(self) -> None:
        """The learned conditioning the config asks for: a `ClassEmbedding` (`num_classes`), added
        to the denoiser's timestep embedding (it takes the denoiser's width, so each model calls
        this once its `backbone` exists); and a text model's null source text, one learned token
        (`cond_dropout_prob` > 0), for training with condition dropout and for guidance."""
        cfg = self.config
        if getattr(cfg, "num_classes", None) is not None:
            self.class_embedding = ClassEmbedding(cfg.num_classes, getattr(self.backbone, "width", cfg.d_model))
        if cfg.conditional and (getattr(cfg, "cond_dropout_prob", 0.0) or 0.0) > 0:
            self.null_condition = nn.Embedding(1, cfg.d_model)  # (1, D): the null source text's one token

    @property
    def num_classes(self) -> Optional[int]:
        """K for a class-conditional model (class labels 0..K-1), else None."""
        return getattr(self.config, "num_classes", None)

    @property
    def has_null_condition(self) -> bool:
        """Whether the model learned the null condition (trained with `cond_dropout_prob` > 0), which
        unconditional sampling and classifier-free guidance need."""
        return (getattr(self.config, "cond_dropout_prob", 0.0) or 0.0) > 0

    def embed_class_labels(self, class_labels, batch_size: int, device) -> Optional[torch.Tensor]:
        """The label embedding [B, D] added to the timestep embedding (None for a model without classes)."""
        K = getattr(self.config, "num_classes", None)
        if K is None:
            if class_labels is not None:
                raise ValueError(f"This {self.config.modality} model is not class-conditional (num_classes=None); pass class_labels=None.")
            return None
        if class_labels is None:
            raise ValueError(
                f"This model is class-conditional ({K} classes): pass `class_labels` [B] (the null label {K} for unconditional outputs)."
            )
        if isinstance(class_labels, torch.Tensor) and class_labels.dtype in _INT_DTYPES and class_labels.dim() == 1:
            # Checked where the labels came in (a batch, a sampling request): no host sync per step.
            if class_labels.shape[0] != batch_size:
                raise ValueError(f"`class_labels` has {class_labels.shape[0]} labels, the latents {batch_size} samples.")
            labels = class_labels
        else:
            labels = check_class_labels(class_labels, K, batch_size, allow_null=True)
        return self.class_embedding(labels.to(device=device, dtype=torch.long))

    def null_condition_like(self, drop: torch.Tensor, cond_tokens=None, cond_mask=None, class_labels=None):
        """The condition with the null condition where `drop` [B] (bool) is True: the null label
        for class labels; for a source text, the learned null token, the other positions masked.
        Returns `(cond_tokens, cond_mask, class_labels)`; the mask is explicit (bool) when there are tokens."""
        if class_labels is not None:
            class_labels = torch.where(drop, torch.full_like(class_labels, self.class_embedding.null_label), class_labels)
        if cond_tokens is not None:
            if getattr(self, "null_condition", None) is None:
                raise ValueError("This model has no null condition (trained with cond_dropout_prob=0).")
            B, Lc, _ = cond_tokens.shape
            valid = cond_mask.bool() if cond_mask is not None else torch.ones(B, Lc, dtype=torch.bool, device=cond_tokens.device)
            null_tokens = self.null_condition.weight.to(cond_tokens.dtype)[None].expand(B, Lc, -1)  # (B, Lc, D)
            null_mask = torch.zeros_like(valid)
            null_mask[:, 0] = True  # the null token alone
            cond_tokens = torch.where(drop[:, None, None], null_tokens, cond_tokens)
            cond_mask = torch.where(drop[:, None], null_mask, valid)
        return cond_tokens, cond_mask, class_labels

    def check_guidance(self, num_samples: int, class_labels=None, guidance_scale=1.0) -> Tuple[Optional[torch.Tensor], float]:
        """Check a sampling request: `(class_labels as a LongTensor [num_samples] or None, guidance_scale)`.

        Raises ValueError for labels on a model without classes, labels out of range, not integers
        or not one per sample, a guidance scale that is not a finite number >= 0, and guidance on a
        model that is unconditional or was trained without condition dropout (it has no
        unconditional path to guide against).
        """
        scale = check_guidance_scale(guidance_scale)
        K, modality = self.num_classes, self.config.modality
        if isinstance(class_labels, str):
            return self._unconditional_labels(num_samples, class_labels, scale), scale
        if class_labels is not None and K is None:
            if self.is_conditional:
                raise ValueError(f"This {modality} model is conditioned on a source text, not on class labels; drop class_labels.")
            raise ValueError(f"This {modality} model is not class-conditional (trained without class labels); drop class_labels.")
        if scale != 1.0:
            if not (self.is_conditional or K is not None):
                raise ValueError(
                    f"guidance_scale={guidance_scale!r}: classifier-free guidance needs a conditional model, and this {modality} "
                    "model is unconditional; use guidance_scale=1."
                )
            if not self.has_null_condition:
                raise ValueError(
                    f"guidance_scale={guidance_scale!r} needs the model's unconditional path, but it was trained without condition "
                    "dropout (cond_dropout_prob=0) and never learned the null condition. Sample with guidance_scale=1, or retrain "
                    "with cond_dropout_prob > 0 (qgfd-hf train --cond-dropout-prob 0.1)."
                )
        labels = None if class_labels is None else check_class_labels(class_labels, K, num_samples)
        return labels, scale

    def _unconditional_labels(self, num_samples: int, choice: str, scale: float) -> torch.Tensor:
        """`class_labels="unconditional"`: the null label [num_samples], for a class-conditional model
        trained with label dropout; any other string is refused, naming the allowed values."""
        K, modality = self.num_classes, self.config.modality
        if choice != UNCONDITIONAL:
            raise ValueError(
                f"`class_labels`={choice!r}: allowed are an int, a list of ints or a 1-D integer tensor (class indices), "
                f"{UNCONDITIONAL!r} (the null label) or None (class-conditional models: labels drawn from the training frequencies)."
            )
        if getattr(self.config, "label_column", None) is not None:
            raise ValueError(
                f"class_labels={UNCONDITIONAL!r} is for image, audio and video models; a table's label column is drawn from the "
                "training frequencies by default (class_labels=None) or fixed with class_labels=K."
            )
        if K is None:
            what = "conditioned on a source text, not on class labels" if self.is_conditional else "not class-conditional"
            raise ValueError(f"class_labels={UNCONDITIONAL!r}: this {modality} model is {what}, so it has no null label; drop class_labels.")
        if not self.has_null_condition:
            raise ValueError(
                f"class_labels={UNCONDITIONAL!r} needs the null label, but this model was trained without label dropout "
                "(cond_dropout_prob=0) and never learned it: pass class labels, or None (drawn from the training frequencies)."
            )
        if scale != 1.0:
            raise ValueError(f"class_labels={UNCONDITIONAL!r} with guidance_scale={scale:g}: guidance needs a class to guide towards; "
                             "use guidance_scale=1, or class labels.")
        return torch.full((num_samples,), K, dtype=torch.long)

    @property
    def class_frequencies(self) -> Optional[list]:
        """The training labels' frequencies that `config.class_frequencies` records (None: not recorded)."""
        return getattr(self.config, "class_frequencies", None) if getattr(self.config, "num_classes", None) is not None else None

    def draw_class_labels(self, num_samples: int, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """The default labels [num_samples] of a class-conditional model sampled without `class_labels`:
        drawn from `config.class_frequencies` with `generator` (reproducible with the sampling seed);
        None where the model recorded no frequencies (saved before they were: the null label instead)."""
        freqs = self.class_frequencies
        if freqs is None:
            return None
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(num_samples, generator=generator, device=gen_device)
        return labels_from_uniform(torch.tensor(freqs, dtype=torch.float64, device=gen_device), u).cpu()

    def _draw_condition_dropout(self, batch_size: int, generator: Optional[torch.Generator], device) -> Optional[torch.Tensor]:
        """Training: which samples [B] (bool) get the null condition, each with probability
        `cond_dropout_prob` (None in eval mode or without dropout)."""
        p = getattr(self.config, "cond_dropout_prob", 0.0) or 0.0
        if not self.training or p == 0:
            return None
        gen_device = generator.device if generator is not None else device
        return (torch.rand(batch_size, generator=generator, device=gen_device) < p).to(device)

    def _class_labels_from_batch(self, batch, batch_size: int) -> Optional[torch.Tensor]:
        """A training batch's `class_labels` [B] (class-conditional models; the collators add them)."""
        labels = batch.get("class_labels") if isinstance(batch, Mapping) else None
        K = getattr(self.config, "num_classes", None)
        if K is None:
            if labels is not None:
                raise ValueError(f"This {self.config.modality} model is not class-conditional (num_classes=None), but the batch has `class_labels`.")
            return None
        if labels is None:
            raise ValueError(
                f"This model is class-conditional ({K} classes): its batches need `class_labels` (the data's label column; "
                "qgfd_hf.data.core.ClassLabelCollator adds it)."
            )
        return check_class_labels(labels, K, batch_size).to(self.device)

    def make_denoise_fn(
        self,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        schedule: Optional[DDPMBetaSchedule] = None,
        class_labels: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        inputs: Optional[Tuple[Callable, Callable]] = None,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`denoise_fn(x_t, t)` for `scheduling_qgfd_sampling.sample_loop`, with the conditioning bound
        (and, for text models with `clamp_to_embeddings`, Diffusion-LM's clamping).

        With `guidance_scale` != 1, classifier-free guidance: the conditional and the
        unconditional (null condition) predictions come from ONE denoiser call on the batch
        `[x_t; x_t]`, and are combined as out_u + s (out_c - out_u) (`classifier_free_guidance`).

        `inputs` (*optional*): `(conditional, unconditional)` maps of x_t before the denoiser, for a
        condition that lives in the latents (the tabular label's clean token, and the null token).
        """
        cond_in, uncond_in = inputs if inputs is not None else (None, None)

        def denoise_fn(x_t, t):
            x = x_t if cond_in is None else cond_in(x_t)
            return self.denoise(x, t, cond_tokens=cond_tokens, cond_mask=cond_mask, **({} if class_labels is None else {"class_labels": class_labels}))

        if guidance_scale == 1.0:
            return denoise_fn
        # The batch [conditional; unconditional]: the condition, then the null condition.
        ref = cond_tokens if cond_tokens is not None else class_labels
        if ref is None and inputs is None:
            raise ValueError("Classifier-free guidance needs a condition (cond_tokens or class_labels) to guide towards.")
        tokens2 = mask2 = labels2 = None
        if ref is not None:
            every = torch.ones(ref.shape[0], dtype=torch.bool, device=ref.device)
            c_tokens, c_mask, c_labels = self.null_condition_like(~every, cond_tokens, cond_mask, class_labels)  # explicit mask
            u_tokens, u_mask, u_labels = self.null_condition_like(every, cond_tokens, cond_mask, class_labels)
            both = lambda a, b: None if a is None else torch.cat([a, b])  # (2B, ...)
            tokens2, mask2, labels2 = both(c_tokens, u_tokens), both(c_mask, u_mask), both(c_labels, u_labels)

        def guided_fn(x_t, t):
            t = check_timesteps(t, x_t.shape[0], self.config.num_timesteps, x_t.device)
            x2 = torch.cat([x_t, x_t]) if inputs is None else torch.cat([cond_in(x_t), uncond_in(x_t)])  # (2B, L, Dl)
            out = self.denoise(x2, torch.cat([t, t]), cond_tokens=tokens2, cond_mask=mask2,
                               **({} if labels2 is None else {"class_labels": labels2}))  # (2B, L, Dl)
            out_c, out_u = out.chunk(2)
            return classifier_free_guidance(out_c, out_u, guidance_scale)

        return guided_fn

    @torch.no_grad()
    def diffusion_sample(
        self,
        num_samples: Optional[int] = None,
        cond_tokens: Optional[torch.Tensor] = None,
        cond_mask: Optional[torch.Tensor] = None,
        *,
        schedule: Optional[DDPMBetaSchedule] = None,
        sampler="ddim",
        num_inference_steps: Optional[int] = None,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        progress: bool = False,
        clip_sample: Optional[float] = None,
        x_T: Optional[torch.Tensor] = None,
        timestep_spacing: Optional[str] = None,
        steps_offset: Optional[int] = None,
        class_labels=None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """Sample latents [B, L, latent_dim] with DDPM, DDIM, DPM-Solver++ or a diffusers scheduler;
        `decode_latents` turns them into data.

        Args:
            num_samples (`int`, *optional*): B (default: the conditioning's or the labels' count, else 1).
            cond_tokens, cond_mask: from `encode_condition` (conditional models only).
            class_labels (`int`, `list[int]`, `torch.LongTensor` `[B]` or `"unconditional"`, *optional*):
                class-conditional models: the class of each sample (a single int: all). None: each
                sample's label drawn from `config.class_frequencies` (the training labels'
                frequencies) with `generator`, before the starting noise; a model saved without
                them samples unconditionally (the null label), as `"unconditional"` does (that
                needs a model trained with `cond_dropout_prob` > 0).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance (1 = none, the
                conditional model; 0 = the unconditional model), see `make_denoise_fn`.
            sampler (`"ddim"`, `"ddpm"`, `"dpmsolver++"` or a diffusers `SchedulerMixin` instance),
                num_inference_steps, eta, generator, progress, clip_sample, x_T, timestep_spacing,
                steps_offset: as `scheduling_qgfd_sampling.sample_loop`.
        """
        if num_samples is None:
            num_samples = cond_tokens.shape[0] if cond_tokens is not None else len(class_labels) if isinstance(class_labels, (list, tuple, torch.Tensor)) else 1
        if cond_tokens is not None and cond_tokens.shape[0] != num_samples:
            raise ValueError(f"`num_samples`={num_samples} differs from the conditioning's batch size {cond_tokens.shape[0]}.")
        class_labels, guidance_scale = self.check_guidance(num_samples, class_labels, guidance_scale)
        if self.num_classes is not None and class_labels is None:
            class_labels = self.draw_class_labels(num_samples, generator)  # from the training frequencies
        if self.num_classes is not None and class_labels is None:  # a model saved without them: the null label
            if guidance_scale != 1.0:
                raise ValueError("guidance_scale != 1 guides towards classes: pass `class_labels` (one per sample, or a single int).")
            if not self.has_null_condition:
                raise ValueError(
                    f"This model is class-conditional ({self.num_classes} classes) and was trained without label dropout "
                    "(cond_dropout_prob=0), so it has no unconditional path: pass `class_labels` (one per sample, or a single int)."
                )
            class_labels = torch.full((num_samples,), self.num_classes, dtype=torch.long)  # the null label: unconditional samples
        guidance = {} if guidance_scale == 1.0 else {"guidance_scale": guidance_scale}
        if class_labels is not None:
            guidance["class_labels"] = class_labels.to(self.device)
        schedule = schedule if schedule is not None else self.get_schedule()
        return sample_loop(
            self.make_denoise_fn(cond_tokens, cond_mask, schedule, **guidance),
            self.latent_shape(num_samples),
            schedule,
            sampler=sampler,
            num_inference_steps=num_inference_steps,
            eta=eta,
            prediction_type=self.config.prediction_type,
            generator=generator,
            device=self.device,
            dtype=self.dtype,
            progress=progress,
            clip_sample=clip_sample,
            x_T=x_T,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
        )


__all__ = ["UNCONDITIONAL", "QGFDGuidanceMixin", "classifier_free_guidance", "labels_from_uniform"]
