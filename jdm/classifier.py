"""The classifier head of joint diffusion: pooled UNet encoder features → class logits.

Deja et al. 2023, Sec. 3 ("Joint diffusion models"): the classifier g_ω reads the *whole* encoder
representation Z = {z_1, …, z_n} of the UNet (every encoder block output plus the bottleneck),
average-pools each map over its spatial positions, concatenates the pooled vectors and maps them
to logits with a small MLP:

    p_ω(y | x) = softmax(MLP([GAP(z_bottleneck), GAP(z_1), …, GAP(z_n)])).

Pooling every level, not only the bottleneck, lets the head use fine, high-resolution features as
well as coarse ones, and keeps the head tiny (its input has sum(channels) entries, whatever H, W).

Normalisation: **LayerNorm** on the pooled vector (not BatchNorm1d). The head is evaluated on very
different batches: labelled subsets of a training batch (sometimes one image), noisy x_t with
mixed t in the noise-aware variant, and single images whose features are optimised by gradient
at sampling time. LayerNorm normalises each example on its own, so (a) it works with batch size
1, (b) train and eval mode compute the same function apart from dropout, and (c) the gradient of
one example's logit never depends on the other examples in the batch — with BatchNorm, guiding a
batch of samples would couple them. The pooled channels also have very different scales (stem vs
bottleneck), which the per-feature LayerNorm affine parameters absorb.

Depends on torch only, plus ``Features`` from ``jdm.unet`` (any ``(bottleneck, skips)`` pair
works): copy this file next to ``unet.py`` and it works (``tests/test_copyable.py`` checks).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

if __package__:  # inside jdm (or any package it is copied into)
    from .unet import Features
else:  # copied next to unet.py as a top-level module
    from unet import Features

__all__ = ["ClassifierHead", "pool_features"]


def pool_features(features: Features) -> Tensor:
    """Global-average-pool the bottleneck and every skip, then concatenate.

    Args:
        features: ``Features(bottleneck (N, C_0, h, w), skips [(N, C_1, H_1, W_1), …])``.

    Returns:
        (N, C_0 + C_1 + … + C_n): ``[mean_hw(bottleneck), mean_hw(skip_1), …]`` in that order.
    """
    bottleneck, skips = features
    return torch.cat([m.mean(dim=(2, 3)) for m in (bottleneck, *skips)], dim=1)


class ClassifierHead(nn.Module):
    """g_ω: pooled encoder features → logits (Deja et al. 2023, Sec. 3).

    ``pool_features`` → LayerNorm → Linear(D, hidden) → SiLU → Dropout → Linear(hidden, classes),
    with D = sum(feature_channels).

    Args:
        feature_channels: channels of ``[bottleneck, *skips]``, i.e. ``unet.feature_channels()``.
        num_classes: number of classes (>= 2).
        hidden: width of the hidden layer.
        dropout: dropout probability before the last layer, in [0, 1).
    """

    def __init__(self, feature_channels: Sequence[int], num_classes: int = 10, hidden: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        feature_channels = [int(c) for c in feature_channels]
        if len(feature_channels) < 1 or any(c < 1 for c in feature_channels):
            raise ValueError("feature_channels must be a non-empty list of positive channel counts "
                             f"(unet.feature_channels()), got {feature_channels}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.feature_channels = feature_channels
        self.num_classes = num_classes
        self.hidden = hidden
        self.dropout_p = dropout
        in_features = sum(feature_channels)
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    @property
    def in_features(self) -> int:
        """Length of the pooled vector, sum(feature_channels)."""
        return sum(self.feature_channels)

    def _check(self, features: Features) -> None:
        try:
            bottleneck, skips = features
            maps = [bottleneck, *skips]
        except (TypeError, ValueError):
            raise ValueError("expected Features(bottleneck, skips) as returned by UNet.encode, got "
                             f"{type(features).__name__}") from None
        if len(maps) != len(self.feature_channels):
            raise ValueError(f"expected {len(self.feature_channels)} feature maps (bottleneck + "
                             f"{len(self.feature_channels) - 1} skips), got {len(maps)}; was the "
                             "head built from this UNet's feature_channels()?")
        n = maps[0].shape[0] if maps[0].dim() > 0 else None
        for i, (m, c) in enumerate(zip(maps, self.feature_channels)):
            if m.dim() != 4 or m.shape[1] != c or m.shape[0] != n:
                raise ValueError(f"feature map {i} ({'bottleneck' if i == 0 else f'skip {i - 1}'}) "
                                 f"must have shape ({n}, {c}, H, W), got {tuple(m.shape)}")

    def pool(self, features: Features) -> Tensor:
        """Checked ``pool_features``: (N, sum(feature_channels))."""
        self._check(features)
        return pool_features(features)

    def forward(self, features: Features) -> Tensor:
        """Logits (N, num_classes) from ``UNet.encode``'s ``Features``."""
        return self.mlp(self.pool(features))

    def extra_repr(self) -> str:
        return (f"feature_channels={self.feature_channels}, num_classes={self.num_classes}, "
                f"hidden={self.hidden}, dropout={self.dropout_p}")
