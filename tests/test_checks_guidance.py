"""jdm.checks for notebook 06: each passes on a right answer, fails on the stub and on wrong ones."""
import pytest
import torch

import jdm.checks

from check_cases import assert_check_behaves
from jdm.unet import Features


# ----------------------------------------------------------------------------- 6.1 the paper's step
def paper_eps_with(sign=1.0, rule="total", only_bottleneck=False, reduce="sum", normalise=True,
                   decode_moved=True):
    """The authors' step (+γ·∇CE with each map's total derivative), or one of the mistakes a
    student makes writing it, written the way a student would (retain_grad + backward)."""
    def make(model, target, scale):
        def eps_fn(x_t, t):
            with torch.enable_grad():
                feats = model.unet.encode(x_t, t)
                maps = [feats.bottleneck, *feats.skips]
                if rule == "direct":
                    maps = [m.detach().requires_grad_(True) for m in maps]
                moving = maps[:1] if only_bottleneck else maps
                for m in moving:
                    m.retain_grad()
                logits = model.head(Features(maps[0], maps[1:]))
                scores = logits.log_softmax(1) if normalise else logits
                picked = -scores[torch.arange(len(target)), target]     # the cross-entropy
                (picked.sum() if reduce == "sum" else picked.mean()).backward()
            moved = [m + sign * scale * m.grad if i < len(moving) else m for i, m in enumerate(maps)]
            model.zero_grad()
            with torch.no_grad():
                out = moved if decode_moved else maps
                return model.unet.decode(Features(out[0], out[1:]), t)
        return eps_fn
    return make


# ----------------------------------------------------------------------------- 6.2 the ε shift
def guided_eps(eps, grad, t, schedule, scale):
    ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
    return eps - scale * (1 - ab).sqrt() * grad


def guided_eps_plus(eps, grad, t, schedule, scale):           # + : pushes away from the class
    ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
    return eps + scale * (1 - ab).sqrt() * grad


def guided_eps_no_sqrt(eps, grad, t, schedule, scale):        # (1 − ᾱ_t) instead of √(1 − ᾱ_t)
    ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
    return eps - scale * (1 - ab) * grad


def guided_eps_alpha_not_bar(eps, grad, t, schedule, scale):  # the one-step α_t instead of ᾱ_t
    a = schedule.alphas[t].reshape(-1, 1, 1, 1)
    return eps - scale * (1 - a).sqrt() * grad


def guided_eps_divides(eps, grad, t, schedule, scale):        # score form confused: ÷ σ_t
    ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
    return eps - scale * grad / (1 - ab).sqrt()


def guided_eps_first_t(eps, grad, t, schedule, scale):        # one ᾱ for the whole batch
    return eps - scale * (1 - schedule.alpha_bars[t[0]]).sqrt() * grad


# ----------------------------------------------------------------------------- 6.3 the Fréchet distance
def _sqrtm(m):
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet(a, b, correction=1):
    a, b = a.double(), b.double()
    ca, cb = torch.cov(a.T, correction=correction), torch.cov(b.T, correction=correction)
    root = _sqrtm(ca)
    cross = torch.linalg.eigvalsh(root @ cb @ root).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + ca.trace() + cb.trace() - 2 * cross)


def frechet_biased(a, b):                    # covariance divided by N instead of N − 1
    return frechet(a, b, correction=0)


def frechet_elementwise_sqrt(a, b):          # tr of the elementwise √ of Σ_a Σ_b, not the matrix √
    a, b = a.double(), b.double()
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    cross = (ca @ cb).diagonal().clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + ca.trace() + cb.trace() - 2 * cross)


def frechet_means_only(a, b):                # the trace term forgotten
    return float((a.double().mean(0) - b.double().mean(0)).square().sum())


def frechet_mean_not_squared(a, b):          # |μ_a − μ_b| instead of |μ_a − μ_b|²
    a, b = a.double(), b.double()
    rest = frechet(a, b) - float((a.mean(0) - b.mean(0)).square().sum())
    return float((a.mean(0) - b.mean(0)).norm()) + rest


CASES = {
    "paper_eps": (paper_eps_with(), [paper_eps_with(sign=-1.0), paper_eps_with(rule="direct"),
                                     paper_eps_with(rule="direct", sign=-1.0),
                                     paper_eps_with(only_bottleneck=True),
                                     paper_eps_with(reduce="mean"), paper_eps_with(normalise=False),
                                     paper_eps_with(decode_moved=False)]),
    "guidance_shift": (guided_eps, [guided_eps_plus, guided_eps_no_sqrt, guided_eps_alpha_not_bar,
                                    guided_eps_divides, guided_eps_first_t]),
    "frechet": (frechet, [frechet_biased, frechet_elementwise_sqrt, frechet_means_only,
                          frechet_mean_not_squared]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


@pytest.mark.parametrize("wrong, named", [
    (dict(sign=-1.0), "steps up log p"), (dict(rule="direct"), "direct rule"),
    (dict(rule="direct", sign=-1.0), "both the rule and the sign"),
    (dict(normalise=False), "raw logits"), (dict(reduce="mean"), "averages over the batch"),
    (dict(only_bottleneck=True), "only the bottleneck"), (dict(decode_moved=False), "not the moved ones"),
])
def test_paper_eps_names_each_mistake(wrong, named):
    with pytest.raises(AssertionError, match=named):
        jdm.checks.paper_eps(paper_eps_with(**wrong))


def test_frechet_calling_the_reference_fails_and_says_so():
    """Notebook 06 imports frechet_distance itself: calling it is no answer (issue 29)."""
    import jdm.checks
    from jdm.metrics import frechet_distance
    with pytest.raises(AssertionError, match="called jdm's .*frechet_distance.*implement it yourself"):
        jdm.checks.frechet(lambda a, b: frechet_distance(a, b))


def test_paper_eps_calling_the_reference_fails_and_says_so():
    """jdm's representation_guided_eps computes the answer the check compares with: no answer."""
    from jdm.sampling import representation_guided_eps
    with pytest.raises(AssertionError, match="called jdm's .*representation_guided_eps.*implement it yourself"):
        jdm.checks.paper_eps(lambda model, target, scale: representation_guided_eps(
            model, target, scale=scale))
