"""Tests for jdm.diffusion: the DDPM wrapper's loss, sampling and spec round trip."""
import json

import pytest
import torch

from jdm.diffusion import DiffusionModel, build_model
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, UNet


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DiffusionModel(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50))


def test_loss_parts_and_gradients(model):
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    parts = model.loss(x0, torch.zeros(4, dtype=torch.long))
    assert set(parts) == {"loss", "diffusion"} and parts["loss"].dim() == 0
    # an untrained predictor outputs roughly nothing, so the loss is about E||ε||² = 1
    assert 0.5 < parts["loss"].item() < 2.0
    parts["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_loss_falls_when_training(model):
    """A few Adam steps on one image lower the loss measured on fixed noise and timesteps."""
    x0 = (torch.rand(1, 1, 28, 28) * 2 - 1).expand(16, -1, -1, -1)

    def fixed_loss():
        torch.manual_seed(123)
        with torch.no_grad():
            return model.loss(x0)["loss"].item()

    before = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(30):
        loss = model.loss(x0)["loss"]
        opt.zero_grad(); loss.backward(); opt.step()
    assert fixed_loss() < 0.7 * before


def test_sample_shapes_range_and_determinism(model):
    model.eval()
    a = model.sample(3, steps=5, generator=torch.Generator().manual_seed(0), progress=False)
    b = model.sample(3, steps=5, generator=torch.Generator().manual_seed(0), progress=False)
    c = model.sample(2, method="ddpm", generator=torch.Generator().manual_seed(0), progress=False)
    assert a.shape == (3, 1, 28, 28) and c.shape == (2, 1, 28, 28)
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1


def test_spec_round_trips_through_json(model):
    spec = json.loads(json.dumps(model.spec()))
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 40])
    model.eval(); rebuilt.eval()
    assert rebuilt.spec() == model.spec()
    assert torch.equal(rebuilt.eps(x, t), model.eps(x, t))


def test_bad_input(model):
    with pytest.raises(ValueError, match="expected images of shape"):
        model.loss(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError):
        model.sample(0)
    with pytest.raises(ValueError, match="not a valid model spec"):
        build_model({"kind": "gan"})


def test_sample_runs_without_dropout_and_keeps_the_mode():
    torch.manual_seed(0)
    config = UNET_PRESETS["tiny"]
    model = DiffusionModel(UNet(type(config)(**{**config.__dict__, "dropout": 0.5})), NoiseSchedule(20))
    model.train()
    a = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    b = model.sample(2, steps=3, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(a, b)  # dropout would make the two runs differ
    assert model.training
