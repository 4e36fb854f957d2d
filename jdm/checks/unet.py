"""Checks for notebook 02 (the UNet): the time embedding, a ResBlock, the encoder's outputs, the
classifier head's pooling and editing the features between ``encode`` and ``decode``."""
from __future__ import annotations

import torch

from ..classifier import pool_features
from ..unet import Features, ResBlock, UNet, UNetConfig
from .harness import as_int, expect_close, expect_equal, expect_shape, exercise, fail

__all__ = ["timestep_embedding", "resblock", "n_skips", "pooled_features", "edit_bottleneck"]


def _tiny_unet(mults=(1, 2), blocks=1, seed=0, image_size=28) -> UNet:
    """A seeded UNet small enough to run in milliseconds (8 channels, no attention, eval mode)."""
    torch.manual_seed(seed)
    cfg = UNetConfig(image_size=image_size, base_channels=8, channel_mults=mults, num_res_blocks=blocks,
                     attention_resolutions=(), norm_groups=4, num_heads=2, dropout=0.0)
    return UNet(cfg).eval()


def _reference_embedding(t, dim: int):
    """emb[n, i] = cos(t_n ω_i), emb[n, dim/2 + i] = sin(t_n ω_i), ω_i = 10000^(−2i/dim), in float64."""
    half = dim // 2
    freqs = 10000.0 ** (-2 * torch.arange(half, dtype=torch.float64) / dim)
    args = torch.as_tensor(t).double()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


@exercise("Exercise 2.1 — the sinusoidal time embedding")
def timestep_embedding(my_timestep_embedding) -> int:
    """``my_timestep_embedding(t, dim) -> (N, dim)`` against the formula (and ``jdm.unet``'s)."""
    cases = [(torch.arange(1000), 32), (torch.tensor([0, 1, 10, 999]), 128),
             (torch.tensor([999]), 8), (torch.tensor([0]), 16), (torch.tensor([2.5, 40.0]), 6)]
    for t, dim in cases:
        got = my_timestep_embedding(t.clone(), dim)
        expect_shape(got, (len(t), dim), f"the embedding of {len(t)} timesteps with dim={dim}")
        # float32 arguments t·ω reach 999 rad: rounding them moves cos/sin by up to ~1e-4
        expect_close(got, _reference_embedding(t, dim), f"emb(t) with dim={dim}", rtol=1e-4, atol=2e-3)
    return len(cases)


def _resblock(in_ch: int, out_ch: int, emb_dim: int, seed: int) -> ResBlock:
    torch.manual_seed(seed)
    block = ResBlock(in_ch, out_ch, emb_dim, dropout=0.1, groups=4)
    with torch.no_grad():   # non-trivial GroupNorm affine parameters, so forgetting one shows
        for norm in (block.norm1, block.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return block.eval()


def _not_the_block_itself(*args, **kwargs):
    fail("the answer called block(x, emb) itself; compute the output from the block's "
         "sub-modules (block.norm1, block.conv1, …)")


@exercise("Exercise 2.2 — a ResBlock's forward pass")
def resblock(my_resblock) -> int:
    """``my_resblock(block, x, emb) -> (N, out_ch, H, W)`` against ``block(x, emb)`` in eval mode."""
    cases = [(8, 16, 32, 3, 6), (16, 16, 32, 2, 5), (8, 8, 16, 1, 4)]   # in, out, emb_dim, N, H
    for seed, (in_ch, out_ch, emb_dim, n, size) in enumerate(cases):
        block = _resblock(in_ch, out_ch, emb_dim, seed)
        g = torch.Generator().manual_seed(seed)
        x, emb = torch.randn(n, in_ch, size, size, generator=g), torch.randn(n, emb_dim, generator=g)
        before = x.clone()
        with torch.no_grad():
            want, want_swapped = block(x, emb), block(x, emb.flip(0))
        block.forward = _not_the_block_itself
        with torch.no_grad():
            got = my_resblock(block, x, emb)
        what = f"the output of a ResBlock({in_ch} → {out_ch} channels) on a batch of {n}"
        expect_close(got, want, what, rtol=1e-4, atol=1e-5)
        if not torch.equal(before, x):
            fail("x was modified in place")
        if n > 1:   # the time embedding must matter: each image gets its own per-channel shift
            with torch.no_grad():
                swapped = my_resblock(block, x, emb.flip(0))
            expect_close(swapped, want_swapped, f"{what} with the embeddings swapped",
                         rtol=1e-4, atol=1e-5)
    return len(cases)


@exercise("Exercise 2.3 — how many skips?")
def n_skips(my_n_skips) -> int:
    """``my_n_skips(levels, num_res_blocks) -> int`` against ``len(UNet(cfg).encode(...).skips)``."""
    cases = [((1,), 1), ((1,), 2), ((1, 2), 1), ((1, 2, 2), 2), ((1, 2, 2), 3), ((1, 1, 2, 2), 1)]
    for mults, blocks in cases:
        unet = _tiny_unet(mults, blocks, image_size=16)   # 16 = 2^4: up to 5 levels fit
        with torch.no_grad():
            want = len(unet.encode(torch.zeros(1, 1, 16, 16), torch.zeros(1)).skips)
        got = as_int(my_n_skips(len(mults), blocks), "the number of skips")
        expect_equal(got, want, f"the number of skips for levels={len(mults)}, "
                                     f"num_res_blocks={blocks}")
    return len(cases)


def _features(seed: int, n: int = 2) -> Features:
    """Features of a tiny UNet on random images (bottleneck 16 ch at 7×7, skips 8/8/8/16 ch)."""
    unet = _tiny_unet(seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return unet.encode(torch.rand(n, 1, 28, 28, generator=g) * 2 - 1,
                           torch.randint(0, 1000, (n,), generator=g))


@exercise("Exercise 2.4 — the classifier head's input")
def pooled_features(my_pooled_features) -> int:
    """``my_pooled_features(features) -> (N, Σ C_k)`` against ``jdm.classifier.pool_features``."""
    g = torch.Generator().manual_seed(3)
    # hand-made features with distinct channel counts and sizes, so every order mistake shows
    odd = Features(torch.randn(3, 5, 2, 2, generator=g) + 1,
                   [torch.randn(3, 2, 6, 6, generator=g) - 1, torch.randn(3, 3, 4, 4, generator=g),
                    torch.randn(3, 4, 3, 5, generator=g) * 2])
    cases = [_features(0), _features(1, n=1), odd]
    for i, feats in enumerate(cases):
        before = [feats.bottleneck.clone()] + [s.clone() for s in feats.skips]
        n_skips_before = len(feats.skips)
        got = my_pooled_features(feats)
        want = pool_features(feats)
        n = feats.bottleneck.shape[0]
        expect_shape(got, tuple(want.shape), f"the pooled features of {n} image(s) "
                     f"(bottleneck with {feats.bottleneck.shape[1]} channels + {n_skips_before} skips)")
        expect_close(got[:, :feats.bottleneck.shape[1]], want[:, :feats.bottleneck.shape[1]],
                     "the first columns (the bottleneck's pooled channels)", rtol=1e-5, atol=1e-6)
        expect_close(got, want, "the pooled feature vector", rtol=1e-5, atol=1e-6)
        after = [feats.bottleneck] + list(feats.skips)
        if len(after) != len(before) or any(not torch.equal(a, b) for a, b in zip(before, after)):
            fail("the features were modified; pooling must leave its input as it was")
    return len(cases)


@exercise("Exercise 2.5 — editing the bottleneck")
def edit_bottleneck(my_edit_bottleneck) -> int:
    """``my_edit_bottleneck(features, scale) -> Features``: bottleneck × scale, the rest kept, the
    input untouched; decoding the result differs from decoding the input (and not for scale 1)."""
    unet = _tiny_unet(seed=4)
    g = torch.Generator().manual_seed(4)
    x, t = torch.rand(2, 1, 28, 28, generator=g) * 2 - 1, torch.tensor([10, 600])
    cases = 0
    for scale in (1.5, 0.0, -2.0, 1.0):
        with torch.no_grad():
            feats = unet.encode(x, t)
        before_bottleneck = feats.bottleneck.clone()
        before_skips = [s.clone() for s in feats.skips]
        with torch.no_grad():
            edited = my_edit_bottleneck(feats, scale)
        if not (hasattr(edited, "bottleneck") and hasattr(edited, "skips")):
            fail(f"should return a Features(bottleneck, skips), got {type(edited).__name__}")
        if not torch.equal(feats.bottleneck, before_bottleneck):
            fail(f"the input's bottleneck was modified (scale={scale}); build a new tensor instead")
        if len(feats.skips) != len(before_skips) or any(
                not torch.equal(a, b) for a, b in zip(feats.skips, before_skips)):
            fail(f"the input's skips were modified (scale={scale})")
        expect_close(edited.bottleneck, scale * before_bottleneck, f"the edited bottleneck at scale={scale}",
                     rtol=1e-6, atol=1e-7)
        expect_equal(len(edited.skips), len(before_skips), f"the number of skips kept at scale={scale}")
        for k, (got, want) in enumerate(zip(edited.skips, before_skips)):
            expect_close(got, want, f"skips[{k}] at scale={scale} (skips are kept as they are)",
                         rtol=0, atol=0)
        with torch.no_grad():
            moved = (unet.decode(edited, t) - unet.decode(feats, t)).abs().max().item()
        if scale != 1.0 and moved == 0:
            fail(f"decoding the edited features at scale={scale} gives the same ε̂ as the original")
        if scale == 1.0 and moved > 1e-6:
            fail(f"at scale=1 the decoded ε̂ should not change, it moved by {moved:.2e}")
        cases += 1
    return cases
