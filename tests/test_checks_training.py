"""jdm.checks for notebook 03: each passes on a right answer, fails on the stub and on wrong ones."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from check_cases import assert_check_behaves


# ----------------------------------------------------------------------------- 3.1 the loss
def _x_t(schedule, x0, t, noise, table=None):
    ab = (schedule.alpha_bars if table is None else table)[t].reshape(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def loss(eps_model, schedule, x0, t, noise):
    return F.mse_loss(eps_model(_x_t(schedule, x0, t, noise), t), noise)


def loss_by_hand(eps_model, schedule, x0, t, noise):   # the same thing written out: right too
    return ((noise - eps_model(_x_t(schedule, x0, t, noise), t)) ** 2).mean()


def loss_target_x0(eps_model, schedule, x0, t, noise):
    return F.mse_loss(eps_model(_x_t(schedule, x0, t, noise), t), x0)


def loss_sum(eps_model, schedule, x0, t, noise):
    return ((noise - eps_model(_x_t(schedule, x0, t, noise), t)) ** 2).sum()


def loss_alpha_not_bar(eps_model, schedule, x0, t, noise):
    return F.mse_loss(eps_model(_x_t(schedule, x0, t, noise, schedule.alphas), t), noise)


def loss_item(eps_model, schedule, x0, t, noise):       # a float: nothing to backpropagate
    return loss(eps_model, schedule, x0, t, noise).item()


def loss_no_grad(eps_model, schedule, x0, t, noise):
    with torch.no_grad():
        return loss(eps_model, schedule, x0, t, noise)


def loss_per_image(eps_model, schedule, x0, t, noise):  # mean over pixels only: (N,), not a scalar
    return ((noise - eps_model(_x_t(schedule, x0, t, noise), t)) ** 2).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- 3.2 EMA
def ema(ema_params, params, decay):
    with torch.no_grad():
        for e, p in zip(ema_params, params):
            e.mul_(decay).add_(p, alpha=1 - decay)


def ema_lerp(ema_params, params, decay):                # torch's own spelling: right too
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, list(params), 1 - decay)


def ema_swapped(ema_params, params, decay):             # decay on the new weights
    with torch.no_grad():
        for e, p in zip(ema_params, params):
            e.mul_(1 - decay).add_(p, alpha=decay)


def ema_rebinds(ema_params, params, decay):             # a new tensor bound to a loop variable
    for e, p in zip(ema_params, params):
        e = decay * e + (1 - decay) * p                 # noqa: F841


def ema_returns_new(ema_params, params, decay):
    return [decay * e + (1 - decay) * p for e, p in zip(ema_params, params)]


def ema_replaces_list_items(ema_params, params, decay):
    for i, (e, p) in enumerate(zip(ema_params, params)):
        ema_params[i] = decay * e + (1 - decay) * p


def ema_without_no_grad(ema_params, params, decay):     # in place on leaves that require grad
    for e, p in zip(ema_params, params):
        e.mul_(decay).add_(p, alpha=1 - decay)


def ema_moves_the_model(ema_params, params, decay):     # updates the wrong list
    with torch.no_grad():
        for e, p in zip(ema_params, params):
            p.mul_(decay).add_(e, alpha=1 - decay)
            e.copy_(p)


# ----------------------------------------------------------------------------- 3.3 DDPM mean
def _at(values, t):
    return values[t].reshape(-1, 1, 1, 1)


def ddpm_mean(s, x_t, t, eps):
    alpha, beta, ab = _at(s.alphas, t), _at(s.betas, t), _at(s.alpha_bars, t)
    return (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()


def ddpm_mean_via_x0(s, x_t, t, eps):                   # the posterior at x̂_0, by jdm: its reference
    return s.q_posterior(s.predict_x0(x_t, t, eps), x_t, t)[0]


def ddpm_mean_alpha_bar(s, x_t, t, eps):                # 1/√ᾱ_t in front instead of 1/√α_t
    beta, ab = _at(s.betas, t), _at(s.alpha_bars, t)
    return (x_t - beta / (1 - ab).sqrt() * eps) / ab.sqrt()


def ddpm_mean_no_sqrt(s, x_t, t, eps):                  # β_t/(1−ᾱ_t) instead of β_t/√(1−ᾱ_t)
    alpha, beta, ab = _at(s.alphas, t), _at(s.betas, t), _at(s.alpha_bars, t)
    return (x_t - beta / (1 - ab) * eps) / alpha.sqrt()


def ddpm_mean_sqrt_beta(s, x_t, t, eps):                # √β_t in the numerator
    alpha, beta, ab = _at(s.alphas, t), _at(s.betas, t), _at(s.alpha_bars, t)
    return (x_t - beta.sqrt() / (1 - ab).sqrt() * eps) / alpha.sqrt()


def ddpm_mean_off_by_one(s, x_t, t, eps):               # the paper's 1-based t read as jdm's index
    return ddpm_mean(s, x_t, (t - 1).clamp(min=0), eps)


# ----------------------------------------------------------------------------- 3.4 DDIM step
def _ab_prev(s, t_prev):
    return torch.cat([torch.ones(1), s.alpha_bars])[t_prev + 1].reshape(-1, 1, 1, 1)


def ddim(s, x_t, t, t_prev, eps):
    ab, ab_prev = _at(s.alpha_bars, t), _ab_prev(s, t_prev)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


def ddim_jdm(s, x_t, t, t_prev, eps):                   # jdm's own step: the reference itself
    return s.ddim_step(x_t, t, t_prev, eps, eta=0.0, clip_x0=False)


def ddim_wraps_at_minus_one(s, x_t, t, t_prev, eps):    # alpha_bars[-1] is ᾱ_{T−1}, not 1
    ab, ab_prev = _at(s.alpha_bars, t), _at(s.alpha_bars, t_prev)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


def ddim_clipped(s, x_t, t, t_prev, eps):               # clips x̂_0 (the exercise says: don't)
    return s.ddim_step(x_t, t, t_prev, eps, eta=0.0, clip_x0=True)


def ddim_alpha_not_bar(s, x_t, t, t_prev, eps):
    a = 1 - s.betas
    ab = _at(a, t)
    ab_prev = torch.cat([torch.ones(1), a])[t_prev + 1].reshape(-1, 1, 1, 1)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


def ddim_no_sqrt_direction(s, x_t, t, t_prev, eps):
    ab, ab_prev = _at(s.alpha_bars, t), _ab_prev(s, t_prev)
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev) * eps


# ----------------------------------------------------------------------------- 3.5 DDIM jumps
def largest_jump(schedule, k):
    visited = schedule.timesteps(k)
    return max(a - b for a, b in zip(visited, visited[1:]))


def largest_jump_uniform(schedule, k):                  # "evenly spaced" taken as T // k
    return schedule.num_steps // k


def largest_jump_smallest(schedule, k):
    visited = schedule.timesteps(k)
    return min(a - b for a, b in zip(visited, visited[1:]))


def largest_jump_numpy(schedule, k):                    # a numpy integer is an int too
    return np.max(-np.diff(np.array(schedule.timesteps(k))))


CASES = {
    "ddpm_loss": (loss, [loss_target_x0, loss_sum, loss_alpha_not_bar, loss_item, loss_no_grad,
                         loss_per_image]),
    "ema_update": (ema, [ema_swapped, ema_rebinds, ema_returns_new, ema_replaces_list_items,
                         ema_without_no_grad, ema_moves_the_model]),
    "ddpm_mean": (ddpm_mean, [ddpm_mean_alpha_bar, ddpm_mean_no_sqrt, ddpm_mean_sqrt_beta,
                              ddpm_mean_off_by_one]),
    "ddim_step": (ddim, [ddim_wraps_at_minus_one, ddim_clipped, ddim_alpha_not_bar, ddim_no_sqrt_direction]),
    "largest_ddim_jump": (largest_jump, [largest_jump_uniform, largest_jump_smallest]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


@pytest.mark.parametrize("name, other_right", [("ddpm_loss", loss_by_hand), ("ema_update", ema_lerp),
                                               ("largest_ddim_jump", largest_jump_numpy)])
def test_other_right_answers_pass(name, other_right):
    import jdm.checks
    getattr(jdm.checks, name)(other_right)


@pytest.mark.parametrize("name, reference_call", [("ddpm_mean", ddpm_mean_via_x0), ("ddim_step", ddim_jdm),
                                                  ("ddim_step", ddim_clipped)])
def test_calling_the_reference_fails_and_says_so(name, reference_call):
    import jdm.checks
    with pytest.raises(AssertionError, match="called jdm's NoiseSchedule.*implement it yourself"):
        getattr(jdm.checks, name)(reference_call)


def test_index_messages_name_the_batch_item_and_its_t():
    import jdm.checks
    with pytest.raises(AssertionError, match=r"for batch item \d+ \(t=\d+\) at position"):
        jdm.checks.ddpm_mean(ddpm_mean_alpha_bar)
