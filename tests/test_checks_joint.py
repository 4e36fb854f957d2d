"""jdm.checks for notebook 05: each passes on a right answer, fails on the stub and on wrong ones."""
import math

import pytest
import torch
import torch.nn.functional as F

from check_cases import assert_check_behaves
from jdm.unet import Features


# ----------------------------------------------------------------------------- 5.1 the joint loss
def joint_loss(eps_hat, noise, logits, labels, alpha):
    labelled = labels >= 0
    ce = F.cross_entropy(logits[labelled], labels[labelled]) if labelled.any() else logits.sum() * 0
    return F.mse_loss(eps_hat, noise) + alpha * ce


def joint_loss_summed_pixels(eps_hat, noise, logits, labels, alpha):   # Σ over pixels, mean over batch
    labelled = labels >= 0
    ce = F.cross_entropy(logits[labelled], labels[labelled]) if labelled.any() else 0.0
    return ((eps_hat - noise) ** 2).sum(dim=(1, 2, 3)).mean() + alpha * ce


def joint_loss_alpha_on_diffusion(eps_hat, noise, logits, labels, alpha):
    labelled = labels >= 0
    ce = F.cross_entropy(logits[labelled], labels[labelled]) if labelled.any() else 0.0
    return alpha * F.mse_loss(eps_hat, noise) + ce


def joint_loss_unlabelled_as_class_0(eps_hat, noise, logits, labels, alpha):
    return F.mse_loss(eps_hat, noise) + alpha * F.cross_entropy(logits, labels.clamp(min=0))


def joint_loss_ce_over_whole_batch(eps_hat, noise, logits, labels, alpha):   # Σ CE / N, not / N_labelled
    ce = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / len(labels)
    return F.mse_loss(eps_hat, noise) + alpha * ce


def joint_loss_ignore_index_unguarded(eps_hat, noise, logits, labels, alpha):   # NaN when none labelled
    return F.mse_loss(eps_hat, noise) + alpha * F.cross_entropy(logits, labels, ignore_index=-1)


def joint_loss_as_float(eps_hat, noise, logits, labels, alpha):
    return joint_loss(eps_hat, noise, logits, labels, alpha).item()


# ----------------------------------------------------------------------------- 5.2 gradient routing
def _norm(modules):
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    return math.sqrt(sum(g.square().sum().item() for g in grads))


def _norms(model):
    u = model.unet
    return {"encoder": _norm([u.time_embed, u.stem, u.down, u.middle]), "decoder": _norm([u.up, u.out]),
            "head": _norm([model.head])}


def ce_gradient_norms(model, x0, y):
    model.zero_grad()
    F.cross_entropy(model.classify(x0), y).backward()
    return _norms(model)


def ce_gradient_norms_via_loss(model, x0, y):   # another right answer: jdm's own classification part
    model.zero_grad()
    model.loss(x0, y)["classification"].backward()
    return _norms(model)


def ce_gradient_norms_total_loss(model, x0, y):   # the whole joint loss: the decoder gets L_simple's gradient
    model.zero_grad()
    model.loss(x0, y)["loss"].backward()
    return _norms(model)


def ce_gradient_norms_detached(model, x0, y):     # features detached: the encoder learns nothing
    model.zero_grad()
    bottleneck, skips = model.unet.encode(x0, torch.zeros(len(x0), dtype=torch.long))
    feats = Features(bottleneck.detach(), [s.detach() for s in skips])
    F.cross_entropy(model.head(feats), y).backward()
    return _norms(model)


def ce_gradient_norms_noisy(model, x0, y):        # classifies x_t at a random t instead of x_0
    model.zero_grad()
    t = torch.full((len(x0),), 50)
    x_t = model.schedule.q_sample(x0, t, torch.randn_like(x0))
    F.cross_entropy(model.classify(x_t, t), y).backward()
    return _norms(model)


def ce_gradient_norms_summed(model, x0, y):
    model.zero_grad()
    F.cross_entropy(model.classify(x0), y, reduction="sum").backward()
    return _norms(model)


def ce_gradient_norms_no_zero_grad(model, x0, y):   # gradients pile up over calls
    F.cross_entropy(model.classify(x0), y).backward()
    return _norms(model)


# ----------------------------------------------------------------------------- 5.3 ECE
def _bins(logits, labels, n_bins):
    confidence, prediction = logits.softmax(1).max(1)
    correct = (prediction == labels).float()
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    return confidence, correct, bins


def ece(logits, labels, n_bins=10):
    confidence, correct, bins = _bins(logits, labels, n_bins)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return float(total)


def ece_unweighted(logits, labels, n_bins=10):   # plain average over the non-empty bins
    confidence, correct, bins = _bins(logits, labels, n_bins)
    gaps = [(correct[bins == b].mean() - confidence[bins == b].mean()).abs()
            for b in range(n_bins) if (bins == b).any()]
    return float(sum(gaps) / len(gaps))


def ece_no_abs(logits, labels, n_bins=10):       # over- and under-confidence cancel
    confidence, correct, bins = _bins(logits, labels, n_bins)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean())
    return float(abs(total))


def ece_floor_bins(logits, labels, n_bins=10):   # bins [b/n, (b+1)/n): edges land in the next bin
    confidence, correct, _ = _bins(logits, labels, n_bins)
    bins = (confidence * n_bins).floor().long().clamp(0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return float(total)


def ece_true_class_probability(logits, labels, n_bins=10):   # p(y) as the confidence, not max p
    probs = logits.softmax(1)
    confidence = probs.gather(1, labels[:, None])[:, 0]
    correct = (probs.argmax(1) == labels).float()
    bins = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.float().mean() * (correct[inside].mean() - confidence[inside].mean()).abs()
    return float(total)


CASES = {
    "joint_loss": (joint_loss, [joint_loss_summed_pixels, joint_loss_alpha_on_diffusion,
                                joint_loss_unlabelled_as_class_0, joint_loss_ce_over_whole_batch,
                                joint_loss_ignore_index_unguarded, joint_loss_as_float]),
    "ce_gradient_norms": (ce_gradient_norms, [ce_gradient_norms_total_loss, ce_gradient_norms_detached,
                                              ce_gradient_norms_noisy, ce_gradient_norms_summed,
                                              ce_gradient_norms_no_zero_grad]),
    "ece": (ece, [ece_unweighted, ece_no_abs, ece_floor_bins, ece_true_class_probability]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


def test_the_gradient_check_accepts_jdms_own_classification_loss():
    import jdm.checks
    jdm.checks.ce_gradient_norms(ce_gradient_norms_via_loss)
