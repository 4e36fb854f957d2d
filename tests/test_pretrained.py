"""Tests for jdm.pretrained: export a run, list it, load it, refuse a tampered file."""
import json

import pytest
import torch

import jdm.pretrained as pretrained
from jdm.diffusion import DiffusionModel
from jdm.encoder_classifier import EncoderClassifier
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
    # the shipped weights are the EMA weights, rounded to half precision (the trainer's EMA lives on
    # the test device, the loaded model on the CPU: compare on the CPU, as the H100 run showed)
    ema = exported.ema_model.module.state_dict()
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, ema[key].half().float().cpu()), key
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
    # the GPU-trained trio (issue 11): same UNet preset as the CPU trio, better on every measure
    assert table == {"jdm-fmnist": "joint-fmnist-small-gpu", "ddpm-fmnist": "ddpm-fmnist-small-gpu",
                     "classifier-fmnist": "classifier-fmnist-small-gpu"}
    assert pretrained.load_pretrained("jdm-fmnist").kind == "joint"
    assert pretrained.load_pretrained("ddpm-fmnist").kind == "ddpm"
    assert pretrained.load_pretrained("classifier-fmnist").kind == "classifier"


def test_the_classifier_baseline_ships_without_its_untrained_decoder(tmp_path, monkeypatch):
    monkeypatch.setenv("JDM_DATA", str(tmp_path))
    torch.manual_seed(0)
    model = EncoderClassifier(UNet(UNET_PRESETS["tiny"]))
    images, labels = torch.rand(16, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (16,))
    trainer = Trainer(model, images, labels, TrainConfig(steps=2, batch_size=8, lr=1e-3, log_every=1),
                      out_dir=tmp_path / "run", progress=False)
    trainer.fit()
    path = pretrained.export_pretrained(tmp_path / "run" / "last.pt", "cls", {}, "pytest", "cpu")
    blob = torch.load(path, weights_only=True)
    assert not [k for k in blob["state_dict"] if k.startswith(("unet.up.", "unet.out."))]
    assert {k.split(".")[0] for k in blob["state_dict"]} == {"unet", "head"}
    loaded = pretrained.load_pretrained("cls")
    ema = trainer.ema_model.module.cpu().eval()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():  # the encoder and head are the EMA weights, rounded to half precision
        assert torch.allclose(loaded.classify(x), ema.classify(x), atol=2e-2)
    # anything else missing is a damaged file, named
    del blob["state_dict"][next(k for k in blob["state_dict"] if k.startswith("head."))]
    with pytest.raises(ValueError, match="does not fit its spec"):
        pretrained.model_from_weights(blob, path)


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


def test_no_checkpoints_at_all_says_what_a_plain_install_lacks(monkeypatch, tmp_path):
    """What a JupyterHub admin's `pip install .` (no data/) meets first (issue 29)."""
    monkeypatch.setenv("JDM_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="available: none.*pip install .*JDM_DATA"):
        pretrained.load_pretrained("jdm-fmnist")


TUNED = {"auto_t_star": [0.175, 0.025, 0.5],
         "counterfactual_scales": {"classifier": 300.0, "representation": 300.0}}


def test_defaults_travel_with_the_weights(exported, tmp_path):
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    pretrained.export_pretrained(run, "tuned", {}, "pytest", "cpu", defaults=TUNED)
    assert json.loads((folder / "tuned.json").read_text())["defaults"] == TUNED
    expected = {"auto_t_star": (0.175, 0.025, 0.5),
                "counterfactual_scales": {"classifier": 300.0, "representation": 300.0}}
    assert pretrained.load_pretrained("tuned").defaults == expected
    assert pretrained.load_checkpoint_model(folder / "tuned.pt").defaults == expected
    # none in the manifest, or a run's own checkpoint: an empty dict
    assert "defaults" not in pretrained.read_manifest("toy")
    assert pretrained.load_pretrained("toy").defaults == {}
    assert pretrained.load_checkpoint_model(folder / "toy.pt").defaults == {}
    assert pretrained.load_checkpoint_model(run).defaults == {}


@pytest.mark.parametrize("defaults, match", [
    ([0.1, 0.2, 0.3], "must be a JSON object"),
    ({"t_star": 200}, "unknown key.*t_star.*known: auto_t_star, counterfactual_scales"),
    ({"auto_t_star": [0.1, 0.2]}, r'\["auto_t_star"\] must be \[base, per_nat, most\]'),
    ({"auto_t_star": [0.1, "0.2", 0.5]}, r'\["auto_t_star"\]'),
    ({"auto_t_star": [1.5, 0.02, 0.5]}, r'\["auto_t_star"\].*at most 1'),
    ({"auto_t_star": [0.1, True, 0.5]}, r'\["auto_t_star"\]'),
    ({"counterfactual_scales": {"clasifier": 300.0}}, r'\["counterfactual_scales"\]'),
    ({"counterfactual_scales": {"classifier": -1.0}}, r'\["counterfactual_scales"\]'),
    ({"counterfactual_scales": [300.0]}, r'\["counterfactual_scales"\]'),
])
def test_bad_defaults_are_refused_naming_the_manifest(exported, tmp_path, defaults, match):
    path = tmp_path / "checkpoints" / "toy.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "defaults": defaults}))
    with pytest.raises(ValueError, match=match) as info:
        pretrained.load_pretrained("toy")
    assert "toy.json" in str(info.value)
    with pytest.raises(ValueError, match=match):  # the same check before anything is exported
        pretrained.export_pretrained(tmp_path / "run" / "last.pt", "other", {}, "pytest", "cpu",
                                     defaults=defaults)
    assert not (tmp_path / "checkpoints" / "other.pt").exists()


def test_the_shipped_joint_models_carry_the_settings_they_were_tuned_with():
    scales = {"classifier": 300.0, "representation": 300.0}
    assert pretrained.load_pretrained("joint-fmnist-small").defaults == {
        "auto_t_star": (0.175, 0.025, 0.5), "counterfactual_scales": scales}
    assert pretrained.load_pretrained("joint-fmnist-small-gpu").defaults == {
        "auto_t_star": (0.15, 0.025, 0.5), "counterfactual_scales": scales}
    assert pretrained.load_pretrained("ddpm-fmnist-small").defaults == {}
