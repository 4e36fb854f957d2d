"""Tests for jdm.sampling with an oracle noise predictor whose data set is a single image."""
import pytest
import torch

from jdm.sampling import sample_loop
from jdm.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule(100)
TARGET = torch.linspace(-0.9, 0.9, 16).reshape(1, 1, 4, 4)


def oracle(x_t, t):
    """The exact ε̂ when the data distribution is a point mass at TARGET."""
    return SCHEDULE.predict_eps(x_t, t, TARGET.expand_as(x_t))


@pytest.mark.parametrize("method, steps", [("ddpm", None), ("ddim", 10), ("ddim", 1)])
def test_samples_reach_the_data_point(method, steps):
    x = sample_loop(oracle, SCHEDULE, (3, 1, 4, 4), method=method, steps=steps,
                    generator=torch.Generator().manual_seed(0), progress=False)
    assert x.shape == (3, 1, 4, 4)
    assert torch.allclose(x, TARGET.expand(3, 1, 4, 4), atol=1e-3)


def test_generator_makes_runs_repeatable():
    def noisy(x_t, t):  # a predictor that is wrong, so the noise matters
        return torch.zeros_like(x_t)

    runs = [sample_loop(noisy, SCHEDULE, (2, 1, 4, 4), method="ddpm", progress=False,
                        generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert runs[0].min() >= -1 and runs[0].max() <= 1


def test_trajectory_and_partial_start():
    x_T = SCHEDULE.q_sample(torch.zeros(2, 1, 4, 4), torch.full((2,), 30))
    x, trajectory = sample_loop(oracle, SCHEDULE, (2, 1, 4, 4), method="ddim", steps=4, x_T=x_T,
                                start_step=30, progress=False, return_trajectory=True)
    assert len(trajectory) == 5 and torch.equal(trajectory[0], x_T)
    assert torch.allclose(x, TARGET.expand(2, 1, 4, 4), atol=1e-3)


@pytest.mark.parametrize("kwargs", [dict(method="euler"), dict(method="ddpm", steps=10),
                                    dict(start_step=100), dict(x_T=torch.zeros(1, 1, 4, 4))])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sample_loop(oracle, SCHEDULE, (2, 1, 4, 4), progress=False, **kwargs)


def test_steps_none_is_the_methods_default_everywhere():
    """steps=None: DDIM takes DEFAULT_DDIM_STEPS (capped by the steps left), ancestral DDPM takes
    every step; DDPM with any explicit steps is refused alike (no magic number passes)."""
    from jdm.sampling import DEFAULT_DDIM_STEPS

    calls = []

    def counting(x_t, t):
        calls.append(int(t[0]))
        return oracle(x_t, t)

    sample_loop(counting, SCHEDULE, (1, 1, 4, 4), method="ddim", progress=False)
    assert len(calls) == DEFAULT_DDIM_STEPS
    calls.clear()
    sample_loop(counting, SCHEDULE, (1, 1, 4, 4), method="ddpm", progress=False)
    assert calls == list(range(99, -1, -1))
    calls.clear()
    sample_loop(counting, SCHEDULE, (1, 1, 4, 4), method="ddim", start_step=9, progress=False)
    assert calls == list(range(9, -1, -1))  # fewer steps left than the default: every one
    for steps in (DEFAULT_DDIM_STEPS, DEFAULT_DDIM_STEPS - 1, 100):
        with pytest.raises(ValueError, match="ancestral DDPM"):
            sample_loop(oracle, SCHEDULE, (1, 1, 4, 4), method="ddpm", steps=steps, progress=False)


def test_counterfactual_with_ancestral_ddpm_needs_no_steps():
    from jdm import CounterfactualSettings, JointDiffusion, UNet, UNET_PRESETS, counterfactual

    torch.manual_seed(0)
    model = JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(20), noise_aware=True).eval()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    ddpm = CounterfactualSettings(t_star=5, method="ddpm", start="noise")
    assert counterfactual(model, x, 1, ddpm, progress=False).images.shape == x.shape
    with pytest.raises(ValueError, match="ancestral DDPM"):
        CounterfactualSettings(t_star=5, method="ddpm", steps=3, start="noise")
