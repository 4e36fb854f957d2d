"""The shipped checkpoints load (sha256 checked) and still score what their manifests say."""
import pytest
import torch

import jdm
from jdm.data import load_tensors
from jdm.metrics import accuracy
from jdm.pretrained import read_manifest


@pytest.fixture(scope="module")
def test_images():
    return load_tensors("fashion_mnist", train=False)


def test_shipped_checkpoints_are_listed():
    assert {"ddpm-fmnist-small", "joint-fmnist-small", "evaluator-fmnist"} <= set(jdm.list_pretrained())


def test_ddpm_held_out_loss(test_images):
    model = jdm.load_pretrained("ddpm-fmnist-small")
    torch.manual_seed(0)
    with torch.no_grad():
        loss = sum(model.diffusion_loss(test_images[0][i:i + 500]).item() for i in range(0, 1000, 500)) / 2
    # the manifest measured 0.039 on all 10,000 test images; an untrained UNet scores about 1
    assert loss < 0.05, loss
    assert read_manifest("ddpm-fmnist-small")["metrics"]["test_loss"] < 0.05


def test_joint_model_classifies(test_images):
    model = jdm.load_pretrained("joint-fmnist-small")
    images, labels = test_images[0][:2000], test_images[1][:2000]
    with torch.no_grad():
        logits = torch.cat([model.classify(images[i:i + 500]) for i in range(0, 2000, 500)])
    assert accuracy(logits, labels) >= 0.83  # the manifest: 0.854 on all 10,000
    assert model.noise_aware  # trained for guidance too (classify(x_t, t))
