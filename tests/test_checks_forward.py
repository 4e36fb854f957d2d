"""jdm.checks for notebook 01: each passes on a right answer, fails on the stub and on wrong ones."""
import math

import pytest
import torch

from check_cases import assert_check_behaves


def cosine(T, s=0.008):
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    ab = f / f[0]
    return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)


def cosine_unclipped(T, s=0.008):
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return 1 - f[1:] / f[:-1]


def cosine_off_by_one(T, s=0.008):    # ᾱ taken at t = 0 … T−1 instead of 1 … T
    return cosine(T + 1, s)[:T]


def q_sample(x0, t, noise, alpha_bar):
    ab = alpha_bar[t].reshape(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def q_sample_no_sqrt(x0, t, noise, alpha_bar):
    ab = alpha_bar[t].reshape(-1, 1, 1, 1)
    return ab * x0 + (1 - ab) * noise


def q_sample_first_t(x0, t, noise, alpha_bar):   # one ᾱ for the whole batch
    ab = alpha_bar[t[0]]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def posterior(x0, xt, t, betas):
    ab = torch.cumprod(1 - betas, 0)
    ab_t, ab_prev, beta = ab[t], (ab[t - 1] if t > 0 else torch.tensor(1.0, dtype=betas.dtype)), betas[t]
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * xt
    return mean.float(), ((1 - ab_prev) / (1 - ab_t) * beta).float()


def posterior_beta_variance(x0, xt, t, betas):   # σ² = β_t, DDPM's other choice, not the posterior's
    return posterior(x0, xt, t, betas)[0], betas[t].float()


def posterior_wraps_at_zero(x0, xt, t, betas):   # ab[t - 1] at t = 0 reads ᾱ_{T-1}
    ab = torch.cumprod(1 - betas, 0)
    ab_t, ab_prev, beta = ab[t], ab[t - 1], betas[t]
    mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * xt
    return mean.float(), ((1 - ab_prev) / (1 - ab_t) * beta).float()


def half_life(s):
    return int((s.alpha_bars < 0.5).nonzero()[0])


def half_life_last_above(s):
    return half_life(s) - 1


def recover_x0(xt, t, eps, s):
    ab = s.alpha_bars[t].reshape(-1, 1, 1, 1)
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


def recover_x0_alpha_not_bar(xt, t, eps, s):
    a = (1 - s.betas[t]).reshape(-1, 1, 1, 1)
    return (xt - (1 - a).sqrt() * eps) / a.sqrt()


def _end(T, beta_end):
    return torch.cumprod(1 - torch.linspace(1e-4, beta_end, T, dtype=torch.float64), 0)[-1].item()


def matched_beta_end(T, target):
    low, high = 1e-4, 0.5
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if _end(T, mid) > target else (low, mid)
    return mid


def matched_beta_end_first_guess(T, target):   # −log ᾱ_T ≈ Σβ, unrefined: several % off
    return 2 * -math.log(target) / T - 1e-4


CASES = {
    "cosine_betas": (cosine, [cosine_unclipped, cosine_off_by_one]),
    "q_sample": (q_sample, [q_sample_no_sqrt, q_sample_first_t]),
    "posterior": (posterior, [posterior_beta_variance, posterior_wraps_at_zero]),
    "half_life": (half_life, [half_life_last_above]),
    "recover_x0": (recover_x0, [recover_x0_alpha_not_bar]),
    "matched_beta_end": (matched_beta_end, [matched_beta_end_first_guess, lambda T, target: 0.02]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


# ----------------------------------------------------------------------------- issue 29
import numpy as np   # noqa: E402

import jdm.checks   # noqa: E402
from jdm.schedule import NoiseSchedule   # noqa: E402


def _fails(name, answer, message):
    with pytest.raises(AssertionError, match=message):
        getattr(jdm.checks, name)(answer)


RIGHT = {   # right answers in another form than the reference's: they must pass
    "cosine_betas": lambda T, s=0.008: cosine(T, s).float(),                        # float32
    "half_life": lambda s: np.argmax((s.alpha_bars < 0.5).numpy()),                  # np.int64
    "posterior": lambda x0, xt, t, betas: list(posterior(x0, xt, t, betas)),         # [mean, var]
}


@pytest.mark.parametrize("name", RIGHT)
def test_right_answers_in_other_forms_pass(name):
    getattr(jdm.checks, name)(RIGHT[name])


REFERENCE_CALLS = {   # J08: the reference the check compares with, called instead of an answer
    "cosine_betas": lambda T, s=0.008: NoiseSchedule(T, kind="cosine").betas,
    "q_sample": lambda x0, t, noise, alpha_bar: NoiseSchedule(1000).q_sample(x0, t, noise),
    "posterior": lambda x0, xt, t, betas: NoiseSchedule(len(betas)).q_posterior(
        x0, xt, torch.full((len(x0),), t))[:2],
    "recover_x0": lambda xt, t, eps, s: s.predict_x0(xt, t, eps),
}


@pytest.mark.parametrize("name", REFERENCE_CALLS)
def test_calling_the_reference_fails_and_says_so(name):
    _fails(name, REFERENCE_CALLS[name], "called jdm's .*implement it yourself")


def test_a_caught_reference_error_still_fails():
    def sneaky(x0, t, noise, alpha_bar):
        try:
            return NoiseSchedule(1000).q_sample(x0, t, noise)
        except Exception:
            return q_sample(x0, t, noise, alpha_bar)
    _fails("q_sample", sneaky, "called jdm's NoiseSchedule.q_sample")


GLOBAL_SCHEDULE = NoiseSchedule(1000)


def test_an_answer_ignoring_its_schedule_argument_fails_naming_the_schedule():
    _fails("q_sample", lambda x0, t, noise, alpha_bar: q_sample(x0, t, noise, GLOBAL_SCHEDULE.alpha_bars),
           r"cosine schedule, T=500.*for batch item \d+ \(t=\d+\)")


def test_in_place_answers_are_told_so_before_any_value():
    def q_sample_in_place(x0, t, noise, alpha_bar):
        ab = alpha_bar[t].reshape(-1, 1, 1, 1)
        return x0.mul_(ab.sqrt()).add_((1 - ab).sqrt() * noise)

    def recover_in_place(xt, t, eps, s):
        ab = s.alpha_bars[t].reshape(-1, 1, 1, 1)
        return xt.sub_((1 - ab).sqrt() * eps).div_(ab.sqrt())
    _fails("q_sample", q_sample_in_place, "x0 was modified in place")
    _fails("recover_x0", recover_in_place, "xt was modified in place")
