"""Checks for notebook 04 (what a diffusion model's features know): pooled features of x_t, a
linear probe, and grid pooling between "pooled" and "flattened"."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..classifier import pool_features
from ..probe import fit_linear_probe
from ..schedule import NoiseSchedule
from ..unet import UNet, UNetConfig
from .harness import as_tensor, exercise, expect_close, expect_shape, expect_unchanged, fail

__all__ = ["noisy_features", "linear_probe", "grid_pool"]

# A tiny seeded UNet: 8×8 images, two levels, no attention. Built fresh by each check (< 0.1 s).
_TINY = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                   attention_resolutions=(), norm_groups=4, num_heads=2)


def _tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(_TINY).eval()


@exercise("Exercise 4.1 — pooled features of x_t")
def noisy_features(my_noisy_features) -> int:
    """``my_noisy_features(unet, schedule, x0, t, noise) -> (N, D)``: x_t = q_sample(x0, t, noise)
    at the integer step t, encoded at t, every map of ``[bottleneck, *skips]`` average-pooled over
    H, W, concatenated in that order (D = sum(unet.feature_channels()))."""
    unet = _tiny_unet()
    d = sum(unet.feature_channels())
    cases = [(NoiseSchedule(1000), 300, 5), (NoiseSchedule(1000), 999, 3), (NoiseSchedule(1000), 0, 4),
             (NoiseSchedule(1000), 40, 1), (NoiseSchedule(500, "cosine"), 250, 3)]
    for i, (schedule, t, n) in enumerate(cases):
        g = torch.Generator().manual_seed(i)
        x0 = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
        noise = torch.randn(n, 1, 8, 8, generator=g)
        before = x0.clone()
        steps = torch.full((n,), t, dtype=torch.long)
        with torch.no_grad():
            want = pool_features(unet.encode(schedule.q_sample(x0, steps, noise), steps))
            got = my_noisy_features(unet, schedule, x0, t, noise)
        what = f"the features of {n} image{'s' if n > 1 else ''} at t={t} ({schedule.kind}, T={schedule.num_steps})"
        got = expect_shape(got, (n, d), what)
        expect_close(got, want, what, rtol=1e-4, atol=1e-5)
        expect_unchanged(before, x0, "x0")
    return len(cases)


def _blobs(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    """Gaussian classes with unit covariance around random centres ``spread`` apart (roughly)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * spread / 2 ** 0.5
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g)
    order = torch.randperm(len(y), generator=g)
    return x[order], y[order]


def _accuracy(value, what: str) -> float:
    value = as_tensor(value, what)
    if value.numel() != 1:
        fail(f"{what} should be one number, got a tensor of shape {tuple(value.shape)}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        fail(f"{what} should be a fraction in [0, 1], got {value:.4g}")
    return value


@exercise("Exercise 4.2 — a linear probe")
def linear_probe(my_linear_probe) -> int:
    """``my_linear_probe(train_x, train_y, test_x, test_y) -> float``: fit a linear classifier on
    the training set, return its accuracy on the test set."""
    # 1. well separated classes: any working linear classifier gets (nearly) all of them
    x, y = _blobs(80, 3, 10, spread=12.0, seed=1)
    train, test = (x[:150], y[:150]), (x[150:], y[150:])
    acc = _accuracy(my_linear_probe(*train, *test), "the test accuracy on well-separated classes")
    if acc < 0.95:
        fail(f"on three well-separated classes (a linear probe reaches "
             f"{fit_linear_probe(*train, *test):.2f}) your test accuracy is {acc:.2f}; it should be "
             "at least 0.95")
    # 2. a batch of one test image
    acc = _accuracy(my_linear_probe(*train, test[0][:1], test[1][:1]),
                    "the test accuracy on one test image")
    if acc != 1.0:
        fail(f"with one (easy) test image the accuracy should be 1.0, got {acc:.3g}")
    # 3. overlapping classes: close to the reference probe
    x, y = _blobs(150, 4, 16, spread=0.6, seed=2)
    train, test = (x[:200], y[:200]), (x[200:], y[200:])
    want = fit_linear_probe(*train, *test)
    acc = _accuracy(my_linear_probe(*train, *test), "the test accuracy on overlapping classes")
    if abs(acc - want) > 0.07:
        fail(f"on four overlapping classes ({len(test[1])} test points) a linear probe reaches "
             f"{want:.3f} test accuracy, yours {acc:.3f} (allowed ±0.07)")
    # 4. labels that have nothing to do with the features, few training points in many dimensions:
    #    the training set can be fitted perfectly, the test set stays at chance (1/4)
    g = torch.Generator().manual_seed(3)
    train = torch.randn(60, 40, generator=g), torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(400, 40, generator=g), torch.randint(0, 4, (400,), generator=g)
    acc = _accuracy(my_linear_probe(*train, *test), "the test accuracy on random labels")
    if acc > 0.38:
        fail(f"with labels independent of the features, test accuracy should be near chance (0.25), "
             f"got {acc:.2f}: is it measured on the training set, or did the test labels leak in?")
    return 4


@exercise("Exercise 4.3 — pooling on a grid")
def grid_pool(my_grid_pool) -> int:
    """``my_grid_pool(fmap, k) -> (N, C·k·k)``: average over a k×k grid of equal cells (H and W
    divisible by k), flattened channel-major like ``.flatten(1)`` of an (N, C, k, k) tensor."""
    cases = [((3, 5, 8, 8), (1, 2, 4, 8)), ((1, 4, 7, 7), (1, 7)), ((2, 3, 6, 6), (2, 3))]
    g = torch.Generator().manual_seed(0)
    for shape, ks in cases:
        fmap = torch.randn(*shape, generator=g)
        before = fmap.clone()
        n, c, h, _ = shape
        for k in ks:
            want = F.adaptive_avg_pool2d(fmap.double(), k).flatten(1)
            expect_close(my_grid_pool(fmap, k), want, f"the {k}×{k} grid of a {c}×{h}×{h} map",
                         rtol=1e-4, atol=1e-6)
        expect_unchanged(before, fmap, "fmap")
    return sum(len(ks) for _, ks in cases)
