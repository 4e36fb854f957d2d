"""Checks for notebook 06 (conditional generation): the paper's representation step, classifier
guidance's ε shift and the Fréchet distance.

The two sampler checks run the student's code on a tiny seeded joint model (8×8 images, a few
thousand parameters, random weights: only the arithmetic is checked, not the samples) and compare
with ``jdm.sampling``'s samplers on the same inputs.
"""
from __future__ import annotations

import torch

from ..joint import JointDiffusion
from .. import metrics, sampling
from ..metrics import frechet_distance
from ..sampling import classifier_guided_eps, representation_guided_eps
from ..schedule import NoiseSchedule
from ..unet import Features, UNet, UNetConfig
from .harness import as_tensor, exercise, expect_close, expect_unchanged, fail, reference_blocked

__all__ = ["paper_eps", "guidance_shift", "frechet"]


def tiny_joint_model(seed: int = 0, num_steps: int = 100) -> JointDiffusion:
    """A seeded joint model small enough to run in milliseconds: 1×8×8 images, 8 channels, levels
    8 and 4, no attention, a noise-aware head, no dropout, eval mode, T = ``num_steps``."""
    torch.manual_seed(seed)
    cfg = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(), norm_groups=4, num_heads=2, dropout=0.0)
    return JointDiffusion(UNet(cfg), NoiseSchedule(num_steps), head_hidden=32, head_dropout=0.0,
                          noise_aware=True).eval()


def _noisy_batch(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _call_eps_fn(make_eps_fn, what: str, *args):
    eps_fn = make_eps_fn(*args)
    if not callable(eps_fn):
        fail(f"{what} should return a function eps_fn(x_t, t), got {type(eps_fn).__name__}")
    return eps_fn


def _paper_step_variant(model, target, gamma, x_t, t, *, gradient="total", direction="descent",
                        scores="log_softmax", reduce="sum", moved="all"):
    """ε̂ of the paper's step (the defaults: the authors' rule) or of one named mistake in it."""
    with torch.enable_grad():
        feats = model.unet.encode(x_t.detach().requires_grad_(gradient == "total"), t)
        z = [feats.bottleneck, *feats.skips]
        if gradient == "direct":
            z = [m.detach().requires_grad_(True) for m in z]
        logits = model.head(Features(z[0], z[1:]))
        picked = (logits.log_softmax(1) if scores == "log_softmax" else logits)[torch.arange(len(t)), target]
        objective = picked.sum() if reduce == "sum" else picked.mean()
        moving = z[:1] if moved == "bottleneck" else z
        grads = list(torch.autograd.grad(objective, moving))
    sign = 1.0 if direction == "ascent" else -1.0  # the objective is log p: descent = +γ·∇CE
    maps = [m.detach() + (sign * gamma * grads[i] if i < len(grads) and moved != "none" else 0)
            for i, m in enumerate(z)]
    with torch.no_grad():
        return model.unet.decode(Features(maps[0], maps[1:]), t)


PAPER_STEP_MISTAKES = {
    "steps up log p(target | z) (ascent); the authors add +γ·∇CE, which steps *down* it":
        dict(direction="ascent"),
    "detaches each map before the head (the direct rule, a constant per channel); the authors take "
    "each map's total derivative in the encoder's one graph (retain_grad + backward, or "
    "torch.autograd.grad with respect to the maps the encoder returned)":
        dict(gradient="direct"),
    "detaches each map (the direct rule) and steps up log p: both the rule and the sign differ "
    "from the authors'": dict(gradient="direct", direction="ascent"),
    "differentiates the raw logits; the cross-entropy uses log-probabilities (log_softmax)":
        dict(scores="logits"),
    "averages over the batch; the authors' CrossEntropyLoss(reduction='sum') sums, so each "
    "image's step does not shrink with the batch size": dict(reduce="mean"),
    "moves only the bottleneck; the authors move every skip too": dict(moved="bottleneck"),
    "decodes the features it was given, not the moved ones": dict(moved="none"),
}


_PAPER_STEP_REFERENCES = ("representation_guided_eps", "representation_step", "guided_eps")
"""jdm's own versions of the step: a check that compares with them cannot let the answer call them."""


def _close(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    a = torch.as_tensor(a)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and torch.allclose(
        a.detach().double().cpu(), b.detach().double().cpu(), rtol=rtol, atol=atol)


@exercise("Exercise 6.1 — the paper's representation step")
def paper_eps(my_paper_eps) -> int:
    """``my_paper_eps(model, target, scale)(x_t, t) -> ε̂`` against
    ``representation_guided_eps(model, target, scale=…)`` (the authors' rule: total derivative,
    +γ·∇CE) on a tiny model; a mismatch that equals a known mistake is named."""
    model = tiny_joint_model()
    T = model.schedule.num_steps
    cases = [  # (t, target, γ)
        (torch.tensor([0, 30, 60, T - 1]), torch.tensor([1, 4, 7, 4]), 100.0),
        (torch.tensor([50, 50, 50]), torch.tensor([2, 2, 9]), 1000.0),
        (torch.tensor([T - 1]), torch.tensor([3]), 300.0),          # a batch of one
        (torch.tensor([10, 80]), torch.tensor([0, 5]), 0.0),        # γ = 0: the plain ε̂
    ]
    for k, (t, target, gamma) in enumerate(cases):
        x_t = _noisy_batch(len(t), seed=k)
        before = x_t.clone()
        want = representation_guided_eps(model, target, scale=gamma)(x_t, t)  # before theirs
        with reference_blocked(my_paper_eps, *((sampling, name) for name in _PAPER_STEP_REFERENCES)):
            eps_fn = _call_eps_fn(my_paper_eps, "my_paper_eps(model, target, scale)", model,
                                  target, gamma)
            got = eps_fn(x_t, t)
        expect_unchanged(before, x_t, "x_t")
        what = (f"ε̂ for t={t.tolist()}, target={target.tolist()}, γ={gamma:g}"
                + (" (γ = 0 must give the unguided ε̂ = model.unet(x_t, t))" if gamma == 0 else ""))
        if gamma > 0 and not _close(got, want):
            for mistake, how in PAPER_STEP_MISTAKES.items():
                if _close(got, _paper_step_variant(model, target, gamma, x_t, t, **how)):
                    fail(f"{what}: your step {mistake}")
        expect_close(got, want, what, rtol=1e-4, atol=1e-5)
    return len(cases)


@exercise("Exercise 6.2 — classifier guidance's ε shift")
def guidance_shift(my_guided_eps) -> int:
    """``my_guided_eps(eps, grad_log_p, t, schedule, scale) -> ε̂'`` = ε̂ − s·√(1−ᾱ_t)·∇ log p,
    on random tensors (against the formula in float64) and on a tiny model's own ε̂ and gradient
    (against ``classifier_guided_eps``)."""
    schedule = NoiseSchedule(1000)
    ab = schedule.alpha_bars.double()
    g = torch.Generator().manual_seed(0)
    cases = 0
    for t, scale in ((torch.tensor([0, 1, 250, 500, 998, 999]), 3.0),
                     (torch.tensor([999]), 100.0), (torch.tensor([0, 400]), 0.0)):
        eps = torch.randn(len(t), 1, 5, 5, generator=g)
        grad = torch.randn(len(t), 1, 5, 5, generator=g)
        before = (eps.clone(), grad.clone())
        got = my_guided_eps(eps, grad, t, schedule, scale)
        expect_unchanged(before[0], eps, "eps")
        expect_unchanged(before[1], grad, "grad_log_p")
        sigma = (1 - ab[t]).sqrt().reshape(-1, 1, 1, 1)
        want = eps.double() - scale * sigma * grad.double()
        expect_close(got, want, f"ε̂' for t={t.tolist()}, scale={scale:g}", rtol=1e-4, atol=1e-6)
        cases += 1

    # the same shift applied to a model's own ε̂ and ∇_x log p(y | x_t, t) is jdm's classifier guidance
    model = tiny_joint_model()
    x = _noisy_batch(3, seed=5).requires_grad_(True)
    t, target = torch.tensor([5, 40, 99]), torch.tensor([2, 6, 9])
    log_p = model.head(model.unet.encode(x, t)).log_softmax(1)[torch.arange(3), target].sum()
    grad = torch.autograd.grad(log_p, x)[0]
    with torch.no_grad():
        eps = model.unet(x, t)
    for scale in (1.0, 50.0):
        got = my_guided_eps(eps, grad, t, model.schedule, scale)
        want = classifier_guided_eps(model, target, scale=scale)(x.detach(), t)
        expect_close(got, want, f"guided ε̂ of a model at t={t.tolist()}, scale={scale:g} "
                     "(compared with jdm.sampling.classifier_guided_eps)", rtol=1e-4, atol=1e-5)
        cases += 1
    return cases


def _correlated(n: int, d: int, seed: int, shift: float = 0.0, spread: float = 1.0) -> torch.Tensor:
    """n points in d dimensions with correlated coordinates (a random linear mix of N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * spread
    return (torch.randn(n, d, generator=g) @ mix + shift * torch.randn(d, generator=g)).float()


@exercise("Exercise 6.3 — the Fréchet distance")
def frechet(my_frechet) -> int:
    """``my_frechet(feats_a (N, D), feats_b (M, D)) -> float`` against ``jdm.metrics.frechet_distance``."""
    def value(a, b, what):
        before = (a.clone(), b.clone())
        with reference_blocked(my_frechet, (metrics, "frechet_distance")):
            got = as_tensor(my_frechet(a, b), what)
        expect_unchanged(before[0], a, "feats_a")
        expect_unchanged(before[1], b, "feats_b")
        if got.numel() != 1:
            fail(f"{what} should be one number, got a tensor of shape {tuple(got.shape)}")
        got = got.detach().double().reshape(())
        if not torch.isfinite(got):
            fail(f"{what} should be finite, got {got.item()}")
        return got

    a = _correlated(60, 5, seed=0)
    fd_same = value(a, a.clone(), "the FD of a feature set with itself")
    scale = float(torch.cov(a.double().T).trace())
    if abs(fd_same.item()) > 1e-3 * scale:
        fail(f"the FD of a feature set with itself should be 0, got {fd_same.item():.4g}")

    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    want = float(shift.square().sum())
    got = value(a, a + shift, "the FD between a set and the same set shifted")
    if abs(got.item() - want) > 1e-3 * want:
        fail(f"shifting every feature vector by a constant c leaves the covariances alone, so FD "
             f"should be |c|² = {want:.4g}, got {got.item():.4g}")

    cases = [(_correlated(40, 4, seed=1), _correlated(25, 4, seed=2, shift=0.3)),
             (_correlated(12, 6, seed=3), _correlated(30, 6, seed=4, spread=1.5)),
             (_correlated(200, 8, seed=5), _correlated(150, 8, seed=6, shift=1.0, spread=0.5))]
    for k, (a, b) in enumerate(cases):
        for first, second, order in ((a, b, "a, b"), (b, a, "b, a")):
            want = frechet_distance(first, second)
            got = value(first, second, f"FD of set pair {k + 1} ({order})")
            if abs(got.item() - want) > 1e-3 * abs(want) + 1e-6:
                fail(f"FD of set pair {k + 1} ({len(first)} and {len(second)} vectors of "
                     f"{first.shape[1]} features, {order}) should be {want:.6g}, got {got.item():.6g} "
                     f"(relative error {abs(got.item() - want) / abs(want):.1e}, tolerance 1e-03)")
    return 2 + 2 * len(cases)
