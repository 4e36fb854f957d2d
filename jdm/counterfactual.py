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

Copy this file with ``sampling.py``, ``schedule.py`` and ``utils.py`` and it works (torch and tqdm
only); the model needs ``unet.encode``/``unet.decode``, ``head``, ``schedule``, ``num_classes`` and
``image_shape`` (a ``JointDiffusion``; ``tests/test_copyable.py`` builds one from ``unet.py`` and
``classifier.py`` alone).

    x_cf = counterfactual(model, x, target=0, generator=torch.Generator().manual_seed(0))
    x_cf = counterfactual(model, x, target=0, guidance=Guidance("representation", scale=300))
    diff = difference_map(x, x_cf)            # (N, H, W), signed
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    from .sampling import Guidance, guided_eps, sample_loop
    from .utils import eval_mode
except ImportError:  # copied next to sampling.py, schedule.py and utils.py
    from sampling import Guidance, guided_eps, sample_loop
    from utils import eval_mode

__all__ = ["counterfactual", "difference_map", "DEFAULT_T_STAR", "DEFAULT_COUNTERFACTUAL_STEPS"]

DEFAULT_T_STAR = 275
"""Default noising step t* out of T = 1000; notebook 07 measures flip rate and closeness against t*.

On ``joint-fmnist-small`` (2,250 training steps), 200 test images towards the class the model ranks
second, classifier guidance, DDIM-20: t* = 200 flips 0.82 (evaluator) with mean |Δ| 0.18; 250:
0.89, 0.21; 275: 0.93, 0.23; 300: 0.94, 0.25.
"""

DEFAULT_COUNTERFACTUAL_STEPS = 20
"""DDIM steps over [0, t*] when ``steps=None``: 20 steps over t* ≈ 300 are as far apart as
DDIM-50's over all 1000."""


def counterfactual(
    model,
    x: Tensor,
    target: Tensor | int,
    *,
    t_star: int = DEFAULT_T_STAR,
    guidance: Guidance | str | None = None,
    method: str = "ddim",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Counterfactuals of ``x`` towards ``target``: noise to ``t_star``, then guided reverse process.

    Args:
        model: a ``JointDiffusion``.
        x: (N, C, H, W) real images in [-1, 1].
        target: the class to move to: an int, or (N,) class indices (``sample`` calls it
            ``labels``).
        t_star: the step x is noised to, 1 <= t_star < T. Larger: more change.
        guidance: the conditional sampler, as for ``JointDiffusion.sample`` (a ``Guidance``, a kind
            name, or None for the defaults; its ``eta`` is the reverse process's DDIM noise).
        method, steps: ``"ddim"`` with ``steps`` steps spread over [0, t_star] (None:
            ``DEFAULT_COUNTERFACTUAL_STEPS``; at most every step) or ancestral ``"ddpm"`` over
            every step from t_star.
        generator: draws the forward-process noise (and the reverse process's): same generator
            state, same counterfactuals.
        progress: show a progress bar.
        return_trajectory: also return [x_{t*}, …, x_cf] (each (N, C, H, W), on the CPU).

    Returns:
        x_cf (N, C, H, W) in [-1, 1]; with ``return_trajectory``, (x_cf, trajectory).
    """
    shape = tuple(model.image_shape)
    if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"x must be images of shape (N, {', '.join(map(str, shape))}), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one image")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor in [-1, 1], got dtype {x.dtype}")
    if float(x.min()) < -1 - 1e-6 or float(x.max()) > 1 + 1e-6:
        raise ValueError(f"x must lie in [-1, 1] (jdm's image range), got values in "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    T = model.schedule.num_steps
    if isinstance(t_star, bool) or not isinstance(t_star, int) or not 1 <= t_star < T:
        raise ValueError(f"t_star must be an int in 1..{T - 1}, got {t_star!r}")
    if method == "ddim" and steps is None:
        steps = DEFAULT_COUNTERFACTUAL_STEPS
    n = x.shape[0]
    device = next(model.parameters()).device
    g = Guidance.of(guidance)
    eps_fn = guided_eps(model, target, n, g)  # checks the target

    # forward process to t*: noise drawn on the generator's device, as in sample_loop
    noise = torch.randn(x.shape, generator=generator,
                        device=generator.device if generator is not None else "cpu")
    t = torch.full((n,), t_star, dtype=torch.long, device=device)
    x_t = model.schedule.q_sample(x.to(device).float(), t, noise.to(device))
    with eval_mode(model), torch.no_grad():
        return sample_loop(eps_fn, model.schedule, (n, *shape), method=method, steps=steps,
                           eta=g.eta, generator=generator, device=device, progress=progress,
                           x_T=x_t, start_step=t_star, return_trajectory=return_trajectory)


def difference_map(x: Tensor, x_cf: Tensor) -> Tensor:
    """What the counterfactual changed: x_cf − x averaged over channels, (N, H, W), in [-2, 2].

    Positive where the counterfactual is brighter. Show it with a diverging colormap centred at 0
    (``jdm.viz.counterfactual_gallery`` does).
    """
    if x.shape != x_cf.shape or x.dim() != 4:
        raise ValueError(f"x and x_cf must be image batches (N, C, H, W) of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(x_cf.shape)}")
    return (x_cf.float() - x.float().to(x_cf.device)).mean(dim=1)
