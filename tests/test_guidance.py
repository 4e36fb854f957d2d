"""Tests for the conditional samplers (jdm.sampling), jdm.Guidance and JointDiffusion.sample(target=…)."""
import dataclasses
import warnings

import pytest
import torch

from jdm.joint import JointDiffusion
from jdm.sampling import (DEFAULT_LEVELS, DEFAULT_RULES, DEFAULT_SCALES, Guidance,
                          check_targets, classifier_guided_eps, guided_eps,
                          representation_guided_eps, representation_step,
                          representation_x0_guided_eps)
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, Features, UNet


def make(noise_aware: bool = True) -> JointDiffusion:
    torch.manual_seed(0)
    return JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50), head_dropout=0.0,
                          noise_aware=noise_aware).eval()


def z_log_prob(model, feats, target):
    """log p(target | z) of the head applied to the features themselves, per example."""
    return model.head(feats).log_softmax(1).gather(1, target[:, None]).squeeze(1)


def x0_log_prob(model, x_t, t, feats, target):
    """log p(target | x̂_0) of the clean image that features ``feats`` of x_t imply, per example."""
    x0 = model.schedule.predict_x0(x_t, t, model.unet.decode(feats, t))
    return model.classify(x0).log_softmax(1).gather(1, target[:, None]).squeeze(1)


def moved_features(model, x_t, t, target, step):
    """The direct rule by hand: each map a detached leaf, z ← z + step·∇_z log p(target | z)."""
    feats = model.unet.encode(x_t, t)
    z = [m.detach().clone().requires_grad_(True) for m in (feats.bottleneck, *feats.skips)]
    grads = torch.autograd.grad(z_log_prob(model, Features(z[0], z[1:]), target).sum(), z)
    return feats, Features(*(lambda m: (m[0], m[1:]))([m + step * g for m, g in zip(z, grads)]))


def authors_eps(model, x_t, t, target, lr):
    """The authors' ``image_sample_with_classifier.py`` step, line for line: one graph,
    ``retain_grad()`` on the bottleneck and every skip, summed CE, ``backward()``, then
    ``h + lr·h.grad`` and ``hs_i + lr·hs_i.grad``, decoded (their ``finalise_forward``)."""
    h, hs = model.unet.encode(x_t, t)
    h.retain_grad()
    for _hs in hs:
        _hs.retain_grad()
    loss = torch.nn.CrossEntropyLoss(reduction="sum")(model.head(Features(h, hs)), target)
    loss.backward()
    model.zero_grad()
    with torch.no_grad():
        return model.unet.decode(Features(h + lr * h.grad, [_hs + lr * _hs.grad for _hs in hs]), t)


def test_paper_sampler_is_the_authors_retain_grad_step():
    """kind="representation" computes what the authors' script computes: the total derivative of
    the summed CE with respect to every map, stepped with their sign (+γ·∇CE)."""
    model = make()
    x_t, t, target = torch.randn(3, 1, 28, 28), torch.full((3,), 25), torch.tensor([1, 4, 7])
    expected = authors_eps(model, x_t, t, target, 7.0)
    got = representation_guided_eps(model, target, scale=7.0)(x_t, t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    via_guidance = guided_eps(model, target, 3, Guidance("representation", scale=7.0))(x_t, t)
    torch.testing.assert_close(via_guidance, expected, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_direct_rule_is_the_detached_step():
    """The ablations: gradient="direct" detaches each map (its pooled path only); direction
    flips the sign, so direct + ascent is the rule jdm used before."""
    model = make()
    x_t, t, target = torch.randn(3, 1, 28, 28), torch.full((3,), 25), torch.tensor([1, 4, 7])
    for direction, step in (("ascent", 7.0), ("descent", -7.0)):
        _, moved = moved_features(model, x_t, t, target, step)
        with torch.no_grad():
            expected = model.unet.decode(moved, t)
        got = representation_guided_eps(model, target, scale=7.0, gradient="direct",
                                        direction=direction)(x_t, t)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_total_and_direct_rules_agree_on_the_last_map_and_differ_on_the_first_skip():
    """Nothing in the encoder comes after the bottleneck, so both rules give it the same update;
    the first skip feeds every later block, so its total derivative differs and varies across
    positions, while the direct one is a constant per channel (the pooled path only)."""
    model = make()
    x_t, t, target = torch.randn(3, 1, 28, 28), torch.full((3,), 25), torch.tensor([1, 4, 7])
    z, total = representation_step(model, target, x_t, t, scale=1.0, gradient="total")
    _, direct = representation_step(model, target, x_t, t, scale=1.0, gradient="direct")
    torch.testing.assert_close(total.bottleneck, direct.bottleneck, rtol=1e-4, atol=1e-7)
    d_total, d_direct = total.skips[0] - z.skips[0], direct.skips[0] - z.skips[0]
    assert not torch.allclose(d_total, d_direct, rtol=1e-3, atol=1e-7)
    spread = lambda d: (d - d.mean((2, 3), keepdim=True)).norm() / d.norm()  # noqa: E731
    assert spread(d_direct) < 1e-3 < 0.1 < spread(d_total)  # 1e-3: float rounding of z + δ − z


@pytest.mark.parametrize("levels", ["lowest", "highest"])
def test_levels_move_only_their_resolution(levels):
    model = make()
    x_t, t, target = torch.randn(2, 1, 28, 28), torch.full((2,), 25), torch.tensor([1, 4])
    z, moved = representation_step(model, target, x_t, t, scale=1.0, levels=levels)
    maps, after = [z.bottleneck, *z.skips], [moved.bottleneck, *moved.skips]
    size = {"lowest": min, "highest": max}[levels](m.shape[-1] for m in maps)
    changed = [not torch.equal(a, b) for a, b in zip(maps, after)]
    assert changed == [m.shape[-1] == size for m in maps] and 0 < sum(changed) < len(maps)


def test_inner_steps_keep_the_total_derivative_of_the_moved_maps():
    """Two inner steps: the second gradient is taken at the moved maps, still through the graph."""
    model = make()
    x_t, t, target = torch.randn(2, 1, 28, 28), torch.full((2,), 25), torch.tensor([1, 4])
    z, one = representation_step(model, target, x_t, t, scale=3.0)
    feats = model.unet.encode(x_t, t)
    maps = [feats.bottleneck, *feats.skips]
    first = [a - b for a, b in zip([one.bottleneck, *one.skips], [z.bottleneck, *z.skips])]
    moved = [m + d for m, d in zip(maps, first)]
    loss = torch.nn.CrossEntropyLoss(reduction="sum")(model.head(Features(moved[0], moved[1:])), target)
    second = torch.autograd.grad(loss, maps)
    _, two = representation_step(model, target, x_t, t, scale=3.0, inner_steps=2)
    for got, m, d, g in zip([two.bottleneck, *two.skips], maps, first, second):
        torch.testing.assert_close(got, (m + d + 3.0 * g).detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("levels", ["lowest", "all"])
def test_x0_variant_step_moves_towards_the_target(levels):
    """The x̂₀ variant's sign: one update raises log p(target | x̂_0) for every example."""
    model = make()
    x_t = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.full((8,), 30)
    with torch.no_grad():
        feats = model.unet.encode(x_t, t)
        for c in range(3):
            target = torch.full((8,), c)
            before = x0_log_prob(model, x_t, t, feats, target)
            eps_up = representation_x0_guided_eps(model, target, scale=0.5, levels=levels)(x_t, t)
            after = model.classify(model.schedule.predict_x0(x_t, t, eps_up)) \
                .log_softmax(1).gather(1, target[:, None]).squeeze(1)
            assert (after > before).all(), (c, before, after)


def test_x0_variant_lowest_level_moves_only_the_lowest_resolution_features():
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
    got = representation_x0_guided_eps(model, target, scale=7.0, levels="lowest")(x_t, t)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("kind", ["representation", "representation-x0", "classifier"])
def test_zero_scale_is_unconditional(kind):
    model = make()
    x_t, t = torch.randn(4, 1, 28, 28), torch.full((4,), 10)
    eps = guided_eps(model, 3, 4, Guidance(kind, scale=0.0))(x_t, t)
    torch.testing.assert_close(eps, model.eps(x_t, t).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["representation", "representation-x0", "classifier"])
def test_conditional_sampling_shapes_and_determinism(kind):
    model = make()
    kwargs = dict(target=torch.tensor([0, 1, 2]), guidance=kind, steps=4, progress=False)
    a = model.sample(3, generator=torch.Generator().manual_seed(0), **kwargs)
    b = model.sample(3, generator=torch.Generator().manual_seed(0), **kwargs)
    c = model.sample(3, generator=torch.Generator().manual_seed(1), **kwargs)
    assert a.shape == (3, 1, 28, 28) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.training is False  # make() put it in eval mode; sampling leaves the mode alone


@pytest.mark.parametrize("kind", ["representation-x0", "classifier"])
def test_guidance_changes_what_the_model_samples(kind):
    """End to end: strong guidance to a class the unguided samples rarely show makes the model's
    own head say that class for most samples drawn from the same noise. (An untrained model: only
    its own head's verdict means anything. This head calls most images 9 and a few 0; a sign
    error would push the guided samples away from 0.) The paper's sampler moves the head's verdict
    on z_t, which on an untrained decoder barely reaches the clean image: it is checked end to
    end on the shipped model instead (tests/test_shipped.py)."""
    model = make()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = model.sample(16, steps=5, eta=1.0, generator=g(), progress=False)
    # levels="all": this untrained model's lowest-resolution features alone barely move its head
    guided = model.sample(16, target=0, guidance=Guidance(kind, scale=1000.0, levels="all"),
                          steps=5, generator=g(), progress=False)
    plain_share = (model.predict(plain) == 0).float().mean()
    assert plain_share < 0.3
    assert (model.predict(guided) == 0).float().mean() > plain_share + 0.5


def test_guidance_defaults_are_defined_once():
    assert Guidance("classifier").resolve() == Guidance(
        "classifier", DEFAULT_SCALES["classifier"], 1, None, None, None, None)
    paper = Guidance().resolve()
    assert paper.kind == "representation" and paper.levels == DEFAULT_LEVELS["representation"] == "all"
    assert paper.scale == DEFAULT_SCALES["representation"]
    assert (paper.gradient, paper.direction) == DEFAULT_RULES["representation"] == ("total", "descent")
    x0 = Guidance("representation-x0", gradient="total").resolve()
    assert (x0.gradient, x0.direction) == ("total", DEFAULT_RULES["representation-x0"][1])
    assert Guidance("representation-x0").resolve().levels == DEFAULT_LEVELS["representation-x0"]
    assert Guidance(scale=3).resolve().scale == 3.0
    assert Guidance.of("classifier") == Guidance("classifier") and Guidance.of(None) == Guidance()
    with pytest.raises(dataclasses.FrozenInstanceError):
        Guidance().scale = 2.0


def test_sample_eta_defaults_follow_the_method():
    """eta=None: 0 (deterministic) without labels, guidance.eta with them."""
    model = make()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kw = dict(steps=3, progress=False)
    assert torch.equal(model.sample(2, generator=g(), **kw), model.sample(2, eta=0.0, generator=g(), **kw))
    guided = dict(target=1, guidance=Guidance("classifier", eta=0.3), **kw)
    assert torch.equal(model.sample(2, generator=g(), **guided),
                       model.sample(2, eta=0.3, generator=g(), **guided))
    assert not torch.equal(model.sample(2, generator=g(), **guided),
                           model.sample(2, eta=0.0, generator=g(), **guided))
    # Guidance(eta=None), the default: DEFAULT_CONDITIONAL_ETA for samples
    from jdm.sampling import DEFAULT_CONDITIONAL_ETA
    plain = dict(target=1, guidance=Guidance("classifier"), **kw)
    assert Guidance().eta is None
    assert torch.equal(model.sample(2, generator=g(), **plain),
                       model.sample(2, eta=DEFAULT_CONDITIONAL_ETA, generator=g(), **plain))


def test_classifier_guidance_on_a_clean_only_head_warns():
    model = make(noise_aware=False)
    with pytest.warns(UserWarning, match="noise_aware"):
        guided_eps(model, 1, 2, "classifier")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guided_eps(make(noise_aware=True), 1, 2, "classifier")
        guided_eps(model, 1, 2, "representation")


@pytest.mark.parametrize("bad", [10, -1, torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0]),
                                 torch.tensor([0, 1, 10]), "shirt", True])
def test_bad_targets_are_refused(bad):
    model = make()
    with pytest.raises(ValueError, match="target|labels|class"):
        model.sample(3, target=bad, steps=2, progress=False)


@pytest.mark.parametrize("make_bad, match", [
    (lambda: Guidance("cfg"), "guidance kind"),
    (lambda: Guidance(scale=-1.0), "scale"),
    (lambda: Guidance("classifier", scale=float("nan")), "scale"),
    (lambda: Guidance(inner_steps=0), "inner_steps"),
    (lambda: Guidance(levels="middle"), "levels"),
    (lambda: Guidance("classifier", scale=float("inf")), "finite"),
    (lambda: Guidance(gradient="partial"), "gradient"),
    (lambda: Guidance(direction="up"), "direction"),
    (lambda: Guidance(eta=1.5), "eta"),
    (lambda: Guidance.of(3), "guidance must be"),
])
def test_bad_guidance_arguments(make_bad, match):
    with pytest.raises(ValueError, match=match):
        make_bad()


def test_sample_refuses_a_bad_guidance_name():
    with pytest.raises(ValueError, match="guidance"):
        make().sample(2, target=1, guidance="cfg", steps=2, progress=False)


def test_check_targets():
    assert torch.equal(check_targets(2, 3, 10), torch.tensor([2, 2, 2]))
    assert check_targets(torch.tensor([1, 2], dtype=torch.int32), 2, 10).dtype == torch.long
