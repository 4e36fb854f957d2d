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


def test_aliases(exported, tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "aliases.json").write_text(json.dumps({"toy-short": "toy", "later": "not-yet"}))
    assert pretrained.list_pretrained() == ["toy"]  # real names only
    assert pretrained.list_aliases() == {"toy-short": "toy", "later": "not-yet"}
    assert pretrained.resolve_name("toy-short") == "toy"
    assert pretrained.load_pretrained("toy-short").kind == "ddpm"
    with pytest.raises(FileNotFoundError, match="alias 'later' points to 'not-yet'.*not shipped yet"):
        pretrained.load_pretrained("later")


def test_shipped_aliases_point_at_shipped_names():
    table = json.loads((pretrained.data_dir() / "checkpoints" / "aliases.json").read_text())
    assert table == {"jdm-fmnist": "joint-fmnist-small", "ddpm-fmnist": "ddpm-fmnist-small",
                     "classifier-fmnist": "classifier-fmnist-small"}
    assert pretrained.load_pretrained("jdm-fmnist").kind == "joint"
    assert pretrained.load_pretrained("ddpm-fmnist").kind == "ddpm"


def test_export_guard(exported, tmp_path):
    run = tmp_path / "run" / "last.pt"
    before = (tmp_path / "checkpoints" / "toy.pt").read_bytes()
    with pytest.raises(ValueError, match="already exists.*force"):
        pretrained.export_pretrained(run, "toy", {}, "pytest", "cpu")
    manifest = tmp_path / "checkpoints" / "toy.json"
    manifest.write_text(manifest.read_text().replace('"kind": "ddpm"', '"kind": "joint"'))
    with pytest.raises(ValueError, match="shipped 'joint' checkpoint; a 'ddpm' model never"):
        pretrained.export_pretrained(run, "toy", {}, "pytest", "cpu", force=True)
    for bad in ["../../x", "a/b", "", ".hidden", "x.pt"]:
        with pytest.raises(ValueError, match="plain name"):
            pretrained.export_pretrained(run, bad, {}, "pytest", "cpu")
    assert (tmp_path / "checkpoints" / "toy.pt").read_bytes() == before
    assert pretrained.export_pretrained(run, "toy-2", {}, "pytest", "cpu").is_file()


@pytest.mark.parametrize("text, match", [
    ("{nope", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"spec": {}}', "lacks sha256"),
])
def test_broken_manifests_name_the_file(exported, tmp_path, text, match):
    (tmp_path / "checkpoints" / "toy.json").write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        pretrained.load_pretrained("toy")
    assert "toy.json" in str(info.value)
