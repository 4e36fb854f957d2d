"""Tests for jdm.probe: pooled encoder features and the linear probe."""
import pytest
import torch

from jdm.probe import encoder_features, fit_linear_probe
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, UNet


def test_encoder_features_shapes_and_determinism():
    torch.manual_seed(0)
    unet, schedule = UNet(UNET_PRESETS["tiny"]), NoiseSchedule(100)
    x0 = torch.rand(7, 1, 28, 28) * 2 - 1
    feats = encoder_features(unet, schedule, x0, t=50, batch_size=3)
    assert [f.shape for f in feats] == [(7, c) for c in unet.feature_channels()]
    again = encoder_features(unet, schedule, x0, t=50, batch_size=7)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(feats, again))
    # the pooled bottleneck is the mean over H, W of encode()'s bottleneck at the same x_t
    x_t = schedule.q_sample(x0, torch.full((7,), 50), generator=torch.Generator().manual_seed(0))
    unet.eval()
    with torch.no_grad():
        bottleneck = unet.encode(x_t, torch.full((7,), 50)).bottleneck
    assert torch.allclose(feats[0], bottleneck.mean(dim=(2, 3)), atol=1e-5)
    with pytest.raises(ValueError):
        encoder_features(unet, schedule, x0, t=100)


def test_probe_separates_separable_data_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g)
    centres = torch.randn(3, 8, generator=g) * 4
    x = centres[y] + torch.randn(600, 8, generator=g)
    accuracy, logits = fit_linear_probe(x[:400], y[:400], x[400:], y[400:], return_logits=True)
    assert accuracy > 0.97 and logits.shape == (200, 3)
    assert accuracy == (logits.argmax(1) == y[400:]).float().mean().item()
    noise = torch.randn(600, 8, generator=g)
    assert fit_linear_probe(noise[:400], y[:400], noise[400:], y[400:]) < 0.5


def test_probe_bad_shapes():
    with pytest.raises(ValueError):
        fit_linear_probe(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long),
                         torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
