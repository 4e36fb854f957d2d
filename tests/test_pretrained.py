"""Tests for jdm.pretrained: export a run, list it, load it, refuse a tampered file."""
import json

import pytest
import torch

import jdm.pretrained as pretrained
from jdm.diffusion import DiffusionModel
from jdm.schedule import NoiseSchedule
from jdm.train import TrainConfig, Trainer
from jdm.unet import UNET_PRESETS, UNet


@pytest.fixture
def exported(tmp_path, monkeypatch):
    monkeypatch.setenv("JDM_DATA", str(tmp_path))
    torch.manual_seed(0)
    model = DiffusionModel(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(20))
    images = torch.rand(16, 1, 28, 28) * 2 - 1
    trainer = Trainer(model, images, None, TrainConfig(steps=2, batch_size=8, lr=1e-3, log_every=1),
                      out_dir=tmp_path / "run", progress=False)
    trainer.fit()
    pretrained.export_pretrained(tmp_path / "run" / "last.pt", "toy", metrics={"test_loss": 1.0},
                                 command="pytest", hardware="cpu")
    return trainer


def test_export_list_and_load(exported, tmp_path):
    assert pretrained.list_pretrained() == ["toy"]
    manifest = pretrained.read_manifest("toy")
    assert manifest["steps"] == 2 and manifest["metrics"] == {"test_loss": 1.0}
    assert manifest["sha256"] == pretrained.sha256(tmp_path / "checkpoints" / "toy.pt")
    model = pretrained.load_pretrained("toy")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    # the shipped weights are the EMA weights, rounded to half precision
    ema = exported.ema_model.module.state_dict()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, ema[key].half().float()), key
    blob = torch.load(tmp_path / "checkpoints" / "toy.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["state_dict"].values() if v.is_floating_point())


def test_tampered_weights_are_refused(exported, tmp_path):
    path = tmp_path / "checkpoints" / "toy.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="sha256"):
        pretrained.load_pretrained("toy")


def test_unknown_name(exported):
    with pytest.raises(FileNotFoundError, match="available: \\['toy'\\]"):
        pretrained.load_pretrained("nope")
