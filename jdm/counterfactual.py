"""Visual counterfactual explanations with a joint diffusion model (Deja et al. 2023, Sec. 3.3).

"What would this image look like if it were a T-shirt instead of a shirt?" Take a real image x_0
part of the way into the diffusion, to an intermediate step t*, then run the *conditional* reverse
process from there towards the target class. Two routes to t*:

    inversion (default):  x_{t*} = DDIM run forwards from x_0 with the model's own ε̂ (η = 0),
    noise (the paper's):  x_{t*} = √ᾱ_{t*} · x_0 + √(1 − ᾱ_{t*}) · ε,  ε fresh noise.

Fresh noise redraws fine detail even without guidance; after inversion the unguided reverse
process returns the image, so what changes is the guidance's doing (``docs/defaults.md``). t* is
the knob: small t* keeps the counterfactual close to x_0 but may not reach the target class; large
t* flips the class but forgets x_0. By default each image gets its own t* (``auto_t_star``: further
for a target the model finds less likely), and changes too faint to matter fade at the end
(``fade_small_changes``). How the route, the sampler and t* are chosen is one frozen
``CounterfactualSettings`` beside the sampler's ``Guidance``; the answer is a ``Counterfactuals``
(the images, the t* each one got, the guidance and settings used). A checkpoint may carry its own
tuned t* rule and guidance scales (``model.defaults``, attached by ``jdm.load_pretrained``); any
other model gets the generic constants below. ``docs/counterfactuals.md``
(``benchmarks/bench_counterfactuals.py``) and notebook 07 measure the flip/closeness frontier.

Copy this file with ``sampling.py``, ``schedule.py``, ``representation.py`` and ``inputs.py`` and
it works (torch and tqdm only); the model needs ``unet`` (with ``encode``/``decode``), ``head``,
``schedule``, ``num_classes`` and ``image_shape`` (a ``JointDiffusion``; ``tests/test_copyable.py``
builds one from ``unet.py`` and ``classifier.py`` alone).

    cf = counterfactual(model, x, target=0)          # t* per image, small changes faded
    cf.images, cf.t_star, cf.guidance                # (N, C, H, W), (N,), the Guidance used
    cf = counterfactual(model, x, 0, CounterfactualSettings(t_star=275, min_change=0.0))  # one t*, raw
    cf = counterfactual(model, x, 0, CounterfactualSettings(start="noise"),
                        generator=torch.Generator().manual_seed(0))
    cf = counterfactual(model, x, 0, guidance=Guidance("representation"))   # the paper's sampler
    diff = difference_map(x, cf.images)              # (N, H, W), signed
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

if __package__:  # inside jdm (or any package it is copied into)
    from .inputs import check_generator, check_images
    from .sampling import (DEFAULT_CONDITIONAL_ETA, Guidance, check_targets, eval_mode, guided_eps,
                           sample_loop)
else:  # copied next to sampling.py, schedule.py, representation.py and inputs.py
    from inputs import check_generator, check_images
    from sampling import (DEFAULT_CONDITIONAL_ETA, Guidance, check_targets, eval_mode, guided_eps,
                          sample_loop)

__all__ = ["counterfactual", "CounterfactualSettings", "Counterfactuals", "counterfactual_guidance",
           "ddim_invert", "difference_map", "auto_t_star", "fade_small_changes", "AUTO_T_STAR",
           "DEFAULT_MIN_CHANGE", "DEFAULT_COUNTERFACTUAL_KIND", "DEFAULT_T_STAR",
           "DEFAULT_COUNTERFACTUAL_STEPS", "DEFAULT_COUNTERFACTUAL_SCALES", "DEFAULT_INVERSION_ETA",
           "DEFAULT_START", "STARTS", "METHODS"]

STARTS = ("inversion", "noise")
METHODS = ("ddim", "ddpm")

DEFAULT_START = "inversion"
"""How x reaches t*: inversion, so that the unguided way back returns x (``docs/defaults.md``)."""

DEFAULT_T_STAR = "auto"
"""Each image its own t* (``auto_t_star``): one t* cannot serve a near target and a far one."""

AUTO_T_STAR = (0.15, 0.025, 0.5)
"""``auto_t_star``'s generic rule (base, per_nat, most), fitted on the shipped joint models
(``docs/defaults.md``); a checkpoint's ``model.defaults["auto_t_star"]`` replaces it."""

DEFAULT_MIN_CHANGE = 0.3
"""Changes below 0.3 ([-1, 1] units) fade: closer at a small cost in flips (``docs/defaults.md``)."""

DEFAULT_INVERSION_ETA = 0.5
"""DDIM η after inversion when ``Guidance.eta`` is None: midway on the flip/closeness curve
(``docs/defaults.md``); after fresh noise: ``DEFAULT_CONDITIONAL_ETA``, as for samples."""

DEFAULT_COUNTERFACTUAL_KIND = "classifier"
"""``guidance="auto"`` for a noise-aware head: it flips more at the same closeness
(``docs/defaults.md``); a head that never saw noise gets the paper's sampler."""

DEFAULT_COUNTERFACTUAL_SCALES = {"classifier": 300.0, "representation": 300.0}
"""Generic scales at a counterfactual's small t*, which needs a stronger push than sampling
(``docs/defaults.md``); a checkpoint's ``model.defaults["counterfactual_scales"]`` replaces them."""

DEFAULT_COUNTERFACTUAL_STEPS = 20
"""DDIM steps over [0, t*] when ``steps`` is None: 20 over t* ≈ 300 are as far apart as DDIM-50's."""


def _model_default(model, key: str, generic):
    """A setting tuned for this checkpoint (``model.defaults``, from ``jdm.load_pretrained``), else
    the generic one: a copier's own model never inherits another model's tuning."""
    return getattr(model, "defaults", {}).get(key, generic)


@dataclass(frozen=True)
class CounterfactualSettings:
    """How a counterfactual is made, beside the sampler's ``Guidance``: one object for
    ``counterfactual``, ``jdm.evaluate`` and the CLI (flags generated from these fields). Checked
    once, here; ``resolve(model)`` fills in what depends on the model.

    Attributes:
        t_star: the step x is taken to, an int in 1..T−1 (larger: more change), or ``"auto"``: each
            image its own (``auto_t_star`` with ``t_star_rule``). Images sharing a t* run as a batch.
        start: ``"inversion"`` (deterministic DDIM inversion, ``ddim_invert``) or ``"noise"``
            (the forward process with fresh noise, as in the paper).
        keep: 0 … 1: each reverse step pulls the clean image the guided ε̂ implies this fraction
            of the way to x (0: no pull).
        min_change: a pixel that changed by |Δ| < min_change keeps only |Δ| / min_change of its
            change (``fade_small_changes``; [-1, 1] units, 0: off).
        method, steps: ``"ddim"`` with ``steps`` over [0, t*] (None: ``DEFAULT_COUNTERFACTUAL_STEPS``)
            or ancestral ``"ddpm"`` over every step (``start="noise"`` only); inversion uses the same.
        t_star_rule: ``auto_t_star``'s (base, per_nat, most); None: the model's own
            (``model.defaults["auto_t_star"]``), else ``AUTO_T_STAR``.
    """

    t_star: int | str = field(default=DEFAULT_T_STAR, metadata={
        "help": "the step the images are taken to (of T; larger changes more), or 'auto': each "
                "image its own, further for a target the model finds less likely "
                "(jdm.counterfactual.auto_t_star)"})
    start: str = field(default=DEFAULT_START, metadata={
        "choices": STARTS,
        "help": "how the images reach t*: DDIM inversion (deterministic; the unguided round trip "
                "returns the image) or fresh noise (the paper's)"})
    keep: float = field(default=0.0, metadata={
        "help": "pull each step's clean-image estimate this fraction of the way to the original, "
                "0 … 1"})
    min_change: float = field(default=DEFAULT_MIN_CHANGE, metadata={
        "help": "fade out pixel changes smaller than this ([-1, 1] units; 0: off)"})
    method: str = field(default="ddim", metadata={
        "choices": METHODS,
        "help": "reverse process: DDIM over [0, t*], or ancestral DDPM over every step "
                "(--start noise only)"})
    steps: int | None = field(default=None, metadata={
        "flag": "--ddim-steps",
        "help": "DDIM steps over [0, t*] (default: jdm.counterfactual.DEFAULT_COUNTERFACTUAL_STEPS; "
                "for `evaluate conditional`, over [0, T] with default "
                "jdm.sampling.DEFAULT_DDIM_STEPS)"})
    t_star_rule: tuple[float, float, float] | None = field(default=None, metadata={
        "nargs": 3,
        "help": "t* auto: t* = T·min(base + per_nat·doubt, most), doubt in nats (default: the "
                "checkpoint's own rule, else jdm.counterfactual.AUTO_T_STAR)"})

    def __post_init__(self) -> None:
        t = self.t_star
        if not (t == "auto" if isinstance(t, str) else
                isinstance(t, int) and not isinstance(t, bool) and t >= 1):
            raise ValueError(f"t_star must be 'auto' or an int >= 1, got {t!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        for name, high in (("keep", 1.0), ("min_change", 2.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value <= high:  # also NaN
                raise ValueError(f"{name} must be a number in [0, {high:g}], got {value!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.start == "inversion" and self.method != "ddim":
            raise ValueError("DDIM inversion needs method='ddim' (ancestral DDPM is not "
                             "invertible); use start='noise' for ancestral sampling")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1 or self.method == "ddpm"):
            raise ValueError(f"steps must be an int >= 1 for method='ddim', or None (ancestral DDPM "
                             f"visits every step), got {self.steps!r}")
        if self.t_star_rule is not None:
            rule = tuple(self.t_star_rule)
            if len(rule) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v) and v >= 0 for v in rule):
                raise ValueError(f"t_star_rule must be three finite numbers >= 0 (base, per_nat, "
                                 f"most), got {self.t_star_rule!r}")
            object.__setattr__(self, "t_star_rule", tuple(float(v) for v in rule))  # a list: hashable

    def resolve(self, model) -> "CounterfactualSettings":
        """These settings for ``model``: ``t_star`` checked against its T, ``steps`` and (for
        ``"auto"``) ``t_star_rule`` filled in."""
        T = model.schedule.num_steps
        if self.t_star != "auto" and self.t_star >= T:
            raise ValueError(f"t_star must lie in 1..{T - 1}, got {self.t_star}")
        rule = self.t_star_rule
        if rule is None and self.t_star == "auto":
            rule = _model_default(model, "auto_t_star", AUTO_T_STAR)
        steps = DEFAULT_COUNTERFACTUAL_STEPS if self.method == "ddim" and self.steps is None else self.steps
        return replace(self, steps=steps, t_star_rule=rule)


@dataclass(frozen=True, eq=False)
class Counterfactuals:
    """What ``counterfactual`` made, and how.

    Attributes:
        images: (N, C, H, W) counterfactuals in [-1, 1], on the model's device.
        t_star: (N,) long on the CPU: the step each image was taken to.
        guidance: the resolved ``Guidance`` the reverse process ran with.
        settings: the resolved ``CounterfactualSettings`` (steps and t* rule filled in).
        trajectory: with ``return_trajectory``, [x_{t*}, …, x_0] (each (N, C, H, W), on the CPU;
            the last before fading), else None.
    """

    images: Tensor
    t_star: Tensor
    guidance: Guidance
    settings: CounterfactualSettings
    trajectory: list[Tensor] | None = None


def counterfactual(model, x: Tensor, target: Tensor | int,
                   settings: CounterfactualSettings | None = None,
                   guidance: Guidance | str | None = None, *,
                   generator: torch.Generator | None = None, progress: bool = True,
                   return_trajectory: bool = False) -> Counterfactuals:
    """Counterfactuals of ``x`` towards ``target``: bring x to t*, then the guided reverse process.

    Args:
        model: a ``JointDiffusion``.
        x: (N, C, H, W) real images in [-1, 1], on any device.
        target: the class to move to: an int, or (N,) class indices.
        settings: t*, the route to it, hold, fading and steps (None: ``CounterfactualSettings()``).
        guidance: the conditional sampler, as for ``JointDiffusion.sample`` (a ``Guidance``, a kind
            name, or None); fields left None take the counterfactual defaults
            (``counterfactual_guidance``). Its ``eta`` is the reverse process's DDIM noise.
        generator: draws the forward-process noise (for the whole batch first) and the reverse
            process's: same generator state and batch, same counterfactuals.
        progress: show a progress bar.
        return_trajectory: also keep [x_{t*}, …, x_0]; needs one t* for the whole batch.

    Returns:
        a ``Counterfactuals``: the images, the t* each got, the guidance and settings used.
    """
    check_images(x, model.image_shape, clean=True, name="x")  # [0, 1] images warn
    device = next(model.parameters()).device
    check_generator(generator, device)
    if settings is None:
        settings = CounterfactualSettings()
    elif not isinstance(settings, CounterfactualSettings):
        raise ValueError(f"settings must be a jdm.counterfactual.CounterfactualSettings or None, "
                         f"got {type(settings).__name__}")
    settings = settings.resolve(model)
    g = counterfactual_guidance(model, guidance, settings.start)
    n = x.shape[0]
    x = x.to(device).float()
    target = check_targets(target, n, model.num_classes, device)
    if settings.t_star == "auto":
        t_stars = auto_t_star(model, x, target, rule=settings.t_star_rule).cpu()
    else:
        t_stars = torch.full((n,), settings.t_star, dtype=torch.long)
    groups = t_stars.unique().tolist()
    if return_trajectory and len(groups) > 1:
        raise ValueError(f"return_trajectory needs one t* for the whole batch, got {len(groups)} "
                         f"different ones; pass an int t_star")
    noise = None
    if settings.start == "noise":  # drawn for the whole batch on the generator's device
        noise = torch.randn(x.shape, generator=generator,
                            device=generator.device if generator is not None else "cpu").to(device)

    x_cf, trajectory = torch.empty_like(x), None
    with tqdm(total=n, desc="counterfactuals", unit="image", disable=not progress or len(groups) == 1,
              leave=False) as bar:
        for value in groups:
            idx = torch.nonzero(t_stars == value).squeeze(1)
            out = _from_t_star(model, x[idx], target[idx], value, None if noise is None else noise[idx],
                               settings, g, generator, progress and len(groups) == 1,
                               return_trajectory)
            if return_trajectory:
                out, trajectory = out
            x_cf[idx] = out
            bar.update(len(idx))
    if settings.min_change > 0:
        x_cf = x + fade_small_changes(x_cf - x, settings.min_change)
    return Counterfactuals(x_cf, t_stars, g, settings, trajectory)


def _from_t_star(model, x, target, t_star: int, noise, settings: CounterfactualSettings,
                 g: Guidance, generator, progress: bool, return_trajectory: bool):
    """The counterfactuals of a batch that shares one t*: reach it by ``settings.start``, then the
    guided reverse process (resolved ``settings`` and ``g``)."""
    eps_fn = guided_eps(model, target, x.shape[0], g)
    if settings.keep > 0:
        eps_fn = _held_near(eps_fn, model.schedule, x, settings.keep)
    with eval_mode(model), torch.no_grad():
        if settings.start == "inversion":
            x_t = ddim_invert(model, x, t_star, steps=settings.steps, progress=progress)
        else:
            t = torch.full((x.shape[0],), t_star, dtype=torch.long, device=x.device)
            x_t = model.schedule.q_sample(x, t, noise)
        return sample_loop(eps_fn, model.schedule, tuple(x.shape), method=settings.method,
                           steps=settings.steps, eta=g.eta, generator=generator, device=x.device,
                           progress=progress, x_T=x_t, start_step=t_star,
                           return_trajectory=return_trajectory)


@torch.no_grad()
def auto_t_star(model, x: Tensor, target: Tensor | int, *,
                rule: tuple[float, float, float] | None = None) -> Tensor:
    """Each image's own t*: further for a target the model finds less likely. (N,) long.

    The model's head says how far the target is: the doubt d = log p(ŷ | x) − log p(target | x)
    ≥ 0 in nats (ŷ the class it predicts; 0 when it already predicts the target). With ``rule`` =
    (base, per_nat, most) as fractions of T,

        t* = T · min(base + per_nat · d, most),   rounded to a multiple of T/40, in 1..T−1.

    A runner-up the model nearly chose needs little noise to flip; a class it rules out needs
    much more. Rounding keeps the batch in a few groups that share a t*.

    Args: x (N, C, H, W) clean images in [-1, 1]; target an int or (N,) class indices (checked
    as ``counterfactual`` checks them); rule None: the model's own (``model.defaults``), else
    ``AUTO_T_STAR``.
    """
    base, per_nat, most = _model_default(model, "auto_t_star", AUTO_T_STAR) if rule is None else rule
    T = model.schedule.num_steps
    target = check_targets(target, x.shape[0], model.num_classes, x.device)
    clean = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    with eval_mode(model):  # the head on clean images, as JointDiffusion.classify(x)
        log_p = model.head(model.unet.encode(x, clean)).log_softmax(1)
    doubt = log_p.max(1).values - log_p.gather(1, target[:, None]).squeeze(1)
    unit = max(T / 40, 1.0)
    t_star = torch.round(T * (base + per_nat * doubt).clamp(max=most) / unit) * unit
    return t_star.round().long().clamp(1, T - 1)


def fade_small_changes(delta: Tensor, min_change: float) -> Tensor:
    """Δ · min(1, |Δ| / min_change), element by element: a change well below ``min_change`` all
    but vanishes, one above it is kept whole. (Any shape; ``min_change`` > 0.)

    The reverse process redraws a little of every pixel even where the class does not need it
    (the unguided round trip of notebook 07); these faint changes are most of the pixels and a
    good part of mean |Δ|, while the change that flips the class is large where it happens.
    """
    return delta * (delta.abs() / min_change).clamp(max=1.0)


def counterfactual_guidance(model, guidance: Guidance | str | None = None,
                            start: str = DEFAULT_START) -> Guidance:
    """The ``Guidance`` a counterfactual of ``model`` runs with: ``guidance`` resolved, with the
    counterfactual defaults where it leaves a field None: ``DEFAULT_COUNTERFACTUAL_KIND`` for "auto"
    (a noise-aware head), the model's own scales (``model.defaults["counterfactual_scales"]``,
    else ``DEFAULT_COUNTERFACTUAL_SCALES``), η ``DEFAULT_INVERSION_ETA`` after inversion and
    ``DEFAULT_CONDITIONAL_ETA`` after fresh noise. The one place that resolves it."""
    g = Guidance.of(guidance)
    if g.kind == "auto":  # counterfactuals have their own default sampler
        noise_aware = bool(getattr(model, "noise_aware", False))
        g = replace(g, kind=DEFAULT_COUNTERFACTUAL_KIND if noise_aware else "representation")
    scales = {**DEFAULT_COUNTERFACTUAL_SCALES,
              **_model_default(model, "counterfactual_scales", {})}
    if g.scale is None and g.kind in scales:
        g = replace(g, scale=float(scales[g.kind]))
    if g.eta is None:
        g = replace(g, eta=DEFAULT_INVERSION_ETA if start == "inversion" else DEFAULT_CONDITIONAL_ETA)
    return g.resolve()


@torch.no_grad()
def ddim_invert(model, x: Tensor, t_star: int, *, steps: int | None = None,
                progress: bool = False) -> Tensor:
    """Deterministic DDIM inversion (Song et al. 2021, Sec. 4.3): x_0 → x_{t*} with the model's ε̂.

    DDIM with η = 0 is an ODE; run it forwards over the timesteps the reverse process will visit
    (``schedule.timesteps(steps, start=t_star)`` in ascending order), using ε̂ at the current point
    for each step up:

        x̂_0 = (x_s − √(1 − ᾱ_s) ε̂(x_s, s)) / √ᾱ_s,    x_{s'} = √ᾱ_{s'} x̂_0 + √(1 − ᾱ_{s'}) ε̂(x_s, s).

    Unlike fresh noise, x_{t*} keeps what the model needs to redraw *this* image, so the unguided
    reverse process returns close to x (notebook 07 measures how close).

    Args: x (N, C, H, W) in [-1, 1]; t_star in 1..T−1; steps as for DDIM (None: every step).
    Returns: x_{t*} (N, C, H, W).
    """
    schedule = model.schedule
    ascending = schedule.timesteps(None if steps is None else min(steps, t_star + 1),
                                   start=t_star)[::-1]
    n = x.shape[0]
    x_s = x
    previous = None  # the clean image sits at "s = −1": its first step uses ε̂ at s = 0
    for s in tqdm(ascending, desc="ddim inversion", disable=not progress, leave=False):
        t = torch.full((n,), s if previous is None else previous, dtype=torch.long, device=x.device)
        eps = model.unet(x_s, t)
        x0 = x_s if previous is None else schedule.predict_x0(x_s, t, eps)
        ab = schedule.alpha_bars.to(x.device)[s]
        x_s = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        previous = s
    return x_s


def _held_near(eps_fn, schedule, x0: Tensor, keep: float):
    """ε̂ whose implied clean image is pulled a fraction ``keep`` of the way to ``x0``.

    x̂_0 ← (1 − keep)·x̂_0 + keep·x0 is, in ε form, ε̂ ← (1 − keep)·ε̂ + keep·ε(x_t, x0), the noise
    that would lead from x_t exactly to x0 — a distance term towards the original, as DiME-style
    explainers use, at no extra network cost.
    """
    def eps(x_t: Tensor, t: Tensor) -> Tensor:
        guided = eps_fn(x_t, t)
        return (1 - keep) * guided + keep * schedule.predict_eps(x_t, t, x0)
    return eps


def difference_map(x: Tensor, x_cf: Tensor) -> Tensor:
    """What the counterfactual changed: x_cf − x averaged over channels, (N, H, W), in [-2, 2].

    Positive where the counterfactual is brighter. Show it with a diverging colormap centred at 0
    (``jdm.viz.counterfactual_gallery`` does).
    """
    if x.shape != x_cf.shape or x.dim() != 4:
        raise ValueError(f"x and x_cf must be image batches (N, C, H, W) of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(x_cf.shape)}")
    return (x_cf.float() - x.float().to(x_cf.device)).mean(dim=1)
