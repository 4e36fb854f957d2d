"""Checks for notebook 01 (the forward process): β schedules, q(x_t | x_0), the posterior, x̂_0."""
from __future__ import annotations

import math

import torch

from ..schedule import NoiseSchedule
from .harness import exercise, expect_close, expect_equal, fail

__all__ = ["cosine_betas", "q_sample", "posterior", "half_life", "recover_x0", "matched_beta_end"]


@exercise("Exercise 1.1 — the cosine schedule")
def cosine_betas(my_cosine_betas) -> int:
    """``my_cosine_betas(T, s=0.008) -> (T,)`` against ``NoiseSchedule(T, kind="cosine").betas``."""
    for T in (1000, 500, 10):
        got = my_cosine_betas(T)
        want = NoiseSchedule(T, kind="cosine").betas.double()
        expect_close(got, want, f"β for T={T}", rtol=1e-4, atol=1e-7)
    if float(torch.as_tensor(my_cosine_betas(1000)).max()) > 0.999 + 1e-9:
        fail("β must be clipped at 0.999")
    return 3


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 5, 5, generator=g) * 2 - 1, torch.randn(n, 1, 5, 5, generator=g)


@exercise("Exercise 1.2 — q_sample")
def q_sample(my_q_sample) -> int:
    """``my_q_sample(x0, t, noise, alpha_bar) -> x_t`` with x0, noise (N, C, H, W), t (N,)."""
    s = NoiseSchedule(1000)
    cases = [torch.tensor([0, 1, 250, 500, 998, 999]), torch.tensor([999]), torch.tensor([0])]
    for t in cases:
        x0, noise = _batch(len(t), seed=len(t))
        before = x0.clone()
        got = my_q_sample(x0, t, noise, s.alpha_bars)
        expect_close(got, s.q_sample(x0, t, noise), f"x_t for t={t.tolist()}", rtol=1e-4, atol=1e-6)
        if not torch.equal(before, x0):
            fail("x0 was modified in place")
    return len(cases)


@exercise("Exercise 1.3 — the posterior")
def posterior(my_posterior) -> int:
    """``my_posterior(x0, xt, t, betas) -> (mean (N, C, H, W), variance)`` for an integer t."""
    s = NoiseSchedule(1000)
    betas = s.betas.double()
    for step in (0, 1, 100, 500, 999):
        x0, xt = _batch(3, seed=step)
        t = torch.full((3,), step)
        want_mean, want_var, _ = s.q_posterior(x0, xt, t)
        got = my_posterior(x0, xt, step, betas)
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(f"should return a pair (mean, variance), got {type(got).__name__}")
        mean, var = got
        expect_close(mean, want_mean, f"posterior mean at t={step}", rtol=1e-4, atol=1e-5)
        var = torch.as_tensor(var, dtype=torch.float64).flatten()[:1].reshape(())
        expect_close(var, want_var.flatten()[0], f"posterior variance at t={step}", rtol=1e-4, atol=1e-9)
    return 5


@exercise("Exercise 1.4 — where is half the signal gone?")
def half_life(my_half_life) -> int:
    """``my_half_life(schedule) -> int``: the first t with ᾱ_t < 0.5."""
    cases = [NoiseSchedule(1000, "linear"), NoiseSchedule(1000, "cosine"), NoiseSchedule(500),
             NoiseSchedule(20, "cosine")]
    for s in cases:
        want = int((s.alpha_bars < 0.5).nonzero()[0])
        got = my_half_life(s)
        if not isinstance(got, int) and not (torch.is_tensor(got) and got.numel() == 1):
            fail(f"should return an int, got {type(got).__name__}")
        expect_equal(int(got), want, f"the half-life of the {s.kind} schedule with T={s.num_steps}")
    return len(cases)


@exercise("Exercise 1.5 — predicting x_0")
def recover_x0(my_recover_x0) -> int:
    """``my_recover_x0(xt, t, eps, schedule) -> x0`` (N, C, H, W)."""
    s = NoiseSchedule(1000, "cosine")
    for t in (torch.tensor([0, 10, 100, 400, 800, 999]), torch.tensor([3])):
        x0, eps = _batch(len(t), seed=7)
        xt = s.q_sample(x0, t, eps)
        expect_close(my_recover_x0(xt, t, eps, s), s.predict_x0(xt, t, eps),
                     f"x̂_0 for t={t.tolist()}", rtol=1e-3, atol=1e-4)
    return 2


@exercise("Exercise 1.6 — fewer steps, same end point")
def matched_beta_end(my_matched_beta_end) -> int:
    """``my_matched_beta_end(T, target_alpha_bar) -> β_T`` for a linear ramp starting at 1e-4."""
    target = NoiseSchedule(1000).alpha_bars[-1].item()
    for T in (500, 250):
        beta_end = float(my_matched_beta_end(T, target))
        if not 1e-4 < beta_end < 1:
            fail(f"β_T for T={T} should lie between 1e-4 and 1, got {beta_end:.3g}")
        end = torch.cumprod(1 - torch.linspace(1e-4, beta_end, T, dtype=torch.float64), 0)[-1].item()
        ratio = end / target
        if abs(ratio - 1) > 0.01:
            fail(f"for T={T} your β_T={beta_end:.4f} gives ᾱ_T = {end:.3e}, {100 * (ratio - 1):+.1f} % "
                 f"off the target {target:.3e} (allowed ±1 %)")
    if math.isclose(float(my_matched_beta_end(500, target)), 0.02, rel_tol=1e-3):
        fail("β_T = 0.02 is the T=1000 value; it should change with T")
    return 2
