"""Checks for notebook 08 (when labels are scarce): a label budget as a share, the semi-supervised
loss of a joint model with unlabelled images (label −1), and the stream of labelled batches."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import label_subset
from ..joint import JointDiffusion
from ..schedule import NoiseSchedule
from ..unet import UNet, UNetConfig
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
# A tiny joint model: 8×8 images, two levels, no attention, no dropout, α = 0.7 (< 0.1 s to build).
_TINY = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), norm_groups=4, num_heads=2, dropout=0.0)


def _tiny_joint() -> JointDiffusion:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return JointDiffusion(UNet(_TINY), NoiseSchedule(100), alpha=0.7, head_hidden=16,
                              head_dropout=0.0).eval()


def _replay(model: JointDiffusion, x0: Tensor, y: Tensor, seed: int):
    """``JointDiffusion.loss(x0, y)["loss"]`` under ``seed`` and the t and ε it drew (t first, then ε)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t = model.schedule.sample_timesteps(len(x0))
        noise = torch.randn_like(x0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        want = model.loss(x0, y)["loss"].detach()
    return want, t, noise


def _grads(model: JointDiffusion) -> dict[str, Tensor]:
    return {name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for name, p in model.named_parameters()}


def _diagnose(model: JointDiffusion, x0, y, t, noise, value: float) -> str:
    """Name the usual mistake whose value ``value`` is, or ""."""
    labelled = y >= 0
    n, n_lab = len(y), int(labelled.sum())
    with torch.no_grad():
        xt = model.schedule.q_sample(x0, t, noise)
        eps_hat = model.unet(xt, t)
        mse_all = float(F.mse_loss(eps_hat, noise))
        if not n_lab:
            return ""
        ce = float(F.cross_entropy(model.classify(x0[labelled]), y[labelled]))
        ce_noisy = float(F.cross_entropy(model.classify(xt[labelled], t[labelled]), y[labelled]))
        mse_lab = float(F.mse_loss(eps_hat[labelled], noise[labelled]))
    a = model.alpha
    known = [
        (mse_all + a * ce * n_lab / n, f"that is the cross-entropy summed over the labelled images and "
         f"divided by all {n} images; jdm averages it over the {n_lab} labelled images only"),
        (mse_lab + a * ce, "that is the diffusion MSE of the labelled images only: every image, "
         "labelled or not, counts in it"),
        (mse_all + a * ce_noisy, "that is the cross-entropy of the head on the noisy x_t; the "
         "classification term is computed on the clean images x0 (at t = 0)"),
        (mse_all + ce, "that is the loss without α: weigh the cross-entropy by model.alpha"),
    ]
    for candidate, says in known:
        if abs(value - candidate) <= 1e-5 * max(1.0, abs(candidate)):
            return f" ({says})"
    return ""


@exercise("Exercise 8.2 — the semi-supervised loss of a joint model")
def semi_supervised_loss(my_semi_supervised_loss) -> int:
    """``my_semi_supervised_loss(model, x0, y, t, noise) -> L`` (a scalar tensor): the loss
    ``JointDiffusion.loss(x0, y)`` computes when it draws ``t`` and ``noise`` — the diffusion MSE
    over all N images plus ``model.alpha`` times the cross-entropy of the head on the clean labelled
    images, averaged over them (0 when none is labelled)."""
    model = _tiny_joint()
    cases = [  # labels (−1 = unlabelled)
        [-1, -1, -1, -1, -1, -1, 3, 0, 7, 1],   # a batch as in section 3: hidden labels, then labelled ones
        [-1, -1, -1, -1, -1, -1],               # the hidden part alone: no label at all
        [2, -1, 5, -1, -1, 9],
        [4, 4, 1],                              # every image labelled
        [-1],                                   # a batch of one, unlabelled
        [6],                                    # a batch of one, labelled
    ]
    for k, labels in enumerate(cases):
        y = torch.tensor(labels, dtype=torch.long)
        x0 = torch.rand(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(k)) * 2 - 1
        want, t, noise = _replay(model, x0, y, seed=100 + k)
        before = [v.clone() for v in (x0, y, t, noise)]
        what = f"labels {labels}"
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng():
            got = _call(my_semi_supervised_loss, what, model, x0, y, t, noise)
        for name, old, new in zip(("x0", "y", "t", "noise"), before, (x0, y, t, noise)):
            expect_unchanged(old, new, name)
        if not isinstance(got, Tensor):
            fail(f"{what}: should return the loss as a tensor (the trainer back-propagates through it), "
                 f"got {type(got).__name__}")
        if got.numel() != 1:
            fail(f"{what}: should return one scalar, got shape {tuple(got.shape)}")
        value = float(got.detach().reshape(()))
        if value != value or abs(value) == float("inf"):
            n_lab = int((y >= 0).sum())
            fail(f"{what}: the loss is {value} on a batch with {n_lab} labelled images"
                 + ("; with no labelled image the cross-entropy term should be 0" if n_lab == 0 else ""))
        if abs(value - float(want)) > 1e-6 + 1e-4 * abs(float(want)):
            fail(f"{what}: the loss should be {float(want):.6g} (JointDiffusion.loss with the same t and "
                 f"noise), got {value:.6g}{_diagnose(model, x0, y, t, noise, value)}")
        if got.grad_fn is None:
            fail(f"{what}: the loss has no gradient (was it detached, or built from .item() values?)")
        got.reshape(()).backward()
        mine = _grads(model)
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng():
            torch.manual_seed(100 + k)
            model.loss(x0, y)["loss"].backward()
        reference = _grads(model)
        model.zero_grad(set_to_none=True)
        head = [name for name in reference if name.startswith("head.")]
        if any(reference[name].abs().sum() > 0 for name in head) and \
                all(mine[name].abs().sum() == 0 for name in head):
            fail(f"{what}: no gradient reaches the classifier head (is the cross-entropy detached?)")
        for name in reference:
            expect_close(mine[name], reference[name], f"{what}: the gradient of {name}", rtol=1e-3,
                         atol=1e-6)
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
