"""jdm.checks for notebook 07: each passes on a right answer, fails on the stub and on wrong ones."""
import pytest
import torch

from check_cases import assert_check_behaves


# ----------------------------------------------------------------------------- 7.1 DDIM inversion
def invert_with(eps_at="current", update_x0=True, bar=True):
    """DDIM inversion, or one of the mistakes a student makes writing it."""
    def invert(eps_fn, schedule, x, t_star, steps):
        ab = schedule.alpha_bars if bar else schedule.alphas
        ascending = schedule.timesteps(steps, start=t_star)[::-1]
        x_s, x0, previous = x, x, None
        with torch.no_grad():
            for s in ascending:
                at = s if previous is None or eps_at == "next" else previous
                eps = eps_fn(x_s, torch.full((len(x),), at))
                if previous is not None and update_x0:
                    x0 = (x_s - (1 - ab[previous]).sqrt() * eps) / ab[previous].sqrt()
                x_s = ab[s].sqrt() * x0 + (1 - ab[s]).sqrt() * eps
                previous = s
        return x_s
    return invert


# ----------------------------------------------------------------------------- 7.2 the loop
def counterfactual_with(noise=True, use_eta=True, final_step=True, t_prev="next", own_generator=False):
    """The counterfactual loop after fresh noise, or one of the mistakes a student makes writing it."""
    def run(eps_fn, schedule, x, t_star, steps, eta, generator):
        n = len(x)
        if own_generator:
            generator = torch.Generator().manual_seed(1234)
        x_t = schedule.q_sample(x, torch.full((n,), t_star), generator=generator) if noise else x
        ts = schedule.timesteps(steps, start=t_star)
        last = len(ts) if final_step else len(ts) - 1
        for i in range(last):
            t = torch.full((n,), ts[i])
            if t_prev == "next":
                prev = ts[i + 1] if i + 1 < len(ts) else -1
            else:  # one step down each time, as ancestral DDPM
                prev = ts[i] - 1
            x_t = schedule.ddim_step(x_t, t, torch.full((n,), prev), eps_fn(x_t, t),
                                     eta=eta if use_eta else 0.0, generator=generator)
        return x_t.clamp(-1, 1)
    return run


# ----------------------------------------------------------------------------- 7.3 the scores
def scores(judge_logits, labels, targets, x, x_cf):
    pred = judge_logits.argmax(1)
    return ((pred == targets).float().mean().item(), (pred == labels).float().mean().item(),
            (x_cf - x).abs().mean().item())


def scores_changed_class(judge_logits, labels, targets, x, x_cf):   # any change counts as a flip
    pred = judge_logits.argmax(1)
    return ((pred != labels).float().mean().item(), (pred == labels).float().mean().item(),
            (x_cf - x).abs().mean().item())


def scores_max_change(judge_logits, labels, targets, x, x_cf):      # the largest change, not the mean
    flip, kept, _ = scores(judge_logits, labels, targets, x, x_cf)
    return flip, kept, (x_cf - x).abs().max().item()


def scores_signed_change(judge_logits, labels, targets, x, x_cf):   # mean Δ: + and − cancel
    flip, kept, _ = scores(judge_logits, labels, targets, x, x_cf)
    return flip, kept, (x_cf - x).mean().item()


def scores_per_image_sum(judge_logits, labels, targets, x, x_cf):   # Σ |Δ| per image, averaged
    flip, kept, _ = scores(judge_logits, labels, targets, x, x_cf)
    return flip, kept, (x_cf - x).abs().flatten(1).sum(1).mean().item()


def scores_wrong_axis(judge_logits, labels, targets, x, x_cf):      # argmin: the least likely class
    pred = judge_logits.argmin(1)
    return ((pred == targets).float().mean().item(), (pred == labels).float().mean().item(),
            (x_cf - x).abs().mean().item())


CASES = {
    "invert": (invert_with(), [invert_with(eps_at="next"), invert_with(update_x0=False),
                               invert_with(bar=False)]),
    "counterfactual_loop": (counterfactual_with(), [
        counterfactual_with(noise=False), counterfactual_with(use_eta=False),
        counterfactual_with(final_step=False), counterfactual_with(t_prev="minus-one"),
        counterfactual_with(own_generator=True)]),
    "counterfactual_scores": (scores, [scores_changed_class, scores_max_change, scores_signed_change,
                                       scores_per_image_sum, scores_wrong_axis]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])
