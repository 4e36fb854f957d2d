"""Tests for the conditional samplers (jdm.sampling) and JointDiffusion.sample(labels=…)."""
import pytest
import torch

from jdm.joint import JointDiffusion
from jdm.sampling import check_targets, classifier_guided_eps, representation_guided_eps
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, Features, UNet


def make() -> JointDiffusion:
    torch.manual_seed(0)
    return JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50), head_dropout=0.0).eval()


def x0_log_prob(model, x_t, t, feats, target):
    """log p(target | x̂_0) of the clean image that features ``feats`` of x_t imply, per example."""
    x0 = model.schedule.predict_x0(x_t, t, model.unet.decode(feats, t))
    return model.classify(x0).log_softmax(1).gather(1, target[:, None]).squeeze(1)


@pytest.mark.parametrize("levels", ["lowest", "all"])
def test_representation_step_moves_towards_the_target(levels):
    """The sign test: one feature update raises log p(target | x̂_0) for every example and every
    target, and lowers it when the step is negated (so the update is really the ascent)."""
    model = make()
    x_t = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.full((8,), 30)
    with torch.no_grad():
        feats = model.unet.encode(x_t, t)
        for c in range(3):
            target = torch.full((8,), c)
            before = x0_log_prob(model, x_t, t, feats, target)
            eps_up = representation_guided_eps(model, target, step_size=0.5, levels=levels)(x_t, t)
            # the clean image the guided ε̂ implies, judged by the same head
            after = model.classify(model.schedule.predict_x0(x_t, t, eps_up)) \
                .log_softmax(1).gather(1, target[:, None]).squeeze(1)
            assert (after > before).all(), (c, before, after)
            # the same step taken downhill by hand lowers it
            z = [m.clone().requires_grad_(True) for m in (feats.bottleneck, *feats.skips)]
            with torch.enable_grad():
                lp = x0_log_prob(model, x_t, t, Features(z[0], z[1:]), target).sum()
                grads = torch.autograd.grad(lp, z)
            sigma = (1 - model.schedule.alpha_bars[t]).sqrt()[:, None, None, None]
            lowest = min(m.shape[-1] for m in z)
            down = [m - 0.5 * sigma * g if levels == "all" or m.shape[-1] == lowest else m
                    for m, g in zip(z, grads)]
            assert (x0_log_prob(model, x_t, t, Features(down[0], down[1:]), target) < before).all()


def test_classifier_guidance_moves_towards_the_target():
    """ε̂' = ε̂ − s·σ_t·∇ log p: the guided x̂_0 is the unguided one plus a multiple of the gradient,
    and a small move of x_t along (ε̂ − ε̂') raises log p(target | x_t, t)."""
    model = make()
    x_t = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    t = torch.full((6,), 40)
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    eps = model.eps(x_t, t).detach()
    guided = classifier_guided_eps(model, target, scale=2.0)(x_t, t)
    x = x_t.clone().requires_grad_(True)
    log_p = model.classify(x, t).log_softmax(1).gather(1, target[:, None]).squeeze(1)
    grad = torch.autograd.grad(log_p.sum(), x)[0]
    sigma = (1 - model.schedule.alpha_bars[t]).sqrt()[:, None, None, None]
    torch.testing.assert_close(guided, eps - 2.0 * sigma * grad, rtol=1e-4, atol=1e-6)
    moved = x_t + 1e-2 * (eps - guided) / (eps - guided).flatten(1).norm(dim=1)[:, None, None, None]
    with torch.no_grad():
        after = model.classify(moved, t).log_softmax(1).gather(1, target[:, None]).squeeze(1)
    assert (after > log_p.detach()).all()


@pytest.mark.parametrize("guidance", ["representation", "classifier"])
def test_zero_scale_is_unconditional(guidance):
    model = make()
    x_t, t = torch.randn(4, 1, 28, 28), torch.full((4,), 10)
    eps = model.guided_eps(3, 4, guidance=guidance, scale=0.0)(x_t, t)
    torch.testing.assert_close(eps, model.eps(x_t, t).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("guidance", ["representation", "classifier"])
def test_conditional_sampling_shapes_and_determinism(guidance):
    model = make()
    kwargs = dict(labels=torch.tensor([0, 1, 2]), guidance=guidance, steps=4, progress=False)
    a = model.sample(3, generator=torch.Generator().manual_seed(0), **kwargs)
    b = model.sample(3, generator=torch.Generator().manual_seed(0), **kwargs)
    c = model.sample(3, generator=torch.Generator().manual_seed(1), **kwargs)
    assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training is False  # make() put it in eval mode; sampling leaves the mode alone


@pytest.mark.parametrize("guidance", ["representation", "classifier"])
def test_guidance_changes_what_the_model_samples(guidance):
    """End to end: strong guidance to a class the unguided samples rarely show makes the model's
    own head say that class for most samples drawn from the same noise. (An untrained model: only
    its own head's verdict means anything. This head calls most images 9 and a few 0; a sign
    error would push the guided samples away from 0, towards none of them being 0.)"""
    model = make()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = model.sample(16, steps=5, eta=1.0, generator=g(), progress=False)
    # levels="all": this untrained model's lowest-resolution features alone barely move its head
    guided = model.sample(16, labels=0, guidance=guidance, scale=1000.0, levels="all", steps=5,
                          eta=1.0, generator=g(), progress=False)
    plain_share = (model.predict(plain) == 0).float().mean()
    assert plain_share < 0.3
    assert (model.predict(guided) == 0).float().mean() > plain_share + 0.5


@pytest.mark.parametrize("bad", [10, -1, torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0]),
                                 torch.tensor([0, 1, 10]), "shirt", True])
def test_bad_targets_are_refused(bad):
    model = make()
    with pytest.raises(ValueError, match="target|labels|class"):
        model.sample(3, labels=bad, steps=2, progress=False)


def test_bad_guidance_arguments():
    model = make()
    with pytest.raises(ValueError, match="guidance"):
        model.sample(2, labels=1, guidance="cfg", steps=2, progress=False)
    with pytest.raises(ValueError, match="step_size"):
        model.guided_eps(1, 2, scale=-1.0)
    with pytest.raises(ValueError, match="scale"):
        model.guided_eps(1, 2, guidance="classifier", scale=float("nan"))
    with pytest.raises(ValueError, match="inner_steps"):
        model.guided_eps(1, 2, inner_steps=0)
    with pytest.raises(ValueError, match="levels"):
        model.guided_eps(1, 2, levels="middle")


def test_check_targets():
    assert torch.equal(check_targets(2, 3, 10), torch.tensor([2, 2, 2]))
    assert check_targets(torch.tensor([1, 2], dtype=torch.int32), 2, 10).dtype == torch.long


def test_lowest_level_moves_only_the_lowest_resolution_features():
    """levels="lowest" gives the ε̂ of decoding features in which only the maps at the lowest
    resolution differ from the encoder's: checked by moving exactly those by hand."""
    model = make()
    x_t, t, target = torch.randn(3, 1, 28, 28), torch.full((3,), 25), torch.tensor([1, 4, 7])
    with torch.no_grad():
        feats = model.unet.encode(x_t, t)
    z = [m.clone() for m in (feats.bottleneck, *feats.skips)]
    lowest = min(m.shape[-1] for m in z)
    moved = [i for i, m in enumerate(z) if m.shape[-1] == lowest]
    assert 0 < len(moved) < len(z)
    leaves = [z[i].requires_grad_(True) for i in moved]
    x0 = model.schedule.predict_x0(x_t, t, model.unet.decode(Features(z[0], z[1:]), t))
    log_p = model.classify(x0).log_softmax(1).gather(1, target[:, None]).sum()
    grads = torch.autograd.grad(log_p, leaves)
    sigma = (1 - model.schedule.alpha_bars[t]).sqrt()[:, None, None, None]
    for i, g in zip(moved, grads):
        z[i] = z[i] + 7.0 * sigma * g
    with torch.no_grad():
        expected = model.unet.decode(Features(z[0], z[1:]), t)
    got = representation_guided_eps(model, target, step_size=7.0, levels="lowest")(x_t, t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
