"""Tests for jdm.schedule: closed forms, invariants, the posterior, reverse steps, bad input."""
import math

import pytest
import torch

from jdm.schedule import NoiseSchedule, cosine_betas, linear_betas


def full(n, value):
    return torch.full((n,), value, dtype=torch.long)


@pytest.fixture(params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule(200, kind=request.param)


def test_linear_boundary_values():
    """β from 1e-4 to 0.02 at T = 1000; at T = 500 both ends scale by 1000/T = 2."""
    s = NoiseSchedule(1000, "linear", 1e-4, 0.02)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert s.alpha_bars[0].item() == pytest.approx(1 - 1e-4)
    # ᾱ_T = Π(1 − β), computed independently in float64
    expected = torch.prod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)).item()
    assert s.alpha_bars[-1].item() == pytest.approx(expected, rel=1e-4)
    half = NoiseSchedule(500, "linear", 1e-4, 0.02)
    assert half.betas[0].item() == pytest.approx(2e-4)
    assert half.betas[-1].item() == pytest.approx(0.04)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [50, 100, 250, 500, 1000, 4000])
def test_the_last_step_is_pure_noise_for_any_T(kind, T):
    """Sampling starts from N(0, I): ᾱ_T must be ≈ 0 whatever T (unscaled linear β gave 0.60 at
    T = 50)."""
    assert NoiseSchedule(T, kind).alpha_bars[-1].item() < 1e-2


def test_lookups_follow_the_input_device():
    """A schedule serves inputs on another device (here: the meta device, which has no values,
    standing in for a GPU): every output lands on the input's device."""
    s = NoiseSchedule(100)
    x = torch.empty(2, 1, 4, 4, device="meta")
    t = torch.full((2,), 5, device="meta")
    assert s.q_sample(x, t, noise=torch.empty_like(x)).device.type == "meta"
    assert s.predict_x0(x, t, x).device.type == "meta"
    assert s.ddim_step(x, t, t - 1, x, eta=1.0).device.type == "meta"
    assert s.snr(t).device.type == "meta"
    assert all(v.device.type == "meta" for v in s.q_posterior(x, x, t))


def test_cosine_boundary_values():
    betas = cosine_betas(1000)
    assert betas.max() <= 0.999 and betas.min() > 0
    ab = torch.cumprod(1 - betas, 0)
    assert ab[0] > 0.9999 and ab[-1] < 1e-4


def test_alpha_bar_and_snr_monotone(schedule):
    ab = schedule.alpha_bars
    assert torch.all(ab[1:] < ab[:-1]) and torch.all((ab > 0) & (ab < 1))
    snr = schedule.snr(torch.arange(schedule.num_steps))
    assert torch.all(snr[1:] < snr[:-1])


def test_buffers_move_with_to_and_are_not_saved(schedule):
    names = {n for n, _ in schedule.named_buffers()}
    assert {"betas", "alpha_bars", "posterior_variance"} <= names
    assert schedule.state_dict() == {}
    assert schedule.to(torch.float64).alpha_bars.dtype == torch.float64


def test_closed_form_matches_iterated_steps(schedule):
    """q(x_t|x_0) in closed form and x_0 → x_1 → … → x_t one step at a time agree in distribution."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0]).reshape(1, 1, 2, 2).expand(40_000, 1, 2, 2)
    for k in (0, 20, 150):
        x = x0.clone()
        for step in range(k + 1):
            x = schedule.q_step(x, full(len(x), step), generator=g)
        closed = schedule.q_sample(x0, full(len(x0), k), generator=g)
        ab = schedule.alpha_bars[k]
        for sample in (x, closed):
            assert torch.allclose(sample.mean(0), ab.sqrt() * x0[0], atol=0.02)
            assert torch.allclose(sample.var(0), (1 - ab).expand(1, 2, 2), atol=0.02)


def test_posterior_matches_bayes_rule(schedule):
    """The posterior from the buffers equals the product of Gaussians worked out independently."""
    x0, xt = torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3)
    for k in (1, 50, 199):
        t = full(5, k)
        mean, var, log_var = schedule.q_posterior(x0, xt, t)
        betas = schedule.betas.double()  # recompute ᾱ in float64: 1 − ᾱ is tiny at small t
        ab_prev = torch.cumprod(1 - betas, 0)[k - 1]
        alpha, beta = 1 - betas[k], betas[k]
        precision = 1 / (1 - ab_prev) + alpha / beta
        expected_var = 1 / precision
        expected_mean = expected_var * (ab_prev.sqrt() * x0.double() / (1 - ab_prev) + alpha.sqrt() * xt.double() / beta)
        assert var.shape == (5, 1, 1, 1)
        assert torch.allclose(var.double(), expected_var.expand(5, 1, 1, 1), rtol=1e-4)
        assert torch.allclose(log_var.exp().double(), expected_var.expand(5, 1, 1, 1), rtol=1e-4)
        assert torch.allclose(mean.double(), expected_mean, atol=1e-4)


def test_posterior_variance_formula(schedule):
    b = schedule.betas.double()
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=b.dtype), ab[:-1]])
    assert torch.allclose(schedule.posterior_variance.double(), b * (1 - ab_prev) / (1 - ab), rtol=1e-5)
    assert schedule.posterior_variance[0] == 0  # x_0 given x_1 and x_0 is certain
    assert torch.all(schedule.posterior_variance <= b + 1e-7)  # β̃_t ≤ β_t


def test_predict_x0_and_eps_invert_q_sample(schedule):
    x0, noise = torch.rand(4, 3, 5, 5) * 2 - 1, torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 100, 199])
    xt = schedule.q_sample(x0, t, noise)
    assert xt.shape == x0.shape
    assert torch.allclose(schedule.predict_x0(xt, t, noise), x0, atol=2e-3)
    assert torch.allclose(schedule.predict_eps(xt, t, x0), noise, atol=2e-3)


def test_ddpm_step_with_true_noise_at_t0_returns_x0(schedule):
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = full(3, 0)
    xt = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.ddpm_step(xt, t, noise), x0, atol=1e-4)


def test_ddpm_step_moments(schedule):
    """With the true ε, a DDPM step draws from q(x_{t-1} | x_t, x_0): its mean and variance."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((50_000, 1, 1, 1), 0.4)
    noise = torch.randn(x0.shape, generator=g)
    t = full(len(x0), 60)
    xt = schedule.q_sample(x0, t, noise)
    out = schedule.ddpm_step(xt, t, noise, generator=g)
    mean, var, _ = schedule.q_posterior(x0, xt, t)
    assert torch.allclose((out - mean).mean(), torch.tensor(0.0), atol=3e-3)
    assert (out - mean).var().item() == pytest.approx(var[0].item(), rel=0.03)


def test_ddim_deterministic_with_true_noise_lands_on_q_sample(schedule):
    """η = 0 and the true ε: a DDIM jump from t to t' gives exactly √ᾱ' x_0 + √(1−ᾱ') ε."""
    x0, noise = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4)
    t, t_prev = full(2, 150), full(2, 40)
    xt = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.ddim_step(xt, t, t_prev, noise), schedule.q_sample(x0, t_prev, noise), atol=1e-4)
    assert torch.allclose(schedule.ddim_step(xt, t, full(2, -1), noise), x0, atol=1e-4)


def test_ddim_eta_one_is_the_ddpm_step(schedule):
    """η = 1 and t' = t − 1: DDIM's mean and σ equal DDPM's posterior (Song et al. 2021, §4.1)."""
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = full(3, 80)
    xt = schedule.q_sample(x0, t, noise)
    ddim = schedule.ddim_step(xt, t, t - 1, noise, eta=1.0, generator=torch.Generator().manual_seed(3))
    ddpm = schedule.ddpm_step(xt, t, noise, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ddim, ddpm, atol=1e-4)


def test_timesteps():
    s = NoiseSchedule(100)
    assert s.timesteps() == list(range(99, -1, -1))
    ts = s.timesteps(10)
    assert len(ts) == 10 and ts[0] == 99 and ts[-1] == 0 and ts == sorted(set(ts), reverse=True)
    assert s.timesteps(5, start=40) == [40, 30, 20, 10, 0]
    assert s.timesteps(1) == [99]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: NoiseSchedule(10, kind="quadratic"),
        lambda s: NoiseSchedule(0),
        lambda s: linear_betas(10, 0.5, 0.1),
        lambda s: s.q_sample(torch.zeros(2, 1, 4, 4), torch.tensor([0, 200])),
        lambda s: s.q_sample(torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 1.0])),
        lambda s: s.q_sample(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1, 2])),
        lambda s: s.q_sample(torch.zeros(2, 1, 4, 4), full(2, 0), noise=torch.zeros(2, 1, 4, 5)),
        lambda s: s.ddim_step(torch.zeros(1, 1, 2, 2), full(1, 5), full(1, 5), torch.zeros(1, 1, 2, 2)),
        lambda s: s.ddim_step(torch.zeros(1, 1, 2, 2), full(1, 5), full(1, 2), torch.zeros(1, 1, 2, 2), eta=2),
        lambda s: s.timesteps(0),
        lambda s: s.timesteps(300),
        lambda s: s.timesteps(5, start=200),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call(NoiseSchedule(200))
