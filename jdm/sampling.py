"""The reverse process: ancestral DDPM and DDIM sampling loops, unconditional and conditional.

A sampler only needs a noise predictor ``eps_fn(x_t, t) -> ε̂`` and a ``NoiseSchedule``, so one
loop serves the plain DDPM, the joint model and every conditional sampler; they differ only in
how they compute ε̂. How a conditional sampler steers is one frozen ``Guidance`` object, used by
``JointDiffusion.sample``, ``jdm.counterfactual``, ``jdm.evaluate`` and the CLI alike:

* ``"representation"`` — **the paper's sampler** (Deja et al. 2023, Sec. 3.2, "conditional
  sampling with optimised generations"; the authors' ``image_sample_with_classifier.py``): at each
  reverse step encode z_t = e_ν(x_t, t) (the bottleneck and every skip), apply the classifier head
  to z_t itself, step z_t ← z_t + γ ∇_{z_t} log p_ω(y | z_t), decode the moved z_t to ε̂.
* ``"representation-x0"`` — a jdm variant of it: the head judges the clean image x̂₀ that the
  moved features imply (decode → x̂₀ → encode at t = 0 → head), so the gradient reaches z through
  the decoder.
* ``"classifier"`` — classifier guidance (Dhariwal & Nichol 2021, Algorithm 2, ε form), the
  baseline: ε̂' = ε̂ − s · √(1 − ᾱ_t) · ∇_{x_t} log p(y | x_t, t) with the joint model's head.

Measured on the shipped joint model (which sampler is the default and why): ``DEFAULT_GUIDANCE``.

Copy this file next to ``schedule.py`` and it works (torch and tqdm only); the conditional
samplers need a model object with ``unet.encode``/``unet.decode``, ``head``, ``schedule`` and
``num_classes`` (a ``JointDiffusion``, or the few lines of ``tests/test_copyable.py``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

try:
    from .schedule import NoiseSchedule, randn_like
except ImportError:  # copied next to schedule.py, outside the jdm package
    from schedule import NoiseSchedule, randn_like

__all__ = ["EpsFn", "Guidance", "sample_loop", "guided_eps", "representation_guided_eps",
           "representation_x0_guided_eps", "classifier_guided_eps", "check_targets",
           "GUIDANCE_KINDS", "REPRESENTATION_LEVELS", "DEFAULT_SCALES", "DEFAULT_LEVELS",
           "DEFAULT_DDIM_STEPS", "DEFAULT_CONDITIONAL_ETA", "DEFAULT_GUIDANCE"]

GUIDANCE_KINDS = ("representation", "representation-x0", "classifier")
"""The conditional samplers: the paper's (optimised representations), its x̂₀ variant, and
classifier guidance."""

REPRESENTATION_LEVELS = ("all", "lowest")
"""Which encoder features a representation sampler moves: every map (the bottleneck and every
skip, as the paper and the authors' code do) or only those at the lowest resolution."""

DEFAULT_SCALES = {"representation": 1000.0, "representation-x0": 1000.0, "classifier": 100.0}
"""γ (representation samplers) or s (classifier guidance) when ``Guidance.scale`` is None.

Measured on ``joint-fmnist-small`` with the evaluator, DDIM-50, η = 1 (``DEFAULT_GUIDANCE`` has
the table and the command). The paper's γ: the authors' script uses ``sampling_lr`` 1000 with a
summed cross-entropy, as here. Classifier guidance needs a large s because ∇ log p of this small
head is small.
"""

DEFAULT_LEVELS = {"representation": "all", "representation-x0": "lowest"}
"""Which features move when ``Guidance.levels`` is None: every map for the paper's sampler (as
written); the lowest resolution for the x̂₀ variant, where moving the high-resolution skips
draws texture that fools the head more than it changes the class (100 samples, DDIM-20:
0.81 evaluator agreement against 0.68 at best with every map)."""

DEFAULT_DDIM_STEPS = 50
"""DDIM steps when ``steps=None`` (ancestral DDPM always visits every step)."""

DEFAULT_CONDITIONAL_ETA = 1.0
"""DDIM η of conditional sampling when ``Guidance.eta`` is not given (unconditional: η = 0).

Guided deterministic DDIM (η = 0) piles the guidance's small, head-fooling changes up over the
steps; fresh noise at every step (η = 1) washes them out. Evaluator agreement on
``joint-fmnist-small`` (2,250 steps; notebook 06), 100 samples, DDIM-20, η = 0 against η = 1:
x̂₀ variant 0.67 against 0.77, classifier guidance 0.91 against 0.98.
"""

DEFAULT_GUIDANCE = "auto"
"""``Guidance.kind`` when none is given: classifier guidance for a model whose head is noise-aware
(it was trained on noisy features, so it can judge x_t), the paper's sampler otherwise.

Chosen from this table (``docs/samplers.md``; ``python benchmarks/bench_samplers.py --per-class 50
--steps 50 --json docs/samplers.json``): ``joint-fmnist-small``, 500 samples per row (50 a class),
DDIM-50, η = 1, the same seed for every row; agreement with the requested class and FD against 500
class-matched test images, both by the independent evaluator:

    sampler                                   agreement    FD    precision  recall
    unconditional                               0.088     9.5      0.73      0.74
    representation (paper), noise-aware head    0.396    17.5      0.77      0.62
    representation (paper), clean-only head     0.206    33.3      0.75      0.62
    representation-x0 (jdm's variant)           0.778    10.3      0.77      0.69
    classifier guidance (s = 100)               0.970     5.6      0.82      0.49

Only classifier guidance reaches the course's target (agreement >= 0.95 at an FD no worse than
the unconditional samples' + 2). The paper's sampler follows the class far above chance but
weakly on this small CPU-trained model: its head reads pooled feature means, so each step shifts
whole channels by a constant, which the decoder turns into the class only faintly (notebook 06);
with a head that never saw noisy features (the paper's recipe) it halves again. Its γ peaks near
1000 (10 samples a class, DDIM-20: γ = 100 → 0.11, 300 → 0.16, 1000 → 0.30, 3000 → 0.26).
"""

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""A noise predictor: x_t (N, C, H, W), t (N,) → ε̂ (N, C, H, W)."""


@dataclass(frozen=True)
class Guidance:
    """How a conditional sampler steers towards a class: one object for every entry point.

    ``JointDiffusion.sample(labels=…, guidance=…)``, ``jdm.counterfactual(…, guidance=…)``,
    ``jdm.evaluate`` and the CLI (flags generated from these fields) all take it; a plain string
    is short for ``Guidance(kind=…)``. None in a field means its default, defined once above.

    Attributes:
        kind: ``"representation"`` (the paper's), ``"representation-x0"``, ``"classifier"``, or
            ``"auto"``: classifier guidance for a noise-aware head, else the paper's sampler.
        scale: γ (representation samplers) or s (classifier guidance), >= 0 (0: unconditional);
            None: ``DEFAULT_SCALES[kind]``.
        inner_steps: feature updates per reverse step (representation samplers), >= 1.
        levels: ``"all"`` or ``"lowest"`` (representation samplers); None: ``DEFAULT_LEVELS``.
        eta: DDIM η of the conditional reverse process, in [0, 1]; None: the entry point's
            default (``DEFAULT_CONDITIONAL_ETA`` for samples; ``jdm.counterfactual`` uses
            ``DEFAULT_INVERSION_ETA`` after DDIM inversion, whose result fresh noise would wash out).
    """

    kind: str = field(default=DEFAULT_GUIDANCE, metadata={
        "flag": "--guidance", "choices": ("auto", *GUIDANCE_KINDS),
        "help": "conditional sampler: representation = the paper's (optimise the encoder "
                "features z_t with the head applied to z_t); representation-x0 = jdm's variant "
                "(the head judges the x̂₀ the features imply); classifier = classifier guidance; "
                "auto = classifier for a noise-aware head, else representation"})
    scale: float | None = field(default=None, metadata={
        "help": "γ of the representation samplers / s of classifier guidance (default: "
                "jdm.sampling.DEFAULT_SCALES)"})
    inner_steps: int = field(default=1, metadata={
        "help": "representation samplers: feature updates per reverse step"})
    levels: str | None = field(default=None, metadata={
        "choices": REPRESENTATION_LEVELS,
        "help": "representation samplers: move every feature map or only the lowest-resolution "
                "ones (default: jdm.sampling.DEFAULT_LEVELS)"})
    eta: float | None = field(default=None, metadata={
        "help": "DDIM noise of the conditional reverse process, 0 (deterministic) … 1 (default: "
                "jdm.sampling.DEFAULT_CONDITIONAL_ETA for samples; for counterfactuals "
                "jdm.counterfactual.DEFAULT_INVERSION_ETA after DDIM inversion, "
                "DEFAULT_CONDITIONAL_ETA after fresh noise)"})

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *GUIDANCE_KINDS):
            raise ValueError(f"guidance kind must be one of {('auto', *GUIDANCE_KINDS)}, "
                             f"got {self.kind!r}")
        if self.scale is not None and not 0 <= self.scale < float("inf"):  # also NaN, inf
            raise ValueError(f"guidance scale must be a finite number >= 0, got {self.scale}")
        if isinstance(self.inner_steps, bool) or not isinstance(self.inner_steps, int) \
                or self.inner_steps < 1:
            raise ValueError(f"inner_steps must be an int >= 1, got {self.inner_steps!r}")
        if self.levels is not None and self.levels not in REPRESENTATION_LEVELS:
            raise ValueError(f"levels must be one of {REPRESENTATION_LEVELS}, got {self.levels!r}")
        if self.eta is not None and not 0.0 <= self.eta <= 1.0:  # also rejects NaN
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")

    @classmethod
    def of(cls, value: "Guidance | str | None") -> "Guidance":
        """``Guidance`` from a ``Guidance``, a kind name, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, cls):
            return value
        raise ValueError(f"guidance must be a jdm.Guidance, a kind name {GUIDANCE_KINDS} or None, "
                         f"got {type(value).__name__}")

    def resolve(self, noise_aware: bool) -> "Guidance":
        """This guidance with ``kind``, ``scale`` and ``levels`` filled in for a model whose head
        is (or is not) noise-aware."""
        kind = self.kind if self.kind != "auto" else (
            "classifier" if noise_aware else "representation")
        return replace(self, kind=kind,
                       scale=DEFAULT_SCALES[kind] if self.scale is None else float(self.scale),
                       levels=self.levels if self.levels is not None or kind == "classifier"
                       else DEFAULT_LEVELS[kind])


def sample_loop(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    shape: tuple[int, int, int, int],
    *,
    method: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    start_step: int | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Run the reverse process from noise (or from ``x_T``) to images.

    Args:
        eps_fn: noise predictor ε̂(x_t, t).
        schedule: the schedule the predictor was trained with.
        shape: (N, C, H, W) of the batch.
        method: ``"ddpm"`` (ancestral, DDPM Algorithm 2, visits every step from ``start_step``)
            or ``"ddim"`` (Song et al. 2021; ``steps`` evenly spaced timesteps, ``eta`` noise).
        steps: DDIM's number of steps (None: ``DEFAULT_DDIM_STEPS``, at most every step from
            ``start_step``); ancestral DDPM visits every step, so there it must be None.
        eta: DDIM's stochasticity, 0 (deterministic) … 1.
        generator: makes the run reproducible; noise is drawn on its device (a CPU generator
            gives the same images on any device).
        device: where the model runs (default: the schedule's device).
        x_T: the starting point (N, C, H, W); default pure noise. With ``start_step`` it is a
            partly noised image, e.g. for counterfactuals.
        start_step: the timestep x_T is at (default T − 1).
        progress: show a tqdm progress bar.
        return_trajectory: also return the list of intermediate x_t (on the CPU).

    Returns:
        images (N, C, H, W), clamped to [-1, 1]; with ``return_trajectory``, (images, trajectory).
    """
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
    if len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {shape}")
    if method == "ddpm" and steps is not None:
        raise ValueError(f"ancestral DDPM visits every one of the {schedule.num_steps} timesteps; "
                         f"leave steps=None, or use method='ddim' to choose {steps} steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None (the default), got {steps!r}")
    device = torch.device(device) if device is not None else schedule.betas.device
    start = schedule.num_steps - 1 if start_step is None else start_step
    if not 0 <= start < schedule.num_steps:
        raise ValueError(f"start_step must lie in [0, {schedule.num_steps - 1}], got {start}")

    if method == "ddpm":
        timesteps = schedule.timesteps(start=start)
    else:
        wanted = DEFAULT_DDIM_STEPS if steps is None else steps
        timesteps = schedule.timesteps(min(wanted, start + 1), start=start)

    if x_T is None:
        x = randn_like(torch.empty(shape, device=device), generator)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T.to(device)
    trajectory = [x.detach().cpu()] if return_trajectory else []

    n = shape[0]
    for i, step in enumerate(tqdm(timesteps, desc=f"{method} sampling", disable=not progress, leave=False)):
        t = torch.full((n,), step, device=device, dtype=torch.long)
        eps = eps_fn(x, t)
        if method == "ddpm":
            x = schedule.ddpm_step(x, t, eps, generator=generator)
        else:
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            t_prev = torch.full((n,), prev, device=device, dtype=torch.long)
            x = schedule.ddim_step(x, t, t_prev, eps, eta=eta, generator=generator)
        x = x.detach()
        if return_trajectory:
            trajectory.append(x.cpu())
    x = x.clamp(-1, 1)
    return (x, trajectory) if return_trajectory else x


def check_targets(target: Tensor | int, n: int, num_classes: int,
                  device: torch.device | str | None = None) -> Tensor:
    """Turn a target class (an int, or an (n,) integer tensor) into an (n,) long tensor.

    Raises ``ValueError`` for a class outside 0..num_classes−1 or a tensor of the wrong shape or
    dtype: a conditional sampler with a wrong class would silently draw the wrong images.
    """
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise ValueError(f"target must be a class index (int) or an integer tensor of shape ({n},), "
                         f"got {type(target).__name__}")
    if isinstance(target, int):
        target = torch.full((n,), target, dtype=torch.long)
    if target.shape != (n,) or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor of shape ({n},), got "
                         f"{tuple(target.shape)} of dtype {target.dtype}")
    if n and target.device.type != "meta" and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target classes must lie in 0..{num_classes - 1}, got values from "
                         f"{int(target.min())} to {int(target.max())}")
    return target.long().to(device)


def _log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Σ_i log softmax(logits_i)[target_i]: a scalar whose gradient is each example's own."""
    return logits.log_softmax(1).gather(1, target[:, None]).sum()


def _moved(maps: list[Tensor], levels: str) -> list[int]:
    """Indices into [bottleneck, *skips] of the maps a representation sampler moves."""
    lowest = min(m.shape[-1] for m in maps)
    return [i for i, m in enumerate(maps) if levels == "all" or m.shape[-1] == lowest]


def _features(like, maps: list[Tensor]):
    """The encoder's own ``Features`` type (``like``'s) rebuilt from [bottleneck, *skips]."""
    return type(like)(maps[0], list(maps[1:]))


def representation_guided_eps(model, target: Tensor, *, step_size: float = DEFAULT_SCALES["representation"],
                              inner_steps: int = 1, levels: str = "all") -> EpsFn:
    """ε̂ from optimised representations: the paper's sampler (Deja et al. 2023, Sec. 3.2).

    At every reverse step the encoder runs once, z_t = e_ν(x_t, t) (the bottleneck and every
    skip). The classifier head reads z_t *itself* (for a noise-aware head, these are the noisy
    features it was trained on; a head trained only on clean features sees inputs it never saw),
    and ``inner_steps`` times

        z_t ← z_t + γ · ∇_{z_t} log p_ω(target | z_t),

    then ε̂ = d_ψ(z_t, t) goes to the DDPM/DDIM step. Only the features move; the UNet and the head
    stay as trained. The head sees average-pooled maps, so each step shifts every moved channel
    by a constant over its spatial positions; the decoder turns that into the picture.

    Sign: the authors' released script (``image_sample_with_classifier.py``) adds
    ``+ sampling_lr · ∇ CE`` (with CE summed over the batch), i.e. it moves *away* from the target
    as written; jdm ascends log p(target), which ``tests/test_guidance.py`` proves raises the
    target's probability. Their ``sampling_lr`` default, 1000, is this γ.

    Args:
        model: ``unet.encode``/``unet.decode``, ``head``, ``schedule`` (a ``JointDiffusion``), in
            eval mode.
        target: (N,) long, the class of each image in the batch.
        step_size: γ >= 0 (0 gives the unconditional ε̂ exactly).
        inner_steps: feature updates per reverse step (>= 1).
        levels: ``"all"`` (as the paper) or ``"lowest"`` (``REPRESENTATION_LEVELS``).

    Returns:
        ``eps_fn(x_t (N, C, H, W), t (N,)) → ε̂ (N, C, H, W)`` for ``sample_loop``.
    """
    def objective(feats, x_t: Tensor, t: Tensor) -> tuple[Tensor, float]:
        return _log_prob(model.head(feats), target), 1.0  # the head on z_t itself

    return _feature_ascent_eps(model, objective, step_size, inner_steps, levels)


def representation_x0_guided_eps(model, target: Tensor, *,
                                 step_size: float = DEFAULT_SCALES["representation-x0"],
                                 inner_steps: int = 1, levels: str = "lowest") -> EpsFn:
    """ε̂ from optimised representations judged through x̂₀: a jdm variant of the paper's sampler.

    As ``representation_guided_eps``, but the head judges the clean image the moved features
    imply, as it was trained to (clean images, t = 0):

        ε̂ = d_ψ(z, t),   x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t,
        z ← z + γ · √(1−ᾱ_t) · ∇_z log p_ω(target | e_ν(x̂_0, 0)).

    The gradient reaches z through the decoder, so the change is one the decoder knows how to
    draw, and a head that never saw noisy features still judges in distribution. The √(1−ᾱ_t)
    factor, as in classifier guidance, fades the push out as the noise goes. Costs a decoder, an
    encoder and their backward pass per inner step.

    Args and returns as ``representation_guided_eps`` (``levels`` default ``"lowest"``, see
    ``DEFAULT_LEVELS``).
    """
    schedule = model.schedule

    def objective(feats, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        x0 = schedule.predict_x0(x_t, t, model.unet.decode(feats, t))
        log_p = _log_prob(model.head(model.unet.encode(x0, torch.zeros_like(t))), target)
        sigma = (1 - schedule.alpha_bars.to(x_t.device)[t]).sqrt().reshape(-1, 1, 1, 1)
        return log_p, sigma  # the head judges x̂_0 at t = 0; the push fades with the noise

    return _feature_ascent_eps(model, objective, step_size, inner_steps, levels)


def _feature_ascent_eps(model, objective, step_size: float, inner_steps: int, levels: str) -> EpsFn:
    """The representation samplers' shared body: encode x_t once, then ``inner_steps`` times move
    the chosen feature maps up ``objective``'s log-probability, z ← z + γ · weight · ∇_z log p,
    where ``objective(features, x_t, t) -> (log p summed over the batch, weight)``; decode."""
    _check_step(step_size, inner_steps, levels)

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            feats = model.unet.encode(x_t, t)
        z = [feats.bottleneck, *feats.skips]
        moved = _moved(z, levels)
        if step_size > 0:
            with torch.enable_grad():
                for _ in range(inner_steps):
                    z = [m.detach().requires_grad_(i in moved) for i, m in enumerate(z)]
                    log_p, weight = objective(_features(feats, z), x_t, t)
                    grads = torch.autograd.grad(log_p, [z[i] for i in moved])
                    for i, g in zip(moved, grads):
                        z[i] = z[i] + step_size * weight * g  # ascent: towards the target
        with torch.no_grad():
            return model.unet.decode(_features(feats, z), t)

    return eps_fn


def _check_step(step_size: float, inner_steps: int, levels: str) -> None:
    if not step_size >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    if levels not in REPRESENTATION_LEVELS:
        raise ValueError(f"levels must be one of {REPRESENTATION_LEVELS}, got {levels!r}")


def classifier_guided_eps(model, target: Tensor, *,
                          scale: float = DEFAULT_SCALES["classifier"]) -> EpsFn:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2) with the joint model's own head.

        ε̂' = ε̂(x_t, t) − s · √(1 − ᾱ_t) · ∇_{x_t} log p_ω(target | x_t, t)

    This is the ε form of guidance (it is exact for DDIM and, for ancestral DDPM, shifts the mean
    by s · β_t/√α_t · ∇ ≈ s · Σ · ∇, their Algorithm 1). The classifier is
    ``model.head(model.unet.encode(x_t, t))``: meaningful only for a ``noise_aware`` model, whose
    head was trained on noisy features (``guided_eps`` warns otherwise). Costs a backward pass
    through the encoder per step.

    Args:
        model: a ``JointDiffusion`` in eval mode.
        target: (N,) long.
        scale: s >= 0 (0 gives the unconditional ε̂).

    Returns:
        ``eps_fn`` for ``sample_loop``.
    """
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    if scale == 0:
        return model.unet  # unguided: no backward pass to pay for

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            feats = model.unet.encode(x, t)
            log_p = _log_prob(model.head(feats), target)
            grad = torch.autograd.grad(log_p, x)[0]
        with torch.no_grad():
            eps = model.unet.decode(feats, t)  # no_grad: the encoder's graph is not extended
            alpha_bar = model.schedule.alpha_bars.to(x.device)[t]
            sigma = (1 - alpha_bar).sqrt().reshape(-1, *([1] * (x.dim() - 1)))
            return eps - scale * sigma * grad

    return eps_fn


def guided_eps(model, target: Tensor | int, n: int, guidance: Guidance | str | None = None) -> EpsFn:
    """The conditional noise predictor of ``model`` towards ``target`` for a batch of ``n`` images.

    Args:
        model: a ``JointDiffusion`` (any object with ``unet``, ``head``, ``schedule``,
            ``num_classes`` and ``noise_aware``).
        target: a class index, or (n,) class indices.
        guidance: a ``Guidance`` (or a kind name, or None for the defaults).

    Classifier guidance with a head that never saw noisy features warns: such a head judges x_t
    out of distribution and its gradient is close to noise; use a model trained with
    ``noise_aware=True`` (``--noise-aware``) or a representation sampler.
    """
    noise_aware = bool(getattr(model, "noise_aware", False))
    g = Guidance.of(guidance).resolve(noise_aware)
    device = next(model.parameters()).device
    target = check_targets(target, n, model.num_classes, device)
    if g.kind == "classifier":
        if not noise_aware:
            warnings.warn("classifier guidance with a head trained on clean images only: it has "
                          "never seen noisy x_t, so its gradient there is unreliable; train with "
                          "noise_aware=True (--noise-aware) or use guidance='representation'",
                          stacklevel=2)
        return classifier_guided_eps(model, target, scale=g.scale)
    sampler = representation_guided_eps if g.kind == "representation" else representation_x0_guided_eps
    return sampler(model, target, step_size=g.scale, inner_steps=g.inner_steps, levels=g.levels)
