"""Checks for notebook 01 (the forward process): β schedules, q(x_t | x_0), the posterior, x̂_0."""
from __future__ import annotations

import math

import torch

from .. import schedule
from ..schedule import NoiseSchedule
from .harness import as_int, as_pair, exercise, expect_close, expect_equal, fail, reference_blocked

__all__ = ["cosine_betas", "q_sample", "posterior", "half_life", "recover_x0", "matched_beta_end"]


@exercise("Exercise 1.1 — the cosine schedule")
def cosine_betas(my_cosine_betas) -> int:
    """``my_cosine_betas(T, s=0.008) -> (T,)`` against ``NoiseSchedule(T, kind="cosine").betas``."""
    for T in (1000, 500, 10):
        want = NoiseSchedule(T, kind="cosine").betas.double()
        with reference_blocked(my_cosine_betas, (schedule, "cosine_betas")):
            got = my_cosine_betas(T)
        expect_close(got, want, f"β for T={T}", rtol=1e-4, atol=1e-7)
        got = torch.as_tensor(got)
        # 0.999 itself, in the answer's own precision (float32's nearest is 0.99900001)
        if float(got.max()) > float(torch.tensor(0.999, dtype=got.dtype)):
            fail("β must be clipped at 0.999")
    return 3


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 5, 5, generator=g) * 2 - 1, torch.randn(n, 1, 5, 5, generator=g)


def _schedules() -> list[NoiseSchedule]:
    """Several schedules and lengths: an answer that ignores its schedule argument fails."""
    return [NoiseSchedule(1000), NoiseSchedule(500, "cosine"), NoiseSchedule(200)]


def _about(s: NoiseSchedule) -> str:
    return f"{s.kind} schedule, T={s.num_steps}"


@exercise("Exercise 1.2 — q_sample")
def q_sample(my_q_sample) -> int:
    """``my_q_sample(x0, t, noise, alpha_bar) -> x_t`` with x0, noise (N, C, H, W), t (N,)."""
    cases = 0
    for s in _schedules():
        T = s.num_steps
        for t in (torch.tensor([0, 1, T // 4, T // 2, T - 2, T - 1]), torch.tensor([T - 1]),
                  torch.tensor([0])):
            x0, noise = _batch(len(t), seed=len(t) + T)
            before, want = x0.clone(), s.q_sample(x0, t, noise)
            with reference_blocked(my_q_sample, (NoiseSchedule, "q_sample")):
                got = my_q_sample(x0, t.clone(), noise, s.alpha_bars.clone())
            if not torch.equal(before, x0):
                fail("x0 was modified in place")
            expect_close(got, want, f"x_t for t={t.tolist()} ({_about(s)})", rtol=1e-4, atol=1e-6, t=t)
            cases += 1
    return cases


@exercise("Exercise 1.3 — the posterior")
def posterior(my_posterior) -> int:
    """``my_posterior(x0, xt, t, betas) -> (mean (N, C, H, W), variance)`` for an integer t."""
    cases = 0
    for s in _schedules():
        betas = s.betas.double()
        for step in sorted({0, 1, s.num_steps // 10, s.num_steps // 2, s.num_steps - 1}):
            x0, xt = _batch(3, seed=step)
            before = (x0.clone(), xt.clone())
            want_mean, want_var, _ = s.q_posterior(x0, xt, torch.full((3,), step))
            with reference_blocked(my_posterior, (NoiseSchedule, "q_posterior")):
                got = my_posterior(x0, xt, step, betas.clone())
            if not (torch.equal(before[0], x0) and torch.equal(before[1], xt)):
                fail("x0 or xt was modified in place")
            mean, var = as_pair(got, "the answer (mean, variance)")
            where = f"at t={step} ({_about(s)})"
            expect_close(mean, want_mean, f"posterior mean {where}", rtol=1e-4, atol=1e-5)
            var = torch.as_tensor(var, dtype=torch.float64).flatten()[:1].reshape(())
            expect_close(var, want_var.flatten()[0], f"posterior variance {where}", rtol=1e-4, atol=1e-9)
            cases += 1
    return cases


@exercise("Exercise 1.4 — where is half the signal gone?")
def half_life(my_half_life) -> int:
    """``my_half_life(schedule) -> int``: the first t with ᾱ_t < 0.5."""
    cases = [NoiseSchedule(1000, "linear"), NoiseSchedule(1000, "cosine"), NoiseSchedule(500),
             NoiseSchedule(20, "cosine")]
    for s in cases:
        want = int((s.alpha_bars < 0.5).nonzero()[0])
        got = as_int(my_half_life(s), "the half-life")
        expect_equal(got, want, f"the half-life of the {s.kind} schedule with T={s.num_steps}")
    return len(cases)


@exercise("Exercise 1.5 — predicting x_0")
def recover_x0(my_recover_x0) -> int:
    """``my_recover_x0(xt, t, eps, schedule) -> x0`` (N, C, H, W)."""
    cases = 0
    for s in (NoiseSchedule(1000, "cosine"), NoiseSchedule(1000), NoiseSchedule(300)):
        T = s.num_steps
        for t in (torch.tensor([0, 10, T // 10, T // 2, T - 200, T - 1]), torch.tensor([3])):
            x0, eps = _batch(len(t), seed=7)
            xt = s.q_sample(x0, t, eps)
            before, want = xt.clone(), s.predict_x0(xt, t, eps)
            with reference_blocked(my_recover_x0, (NoiseSchedule, "predict_x0")):
                got = my_recover_x0(xt, t.clone(), eps, s)
            if not torch.equal(before, xt):
                fail("xt was modified in place")
            expect_close(got, want, f"x̂_0 for t={t.tolist()} ({_about(s)})", rtol=1e-3, atol=1e-4, t=t)
            cases += 1
    return cases


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
