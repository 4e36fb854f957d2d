"""Checks for notebook 05 (joint training): the joint loss, where the classification gradient goes,
and the expected calibration error."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..joint import JointDiffusion
from ..metrics import expected_calibration_error
from ..schedule import NoiseSchedule
from ..unet import UNet, UNetConfig
from .harness import as_tensor, exercise, expect_close, expect_unchanged, fail

__all__ = ["joint_loss", "ce_gradient_norms", "ece"]

# A tiny seeded joint model: 8×8 images, two levels, no attention, no dropout (< 0.1 s to build).
_TINY = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), norm_groups=4, num_heads=2, dropout=0.0)


def _tiny_joint(seed: int = 0, alpha: float = 0.1) -> JointDiffusion:
    torch.manual_seed(seed)
    return JointDiffusion(UNet(_TINY), NoiseSchedule(100), alpha=alpha, head_hidden=16).eval()


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _scalar(value, what: str) -> torch.Tensor:
    """``value`` (a number or a one-element tensor) as a 0-dim tensor, or a failure saying what came back."""
    value = as_tensor(value, what)
    if value.numel() != 1:
        fail(f"{what} should be one number, got a tensor of shape {tuple(value.shape)}")
    return value.reshape(())


def _want_joint_loss(eps_hat, noise, logits, labels, alpha) -> torch.Tensor:
    """L_simple + α · CE in float64, as ``JointDiffusion.loss`` defines it."""
    mse = ((eps_hat.double() - noise.double()) ** 2).mean()
    labelled = labels >= 0
    ce = F.cross_entropy(logits.double()[labelled], labels[labelled]) if labelled.any() else 0.0
    return mse + alpha * ce


@exercise("Exercise 5.1 — the joint loss")
def joint_loss(my_joint_loss) -> int:
    """``my_joint_loss(eps_hat, noise, logits, labels, alpha) -> scalar tensor``: the mean of
    (ε̂ − ε)² over pixels and batch, plus α times the cross-entropy averaged over the labelled
    examples (label −1 = unlabelled; CE = 0 when none is labelled)."""
    g = torch.Generator().manual_seed(0)
    cases = [  # (what, labels, alpha)
        ("all images labelled", torch.tensor([3, 0, 9, 1, 1, 7]), 0.1),
        ("some images unlabelled (−1)", torch.tensor([2, -1, 5, -1, -1, 8]), 1.0),
        ("no image labelled", torch.tensor([-1, -1, -1, -1]), 0.5),
        ("a batch of one", torch.tensor([4]), 2.0),
        ("α = 0", torch.tensor([1, 2, 3]), 0.0),
    ]
    for what, labels, alpha in cases:
        n = len(labels)
        eps_hat = torch.randn(n, 1, 6, 6, generator=g)
        noise = torch.randn(n, 1, 6, 6, generator=g)
        logits = torch.randn(n, 10, generator=g) * 2
        before = labels.clone()
        got = my_joint_loss(eps_hat, noise, logits, labels, alpha)
        want = _want_joint_loss(eps_hat, noise, logits, labels, alpha)
        expect_close(_scalar(got, f"the loss with {what}"), want, f"the loss with {what} (α = {alpha:g})", rtol=1e-5, atol=1e-7)
        expect_unchanged(before, labels, "labels")

    # the loss must stay differentiable: the trainer calls .backward() on it
    eps_hat = torch.randn(4, 1, 6, 6, generator=g, requires_grad=True)
    logits = torch.randn(4, 10, generator=g, requires_grad=True)
    got = my_joint_loss(eps_hat, torch.randn(4, 1, 6, 6, generator=g), logits,
                        torch.tensor([0, -1, 5, 5]), 0.3)
    if not isinstance(got, torch.Tensor) or got.grad_fn is None:
        fail("the loss should be a tensor that keeps the autograd graph (no .item(), float() or "
             "detach()): the trainer back-propagates through it")
    _scalar(got, "the loss").backward()
    if logits.grad is None or logits.grad[1].abs().sum() != 0 or logits.grad[0].abs().sum() == 0:
        fail("the gradient with respect to the logits should be non-zero for labelled images and "
             "exactly zero for the unlabelled one")

    # the same number as jdm's JointDiffusion.loss, on its own random draw of t and ε
    model = _tiny_joint(alpha=0.7)
    x0, y = _images(5, seed=1), torch.tensor([1, -1, 4, 4, 0])
    torch.manual_seed(3)
    want = model.loss(x0, y)["loss"]
    torch.manual_seed(3)                       # replay the draws loss() makes: t, then ε
    with torch.no_grad():
        t = model.schedule.sample_timesteps(5)
        noise = torch.randn_like(x0)
        eps_hat = model.unet(model.schedule.q_sample(x0, t, noise), t)
        logits = model.classify(x0)
    got = my_joint_loss(eps_hat, noise, logits, y, model.alpha)
    expect_close(_scalar(got, "the loss of a tiny JointDiffusion"), want.detach(),
                 "the loss of a tiny JointDiffusion (compared with JointDiffusion.loss)",
                 rtol=1e-5, atol=1e-7)
    return len(cases) + 2


def _norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None))


def _groups(model: JointDiffusion) -> dict[str, list]:
    u = model.unet
    return {"encoder": [p for m in (u.time_embed, u.stem, u.down, u.middle) for p in m.parameters()],
            "decoder": [p for m in (u.up, u.out) for p in m.parameters()],
            "head": list(model.head.parameters())}


def _reference_norms(model: JointDiffusion, x0, y) -> dict[str, float]:
    model.zero_grad()
    F.cross_entropy(model.classify(x0), y).backward()
    norms = {name: _norm(params) for name, params in _groups(model).items()}
    model.zero_grad()
    return norms


@exercise("Exercise 5.2 — where the classification gradient goes")
def ce_gradient_norms(my_ce_gradient_norms) -> int:
    """``my_ce_gradient_norms(model, x0, y) -> {"encoder": float, "decoder": float, "head": float}``:
    zero the gradients, back-propagate the CE of the head on the clean images (t = 0), return the
    L2 norm of each parameter group's gradient (a missing gradient counts as 0)."""
    cases = [(0, 6), (1, 1)]          # (seed, batch size): a batch of six, then a batch of one
    for seed, n in cases:
        model = _tiny_joint(seed)
        x0 = _images(n, seed=10 + seed)
        y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(seed))
        want = _reference_norms(model, x0, y)
        for attempt in ("first", "second"):    # twice on the same model: gradients must not pile up
            got = my_ce_gradient_norms(model, x0, y)
            if not isinstance(got, dict) or set(got) != {"encoder", "decoder", "head"}:
                fail("should return a dict with the keys 'encoder', 'decoder' and 'head', got "
                     f"{sorted(got) if isinstance(got, dict) else type(got).__name__}")
            got = {k: float(as_tensor(v, f"the {k} norm")) for k, v in got.items()}
            where = f"(batch of {n}, {attempt} call on the same model)"
            if got["decoder"] != 0:
                fail(f"the decoder's gradient norm should be exactly 0, got {got['decoder']:.3g} {where}: "
                     "the classification loss never runs the decoder")
            for part in ("encoder", "head"):
                if got[part] == 0:
                    fail(f"the {part} should receive the classification gradient (norm "
                         f"{want[part]:.4g}), got 0 {where}")
                if not math.isclose(got[part], want[part], rel_tol=1e-3):
                    fail(f"the {part}'s gradient norm should be {want[part]:.6g}, got "
                         f"{got[part]:.6g} {where}")
    return len(cases)


@exercise("Exercise 5.3 — expected calibration error")
def ece(my_ece) -> int:
    """``my_ece(logits, labels, n_bins=10) -> float``: Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)| over
    equal-width confidence bins (b/n_bins, (b+1)/n_bins] (the first also takes 0)."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for n, classes, scale, n_bins in ((500, 10, 3.0, 10), (300, 3, 1.0, 15), (200, 10, 6.0, 5),
                                      (1, 10, 2.0, 10), (50, 2, 1.0, 1)):
        logits = torch.randn(n, classes, generator=g) * scale
        labels = torch.randint(0, classes, (n,), generator=g)
        agree = torch.rand(n, generator=g) < 0.6      # make most predictions right, as a model's are
        labels[agree] = logits[agree].argmax(1)
        cases.append((f"{n} example{'s' if n > 1 else ''}, {classes} classes, {n_bins} bins",
                      logits, labels, n_bins))
    # confidences exactly on bin edges: 0.5 (two equal logits) and 1.0 (a saturated softmax)
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.2, 0.0], [0.0, 0.3],
                           [40.0, 0.0], [0.0, 40.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 0, 0])
    cases.append(("confidences 0.5 and 1.0 (on bin edges)", logits, labels, 10))
    for what, logits, labels, n_bins in cases:
        before = logits.clone()
        got = my_ece(logits, labels, n_bins=n_bins)
        want = torch.tensor(expected_calibration_error(logits, labels, n_bins=n_bins), dtype=torch.float64)
        expect_close(_scalar(got, f"the ECE for {what}"), want, f"the ECE for {what}", rtol=1e-4, atol=1e-6)
        expect_unchanged(before, logits, "logits")
    return len(cases)
