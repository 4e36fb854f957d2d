"""Visual counterfactual explanations with a joint diffusion model (Deja et al. 2023, Sec. 3.3).

"What would this image look like if it were a T-shirt instead of a shirt?" Take a real image x_0
part of the way into the diffusion, to an intermediate step t*, then run the *conditional* reverse
process from there towards the target class. Two routes to t*:

    inversion (default):  x_{t*} = DDIM run forwards from x_0 with the model's own ε̂ (η = 0),
    noise (the paper's):  x_{t*} = √ᾱ_{t*} · x_0 + √(1 − ᾱ_{t*}) · ε,  ε fresh noise.

Fresh noise redraws fine detail even without guidance (on ``joint-fmnist-small`` the unguided round
trip to t* = 275 changes mean |Δ| ≈ 0.13); after inversion the unguided reverse process returns
the image (≈ 0.02), so what changes is the guidance's doing. t* is the knob: small t* keeps the
counterfactual close to x_0 but may not reach the target class; large t* flips the class but
forgets x_0. ``docs/counterfactuals.md`` (``benchmarks/bench_counterfactuals.py``) and notebook 07
measure the flip/closeness frontier the defaults were chosen on. ``difference_map`` shows what
changed.

Copy this file with ``sampling.py``, ``schedule.py`` and ``utils.py`` and it works (torch and tqdm
only); the model needs ``unet`` (with ``encode``/``decode``), ``head``, ``schedule``,
``num_classes`` and ``image_shape`` (a ``JointDiffusion``; ``tests/test_copyable.py`` builds one
from ``unet.py`` and ``classifier.py`` alone).

    x_cf = counterfactual(model, x, target=0)
    x_cf = counterfactual(model, x, target=0, start="noise", generator=torch.Generator().manual_seed(0))
    x_cf = counterfactual(model, x, target=0, guidance=Guidance("representation", scale=300))
    diff = difference_map(x, x_cf)            # (N, H, W), signed
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

try:
    from .sampling import DEFAULT_CONDITIONAL_ETA, Guidance, guided_eps, sample_loop
    from .utils import eval_mode
except ImportError:  # copied next to sampling.py, schedule.py and utils.py
    from sampling import DEFAULT_CONDITIONAL_ETA, Guidance, guided_eps, sample_loop
    from utils import eval_mode

__all__ = ["counterfactual", "counterfactual_guidance", "ddim_invert", "difference_map",
           "DEFAULT_T_STAR", "DEFAULT_COUNTERFACTUAL_STEPS", "DEFAULT_COUNTERFACTUAL_SCALES",
           "DEFAULT_INVERSION_ETA", "DEFAULT_START", "STARTS"]

STARTS = ("inversion", "noise")
DEFAULT_START = "inversion"
"""How x reaches t* by default; see ``counterfactual``'s ``start``."""

DEFAULT_T_STAR = 225
"""Default t* out of T = 1000, chosen on the frontier in ``docs/counterfactuals.md``.

On ``joint-fmnist-small``, the first 500 test images towards the class the model ranks second,
DDIM-20, judged by the evaluator: the defaults (inversion, classifier guidance s = 300, η = 0.5)
flip 0.872 at mean |Δ| 0.184; fresh noise with s = 100 at t* = 275 (the previous default) flips
0.922 at 0.237. With classifier guidance both routes trace one flip/closeness curve; t* = 225 is
its low-change end, where the explanation changes least. A far target (a random other class) needs
more: 0.66 flip at this t* (200 images), 0.885 after fresh noise at t* = 275.
"""

DEFAULT_INVERSION_ETA = 0.5
"""DDIM η of the reverse process after inversion when ``Guidance.eta`` is None. η slides the result
along one flip/closeness curve (``docs/counterfactuals.md``; t* = 225, classifier guidance s = 300):
η = 0 flips 0.79 at mean |Δ| 0.162 (100 images), 0.5 flips 0.872 at 0.184 (500), η = 1 flips 0.90
at 0.228 (100) — and at η = 1 the unguided round trip changes nearly as much as fresh noise. After
fresh noise: ``DEFAULT_CONDITIONAL_ETA``, as for samples."""

DEFAULT_COUNTERFACTUAL_SCALES = {"classifier": 300.0}
"""Guidance scales for counterfactuals when ``Guidance.scale`` is None, where they differ from
sampling's ``DEFAULT_SCALES`` (classifier guidance: 100). Like t*, the scale moves the result along
the flip/closeness curve: a first look on 48 test images (not in the report), after inversion at
t* = 275, η = 0.5: s = 100 flipped 0.90 at mean |Δ| 0.163, s = 300 0.98 at 0.205."""

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
    start: str = DEFAULT_START,
    keep: float = 0.0,
    method: str = "ddim",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Counterfactuals of ``x`` towards ``target``: bring x to ``t_star``, then guided reverse.

    Args:
        model: a ``JointDiffusion``.
        x: (N, C, H, W) real images in [-1, 1].
        target: the class to move to: an int, or (N,) class indices (``sample`` calls it
            ``labels``).
        t_star: the step x is taken to, 1 <= t_star < T. Larger: more change.
        guidance: the conditional sampler, as for ``JointDiffusion.sample`` (a ``Guidance``, a kind
            name, or None for the defaults); fields left None take the counterfactual defaults
            (``counterfactual_guidance``). Its ``eta`` is the reverse process's DDIM noise.
        start: how x reaches t*: ``"inversion"`` (deterministic DDIM inversion with the model's
            own ε̂, ``ddim_invert``: unguided, the reverse process gives x back) or ``"noise"``
            (the forward process with fresh noise, ``q_sample``, as in the paper).
        keep: 0 … 1, how hard to hold the counterfactual near x: at every reverse step the clean
            image the guided ε̂ implies is pulled this fraction of the way to x (0: no pull).
            Measured, it slides along the same flip/closeness curve as a smaller t* (keep 0.1 at
            the defaults: 0.50 flips at mean |Δ| 0.121, 100 images), so it is off by default.
        method, steps: ``"ddim"`` with ``steps`` steps spread over [0, t_star] (None:
            ``DEFAULT_COUNTERFACTUAL_STEPS``; at most every step) or ancestral ``"ddpm"`` over
            every step from t_star (``start="noise"`` only). Inversion uses the same steps.
        generator: draws the forward-process noise and the reverse process's: same generator
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
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be a number in [0, 1], got {keep!r}")
    if start == "inversion" and method != "ddim":
        raise ValueError("DDIM inversion needs method='ddim' (ancestral DDPM is not invertible); "
                         "use start='noise' for ancestral sampling")
    if method == "ddim" and steps is None:
        steps = DEFAULT_COUNTERFACTUAL_STEPS
    n = x.shape[0]
    device = next(model.parameters()).device
    g = counterfactual_guidance(guidance, bool(getattr(model, "noise_aware", False)), start)
    eps_fn = guided_eps(model, target, n, g)  # checks the target
    x = x.to(device).float()
    if keep > 0:
        eps_fn = _held_near(eps_fn, model.schedule, x, keep)

    with eval_mode(model), torch.no_grad():
        if start == "inversion":
            x_t = ddim_invert(model, x, t_star, steps=steps, progress=progress)
        else:  # forward process; noise drawn on the generator's device, as in sample_loop
            noise = torch.randn(x.shape, generator=generator,
                                device=generator.device if generator is not None else "cpu")
            t = torch.full((n,), t_star, dtype=torch.long, device=device)
            x_t = model.schedule.q_sample(x, t, noise.to(device))
        return sample_loop(eps_fn, model.schedule, (n, *shape), method=method, steps=steps,
                           eta=g.eta, generator=generator, device=device, progress=progress,
                           x_T=x_t, start_step=t_star, return_trajectory=return_trajectory)


def counterfactual_guidance(guidance: Guidance | str | None, noise_aware: bool,
                            start: str = DEFAULT_START) -> Guidance:
    """The ``Guidance`` a counterfactual runs with: ``guidance`` resolved for the model, with the
    counterfactual defaults (``DEFAULT_COUNTERFACTUAL_SCALES``; η ``DEFAULT_INVERSION_ETA`` after
    inversion, ``DEFAULT_CONDITIONAL_ETA`` after fresh noise) where it leaves a field None."""
    g = Guidance.of(guidance)
    kind = g.resolve(noise_aware).kind
    if g.scale is None and kind in DEFAULT_COUNTERFACTUAL_SCALES:
        g = replace(g, scale=DEFAULT_COUNTERFACTUAL_SCALES[kind])
    if g.eta is None:
        g = replace(g, eta=DEFAULT_INVERSION_ETA if start == "inversion" else DEFAULT_CONDITIONAL_ETA)
    return g.resolve(noise_aware)


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
