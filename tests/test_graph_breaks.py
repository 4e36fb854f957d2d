"""No host-device sync inside a training or sampling step (issue 28).

A Python branch on a tensor's value (``if labelled.any()``, ``int(t.min())``) both stalls the GPU
until the value is known and breaks a ``torch.compile`` graph there. ``torch._dynamo.explain``
finds every such point on the CPU: a step with 0 graph breaks has none of them. Inputs are
validated at the public entry points instead (``jdm.inputs``, the Trainer, ``_check_t``'s values
on CPU tensors in eager mode only).
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from jdm.diffusion import DiffusionModel
from jdm.encoder_classifier import EncoderClassifier
from jdm.joint import JointDiffusion
from jdm.sampling import guided_eps
from jdm.schedule import NoiseSchedule, extract
from jdm.unet import UNET_PRESETS, UNet

N = 4


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(UNET_PRESETS["tiny"])


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # partly labelled (−1 = unlabelled): the masked CE and accuracy must not branch on it
    return torch.rand(N, 1, 28, 28, generator=g) * 2 - 1, torch.tensor([0, 1, -1, 3])


def graph_breaks(fn, *args) -> tuple[int, list[str]]:
    """(graph breaks, their reasons) of one call of ``fn`` under dynamo (nothing is compiled)."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    assert explained.graph_count >= 1  # it really traced something
    return explained.graph_break_count, [str(b.reason) for b in explained.break_reasons]


@pytest.mark.parametrize("kind", ["joint", "ddpm", "classifier"])
def test_training_losses_have_no_graph_break(kind):
    build = {"joint": lambda: JointDiffusion(tiny_unet(), NoiseSchedule(50), noise_aware=True,
                                             augment=True),
             "ddpm": lambda: DiffusionModel(tiny_unet(), NoiseSchedule(50)),
             "classifier": lambda: EncoderClassifier(tiny_unet(), augment=True)}
    model = build[kind]().train()
    assert graph_breaks(model.loss, *batch()) == (0, [])


@pytest.mark.parametrize("kind", ["classifier", "representation"])
def test_one_guided_sampling_step_has_no_graph_break(kind):
    model = JointDiffusion(tiny_unet(), NoiseSchedule(50), noise_aware=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps_fn = guided_eps(model, 3, N, kind)

    def step(x_t, t, t_prev):
        return model.schedule.ddim_step(x_t, t, t_prev, eps_fn(x_t, t))

    x_t = batch()[0]
    # dynamo traces torch.autograd.grad (the guidance gradient) only when asked to
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        assert graph_breaks(step, x_t, torch.full((N,), 30), torch.full((N,), 20)) == (0, [])


def test_extract_is_the_checked_lookup_without_the_check():
    s = NoiseSchedule(50)
    t = torch.tensor([0, 7, 49])
    like = torch.zeros(3, 1, 2, 2)
    assert extract(s.alpha_bars, t, like.shape).shape == (3, 1, 1, 1)
    assert torch.equal(extract(s.alpha_bars, t, like.shape), s._at(s.alpha_bars, t, like))
    assert torch.equal(extract(s.alpha_bars, t, like.shape).flatten(), s.alpha_bars[t])


def test_masked_losses_equal_the_labelled_subsets_and_are_zero_without_labels():
    x, y = batch()
    joint = JointDiffusion(tiny_unet(), NoiseSchedule(50)).eval()  # eval: no dropout
    clf = EncoderClassifier(tiny_unet()).eval()
    labelled = y >= 0
    for model in (joint, clf):
        logits = model.classify(x[labelled])
        parts = model.loss(x, y)
        torch.testing.assert_close(parts["classification"], F.cross_entropy(logits, y[labelled]))
        torch.testing.assert_close(parts["accuracy"],
                                   (logits.argmax(1) == y[labelled]).float().mean())
        none = model.loss(x, torch.full((N,), -1))
        assert none["classification"] == 0 and none["accuracy"] == 0
        none["loss"].backward()  # still a graph: a batch without labels trains (nothing)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_labels_are_refused_once_by_the_trainer():
    from jdm.train import TrainConfig, Trainer
    x, _ = batch()
    model = JointDiffusion(tiny_unet(), NoiseSchedule(50))
    with pytest.raises(ValueError, match="0..9"):
        Trainer(model, x, torch.tensor([0, 1, 10, 2]), TrainConfig(batch_size=2), device="cpu")
