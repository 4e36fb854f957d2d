"""A DDPM: a UNet noise predictor plus its noise schedule, with the training loss and sampling.

``DiffusionModel`` is what the Trainer trains and checkpoints; the joint model extends it with a
classifier head. ``build_model(spec)`` rebuilds a model from the plain dict ``model.spec()``
returns, which is what a checkpoint stores next to the weights.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inputs import check_generator, check_images, check_int, check_timesteps
from .sampling import eval_mode, sample_loop
from .schedule import NoiseSchedule
from .unet import UNet, UNetConfig

__all__ = ["DiffusionModel", "build_model", "take_rows", "MODEL_KINDS"]


class DiffusionModel(nn.Module):
    """ε-prediction DDPM (Ho et al. 2020) around a ``UNet``.

    Args:
        unet: the noise predictor ε̂(x_t, t).
        schedule: the noise schedule (its buffers move with ``.to()``).
    """

    kind = "ddpm"

    def __init__(self, unet: UNet, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.unet = unet
        self.schedule = schedule

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (cfg.image_channels, cfg.image_size, cfg.image_size)

    def spec(self) -> dict:
        """A JSON-able description that ``build_model`` turns back into this architecture."""
        return {"kind": self.kind, "unet": asdict(self.unet.config), "schedule": self.schedule.config()}

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("classify", "predict", "guided_eps", "head"):
                raise AttributeError(
                    f"a {self.kind!r} model has no classifier head, so no .{name}: load a joint "
                    "model (jdm.load_pretrained('jdm-fmnist')) or train one (--model joint)") from None
            raise

    def _check_images(self, x: Tensor, clean: bool = False, strict: bool = True) -> None:
        """``jdm.inputs.check_images`` against this model: shape (N, C, H, W), dtype, device;
        with ``clean``, also the [0, 1] / [0, 255] scale mistakes (one device sync, so not in
        the training loss)."""
        weights = next(self.parameters())
        check_images(x, self.image_shape, dtype=weights.dtype, device=weights.device, clean=clean,
                     strict=strict)

    def diffusion_loss(self, x0: Tensor, rows: Tensor | None = None) -> Tensor:
        """L_simple = E_{t, ε} ||ε − ε̂(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)||², averaged over pixels and batch
        (DDPM Algorithm 1). x0: (N, C, H, W) in [-1, 1]. Returns a scalar.

        ``rows`` (M,) long: compute the loss on those rows of the batch only, after drawing t and
        ε for the whole batch (distributed training: each rank takes its rows of one global
        draw, so the run does not depend on the number of ranks; ``jdm.distributed``)."""
        self._check_images(x0)
        t = self.schedule.sample_timesteps(x0.shape[0]).to(x0.device)
        noise = torch.randn_like(x0)
        x0, t, noise = take_rows(rows, x0, t, noise)
        return F.mse_loss(self.unet(self.schedule.q_sample(x0, t, noise), t), noise)

    def loss(self, x0: Tensor, y: Tensor | None = None,
             rows: Tensor | None = None) -> dict[str, Tensor]:
        """The training loss and its parts: ``{"loss": total, "diffusion": L_simple}``.

        ``y`` is accepted (and ignored) so every model trains through the same call; ``rows`` as
        in ``diffusion_loss``.
        """
        diffusion = self.diffusion_loss(x0, rows)
        return {"loss": diffusion, "diffusion": diffusion}

    def eps(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """The noise prediction ε̂(x_t, t): (N, C, H, W), (N,) or an int → (N, C, H, W).

        Checks x_t's shape, dtype and device and that t lies in 0..T-1 (one device sync); the
        samplers call ``self.unet`` directly, so their loops never pay for the check."""
        self._check_images(x_t)
        return self.unet(x_t, check_timesteps(t, x_t.shape[0], self.schedule.num_steps, x_t.device))

    def check_sampling(self, n: int, steps: int | None, generator) -> None:
        """The checks every public sampler runs once, before any work: ``n`` images (1..MAX_BATCH),
        ``steps`` None or 1..T (a request above T is refused, never clamped), ``generator``."""
        from .inputs import MAX_BATCH

        check_int(n, "n", 1, MAX_BATCH)
        if steps is not None:
            check_int(steps, "steps", 1, self.schedule.num_steps)
        check_generator(generator, next(self.parameters()).device)

    def sample(
        self,
        n: int,
        *,
        method: str = "ddim",
        steps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Draw ``n`` images (n, C, H, W) in [-1, 1]: DDIM with ``steps`` steps (None:
        ``jdm.sampling.DEFAULT_DDIM_STEPS``) and ``eta`` (None: 0, deterministic), or ancestral
        DDPM over every step with ``method="ddpm"``. Runs in eval mode (no dropout) whatever the
        model's mode, and leaves that mode as it was."""
        self.check_sampling(n, steps, generator)
        return self.run_sampler(self.unet, n, method=method, steps=steps,
                                eta=0.0 if eta is None else eta, generator=generator,
                                progress=progress)

    @torch.no_grad()
    def run_sampler(self, eps_fn, n: int, *, method: str = "ddim", steps: int | None = None,
                    eta: float = 0.0, generator: torch.Generator | None = None,
                    progress: bool = True, x_T: Tensor | None = None,
                    start_step: int | None = None, return_trajectory: bool = False):
        """``sample_loop`` with ``eps_fn`` on this model's schedule and device, in eval mode.

        The shared body of every sampler (unconditional, conditional, counterfactual); the
        arguments are ``sample_loop``'s.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        device = next(self.parameters()).device
        with eval_mode(self):
            return sample_loop(eps_fn, self.schedule, (n, *self.image_shape), method=method,
                               steps=steps, eta=eta, generator=generator, device=device,
                               progress=progress, x_T=x_T, start_step=start_step,
                               return_trajectory=return_trajectory)


def take_rows(rows: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor's ``rows`` (an index gather: no host-device sync), or the tensors as they are."""
    return tensors if rows is None else tuple(x[rows] for x in tensors)


def take_tail(k: int, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Each tensor's last ``k`` rows (a static slice: no sync), or the tensors as they are (k = 0)."""
    return tuple(x[-k:] for x in tensors) if k else tensors


MODEL_KINDS: dict[str, type[nn.Module]] = {"ddpm": DiffusionModel}
"""kind → class; jdm.joint adds "joint" and jdm.evaluator "evaluator" (both imported by jdm)."""


def build_model(spec: dict) -> nn.Module:
    """Rebuild an (untrained) model from ``model.spec()``; load weights into it afterwards.

    A class with a ``from_spec`` classmethod (e.g. the evaluator CNN, which has no UNet) builds
    itself; the diffusion models get ``cls(unet, schedule, **other_spec_keys)``.
    """
    try:
        cls = MODEL_KINDS[spec["kind"]]
        if hasattr(cls, "from_spec"):
            return cls.from_spec(spec)
        unet = UNet(UNetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in spec["unet"].items()}))
        schedule = NoiseSchedule(**spec["schedule"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a valid model spec ({err!r}): {spec!r}") from err
    extra = {k: v for k, v in spec.items() if k not in ("kind", "unet", "schedule")}
    return cls(unet, schedule, **extra)
