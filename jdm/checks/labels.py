"""Checks for notebook 08 (when labels are scarce): a label budget as a share, the semi-supervised
joint loss with unlabelled images (label −1), and the stream of labelled batches."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import label_subset
from .harness import exercise, expect_close, expect_unchanged, fail

__all__ = ["fraction_subset", "semi_supervised_loss", "labelled_stream"]


def _call(fn, what: str, *args):
    """The student's ``fn(*args)``; an exception other than the stub's becomes a failure that says
    on which input it happened."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001  any crash of the answer is the answer's fault
        fail(f"{what}: your function raised {type(err).__name__}: {err}")


# ----------------------------------------------------------------------------- Exercise 8.1
def _uneven_labels() -> Tensor:
    """44 labels of 5 classes with 7, 3, 12, 1 and 21 images, in a seeded random order."""
    sizes = (7, 3, 12, 1, 21)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(11))]


def _even_labels() -> Tensor:
    """4 000 labels of 10 classes, 400 each, in a seeded random order."""
    return torch.arange(10).repeat(400)[torch.randperm(4000, generator=torch.Generator().manual_seed(5))]


@exercise("Exercise 8.1 — a budget as a share")
def fraction_subset(my_fraction_subset) -> int:
    """``my_fraction_subset(labels, fraction, seed) -> (M,)`` sorted int64 indices, the same as
    ``jdm.data.label_subset(labels, fraction=fraction, seed=seed)``."""
    cases = [(_uneven_labels(), 0.1, 0), (_uneven_labels(), 0.35, 3), (_uneven_labels(), 1.0, 2),
             (_even_labels(), 0.004, 4), (_even_labels(), 0.05, 1)]
    for labels, fraction, seed in cases:
        what = f"fraction={fraction}, seed={seed} on {len(labels)} labels"
        before = labels.clone()
        got = _call(my_fraction_subset, what, labels, fraction, seed)
        expect_unchanged(before, labels, "labels")
        want = label_subset(labels, fraction=fraction, seed=seed)
        if not isinstance(got, Tensor) or got.dim() != 1:
            fail(f"{what}: should return a 1-D tensor of indices, got "
                 f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}")
        if got.is_floating_point() or got.dtype == torch.bool:
            fail(f"{what}: should return integer indices, got dtype {got.dtype}")
        got = got.long().cpu()
        if got.numel() and (got.min() < 0 or got.max() >= len(labels)):
            fail(f"{what}: indices must lie in 0..{len(labels) - 1}, got {int(got.min())}..{int(got.max())}")
        if got.unique().numel() != got.numel():
            fail(f"{what}: an index appears more than once (draw without replacement)")
        sizes = torch.bincount(labels, minlength=int(labels.max()) + 1)
        kept = torch.bincount(labels[got], minlength=len(sizes))
        for c, (n_c, k_c) in enumerate(zip(sizes.tolist(), kept.tolist())):
            expected = max(1, round(fraction * n_c))
            if k_c != expected:
                fail(f"{what}: class {c} has {n_c} images, so it should keep max(1, round({fraction} · "
                     f"{n_c})) = {expected} labels, got {k_c}")
        if not torch.equal(got, got.sort().values):
            fail(f"{what}: the indices should be sorted ascending")
        if not torch.equal(got, want):
            fail(f"{what}: the right number per class but not the images jdm.data.label_subset picks "
                 "(one torch.Generator seeded once with seed, one torch.randperm per class, classes "
                 "in ascending order, keep the first k of each)")
    return len(cases)


# ----------------------------------------------------------------------------- Exercise 8.2
def _loss_inputs(labels: list[int], seed: int, perfect: bool = False):
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    noise = torch.randn(n, 1, 4, 4, generator=g)
    eps_hat = noise.clone() if perfect else noise + 0.5 * torch.randn(n, 1, 4, 4, generator=g)
    logits = 2 * torch.randn(n, 5, generator=g)
    return eps_hat, noise, logits, torch.tensor(labels, dtype=torch.long)


def _reference_parts(eps_hat, noise, logits, labels) -> tuple[Tensor, Tensor]:
    """(diffusion MSE over every image, CE over the labelled ones or 0), in float64."""
    diffusion = F.mse_loss(eps_hat.double(), noise.double())
    labelled = labels >= 0
    if not labelled.any():
        return diffusion, torch.zeros((), dtype=torch.float64)
    return diffusion, F.cross_entropy(logits.double()[labelled], labels[labelled])


@exercise("Exercise 8.2 — the semi-supervised joint loss")
def semi_supervised_loss(my_semi_supervised_loss) -> int:
    """``my_semi_supervised_loss(eps_hat, noise, logits, labels, alpha) -> L`` (a scalar tensor):
    ``mean over all images of the MSE + alpha · mean over the labelled images (label >= 0) of the
    CE``, 0 for the CE when no image is labelled, as ``jdm.JointDiffusion.loss`` computes it."""
    cases = [  # labels, alpha, seed, perfect ε̂ (the MSE is 0, so the loss is α · CE alone)
        ([-1, 2, -1, -1, 0, 4], 0.0, 0, False),
        ([-1, 2, -1, -1, 0, 4], 1.0, 1, True),
        ([3, -1, 1, -1, -1, -1, 0, -1], 0.3, 2, False),
        ([-1, -1, -1, -1], 1.0, 3, False),
        ([0, 4, 2, 1], 0.5, 4, False),
        ([-1], 2.0, 5, False),
        ([3], 2.0, 6, False),
    ]
    for labels, alpha, seed, perfect in cases:
        eps_hat, noise, logits, y = _loss_inputs(labels, seed, perfect)
        eps_hat.requires_grad_(True)
        logits.requires_grad_(True)
        before = y.clone()
        what = f"labels {labels}, alpha={alpha}"
        got = _call(my_semi_supervised_loss, what, eps_hat, noise, logits, y, alpha)
        expect_unchanged(before, y, "labels")
        if not isinstance(got, Tensor):
            fail(f"{what}: should return the loss as a tensor (gradients flow through it), got "
                 f"{type(got).__name__}")
        if got.numel() != 1:
            fail(f"{what}: should return one scalar, got shape {tuple(got.shape)}")
        if not torch.isfinite(got.detach()).all():
            n_lab = sum(v >= 0 for v in labels)
            fail(f"{what}: the loss is {float(got.detach().reshape(-1)[0])} on a batch with {n_lab} labelled images"
                 + ("; with no labelled image the cross-entropy term should be 0" if n_lab == 0 else ""))
        diffusion, ce = _reference_parts(eps_hat.detach(), noise, logits.detach(), y)
        want = diffusion + alpha * ce
        labelled = y >= 0
        value = float(got.detach().reshape(()))
        if abs(value - float(want)) > 1e-6 + 1e-4 * abs(float(want)):
            hint = ""
            n, n_lab = len(labels), int(labelled.sum())
            if alpha == 0:
                hint = (f" (with alpha = 0 it is the diffusion MSE alone, averaged over every pixel of "
                        f"all {n} images, labelled or not)")
                only_labelled = (F.mse_loss(eps_hat.detach()[labelled].double(), noise[labelled].double())
                                 if n_lab else None)
                if only_labelled is not None and abs(value - float(only_labelled)) < 1e-5:
                    hint = " (that is the MSE of the labelled images only: every image counts in it)"
            elif perfect:
                hint = (f" (here ε̂ = ε, so the loss is alpha · the cross-entropy averaged over the "
                        f"{n_lab} labelled images)")
                if abs(value - alpha * float(ce) * n_lab / n) < 1e-5:
                    hint = (f" (that is the cross-entropy summed over the labelled images and divided by "
                            f"all {n} images; jdm averages it over the {n_lab} labelled images only)")
            elif n_lab == 0:
                hint = " (with no labelled image the loss is the diffusion MSE alone)"
            fail(f"{what}: the loss should be {float(want):.6g}, got {value:.6g}{hint}")
        if got.grad_fn is None:
            fail(f"{what}: the loss has no gradient (was it detached, or built from .item() values?)")
        got.reshape(()).backward()
        ref_eps = eps_hat.detach().double().requires_grad_(True)
        ref_logits = logits.detach().double().requires_grad_(True)
        ref_diffusion, ref_ce = _reference_parts(ref_eps, noise, ref_logits, y)
        (ref_diffusion + alpha * ref_ce).backward()
        if eps_hat.grad is None:
            fail(f"{what}: no gradient reached eps_hat (the diffusion term must stay differentiable)")
        expect_close(eps_hat.grad, ref_eps.grad, f"{what}: the gradient with respect to eps_hat",
                     rtol=1e-3, atol=1e-6)
        if logits.grad is None:
            if labelled.any() and alpha != 0:
                fail(f"{what}: no gradient reached the logits (the cross-entropy term must stay "
                     "differentiable)")
            continue
        if (logits.grad[~labelled] != 0).any():
            fail(f"{what}: the logits of unlabelled images (label −1) must not get a gradient")
        want_grad = ref_logits.grad if ref_logits.grad is not None else torch.zeros_like(ref_logits)
        expect_close(logits.grad, want_grad, f"{what}: the gradient with respect to logits",
                     rtol=1e-3, atol=1e-6)
    return len(cases)


# ----------------------------------------------------------------------------- Exercise 8.3
def _reference_stream(labelled: Tensor, size: int, seed: int) -> Callable[[int], Tensor]:
    """``step -> jdm.Trainer.labelled_batch_indices(step)`` of a trainer whose labelled images are
    ``labelled``, with ``labelled_batch_size=size`` and ``seed``: jdm's own method, run on the few
    attributes it reads (building a real Trainer, with its model, optimiser and EMA, costs seconds
    the first time; tests/test_checks_labels.py checks that the two agree)."""
    from types import SimpleNamespace

    from ..train import Trainer

    state = SimpleNamespace(_labelled=labelled.clone(), _labelled_perms={},
                            config=SimpleNamespace(labelled_batch_size=size, seed=seed))
    return lambda step: Trainer.labelled_batch_indices(state, step)


@exercise("Exercise 8.3 — the stream of labelled batches")
def labelled_stream(my_labelled_batch) -> int:
    """``my_labelled_batch(labelled, step, size, seed) -> (size,)`` dataset indices, the same as
    ``jdm.Trainer.labelled_batch_indices(step)`` of a trainer whose labelled images are
    ``labelled`` (sorted dataset indices) with ``labelled_batch_size=size`` and ``seed``."""
    g = torch.Generator().manual_seed(8)
    ten = torch.randperm(60, generator=g)[:10].sort().values + 100   # 10 labelled images among 160
    five = torch.tensor([3, 7, 9, 20, 44])
    cases = [(ten, 4, 0, range(6)),            # a batch straddles two passes at step 2
             (ten, 4, 1, (0, 2, 5, 999)),
             (ten, 10, 2, (0, 1, 7)),          # one pass per step
             (five, 12, 3, (0, 1, 2)),         # a step spans three passes
             (ten[:1], 3, 0, (0, 4))]          # a single labelled image
    count = 0
    for labelled, size, seed, steps in cases:
        reference = _reference_stream(labelled, size, seed)
        for step in steps:
            what = f"step {step} (size={size}, seed={seed}, {len(labelled)} labelled images)"
            before = labelled.clone()
            got = _call(my_labelled_batch, what, labelled, step, size, seed)
            expect_unchanged(before, labelled, "labelled")
            want = reference(step)
            if not isinstance(got, Tensor) or got.dim() != 1 or got.is_floating_point():
                fail(f"{what}: should return a 1-D tensor of integer indices, got "
                     f"{tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__}")
            if got.numel() != size:
                fail(f"{what}: should return {size} indices, got {got.numel()}")
            strangers = sorted(set(got.tolist()) - set(labelled.tolist()))
            if strangers:
                fail(f"{what}: returned {strangers[:3]}, which are not labelled images: return dataset "
                     "indices, i.e. entries of labelled")
            if not torch.equal(got.long().cpu(), want):
                fail(f"{what}: should be {want.tolist()}, got {got.tolist()}")
            count += 1
    return count
