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

Shapes: `B` batch; latents `x` are `[B, ...]` (e.g. `[B, L, D]`); `t` is a LongTensor `[B]`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

BETA_SCHEDULES = ("linear", "cosine", "sqrt")
PREDICTION_TYPES = ("epsilon", "sample", "v")
SAMPLERS = ("ddpm", "ddim")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}.")


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
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
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


def inference_timesteps(num_timesteps: int, num_inference_steps: Optional[int] = None) -> list:
    """Descending timesteps for sampling: evenly spaced from T - 1 to 0 (all T when None)."""
    n = num_timesteps if num_inference_steps is None else num_inference_steps
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= num_timesteps:
        raise ValueError(f"`num_inference_steps` must be an int in [1, {num_timesteps}] (the trained steps), got {num_inference_steps!r}.")
    steps = torch.linspace(num_timesteps - 1, 0, n, dtype=torch.float64).round().long().tolist()
    return sorted(set(steps), reverse=True)


def _noise_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    gen_device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


class _Sampler:
    name = None

    def __init__(self, schedule: DDPMBetaSchedule, num_inference_steps: Optional[int] = None, prediction_type: str = "epsilon", clip_sample: Optional[float] = None):
        _check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if clip_sample is not None and not clip_sample > 0:
            raise ValueError(f"`clip_sample` must be None or > 0, got {clip_sample!r}.")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.timesteps = inference_timesteps(schedule.num_timesteps, num_inference_steps)
        self._prev = {t: (self.timesteps[i + 1] if i + 1 < len(self.timesteps) else -1) for i, t in enumerate(self.timesteps)}

    def _alpha_bars(self, t: int) -> Tuple[float, float]:
        """(a_bar_t, a_bar_prev) with a_bar_prev = 1 after the last step."""
        ac = self.schedule.alphas_cumprod
        t_prev = self._prev[t]
        return float(ac[t]), (float(ac[t_prev]) if t_prev >= 0 else 1.0)

    def _x0_eps(self, model_output, t, x_t):
        tt = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0, eps = predict_x0_and_eps(model_output, x_t, tt, self.schedule, self.prediction_type)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            a_bar_t = self._alpha_bars(t)[0]
            eps = (x_t - math.sqrt(a_bar_t) * x0) / math.sqrt(1 - a_bar_t)
        return x0, eps

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


class DDIMSampler(_Sampler):
    """DDIM [DDIM Eq. 12]: eta = 0 deterministic, eta = 1 ancestral-like [DDIM Eq. 16]."""

    name = "ddim"

    def __init__(self, schedule, num_inference_steps=None, prediction_type="epsilon", clip_sample=None, eta: float = 0.0):
        super().__init__(schedule, num_inference_steps, prediction_type, clip_sample)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
            raise ValueError(f"`eta` must be a float >= 0, got {eta!r}.")
        self.eta = float(eta)

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


def make_sampler(sampler: str, schedule: DDPMBetaSchedule, *, num_inference_steps=None, eta=0.0, prediction_type="epsilon", clip_sample=None) -> _Sampler:
    """A `DDPMSampler` or `DDIMSampler` by name."""
    _check_choice("sampler", sampler, SAMPLERS)
    if sampler == "ddpm":
        if eta not in (0, 0.0, 1, 1.0, None):
            raise ValueError(f"`eta` is a DDIM setting; the DDPM sampler takes none, got eta={eta!r}.")
        return DDPMSampler(schedule, num_inference_steps, prediction_type, clip_sample)
    return DDIMSampler(schedule, num_inference_steps, prediction_type, clip_sample, eta=eta)


@torch.no_grad()
def sample_loop(
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    schedule: DDPMBetaSchedule,
    *,
    sampler: str = "ddim",
    num_inference_steps: Optional[int] = None,
    eta: float = 0.0,
    prediction_type: str = "epsilon",
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    clip_sample: Optional[float] = None,
    x_T: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Run the reverse process from pure noise and return x_0 `[*shape]`.

    Args:
        denoise_fn: `denoise_fn(x_t, t)` with `t` a LongTensor `[B]`, returns the model output.
        shape: the latents' shape, `[B, ...]`.
        sampler: `"ddim"` or `"ddpm"`; num_inference_steps: 1..T (all T when None); eta: DDIM's eta.
        generator: for reproducible samples; progress: show a progress bar.
        x_T: start from these latents instead of fresh noise.
    """
    s = make_sampler(sampler, schedule, num_inference_steps=num_inference_steps, eta=eta, prediction_type=prediction_type, clip_sample=clip_sample)
    device = torch.device(device) if device is not None else schedule.betas.device
    if x_T is None:
        gen_device = generator.device if generator is not None else device
        x = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=torch.float32).to(device=device, dtype=dtype)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"`x_T` must have shape {list(shape)}, got {list(x_T.shape)}.")
        x = x_T.to(device=device, dtype=dtype)
    for t in tqdm(s.timesteps, desc=f"{s.name} sampling", disable=not progress, leave=False):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=device)
        model_output = denoise_fn(x, t_batch)
        if not torch.isfinite(model_output).all():
            raise FloatingPointError(f"The denoiser returned non-finite values at t={t}.")
        x = s.step(model_output, t, x, generator=generator)
    return x
