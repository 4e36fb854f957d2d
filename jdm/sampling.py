"""The reverse process: ancestral DDPM and DDIM sampling loops, unconditional and conditional.

A sampler only needs a noise predictor ``eps_fn(x_t, t) -> ε̂`` and a ``NoiseSchedule``, so one
loop serves the plain DDPM, the joint model and every conditional sampler; they differ only in
how they compute ε̂. How a conditional sampler steers is one frozen ``Guidance`` object, used by
``JointDiffusion.sample``, ``jdm.counterfactual``, ``jdm.evaluate`` and the CLI alike:

* ``"representation"`` — **the paper's sampler** (Deja et al. 2023, Sec. 3.2, "conditional
  sampling with optimised generations"), as the authors' ``image_sample_with_classifier.py`` runs
  it: at each reverse step encode z_t = e_ν(x_t, t) (the bottleneck and every skip) in one graph,
  apply the classifier head to z_t itself, step every map by z_t ← z_t + γ · dCE(y, head(z_t))/dz_t
  (its total derivative; up the cross-entropy, i.e. down log p(y | z_t)), decode the moved z_t to ε̂.
* ``"representation-x0"`` — a jdm variant of it: the head judges the clean image x̂₀ that the
  moved features imply (decode → x̂₀ → encode at t = 0 → head), so the gradient reaches z through
  the decoder.
* ``"classifier"`` — classifier guidance (Dhariwal & Nichol 2021, Algorithm 2, ε form), the
  baseline: ε̂' = ε̂ − s · √(1 − ᾱ_t) · ∇_{x_t} log p(y | x_t, t) with the joint model's head.

The two representation samplers live in ``representation.py``. Measured, with the commands:
``docs/samplers.md`` (``benchmarks/bench_samplers.py``).

Copy this file next to ``schedule.py`` and ``representation.py`` and it works (torch and tqdm
only); the conditional samplers need a model object with ``unet.encode``/``unet.decode``,
``head``, ``schedule`` and ``num_classes`` (a ``JointDiffusion``, or the few lines of
``tests/test_copyable.py``).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

if __package__:  # inside jdm (or any package it is copied into)
    from .representation import (DEFAULT_LEVELS, DEFAULT_RULES, DIRECTIONS, GRADIENT_RULES,
                                 REPRESENTATION_LEVELS, check_guidance_values,
                                 representation_guided_eps, representation_step,
                                 representation_x0_guided_eps, target_log_prob)
    from .schedule import NoiseSchedule, randn_like
else:  # copied next to schedule.py and representation.py as top-level modules
    from representation import (DEFAULT_LEVELS, DEFAULT_RULES, DIRECTIONS, GRADIENT_RULES,
                                REPRESENTATION_LEVELS, check_guidance_values,
                                representation_guided_eps, representation_step,
                                representation_x0_guided_eps, target_log_prob)
    from schedule import NoiseSchedule, randn_like

__all__ = ["EpsFn", "Guidance", "sample_loop", "guided_eps", "representation_guided_eps",
           "representation_x0_guided_eps", "representation_step", "classifier_guided_eps",
           "check_targets", "eval_mode",
           "GUIDANCE_KINDS", "REPRESENTATION_LEVELS", "GRADIENT_RULES", "DIRECTIONS",
           "DEFAULT_SCALES", "DEFAULT_LEVELS", "DEFAULT_RULES",
           "DEFAULT_DDIM_STEPS", "DEFAULT_CONDITIONAL_ETA", "DEFAULT_GUIDANCE"]

GUIDANCE_KINDS = ("representation", "representation-x0", "classifier")
"""The conditional samplers: the paper's (optimised representations), its x̂₀ variant, and
classifier guidance."""

DEFAULT_SCALES = {"representation": 100.0, "representation-x0": 1000.0, "classifier": 100.0}
"""γ (representation samplers) or s (classifier guidance) when ``Guidance.scale`` is None: each
sampler's best in the sweeps of ``docs/samplers.md`` (why: ``docs/defaults.md``)."""

DEFAULT_DDIM_STEPS = 50
"""DDIM steps when ``steps=None`` (ancestral DDPM always visits every step)."""

DEFAULT_CONDITIONAL_ETA = 1.0
"""DDIM η of conditional sampling when ``Guidance.eta`` is not given (unconditional: η = 0): fresh
noise washes out the small head-fooling changes guided DDIM piles up (``docs/defaults.md``)."""

DEFAULT_GUIDANCE = "auto"
"""``Guidance.kind`` when none is given: "auto" is the paper's sampler, close to classifier
guidance's agreement at a lower FD, no noise-aware head needed (``docs/defaults.md``)."""


EpsFn = Callable[[Tensor, Tensor], Tensor]
"""A noise predictor: x_t (N, C, H, W), t (N,) → ε̂ (N, C, H, W)."""


@dataclass(frozen=True)
class Guidance:
    """How a conditional sampler steers towards a class: one object for every entry point.

    ``JointDiffusion.sample(target=…, guidance=…)``, ``jdm.counterfactual(…, guidance=…)``,
    ``jdm.evaluate`` and the CLI (flags generated from these fields) all take it; a plain string
    is short for ``Guidance(kind=…)``. None in a field means its default, defined once above.

    Attributes:
        kind: ``"representation"`` (the paper's), ``"representation-x0"``, ``"classifier"``, or
            ``"auto"`` (``DEFAULT_GUIDANCE``: the paper's sampler for samples;
            ``jdm.counterfactual`` has its own).
        scale: γ (representation samplers) or s (classifier guidance), >= 0 (0: unconditional);
            None: ``DEFAULT_SCALES[kind]``.
        inner_steps: feature updates per reverse step (representation samplers), >= 1.
        levels: ``"all"``, ``"lowest"`` or ``"highest"`` (representation samplers); None:
            ``DEFAULT_LEVELS``.
        gradient: ``"total"`` or ``"direct"`` (representation samplers); None: ``DEFAULT_RULES``.
        direction: ``"descent"`` or ``"ascent"`` on log p (representation samplers); None:
            ``DEFAULT_RULES``.
        eta: DDIM η of the conditional reverse process, in [0, 1]; None: the entry point's
            default (``DEFAULT_CONDITIONAL_ETA`` for samples; ``jdm.counterfactual`` uses
            ``DEFAULT_INVERSION_ETA`` after DDIM inversion, whose result fresh noise would wash out).
    """

    kind: str = field(default=DEFAULT_GUIDANCE, metadata={
        "flag": "--guidance", "choices": ("auto", *GUIDANCE_KINDS),
        "help": "conditional sampler: representation = the paper's (optimise the encoder "
                "features z_t with the head applied to z_t); representation-x0 = jdm's variant "
                "(the head judges the x̂₀ the features imply); classifier = classifier guidance; "
                "auto = representation for samples, classifier guidance for counterfactuals of a "
                "noise-aware model"})
    scale: float | None = field(default=None, metadata={
        "help": "γ of the representation samplers / s of classifier guidance (default: "
                "jdm.sampling.DEFAULT_SCALES)"})
    inner_steps: int = field(default=1, metadata={
        "help": "representation samplers: feature updates per reverse step"})
    levels: str | None = field(default=None, metadata={
        "choices": REPRESENTATION_LEVELS,
        "help": "representation samplers: move every feature map, or only the lowest- or "
                "highest-resolution ones (default: jdm.sampling.DEFAULT_LEVELS)"})
    gradient: str | None = field(default=None, metadata={
        "choices": GRADIENT_RULES,
        "help": "representation samplers: each map's total derivative through the encoder "
                "(the authors') or its direct pooled path only (default: "
                "jdm.sampling.DEFAULT_RULES)"})
    direction: str | None = field(default=None, metadata={
        "choices": DIRECTIONS,
        "help": "representation samplers: step down the head's log p(target | z) as the "
                "authors' +lr*grad(CE) does, or up it (default: jdm.sampling.DEFAULT_RULES)"})
    eta: float | None = field(default=None, metadata={
        "help": "DDIM noise of the conditional reverse process, 0 (deterministic) … 1 (default: "
                "jdm.sampling.DEFAULT_CONDITIONAL_ETA for samples; for counterfactuals "
                "jdm.counterfactual.DEFAULT_INVERSION_ETA after DDIM inversion, "
                "DEFAULT_CONDITIONAL_ETA after fresh noise)"})

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *GUIDANCE_KINDS):
            raise ValueError(f"guidance kind must be one of {('auto', *GUIDANCE_KINDS)}, "
                             f"got {self.kind!r}")
        check_guidance_values(self.scale, self.inner_steps, self.levels, self.gradient,
                              self.direction)
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

    def resolve(self) -> "Guidance":
        """This guidance with ``kind``, ``scale``, ``levels``, ``gradient`` and ``direction`` filled
        in from the defaults ("auto": ``DEFAULT_GUIDANCE``'s choice)."""
        kind = "representation" if self.kind == "auto" else self.kind
        scale = DEFAULT_SCALES[kind] if self.scale is None else float(self.scale)
        if kind == "classifier":
            return replace(self, kind=kind, scale=scale)
        gradient, direction = DEFAULT_RULES[kind]
        return replace(self, kind=kind, scale=scale,
                       levels=DEFAULT_LEVELS[kind] if self.levels is None else self.levels,
                       gradient=gradient if self.gradient is None else self.gradient,
                       direction=direction if self.direction is None else self.direction)


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
        scale: s >= 0, finite (0 gives the unconditional ε̂).

    Returns:
        ``eps_fn`` for ``sample_loop``.
    """
    check_guidance_values(scale)
    if scale == 0:
        return model.unet  # unguided: no backward pass to pay for

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            feats = model.unet.encode(x, t)
            log_p = target_log_prob(model.head(feats), target)
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
    g = Guidance.of(guidance).resolve()
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
    return sampler(model, target, scale=g.scale, inner_steps=g.inner_steps, levels=g.levels,
                   gradient=g.gradient, direction=g.direction)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (no dropout) for the ``with`` block, then restore its mode,
    also when the block raises: sampling or measuring with dropout on would be a silent bug.

        with eval_mode(model):
            logits = model.classify(x)
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
