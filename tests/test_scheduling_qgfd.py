import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import qgfd_hf.scheduling_qgfd as scheduling_qgfd
from qgfd_hf.scheduling_qgfd import (
    PREDICTION_TYPES,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    DDIMSampler,
    DDPMBetaSchedule,
    DDPMSampler,
    DPMSolverMultistepSampler,
    diffusion_target,
    inference_timesteps,
    make_betas,
    predict_x0_and_eps,
    q_sample,
)
from qgfd_hf.scheduling_qgfd_sampling import check_sampler, diffusers_scheduler, make_sampler, sample_loop

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


# ----------------------------------------------------------------------------------------
# Timestep spacings
# ----------------------------------------------------------------------------------------


def test_timestep_spacings_closed_forms():
    # DDPM / DDIM: n points ending at 0 (linspace, leading) or at T/n - 1 (trailing).
    assert inference_timesteps(1000, 4) == [999, 666, 333, 0]
    assert inference_timesteps(1000, 4, "leading") == [750, 500, 250, 0]
    assert inference_timesteps(1000, 4, "leading", steps_offset=1) == [751, 501, 251, 1]
    assert inference_timesteps(1000, 4, "trailing") == [999, 749, 499, 249]
    # DPM-Solver++: n + 1 grid points, the final one (the sigma = 0 target) dropped.
    assert inference_timesteps(1000, 4, sampler="dpmsolver++") == [999, 749, 500, 250]
    assert inference_timesteps(1000, 4, "leading", sampler="dpmsolver++") == [800, 600, 400, 200]
    assert inference_timesteps(1000, 4, "trailing", sampler="dpmsolver++") == [999, 749, 499, 249]
    for spacing in TIMESTEP_SPACINGS:
        assert inference_timesteps(10, None, spacing) == list(range(9, -1, -1))


def test_linspace_default_is_the_previous_rule_at_the_usual_step_counts():
    # Before issue 13: round(torch.linspace(T - 1, 0, n)). Now numpy's linspace, as diffusers.
    old = lambda T, n: torch.linspace(T - 1, 0, n, dtype=torch.float64).round().long().tolist()
    for T in (20, 50, 1000):
        for n in (2, 5, 10, 20, 50, 100, 250, 500, 1000):
            if n <= T:
                assert inference_timesteps(T, n) == old(T, n)
    assert inference_timesteps(1000, 1) == old(1000, 1) == [999]  # kept (numpy's would be [0])
    # Where a grid point is k + 1/2 up to rounding, the two linspaces may round apart.
    assert inference_timesteps(1000, 103)[17] == 833 and old(1000, 103)[17] == 832


def test_timesteps_match_diffusers_set_timesteps():
    diffusers = pytest.importorskip("diffusers")
    classes = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler, "dpmsolver++": diffusers.DPMSolverMultistepScheduler}
    for T in (50, 1000):
        counts = range(1, T + 1) if T == 50 else [1, 2, 7, 10, 13, 20, 25, 50, 61, 100, 103, 250, 999, 1000]
        for sampler, cls in classes.items():
            for spacing in TIMESTEP_SPACINGS:
                offset = 1 if spacing == "leading" else 0
                theirs_sched = cls(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
                for n in counts:
                    theirs_sched.set_timesteps(n)
                    theirs = theirs_sched.timesteps.tolist()
                    if len(set(theirs)) < len(theirs) or max(theirs) >= T:
                        with pytest.raises(ValueError, match="not distinct"):  # diffusers repeats timesteps here
                            inference_timesteps(T, n, spacing, offset, sampler=sampler)
                        continue
                    ours = inference_timesteps(T, n, spacing, offset, sampler=sampler)
                    if spacing == "linspace" and n == 1 and sampler != "dpmsolver++":
                        assert theirs == [0] and ours == [T - 1]  # documented: we do not evaluate t = 0 on pure noise
                    elif spacing == "trailing" and len(theirs) == n + 1:
                        assert theirs[-1] == -1 and ours == theirs[:-1]  # documented: numpy's arange overshoots
                    else:
                        assert ours == theirs, (T, sampler, spacing, n)


# ----------------------------------------------------------------------------------------
# DPM-Solver++ against its closed forms
# ----------------------------------------------------------------------------------------


def toy_model(x, t, T=1000):
    """Some smooth function of (x_t, t), standing in for a network."""
    t = t.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return 0.7 * torch.sin(x) - 0.2 * x + 0.05 * t / T


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_dpmsolver_first_order_is_ddim_eta0_on_the_same_timesteps(ptype):
    s = DDPMBetaSchedule(1000, beta_schedule="cosine")
    timesteps = inference_timesteps(1000, 12, "trailing")
    x_T = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dpm = DPMSolverMultistepSampler(s, prediction_type=ptype, solver_order=1, timesteps=timesteps)
    ddim = DDIMSampler(s, prediction_type=ptype, eta=0.0, timesteps=timesteps)
    x_dpm = x_ddim = x_T
    for t in timesteps:
        tt = torch.full((3,), t)
        x_dpm, x_ddim = dpm.step(toy_model(x_dpm, tt), t, x_dpm), ddim.step(toy_model(x_ddim, tt), t, x_ddim)
        torch.testing.assert_close(x_dpm, x_ddim, rtol=1e-12, atol=1e-12)


def test_dpmsolver_second_order_step_closed_form():
    s = DDPMBetaSchedule(100)
    sampler = DPMSolverMultistepSampler(s, num_inference_steps=5)
    t0, t1, t2 = sampler.timesteps[:3]
    x0, x1 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    m0, m1 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    sampler.step(m0, t0, x0)
    out = sampler.step(m1, t1, x1)
    ab = lambda t: s.alphas_cumprod[t].item()
    alpha, sigma = (lambda t: math.sqrt(ab(t))), (lambda t: math.sqrt(1 - ab(t)))
    lam = lambda t: math.log(alpha(t) / sigma(t))
    d0 = (x0 - sigma(t0) * m0) / alpha(t0)  # data predictions from eps
    d1 = (x1 - sigma(t1) * m1) / alpha(t1)
    h, h_prev = lam(t2) - lam(t1), lam(t1) - lam(t0)
    r = h_prev / h
    D = (1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0  # DPM-Solver++(2M), Algorithm 2
    expected = sigma(t2) / sigma(t1) * x1 - alpha(t2) * (math.exp(-h) - 1) * D
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dpmsolver_last_step_returns_the_data_prediction():
    s = DDPMBetaSchedule(100)
    x = torch.randn(2, 3, dtype=torch.float64)
    x0 = torch.randn(2, 3, dtype=torch.float64)
    out = sample_loop(lambda x_t, t: x0, x.shape, s, sampler="dpmsolver++", num_inference_steps=4, prediction_type="sample",
                      x_T=x, dtype=torch.float64, progress=False)
    torch.testing.assert_close(out, x0, rtol=0, atol=0)


MU, STD = 0.5, 0.3  # the data distribution N(MU, STD^2) of the exact-score tests


def gaussian_oracle(schedule, prediction_type):
    """The exact denoiser for data ~ N(MU, STD^2): x_t ~ N(a MU, v), v = a^2 STD^2 + sigma^2, and
    E[x0 | x_t] = MU + a STD^2 (x_t - a MU) / v, E[eps | x_t] = sigma (x_t - a MU) / v."""

    def denoise(x, t):
        a_bar = schedule.gather("alphas_cumprod", t, x)
        a, sigma = a_bar.sqrt(), (1 - a_bar).sqrt()
        v = a**2 * STD**2 + sigma**2
        x0, eps = MU + a * STD**2 * (x - a * MU) / v, sigma * (x - a * MU) / v
        return {"epsilon": eps, "sample": x0, "v": a * eps - sigma * x0}[prediction_type]

    return denoise


def deterministic_moments(sampler, schedule, ptype, n, spacing="linspace"):
    """Mean and std of the samples when x_T is the exact marginal at the first timestep:
    with the exact (linear) denoiser, a deterministic sampler is an affine map x_T -> A x_T + B."""
    out = sample_loop(gaussian_oracle(schedule, ptype), (2,), schedule, sampler=sampler, num_inference_steps=n,
                      prediction_type=ptype, timestep_spacing=spacing, x_T=torch.tensor([0.0, 1.0], dtype=torch.float64),
                      dtype=torch.float64, progress=False)
    B, A = out[0].item(), (out[1] - out[0]).item()
    t0 = make_sampler(sampler, schedule, num_inference_steps=n, timestep_spacing=spacing).timesteps[0]
    a_bar = schedule.alphas_cumprod[t0].item()
    return A * math.sqrt(a_bar) * MU + B, abs(A) * math.sqrt(a_bar * STD**2 + 1 - a_bar)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_deterministic_samplers_converge_on_gaussian_data(ptype, beta_schedule):
    s = DDPMBetaSchedule(1000, beta_schedule=beta_schedule)
    std_err = {}
    for sampler in ("ddim", "dpmsolver++"):
        for n in (10, 20, 50, 100):
            mean, std = deterministic_moments(sampler, s, ptype, n)
            assert mean == pytest.approx(MU, abs=1e-9)  # the exact denoiser keeps the mean exactly
            std_err[sampler, n] = abs(std - STD)
    for n in (10, 20, 50, 100):
        assert std_err["dpmsolver++", n] < std_err["ddim", n]  # second order beats first
    assert std_err["ddim", 10] / std_err["ddim", 100] > 7  # first order: ~10x for 10x the steps
    assert std_err["dpmsolver++", 10] / std_err["dpmsolver++", 50] > 10  # faster than first order
    assert std_err["ddim", 100] < 0.015 and std_err["dpmsolver++", 50] < 0.01 and std_err["dpmsolver++", 100] < 2e-3
    for spacing in ("leading", "trailing"):
        for sampler in ("ddim", "dpmsolver++"):
            mean, std = deterministic_moments(sampler, s, ptype, 100, spacing)
            assert mean == pytest.approx(MU, abs=1e-9) and std == pytest.approx(STD, abs=0.015)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_ddpm_converges_on_gaussian_data(ptype):
    s = DDPMBetaSchedule(1000, beta_schedule="cosine")
    err = {}
    for n in (10, 1000):
        x = sample_loop(gaussian_oracle(s, ptype), (20_000,), s, sampler="ddpm", num_inference_steps=n, prediction_type=ptype,
                        dtype=torch.float64, generator=torch.Generator().manual_seed(0), progress=False)
        assert x.mean().item() == pytest.approx(MU, abs=7e-3)  # Monte Carlo: 3 standard errors
        err[n] = abs(x.std().item() - STD)
    assert err[1000] < 6e-3 and err[10] > 0.05  # the std error of the std is 1.5e-3


# ----------------------------------------------------------------------------------------
# Against diffusers' schedulers: same timesteps, same model outputs, float64
# ----------------------------------------------------------------------------------------


def float64_diffusers(cls, schedule, ptype, spacing, n, offset=0):
    """A diffusers scheduler on our schedule, with its float32 tables replaced by our float64 ones."""
    d = diffusers_scheduler(cls, schedule, ptype, timestep_spacing=spacing, steps_offset=offset)
    d.alphas_cumprod = schedule.alphas_cumprod.clone()  # diffusers keeps alphas_cumprod in float32
    d.set_timesteps(n)
    if hasattr(d, "sigmas"):  # DPM-Solver: set_timesteps' sigmas, interpolated (here: indexed) as there, in float64
        sig = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt().numpy()
        d.sigmas = torch.from_numpy(np.append(np.interp(d.timesteps.numpy(), np.arange(len(sig)), sig), 0.0))
    return d


def uncast_sample(d):
    """diffusers' DPMSolverMultistepScheduler.step casts the sample to float32 before its update;
    hand the updates the float64 sample instead. Returns a dict: put the step's sample under "x"."""
    box = {}
    first, second = d.dpm_solver_first_order_update, d.multistep_dpm_solver_second_order_update
    d.dpm_solver_first_order_update = lambda m, *a, sample=None, **k: first(m, *a, sample=box["x"], **k)
    d.multistep_dpm_solver_second_order_update = lambda m, *a, sample=None, **k: second(m, *a, sample=box["x"], **k)
    return box


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_agrees_with_diffusers_step_by_step(sampler, spacing, ptype, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm

    T = 1000
    s = DDPMBetaSchedule(T, beta_schedule="cosine")
    cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler, "dpmsolver++": diffusers.DPMSolverMultistepScheduler}[sampler]
    offset = 1 if spacing == "leading" else 0
    for n in (10, 13):
        theirs = float64_diffusers(cls, s, ptype, spacing, n, offset)
        ours = make_sampler(sampler, s, num_inference_steps=n, prediction_type=ptype, timestep_spacing=spacing,
                            steps_offset=offset, eta=1.0 if sampler == "ddim" else 0.0)
        assert theirs.timesteps.tolist() == ours.timesteps
        box = uncast_sample(theirs) if sampler == "dpmsolver++" else {}
        # The same noise for both (DDPM, and DDIM with eta = 1).
        noise = {"z": torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
        monkeypatch.setattr(scheduling_qgfd, "_noise_like", lambda x, generator: noise["z"])
        monkeypatch.setattr(diffusers_ddpm, "randn_tensor", lambda *a, **k: noise["z"])
        # diffusers' DDIM steps to t - T // n (huggingface/diffusers#12633): the next listed
        # timestep for "leading", and for "trailing" when n divides T; elsewhere compare each
        # step on the timesteps diffusers actually uses.
        ddim_own_steps = sampler == "ddim" and not (spacing == "leading" or (spacing == "trailing" and T % n == 0))
        x = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        for i, t in enumerate(ours.timesteps):
            model_output = toy_model(x, torch.full((2,), t))
            if i == len(ours.timesteps) - 1 and sampler == "ddpm":
                noise["z"] = torch.zeros_like(x)  # diffusers adds sqrt(1e-20) z at a last t > 0; we add none
            box["x"] = x
            kwargs = dict(eta=1.0, variance_noise=noise["z"]) if sampler == "ddim" else {}
            expected = theirs.step(model_output, t, x, **kwargs).prev_sample
            if ddim_own_steps:
                t_to = t - T // n
                one = DDIMSampler(s, prediction_type=ptype, eta=1.0, timesteps=[t, t_to] if t_to >= 0 else [t])
                got = one.step(model_output, t, x)
            else:
                got = ours.step(model_output, t, x)
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
            x = got


def test_diffusers_ddim_linspace_steps_are_not_its_listed_timesteps():
    # Why the comparison above steps DDIM on diffusers' own targets for "linspace": diffusers
    # evaluates at 999, 888, ... but steps 999 -> 899. Our DDIM steps 999 -> 888.
    diffusers = pytest.importorskip("diffusers")
    d = diffusers.DDIMScheduler(timestep_spacing="linspace")
    d.set_timesteps(10)
    assert d.timesteps.tolist()[:2] == [999, 888] and 999 - 1000 // 10 == 899
    assert DDIMSampler(DDPMBetaSchedule(1000), num_inference_steps=10)._prev[999] == 888


@pytest.mark.parametrize("ptype", ["epsilon", "v"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_a_diffusers_scheduler_samples_as_the_named_sampler(name, ptype):
    diffusers = pytest.importorskip("diffusers")
    cls = {"ddpm": diffusers.DDPMScheduler, "ddim": diffusers.DDIMScheduler, "dpmsolver++": diffusers.DPMSolverMultistepScheduler}[name]
    s = DDPMBetaSchedule(1000, beta_schedule="cosine")
    fn = lambda x, t: torch.tanh(x) * 0.5
    kw = dict(num_inference_steps=20, prediction_type=ptype, progress=False)
    for spacing in TIMESTEP_SPACINGS:
        if name == "ddim" and spacing == "linspace":
            continue  # diffusers#12633, above
        scheduler = diffusers_scheduler(cls, s, ptype, timestep_spacing=spacing)
        a = sample_loop(fn, (3, 4), s, sampler=scheduler, generator=torch.Generator().manual_seed(0), **kw)
        b = sample_loop(fn, (3, 4), s, sampler=name, timestep_spacing=spacing, generator=torch.Generator().manual_seed(0), **kw)
        # diffusers computes its tables in float32: agreement to float32 precision.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_diffusers_scheduler_must_fit_the_model():
    diffusers = pytest.importorskip("diffusers")
    s = DDPMBetaSchedule(100, beta_schedule="cosine")
    fn = lambda x, t: torch.zeros_like(x)
    run = lambda scheduler, **kw: sample_loop(fn, (1, 2), s, sampler=scheduler, num_inference_steps=5, progress=False, **kw)
    with pytest.raises(ValueError, match="num_train_timesteps=1000; the model was trained with 100"):
        run(diffusers.DDIMScheduler())
    with pytest.raises(ValueError, match="prediction_type='epsilon'; the model predicts 'v'"):
        run(diffusers_scheduler(diffusers.DDIMScheduler, s, "epsilon"), prediction_type="v")
    with pytest.raises(ValueError, match="alphas_cumprod differ"):
        run(diffusers.DDIMScheduler(num_train_timesteps=100))  # linear betas; the model's are cosine
    with pytest.raises(ValueError, match="timestep_spacing"):
        run(diffusers_scheduler(diffusers.DDIMScheduler, s), timestep_spacing="trailing")
    with pytest.raises(ValueError, match="eta"):
        run(diffusers_scheduler(diffusers.DPMSolverMultistepScheduler, s), eta=0.5)
    with pytest.raises(ValueError, match="integer timesteps"):
        run(diffusers_scheduler(diffusers.EulerDiscreteScheduler, s))
    with pytest.raises(ValueError, match=r"the class DDIMScheduler \(pass an instance\)"):
        check_sampler(diffusers.DDIMScheduler)
    run(diffusers_scheduler(diffusers.DDIMScheduler, s), eta=1.0)  # DDIM's step takes eta


def test_imports_and_samples_without_diffusers():
    code = (
        "import sys\n"
        "import qgfd_hf, torch\n"
        "assert 'diffusers' not in sys.modules, 'qgfd_hf imported diffusers'\n"
        "sys.modules['diffusers'] = None  # from here on, `import diffusers` fails\n"
        "s = qgfd_hf.DDPMBetaSchedule(20)\n"
        "x = qgfd_hf.sample_loop(lambda x, t: 0 * x, (1, 2), s, sampler='dpmsolver++', num_inference_steps=4, progress=False)\n"
        "try:\n"
        "    qgfd_hf.sample_loop(lambda x, t: 0 * x, (1, 2), s, sampler=object(), progress=False)\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "diffusers SchedulerMixin instance (diffusers is not installed: pip install qgfd_hf[diffusers]), got a object" in out.stdout


def test_bad_sampler_spacing_and_steps():
    s = DDPMBetaSchedule(10)
    with pytest.raises(ValueError, match=r"Unknown timestep_spacing 'uniform'; allowed: 'linspace', 'leading', 'trailing'"):
        inference_timesteps(10, 5, "uniform")
    with pytest.raises(ValueError, match=r"Unknown sampler 'dpm\+\+'; allowed: 'ddpm', 'ddim', 'dpmsolver\+\+'"):
        sample_loop(lambda x, t: x, (1, 2), s, sampler="dpm++", progress=False)
    with pytest.raises(ValueError, match=r"num_inference_steps.*\[1, 10\].*got 11"):
        make_sampler("dpmsolver++", s, num_inference_steps=11)
    with pytest.raises(ValueError, match="got 0"):
        sample_loop(lambda x, t: x, (1, 2), s, sampler="ddpm", num_inference_steps=0, timestep_spacing="trailing", progress=False)
    with pytest.raises(ValueError, match="not distinct"):  # 11 points on 10 timesteps
        make_sampler("dpmsolver++", s, num_inference_steps=10)
    with pytest.raises(ValueError, match="steps_offset.*'leading' spacing only"):
        inference_timesteps(10, 5, "trailing", steps_offset=1)
    with pytest.raises(ValueError, match="not distinct and in"):
        inference_timesteps(10, 5, "leading", steps_offset=2)  # 8 + 2 = 10 is out of range
    with pytest.raises(ValueError, match="got a list"):
        sample_loop(lambda x, t: x, (1, 2), s, sampler=["ddim"], progress=False)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("dpmsolver++", s, eta=0.5)
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepSampler(s, solver_order=3)
    with pytest.raises(ValueError, match="descending"):
        DDIMSampler(s, timesteps=[3, 5])
    with pytest.raises(ValueError, match="not both"):
        DDIMSampler(s, num_inference_steps=3, timesteps=[5, 3])
    dpm = DPMSolverMultistepSampler(s, num_inference_steps=3)
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="in order"):
        dpm.step(x, dpm.timesteps[1], x)
    with pytest.raises(ValueError, match="not one of this sampler's timesteps"):
        dpm.step(x, 4, x)
