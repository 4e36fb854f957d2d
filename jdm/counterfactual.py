"""Visual counterfactual explanations with a joint diffusion model (Deja et al. 2023, Sec. 3.3).

"What would this image look like if it were a T-shirt instead of a shirt?" Noise a real image x_0
part of the way, to an intermediate step t*, with the forward process, then run the *conditional*
reverse process from there towards the target class:

    x_{t*} = √ᾱ_{t*} · x_0 + √(1 − ᾱ_{t*}) · ε,     x_cf = reverse process from x_{t*}, guided to y*.

The noise destroys the fine detail but keeps the coarse layout of x_0 (notebook 01), so the guided
reverse process only has to change what makes the image a member of its class. t* is the knob:
small t* keeps the counterfactual close to x_0 but may not reach the target class; large t* flips
the class but forgets x_0 (notebook 07 measures the trade-off). ``difference_map`` shows what
changed.

Depends on torch plus ``jdm.sampling`` (``check_targets``); the model is a ``JointDiffusion``.

    x_cf = counterfactual(model, x, target=0, t_star=275, generator=torch.Generator().manual_seed(0))
    diff = difference_map(x, x_cf)            # (N, H, W), signed
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sampling import DEFAULT_CONDITIONAL_ETA, check_targets

__all__ = ["counterfactual", "difference_map", "DEFAULT_T_STAR"]

DEFAULT_T_STAR = 275
"""Default noising step t* out of T = 1000; notebook 07 measures flip rate and closeness against t*.

On ``joint-fmnist-small`` (2,250 training steps), 200 test images towards the class the model ranks
second, classifier guidance, DDIM-20: t* = 200 flips 0.82 (evaluator) with mean |Δ| 0.18; 250:
0.89, 0.21; 275: 0.93, 0.23; 300: 0.94, 0.25.
"""


def counterfactual(
    model,
    x: Tensor,
    target: Tensor | int,
    *,
    t_star: int = DEFAULT_T_STAR,
    guidance: str | None = None,
    scale: float | None = None,
    inner_steps: int | None = None,
    method: str = "ddim",
    steps: int | None = 20,
    eta: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Counterfactuals of ``x`` towards ``target``: noise to ``t_star``, then guided reverse process.

    Args:
        model: a ``JointDiffusion`` (its conditional sampler does the reverse process).
        x: (N, C, H, W) real images in [-1, 1].
        target: the class to move to: an int, or (N,) class indices.
        t_star: the step x is noised to, 1 <= t_star < T. Larger: more change.
        guidance, scale, inner_steps: the conditional sampler (``JointDiffusion.guided_eps``).
            ``guidance=None``: ``"classifier"`` for a model with a noise-aware head (on the
            shipped model it flips far more images at the same closeness: notebook 07), else
            ``"representation"``.
        method, steps, eta: the reverse process (``sample_loop``); DDIM ``steps`` are spread
            over [0, t_star] (20 steps over t* ≈ 300 are as far apart as DDIM-50's over all
            1000), so ``steps`` >= t_star + 1 means every step. ``eta=None``: the
            conditional sampler's default, ``jdm.sampling.DEFAULT_CONDITIONAL_ETA``.
        generator: draws the forward-process noise (and DDPM/η > 0 noise): same generator state,
            same counterfactuals.
        progress: show a progress bar.
        return_trajectory: also return [x_{t*}, …, x_cf] (each (N, C, H, W), on the CPU).

    Returns:
        x_cf (N, C, H, W) in [-1, 1]; with ``return_trajectory``, (x_cf, trajectory).
    """
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.image_shape):
        raise ValueError(f"x must be images of shape (N, {', '.join(map(str, model.image_shape))}), "
                         f"got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one image")
    if float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError(f"x must lie in [-1, 1] (jdm's image range), got values in "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    T = model.schedule.num_steps
    if isinstance(t_star, bool) or not isinstance(t_star, int) or not 1 <= t_star < T:
        raise ValueError(f"t_star must be an int in 1..{T - 1}, got {t_star!r}")
    n = x.shape[0]
    device = next(model.parameters()).device
    target = check_targets(target, n, model.num_classes, device)
    if guidance is None:
        guidance = "classifier" if getattr(model, "noise_aware", False) else "representation"
    kwargs = {} if inner_steps is None else {"inner_steps": inner_steps}
    eps_fn = model.guided_eps(target, n, guidance=guidance, scale=scale, **kwargs)

    # forward process to t*: noise drawn on the generator's device, as in sample_loop
    noise = torch.randn(x.shape, generator=generator,
                        device=generator.device if generator is not None else "cpu")
    t = torch.full((n,), t_star, dtype=torch.long, device=device)
    x_t = model.schedule.q_sample(x.to(device), t, noise.to(device))
    eta = DEFAULT_CONDITIONAL_ETA if eta is None else eta
    if method == "ddim":
        steps = min(20 if steps is None else steps, t_star + 1)
    return model.run_sampler(eps_fn, n, method=method, steps=steps, eta=eta, generator=generator,
                             progress=progress, x_T=x_t, start_step=t_star,
                             return_trajectory=return_trajectory)


def difference_map(x: Tensor, x_cf: Tensor) -> Tensor:
    """What the counterfactual changed: x_cf − x averaged over channels, (N, H, W), in [-2, 2].

    Positive where the counterfactual is brighter. Show it with a diverging colormap centred at 0
    (``jdm.viz.counterfactual_gallery`` does).
    """
    if x.shape != x_cf.shape or x.dim() != 4:
        raise ValueError(f"x and x_cf must be image batches (N, C, H, W) of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(x_cf.shape)}")
    return (x_cf.float() - x.float().to(x_cf.device)).mean(dim=1)
