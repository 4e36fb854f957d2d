"""Checks for notebook 03 (training and sampling): the DDPM loss, an EMA update, the DDPM step's
mean, a deterministic DDIM step and the timesteps a DDIM visits."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ..schedule import NoiseSchedule
from ..unet import UNet, UNetConfig
from .harness import as_int, expect_close, expect_equal, expect_shape, exercise, fail, reference_blocked

__all__ = ["ddpm_loss", "ema_update", "ddpm_mean", "ddim_step", "largest_ddim_jump"]


def _tiny_unet(seed: int = 0) -> UNet:
    """A seeded 8×8 UNet small enough to run in milliseconds (no attention, no dropout)."""
    torch.manual_seed(seed)
    return UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                           attention_resolutions=(), norm_groups=4, num_heads=2, dropout=0.0))


def _images(n: int, seed: int, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1, torch.randn(n, 1, size, size, generator=g)


@exercise("Exercise 3.1 — the DDPM loss")
def ddpm_loss(my_ddpm_loss) -> int:
    """``my_ddpm_loss(eps_model, schedule, x0, t, noise) -> scalar`` = MSE(ε̂(x_t, t), noise)."""
    cases = [(NoiseSchedule(1000), torch.tensor([0, 1, 500, 998, 999])),
             (NoiseSchedule(1000), torch.tensor([999])), (NoiseSchedule(1000), torch.tensor([0])),
             (NoiseSchedule(500, "cosine"), torch.tensor([3, 250, 499]))]
    for i, (s, t) in enumerate(cases):
        unet = _tiny_unet(seed=i)
        x0, noise = _images(len(t), seed=i)
        before = (x0.clone(), noise.clone())
        want = F.mse_loss(unet(s.q_sample(x0, t, noise), t), noise)
        (want_grad,) = torch.autograd.grad(want, unet.stem.weight)
        got = my_ddpm_loss(unet, s, x0, t, noise)
        what = f"the loss for t={t.tolist()} ({s.kind} schedule, T={s.num_steps})"
        if isinstance(got, torch.Tensor):
            expect_shape(got, (), f"{what} (a single number, the mean over the batch)")
        expect_close(got, want, what, rtol=1e-4, atol=1e-7)
        if not torch.equal(before[0], x0) or not torch.equal(before[1], noise):
            fail("x0 or noise was modified in place")
        if not isinstance(got, torch.Tensor) or not got.requires_grad:
            fail(f"{what} carries no gradient (was it detached, turned into a float or computed "
                 "under torch.no_grad()?); training needs loss.backward()")
        (got_grad,) = torch.autograd.grad(got, unet.stem.weight)
        expect_close(got_grad, want_grad, f"the gradient of {what} with respect to the first conv's "
                     "weights", rtol=1e-3, atol=1e-6)
    return len(cases)


def _reference_ema(ema: list, params: list, decay: float, steps: int) -> list:
    ema = [e.detach().clone() for e in ema]
    for _ in range(steps):
        get_ema_multi_avg_fn(decay)(ema, [p.detach() for p in params], None)
    return ema


@exercise("Exercise 3.2 — an EMA update")
def ema_update(my_ema_update) -> int:
    """``my_ema_update(ema_params, params, decay) -> None``: ema ← decay·ema + (1 − decay)·param for
    each pair, in place, as ``torch.optim.swa_utils.get_ema_multi_avg_fn`` (jdm's Trainer) does."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    cases = 0
    for decay, steps in ((0.9, 1), (0.999, 3), (0.0, 1), (0.5, 2)):
        ema = [torch.randn(s, generator=g) for s in shapes]
        params = [torch.randn(s, generator=g) for s in shapes]
        want = _reference_ema(ema, params, decay, steps)
        params_before = [p.clone() for p in params]
        ema_before = [e.clone() for e in ema]
        for _ in range(steps):
            my_ema_update(list(ema), params, decay)   # a fresh list each call, as AveragedModel passes
        if all(torch.equal(e, b) for e, b in zip(ema, ema_before)):
            fail(f"the EMA tensors did not change (decay={decay}): update the tensors in ema_params "
                 "in place; a new tensor or list that you return is thrown away")
        for k, (got, w) in enumerate(zip(ema, want)):
            expect_close(got, w, f"ema_params[{k}] after {steps} update(s) with decay={decay}",
                         rtol=1e-5, atol=1e-6)
        if any(not torch.equal(p, b) for p, b in zip(params, params_before)):
            fail("params (the model's own weights) were modified; only the EMA should change")
        cases += 1

    # a model's parameters, which require gradients (what AveragedModel hands over)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    want = _reference_ema(list(ema_model.parameters()), list(model.parameters()), 0.99, 1)
    try:
        my_ema_update(list(ema_model.parameters()), list(model.parameters()), 0.99)
    except RuntimeError as err:
        fail(f"on a model's parameters (which require gradients) the update raised "
             f"RuntimeError: {str(err).splitlines()[0]}")
    for k, (got, w) in enumerate(zip(ema_model.parameters(), want)):
        expect_close(got, w, f"the EMA of an nn.Linear's parameter {k} with decay=0.99",
                     rtol=1e-5, atol=1e-6)
    return cases + 1


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.randn(n, 1, 5, 5, generator=g)


def _reference_ddpm_mean(s: NoiseSchedule, x_t, t, eps):
    """Eq. 11 in float64: (x_t − β_t/√(1−ᾱ_t) · ε) / √α_t."""
    alpha, beta, ab = (v.double()[t].reshape(-1, 1, 1, 1) for v in (s.alphas, s.betas, s.alpha_bars))
    return (x_t.double() - beta / (1 - ab).sqrt() * eps.double()) / alpha.sqrt()


@exercise("Exercise 3.3 — the DDPM step's mean")
def ddpm_mean(my_ddpm_mean) -> int:
    """``my_ddpm_mean(schedule, x_t, t, eps) -> (N, C, H, W)``, t an (N,) tensor, without clipping."""
    cases = [(NoiseSchedule(1000), torch.tensor([1, 500, 999])), (NoiseSchedule(1000), torch.tensor([0])),
             (NoiseSchedule(1000), torch.tensor([999])), (NoiseSchedule(1000), torch.tensor([0, 250, 999, 3])),
             (NoiseSchedule(500, "cosine"), torch.tensor([0, 100, 499]))]
    for i, (s, t) in enumerate(cases):
        x_t, eps = _batch(len(t), seed=i)
        before = x_t.clone()
        want = _reference_ddpm_mean(s, x_t, t, eps)
        # the same number as jdm's ancestral step without clipping and without noise
        assert torch.allclose(want.float(), s.q_posterior(s.predict_x0(x_t, t, eps), x_t, t)[0],
                              rtol=1e-3, atol=1e-3)
        with reference_blocked(my_ddpm_mean, (NoiseSchedule, "q_posterior"),
                               (NoiseSchedule, "ddpm_step"), (NoiseSchedule, "ddim_step")):
            got = my_ddpm_mean(s, x_t, t.clone(), eps)
        if not torch.equal(before, x_t):
            fail("x_t was modified in place")
        expect_close(got, want, f"μ_θ for t={t.tolist()} ({s.kind} schedule, T={s.num_steps})",
                     rtol=1e-4, atol=1e-5, t=t)
    return len(cases)


def _reference_ddim(s: NoiseSchedule, x_t, t, t_prev, eps):
    """Song et al. eq. 12 with σ = 0 in float64; ᾱ_{−1} = 1."""
    abar = torch.cat([torch.ones(1, dtype=torch.float64), s.alpha_bars.double()])
    ab, ab_prev = (abar[v + 1].reshape(-1, 1, 1, 1) for v in (t, t_prev))
    x_t, eps = x_t.double(), eps.double()
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


@exercise("Exercise 3.4 — a deterministic DDIM step")
def ddim_step(my_ddim_step) -> int:
    """``my_ddim_step(schedule, x_t, t, t_prev, eps) -> x_{t_prev}`` (η = 0, no clipping); t, t_prev
    (N,) tensors, t_prev = −1 meaning the clean image."""
    lin, cos = NoiseSchedule(1000), NoiseSchedule(500, "cosine")
    cases = [(lin, [600, 600], [400, 400]), (lin, [999], [979]), (lin, [20, 10, 0], [0, -1, -1]),
             (lin, [999, 500, 3], [949, 250, -1]), (lin, [0], [-1]), (cos, [499, 250, 1], [479, 240, 0])]
    for i, (s, t, t_prev) in enumerate(cases):
        t, t_prev = torch.tensor(t), torch.tensor(t_prev)
        x_t, eps = _batch(len(t), seed=10 + i)
        before = x_t.clone()
        want = _reference_ddim(s, x_t, t, t_prev, eps)
        assert torch.allclose(want.float(), s.ddim_step(x_t, t, t_prev, eps, eta=0.0, clip_x0=False),
                              rtol=1e-3, atol=1e-3)
        with reference_blocked(my_ddim_step, (NoiseSchedule, "ddim_step"), (NoiseSchedule, "ddpm_step")):
            got = my_ddim_step(s, x_t, t.clone(), t_prev.clone(), eps)
        if not torch.equal(before, x_t):
            fail("x_t was modified in place")
        expect_close(got, want, f"x_(t_prev) for t={t.tolist()} → t_prev={t_prev.tolist()} "
                     f"({s.kind} schedule, T={s.num_steps})", rtol=1e-4, atol=1e-4, t=t)
    return len(cases)


@exercise("Exercise 3.5 — where do the DDIM steps land?")
def largest_ddim_jump(my_largest_ddim_jump) -> int:
    """``my_largest_ddim_jump(schedule, k) -> int``: the largest gap between consecutive timesteps of
    ``schedule.timesteps(k)``."""
    cases = [(1000, 25), (1000, 50), (1000, 10), (1000, 2), (1000, 1000), (500, 7), (200, 13)]
    for T, k in cases:
        s = NoiseSchedule(T)
        visited = s.timesteps(k)
        want = max(a - b for a, b in zip(visited, visited[1:]))
        got = as_int(my_largest_ddim_jump(s, k), "the largest jump (a whole number of timesteps)")
        expect_equal(got, want, f"the largest jump of a {k}-step DDIM on T={T}")
    return len(cases)
