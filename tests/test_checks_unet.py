"""jdm.checks for notebook 02: each passes on a right answer, fails on the stub and on wrong ones."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from check_cases import assert_check_behaves
from jdm.unet import Features


# ----------------------------------------------------------------------------- 2.1 time embedding
def embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.cos(), args.sin()], dim=1)


def embedding_pow(t, dim):           # the same formula written as a power: right too
    i = torch.arange(dim // 2, dtype=torch.float32)
    args = t.float()[:, None] / 10000 ** (2 * i / dim)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def embedding_sin_first(t, dim):     # Transformer order (sin, cos) instead of DDPM/jdm's (cos, sin)
    e = embedding(t, dim)
    return torch.cat([e[:, dim // 2:], e[:, :dim // 2]], dim=1)


def embedding_no_two(t, dim):        # ω_i = 10000^(−i/d): the 2 in the exponent forgotten
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2) / dim)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.cos(), args.sin()], dim=1)


def embedding_interleaved(t, dim):   # cos, sin, cos, sin, … instead of all cosines then all sines
    e = embedding(t, dim)
    return torch.stack([e[:, :dim // 2], e[:, dim // 2:]], dim=2).reshape(len(t), dim)


# ----------------------------------------------------------------------------- 2.2 ResBlock
def resblock(block, x, emb):
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.emb_proj(F.silu(emb))[:, :, None, None]
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    return block.skip(x) + h


def resblock_no_silu_on_emb(block, x, emb):
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.emb_proj(emb)[:, :, None, None]
    return block.skip(x) + block.conv2(F.silu(block.norm2(h)))


def resblock_emb_after_conv2(block, x, emb):   # the time shift added at the end, not in the middle
    h = block.conv2(F.silu(block.norm2(block.conv1(F.silu(block.norm1(x))))))
    return block.skip(x) + h + block.emb_proj(F.silu(emb))[:, :, None, None]


def resblock_norm_after_act(block, x, emb):    # SiLU before GroupNorm
    h = block.conv1(block.norm1(F.silu(x)))
    h = h + block.emb_proj(F.silu(emb))[:, :, None, None]
    return block.skip(x) + block.conv2(block.norm2(F.silu(h)))


def resblock_first_emb(block, x, emb):         # one embedding for the whole batch
    h = block.conv1(F.silu(block.norm1(x)))
    h = h + block.emb_proj(F.silu(emb[:1]))[:, :, None, None]
    return block.skip(x) + block.conv2(F.silu(block.norm2(h)))


# ----------------------------------------------------------------------------- 2.3 skips
def n_skips(levels, num_res_blocks):
    return 1 + levels * num_res_blocks + (levels - 1)


def n_skips_no_stem(levels, num_res_blocks):
    return levels * num_res_blocks + (levels - 1)


def n_skips_downsample_every_level(levels, num_res_blocks):
    return 1 + levels * num_res_blocks + levels


# ----------------------------------------------------------------------------- 2.4 pooling
def pooled(features):
    return torch.cat([f.mean(dim=(2, 3)) for f in [features.bottleneck, *features.skips]], dim=1)


def pooled_bottleneck_last(features):
    return torch.cat([f.mean(dim=(2, 3)) for f in [*features.skips, features.bottleneck]], dim=1)


def pooled_max(features):
    return torch.cat([f.amax(dim=(2, 3)) for f in [features.bottleneck, *features.skips]], dim=1)


def pooled_skips_only(features):
    return torch.cat([f.mean(dim=(2, 3)) for f in features.skips], dim=1)


def pooled_sum(features):
    return torch.cat([f.sum(dim=(2, 3)) for f in [features.bottleneck, *features.skips]], dim=1)


# ----------------------------------------------------------------------------- 2.5 editing
def edit(features, scale):
    return Features(features.bottleneck * scale, list(features.skips))


def edit_named_tuple(features, scale):   # NamedTuple._replace: right too
    return features._replace(bottleneck=features.bottleneck * scale)


def edit_in_place(features, scale):
    features.bottleneck.mul_(scale)
    return features


def edit_everything(features, scale):    # scales the skips as well
    return Features(features.bottleneck * scale, [s * scale for s in features.skips])


def edit_returns_tensor(features, scale):
    return features.bottleneck * scale


def edit_drops_skips(features, scale):
    return Features(features.bottleneck * scale, [])


CASES = {
    "timestep_embedding": (embedding, [embedding_sin_first, embedding_no_two, embedding_interleaved]),
    "resblock": (resblock, [resblock_no_silu_on_emb, resblock_emb_after_conv2, resblock_norm_after_act,
                            resblock_first_emb]),
    "n_skips": (n_skips, [n_skips_no_stem, n_skips_downsample_every_level]),
    "pooled_features": (pooled, [pooled_bottleneck_last, pooled_max, pooled_skips_only, pooled_sum]),
    "edit_bottleneck": (edit, [edit_in_place, edit_everything, edit_returns_tensor, edit_drops_skips]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


@pytest.mark.parametrize("name, other_right", [("timestep_embedding", embedding_pow),
                                               ("edit_bottleneck", edit_named_tuple),
                                               ("n_skips", lambda levels, blocks: np.int64(n_skips(levels, blocks)))])
def test_other_right_answers_pass(name, other_right):
    import jdm.checks
    getattr(jdm.checks, name)(other_right)


def test_calling_the_block_itself_does_not_count():
    import jdm.checks
    with pytest.raises(AssertionError, match="sub-modules"):
        jdm.checks.resblock(lambda block, x, emb: block(x, emb))
