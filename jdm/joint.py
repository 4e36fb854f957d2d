"""The joint diffusion model: one UNet that both denoises and classifies (Deja et al. 2023).

The UNet encoder e_ν is shared: the decoder d_ψ turns its features into ε̂ (the diffusion model)
and the classifier head g_ω turns the same kind of features into logits. Training minimises
(Sec. 3, eq. for the joint loss)

    L = L_simple + α · CE(g_ω(e_ν(x_0, t=0)), y),

so the classification gradient reaches the shared encoder (``unet.time_embed``, ``stem``,
``down``, ``middle``) and the head, while the decoder (``unet.up``, ``unet.out``) only ever sees
the diffusion loss. That holds *by construction* here: the classification path runs
``unet.encode`` and the head, never ``unet.decode``.

Reductions, and what α means with them
--------------------------------------
* ``L_simple`` is the mean over pixels and batch of (ε − ε̂)² (``DiffusionModel.diffusion_loss``).
* ``CE`` is the mean over the *labelled* examples of the batch (label −1 = unlabelled; those
  images only give the diffusion loss). A batch without labels gives CE = 0, not NaN.

With these reductions both terms are O(1) per example and α is a plain ratio of the two
gradients' weights. The authors' public code (KamilDeja/joint_diffusion,
``guided_diffusion/gaussian_diffusion.py``) uses the same two reductions, per-image mean MSE plus
``classifier_loss_scaling · mean CE``, with ``classifier_loss_scaling = 1.0`` as its default; the
α = 0.001 quoted in the paper does not carry over to these reductions. The default here is
**α = 0.1**, chosen by measurement; see ``DEFAULT_ALPHA``.

Options
-------
* ``noise_aware=True``: the head is *also* trained on the noisy features it sees at sampling
  time, CE(g_ω(e_ν(x_t, t)), y) with the same x_t and t as the diffusion term (the encoder runs
  once on x_t; its features go both to the decoder and to the head). Needed for classifier
  guidance (``classify(x_t, t)``). The total becomes L_simple + α·(CE_clean + CE_noisy).
* ``augment=True``: classifier-side augmentation on the clean CE path only (``augment_images``:
  random horizontal flip and a random translation of up to ``max_shift`` pixels with replicated
  borders). The diffusion term always sees the original images.

Timestep convention: ``t`` indexes the schedule as in ``jdm.schedule`` (index 0 is the first,
least noisy step). "t = 0" for the clean image means: pass x_0 itself with time index 0, as the
authors' code does (``classify(x_start, zeros_like(t))``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .classifier import ClassifierHead
from .diffusion import MODEL_KINDS, DiffusionModel, take_rows, take_tail
from .inference import INFERENCE_BATCH, batched
from .inputs import check_images, check_timesteps
from .sampling import DEFAULT_CONDITIONAL_ETA, Guidance, eval_mode, guided_eps
from .schedule import NoiseSchedule, values_checkable
from .unet import UNet

__all__ = ["JointDiffusion", "augment_images", "DEFAULT_ALPHA"]

DEFAULT_ALPHA = 0.1
"""Default weight α of the classification loss: the accuracy of α = 1 at a sixth of its cost in
L_simple on the "tiny" UNet (``docs/defaults.md``; the reductions are in the module docstring)."""


def augment_images(x: Tensor, max_shift: int = 2, flip: bool = True,
                   generator: torch.Generator | None = None) -> Tensor:
    """Classifier-side augmentation: random horizontal flip and random translation.

    Each image is flipped left-right with probability 1/2 (if ``flip``) and shifted by an integer
    (dy, dx) drawn uniformly from [−max_shift, max_shift]², the uncovered border filled by
    replicating the edge pixels (the Fashion-MNIST background for Fashion-MNIST). Draws from the
    global RNG unless a ``generator`` is given, so the Trainer's exact resume still holds.
    (Written with tensor indexing rather than ``torchvision.transforms.v2``, whose transforms
    draw one set of parameters for a whole batch; here every image gets its own.)

    Args:
        x: (N, C, H, W) images.
        max_shift: largest shift in pixels (>= 0; 0 disables translation).

    Returns:
        (N, C, H, W), a new tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    n, _, h, w = x.shape
    dev = generator.device if generator is not None else x.device
    if flip:
        flips = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device)
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    if max_shift > 0:
        p = max_shift
        shifts = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=dev).to(x.device)
        padded = F.pad(x, (p, p, p, p), mode="replicate")  # (N, C, H + 2p, W + 2p)
        rows = torch.arange(h, device=x.device)[None, :] + shifts[0][:, None]  # (N, H)
        cols = torch.arange(w, device=x.device)[None, :] + shifts[1][:, None]  # (N, W)
        c = x.shape[1]
        # two gathers (rows, then columns) rather than advanced indexing: the same pixels, and a
        # graph that torch.compile's AOT autograd traces (the indexing's permutes failed there)
        x = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))  # (N, C, H, W + 2p)
        x = x.gather(3, cols[:, None, None, :].expand(n, c, h, w))               # (N, C, H, W)
    return x.contiguous()


def _is_clean(t: Tensor | int | None) -> bool:
    """Whether ``classify(x, t)`` sees clean images (t None or the int 0), whose scale is checked."""
    return t is None or (isinstance(t, int) and t == 0)


class JointDiffusion(DiffusionModel):
    """A DDPM whose UNet encoder also feeds a classifier head (Deja et al. 2023, Sec. 3).

    Args:
        unet: the shared UNet (encoder e_ν + decoder d_ψ).
        schedule: the noise schedule.
        head: the classifier head g_ω; default ``ClassifierHead(unet.feature_channels(),
            num_classes, head_hidden, head_dropout)``.
        alpha: weight α of the classification loss (>= 0; see the module docstring).
        num_classes: number of classes.
        noise_aware: also train the head on (x_t, t) features (for classifier guidance).
        augment: flip/translate the images of the clean classification path.
        head_hidden, head_dropout: sizes of the default head (ignored when ``head`` is given,
            except that ``spec()`` then reports the given head's own sizes).
    """

    kind = "joint"

    def __init__(
        self,
        unet: UNet,
        schedule: NoiseSchedule,
        head: ClassifierHead | None = None,
        *,
        alpha: float = DEFAULT_ALPHA,
        num_classes: int = 10,
        noise_aware: bool = False,
        augment: bool = False,
        head_hidden: int = 256,
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__(unet, schedule)
        if not alpha >= 0:  # also rejects NaN
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if head is None:
            head = ClassifierHead(unet.feature_channels(), num_classes, head_hidden, head_dropout)
        if head.feature_channels != unet.feature_channels():
            raise ValueError(f"the head expects feature channels {head.feature_channels} but the "
                             f"UNet produces {unet.feature_channels()}; build the head from "
                             "unet.feature_channels()")
        if head.num_classes != num_classes:
            raise ValueError(f"the head has {head.num_classes} classes but num_classes={num_classes}")
        self.head = head
        self.alpha = float(alpha)
        self.num_classes = num_classes
        self.noise_aware = bool(noise_aware)
        self.augment = bool(augment)

    def spec(self) -> dict:
        """``DiffusionModel.spec()`` plus the joint settings, so ``build_model`` rebuilds it."""
        return {**super().spec(), "alpha": self.alpha, "num_classes": self.num_classes,
                "noise_aware": self.noise_aware, "augment": self.augment,
                "head_hidden": self.head.hidden, "head_dropout": self.head.dropout_p}

    # ------------------------------------------------------------------------------ checks
    def _check_labels(self, y: Tensor, n: int) -> Tensor:
        """(n,) long labels in −1..num_classes−1. Type and shape always; the values only where
        that costs no host-device sync or graph break (``values_checkable``: the ``Trainer``
        checks a CUDA data set's labels once, before training)."""
        if not isinstance(y, Tensor) or y.shape != (n,) or y.is_floating_point() or y.is_complex():
            raise ValueError(f"labels must be an integer tensor of shape ({n},) (−1 = unlabelled), "
                             f"got {tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
                             + (f" of dtype {y.dtype}" if isinstance(y, Tensor) else ""))
        if y.numel() and values_checkable(y) and (y.min() < -1 or y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, or be −1 for "
                             f"unlabelled images; got values from {int(y.min())} to {int(y.max())}")
        return y.long()

    def _timesteps(self, t: Tensor | int | None, n: int, device: torch.device) -> Tensor:
        """(n,) long steps on ``device`` from None (= 0), an int or an (n,) tensor, all in [0, T)."""
        return check_timesteps(t, n, self.schedule.num_steps, device)

    # ------------------------------------------------------------------------------ the loss
    def loss(self, x0: Tensor, y: Tensor | None = None, rows: Tensor | None = None,
             labelled_tail: int = 0) -> dict[str, Tensor]:
        """The joint loss L = L_simple + α · CE (Deja et al. 2023, Sec. 3) and its parts.

        Args:
            x0: (N, C, H, W) clean images in [-1, 1].
            y: (N,) integer labels, −1 for unlabelled images; None = no labels at all.
            rows: (M,) long, compute on these rows only, after drawing t, ε and the augmentation
                for the whole batch (distributed training, see ``DiffusionModel.diffusion_loss``).
            labelled_tail: k > 0 when only the last k rows (of ``rows``) can carry labels, as in
                the Trainer's labelled batches: the clean-image CE runs on those alone (a static
                slice, no sync) instead of on every row with the unlabelled ones masked out.

        Returns:
            ``{"loss": L, "diffusion": L_simple, "classification": CE on clean images,
            "accuracy": clean-image accuracy of the labelled examples}`` (CE and accuracy are 0
            when no example is labelled), plus ``"classification_noisy"`` (CE of the head on
            (x_t, t)) when ``noise_aware``. All scalars.
        """
        self._check_images(x0)
        y = self._check_labels(y, x0.shape[0]) if y is not None else None
        zero = x0.new_zeros(())

        # L_simple, drawn in the same order as DiffusionModel.diffusion_loss (t, then ε): with
        # α = 0 the two models' losses agree under the same seed.
        t = self.schedule.sample_timesteps(x0.shape[0]).to(x0.device)
        noise = torch.randn_like(x0)
        batch = x0  # the whole batch: the augmentation below is drawn for all of it too
        x0, t, noise = take_rows(rows, x0, t, noise)
        feats = self.unet.encode(self.schedule.q_sample(x0, t, noise), t)
        diffusion = F.mse_loss(self.unet.decode(feats, t), noise)

        classification, accuracy, noisy = zero, zero, zero
        if y is not None:
            # Masked over the whole batch, never ``x0[y >= 0]``: no data-dependent shape, so no
            # host-device sync and no graph break. Unlabelled rows (−1) are ignored by the CE and
            # the accuracy; a batch without labels gives 0 (the count is clamped to 1).
            x_c = augment_images(batch) if self.augment and self.training else batch
            x_c, y = take_rows(rows, x_c, y)
            x_c, y_c = take_tail(labelled_tail, x_c, y)
            labelled = y_c >= 0
            count = labelled.sum().clamp(min=1)
            logits = self._logits(x_c, self._timesteps(0, x_c.shape[0], x0.device))
            classification = F.cross_entropy(logits, y_c, ignore_index=-1, reduction="sum") / count
            accuracy = ((logits.argmax(1) == y_c) & labelled).sum() / count
            if self.noise_aware:
                # the same features the decoder used, (x_t, t), of every row
                noisy = (F.cross_entropy(self.head(feats), y, ignore_index=-1, reduction="sum")
                         / (y >= 0).sum().clamp(min=1))

        total = diffusion + self.alpha * (classification + noisy)
        parts = {"loss": total, "diffusion": diffusion, "classification": classification,
                 "accuracy": accuracy}
        if self.noise_aware:
            parts["classification_noisy"] = noisy
        return parts

    # ------------------------------------------------------------------------------ inference
    def classify(self, x: Tensor, t: Tensor | int | None = None) -> Tensor:
        """Logits g_ω(e_ν(x, t)): (N, C, H, W) → (N, num_classes).

        ``t=None`` (or 0) classifies clean images, as trained by the joint loss; an int or an
        (N,) tensor classifies noisy x_t at that step (meaningful for a ``noise_aware`` model).
        Keeps gradients (guidance differentiates through it) and uses the model's current mode:
        call ``model.eval()`` first, or use ``predict``. Clean images are checked for their scale
        (``jdm.inputs.check_image_range``: [0, 255] is an error, [0, 1] a warning). Values beyond
        ±1 pass here, because ``classify`` also judges predicted x̂_0 estimates (guidance,
        notebook 06, tests/test_guidance.py), which leave [-1, 1]; ``predict``, the entry point
        for data, refuses them.
        """
        self._check_images(x, clean=_is_clean(t), strict=False)
        return self._logits(x, self._timesteps(t, x.shape[0], x.device))

    def _logits(self, x: Tensor, t: Tensor) -> Tensor:
        """g_ω(e_ν(x, t)) without input checks (the training loss: encoder and head, never the
        decoder). x: (N, C, H, W), t: (N,) long → (N, num_classes)."""
        return self.head(self.unet.encode(x, t))

    def sample(self, n: int, *, target: Tensor | int | None = None,
               guidance: Guidance | str | None = None, method: str = "ddim",
               steps: int | None = None, eta: float | None = None,
               generator: torch.Generator | None = None, progress: bool = True) -> Tensor:
        """Draw ``n`` images (n, C, H, W) in [-1, 1]; with ``target``, of those classes.

        Args:
            target: None samples unconditionally (as ``DiffusionModel.sample``); an int or an (n,)
                tensor of class indices samples conditionally.
            guidance: how to steer (a ``jdm.Guidance``, a kind name, or None for the defaults:
                ``jdm.sampling.DEFAULT_GUIDANCE``); only used with ``target``.
            method, steps: ``"ddim"`` with ``steps`` steps (None: ``DEFAULT_DDIM_STEPS``) or
                ancestral ``"ddpm"`` over every step.
            eta: DDIM noise; None means the method's default: 0 without a target,
                ``guidance.eta`` with one.
            generator: makes the draw reproducible.
        """
        self.check_sampling(n, steps, generator)
        if target is None:
            eps_fn, default_eta = self.unet, 0.0
        else:
            g = Guidance.of(guidance)
            eps_fn = guided_eps(self, target, n, g)
            default_eta = DEFAULT_CONDITIONAL_ETA if g.eta is None else g.eta
        return self.run_sampler(eps_fn, n, method=method, steps=steps,
                                eta=default_eta if eta is None else eta, generator=generator,
                                progress=progress)

    def logits(self, x: Tensor, t: Tensor | int | None = None,
               batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Logits (N, num_classes) on the CPU of images x (N, C, H, W) anywhere, in eval mode
        (restored afterwards), ``batch_size`` at a time. Checked as ``classify``, but strictly."""
        weights = next(self.parameters())
        check_images(x, self.image_shape, dtype=weights.dtype, clean=_is_clean(t))
        t = self._timesteps(t, x.shape[0], weights.device)
        with eval_mode(self):
            return batched(self._logits, x, t, batch_size=batch_size, device=weights.device)

    def predict(self, x: Tensor, t: Tensor | int | None = None,
                batch_size: int = INFERENCE_BATCH) -> Tensor:
        """Class indices (N,) long: ``logits(x, t).argmax(1)``."""
        return self.logits(x, t, batch_size).argmax(1)


MODEL_KINDS[JointDiffusion.kind] = JointDiffusion  # build_model(spec) with kind "joint"
