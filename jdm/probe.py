"""Linear probes: how much class information do a frozen UNet's encoder features hold?

The joint-diffusion paper starts from this observation: the encoder of a diffusion UNet, trained
only to denoise, already carries features a *linear* classifier can read the class from, and how
well depends on the noise level t and on the depth of the block. ``encoder_features`` pools every
encoder output of ``x_t`` into vectors; ``fit_linear_probe`` trains a multinomial logistic
regression on them and reports test accuracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inputs import SEED_LIMIT, check_images, check_int
from .sampling import eval_mode
from .schedule import NoiseSchedule

__all__ = ["encoder_features", "fit_linear_probe"]


@torch.no_grad()
def encoder_features(unet: nn.Module, schedule: NoiseSchedule, x0: Tensor, t: int,
                     batch_size: int = 500, seed: int = 0) -> list[Tensor]:
    """Globally average-pooled encoder features of x_t ~ q(x_t | x_0) at timestep ``t``.

    Args:
        unet: a ``jdm.unet.UNet`` (anything with ``encode(x, t) -> (bottleneck, skips)``).
        schedule: the noise schedule that makes x_t.
        x0: clean images (N, C, H, W) in [-1, 1] (on any device; batches move to the UNet's).
        t: the timestep, 0 <= t < T (t = 0 adds noise of std √β_1 = 0.01: practically clean).
        batch_size: images per forward pass.
        seed: seeds the noise, so two calls (or two models) see the same x_t.

    Returns:
        One (N, C_i) float32 CPU tensor per feature map, in the order ``[bottleneck, *skips]``
        (the order of ``UNet.feature_channels()``).
    """
    check_int(t, "t", 0, schedule.num_steps - 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    check_int(seed, "seed", 0, SEED_LIMIT - 1)
    cfg = getattr(unet, "config", None)
    shape = ((cfg.image_channels, cfg.image_size, cfg.image_size) if cfg is not None
             else tuple(x0.shape[1:]) if isinstance(x0, Tensor) else ())
    check_images(x0, shape, clean=True, name="x0")  # clean images in [-1, 1], checked once
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    pooled: list[list[Tensor]] = []
    with eval_mode(unet):
        for start in range(0, x0.shape[0], batch_size):
            batch = x0[start:start + batch_size].to(device)
            steps = torch.full((batch.shape[0],), t, device=device, dtype=torch.long)
            x_t = schedule.q_sample(batch, steps, generator=generator)
            bottleneck, skips = unet.encode(x_t, steps)
            maps = [bottleneck, *skips]
            if not pooled:
                pooled = [[] for _ in maps]
            for store, fmap in zip(pooled, maps):
                store.append(fmap.float().mean(dim=(2, 3)).cpu())
    return [torch.cat(store) for store in pooled]


def fit_linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                     num_classes: int | None = None, weight_decay: float = 1e-4,
                     max_iter: int = 200, return_logits: bool = False) -> float | tuple[float, Tensor]:
    """Train a multinomial logistic regression on frozen features; return its test accuracy.

    Features are standardised with the training set's mean and standard deviation; the weights are
    fitted full-batch with L-BFGS (deterministic: no minibatch noise) with an L2 penalty.

    Args:
        train_x, test_x: (N, D) features; train_y, test_y: (N,) int64 labels.
        num_classes: default ``max(label) + 1``.
        weight_decay: the L2 penalty on the weights.
        max_iter: L-BFGS iterations.
        return_logits: also return the probe's test logits (e.g. for calibration).

    Returns:
        Test accuracy in [0, 1]; with ``return_logits``, (accuracy, test logits (N_test, K)).
    """
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {tuple(train_x.shape)} "
                         f"and {tuple(test_x.shape)}")
    if train_y.shape != (train_x.shape[0],) or test_y.shape != (test_x.shape[0],):
        raise ValueError("labels must be (N,) and match their features")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    linear = nn.Linear(train_x.shape[1], num_classes)
    nn.init.zeros_(linear.weight); nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        logits = linear(test_x)
    accuracy = (logits.argmax(1) == test_y).float().mean().item()
    return (accuracy, logits) if return_logits else accuracy
