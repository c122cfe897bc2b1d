# coding=utf-8
"""Noise schedules, training targets and samplers for QGFD diffusion models.

The schedule lives outside the network: the denoiser predicts once for a given `t`,
and the samplers here (and the pipeline) run the loop over timesteps.

Equations cited:
- [DDPM] Ho, Jain, Abbeel 2020, "Denoising Diffusion Probabilistic Models".
- [IDDPM] Nichol, Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models" (cosine).
- [DLM] Li et al. 2022, "Diffusion-LM Improves Controllable Text Generation" (sqrt).
- [DDIM] Song, Meng, Ermon 2021, "Denoising Diffusion Implicit Models".
- [PD] Salimans, Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models" (v).
- [DPM++] Lu, Zhou, Bao, Chen, Li, Zhu 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models" (data-prediction multistep solver, Algorithm 2).
- [CNS] Lin, Liu, Li, Yang 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
  (Table 2: the "linspace", "leading" and "trailing" timestep spacings).

The samplers are `"ddpm"`, `"ddim"` and `"dpmsolver++"` (the `algorithm_type` name of diffusers'
`DPMSolverMultistepScheduler`); `scheduling_qgfd_sampling` holds the loop that runs them
(`sample_loop`), `make_sampler` and the bridge to diffusers' schedulers. Timestep spacings follow
diffusers' `set_timesteps` (see `inference_timesteps`).

Shapes: `B` batch; latents `x` are `[B, ...]` (e.g. `[B, L, D]`); `t` is a LongTensor `[B]`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .attention_qgfd import _check_choice, value_checks_enabled

BETA_SCHEDULES = ("linear", "cosine", "sqrt")
PREDICTION_TYPES = ("epsilon", "sample", "v")
SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def make_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2, beta_schedule: str = "linear") -> torch.Tensor:
    """The betas of a schedule, float64 `[num_timesteps]`.

    - linear [DDPM Sec. 4]: `beta_t` evenly spaced from `beta_start` to `beta_end`.
    - cosine [IDDPM Eq. 17]: `alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2)`, s = 0.008.
    - sqrt [DLM Sec. 4.1]: `alpha_bar(t) = 1 - sqrt(t/T + s)`, s = 1e-4.
    For cosine and sqrt, `beta_t = 1 - alpha_bar(t+1) / alpha_bar(t)`, clipped to 0.999 (IDDPM).
    """
    _check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"`num_timesteps` must be an int >= 1, got {num_timesteps!r}.")
    if beta_schedule == "linear":
        if not (0 < beta_start <= beta_end < 1):
            raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got beta_start={beta_start!r}, beta_end={beta_end!r}.")
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # t/T, [T + 1]
    if beta_schedule == "cosine":
        s = 0.008
        alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    else:
        alpha_bar = 1 - torch.sqrt(steps + 1e-4)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=1e-8, max=0.999)


class DDPMBetaSchedule(nn.Module):
    """A variance schedule and the quantities derived from it, in float64.

    Args:
        num_timesteps (`int`, defaults to 1000): training timesteps T.
        beta_start (`float`, defaults to 1e-4), beta_end (`float`, defaults to 2e-2): the linear schedule's ends.
        beta_schedule (`str`, defaults to `"linear"`): `"linear"`, `"cosine"` or `"sqrt"`.

    The buffers are not persistent (a model never saves a schedule: it is rebuilt from the
    config) and `.to(device)` returns the schedule, as in the seed.

    Example:
        >>> s = DDPMBetaSchedule(1000)
        >>> float(s.alphas_cumprod[-1]) < 1e-4
        True
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2, beta_schedule: str = "linear"):
        super().__init__()
        betas = make_betas(num_timesteps, beta_start, beta_end, beta_schedule)
        self.num_timesteps = num_timesteps
        self.beta_schedule = beta_schedule
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        for name, value in (
            ("betas", betas),
            ("alphas", alphas),
            ("alphas_cumprod", alphas_cumprod),
            ("alphas_cumprod_prev", alphas_cumprod_prev),
            ("sqrt_alphas_cumprod", alphas_cumprod.sqrt()),
            ("sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt()),
        ):
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_config(cls, config) -> "DDPMBetaSchedule":
        """Build from any config with `num_timesteps` (and optionally `beta_start`, `beta_end`, `beta_schedule`)."""
        return cls(
            config.num_timesteps,
            getattr(config, "beta_start", 1e-4),
            getattr(config, "beta_end", 2e-2),
            getattr(config, "beta_schedule", "linear"),
        )

    @property
    def alphas_cumprod_host(self) -> Tuple[float, ...]:
        """`alphas_cumprod` as Python floats, read once (the samplers' per-step scalars: reading the
        buffer at every step would be a device sync on a GPU)."""
        host = self.__dict__.get("_alphas_cumprod_host")
        if host is None:
            host = self.__dict__["_alphas_cumprod_host"] = tuple(self.alphas_cumprod.tolist())
        return host

    def _apply(self, fn, recurse=True):
        # Moving devices is fine; casting to a lower precision is not: keep float64.
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.dtype != torch.float64:
                self._buffers[name] = buf.to(torch.float64)
        return self

    def check_timesteps(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"`t` must be an integer tensor of timesteps, got {t!r}.")
        if value_checks_enabled() and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"Timesteps must lie in [0, {self.num_timesteps}), got values in [{int(t.min())}, {int(t.max())}]."
            )

    def gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`buffer[t]` shaped `[B, 1, ..., 1]` to broadcast against `like`, in `like`'s dtype."""
        values = getattr(self, name).to(like.device)[t.to(like.device).long()]
        return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _check_x_t(x: torch.Tensor, t: torch.Tensor, schedule: DDPMBetaSchedule):
    schedule.check_timesteps(t)
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"`t` must have shape [B]=[{x.shape[0]}], got {list(t.shape)}.")


def q_sample(x0: torch.Tensor, t: torch.Tensor, schedule: DDPMBetaSchedule, noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Diffuse clean latents to step t [DDPM Eq. 4]: `x_t = sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) eps`.

    Returns `(x_t, noise)`; `noise` is drawn from N(0, I) when not given.
    """
    _check_x_t(x0, t, schedule)
    if noise is None:
        noise = torch.randn_like(x0)
    elif noise.shape != x0.shape:
        raise ValueError(f"`noise` must have the shape of x0 {list(x0.shape)}, got {list(noise.shape)}.")
    x_t = schedule.gather("sqrt_alphas_cumprod", t, x0) * x0 + schedule.gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise
    return x_t, noise


def diffusion_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: DDPMBetaSchedule, prediction_type: str = "epsilon") -> torch.Tensor:
    """What the network learns to predict: eps [DDPM Eq. 14], x0, or v = sqrt(a_bar) eps - sqrt(1 - a_bar) x0 [PD Sec. 4]."""
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return schedule.gather("sqrt_alphas_cumprod", t, x0) * noise - schedule.gather("sqrt_one_minus_alphas_cumprod", t, x0) * x0


def min_snr_weights(t: torch.Tensor, schedule: DDPMBetaSchedule, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights [B] [Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", Eq. 9-10 / Sec. 3.4], SNR(t) = a_bar_t / (1 - a_bar_t): the loss on x0 is
    weighted by min(SNR, gamma); for the other targets the same weight becomes
    eps: min(SNR, gamma) / SNR, x0: min(SNR, gamma), v: min(SNR, gamma) / (SNR + 1)."""
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if not gamma > 0:
        raise ValueError(f"`gamma` must be > 0, got {gamma!r}.")
    a_bar = schedule.alphas_cumprod.to(t.device)[t].double()  # (B,)
    snr = a_bar / (1 - a_bar)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        w = clipped / snr
    elif prediction_type == "sample":
        w = clipped
    else:
        w = clipped / (snr + 1)
    return w.float()


def predict_x0_and_eps(model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, schedule: DDPMBetaSchedule, prediction_type: str = "epsilon") -> Tuple[torch.Tensor, torch.Tensor]:
    """Recover (x0_hat, eps_hat) from the network's output, inverting q_sample for each prediction type."""
    _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    a = schedule.gather("sqrt_alphas_cumprod", t, x_t)  # sqrt(a_bar_t)
    s = schedule.gather("sqrt_one_minus_alphas_cumprod", t, x_t)  # sqrt(1 - a_bar_t)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    else:  # v: x0 = a x_t - s v, eps = s x_t + a v
        x0 = a * x_t - s * model_output
        eps = s * x_t + a * model_output
    return x0, eps


def inference_timesteps(
    num_timesteps: int,
    num_inference_steps: Optional[int] = None,
    timestep_spacing: str = "linspace",
    steps_offset: int = 0,
    *,
    sampler: str = "ddim",
) -> list:
    """Descending timesteps for sampling, as diffusers' `set_timesteps` places them [CNS Table 2].

    With T = `num_timesteps`, n = `num_inference_steps` (all T when None), in float64 numpy as diffusers:

    - `sampler="ddpm"` or `"ddim"` (`DDPMScheduler` / `DDIMScheduler.set_timesteps`); each
      sampler's last step lands on a_bar = 1, the clean sample:
        - "linspace": `round(linspace(0, T - 1, n))`, descending: from T - 1 down to 0.
        - "leading": `arange(n) * (T // n) + steps_offset`, descending.
        - "trailing": `round(arange(T, 0, -T / n)) - 1`: from T - 1 down to T / n - 1.
    - `sampler="dpmsolver++"` (`DPMSolverMultistepScheduler.set_timesteps`): its last step lands
      on sigma = 0, so the grids of "linspace" and "leading" get n + 1 points and drop their
      last one (t = 0, now the target rather than an evaluation):
        - "linspace": `round(linspace(0, T - 1, n + 1))`, descending, without its final 0.
        - "leading": `arange(n + 1) * (T // (n + 1)) + steps_offset`, descending, without its final one.
        - "trailing": as for DDIM.

    `steps_offset` shifts "leading" only (diffusers ignores it elsewhere; here it is an error).
    Two deliberate differences from diffusers, both where diffusers returns unusable timesteps:
    "linspace" with n = 1 gives `[T - 1]` (numpy's `linspace(0, T - 1, 1)` is `[0]`, one
    evaluation at t = 0 on pure noise); "trailing" gives exactly n timesteps (numpy's float
    `arange` sometimes appends an (n + 1)-th, -1, e.g. T = 1000, n = 61).

    Example:
        >>> inference_timesteps(1000, 5), inference_timesteps(1000, 5, "leading", 1), inference_timesteps(1000, 5, "trailing")
        ([999, 749, 500, 250, 0], [801, 601, 401, 201, 1], [999, 799, 599, 399, 199])
        >>> inference_timesteps(1000, 5, sampler="dpmsolver++")
        [999, 799, 599, 400, 200]
    """
    _check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
    _check_choice("sampler", sampler, SAMPLERS)
    T = num_timesteps
    n = T if num_inference_steps is None else num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= T:
        raise ValueError(f"`num_inference_steps` must be an int in [1, {T}] (the trained steps), got {num_inference_steps!r}.")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise ValueError(f"`steps_offset` must be an int >= 0, got {steps_offset!r}.")
    if steps_offset and timestep_spacing != "leading":
        raise ValueError(f"`steps_offset` shifts the 'leading' spacing only, got steps_offset={steps_offset} with {timestep_spacing!r}.")
    # 1. The grid, exactly as diffusers computes it.
    m = n + 1 if sampler == "dpmsolver++" and timestep_spacing != "trailing" else n
    if timestep_spacing == "linspace":
        steps = np.linspace(0, T - 1, m).round()[::-1] if m > 1 else np.array([T - 1.0])
    elif timestep_spacing == "leading":
        steps = (np.arange(0, m) * (T // m)).round()[::-1] + steps_offset
    else:
        steps = np.round(np.arange(T, 0, -T / n))[:n] - 1
    # 2. DPM-Solver++ drops the grid's final point (its last step goes to sigma = 0).
    if m > n:
        steps = steps[:-1]
    timesteps = steps.astype(np.int64).tolist()
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])) or timesteps[0] >= T:
        raise ValueError(
            f"timestep_spacing={timestep_spacing!r} with num_inference_steps={n}, steps_offset={steps_offset} gives "
            f"timesteps {timesteps[:4]}...{timesteps[-2:]}, not distinct and in [0, {T}); use fewer steps or another spacing."
        )
    return timesteps


def _noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    gen_device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def _check_custom_timesteps(timesteps, num_timesteps: int) -> list:
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.tolist()
    ok = isinstance(timesteps, (list, tuple)) and len(timesteps) > 0
    ok = ok and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < num_timesteps for t in timesteps)
    if not ok or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError(f"`timesteps` must be a non-empty list of distinct ints in [0, {num_timesteps}), descending, got {timesteps!r}.")
    return list(timesteps)


class _Sampler:
    """What the samplers share: the timesteps, and x0/eps from the network's output.

    Args:
        schedule: the model's `DDPMBetaSchedule`.
        num_inference_steps (`int`, *optional*): 1..T (all T when None).
        prediction_type (`str`): `"epsilon"`, `"sample"` or `"v"`: what the network predicts.
        clip_sample (`float`, *optional*): clamp the predicted x0 to [-clip_sample, clip_sample].
        timestep_spacing (`str`, defaults to `"linspace"`), steps_offset (`int`, defaults to 0):
            where the timesteps lie, as `inference_timesteps`.
        timesteps (`list[int]`, *optional*): explicit descending timesteps instead (as diffusers'
            `set_timesteps(timesteps=...)`); then give neither `num_inference_steps` nor a spacing.
    """

    name = None
    init_noise_sigma = 1.0  # x_T ~ N(0, I), as diffusers' DDPM/DDIM/DPM-Solver schedulers

    def __init__(self, schedule: DDPMBetaSchedule, num_inference_steps: Optional[int] = None, prediction_type: str = "epsilon",
                 clip_sample: Optional[float] = None, *, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 timesteps: Optional[Sequence[int]] = None):
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if clip_sample is not None and not clip_sample > 0:
            raise ValueError(f"`clip_sample` must be None or > 0, got {clip_sample!r}.")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        if timesteps is not None:
            if num_inference_steps is not None or timestep_spacing != "linspace" or steps_offset:
                raise ValueError("Pass either `timesteps` or `num_inference_steps` / `timestep_spacing` / `steps_offset`, not both.")
            self.timesteps = _check_custom_timesteps(timesteps, schedule.num_timesteps)
        else:
            self.timesteps = inference_timesteps(schedule.num_timesteps, num_inference_steps, timestep_spacing, steps_offset, sampler=self.name)
        schedule.alphas_cumprod_host  # read once now, not during the steps
        # The step after t; -1 after the last: a_bar = 1 there (DDIM's `set_alpha_to_one`), sigma = 0.
        self._prev = {t: (self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1) for i, t in enumerate(self.timesteps)}

    def _check_t(self, t: int) -> None:
        if t not in self._prev:
            raise ValueError(f"t={t!r} is not one of this sampler's timesteps {self.timesteps}.")

    def _alpha_bars(self, t: int) -> Tuple[float, float]:
        """(a_bar_t, a_bar_prev) with a_bar_prev = 1 after the last step."""
        self._check_t(t)
        ac = self.schedule.alphas_cumprod_host
        t_prev = self._prev[t]
        return ac[t], (ac[t_prev] if t_prev >= 0 else 1.0)

    def _x0_eps(self, model_output, t, x_t):
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0, eps = predict_x0_and_eps(model_output, x_t, tt, self.schedule, self.prediction_type)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            a_bar_t = self._alpha_bars(t)[0]
            eps = (x_t - math.sqrt(a_bar_t) * x0) / math.sqrt(1 - a_bar_t)
        return x0, eps

    def scale_model_input(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        return x_t  # the network sees x_t itself (diffusers' VP schedulers: the same)

    def step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError


class DDPMSampler(_Sampler):
    """Ancestral sampling [DDPM Eqs. 6-7], over a subsequence of timesteps when
    `num_inference_steps` < T (the respaced process of IDDPM Sec. 4, with
    `beta'_t = 1 - a_bar_t / a_bar_prev`)."""

    name = "ddpm"

    def step(self, model_output, t, x_t, generator=None):
        a_bar, a_bar_prev = self._alpha_bars(t)
        beta = 1 - a_bar / a_bar_prev  # beta'_t of the (respaced) chain
        x0, _ = self._x0_eps(model_output, t, x_t)
        # 1. Posterior mean mu~_t(x_t, x0) [DDPM Eq. 7].
        coef_x0 = math.sqrt(a_bar_prev) * beta / (1 - a_bar)
        coef_xt = math.sqrt(1 - beta) * (1 - a_bar_prev) / (1 - a_bar)
        mean = coef_x0 * x0 + coef_xt * x_t
        if self._prev[t] < 0:
            return mean
        # 2. Posterior variance beta~_t = (1 - a_bar_prev) / (1 - a_bar_t) beta_t [DDPM Eq. 7].
        var = (1 - a_bar_prev) / (1 - a_bar) * beta
        return mean + math.sqrt(var) * _noise_like(x_t, generator)


def _check_eta(eta) -> float:
    """DDIM's eta as a float: finite and >= 0 (NaN or inf would only show as non-finite samples at the end)."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"`eta` must be a finite float >= 0, got {eta!r}.")
    return float(eta)


class DDIMSampler(_Sampler):
    """DDIM [DDIM Eq. 12]: eta = 0 deterministic, eta = 1 ancestral-like [DDIM Eq. 16].

    Each step goes from t to the next of `timesteps` (the sub-sequence of DDIM Sec. 4.2).
    diffusers' `DDIMScheduler.step` instead goes to `t - T // n` whatever the spacing
    (huggingface/diffusers#12633): the same for "leading", and for "trailing" when n divides T,
    but not for "linspace", where its steps and its listed timesteps disagree.
    """

    name = "ddim"

    def __init__(self, schedule, num_inference_steps=None, prediction_type="epsilon", clip_sample=None, eta: float = 0.0, **timestep_kwargs):
        super().__init__(schedule, num_inference_steps, prediction_type, clip_sample, **timestep_kwargs)
        self.eta = _check_eta(eta)

    def step(self, model_output, t, x_t, generator=None):
        a_bar, a_bar_prev = self._alpha_bars(t)
        # 1. Predicted x0 and eps from the network's output.
        x0, eps = self._x0_eps(model_output, t, x_t)
        # 2. sigma_t(eta) [DDIM Eq. 16].
        sigma = self.eta * math.sqrt((1 - a_bar_prev) / (1 - a_bar)) * math.sqrt(1 - a_bar / a_bar_prev)
        # 3. x_{t-1} = sqrt(a_bar_prev) x0 + sqrt(1 - a_bar_prev - sigma^2) eps + sigma z [DDIM Eq. 12].
        direction = math.sqrt(max(1 - a_bar_prev - sigma**2, 0.0))
        x_prev = math.sqrt(a_bar_prev) * x0 + direction * eps
        if sigma > 0 and self._prev[t] >= 0:
            x_prev = x_prev + sigma * _noise_like(x_t, generator)
        return x_prev


class DPMSolverMultistepSampler(_Sampler):
    """DPM-Solver++(2M) [DPM++ Algorithm 2], as diffusers' `DPMSolverMultistepScheduler` with
    `algorithm_type="dpmsolver++"`, `solver_order=2`, `solver_type="midpoint"`,
    `lower_order_final=True`, `final_sigmas_type="zero"` (its defaults).

    In the half log-SNR `lambda_t = log(alpha_t / sigma_t)` (alpha_t = sqrt(a_bar_t),
    sigma_t = sqrt(1 - a_bar_t)) the ODE is integrated on the data prediction x0 = x_theta(x_t, t).
    The first step and the last (to sigma = 0, the clean sample) are first order (= DDIM with
    eta = 0 on the same timesteps); the others use the previous step's x0 as well. Stateful:
    call `step` on `timesteps` in order, as `sample_loop` does. Timesteps: `inference_timesteps(...,
    sampler="dpmsolver++")`, diffusers' for this scheduler.

    Args:
        solver_order (`int`, defaults to 2): 2 (DPM-Solver++(2M)) or 1 (DPM-Solver++(1) = DDIM).
        The others: as `_Sampler`.
    """

    name = "dpmsolver++"

    def __init__(self, schedule, num_inference_steps=None, prediction_type="epsilon", clip_sample=None, solver_order: int = 2, **timestep_kwargs):
        if solver_order not in (1, 2) or isinstance(solver_order, bool):
            raise ValueError(f"`solver_order` must be 1 or 2, got {solver_order!r}.")
        super().__init__(schedule, num_inference_steps, prediction_type, clip_sample, **timestep_kwargs)
        self.solver_order = solver_order
        self._last = None  # (t, lambda_t, x0_hat) of the previous step

    def _alpha_sigma_lambda(self, t: int) -> Tuple[float, float, float]:
        a_bar = self.schedule.alphas_cumprod_host[t]
        return math.sqrt(a_bar), math.sqrt(1 - a_bar), 0.5 * (math.log(a_bar) - math.log1p(-a_bar))

    def step(self, model_output, t, x_t, generator=None):
        self._check_t(t)
        i = self.timesteps.index(t)
        last = None if i == 0 else self._last  # the first timestep starts a new trajectory
        if i > 0 and (last is None or last[0] != self.timesteps[i - 1]):
            raise ValueError(f"DPM-Solver++ is multistep: call `step` on the timesteps {self.timesteps} in order (got t={t}).")
        # 1. The data prediction x0_hat = x_theta(x_t, t), for any prediction type.
        x0, _ = self._x0_eps(model_output, t, x_t)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(t)
        self._last = (t, lambda_s, x0)
        t_next = self._prev[t]
        # 2. The last step lands on sigma = 0 (lambda = inf): the first-order update is x0_hat itself.
        if t_next < 0:
            return x0
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(t_next)
        h = lambda_t - lambda_s
        # 3. First order [DPM++ Algorithm 2, its first step] (= DDIM, eta = 0):
        #    x_next = (sigma_next / sigma_s) x_s - alpha_next (e^{-h} - 1) x0_hat.
        coef_x = sigma_t / sigma_s
        coef_d = -alpha_t * math.expm1(-h)
        if self.solver_order == 1 or last is None:
            return coef_x * x_t + coef_d * x0
        # 4. Second order, multistep [DPM++ Algorithm 2]: with r = h_prev / h,
        #    D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_hat_prev (diffusers' "midpoint").
        _, lambda_prev, x0_prev = last
        r = (lambda_s - lambda_prev) / h
        d = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        return coef_x * x_t + coef_d * d


# ----------------------------------------------------------------------------------------
# diffusers' schedulers (optional: `pip install qgfd_hf[diffusers]`)
# ----------------------------------------------------------------------------------------

# Our prediction types under diffusers' names.
