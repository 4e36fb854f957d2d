"""The reverse process: ancestral DDPM and DDIM sampling loops, unconditional and conditional.

A sampler only needs a noise predictor ``eps_fn(x_t, t) -> ε̂`` and a ``NoiseSchedule``, so the same
loop serves the plain DDPM, the joint model and the two conditional samplers, which differ only
in how they compute ε̂:

* ``representation_guided_eps`` — the joint model's own sampler (Deja et al. 2023, Sec. 3.2,
  "conditional sampling with optimised generations"): encode x_t, move the encoder features
  z = e_ν(x_t, t) up the gradient of the head's log p_ω(y | ·) for the clean image the features
  imply, decode the moved features to ε̂. Only the features move; the UNet and the head stay as
  trained.
* ``classifier_guided_eps`` — classifier guidance (Dhariwal & Nichol 2021, Algorithm 2, the
  ε form): ε̂' = ε̂ − s · √(1 − ᾱ_t) · ∇_{x_t} log p(y | x_t, t), with the joint model's
  noise-aware head as the classifier.

Both need a model with ``unet.encode``/``unet.decode``, a ``head`` and a ``schedule`` (a
``JointDiffusion``); ``JointDiffusion.sample(n, labels=…, guidance=…)`` is the usual way in.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .schedule import NoiseSchedule, randn_like
from .unet import Features

__all__ = ["EpsFn", "sample_loop", "representation_guided_eps", "classifier_guided_eps",
           "check_targets", "GUIDANCE", "DEFAULT_REPRESENTATION_STEP", "DEFAULT_INNER_STEPS",
           "DEFAULT_CLASSIFIER_SCALE", "DEFAULT_CONDITIONAL_ETA", "REPRESENTATION_LEVELS"]

GUIDANCE = ("representation", "classifier")
"""The conditional samplers: optimised representations (the paper's) and classifier guidance."""

DEFAULT_REPRESENTATION_STEP = 1000.0
"""Step size γ of one feature update (``representation_guided_eps``); notebook 06 sweeps it.

On ``joint-fmnist-small`` (2,250 training steps), 100 samples, DDIM-20, η = 1, evaluator agreement
with the requested class, updating the lowest-resolution features: γ = 100 → 0.62, 1000 → 0.81,
10000 → 0.81; updating every feature map instead: γ = 10 → 0.59, 30 → 0.68, 100 → 0.58, 300 → 0.52.
"""

REPRESENTATION_LEVELS = ("lowest", "all")
"""Which encoder features the representation sampler moves: those at the lowest resolution (the
bottleneck and the skips of the same size: the default) or every map."""

DEFAULT_INNER_STEPS = 1
"""Feature updates per reverse step."""

DEFAULT_CLASSIFIER_SCALE = 100.0
"""Guidance scale s of ``classifier_guided_eps``; notebook 06 sweeps it.

Large because ∇ log p of this small head is small. Evaluator agreement with the requested class on
``joint-fmnist-small``, η = 1: at 1,250 training steps (100 samples, DDIM-50) s = 10 → 0.89,
30 → 0.93, 100 → 0.95; at 2,250 (notebook 06, DDIM-20) 10 → 0.96, 30 → 0.99, 100 → 0.98,
300 → 0.96; and 0.970 for 1,000 samples at DDIM-50 (README).
"""

DEFAULT_CONDITIONAL_ETA = 1.0
"""DDIM η for conditional sampling (unconditional sampling keeps η = 0).

Guided deterministic DDIM (η = 0) piles the guidance's small, head-fooling changes up over the
steps; fresh noise at every step (η = 1) washes them out. Evaluator agreement with the requested
class on ``joint-fmnist-small``, 100 samples, DDIM-20, η = 0 against η = 1: at 1,250 training
steps, representation guidance (γ = 100, every map) 0.56 against 0.80, classifier guidance
(s = 30) 0.87 against 0.94; at 2,250 (notebook 06, the defaults) 0.67 against 0.77 and 0.91
against 0.98.
"""

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""A noise predictor: x_t (N, C, H, W), t (N,) → ε̂ (N, C, H, W)."""


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
        steps: DDIM's number of steps (default 50); for DDPM it must be None.
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
        raise ValueError("ancestral DDPM visits every timestep; use method='ddim' to choose steps")
    device = torch.device(device) if device is not None else schedule.betas.device
    start = schedule.num_steps - 1 if start_step is None else start_step
    if not 0 <= start < schedule.num_steps:
        raise ValueError(f"start_step must lie in [0, {schedule.num_steps - 1}], got {start}")

    if method == "ddpm":
        timesteps = schedule.timesteps(start=start)
    else:
        timesteps = schedule.timesteps(min(50 if steps is None else steps, start + 1), start=start)

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
    if n and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target classes must lie in 0..{num_classes - 1}, got values from "
                         f"{int(target.min())} to {int(target.max())}")
    return target.long().to(device)


def _log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Σ_i log softmax(logits_i)[target_i]: a scalar whose gradient is each example's own."""
    return logits.log_softmax(1).gather(1, target[:, None]).sum()


def representation_guided_eps(model, target: Tensor, *,
                              step_size: float = DEFAULT_REPRESENTATION_STEP,
                              inner_steps: int = DEFAULT_INNER_STEPS,
                              levels: str = "lowest") -> EpsFn:
    """ε̂ from optimised encoder features (Deja et al. 2023, Sec. 3.2; the authors' code).

    At every reverse step the encoder runs once, z = e_ν(x_t, t) (the bottleneck and every skip).
    Then, ``inner_steps`` times, the features move up the gradient of the target's log-probability
    of the clean image they imply:

        ε̂ = d_ψ(z, t),   x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t,
        z ← z + γ · √(1−ᾱ_t) · ∇_z log p_ω(target | e_ν(x̂_0, 0)),

    and finally ε̂ = d_ψ(z, t) goes to the DDPM/DDIM step. The head judges x̂_0 as it was trained
    to (clean images, t = 0), so this works for a model without a noise-aware head; the gradient
    reaches z through the decoder, so the change is one the decoder knows how to draw. The
    √(1−ᾱ_t) factor, as in classifier guidance, fades the push out as the noise goes.

    ``levels="lowest"`` (default) moves only the features at the UNet's lowest resolution (the
    bottleneck and the skips of its size), which carry the image's layout and class; the
    high-resolution skips carry pixel detail, and moving them draws texture that fools the head
    more than it changes the class (see ``DEFAULT_REPRESENTATION_STEP`` for the measurement).
    ``levels="all"`` moves every map, as the authors' code does.

    Stepping on z with the head applied to z itself (no decoder in the loop) is cheaper but works
    much worse: the head sees only channel means, so the step shifts each feature map by a
    constant, which the decoder draws as the target class only weakly (notebook 06: 0.41 evaluator
    agreement at best, against 0.8 for this sampler).

    Args:
        model: a ``JointDiffusion`` (``unet.encode``/``unet.decode``, ``head``, ``schedule``), in
            eval mode.
        target: (N,) long, the class of each image in the batch.
        step_size: γ >= 0 (0 gives the unconditional ε̂ exactly).
        inner_steps: feature updates per reverse step (>= 1).
        levels: ``"lowest"`` or ``"all"`` (``REPRESENTATION_LEVELS``).

    Returns:
        ``eps_fn(x_t (N, C, H, W), t (N,)) → ε̂ (N, C, H, W)`` for ``sample_loop``.
    """
    if not step_size >= 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    if levels not in REPRESENTATION_LEVELS:
        raise ValueError(f"levels must be one of {REPRESENTATION_LEVELS}, got {levels!r}")
    schedule = model.schedule

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            feats = model.unet.encode(x_t, t)
        z = [feats.bottleneck, *feats.skips]
        lowest = min(m.shape[-1] for m in z)
        moved = [i for i, m in enumerate(z) if levels == "all" or m.shape[-1] == lowest]
        if step_size > 0:
            sigma = (1 - schedule.alpha_bars[t]).sqrt().reshape(-1, *([1] * (x_t.dim() - 1)))
            clean = torch.zeros_like(t)
            with torch.enable_grad():
                for _ in range(inner_steps):
                    z = [m.detach().requires_grad_(i in moved) for i, m in enumerate(z)]
                    x0 = schedule.predict_x0(x_t, t, model.unet.decode(Features(z[0], z[1:]), t))
                    log_p = _log_prob(model.head(model.unet.encode(x0, clean)), target)
                    grads = torch.autograd.grad(log_p, [z[i] for i in moved])
                    for i, g in zip(moved, grads):
                        # ascent: towards the target (tests/test_guidance.py checks the sign)
                        z[i] = z[i] + step_size * sigma * g
        with torch.no_grad():
            return model.unet.decode(Features(z[0].detach(), [m.detach() for m in z[1:]]), t)

    return eps_fn


def classifier_guided_eps(model, target: Tensor, *, scale: float = DEFAULT_CLASSIFIER_SCALE) -> EpsFn:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2) with the joint model's own head.

        ε̂' = ε̂(x_t, t) − s · √(1 − ᾱ_t) · ∇_{x_t} log p_ω(target | x_t, t)

    This is the ε form of guidance (it is exact for DDIM and, for ancestral DDPM, shifts the mean
    by s · β_t/√α_t · ∇ ≈ s · Σ · ∇, their Algorithm 1). The classifier is
    ``model.head(model.unet.encode(x_t, t))``: meaningful only for a ``noise_aware`` model, whose
    head was trained on noisy features. Costs a backward pass through the encoder per step.

    Args:
        model: a ``JointDiffusion`` in eval mode.
        target: (N,) long.
        scale: s >= 0 (0 gives the unconditional ε̂).

    Returns:
        ``eps_fn`` for ``sample_loop``.
    """
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            feats = model.unet.encode(x, t)
            log_p = _log_prob(model.head(feats), target)
            grad = torch.autograd.grad(log_p, x)[0]
        with torch.no_grad():
            eps = model.unet.decode(Features(feats.bottleneck.detach(),
                                             [m.detach() for m in feats.skips]), t)
            sigma = (1 - model.schedule.alpha_bars[t]).sqrt().reshape(-1, *([1] * (x.dim() - 1)))
            return eps - scale * sigma * grad

    return eps_fn
