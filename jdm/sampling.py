"""The reverse process: ancestral DDPM and DDIM sampling loops.

A sampler only needs a noise predictor ``eps_fn(x_t, t) -> ε̂`` and a ``NoiseSchedule``, so the same
loop serves the plain DDPM, the joint model and (later) the conditional samplers, which differ
only in how they compute ε̂.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .schedule import NoiseSchedule, randn_like

__all__ = ["EpsFn", "sample_loop"]

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
