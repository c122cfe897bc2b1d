# coding=utf-8
"""The sampling loop: `sample_loop` runs the reverse process with a sampler that `make_sampler`
builds by name (`scheduling_qgfd`'s `"ddpm"`, `"ddim"`, `"dpmsolver++"`) or from any diffusers
`SchedulerMixin` instance when diffusers is installed (`pip install qgfd_hf[diffusers]`;
`diffusers_scheduler` builds one on a model's schedule, `DiffusersSampler` puts it behind the
samplers' interface).

Shapes: `B` batch; latents `x` are `[B, ...]`; `t` is a LongTensor `[B]`.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .attention_qgfd import _check_choice, value_checks, value_checks_enabled
from .scheduling_qgfd import (
    PREDICTION_TYPES,
    SAMPLERS,
    DDIMSampler,
    DDPMBetaSchedule,
    DDPMSampler,
    DPMSolverMultistepSampler,
    _check_eta,
)


DIFFUSERS_PREDICTION_TYPES = {"epsilon": "epsilon", "sample": "sample", "v": "v_prediction"}


def _scheduler_mixin():
    """diffusers' `SchedulerMixin`, or None when diffusers is not installed."""
    try:
        from diffusers import SchedulerMixin
    except ImportError:
        return None
    return SchedulerMixin


def check_sampler(sampler):
    """`sampler` if it names one of `SAMPLERS` or is a diffusers `SchedulerMixin` instance; else a ValueError."""
    if isinstance(sampler, str):
        _check_choice("sampler", sampler, SAMPLERS)
        return sampler
    mixin = _scheduler_mixin()
    if mixin is not None and isinstance(sampler, mixin):
        return sampler
    what = f"the class {sampler.__name__} (pass an instance)" if isinstance(sampler, type) else f"a {type(sampler).__name__}"
    hint = "" if mixin is not None else " (diffusers is not installed: pip install qgfd_hf[diffusers])"
    raise ValueError(
        f"`sampler` must be one of {', '.join(map(repr, SAMPLERS))} or a diffusers SchedulerMixin instance{hint}, got {what}."
    )


def diffusers_scheduler(scheduler_class, schedule: DDPMBetaSchedule, prediction_type: str = "epsilon", **kwargs):
    """A diffusers scheduler on the model's own schedule: its betas (`trained_betas`), T and prediction type.

    DDPM/DDIM-like schedulers get `clip_sample=False` (diffusers' default clamps x0 to [-1, 1];
    `sample_loop(clip_sample=...)` is off by default). `kwargs` override any of these.

    Example:
        >>> from diffusers import DPMSolverMultistepScheduler  # doctest: +SKIP
        >>> scheduler = diffusers_scheduler(DPMSolverMultistepScheduler, model.get_schedule(), model.config.prediction_type)  # doctest: +SKIP
        >>> latents = model.diffusion_sample(4, sampler=scheduler, num_inference_steps=20)  # doctest: +SKIP
    """
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    mixin = _scheduler_mixin()
    if mixin is None or not (isinstance(scheduler_class, type) and issubclass(scheduler_class, mixin)):
        check_sampler(scheduler_class)  # raises, naming what is allowed
    params = inspect.signature(scheduler_class.__init__).parameters
    config = dict(num_train_timesteps=schedule.num_timesteps, trained_betas=schedule.betas.cpu().numpy(),
                  prediction_type=DIFFUSERS_PREDICTION_TYPES[prediction_type])
    if "clip_sample" in params:
        config["clip_sample"] = False
    return scheduler_class(**{**config, **kwargs})


class DiffusersSampler:
    """A diffusers scheduler behind the samplers' interface (`timesteps`, `scale_model_input`, `step`).

    The scheduler must be on the model's schedule (same T, the same alphas_cumprod to float32
    precision) and prediction type; its own config sets the spacing. Its `set_timesteps` is
    called, as a diffusers pipeline does.
    """

    def __init__(self, scheduler, schedule: DDPMBetaSchedule, num_inference_steps: Optional[int] = None, prediction_type: str = "epsilon", eta: float = 0.0, device=None):
        check_sampler(scheduler)
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        cfg, name = scheduler.config, type(scheduler).__name__
        self.name = name
        # 1. The scheduler must describe the model's noise process.
        T = schedule.num_timesteps
        if getattr(cfg, "num_train_timesteps", None) != T:
            raise ValueError(f"The {name} has num_train_timesteps={getattr(cfg, 'num_train_timesteps', None)}; the model was trained with {T}.")
        ptype = getattr(cfg, "prediction_type", None)
        if ptype != DIFFUSERS_PREDICTION_TYPES[prediction_type]:
            raise ValueError(
                f"The {name} has prediction_type={ptype!r}; the model predicts {prediction_type!r} "
                f"({DIFFUSERS_PREDICTION_TYPES[prediction_type]!r} in diffusers)."
            )
        theirs = getattr(scheduler, "alphas_cumprod", None)
        if theirs is not None:
            err = float((theirs.double().cpu() - schedule.alphas_cumprod.cpu()).abs().max())
            if err > 1e-5:
                raise ValueError(
                    f"The {name}'s alphas_cumprod differ from the model's schedule by up to {err:.2g}; build it with "
                    "`diffusers_scheduler(cls, model.get_schedule(), model.config.prediction_type)` (the model's betas)."
                )
        # 2. Which of our settings its `step` takes (as diffusers' pipelines inspect it).
        step_params = inspect.signature(scheduler.step).parameters
        self._step_kwargs = {}
        if "eta" in step_params:
            self._step_kwargs["eta"] = _check_eta(eta)
        elif eta:
            raise ValueError(f"`eta` is a DDIM setting; the {name} takes none, got eta={eta!r}.")
        self._takes_generator = "generator" in step_params
        # 3. Its timesteps (the model is indexed by integer timesteps).
        n = T if num_inference_steps is None else num_inference_steps
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
            raise ValueError(f"`num_inference_steps` must be an int in [1, {T}] (the trained steps), got {num_inference_steps!r}.")
        scheduler.set_timesteps(n, device=device)
        timesteps = [float(t) for t in scheduler.timesteps]
        if any(t != round(t) or not 0 <= t < T for t in timesteps):
            raise ValueError(f"The {name} gives timesteps {timesteps[:4]}...; the model takes integer timesteps in [0, {T}).")
        self.scheduler = scheduler
        self.timesteps = [int(t) for t in timesteps]
        self.init_noise_sigma = float(scheduler.init_noise_sigma)

    def scale_model_input(self, x_t, t):
        return self.scheduler.scale_model_input(x_t, t)

    def step(self, model_output, t, x_t, generator=None):
        kwargs = dict(self._step_kwargs)
        if self._takes_generator:
            kwargs["generator"] = generator
        return self.scheduler.step(model_output, t, x_t, return_dict=False, **kwargs)[0]


def make_sampler(
    sampler: Union[str, object],
    schedule: DDPMBetaSchedule,
    *,
    num_inference_steps: Optional[int] = None,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    clip_sample: Optional[float] = None,
    timestep_spacing: Optional[str] = None,
    steps_offset: Optional[int] = None,
    timesteps: Optional[Sequence[int]] = None,
    device=None,
):
    """A sampler by name (`"ddpm"`, `"ddim"`, `"dpmsolver++"`), or a diffusers scheduler wrapped as one.

    `timestep_spacing` (default "linspace") and `steps_offset` (default 0) are ours; a diffusers
    scheduler has its own in its config, so giving them with one is an error, as are `clip_sample`
    and `timesteps`.
    """
    check_sampler(sampler)
    if not isinstance(sampler, str):
        given = {k: v for k, v in dict(timestep_spacing=timestep_spacing, steps_offset=steps_offset, clip_sample=clip_sample, timesteps=timesteps).items() if v is not None}
        if given:
            raise ValueError(f"{sorted(given)} are set in a diffusers scheduler's own config, not here (got {given}).")
        return DiffusersSampler(sampler, schedule, num_inference_steps, prediction_type, eta=eta, device=device)
    kwargs = dict(timestep_spacing=timestep_spacing or "linspace", steps_offset=steps_offset or 0, timesteps=timesteps)
    if sampler == "ddim":
        return DDIMSampler(schedule, num_inference_steps, prediction_type, clip_sample, eta=eta, **kwargs)
    if eta not in (0, 0.0, 1, 1.0, None) or (sampler == "dpmsolver++" and eta not in (0, 0.0, None)):
        raise ValueError(f"`eta` is a DDIM setting; the {sampler} sampler takes none, got eta={eta!r}.")
    if sampler == "ddpm":
        return DDPMSampler(schedule, num_inference_steps, prediction_type, clip_sample, **kwargs)
    return DPMSolverMultistepSampler(schedule, num_inference_steps, prediction_type, clip_sample, **kwargs)


@torch.no_grad()
def sample_loop(
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    schedule: DDPMBetaSchedule,
    *,
    sampler: Union[str, object] = "ddim",
    num_inference_steps: Optional[int] = None,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    clip_sample: Optional[float] = None,
    x_T: Optional[torch.Tensor] = None,
    timestep_spacing: Optional[str] = None,
    steps_offset: Optional[int] = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise and return x_0 `[*shape]`.

    Args:
        denoise_fn: `denoise_fn(x_t, t)` with `t` a LongTensor `[B]`, returns the model output.
        shape: the latents' shape, `[B, ...]`.
        sampler: `"ddim"`, `"ddpm"`, `"dpmsolver++"` (DPM-Solver++(2M)), or a diffusers
            `SchedulerMixin` instance on the model's schedule (see `diffusers_scheduler`).
        num_inference_steps: 1..T (all T when None) network evaluations; eta: DDIM's eta.
        timestep_spacing: `"linspace"` (default), `"leading"` or `"trailing"`; steps_offset: shifts
            "leading" (both as diffusers; see `inference_timesteps`).
        generator: for reproducible samples; progress: show a progress bar.
        x_T: start from these latents instead of fresh noise (scaled by the scheduler's
            `init_noise_sigma`, 1 for ours, as diffusers' pipelines do).
    """
    device = torch.device(device) if device is not None else schedule.betas.device
    s = make_sampler(sampler, schedule, num_inference_steps=num_inference_steps, eta=eta, prediction_type=prediction_type,
                     clip_sample=clip_sample, timestep_spacing=timestep_spacing, steps_offset=steps_offset, device=device)
    if x_T is None:
        gen_device = generator.device if generator is not None else device
        x = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32).to(device=device, dtype=dtype)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"`x_T` must have shape {list(shape)}, got {list(x_T.shape)}.")
        x = x_T.to(device=device, dtype=dtype)
    if s.init_noise_sigma != 1.0:
        x = x * s.init_noise_sigma
    # The first denoiser call checks its inputs (x_T, the conditioning, t); the later ones run
    # without value checks, and the result is checked once at the end: no host read per step.
    check = value_checks_enabled()
    for i, t in enumerate(tqdm(s.timesteps, desc=f"{s.name} sampling", disable=not progress, leave=False)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        with value_checks(check and i == 0):
            model_output = denoise_fn(s.scale_model_input(x, t), t_batch)
            x = s.step(model_output, t, x, generator=generator)
    if check and not torch.isfinite(x).all():
        raise FloatingPointError(f"Sampling ended in non-finite values (NaN or inf): the denoiser or the {s.name} sampler diverged.")
    return x
