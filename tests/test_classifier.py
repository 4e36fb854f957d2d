"""Tests for jdm.classifier: the pooled-feature classifier head."""
import pytest
import torch

from jdm.classifier import ClassifierHead, pool_features
from jdm.unet import UNET_PRESETS, Features, UNet


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(UNET_PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def features(unet):
    with torch.no_grad():
        return unet.encode(torch.rand(3, 1, 28, 28) * 2 - 1, torch.tensor([0, 10, 40]))


def test_shapes(unet, features):
    head = ClassifierHead(unet.feature_channels(), num_classes=7, hidden=32)
    assert head.in_features == sum(unet.feature_channels())
    assert head(features).shape == (3, 7)
    assert head.pool(features).shape == (3, head.in_features)


def test_pooling_matches_a_manual_computation(unet, features):
    maps = [features.bottleneck, *features.skips]
    manual = torch.cat([m.sum(dim=(2, 3)) / (m.shape[2] * m.shape[3]) for m in maps], dim=1)
    torch.testing.assert_close(pool_features(features), manual)
    # order: bottleneck first, then the skips, highest resolution first
    c0 = unet.feature_channels()[0]
    torch.testing.assert_close(pool_features(features)[:, :c0], features.bottleneck.mean((2, 3)))


def test_head_reads_every_feature_map(unet, features):
    """Changing any single map (even the first, highest-resolution skip) changes the logits."""
    head = ClassifierHead(unet.feature_channels(), hidden=16).eval()
    base = head(features)
    for i in range(len(features.skips) + 1):
        maps = [features.bottleneck.clone(), *[s.clone() for s in features.skips]]
        maps[i] += 1.0
        assert not torch.allclose(head(Features(maps[0], maps[1:])), base), i


def test_examples_are_independent(unet, features):
    """LayerNorm normalises each example alone: a batch of one gives the same logits."""
    head = ClassifierHead(unet.feature_channels(), hidden=16).eval()
    one = Features(features.bottleneck[:1], [s[:1] for s in features.skips])
    torch.testing.assert_close(head(one), head(features)[:1])


def test_bad_input(unet, features):
    head = ClassifierHead(unet.feature_channels())
    with pytest.raises(ValueError, match="feature maps"):
        head(Features(features.bottleneck, features.skips[:-1]))
    with pytest.raises(ValueError, match="feature map 0"):
        head(Features(features.bottleneck[:, :3], features.skips))
    with pytest.raises(ValueError, match="skip 1"):
        head(Features(features.bottleneck, [features.skips[0], features.skips[1][:2],
                                            *features.skips[2:]]))
    with pytest.raises(ValueError, match="Features"):
        head(torch.zeros(3, 16, 7, 7))
    with pytest.raises(ValueError, match="feature_channels"):
        ClassifierHead([])
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierHead([4], num_classes=1)
    with pytest.raises(ValueError, match="dropout"):
        ClassifierHead([4], dropout=1.0)
