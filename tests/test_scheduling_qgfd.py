import math

import pytest
import torch

from qgfd_hf.scheduling_qgfd import (
    DDIMSampler,
    DDPMBetaSchedule,
    DDPMSampler,
    diffusion_target,
    inference_timesteps,
    make_betas,
    make_sampler,
    predict_x0_and_eps,
    q_sample,
    sample_loop,
)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sqrt"])
def test_betas_are_float64_and_valid(kind):
    b = make_betas(100, beta_schedule=kind)
    assert b.dtype == torch.float64 and b.shape == (100,)
    assert (b > 0).all() and (b < 1).all()
    s = DDPMBetaSchedule(100, beta_schedule=kind)
    assert (s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all()


def test_linear_and_cosine_closed_forms():
    b = make_betas(10, 1e-4, 2e-2, "linear")
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(2e-2)
    s = DDPMBetaSchedule(50, beta_schedule="cosine")
    f = lambda t: math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 30):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_schedule_stays_float64_when_cast():
    s = DDPMBetaSchedule(10).to(torch.float16)
    assert s.betas.dtype == torch.float64
    assert isinstance(DDPMBetaSchedule(10).to("cpu"), DDPMBetaSchedule)


def test_q_sample_closed_form():
    s = DDPMBetaSchedule(100)
    x0 = torch.randn(3, 4, 5)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 50, 99])
    x_t, n = q_sample(x0, t, s, noise)
    assert n is noise
    for i, ti in enumerate(t.tolist()):
        ab = s.alphas_cumprod[ti].item()
        torch.testing.assert_close(x_t[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i])


@pytest.mark.parametrize("ptype", ["epsilon", "sample", "v"])
def test_targets_invert(ptype):
    s = DDPMBetaSchedule(100, beta_schedule="cosine")
    x0 = torch.randn(4, 3, 2, dtype=torch.float64)
    t = torch.tensor([1, 20, 60, 98])
    x_t, eps = q_sample(x0, t, s)
    target = diffusion_target(x0, eps, t, s, ptype)
    x0_hat, eps_hat = predict_x0_and_eps(target, x_t, t, s, ptype)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)


def test_ddpm_step_closed_form():
    s = DDPMBetaSchedule(20)
    sampler = DDPMSampler(s)
    x_t, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = 10
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = sampler.step(eps, t, x_t, generator=g1)
    beta, alpha, ab = s.betas[t].item(), s.alphas[t].item(), s.alphas_cumprod[t].item()
    ab_prev = s.alphas_cumprod[t - 1].item()
    mean = (x_t - beta / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)  # DDPM Eq. 11
    sigma = math.sqrt((1 - ab_prev) / (1 - ab) * beta)
    torch.testing.assert_close(out, mean + sigma * torch.randn(2, 3, generator=g2))


def test_ddim_step_closed_form():
    s = DDPMBetaSchedule(100)
    sampler = DDIMSampler(s, num_inference_steps=10, eta=0.0)
    assert sampler.timesteps[0] == 99 and sampler.timesteps[-1] == 0 and len(sampler.timesteps) == 10
    x_t, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = sampler.timesteps[3]
    t_prev = sampler.timesteps[4]
    ab, abp = s.alphas_cumprod[t].item(), s.alphas_cumprod[t_prev].item()
    x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    torch.testing.assert_close(sampler.step(eps, t, x_t), math.sqrt(abp) * x0 + math.sqrt(1 - abp) * eps)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddpm", 7), ("ddim", 5), ("ddim", None)])
def test_oracle_denoiser_recovers_x0(sampler, steps):
    s = DDPMBetaSchedule(50)
    x0 = torch.randn(2, 4, 3)
    out = sample_loop(lambda x, t: x0, x0.shape, s, sampler=sampler, num_inference_steps=steps,
                      prediction_type="sample", generator=torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(out, x0)


def test_sample_loop_is_reproducible():
    s = DDPMBetaSchedule(30)
    fn = lambda x, t: 0.1 * x
    a = sample_loop(fn, (2, 3), s, sampler="ddpm", generator=torch.Generator().manual_seed(3), progress=False)
    b = sample_loop(fn, (2, 3), s, sampler="ddpm", generator=torch.Generator().manual_seed(3), progress=False)
    c = sample_loop(fn, (2, 3), s, sampler="ddpm", generator=torch.Generator().manual_seed(4), progress=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bad_input():
    s = DDPMBetaSchedule(10)
    with pytest.raises(ValueError, match="beta_schedule"):
        make_betas(10, beta_schedule="quadratic")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        q_sample(torch.randn(2, 3), torch.tensor([0, 10]), s)
    with pytest.raises(ValueError, match="num_inference_steps"):
        inference_timesteps(10, 0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        inference_timesteps(10, 11)
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("euler", s)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion_target(torch.zeros(1), torch.zeros(1), torch.tensor([0]), s, "score")
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", s, eta=-1.0)
    with pytest.raises(FloatingPointError):
        sample_loop(lambda x, t: x * float("nan"), (1, 2), s, progress=False)
