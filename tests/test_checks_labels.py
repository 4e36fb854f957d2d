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
def semi_supervised_loss(model, x0, y, t, noise):
    eps_hat = model.unet(model.schedule.q_sample(x0, t, noise), t)
    loss = F.mse_loss(eps_hat, noise)
    labelled = y >= 0
    if labelled.any():
        loss = loss + model.alpha * F.cross_entropy(model.classify(x0[labelled]), y[labelled])
    return loss


def semi_supervised_loss_parts(model, x0, y, t, noise):      # another right answer: encode once, mask
    feats = model.unet.encode(model.schedule.q_sample(x0, t, noise), t)
    diffusion = ((model.unet.decode(feats, t) - noise) ** 2).mean()
    mask = (y >= 0).float()
    ce = F.cross_entropy(model.classify(x0), y.clamp(min=0), reduction="none")
    return diffusion + model.alpha * (ce * mask).sum() / mask.sum().clamp(min=1)


def ce_over_whole_batch(model, x0, y, t, noise):      # divides by N, not by the labelled count
    labelled = y >= 0
    eps_hat = model.unet(model.schedule.q_sample(x0, t, noise), t)
    ce = F.cross_entropy(model.classify(x0[labelled]), y[labelled], reduction="sum") / len(y)
    return F.mse_loss(eps_hat, noise) + model.alpha * ce


def ce_with_minus_one(model, x0, y, t, noise):        # −1 reaches cross_entropy: an error
    eps_hat = model.unet(model.schedule.q_sample(x0, t, noise), t)
    return F.mse_loss(eps_hat, noise) + model.alpha * F.cross_entropy(model.classify(x0), y)


def ce_ignore_index(model, x0, y, t, noise):          # right, except NaN when no image is labelled
    eps_hat = model.unet(model.schedule.q_sample(x0, t, noise), t)
    return F.mse_loss(eps_hat, noise) + model.alpha * F.cross_entropy(model.classify(x0), y, ignore_index=-1)


def mse_of_labelled_only(model, x0, y, t, noise):     # unlabelled images dropped from the diffusion term
    labelled = y >= 0
    if not labelled.any():
        return x0.new_zeros((), requires_grad=True) * 1
    eps_hat = model.unet(model.schedule.q_sample(x0, t, noise), t)
    return (F.mse_loss(eps_hat[labelled], noise[labelled])
            + model.alpha * F.cross_entropy(model.classify(x0[labelled]), y[labelled]))


def head_on_noisy_images(model, x0, y, t, noise):     # the head classifies x_t instead of x0
    xt = model.schedule.q_sample(x0, t, noise)
    loss = F.mse_loss(model.unet(xt, t), noise)
    labelled = y >= 0
    if labelled.any():
        loss = loss + model.alpha * F.cross_entropy(model.classify(xt[labelled], t[labelled]), y[labelled])
    return loss


def without_alpha(model, x0, y, t, noise):            # L_simple + CE, α forgotten
    xt = model.schedule.q_sample(x0, t, noise)
    loss = F.mse_loss(model.unet(xt, t), noise)
    labelled = y >= 0
    if labelled.any():
        loss = loss + F.cross_entropy(model.classify(x0[labelled]), y[labelled])
    return loss


def loss_as_float(model, x0, y, t, noise):            # .item(): no gradient left
    return semi_supervised_loss(model, x0, y, t, noise).item()


def ce_detached(model, x0, y, t, noise):              # the head's logits detached
    xt = model.schedule.q_sample(x0, t, noise)
    loss = F.mse_loss(model.unet(xt, t), noise)
    labelled = y >= 0
    if labelled.any():
        loss = loss + model.alpha * F.cross_entropy(model.classify(x0[labelled]).detach(), y[labelled])
    return loss


def labels_zeroed_in_place(model, x0, y, t, noise):   # overwrites the caller's labels
    labelled = y >= 0
    xt = model.schedule.q_sample(x0, t, noise)
    loss = F.mse_loss(model.unet(xt, t), noise)
    y[~labelled] = 0
    if labelled.any():
        loss = loss + model.alpha * F.cross_entropy(model.classify(x0), y, reduction="none")[labelled].mean()
    return loss


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
                                                    ce_ignore_index, mse_of_labelled_only,
                                                    head_on_noisy_images, without_alpha, loss_as_float,
                                                    ce_detached, labels_zeroed_in_place]),
    "labelled_stream": (labelled_batch, [labelled_batch_one_order, labelled_batch_short_at_boundary,
                                         labelled_batch_positions, labelled_batch_pass_per_step]),
}


@pytest.mark.parametrize("name", CASES)
def test_check(name):
    assert_check_behaves(name, *CASES[name])


def test_other_right_answers_pass():
    import jdm.checks
    jdm.checks.semi_supervised_loss(semi_supervised_loss_parts)


@pytest.mark.parametrize("wrong, says", [
    (ce_over_whole_batch, "divided by all 10 images"),
    (ce_with_minus_one, "raised"),
    (ce_ignore_index, "no labelled image"),
    (mse_of_labelled_only, "labelled images only"),
    (head_on_noisy_images, "noisy x_t"),
    (without_alpha, "without α"),
    (loss_as_float, "as a tensor"),
    (ce_detached, "classifier head"),
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
