"""Noise schedules, the forward process q(x_t | x_0) and one reverse step (DDPM and DDIM).

Self-contained (torch only): copy this file into another project and it works.

Conventions
-----------
* ``T`` diffusion steps; a timestep ``t`` is an integer index ``0 <= t < T``. Index ``t`` holds the
  quantities of the paper's step ``t + 1`` (Ho et al. 2020 count 1..T), so ``t = 0`` is the
  first, least noisy step and ``alpha_bar[0] = 1 - beta[0]``.
* Images are float tensors ``(N, C, H, W)`` in [-1, 1]; ``t`` is a ``LongTensor`` of shape ``(N,)``.
* Everything the schedule derives is a registered buffer, so ``schedule.to(device)`` moves it.
  The buffers are not persistent: a schedule is rebuilt from its arguments, never loaded.
  Every lookup follows the *input's* device (a schedule on the GPU serves CPU tensors and the
  other way round), so a model and its images never have to be moved in step by hand.

References: DDPM (Ho et al. 2020, eqs. 4, 6, 7, 11 and Algorithm 2), improved DDPM (Nichol &
Dhariwal 2021, eq. 17, the cosine schedule) and DDIM (Song et al. 2021, eq. 12).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["linear_betas", "cosine_betas", "randn_like", "extract", "values_checkable", "NoiseSchedule",
           "REFERENCE_STEPS"]


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn on the generator's device, then moved to x's.

    A CPU generator therefore gives the same noise whether the model runs on CPU or GPU.
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def extract(a: Tensor, t: Tensor, shape: torch.Size) -> Tensor:
    """``a[t]`` (N,) reshaped to (N, 1, …, 1) to broadcast against ``shape`` (N, C, H, W).

    Unchecked (lucidrains' ``extract``): no host-device sync, no graph break; ``t`` must already
    be a valid index on ``a``'s device.
    """
    return a[t].reshape(t.shape[0], *((1,) * (len(shape) - 1)))


def values_checkable(t: Tensor) -> bool:
    """Whether checking ``t``'s values costs neither a host-device sync nor a ``torch.compile``
    graph break: a CPU tensor in eager mode. (Meta tensors have no values to check.)"""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


REFERENCE_STEPS = 1000
"""The T that the linear schedule's ``beta_start``/``beta_end`` are given for (DDPM's T = 1000)."""


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                 max_beta: float = 0.999) -> Tensor:
    """β_t spaced linearly (DDPM), shape ``(num_steps,)``, float64.

    ``beta_start``/``beta_end`` are DDPM's values for T = 1000; for another T both are scaled by
    1000/T (as improved-diffusion and denoising-diffusion-pytorch do), so that ᾱ_T ≈ 0 for any T
    and sampling can start from pure noise: unscaled, ᾱ_T would be 0.60 at T = 50 and 0.08 at
    T = 250 (notebook 01 shows why). Capped at ``max_beta`` for very small T.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    scale = REFERENCE_STEPS / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """β_t of the cosine schedule (Nichol & Dhariwal 2021, eq. 17). Shape ``(num_steps,)``, float64.

    ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T + s)/(1 + s)) · π/2); β_t = 1 − ᾱ_t/ᾱ_{t−1}, clipped at
    ``max_beta`` to avoid the singularity at t = T.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bars = f / f[0]
    return (1 - alpha_bars[1:] / alpha_bars[:-1]).clamp(max=max_beta)


class NoiseSchedule(nn.Module):
    """A discrete DDPM noise schedule with the forward process and single reverse steps.

    Args:
        num_steps: T, the number of diffusion steps (the paper: 1000; its Fashion-MNIST run 500).
        kind: ``"linear"`` (β from ``beta_start`` to ``beta_end``, scaled by 1000/T) or ``"cosine"``.
        beta_start, beta_end: the linear schedule's end points for T = 1000 (ignored for cosine).
    """

    def __init__(
        self,
        num_steps: int = 1000,
        kind: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        # an int in 1..100_000, checked before linspace allocates (2.5 or 2e9 would fail inside it)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= 100_000:
            raise ValueError(f"num_steps (T) must be an integer in 1..100000, got {num_steps!r}")
        if kind == "linear":
            betas = linear_betas(num_steps, beta_start, beta_end)
        elif kind == "cosine":
            betas = cosine_betas(num_steps)
        else:
            raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear' or 'cosine'")
        self.num_steps = num_steps
        self.kind = kind
        self.beta_start, self.beta_end = beta_start, beta_end

        # Derived in float64, stored in float32: 1 - ᾱ is tiny at small t and loses digits otherwise.
        alphas = 1 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1·x_0 + coef2·x_t, β̃_t)   (DDPM eqs. 6-7)
        posterior_variance = betas * (1 - alpha_bars_prev) / (1 - alpha_bars)
        buffers = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "posterior_variance": posterior_variance,
            # β̃_0 = 0, so its log is -inf: use β̃_1 there (the step at t = 0 adds no noise anyway).
            "posterior_log_variance": torch.log(
                torch.cat([posterior_variance[1:2], posterior_variance[1:]])
            ),
            "posterior_coef_x0": betas * alpha_bars_prev.sqrt() / (1 - alpha_bars),
            "posterior_coef_xt": (1 - alpha_bars_prev) * alphas.sqrt() / (1 - alpha_bars),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, kind={self.kind!r}"

    def config(self) -> dict:
        """The arguments that rebuild this schedule: ``NoiseSchedule(**schedule.config())``."""
        return {
            "num_steps": self.num_steps,
            "kind": self.kind,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    # ----------------------------------------------------------------------------- helpers
    def _at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``values[t]`` reshaped to broadcast against ``like`` (N, C, H, W) → (N, 1, 1, 1)."""
        t = self._check_t(t, like.shape[0])
        return extract(values.to(like.device), t.to(like.device), like.shape).to(like.dtype)

    def _check_t(self, t: Tensor, batch: int | None = None) -> Tensor:
        """Validate timesteps: an integer tensor (N,), N = ``batch`` when given, values in [0, T).

        Type and shape are always checked (free). The values only where that needs no host-device
        sync and no graph break (``values_checkable``): a CUDA ``t`` is checked where it enters
        (``jdm.inputs.check_timesteps``) or is built valid (the samplers, ``sample_timesteps``).
        """
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32) or t.dim() != 1:
            raise ValueError("t must be an integer tensor of shape (N,), e.g. torch.full((N,), 10)")
        if batch is not None and t.shape[0] != batch:
            raise ValueError(f"t must have shape ({batch},) to match the batch, got {tuple(t.shape)}")
        if t.numel() and values_checkable(t) and (int(t.min()) < 0 or int(t.max()) >= self.num_steps):
            raise ValueError(f"t must lie in [0, {self.num_steps - 1}], got {t.min()}..{t.max()}")
        return t

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` timesteps drawn uniformly from {0, …, T−1} (DDPM Algorithm 1). Shape ``(n,)``."""
        device = generator.device if generator is not None else self.betas.device
        t = torch.randint(0, self.num_steps, (n,), generator=generator, device=device)
        return t.to(self.betas.device)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at timesteps ``t`` (N,) → (N,)."""
        alpha_bars = self.alpha_bars.to(t.device)[self._check_t(t)]
        return alpha_bars / (1 - alpha_bars)

    # ----------------------------------------------------------------------------- forward
    def q_sample(
        self,
        x0: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I) in closed form (DDPM eq. 4).

        Args: x0 (N, C, H, W); t (N,); noise (N, C, H, W) or None to draw it. Returns (N, C, H, W).
        """
        if noise is None:
            noise = randn_like(x0, generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        ab = self._at(self.alpha_bars, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_step(self, x_prev: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One forward step x_t ~ q(x_t | x_{t−1}) = N(√α_t · x_{t−1}, β_t I) (DDPM eq. 2).

        Iterating it from x_0 for t = 0, …, k gives the same distribution as ``q_sample(x0, k)``.
        """
        noise = randn_like(x_prev, generator)
        beta = self._at(self.betas, t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_{t−1} | x_t, x_0) (DDPM eqs. 6-7).

        Args: x0, xt (N, C, H, W); t (N,). Returns mean (N, C, H, W), variance and log-variance
        (N, 1, 1, 1).
        """
        mean = self._at(self.posterior_coef_x0, t, xt) * x0 + self._at(self.posterior_coef_xt, t, xt) * xt
        return mean, self._at(self.posterior_variance, t, xt), self._at(self.posterior_log_variance, t, xt)

    def predict_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) · ε̂) / √ᾱ_t, the clean image implied by a noise prediction."""
        ab = self._at(self.alpha_bars, t, xt)
        return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()

    def predict_eps(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε = (x_t − √ᾱ_t · x_0) / √(1 − ᾱ_t), the noise implied by a clean-image estimate."""
        ab = self._at(self.alpha_bars, t, xt)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()

    # ----------------------------------------------------------------------------- reverse
    def ddpm_step(
        self,
        xt: Tensor,
        t: Tensor,
        eps: Tensor,
        generator: torch.Generator | None = None,
        clip_x0: bool = True,
    ) -> Tensor:
        """One ancestral step x_{t−1} ~ p(x_{t−1} | x_t) (DDPM Algorithm 2, σ_t² = β̃_t).

        The mean is the posterior mean at x̂_0 = ``predict_x0(xt, t, eps)`` (clipped to [-1, 1] when
        ``clip_x0``), which equals eq. 11's (x_t − β_t/√(1−ᾱ_t) · ε̂)/√α_t when nothing is clipped.
        No noise is added at t = 0. Args: xt, eps (N, C, H, W); t (N,). Returns (N, C, H, W).
        """
        x0 = self.predict_x0(xt, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        mean, _, log_var = self.q_posterior(x0, xt, t)
        noise = randn_like(xt, generator)
        nonzero = (t != 0).to(xt.dtype).reshape(-1, *([1] * (xt.dim() - 1)))
        return mean + nonzero * (0.5 * log_var).exp() * noise

    def ddim_step(
        self,
        xt: Tensor,
        t: Tensor,
        t_prev: Tensor,
        eps: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_x0: bool = True,
    ) -> Tensor:
        """One DDIM step from t to ``t_prev`` < t (Song et al. 2021, eq. 12).

        ``t_prev = -1`` means "to the clean image" (ᾱ = 1). ``eta = 0`` is deterministic DDIM,
        ``eta = 1`` matches DDPM's variance when ``t_prev = t − 1``.
        Args: xt, eps (N, C, H, W); t, t_prev (N,). Returns (N, C, H, W).
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        if t_prev.shape != t.shape or (values_checkable(t) and (
                bool((t_prev >= t).any()) or bool((t_prev < -1).any()))):
            raise ValueError("t_prev must have t's shape and satisfy -1 <= t_prev < t")
        x0 = self.predict_x0(xt, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps(xt, t, x0)  # keep ε consistent with the clipped x̂_0
        ab = self._at(self.alpha_bars, t, xt)
        # ᾱ at t_prev, with ᾱ = 1 standing for t_prev = -1 (the clean image)
        padded = torch.cat([torch.ones(1, device=self.alpha_bars.device), self.alpha_bars])
        ab_prev = extract(padded.to(xt.device), (t_prev + 1).to(xt.device), xt.shape).to(xt.dtype)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        noise = randn_like(xt, generator)
        direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
        return ab_prev.sqrt() * x0 + direction + sigma * noise

    def timesteps(self, steps: int | None = None, start: int | None = None) -> list[int]:
        """``steps`` timesteps, evenly spaced, in the descending order a sampler visits them.

        They run from ``start`` (default T − 1) down to 0, both included. ``steps=None`` gives every
        one of them (ancestral DDPM); fewer are for DDIM.
        """
        start = self.num_steps - 1 if start is None else start
        if not 0 <= start < self.num_steps:
            raise ValueError(f"start must lie in [0, {self.num_steps - 1}], got {start}")
        steps = start + 1 if steps is None else steps
        if not 1 <= steps <= start + 1:
            raise ValueError(f"steps must lie in [1, {start + 1}], got {steps}")
        if steps == 1:
            return [start]
        return torch.linspace(start, 0, steps, dtype=torch.float64).round().long().tolist()
