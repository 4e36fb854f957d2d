"""The public API on any device: the model on `device` (JDM_TEST_DEVICE, default CPU) with
inputs left on the CPU, and the model on the meta device (no values: a stand-in for a second
device that catches every tensor left behind on the CPU without needing a GPU)."""
import matplotlib
import pytest
import torch

import jdm
from jdm.joint import JointDiffusion
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, UNet
from jdm.viz import overview_figure

matplotlib.use("Agg")


def make(device) -> JointDiffusion:
    torch.manual_seed(0)
    model = JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50), noise_aware=True)
    return model.to(device).eval()


@pytest.mark.parametrize("kind", ["representation", "representation-x0", "classifier"])
def test_sampling_and_counterfactuals_on_the_test_device(device, kind):
    model = make(device)
    g = torch.Generator().manual_seed(0)  # a CPU generator: the same images on any device
    x = model.sample(2, target=torch.tensor([1, 2]), guidance=kind, steps=3, generator=g, progress=False)
    assert x.device.type == device.type and x.shape == (2, 1, 28, 28)
    cpu_images = torch.rand(2, 1, 28, 28) * 2 - 1
    x_cf = jdm.counterfactual(model, cpu_images, 3, jdm.CounterfactualSettings(t_star=10, steps=2), kind,
                              progress=False).images
    assert x_cf.shape == cpu_images.shape
    logits = model.classify(cpu_images.to(device))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_overview_figure_with_the_model_on_the_test_device(device):
    """The overview figure (docs/overview.png): the forward process of a CPU image with the model's schedule
    (which lives on the model's device), then samples."""
    fig = overview_figure(make(device), torch.rand(1, 1, 28, 28) * 2 - 1, n_samples=2)
    assert len(fig.axes) == 2


@pytest.mark.parametrize("kind", ["representation", "representation-x0", "classifier"])
def test_public_api_on_the_meta_device(kind):
    model = make("meta")
    x = model.sample(2, target=torch.tensor([1, 2]), guidance=kind, steps=3, progress=False)
    assert x.device.type == "meta" and x.shape == (2, 1, 28, 28)
    x_cf = jdm.counterfactual(model, torch.rand(2, 1, 28, 28) * 2 - 1, 3,
                              jdm.CounterfactualSettings(t_star=10, steps=2), kind, progress=False).images
    assert x_cf.device.type == "meta"
    assert model.sample(3, steps=2, progress=False).device.type == "meta"
