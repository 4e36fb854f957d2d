"""jdm.checks for notebook 04: each passes on a right answer, fails on the stub and on wrong ones."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from check_cases import assert_check_behaves


# ----------------------------------------------------------------------------- 4.1 pooled features of x_t
def _x_t(schedule, x0, t, noise):
    ab = schedule.alpha_bars[t]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def noisy_features(unet, schedule, x0, t, noise):
    steps = torch.full((x0.shape[0],), t, dtype=torch.long)
    bottleneck, skips = unet.encode(_x_t(schedule, x0, t, noise), steps)
    return torch.cat([m.mean(dim=(2, 3)) for m in (bottleneck, *skips)], dim=1)


def noisy_features_clean_image(unet, schedule, x0, t, noise):     # forgot to noise the image
    return _pool(unet.encode(x0, torch.full((x0.shape[0],), t, dtype=torch.long)))


def noisy_features_encoded_at_zero(unet, schedule, x0, t, noise):  # x_t, but the UNet is told t = 0
    return _pool(unet.encode(_x_t(schedule, x0, t, noise), torch.zeros(x0.shape[0], dtype=torch.long)))


def noisy_features_max_pool(unet, schedule, x0, t, noise):
    steps = torch.full((x0.shape[0],), t, dtype=torch.long)
    bottleneck, skips = unet.encode(_x_t(schedule, x0, t, noise), steps)
    return torch.cat([m.amax(dim=(2, 3)) for m in (bottleneck, *skips)], dim=1)


def noisy_features_bottleneck_only(unet, schedule, x0, t, noise):
    steps = torch.full((x0.shape[0],), t, dtype=torch.long)
    return unet.encode(_x_t(schedule, x0, t, noise), steps).bottleneck.mean(dim=(2, 3))


def noisy_features_skips_first(unet, schedule, x0, t, noise):
    steps = torch.full((x0.shape[0],), t, dtype=torch.long)
    bottleneck, skips = unet.encode(_x_t(schedule, x0, t, noise), steps)
    return torch.cat([m.mean(dim=(2, 3)) for m in (*skips, bottleneck)], dim=1)


def _pool(features):
    bottleneck, skips = features
    return torch.cat([m.mean(dim=(2, 3)) for m in (bottleneck, *skips)], dim=1)


# ----------------------------------------------------------------------------- 4.2 a linear probe
def _fit(train_x, train_y, num_classes, steps=100):
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    linear = nn.Linear(train_x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear((train_x - mean) / std), train_y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return lambda x: linear((x - mean) / std).argmax(1)


def linear_probe(train_x, train_y, test_x, test_y):
    predict = _fit(train_x, train_y, int(max(train_y.max(), test_y.max())) + 1)
    return (predict(test_x) == test_y).float().mean().item()


def linear_probe_adam(train_x, train_y, test_x, test_y):   # another right answer: Adam, no standardising
    torch.manual_seed(0)
    linear = nn.Linear(train_x.shape[1], int(max(train_y.max(), test_y.max())) + 1)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(linear(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_y).float().mean().item()


def linear_probe_on_training_set(train_x, train_y, test_x, test_y):
    predict = _fit(train_x, train_y, int(train_y.max()) + 1)
    return (predict(train_x) == train_y).float().mean().item()


def linear_probe_fitted_on_everything(train_x, train_y, test_x, test_y):   # test labels leak in
    x, y = torch.cat([train_x, test_x]), torch.cat([train_y, test_y])
    predict = _fit(x, y, int(y.max()) + 1)
    return (predict(test_x) == test_y).float().mean().item()


def linear_probe_percent(train_x, train_y, test_x, test_y):
    return 100 * linear_probe(train_x, train_y, test_x, test_y)


def linear_probe_majority_class(train_x, train_y, test_x, test_y):   # no classifier at all
    return (test_y == train_y.mode().values).float().mean().item()


# ----------------------------------------------------------------------------- 4.3 pooling on a grid
def grid_pool(fmap, k):
    n, c, h, w = fmap.shape
    return fmap.reshape(n, c, k, h // k, k, w // k).mean(dim=(3, 5)).flatten(1)


def grid_pool_strided(fmap, k):      # averages every k-th pixel instead of contiguous cells
    n, c, h, w = fmap.shape
    return fmap.reshape(n, c, h // k, k, w // k, k).mean(dim=(2, 4)).flatten(1)


def grid_pool_channels_last(fmap, k):
    return grid_pool(fmap, k).reshape(fmap.shape[0], fmap.shape[1], k * k).transpose(1, 2).flatten(1)


def grid_pool_sum(fmap, k):
    n, c, h, w = fmap.shape
    return fmap.reshape(n, c, k, h // k, k, w // k).sum(dim=(3, 5)).flatten(1)


CASES = {
    "noisy_features": (noisy_features, [noisy_features_clean_image, noisy_features_encoded_at_zero,
                                        noisy_features_max_pool, noisy_features_bottleneck_only,
                                        noisy_features_skips_first]),
    "linear_probe": (linear_probe, [linear_probe_on_training_set, linear_probe_fitted_on_everything,
                                    linear_probe_percent, linear_probe_majority_class]),
    "grid_pool": (grid_pool, [grid_pool_strided, grid_pool_channels_last, grid_pool_sum]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


def test_the_probe_check_accepts_another_optimiser():
    import jdm.checks
    jdm.checks.linear_probe(linear_probe_adam)
