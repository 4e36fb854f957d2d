"""Tests for jdm.pretrained: export a run, list it, load it, refuse a tampered file."""
import gzip
import json
import shutil

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
    for bad in ["../../x", "a/b", "", ".hidden", "x.pt", "x.pt.gz"]:
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


# --- gzipped weights (NAME.pt.gz): how a paper-scale model fits (docs/gpu_runs.md) ---------------
def test_a_gzipped_export_holds_the_plain_one_and_loads_alike(exported, tmp_path):
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    gz = pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", compress=True)
    assert gz == folder / "toy-gz.pt.gz" and not (folder / "toy-gz.pt").exists()
    assert pretrained.manifest_path(gz) == folder / "toy-gz.json"
    assert pretrained.list_pretrained() == ["toy", "toy-gz"]
    manifest = pretrained.read_manifest("toy-gz")  # the sha256 and size of the file as stored
    assert manifest["sha256"] == pretrained.sha256(gz) and manifest["size_bytes"] == gz.stat().st_size
    assert gzip.decompress(gz.read_bytes()) == (folder / "toy.pt").read_bytes()
    plain, packed = pretrained.load_pretrained("toy"), pretrained.load_pretrained("toy-gz")
    from_path = pretrained.load_checkpoint_model(gz)
    x, t = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 5, 10, 19])
    with torch.no_grad():
        assert torch.equal(packed.eps(x, t), plain.eps(x, t))
        assert torch.equal(from_path.eps(x, t), plain.eps(x, t))
    with pytest.raises(ValueError, match="only the EMA weights"):
        pretrained.load_checkpoint_model(gz, ema=False)


def test_exports_are_deterministic(exported, tmp_path):
    """The same checkpoint gives the same bytes (gzip's header holds no time, torch.save's archive
    no temporary file name), so re-exporting a shipped model does not change its sha256."""
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    gz = pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", compress=True)
    first = gz.read_bytes()
    assert first[4:8] == bytes(4)  # gzip's MTIME field: 0 (else exports a second apart differ)
    pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", force=True, compress=True)
    pretrained.export_pretrained(run, "toy", {"test_loss": 1.0}, "pytest", "cpu", force=True)
    assert gz.read_bytes() == first
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p != gz
            and p.name != "toy-gz.json"} == before


def test_a_corrupt_gz_is_refused_naming_it(exported, tmp_path):
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    gz = pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", compress=True)
    gz.write_bytes(gz.read_bytes()[:-20])
    with pytest.raises(ValueError, match="toy-gz.pt.gz does not match the sha256 in toy-gz.json"):
        pretrained.load_pretrained("toy-gz")
    # a manifest that vouches for the broken file: the gzip error, named, not a traceback
    manifest = folder / "toy-gz.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                    "sha256": pretrained.sha256(gz)}))
    with pytest.raises(ValueError, match="toy-gz.pt.gz is not a readable gzip file.*EOFError"):
        pretrained.load_checkpoint_model(gz)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        pretrained.load_checkpoint_model(folder / "nope.pt.gz")


def test_a_name_with_both_pt_and_pt_gz_is_refused(exported, tmp_path):
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", compress=True)
    shutil.copy(folder / "toy.pt", folder / "toy-gz.pt")
    assert pretrained.list_pretrained() == ["toy", "toy-gz"]
    for load in (lambda: pretrained.load_pretrained("toy-gz"),
                 lambda: pretrained.load_checkpoint_model(folder / "toy-gz.pt"),
                 lambda: pretrained.load_checkpoint_model(folder / "toy-gz.pt.gz")):
        with pytest.raises(ValueError, match="toy-gz.pt and toy-gz.pt.gz are both in"):
            load()
    # a forced export replaces both with one file, in the format it writes
    weights = pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", force=True)
    assert weights.name == "toy-gz.pt" and not (folder / "toy-gz.pt.gz").exists()
    assert pretrained.load_pretrained("toy-gz").kind == "ddpm"


def test_an_existing_gz_counts_as_an_existing_checkpoint(exported, tmp_path):
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", compress=True)
    with pytest.raises(ValueError, match="toy-gz.pt.gz already exists.*force"):
        pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu")
    manifest = folder / "toy-gz.json"
    manifest.write_text(manifest.read_text().replace('"kind": "ddpm"', '"kind": "joint"'))
    with pytest.raises(ValueError, match="toy-gz.pt.gz is a shipped 'joint' checkpoint"):
        pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", force=True)
    manifest.unlink()  # weights without a manifest are never replaced either
    with pytest.raises(ValueError, match="toy-gz.pt.gz is a shipped 'incomplete"):
        pretrained.export_pretrained(run, "toy-gz", {}, "pytest", "cpu", force=True)


def test_weights_over_the_threshold_are_gzipped(exported, tmp_path, monkeypatch):
    run, folder = tmp_path / "run" / "last.pt", tmp_path / "checkpoints"
    size = (folder / "toy.pt").stat().st_size
    monkeypatch.setattr(pretrained, "COMPRESS_ABOVE", size)  # not over: plain
    assert pretrained.export_pretrained(run, "at", {}, "pytest", "cpu").name == "at.pt"
    monkeypatch.setattr(pretrained, "COMPRESS_ABOVE", size - 1)
    assert pretrained.export_pretrained(run, "over", {}, "pytest", "cpu").name == "over.pt.gz"
    assert pretrained.export_pretrained(run, "kept", {}, "pytest", "cpu",
                                        compress=False).name == "kept.pt"
    assert pretrained.load_pretrained("over").kind == "ddpm"


def test_sample_cli_reads_a_gz(exported, tmp_path, tmp_path_factory):
    from jdm.cli import main

    gz = pretrained.export_pretrained(tmp_path / "run" / "last.pt", "toy-gz", {}, "pytest", "cpu",
                                      compress=True)
    out = tmp_path_factory.mktemp("out") / "grid.png"  # not inside JDM_DATA (refused)
    assert main(["sample", "--checkpoint", str(gz), "--n", "4", "--ddim-steps", "2", "--out",
                 str(out), "--no-progress"]) == 0
    assert out.is_file()
