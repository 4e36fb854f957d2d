"""The noise predictor ε̂(x_t, t): a UNet in the style of guided diffusion (Dhariwal & Nichol 2021),
with its forward pass split into ``encode`` and ``decode``.

Joint diffusion (Deja et al. 2023, Sec. 3) shares the UNet *encoder* between the diffusion model
and a classifier: ``encode(x_t, t)`` returns the bottleneck and every encoder block output
(``Features``), the classifier head pools them, and ``decode(features, t)`` turns them back into
ε̂. The encoder modules (``time_embed``, ``stem``, ``down``, ``middle``) receive gradients from both
losses; the decoder modules (``up``, ``out``) only from the diffusion loss.

Layout of "fmnist-small" (28×28×1, base 32, mults (1, 2, 2), 2 ResBlocks a level, attention at 7)::

    encoder                          output (C×H×W)
    stem 3×3 conv                    32×28×28   ┐
    ResBlock                         32×28×28   │  all 9 outputs are the skips; the decoder
    ResBlock                         32×28×28   │  has 3 ResBlocks a level, each concatenating
    Downsample                       32×14×14   │  the next unused skip (deepest first), and
    ResBlock                         64×14×14   │  an Upsample between levels
    ResBlock                         64×14×14   │
    Downsample                       64×7×7     │
    ResBlock + attention             64×7×7     │
    ResBlock + attention             64×7×7     ┘
    middle: ResBlock + attention, ResBlock  64×7×7  = the bottleneck
    out: GroupNorm → SiLU → 3×3 conv → ε̂  1×28×28

Presets (``UNET_PRESETS``), parameter counts measured with ``count_parameters``:

    ============== ========== ============================================= ============
    name           image      base / mults / res blocks / attention at       parameters
    ============== ========== ============================================= ============
    tiny           28×28×1    8 / (1, 2, 2) / 1 / (7,)                          71,033
    fmnist-small   28×28×1    32 / (1, 2, 2) / 2 / (7,)                      1,623,169
    fmnist         28×28×1    56 / (1, 2, 3) / 2 / (14, 7)                   8,216,769
    cifar10        32×32×3    56 / (1, 2, 3) / 2 / (16, 8)                   8,218,787
    fmnist-paper   28×28×1    64 / (1, 2, 2) / 3 / (28,)                     8,157,633
    ============== ========== ============================================= ============

(The GPU presets stay under 8.38 M parameters so a half-precision checkpoint fits in 16 MiB.)
``fmnist-paper`` is the authors' Fashion-MNIST UNet (64 channels, mults (1, 2, 2), 3 res blocks a
level, attention at 28² and in the middle, dropout 0.3, GroupNorm 32) without their scale-shift
time conditioning; their 9.7 M also counts their classifier head (docs/paper_unet.md).

Depends on torch and einops only: copy this file into another project and it works.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "UNetConfig", "Features", "UNet", "UNET_PRESETS", "count_parameters",
    "timestep_embedding", "ResBlock", "SelfAttention", "Downsample", "Upsample",
]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a ``UNet``; plain data, so it round-trips through JSON (``asdict``).

    Frozen: a preset is shared by every model built from it, so vary it with
    ``dataclasses.replace(UNET_PRESETS["tiny"], dropout=0.0)``, never by assignment.

    Attributes:
        image_channels: C of the input and output images.
        image_size: H = W of the images; divisible by 2 ** (len(channel_mults) - 1).
        base_channels: channels of the stem; level i has base_channels * channel_mults[i].
        channel_mults: one multiplier per resolution level (each level after the first halves H, W).
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more per level).
        attention_resolutions: feature-map side lengths that get self-attention after each ResBlock
            (the middle block always has attention).
        num_heads: attention heads.
        dropout: dropout inside each ResBlock.
        norm_groups: GroupNorm groups; every level's channel count must be divisible by it.
    """

    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)
    num_heads: int = 4
    dropout: float = 0.1
    norm_groups: int = 8

    def resolutions(self) -> list[int]:
        """Feature-map side length at each level, e.g. [28, 14, 7]."""
        return [self.image_size // 2**i for i in range(len(self.channel_mults))]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending field if this config cannot build a UNet."""
        levels = len(self.channel_mults)
        if levels < 1 or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults}")
        if self.image_channels < 1 or self.num_res_blocks < 1 or self.num_heads < 1:
            raise ValueError("image_channels, num_res_blocks and num_heads must be >= 1, got "
                             f"{self.image_channels}, {self.num_res_blocks}, {self.num_heads}")
        factor = 2 ** (levels - 1)
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(f"image_size must be divisible by 2**(len(channel_mults)-1) = {factor} "
                             f"(one halving per extra level), got {self.image_size}; use fewer "
                             f"channel_mults or another image size")
        if self.base_channels < 2 or self.base_channels % 2:
            raise ValueError(f"base_channels must be even (sin/cos pairs), got {self.base_channels}")
        for ch in (self.base_channels * m for m in self.channel_mults):
            if ch % self.norm_groups:
                raise ValueError(f"every level's channels must be divisible by norm_groups="
                                 f"{self.norm_groups}, got {ch} channels")
            if ch % self.num_heads:
                raise ValueError(f"every level's channels must be divisible by num_heads="
                                 f"{self.num_heads}, got {ch} channels")
        unused = set(self.attention_resolutions) - set(self.resolutions())
        if unused:
            raise ValueError(f"attention_resolutions {sorted(unused)} match no feature-map size; "
                             f"this UNet's sizes are {self.resolutions()}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


class Features(NamedTuple):
    """What ``UNet.encode`` returns and ``UNet.decode`` consumes.

    Attributes:
        bottleneck: (N, C_mid, H_min, W_min), the output of the middle block.
        skips: every encoder block output (stem conv, each ResBlock(+attention), each
            downsample), highest resolution first: exactly what the decoder concatenates.
    """

    bottleneck: Tensor
    skips: list[Tensor]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the timesteps (Vaswani et al. 2017, Sec. 3.5; DDPM Appendix B).

    emb[n, i] = cos(t_n · ω_i) and emb[n, dim/2 + i] = sin(t_n · ω_i), ω_i = max_period^(−2i/dim).

    Args:
        t: (N,) timesteps, integer or float.
        dim: embedding size (even).

    Returns:
        (N, dim) float32.
    """
    if t.dim() != 1:
        raise ValueError(f"t must have shape (N,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """Residual block with time conditioning (DDPM / guided diffusion):

    h = conv(SiLU(GN(x))) + Linear(SiLU(emb));  out = skip(x) + conv(dropout(SiLU(GN(h)))),
    where skip is a 1×1 conv when the channel count changes and the identity otherwise.

    Shapes: x (N, in_ch, H, W), emb (N, emb_dim) → (N, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection:

    out = x + proj(softmax(q kᵀ / √d) v),  q, k, v = 1×1 conv(GN(x)).

    Shapes: x (N, C, H, W) → (N, C, H, W).
    """

    def __init__(self, channels: int, num_heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "n (three heads d) h w -> three n heads (h w) d",
                            three=3, heads=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, H·W, d)
        return x + self.proj(rearrange(out, "n heads (h w) d -> n (heads d) h w", h=h, w=w))


class ResAttnBlock(nn.Module):
    """A ResBlock, followed by self-attention when ``attention`` is set.
    x (N, in_ch, H, W), emb (N, emb_dim) → (N, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int,
                 attention: bool, num_heads: int) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout, groups)
        self.attn = SelfAttention(out_ch, num_heads, groups) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    """Strided 3×3 conv: (N, C, H, W) → (N, C, H/2, W/2). ``emb`` is unused (uniform call)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then 3×3 conv: (N, C, H, W) → (N, C, 2H, 2W). ``emb`` is unused."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ε̂(x_t, t) with an exposed encoder: ``forward(x, t) == decode(encode(x, t), t)``.

    Modules: ``time_embed`` (sinusoid → MLP), ``stem``, ``down`` and ``middle`` form the encoder;
    ``up`` and ``out`` form the decoder. ``decode`` recomputes the time embedding from ``t``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = cfg = config
        ch = cfg.base_channels * cfg.channel_mults[0]
        emb_dim = 4 * cfg.base_channels
        block = dict(emb_dim=emb_dim, dropout=cfg.dropout, groups=cfg.norm_groups,
                     num_heads=cfg.num_heads)

        self.time_embed = nn.Sequential(
            nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(cfg.image_channels, ch, 3, padding=1)

        # Encoder: every block's output is kept as a skip (its channels recorded here).
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, (mult, res) in enumerate(zip(cfg.channel_mults, cfg.resolutions())):
            for _ in range(cfg.num_res_blocks):
                out = cfg.base_channels * mult
                self.down.append(ResAttnBlock(ch, out, attention=res in cfg.attention_resolutions,
                                              **block))
                ch = out
                skip_channels.append(ch)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.middle = nn.ModuleList([
            ResAttnBlock(ch, ch, attention=True, **block),
            ResAttnBlock(ch, ch, attention=False, **block),
        ])
        self._feature_channels = [ch, *skip_channels]

        # Decoder: num_res_blocks + 1 blocks a level, each concatenating one skip (deepest first).
        self.up = nn.ModuleList()
        pending = list(skip_channels)
        for level in reversed(range(len(cfg.channel_mults))):
            out = cfg.base_channels * cfg.channel_mults[level]
            attention = cfg.resolutions()[level] in cfg.attention_resolutions
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResAttnBlock(ch + pending.pop(), out, attention=attention, **block))
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(nn.GroupNorm(cfg.norm_groups, ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.image_channels, 3, padding=1))

    def feature_channels(self) -> list[int]:
        """Channels of ``[bottleneck, *skips]`` in that order (known without running a forward)."""
        return list(self._feature_channels)

    def _embed(self, t: Tensor, n: int) -> Tensor:
        """(N,) timesteps → (N, 4·base_channels) time embedding."""
        if t.shape != (n,):
            raise ValueError(f"t must have shape ({n},) to match the batch, got {tuple(t.shape)}")
        return self.time_embed(timestep_embedding(t, self.config.base_channels))

    def encode(self, x: Tensor, t: Tensor) -> Features:
        """Run the encoder and middle block.

        Args:
            x: (N, C, H, W) noisy images x_t in [-1, 1].
            t: (N,) timesteps (long or float).

        Returns:
            ``Features(bottleneck (N, C_mid, H_min, W_min), skips)``; skip shapes follow
            ``feature_channels()[1:]``, highest resolution first.
        """
        cfg = self.config
        expected = (cfg.image_channels, cfg.image_size, cfg.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        emb = self._embed(t, x.shape[0])
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        for block in self.middle:
            h = block(h, emb)
        return Features(h, skips)

    def decode(self, features: Features, t: Tensor) -> Tensor:
        """Turn (possibly modified) encoder features back into the noise prediction.

        Args:
            features: what ``encode`` returned (not modified here, so it can be reused).
            t: (N,) timesteps; the time embedding is recomputed from them.

        Returns:
            ε̂: (N, C, H, W).
        """
        h = features.bottleneck
        emb = self._embed(t, h.shape[0])
        skips = reversed(features.skips)  # an iterator: the caller's list stays as it is
        for block in self.up:
            if isinstance(block, Upsample):
                h = block(h)
            else:
                h = block(torch.cat([h, next(skips)], dim=1), emb)
        return self.out(h)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """ε̂(x_t, t): (N, C, H, W), (N,) → (N, C, H, W)."""
        return self.decode(self.encode(x, t), t)


UNET_PRESETS: dict[str, UNetConfig] = {
    # unit tests: tiny and fast, but with all three levels (28 → 14 → 7) of the real ones
    "tiny": UNetConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                       attention_resolutions=(7,), num_heads=2, dropout=0.0, norm_groups=4),
    # CPU training in the course
    "fmnist-small": UNetConfig(base_channels=32, channel_mults=(1, 2, 2),
                               attention_resolutions=(7,)),
    # the paper-like size, for a GPU
    "fmnist": UNetConfig(base_channels=56, channel_mults=(1, 2, 3), attention_resolutions=(14, 7)),
    "cifar10": UNetConfig(image_channels=3, image_size=32, base_channels=56, channel_mults=(1, 2, 3),
                          attention_resolutions=(16, 8)),
    # the paper's Fashion-MNIST network (train it with T = 500: tools/gpu_run.py --recipe paper)
    "fmnist-paper": UNetConfig(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=3,
                               attention_resolutions=(28,), dropout=0.3, norm_groups=32),
}
