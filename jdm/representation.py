"""The paper's sampler: conditional sampling by optimising the encoder's representations.

Deja et al. 2023, Sec. 3.2, as the authors' ``scripts/image_sample_with_classifier.py`` runs it:
at every reverse step encode z_t = e_ν(x_t, t) (the bottleneck and every skip) in one graph, let the
classifier head judge z_t itself, move every map by z_t ← z_t + γ · dCE(y, head(z_t))/dz_t — its
total derivative, up the cross-entropy — and decode the moved maps to ε̂. Also here: the rule's
ablations (``gradient="direct"``, ``direction="ascent"``) and jdm's x̂₀ variant, where the head judges
the clean image the moved features imply. ``jdm.sampling`` turns a ``Guidance`` into these.

Copy this file into your project and it works (torch only); the samplers need a model object with
``unet.encode``/``unet.decode``, ``head`` and ``schedule`` (a ``JointDiffusion``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["representation_guided_eps", "representation_step", "representation_x0_guided_eps",
           "target_log_prob", "check_guidance_values", "REPRESENTATION_LEVELS", "GRADIENT_RULES",
           "DIRECTIONS", "DEFAULT_RULES", "DEFAULT_LEVELS"]

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""A noise predictor: x_t (N, C, H, W), t (N,) → ε̂ (N, C, H, W)."""

REPRESENTATION_LEVELS = ("all", "lowest", "highest")
"""Which encoder features a representation sampler moves: every map (the bottleneck and every
skip, as the paper and the authors' code do), or only those at the lowest or highest resolution."""

GRADIENT_RULES = ("total", "direct")
"""How a representation sampler differentiates each map: its total derivative through the encoder
graph (the authors' ``retain_grad`` + ``backward``) or its direct pooled path only (an ablation)."""

DIRECTIONS = ("descent", "ascent")
"""Which way a representation sampler steps on the head's log p(target | z): down it, as the
authors' ``+ sampling_lr · ∇CE`` does, or up it (an ablation for the head on z_t)."""

DEFAULT_RULES = {"representation": ("total", "descent"), "representation-x0": ("direct", "ascent")}
"""(gradient, direction) when ``Guidance.gradient``/``direction`` are None: the authors' rule for
the paper's sampler; for the x̂₀ variant, whose gradient runs through the decoder, the ascent."""

DEFAULT_LEVELS = {"representation": "all", "representation-x0": "lowest"}
"""Which features move when ``Guidance.levels`` is None: every map for the paper's sampler (as the
authors do); the lowest resolution for the x̂₀ variant, whose high-resolution moves draw texture
that fools the head more than it changes the class (``docs/samplers.md``)."""


def target_log_prob(logits: Tensor, target: Tensor) -> Tensor:
    """Σ_i log softmax(logits_i)[target_i] = −CE summed over the batch: a scalar whose gradient
    is each example's own (the authors' ``CrossEntropyLoss(reduction="sum")``, negated)."""
    return logits.log_softmax(1).gather(1, target[:, None]).sum()


def _moved(maps: list[Tensor], levels: str) -> list[int]:
    """Indices into [bottleneck, *skips] of the maps a representation sampler moves."""
    sizes = [m.shape[-1] for m in maps]
    keep = {"all": None, "lowest": min(sizes), "highest": max(sizes)}[levels]
    return [i for i, size in enumerate(sizes) if keep is None or size == keep]


def _features(like, maps: list[Tensor]):
    """The encoder's own ``Features`` type (``like``'s) rebuilt from [bottleneck, *skips]."""
    return type(like)(maps[0], list(maps[1:]))


def representation_guided_eps(model, target: Tensor, *, scale: float,
                              inner_steps: int = 1, levels: str = "all", gradient: str = "total",
                              direction: str = "descent") -> EpsFn:
    """ε̂ from optimised representations: the paper's sampler (Deja et al. 2023, Sec. 3.2), as
    the authors' ``scripts/image_sample_with_classifier.py`` runs it.

    At every reverse step the encoder runs once, z_t = e_ν(x_t, t) (the bottleneck and every
    skip), in one graph. The classifier head reads z_t itself, and ``inner_steps`` times

        z_t ← z_t + γ · dCE(target, head(z_t)) / dz_t        (gradient="total", direction="descent")

    with CE summed over the batch; then ε̂ = d_ψ(z_t, t) goes to the DDPM/DDIM step. Only the
    features move; the UNet and the head stay as trained.

    Which gradient (``gradient``): ``"total"`` is the authors' ``retain_grad()`` + one
    ``backward()``: a skip's derivative also flows through every later encoder block and the middle
    block into the maps after it, so it varies across positions. ``"direct"`` (an ablation)
    detaches each map first: only its pooled path into the head, a constant per channel.
    Which sign (``direction``): ``"descent"`` is the authors' ``+ sampling_lr · ∇CE``, down the
    head's log p(target | z_t); the decoder outputs the *noise* ε̂, and x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ
    subtracts it, so features that carry less of the class make x̂₀ carry more (notebook 06).
    ``"ascent"`` (an ablation) climbs log p. Measured: ``docs/samplers.md``.

    Args:
        model: ``unet.encode``/``unet.decode``, ``head``, ``schedule`` (a ``JointDiffusion``), in
            eval mode.
        target: (N,) long, the class of each image in the batch.
        scale: γ >= 0 (0 gives the unconditional ε̂ exactly).
        inner_steps: feature updates per reverse step (>= 1); the authors take one.
        levels: ``"all"`` (as the paper), ``"lowest"`` or ``"highest"`` resolution only.
        gradient: ``"total"`` (the authors') or ``"direct"`` (``GRADIENT_RULES``).
        direction: ``"descent"`` (the authors') or ``"ascent"`` (``DIRECTIONS``).

    Returns:
        ``eps_fn(x_t (N, C, H, W), t (N,)) → ε̂ (N, C, H, W)`` for ``sample_loop``.
    """
    return _moved_eps(model, _head_on_z(model, target), scale, inner_steps, levels,
                      gradient, direction)


def representation_step(model, target: Tensor, x_t: Tensor, t: Tensor, *,
                        scale: float, inner_steps: int = 1,
                        levels: str = "all", gradient: str = "total", direction: str = "descent"):
    """One reverse step's feature update of the paper's sampler, for looking at it.

    Args: as ``representation_guided_eps``, with x_t (N, C, H, W) and t (N,).

    Returns:
        ``(z_t, moved)``: the encoder's ``Features`` of x_t and the same maps after the update
        (both detached; ``representation_guided_eps`` decodes ``moved`` to ε̂).
    """
    check_guidance_values(scale, inner_steps, levels, gradient, direction)
    return _move_features(model, _head_on_z(model, target), x_t, t, scale, inner_steps, levels,
                          gradient, direction)


def representation_x0_guided_eps(model, target: Tensor, *,
                                 scale: float,
                                 inner_steps: int = 1, levels: str = "lowest",
                                 gradient: str = "direct", direction: str = "ascent") -> EpsFn:
    """ε̂ from optimised representations judged through x̂₀: a jdm variant of the paper's sampler.

    As ``representation_guided_eps``, but the head judges the clean image the moved features
    imply, as it was trained to (clean images, t = 0):

        ε̂ = d_ψ(z, t),   x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t,
        z ← z + γ · √(1−ᾱ_t) · ∇_z log p_ω(target | e_ν(x̂_0, 0)).

    The gradient reaches z through the decoder, so here climbing log p (``direction="ascent"``)
    is the move towards the target. The √(1−ᾱ_t) factor, as in classifier guidance, fades the
    push out as the noise goes. Costs a decoder, an encoder and their backward pass per inner step.

    Args and returns as ``representation_guided_eps`` (defaults: ``levels="lowest"``, see
    ``DEFAULT_LEVELS``; the direct gradient and ascent).
    """
    schedule = model.schedule

    def objective(feats, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        x0 = schedule.predict_x0(x_t, t, model.unet.decode(feats, t))
        log_p = target_log_prob(model.head(model.unet.encode(x0, torch.zeros_like(t))), target)
        sigma = (1 - schedule.alpha_bars.to(x_t.device)[t]).sqrt().reshape(-1, 1, 1, 1)
        return log_p, sigma  # the head judges x̂_0 at t = 0; the push fades with the noise

    return _moved_eps(model, objective, scale, inner_steps, levels, gradient, direction)


def _head_on_z(model, target: Tensor):
    """The paper's objective: log p(target | head(z_t)) of the moved maps themselves, weight 1."""
    def objective(feats, x_t: Tensor, t: Tensor) -> tuple[Tensor, float]:
        return target_log_prob(model.head(feats), target), 1.0
    return objective


def _moved_eps(model, objective, scale: float, inner_steps: int, levels: str, gradient: str,
               direction: str) -> EpsFn:
    """ε̂ = d_ψ(moved z_t, t), the features moved by ``_move_features``; γ = 0: the plain ε̂."""
    check_guidance_values(scale, inner_steps, levels, gradient, direction)

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        if scale == 0:
            with torch.no_grad():
                return model.unet(x_t, t)
        _, moved = _move_features(model, objective, x_t, t, scale, inner_steps, levels,
                                  gradient, direction)
        with torch.no_grad():
            return model.unet.decode(moved, t)

    return eps_fn


def _move_features(model, objective, x_t: Tensor, t: Tensor, scale: float, inner_steps: int,
                   levels: str, gradient: str, direction: str):
    """The representation samplers' shared body: encode x_t once, then ``inner_steps`` times move
    the chosen maps, z ← z ± γ · weight · ∂ log p / ∂z, where ``objective(features, x_t, t) ->
    (log p summed over the batch, weight)`` reads the moved maps. Returns (z_t, moved) detached.

    The moves are offsets δ added to the encoder's maps, m = z + δ, and the derivative is taken
    with respect to z: with ``gradient="total"`` z stays in the encoder's graph, so ∂/∂z of a skip
    also runs through every later block into the maps after it (for one inner step, exactly the
    authors' ``retain_grad()`` + ``backward()``); with ``"direct"`` each z is a detached leaf."""
    sign = 1.0 if direction == "ascent" else -1.0  # descent of log p = the authors' +γ·∇CE
    with torch.enable_grad():
        # x_t as a leaf that wants a gradient, so the encoder's graph exists even when the
        # model's own parameters are frozen; only the maps' gradients are ever computed
        feats = model.unet.encode(x_t.detach().requires_grad_(gradient == "total"), t)
        z = [feats.bottleneck, *feats.skips]
        if gradient == "direct":
            z = [m.detach().requires_grad_(True) for m in z]
        moved = _moved(z, levels)
        offsets = [torch.zeros_like(m) for m in z]
        for k in range(inner_steps):
            maps = [m + d for m, d in zip(z, offsets)]
            log_p, weight = objective(_features(feats, maps), x_t, t)
            grads = torch.autograd.grad(log_p, [z[i] for i in moved],
                                        retain_graph=k + 1 < inner_steps)
            for i, g in zip(moved, grads):
                offsets[i] = offsets[i] + sign * scale * weight * g
    z = [m.detach() for m in z]
    return _features(feats, z), _features(feats, [m + d for m, d in zip(z, offsets)])


def check_guidance_values(scale: float | None, inner_steps: int = 1, levels: str | None = None,
                          gradient: str | None = None, direction: str | None = None) -> None:
    """Raise ``ValueError`` for a γ (or s) that is not a finite number >= 0, an ``inner_steps``
    that is not an int >= 1, or a rule outside ``REPRESENTATION_LEVELS``, ``GRADIENT_RULES`` or
    ``DIRECTIONS``; None: not given. The one check behind ``jdm.Guidance`` and these samplers."""
    if scale is not None and not 0 <= scale < float("inf"):  # also NaN
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale!r}")
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}")
    for name, value, allowed in (("levels", levels, REPRESENTATION_LEVELS),
                                 ("gradient", gradient, GRADIENT_RULES),
                                 ("direction", direction, DIRECTIONS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
