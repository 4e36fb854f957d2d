"""Tests for jdm.counterfactual, the gallery figure and the explain/evaluate commands."""
import json

import matplotlib
import pytest
import torch

import jdm
from jdm.__main__ import main
from jdm.counterfactual import CounterfactualSettings as Settings
from jdm.counterfactual import counterfactual, difference_map
from jdm.evaluate import class_matched_indices, other_class_targets, runner_up_targets
from jdm.joint import JointDiffusion
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, UNet
from jdm.sampling import Guidance, guided_eps
from jdm.viz import counterfactual_gallery

matplotlib.use("Agg")


def make() -> JointDiffusion:
    torch.manual_seed(0)
    return JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50), head_dropout=0.0,
                          noise_aware=True).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_public_api():
    assert jdm.counterfactual is counterfactual and jdm.difference_map is difference_map
    assert jdm.CounterfactualSettings is Settings


@pytest.mark.parametrize("guidance", ["representation", "representation-x0", "classifier"])
def test_shapes_and_trajectory(images, guidance):
    model = make()
    cf = counterfactual(model, images, torch.tensor([1, 2, 3]), Settings(t_star=20, steps=5),
                        guidance, generator=torch.Generator().manual_seed(0), progress=False,
                        return_trajectory=True)
    x_cf, traj = cf.images, cf.trajectory
    assert x_cf.shape == images.shape and x_cf.min() >= -1 and x_cf.max() <= 1
    assert len(traj) == 6 and all(t.shape == images.shape for t in traj)  # x_{t*} + 5 steps
    assert difference_map(images, x_cf).shape == (3, 28, 28)
    assert cf.t_star.tolist() == [20] * 3 and cf.t_star.dtype == torch.long
    assert cf.guidance.kind == guidance and cf.settings.steps == 5
    assert counterfactual(model, images, 1, Settings(t_star=20, steps=2),
                          progress=False).trajectory is None


def test_deterministic_with_a_generator(images):
    model = make()
    run = lambda seed, start, guidance=None: counterfactual(  # noqa: E731
        model, images, 4, Settings(t_star=15, steps=4, start=start), guidance,
        generator=torch.Generator().manual_seed(seed), progress=False).images
    assert torch.equal(run(0, start="noise"), run(0, start="noise"))
    assert not torch.equal(run(0, start="noise"), run(1, start="noise"))
    # DDIM inversion with η = 0 draws no noise at all: the seed does not matter; with the
    # default η (DEFAULT_INVERSION_ETA > 0) the reverse process draws noise from the generator
    deterministic = Guidance(eta=0.0)
    assert torch.equal(run(0, start="inversion", guidance=deterministic),
                       run(1, start="inversion", guidance=deterministic))
    assert torch.equal(run(0, start="inversion"), run(0, start="inversion"))
    assert not torch.equal(run(0, start="inversion"), run(1, start="inversion"))


class ConstantNoiseModel(torch.nn.Module):
    """A stand-in whose ε̂ is one fixed noise image whatever x_t and t: then DDIM inversion must
    land exactly on q_sample(x, t*, that noise), and DDIM back must return x exactly."""

    def __init__(self, noise):
        super().__init__()
        self.noise, self.schedule = noise, NoiseSchedule(50)
        self.unet = lambda x, t: self.noise.expand_as(x)


@pytest.mark.parametrize("t_star, steps", [(1, None), (30, 7), (49, None)])
def test_ddim_inversion_is_exact_for_a_constant_noise_prediction(images, t_star, steps):
    from jdm.counterfactual import ddim_invert
    from jdm.sampling import sample_loop
    noise = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    model = ConstantNoiseModel(noise)
    x_t = ddim_invert(model, images, t_star, steps=steps)
    t = torch.full((len(images),), t_star)
    torch.testing.assert_close(x_t, model.schedule.q_sample(images, t, noise.expand_as(images)))
    back = sample_loop(model.unet, model.schedule, tuple(images.shape), method="ddim",
                       steps=steps or t_star + 1, x_T=x_t, start_step=t_star, progress=False)
    # (float32 error, divided by √ᾱ_{t*} ≈ 3e-3 at t* = 49 of 50, allows 1e-3)
    torch.testing.assert_close(back, images, rtol=0, atol=1e-3)


def test_keep_one_returns_the_original_and_keep_pulls_towards_it(images):
    model = make()
    run = lambda keep, start: counterfactual(  # noqa: E731
        model, images, 2, Settings(t_star=30, steps=6, keep=keep, start=start),
        Guidance("classifier", scale=50.0), generator=torch.Generator().manual_seed(0),
        progress=False).images
    for start in ("inversion", "noise"):
        torch.testing.assert_close(run(1.0, start), images, rtol=1e-4, atol=1e-4)
        far, near = ((run(k, start) - images).abs().mean() for k in (0.0, 0.5))
        assert near < far


def test_small_t_star_stays_close(images):
    """With little noise and no guidance the image barely changes; with more noise it moves more:
    t* is the closeness knob."""
    model = make()
    dist = {}
    for t_star in (1, 40):
        x_cf = counterfactual(model, images, 0, Settings(t_star=t_star, steps=t_star + 1,
                                                         start="noise"),
                              Guidance(scale=0.0), generator=torch.Generator().manual_seed(0),
                              progress=False).images
        dist[t_star] = (x_cf - images).abs().mean().item()
    assert dist[1] < 0.15 and dist[40] > 3 * dist[1]


def test_batches_are_independent(images):
    """An image's counterfactual depends on its own noise and target only, not on its batch: the
    guidance gradient of one example never involves another (LayerNorm head, summed log-probs)."""
    model = make()
    both = counterfactual(model, images[:2], torch.tensor([5, 6]),
                          Settings(t_star=10, steps=3, start="noise", min_change=0.0),
                          Guidance("classifier", scale=5.0, eta=0.0),
                          generator=torch.Generator().manual_seed(0), progress=False).images
    # same noise for the first image: draw the pair's noise, keep only the first image's
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 1, 28, 28, generator=g)[:1]
    t = torch.full((1,), 10)
    x_t = model.schedule.q_sample(images[:1], t, noise)
    eps_fn = guided_eps(model, 5, 1, Guidance("classifier", scale=5.0))
    alone = model.run_sampler(eps_fn, 1, steps=3, eta=0.0, x_T=x_t, start_step=10, progress=False)
    torch.testing.assert_close(both[:1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"t_star": 0}, "t_star"),
    ({"t_star": "automatic"}, "t_star"),
    ({"t_star": 20.0}, "t_star"),
    ({"t_star": True}, "t_star"),
    ({"t_star": torch.tensor(5)}, "t_star"),
    ({"start": "invert"}, "start"),
    ({"start": "inversion", "method": "ddpm"}, "inversion"),
    ({"start": "noise", "method": "ddpm", "steps": 3}, "steps"),
    ({"method": "ddim2"}, "method"),
    ({"steps": 0}, "steps"),
    ({"keep": 1.5}, "keep"),
    ({"keep": -0.1}, "keep"),
    ({"keep": True}, "keep"),
    ({"keep": float("nan")}, "keep"),
    ({"min_change": -0.1}, "min_change"),
    ({"min_change": 3.0}, "min_change"),
    ({"t_star_rule": (0.1, 0.2)}, "t_star_rule"),
    ({"t_star_rule": (0.1, -0.2, 0.5)}, "t_star_rule"),
    ({"t_star_rule": (0.1, float("inf"), 0.5)}, "t_star_rule"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Settings(**kwargs)


def test_settings_are_frozen_and_resolve_per_model():
    from dataclasses import FrozenInstanceError

    from jdm.counterfactual import AUTO_T_STAR, DEFAULT_COUNTERFACTUAL_STEPS
    settings = Settings(t_star_rule=[0.1, 0.02, 0.4])
    assert settings.t_star_rule == (0.1, 0.02, 0.4) and hash(settings)  # a list becomes a tuple
    with pytest.raises(FrozenInstanceError):
        settings.keep = 0.5
    model = make()
    resolved = Settings().resolve(model)
    assert (resolved.steps, resolved.t_star_rule) == (DEFAULT_COUNTERFACTUAL_STEPS, AUTO_T_STAR)
    assert Settings(start="noise", method="ddpm").resolve(model).steps is None
    model.defaults = {"auto_t_star": [0.2, 0.01, 0.3]}      # a checkpoint's own rule wins
    assert Settings().resolve(model).t_star_rule == (0.2, 0.01, 0.3)
    assert Settings(t_star_rule=(0.1, 0.02, 0.4)).resolve(model).t_star_rule == (0.1, 0.02, 0.4)
    with pytest.raises(ValueError, match="1..49"):           # T is the model's
        Settings(t_star=50).resolve(model)


@pytest.mark.parametrize("kwargs, match", [
    ({"target": 10}, "target"),
    ({"target": -1}, "target"),
    ({"target": torch.tensor([1, 2])}, "shape"),
    ({"target": 1, "settings": Settings(t_star=50)}, "t_star"),
    ({"target": 1, "settings": {"t_star": 20}}, "settings must be"),
    ({"target": 1, "guidance": "nope"}, "guidance"),
    ({"target": 1, "generator": 0}, "generator"),
])
def test_bad_input_is_refused(images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        counterfactual(make(), images, progress=False, **{"settings": Settings(t_star=20), **kwargs})


def test_bad_images_are_refused(images):
    model = make()
    with pytest.raises(ValueError, match="shape"):
        counterfactual(model, images[0], 1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        counterfactual(model, images * 3, 1, progress=False)
    with pytest.raises(ValueError, match="same shape"):
        difference_map(images, images[:2])


def test_targets_helpers():
    labels = torch.arange(10).repeat(20)
    targets = other_class_targets(labels, 10, torch.Generator().manual_seed(0))
    assert (targets != labels).all() and set(targets.tolist()) == set(range(10))
    model = make()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    runner = runner_up_targets(model, x)
    with torch.no_grad():
        logits = model.classify(x)
    assert torch.equal(runner, logits.argsort(1, descending=True)[:, 1])
    wanted = torch.tensor([3, 3, 7])
    real_labels = torch.tensor([3, 7, 3, 3, 7, 1])
    idx = class_matched_indices(real_labels, wanted, torch.Generator().manual_seed(0),
                                exclude=torch.tensor([0]))
    assert sorted(real_labels[idx].tolist()) == [3, 3, 7] and 0 not in idx.tolist()
    with pytest.raises(ValueError, match="class 1"):
        class_matched_indices(real_labels, torch.tensor([1, 1]), torch.Generator())


def test_gallery(images, tmp_path):
    fig = counterfactual_gallery(images, images.flip(0), ["a", "b", "c"], path=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 0 and len(fig.axes) == 3 * 3 + 1  # + colour bar
    with pytest.raises(ValueError, match="title"):
        counterfactual_gallery(images, images, ["a"])


def test_explain_cli(tmp_path, capsys):
    """The shipped joint model explains two test images; the gallery PNG is written."""
    out = tmp_path / "explain.png"
    assert main(["explain", "--image-index", "0", "1", "--target", "sneaker", "--ddim-steps", "3",
                 "--t-star", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 0 and "test image 1" in text and "flipped to the target" in text
    assert main(["explain", "--image-index", "0", "--target", "hat", "--out", str(out)]) == 2
    assert "unknown class" in capsys.readouterr().err
    # the route and the pull towards the original are flags, checked like the API's arguments
    assert main(["explain", "--image-index", "0", "--target", "0", "--ddim-steps", "2", "--t-star", "50",
                 "--start", "noise", "--keep", "0.3", "--out", str(out)]) == 0
    assert "start noise, keep 0.3" in capsys.readouterr().out
    assert main(["explain", "--image-index", "0", "--target", "0", "--keep", "2",
                 "--out", str(out)]) == 2
    assert "keep must be" in capsys.readouterr().err
    assert main(["explain", "--image-index", "0", "--target", "10", "--out", str(out)]) == 2
    assert "0..9" in capsys.readouterr().err


def test_evaluate_cli(tmp_path, capsys):
    out = tmp_path / "cf.json"
    assert main(["evaluate", "counterfactual", "--n", "4", "--t-star", "50", "100", "--ddim-steps", "2",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["t_star"] for r in report["results"]] == [50, 100]
    flips = [r["flip_rate"] * 4 for r in report["results"]]
    assert all(abs(f - round(f)) < 1e-9 for f in flips)  # a share of the 4 images
    l1 = [r["l1"] for r in report["results"]]
    assert 0 < l1[0] < l1[1]  # more noise, more change (same seed)


def test_counterfactual_defaults_fill_only_what_guidance_leaves_open():
    from jdm.counterfactual import (DEFAULT_COUNTERFACTUAL_SCALES, DEFAULT_INVERSION_ETA,
                                    counterfactual_guidance)
    from jdm.sampling import DEFAULT_CONDITIONAL_ETA, DEFAULT_SCALES
    model, plain = make(), make()
    plain.noise_aware = False
    g = counterfactual_guidance(model, None, start="inversion")
    assert g.kind == "classifier" and g.scale == DEFAULT_COUNTERFACTUAL_SCALES["classifier"]
    assert g.eta == DEFAULT_INVERSION_ETA
    assert counterfactual_guidance(model, None, "noise").eta == DEFAULT_CONDITIONAL_ETA
    given = counterfactual_guidance(model, Guidance("classifier", scale=7.0, eta=0.2), "inversion")
    assert (given.scale, given.eta) == (7.0, 0.2)
    paper = counterfactual_guidance(model, "representation", "inversion")
    assert paper.scale == DEFAULT_COUNTERFACTUAL_SCALES["representation"] != DEFAULT_SCALES["representation"]
    assert (paper.levels, paper.gradient, paper.direction) == ("all", "total", "descent")
    x0 = counterfactual_guidance(model, "representation-x0", "inversion")  # no counterfactual scale of its own
    assert x0.scale == DEFAULT_SCALES["representation-x0"]
    # "auto" picks the counterfactual's own default, whatever sampling's "auto" picks
    assert counterfactual_guidance(model, "auto", "noise").kind == "classifier"
    assert counterfactual_guidance(plain, "auto", "noise").kind == "representation"
    # a checkpoint's own scales (model.defaults, from load_pretrained) replace the generic ones
    model.defaults = {"counterfactual_scales": {"classifier": 42.0}}
    assert counterfactual_guidance(model, None).scale == 42.0
    assert counterfactual_guidance(model, "representation").scale == DEFAULT_COUNTERFACTUAL_SCALES["representation"]
    assert counterfactual_guidance(model, Guidance(scale=7.0)).scale == 7.0


def test_counterfactual_uses_those_defaults(images):
    """counterfactual(guidance=None) is counterfactual with the filled-in Guidance."""
    from jdm.counterfactual import counterfactual_guidance
    model = make()
    run = lambda guidance: counterfactual(model, images, 3, Settings(t_star=20, steps=4),  # noqa: E731
                                          guidance, progress=False,
                                          generator=torch.Generator().manual_seed(0))
    default = run(None)
    assert default.guidance == counterfactual_guidance(model, None, "inversion")
    assert torch.equal(default.images, run(counterfactual_guidance(model, None, "inversion")).images)
    assert not torch.equal(default.images, run(Guidance("classifier", eta=0.0)).images)


def test_fade_small_changes():
    from jdm.counterfactual import fade_small_changes
    delta = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.2, 0.3])
    faded = fade_small_changes(delta, 0.2)
    # |Δ| >= 0.2 kept whole, below it scaled by |Δ| / 0.2 (sign kept)
    torch.testing.assert_close(faded, torch.tensor([-0.5, -0.05, 0.0, 0.0125, 0.2, 0.3]))
    assert (faded.abs() <= delta.abs()).all()


def test_min_change_fades_the_finished_counterfactual(images):
    from jdm.counterfactual import fade_small_changes
    model = make()
    run = lambda m: counterfactual(model, images, 2,  # noqa: E731
                                   Settings(t_star=30, steps=5, min_change=m),
                                   Guidance("classifier", scale=20.0, eta=0.0),
                                   progress=False).images
    raw, faded = run(0.0), run(0.3)
    torch.testing.assert_close(faded, images + fade_small_changes(raw - images, 0.3))
    assert (faded - images).abs().mean() < (raw - images).abs().mean()


def test_auto_t_star_grows_with_the_models_doubt(images):
    from jdm.counterfactual import AUTO_T_STAR, auto_t_star
    model = make()
    T = model.schedule.num_steps
    with torch.no_grad():
        log_p = model.classify(images).log_softmax(1)
    ranked = log_p.argsort(1, descending=True)   # per image: most likely class first
    base, per_nat, most = AUTO_T_STAR
    own = auto_t_star(model, images, ranked[:, 0])       # the predicted class: no doubt
    assert own.tolist() == [round(T * base)] * len(images)
    unit = T / 40
    for k in range(1, 10):
        t = auto_t_star(model, images, ranked[:, k])
        doubt = log_p.gather(1, ranked[:, :1]) - log_p.gather(1, ranked[:, k:k + 1])
        want = (T * (base + per_nat * doubt.squeeze(1)).clamp(max=most) / unit).round() * unit
        assert t.tolist() == want.round().long().clamp(1, T - 1).tolist()
        assert (t >= own).all()
    far = auto_t_star(model, images, ranked[:, 9], rule=(0.1, 10.0, 0.4))
    assert far.tolist() == [20] * len(images)              # capped at most · T
    with pytest.raises(ValueError, match="target"):         # checked, not an index error
        auto_t_star(model, images, 10)


def far_and_near(model, images):
    """Targets the model's head ranks first (no doubt) for image 0 and last for the others, and a
    rule under which they get different t* (10 and 30 of T = 50)."""
    with torch.no_grad():
        ranked = model.classify(images).argsort(1, descending=True)
    target = torch.cat([ranked[:1, 0], ranked[1:, 9]])
    return target, (0.2, 10.0, 0.6)


def test_images_that_share_a_t_star_run_as_their_own_batch(images):
    """t* auto with two values: each image gets what an int t_star gives its group alone."""
    model = make()
    target, rule = far_and_near(model, images)
    kw = dict(guidance=Guidance("classifier", scale=5.0, eta=0.0), progress=False)
    mixed = counterfactual(model, images, target, Settings(steps=4, t_star_rule=rule), **kw)
    assert mixed.t_star.tolist() == [10, 30, 30] and mixed.settings.t_star_rule == rule
    near = counterfactual(model, images[:1], target[:1], Settings(t_star=10, steps=4), **kw)
    far = counterfactual(model, images[1:], target[1:], Settings(t_star=30, steps=4), **kw)
    torch.testing.assert_close(mixed.images[:1], near.images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.images[1:], far.images, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one t\\*"):
        counterfactual(model, images, target, Settings(steps=4, t_star_rule=rule),
                       return_trajectory=True, **kw)


def test_auto_is_the_default_and_uses_the_models_rule(images):
    from jdm.counterfactual import AUTO_T_STAR, DEFAULT_T_STAR, auto_t_star
    model = make()
    assert DEFAULT_T_STAR == "auto" and Settings().t_star == "auto"
    target = torch.tensor([1, 5, 9])
    cf = counterfactual(model, images, target, Settings(steps=2), progress=False)
    assert torch.equal(cf.t_star, auto_t_star(model, images, target, rule=AUTO_T_STAR))
    assert cf.settings.t_star_rule == AUTO_T_STAR
    far, rule = far_and_near(model, images)
    model.defaults = {"auto_t_star": list(rule)}            # as load_pretrained attaches it
    assert counterfactual(model, images, far, Settings(steps=2), progress=False).t_star.tolist() \
        == [10, 30, 30] == auto_t_star(model, images, far).tolist()


def test_evaluate_counterfactuals_reads_t_star_and_guidance_from_the_counterfactuals(images):
    """evaluate_counterfactuals reports the t* each image got (across batch boundaries) and the
    guidance and settings the counterfactuals ran with, instead of resolving them again."""
    from jdm.counterfactual import auto_t_star, counterfactual_guidance
    from jdm.evaluate import evaluate_counterfactuals

    class Judge:  # stands in for the evaluator: says class 0, embeds the first pixels
        def predict(self, x):
            return torch.zeros(len(x), dtype=torch.long)

        def embed(self, x):
            return x.flatten(1)[:, :4]

    model = make()
    x = torch.cat([images, images.flip(-1)])
    labels, targets = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 4, 5, 6])
    real, real_labels = torch.rand(60, 1, 28, 28) * 2 - 1, torch.arange(60) % 10
    run = lambda settings: evaluate_counterfactuals(  # noqa: E731
        model, Judge(), x, labels, targets, real, real_labels, settings=settings,
        guidance=Guidance("classifier", eta=0.0), batch_size=4, progress=False)
    auto = run(Settings(steps=3))
    per_image = auto_t_star(model, x, targets)
    assert torch.equal(auto["t_star"], per_image)
    assert auto["t_star_mean"] == pytest.approx(per_image.float().mean().item())
    assert auto["guidance"] == counterfactual_guidance(model, Guidance("classifier", eta=0.0))
    assert auto["settings"] == Settings(steps=3).resolve(model)
    first = counterfactual(model, x[:4], targets[:4], Settings(steps=3),
                           Guidance("classifier", eta=0.0), progress=False)
    torch.testing.assert_close(auto["counterfactuals"][:4], first.images)
    assert run(Settings(t_star=10, steps=3))["t_star_mean"] == 10.0
    # the judge's verdicts come back too (the judge says 0; label 0 is kept, target 1 never flips)
    assert torch.equal(auto["predictions"], torch.zeros(6, dtype=torch.long))
    assert auto["kept_rate"] == pytest.approx(1 / 6) and auto["flip_rate"] == 0.0
