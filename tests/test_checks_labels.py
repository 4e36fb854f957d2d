"""jdm.checks for notebook 08: each passes on a right answer, fails on the stub and on wrong ones."""
import pytest
import torch
import torch.nn.functional as F

from check_cases import assert_check_behaves


# ----------------------------------------------------------------------------- 8.1 a budget as a share
def fraction_subset(labels, fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().squeeze(1)
        k = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def fraction_subset_no_floor(labels, fraction, seed=0):     # a class of 1 image at 10 % keeps none
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=g)[:round(fraction * len(members))]])
    return torch.cat(chosen).sort().values


def fraction_subset_truncates(labels, fraction, seed=0):    # int() instead of round(): 2.1 and 2.9 → 2
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().squeeze(1)
        k = max(1, int(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def fraction_subset_reseeds(labels, fraction, seed=0):      # a fresh generator for every class
    chosen = []
    for c in range(int(labels.max()) + 1):
        g = torch.Generator().manual_seed(seed)
        members = (labels == c).nonzero().squeeze(1)
        k = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def fraction_subset_unsorted(labels, fraction, seed=0):     # class by class, as drawn
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(int(labels.max()) + 1):
        members = (labels == c).nonzero().squeeze(1)
        k = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(chosen)


def fraction_subset_not_balanced(labels, fraction, seed=0):  # a share of the whole set, any class
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(labels), generator=g)[:max(1, round(fraction * len(labels)))].sort().values


# ----------------------------------------------------------------------------- 8.2 the semi-supervised loss
def semi_supervised_loss(eps_hat, noise, logits, labels, alpha):
    labelled = labels >= 0
    diffusion = F.mse_loss(eps_hat, noise)
    if not labelled.any():
        return diffusion
    return diffusion + alpha * F.cross_entropy(logits[labelled], labels[labelled])


def semi_supervised_loss_masked_mean(eps_hat, noise, logits, labels, alpha):   # another right answer
    mask = (labels >= 0).float()
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return ((eps_hat - noise) ** 2).mean() + alpha * (ce * mask).sum() / mask.sum().clamp(min=1)


def ce_over_whole_batch(eps_hat, noise, logits, labels, alpha):     # divides by N, not by |labelled|
    labelled = labels >= 0
    ce = F.cross_entropy(logits[labelled], labels[labelled], reduction="sum") / len(labels)
    return F.mse_loss(eps_hat, noise) + alpha * ce


def ce_with_minus_one(eps_hat, noise, logits, labels, alpha):       # −1 reaches cross_entropy: error
    return F.mse_loss(eps_hat, noise) + alpha * F.cross_entropy(logits, labels)


def ce_ignore_index(eps_hat, noise, logits, labels, alpha):         # NaN when no image is labelled
    return F.mse_loss(eps_hat, noise) + alpha * F.cross_entropy(logits, labels, ignore_index=-1)


def mse_of_labelled_only(eps_hat, noise, logits, labels, alpha):    # unlabelled images dropped entirely
    labelled = labels >= 0
    if not labelled.any():
        return eps_hat.sum() * 0
    return (F.mse_loss(eps_hat[labelled], noise[labelled])
            + alpha * F.cross_entropy(logits[labelled], labels[labelled]))


def mse_summed(eps_hat, noise, logits, labels, alpha):              # sum instead of mean
    labelled = labels >= 0
    diffusion = F.mse_loss(eps_hat, noise, reduction="sum")
    if not labelled.any():
        return diffusion
    return diffusion + alpha * F.cross_entropy(logits[labelled], labels[labelled])


def loss_as_float(eps_hat, noise, logits, labels, alpha):           # .item(): no gradient left
    return semi_supervised_loss(eps_hat, noise, logits, labels, alpha).item()


def loss_detached_ce(eps_hat, noise, logits, labels, alpha):        # CE computed on detached logits
    return semi_supervised_loss(eps_hat, noise, logits.detach(), labels, alpha)


def labels_zeroed_in_place(eps_hat, noise, logits, labels, alpha):  # overwrites the caller's labels
    labelled = labels >= 0
    diffusion = F.mse_loss(eps_hat, noise)
    labels[~labelled] = 0
    ce = F.cross_entropy(logits, labels, reduction="none")[labelled]
    return diffusion + alpha * (ce.mean() if labelled.any() else 0)


# ----------------------------------------------------------------------------- 8.3 the labelled stream
def labelled_batch(labelled, step, size, seed):
    n, out = len(labelled), []
    for position in range(step * size, (step + 1) * size):
        p, within = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 500_009 + p))
        out.append(labelled[perm[within]])
    return torch.stack(out)


def labelled_batch_one_order(labelled, step, size, seed):    # every pass in pass 0's order
    n = len(labelled)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 500_009))
    return labelled[perm[torch.arange(step * size, (step + 1) * size) % n]]


def labelled_batch_short_at_boundary(labelled, step, size, seed):   # stops at the end of a pass
    n = len(labelled)
    p, within = divmod(step * size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 500_009 + p))
    return labelled[perm[within:within + size]]


def labelled_batch_positions(labelled, step, size, seed):     # positions within the subset, not indices
    n = len(labelled)
    return torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + 500_009 + pos // n))[pos % n] for pos in range(step * size, (step + 1) * size)])


def labelled_batch_pass_per_step(labelled, step, size, seed):   # a fresh pass for every step
    n = len(labelled)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 500_009 + step))
    return labelled[perm[torch.arange(size) % n]]


CASES = {
    "fraction_subset": (fraction_subset, [fraction_subset_no_floor, fraction_subset_truncates,
                                          fraction_subset_reseeds, fraction_subset_unsorted,
                                          fraction_subset_not_balanced]),
    "semi_supervised_loss": (semi_supervised_loss, [ce_over_whole_batch, ce_with_minus_one,
                                                    ce_ignore_index, mse_of_labelled_only, mse_summed,
                                                    loss_as_float, loss_detached_ce,
                                                    labels_zeroed_in_place]),
    "labelled_stream": (labelled_batch, [labelled_batch_one_order, labelled_batch_short_at_boundary,
                                         labelled_batch_positions, labelled_batch_pass_per_step]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


def test_other_right_answers_pass():
    import jdm.checks
    jdm.checks.semi_supervised_loss(semi_supervised_loss_masked_mean)


@pytest.mark.parametrize("wrong, says", [
    (ce_over_whole_batch, "divided by all 6 images"),
    (ce_with_minus_one, "raised"),
    (ce_ignore_index, "no labelled image"),
    (mse_of_labelled_only, "labelled images only"),
    (loss_as_float, "as a tensor"),
    (loss_detached_ce, "logits"),
])
def test_semi_supervised_messages_say_what_is_wrong(wrong, says):
    import jdm.checks
    with pytest.raises(AssertionError, match=says):
        jdm.checks.semi_supervised_loss(wrong)


@pytest.mark.parametrize("wrong, says", [
    (fraction_subset_no_floor, "should keep max"),
    (fraction_subset_unsorted, "sorted"),
    (fraction_subset_reseeds, "not the images"),
])
def test_fraction_messages_say_what_is_wrong(wrong, says):
    import jdm.checks
    with pytest.raises(AssertionError, match=says):
        jdm.checks.fraction_subset(wrong)


def test_labelled_stream_reference_is_a_real_trainers():
    """The check runs Trainer.labelled_batch_indices on a stand-in; a real Trainer must agree."""
    import jdm
    from jdm.checks.labels import _reference_stream
    from jdm.unet import UNetConfig

    labelled = torch.tensor([3, 7, 9, 20, 44])
    labels = torch.full((50,), -1)
    labels[labelled] = torch.tensor([0, 1, 2, 3, 4])
    unet = jdm.UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                               attention_resolutions=(), norm_groups=4, num_heads=2))
    config = jdm.TrainConfig(steps=1, batch_size=8, labelled_batch_size=12, seed=3)
    trainer = jdm.Trainer(jdm.DiffusionModel(unet, jdm.NoiseSchedule(1000)), torch.zeros(50, 1, 28, 28),
                          labels, config, device="cpu", progress=False)
    reference = _reference_stream(labelled, 12, 3)
    for step in (0, 1, 2, 7, 500):
        assert torch.equal(reference(step), trainer.labelled_batch_indices(step))
        assert torch.equal(labelled_batch(labelled, step, 12, 3), trainer.labelled_batch_indices(step))
