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
forgets x_0. By default each image gets its own t* (``auto_t_star``: further for a target the model
finds less likely), and changes too faint to matter fade at the end (``fade_small_changes``).
``docs/counterfactuals.md`` (``benchmarks/bench_counterfactuals.py``) and notebook 07 measure the
flip/closeness frontier the defaults were chosen on. ``difference_map`` shows what changed.

Copy this file with ``sampling.py``, ``schedule.py``, ``representation.py``, ``utils.py`` and
``inputs.py`` and it works (torch and tqdm only); the model needs ``unet`` (with ``encode``/
``decode``), ``head``, ``schedule``, ``num_classes`` and ``image_shape`` (a ``JointDiffusion``;
``tests/test_copyable.py`` builds one from ``unet.py`` and ``classifier.py`` alone).

    x_cf = counterfactual(model, x, target=0)                 # t* per image, small changes faded
    x_cf = counterfactual(model, x, target=0, t_star=275, min_change=0.0)   # one t*, raw
    x_cf = counterfactual(model, x, target=0, start="noise", generator=torch.Generator().manual_seed(0))
    x_cf = counterfactual(model, x, target=0, guidance=Guidance("representation"))   # the paper's sampler
    diff = difference_map(x, x_cf)            # (N, H, W), signed
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

try:
    from .sampling import DEFAULT_CONDITIONAL_ETA, Guidance, check_targets, guided_eps, sample_loop
    from .utils import eval_mode
    from .inputs import check_generator, check_image_range
except ImportError:  # copied next to sampling.py, schedule.py, utils.py and inputs.py
    from sampling import DEFAULT_CONDITIONAL_ETA, Guidance, check_targets, guided_eps, sample_loop
    from utils import eval_mode
    from inputs import check_generator, check_image_range

__all__ = ["counterfactual", "counterfactual_guidance", "ddim_invert", "difference_map",
           "auto_t_star", "fade_small_changes", "AUTO_T_STAR", "DEFAULT_MIN_CHANGE",
           "DEFAULT_COUNTERFACTUAL_KIND",
           "DEFAULT_T_STAR", "DEFAULT_COUNTERFACTUAL_STEPS", "DEFAULT_COUNTERFACTUAL_SCALES",
           "DEFAULT_INVERSION_ETA", "DEFAULT_START", "STARTS"]

STARTS = ("inversion", "noise")
DEFAULT_START = "inversion"
"""How x reaches t* by default; see ``counterfactual``'s ``start``."""

DEFAULT_T_STAR = "auto"
"""Default t*: each image's own, from how far the model's head is from the target
(``auto_t_star`` with ``AUTO_T_STAR``). One t* for every image cannot serve both a near target and
a far one: on the CPU-trained ``joint-fmnist-small`` (inversion, classifier guidance s = 300,
DDIM-20, judged by the evaluator) t* = 225 flips 0.872 of runner-up requests at mean |Δ| 0.184
(first 500 test images) but only 0.66 of random-class ones (first 200), which need t* ≈ 400.
``docs/counterfactuals.md`` (that model) and ``docs/counterfactuals_gpu.md`` (the GPU-trained
``joint-fmnist-small-gpu``, the one ``python -m jdm explain`` uses) give the figures with
``"auto"``; ``AUTO_T_STAR`` sums them up.
"""

AUTO_T_STAR = (0.15, 0.025, 0.5)
"""``auto_t_star``'s rule (base, per_nat, most): t* = T · min(base + per_nat · doubt, most), doubt
in nats. Fitted on a tuning slice (test images 9000–9199, away from the first 1 000 the reports
use) for the most runner-up flips at mean |Δ| ≤ 0.19: first per_nat and most on
``joint-fmnist-small`` (t* measured every 50 steps, each image's verdict interpolated between
them), then base again on ``joint-fmnist-small-gpu``, whose guidance flips more for the same t*
(there base 0.125 / 0.15 / 0.175 flipped 0.925 / 0.950 / 0.980 at mean |Δ| 0.168 / 0.184 / 0.200).
With the defaults ``joint-fmnist-small-gpu`` flips 0.958 of runner-up requests at mean |Δ| 0.185
(first 1 000 test images, mean t* 290; first 500: 0.958 at 0.184, where base 0.175, the rule
fitted on the CPU model, flips 0.966 at 0.201) and 0.966 of random-class ones (first 500, mean t*
416) — ``docs/counterfactuals_gpu.md``. For runner-up requests the rule sits on the curve of one
t* for all (t* = 275: 0.938 at 0.173; 300: 0.958 at 0.189); what it buys is a larger t* for far
requests without the near ones paying for it. The CPU model flipped 0.904 at 0.187 with base
0.175 and 0.890 at 0.170 with 0.15 (``docs/counterfactuals.md``), short of the course's goal of
0.92 at ≤ 0.20."""

DEFAULT_MIN_CHANGE = 0.3
"""``counterfactual``'s default ``min_change`` ([-1, 1] units): changes smaller than this fade.
On the tuning slice (runner-up, 200 images, t* = 250) fading at 0.3 took mean |Δ| from 0.203 to
0.171 for one flip in a hundred (0.92 → 0.91); at 0.5 (t* = 200) it cost 0.84 → 0.73 flips for
0.170 → 0.115, no better than a smaller t*."""

DEFAULT_INVERSION_ETA = 0.5
"""DDIM η of the reverse process after inversion when ``Guidance.eta`` is None. η slides the result
along one flip/closeness curve (``docs/counterfactuals.md``; t* = 225, classifier guidance s = 300):
η = 0 flips 0.802 at mean |Δ| 0.159, 0.5 flips 0.872 at 0.184, η = 1 flips 0.908 at 0.230 (the
first 500 test images) — and at η = 1 the unguided round trip changes nearly as much as fresh noise.
After fresh noise: ``DEFAULT_CONDITIONAL_ETA``, as for samples."""

DEFAULT_COUNTERFACTUAL_KIND = "classifier"
"""The sampler of ``guidance="auto"`` counterfactuals for a noise-aware head: on the frontier of
``docs/counterfactuals_gpu.md`` classifier guidance flips more than the paper's sampler at the same
closeness (a head that never saw noise gets the paper's sampler, as for samples)."""

DEFAULT_COUNTERFACTUAL_SCALES = {"classifier": 300.0, "representation": 300.0}
"""Guidance scales for counterfactuals where they differ from sampling's ``DEFAULT_SCALES``: at the
small t* of a counterfactual both samplers need a stronger push to flip at the same closeness (the
frontiers in ``docs/counterfactuals.md`` and ``docs/counterfactuals_gpu.md``)."""


DEFAULT_COUNTERFACTUAL_STEPS = 20
"""DDIM steps over [0, t*] when ``steps=None``: 20 steps over t* ≈ 300 are as far apart as
DDIM-50's over all 1000."""


def counterfactual(
    model,
    x: Tensor,
    target: Tensor | int,
    *,
    t_star: int | Tensor | str = DEFAULT_T_STAR,
    guidance: Guidance | str | None = None,
    start: str = DEFAULT_START,
    keep: float = 0.0,
    min_change: float = DEFAULT_MIN_CHANGE,
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
        t_star: the step x is taken to, 1 <= t_star < T; larger: more change. An int for every
            image, an (N,) integer tensor (one per image), or ``"auto"`` (the default): each
            image's own t* from how far the model's head is from the target (``auto_t_star``),
            so a near target changes the image less than a far one. Images that share a t* run
            as one batch.
        guidance: the conditional sampler, as for ``JointDiffusion.sample`` (a ``Guidance``, a kind
            name, or None for the defaults); fields left None take the counterfactual defaults
            (``counterfactual_guidance``). Its ``eta`` is the reverse process's DDIM noise.
        start: how x reaches t*: ``"inversion"`` (deterministic DDIM inversion with the model's
            own ε̂, ``ddim_invert``: unguided, the reverse process gives x back) or ``"noise"``
            (the forward process with fresh noise, ``q_sample``, as in the paper).
        keep: 0 … 1, how hard to hold the counterfactual near x: at every reverse step the clean
            image the guided ε̂ implies is pulled this fraction of the way to x (0: no pull).
            Measured, it slides along the same flip/closeness curve as a smaller t* (keep 0.1 at
            t* = 225, no fading: 0.50 flips at mean |Δ| 0.121, 100 images), so it is off by default.
        min_change: fade out small changes at the end (``fade_small_changes``): a pixel that
            changed by |Δ| < min_change keeps only the share |Δ| / min_change of its change
            (0: off). It drops the faint redrawing spread over the whole image and keeps what the
            guidance changed on purpose (``DEFAULT_MIN_CHANGE``).
        method, steps: ``"ddim"`` with ``steps`` steps spread over [0, t*] (None:
            ``DEFAULT_COUNTERFACTUAL_STEPS``; at most every step) or ancestral ``"ddpm"`` over
            every step from t* (``start="noise"`` only). Inversion uses the same steps.
        generator: draws the forward-process noise (for the whole batch first) and the reverse
            process's: same generator state and batch, same counterfactuals.
        progress: show a progress bar.
        return_trajectory: also return [x_{t*}, …, x_0] (each (N, C, H, W), on the CPU; the
            last is before ``min_change``); needs one t* for the whole batch.

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
    check_image_range(x, "x")  # [-1, 1]; [0, 1] images warn, as classify's do
    check_generator(generator, next(model.parameters()).device)
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be a number in [0, 1], got {keep!r}")
    if isinstance(min_change, bool) or not isinstance(min_change, (int, float)) \
            or not 0.0 <= min_change <= 2.0:
        raise ValueError(f"min_change must be a number in [0, 2] (a change in [-1, 1] units), "
                         f"got {min_change!r}")
    if start == "inversion" and method != "ddim":
        raise ValueError("DDIM inversion needs method='ddim' (ancestral DDPM is not invertible); "
                         "use start='noise' for ancestral sampling")
    if method == "ddim" and steps is None:
        steps = DEFAULT_COUNTERFACTUAL_STEPS
    n = x.shape[0]
    device = next(model.parameters()).device
    g = counterfactual_guidance(guidance, bool(getattr(model, "noise_aware", False)), start)
    x = x.to(device).float()
    target = check_targets(target, n, model.num_classes, device)
    t_stars = _per_image_t_star(model, x, target, t_star)
    groups = t_stars.unique().tolist()
    if return_trajectory and len(groups) > 1:
        raise ValueError(f"return_trajectory needs one t* for the whole batch, got {len(groups)} "
                         f"different ones; pass an int t_star")
    noise = None
    if start == "noise":  # drawn for the whole batch on the generator's device, as in sample_loop
        noise = torch.randn(x.shape, generator=generator,
                            device=generator.device if generator is not None else "cpu").to(device)

    x_cf, trajectory = torch.empty_like(x), None
    with tqdm(total=n, desc="counterfactuals", unit="image", disable=not progress or len(groups) == 1,
              leave=False) as bar:
        for value in groups:
            idx = torch.nonzero(t_stars == value).squeeze(1)
            out = _from_t_star(model, x[idx], target[idx], value, g, start, keep,
                               None if noise is None else noise[idx], method, steps, generator,
                               progress and len(groups) == 1, return_trajectory)
            if return_trajectory:
                out, trajectory = out
            x_cf[idx] = out
            bar.update(len(idx))
    if min_change > 0:
        x_cf = x + fade_small_changes(x_cf - x, min_change)
    return (x_cf, trajectory) if return_trajectory else x_cf


def _from_t_star(model, x, target, t_star, g, start, keep, noise, method, steps, generator,
                 progress, return_trajectory):
    """The counterfactuals of a batch that shares one t*: reach it by ``start``, guided reverse."""
    eps_fn = guided_eps(model, target, x.shape[0], g)
    if keep > 0:
        eps_fn = _held_near(eps_fn, model.schedule, x, keep)
    with eval_mode(model), torch.no_grad():
        if start == "inversion":
            x_t = ddim_invert(model, x, t_star, steps=steps, progress=progress)
        else:
            t = torch.full((x.shape[0],), t_star, dtype=torch.long, device=x.device)
            x_t = model.schedule.q_sample(x, t, noise)
        return sample_loop(eps_fn, model.schedule, tuple(x.shape), method=method, steps=steps,
                           eta=g.eta, generator=generator, device=x.device, progress=progress,
                           x_T=x_t, start_step=t_star, return_trajectory=return_trajectory)


def _per_image_t_star(model, x: Tensor, target: Tensor, t_star) -> Tensor:
    """``t_star`` (an int, an (N,) tensor or "auto") as a checked (N,) long tensor on the CPU."""
    T, n = model.schedule.num_steps, x.shape[0]
    if isinstance(t_star, str):
        if t_star != "auto":
            raise ValueError(f"t_star must be an int in 1..{T - 1}, an ({n},) tensor of them or "
                             f"'auto', got {t_star!r}")
        return auto_t_star(model, x, target).cpu()
    if isinstance(t_star, Tensor):
        if t_star.shape != (n,) or t_star.is_floating_point() or t_star.dtype == torch.bool:
            raise ValueError(f"a t_star tensor must hold one int per image, shape ({n},), got "
                             f"{tuple(t_star.shape)} of dtype {t_star.dtype}")
        t_stars = t_star.long().cpu()
    elif isinstance(t_star, bool) or not isinstance(t_star, int):
        raise ValueError(f"t_star must be an int in 1..{T - 1}, an ({n},) tensor of them or "
                         f"'auto', got {t_star!r}")
    else:
        t_stars = torch.full((n,), t_star, dtype=torch.long)
    if t_stars.min() < 1 or t_stars.max() >= T:
        raise ValueError(f"t_star must lie in 1..{T - 1}, got values from {int(t_stars.min())} "
                         f"to {int(t_stars.max())}")
    return t_stars


@torch.no_grad()
def auto_t_star(model, x: Tensor, target: Tensor | int, *, rule: tuple[float, float, float] = AUTO_T_STAR
                ) -> Tensor:
    """Each image's own t*: further for a target the model finds less likely. (N,) long.

    The model's head says how far the target is: the doubt d = log p(ŷ | x) − log p(target | x)
    ≥ 0 in nats (ŷ the class it predicts; 0 when it already predicts the target). With ``rule`` =
    (base, per_nat, most) as fractions of T,

        t* = T · min(base + per_nat · d, most),   rounded to a multiple of T/40, in 1..T−1.

    A runner-up the model nearly chose needs little noise to flip; a class it rules out needs
    much more (``AUTO_T_STAR`` says how the rule was chosen). Rounding keeps the batch in a few
    groups that share a t*.

    Args: x (N, C, H, W) clean images in [-1, 1]; target an int or (N,) class indices (checked
    as ``counterfactual`` checks them).
    """
    base, per_nat, most = rule
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


def counterfactual_guidance(guidance: Guidance | str | None, noise_aware: bool,
                            start: str = DEFAULT_START) -> Guidance:
    """The ``Guidance`` a counterfactual runs with: ``guidance`` resolved for the model, with the
    counterfactual defaults (``DEFAULT_COUNTERFACTUAL_KIND`` for "auto",
    ``DEFAULT_COUNTERFACTUAL_SCALES``; η ``DEFAULT_INVERSION_ETA`` after inversion,
    ``DEFAULT_CONDITIONAL_ETA`` after fresh noise) where it leaves a field None."""
    g = Guidance.of(guidance)
    if g.kind == "auto":  # counterfactuals have their own default sampler
        g = replace(g, kind=DEFAULT_COUNTERFACTUAL_KIND if noise_aware else "representation")
    kind = g.kind
    if g.scale is None and kind in DEFAULT_COUNTERFACTUAL_SCALES:
        g = replace(g, scale=DEFAULT_COUNTERFACTUAL_SCALES[kind])
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
