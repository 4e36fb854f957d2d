"""Checks for notebook 07 (counterfactual explanations): DDIM inversion, the counterfactual loop
after fresh noise, and the flip-rate / closeness scores.

The loops run on a tiny seeded joint model (8×8 images, random weights: only the arithmetic is
checked) and are compared with ``jdm.counterfactual`` under the same generator seed, which draws
its random numbers in a fixed order (the forward-process noise first, then one draw per DDIM step).
"""
from __future__ import annotations

import torch

from ..counterfactual import CounterfactualSettings, counterfactual, ddim_invert
from ..metrics import class_agreement, image_distances
from ..sampling import Guidance, guided_eps
from .guidance import tiny_joint_model
from .harness import as_tensor, exercise, expect_close, expect_unchanged, fail

__all__ = ["invert", "counterfactual_loop", "counterfactual_scores"]


def _images(n: int, seed: int) -> torch.Tensor:
    """n images in jdm's range [-1, 1], 1×8×8."""
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@exercise("Exercise 7.1 — DDIM inversion")
def invert(my_invert) -> int:
    """``my_invert(eps_fn, schedule, x, t_star, steps) -> x_{t*}`` against
    ``jdm.counterfactual.ddim_invert(model, x, t_star, steps=steps)`` on a tiny model."""
    model = tiny_joint_model()
    T = model.schedule.num_steps
    cases = [(4, 60, 5), (2, T - 1, 8), (1, 30, 4), (3, 1, 2), (2, 40, 1)]   # (n, t*, steps)
    with torch.no_grad():
        for k, (n, t_star, steps) in enumerate(cases):
            x = _images(n, seed=k)
            before = x.clone()
            got = my_invert(model.unet, model.schedule, x, t_star, steps)
            expect_unchanged(before, x, "x")
            want = ddim_invert(model, x, t_star, steps=steps)
            visited = model.schedule.timesteps(steps, start=t_star)[::-1]
            expect_close(got, want, f"x_t* for a batch of {n}, t*={t_star}, steps={steps} "
                         f"(visiting {visited})", rtol=1e-4, atol=1e-5)
    return len(cases)


@exercise("Exercise 7.2 — the counterfactual loop")
def counterfactual_loop(my_counterfactual) -> int:
    """``my_counterfactual(eps_fn, schedule, x, t_star, steps, eta, generator) -> x_cf`` against
    ``jdm.counterfactual(model, x, target, CounterfactualSettings(start="noise", …))`` with the
    same generator seed."""
    model = tiny_joint_model()
    T = model.schedule.num_steps
    cases = [  # (n, t*, steps, η, guidance scale)
        (3, 60, 4, 1.0, 30.0),
        (3, 60, 4, 0.0, 30.0),
        (1, T - 1, 5, 0.5, 10.0),     # a batch of one, from the last step
        (2, 1, 2, 1.0, 30.0),         # t* = 1: two steps, 1 → 0 → clean
        (2, 45, 1, 1.0, 0.0),         # one jump from t* to the clean image, unguided
    ]
    for k, (n, t_star, steps, eta, scale) in enumerate(cases):
        x = _images(n, seed=10 + k)
        target = torch.arange(n) * 3 % model.num_classes
        guidance = Guidance("classifier", scale=scale, eta=eta)
        eps_fn = guided_eps(model, target, n, guidance)
        before = x.clone()
        got = my_counterfactual(eps_fn, model.schedule, x, t_star, steps, eta,
                                torch.Generator().manual_seed(k))
        expect_unchanged(before, x, "x")
        settings = CounterfactualSettings(t_star=t_star, start="noise", min_change=0.0, steps=steps)
        want = counterfactual(model, x, target, settings, guidance,
                              generator=torch.Generator().manual_seed(k), progress=False).images
        visited = model.schedule.timesteps(steps, start=t_star)
        expect_close(got, want, f"x_cf for a batch of {n}, t*={t_star}, steps={steps} (visiting "
                     f"{visited}, then the clean image), η={eta:g}, guidance scale {scale:g}",
                     rtol=1e-4, atol=1e-5)
    return len(cases)


@exercise("Exercise 7.3 — flip rate and closeness")
def counterfactual_scores(my_counterfactual_scores) -> int:
    """``my_counterfactual_scores(judge_logits, labels, targets, x, x_cf) -> (flip_rate, kept_rate,
    mean_abs_change)`` against ``jdm.metrics.class_agreement`` and ``image_distances``."""
    g = torch.Generator().manual_seed(0)
    cases = []
    # 8 images, 4 classes: some flipped to the target, some kept, some gone to a third class
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    targets = torch.tensor([1, 2, 0, 3, 3, 0, 1, 2])
    verdict = torch.tensor([1, 3, 1, 3, 2, 1, 1, 0])   # flipped: 0, 3, 6; kept: 2, 4; other: 1, 5, 7
    logits = torch.randn(8, 4, generator=g)
    logits[torch.arange(8), verdict] = logits.max(1).values + 0.5 + torch.rand(8, generator=g)
    cases.append((logits, labels, targets, _images(8, 1), _images(8, 2)))
    # a batch of one, flipped, whose counterfactual changed a few pixels a lot and the rest not at all
    x = _images(1, 3)
    x_cf = x.clone()
    x_cf[0, 0, :2, :3] = -x_cf[0, 0, :2, :3]
    cases.append((torch.tensor([[0.1, 2.0, -1.0]]), torch.tensor([2]), torch.tensor([1]), x, x_cf))
    # three-channel images, negative logits, nothing flipped
    logits = -torch.rand(5, 10, generator=g) * 4
    cases.append((logits, torch.arange(5), torch.arange(5) + 5, _images(15, 4).reshape(5, 3, 8, 8),
                  _images(15, 5).reshape(5, 3, 8, 8)))

    for k, (logits, labels, targets, x, x_cf) in enumerate(cases):
        copies = [v.clone() for v in (logits, labels, targets, x, x_cf)]
        got = my_counterfactual_scores(logits, labels, targets, x, x_cf)
        for name, a, b in zip(("judge_logits", "labels", "targets", "x", "x_cf"), copies,
                              (logits, labels, targets, x, x_cf)):
            expect_unchanged(a, b, name)
        if not (isinstance(got, tuple) and len(got) == 3):
            fail(f"should return a tuple (flip_rate, kept_rate, mean_abs_change), got "
                 f"{type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, tuple) else ""))
        pred = logits.argmax(1)
        wants = (class_agreement(pred, targets), class_agreement(pred, labels),
                 image_distances(x, x_cf)["l1"])
        what = f"for batch {k + 1} ({len(labels)} image{'s' if len(labels) > 1 else ''}, " \
               f"{x.shape[1]} channel{'s' if x.shape[1] > 1 else ''})"
        for name, value, want in zip(("flip_rate", "kept_rate", "mean_abs_change"), got, wants):
            value = as_tensor(value, name)
            if value.numel() != 1:
                fail(f"{name} should be one number, got a tensor of shape {tuple(value.shape)}")
            expect_close(value.detach().double().reshape(()), torch.tensor(want, dtype=torch.float64),
                         f"{name} {what}", rtol=1e-5, atol=1e-7)
    return len(cases)
