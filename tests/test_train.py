"""Tests for jdm.train: exact resume, NaN stop, checkpoint safety, EMA, history, config checks."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jdm.checkpoint import read_checkpoint
from jdm.divergence import TrainingDiverged
from jdm.pretrained import load_checkpoint_model
from jdm.train import TrainConfig, Trainer


class ToyModel(nn.Module):
    """Denoise 1×4×4 images with a small MLP; uses the global RNG (noise, dropout) like a DDPM."""

    def __init__(self, hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 16))
        self.poison = False  # set True to make the next loss NaN

    def loss(self, x0, y=None):
        noise = torch.randn_like(x0)
        mse = F.mse_loss(self.net(x0 + 0.5 * noise).view_as(x0), x0)
        if self.poison:
            mse = mse * float("nan")
        return {"loss": mse, "mse": mse}

    def spec(self):
        return {"kind": "toy", "hidden": self.hidden}


def toy_data(n=64):
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def make(tmp_path, steps, model_seed=0, eval_fn=None, **overrides):
    torch.manual_seed(model_seed)
    images, labels = toy_data()
    settings = dict(batch_size=16, lr=1e-2, ema_decay=0.9, log_every=1, checkpoint_every=3)
    cfg = TrainConfig(steps=steps, **{**settings, **overrides})
    return Trainer(ToyModel(), images, labels, cfg, out_dir=tmp_path, eval_fn=eval_fn, device="cpu",
                   progress=False)


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for sa, sb in [(a.model.state_dict(), b.model.state_dict()),
                   (a.ema_model.state_dict(), b.ema_model.state_dict())]:
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    oa, ob = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]), (i, k)


def test_resume_is_exact(tmp_path):
    # 10 steps of 64/16 = 4 batches an epoch: crosses epoch boundaries on both sides of the cut.
    full = make(tmp_path / "full", steps=10)
    full.fit()
    first = make(tmp_path / "cut", steps=6)
    first.fit()                                        # "interrupted" after step 6
    resumed = make(tmp_path / "cut", steps=10, model_seed=99)  # fresh weights, overwritten by resume
    resumed.fit(resume=True)
    assert resumed.step == full.step == 10
    assert_same_state(full, resumed)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]


def test_batches_are_a_pure_function_of_the_step(tmp_path):
    t = make(tmp_path, steps=1)
    epoch0 = torch.cat([t.batch_indices(k) for k in range(4)])
    assert sorted(epoch0.tolist()) == list(range(64))   # each image once per epoch
    assert not torch.equal(t.batch_indices(4), t.batch_indices(0))  # new epoch, new order
    assert torch.equal(make(tmp_path, steps=1).batch_indices(5), t.batch_indices(5))


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = make(tmp_path, steps=3)
    t.fit()
    before = (tmp_path / "last.pt").read_bytes()
    t.config.steps = 10
    t.model.poison = True
    with pytest.raises(TrainingDiverged, match=r"step 4.*last\.pt") as info:
        t.fit()
    assert info.value.step == 4 and info.value.checkpoint == tmp_path / "last.pt"
    assert (tmp_path / "last.pt").read_bytes() == before
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 3
    assert list(tmp_path.iterdir()) == [tmp_path / "last.pt"]  # no temp files left behind


def test_checkpoint_is_plain_data(tmp_path):
    t = make(tmp_path, steps=3)
    t.fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["format"] == "jdm-checkpoint" and ckpt["version"] == 1
    assert ckpt["step"] == 3 and ckpt["spec"] == {"kind": "toy", "hidden": 16}
    assert ckpt["train_config"]["batch_size"] == 16
    assert all(type(v) in (int, float) for h in ckpt["history"] for v in h.values())
    assert set(ckpt) >= {"model", "ema", "optimizer", "rng", "history"}


def test_corrupt_and_missing_checkpoints(tmp_path):
    t = make(tmp_path, steps=3)
    t.fit()
    path = tmp_path / "last.pt"
    path.write_bytes(path.read_bytes()[:200])             # truncated
    with pytest.raises(ValueError, match="not a jdm checkpoint or corrupt.*last.pt.*delete it"):
        make(tmp_path, steps=6).fit(resume=True)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a jdm checkpoint or corrupt"):
        read_checkpoint(path)
    torch.save({"some": "dict"}, path)
    with pytest.raises(ValueError, match="not a jdm checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        t.load_checkpoint(tmp_path / "nope.pt")


def test_resume_with_other_spec_fails(tmp_path):
    make(tmp_path, steps=3).fit()
    images, labels = toy_data()
    other = Trainer(ToyModel(hidden=8), images, labels, TrainConfig(steps=6, batch_size=16),
                    out_dir=tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"(?s)different model.*'hidden': 16.*'hidden': 8"):
        other.fit(resume=True)


def test_resume_with_changed_settings_warns(tmp_path):
    make(tmp_path, steps=3).fit()
    with pytest.warns(UserWarning, match="lr"):
        make(tmp_path, steps=4, lr=1e-3).fit(resume=True)


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    t = make(tmp_path, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t.fit(resume=True)
    assert t.step == 2
    assert "starting a fresh run at step 0" in capsys.readouterr().err


def test_ema(tmp_path):
    t = make(tmp_path, steps=5)
    t.fit()
    ema, raw = t.ema_model.module.state_dict(), t.model.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)
    t0 = make(tmp_path / "zero", steps=5, ema_decay=0.0)
    t0.fit()
    ema, raw = t0.ema_model.module.state_dict(), t0.model.state_dict()
    assert all(torch.equal(ema[k], raw[k]) for k in raw)


def test_ema_warmup_schedule(tmp_path):
    t = make(tmp_path, steps=1, ema_decay=0.999)
    assert t.ema_decay_now() == pytest.approx(0.1)
    t.step = 10_000
    assert t.ema_decay_now() == pytest.approx(0.999)
    t.config.ema_warmup = False
    t.step = 0
    assert t.ema_decay_now() == 0.999


def test_history_and_eval(tmp_path):
    calls = []

    def eval_fn(trainer):
        calls.append(trainer.step)
        trainer.model.eval()
        return {"val": torch.tensor(0.5), "name": "x"}

    t = make(tmp_path, steps=4, eval_fn=eval_fn, log_every=2, eval_every=3)
    hist = t.fit()
    assert calls == [3]
    assert [h["step"] for h in hist] == [2, 3, 4]
    assert {"loss", "mse", "grad_norm", "lr", "s/it"} <= hist[0].keys()
    assert hist[1] == {"step": 3, "val": 0.5, "name": "x"}
    assert t.model.training


def test_warmup_lr(tmp_path):
    hist = make(tmp_path, steps=4, warmup_steps=4).fit()
    assert [h["lr"] for h in hist] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])


def test_loss_decreases_on_toy_problem():
    torch.manual_seed(0)
    images, labels = toy_data(256)
    cfg = TrainConfig(steps=60, batch_size=32, lr=1e-2, log_every=10, checkpoint_every=0)
    hist = Trainer(ToyModel(hidden=32, dropout=0.0), images, labels, cfg, device="cpu",
                   progress=False).fit()
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_decay=-0.1), "ema_decay"), (dict(batch_size=0), "batch_size"),
])
def test_bad_config(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_bad_trainer_inputs(tmp_path):
    images, labels = toy_data(8)
    with pytest.raises(ValueError, match="larger than the dataset"):
        Trainer(ToyModel(), images, labels, TrainConfig(batch_size=16), device="cpu")
    with pytest.raises(ValueError, match="labels must have shape"):
        Trainer(ToyModel(), images, labels[:4], TrainConfig(batch_size=4), device="cpu")
    with pytest.raises(ValueError, match="eval_fn"):
        Trainer(ToyModel(), images, labels, TrainConfig(batch_size=4, eval_every=2), device="cpu")


def test_diffusion_model_checkpoint_roundtrip(tmp_path):
    unet = pytest.importorskip("jdm.unet")
    from jdm.diffusion import DiffusionModel
    from jdm.schedule import NoiseSchedule

    torch.manual_seed(0)
    model = DiffusionModel(unet.UNet(unet.UNET_PRESETS["tiny"]), NoiseSchedule(50))
    images = torch.rand(16, 1, 28, 28) * 2 - 1
    t = Trainer(model, images, None, TrainConfig(steps=2, batch_size=8, ema_decay=0.5),
                out_dir=tmp_path, device="cpu", progress=False)
    t.fit()
    ema = load_checkpoint_model(tmp_path / "last.pt")
    raw = load_checkpoint_model(tmp_path / "last.pt", ema=False)
    assert not ema.training
    for k, v in t.ema_model.module.state_dict().items():
        assert torch.equal(ema.state_dict()[k], v)
    for k, v in model.state_dict().items():
        assert torch.equal(raw.state_dict()[k], v)


def test_checkpoint_checksum_and_probe_loss(tmp_path):
    make(tmp_path, steps=3).fit()
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert len(ckpt["checksum"]) == 64 and ckpt["probe_loss"] > 0
    assert ckpt["data"]["images"] == 64
    ckpt["step"] = 2  # any change, even outside the tensors
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="last.pt is corrupt.*checksum"):
        read_checkpoint(tmp_path / "last.pt")


def test_signal_saves_and_resume_is_still_exact(tmp_path):
    import signal

    from jdm.interrupts import TrainingInterrupted

    full = make(tmp_path / "full", steps=10)
    full.fit()

    def interrupt(trainer):
        signal.raise_signal(signal.SIGINT)  # as Ctrl-C during step 5
        return {}

    cut = make(tmp_path / "cut", steps=10, eval_fn=interrupt, eval_every=5)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGINT after step 5.*resume") as info:
        cut.fit()
    assert info.value.step == 5 and read_checkpoint(info.value.checkpoint)["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored
    resumed = make(tmp_path / "cut", steps=10, model_seed=99)
    resumed.fit(resume=True)
    assert_same_state(full, resumed)


def test_run_lock(tmp_path):
    import os

    from jdm.runlock import RunLock

    with RunLock(tmp_path), RunLock(tmp_path):  # re-entrant within a process
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(f"{os.getppid()}\n")  # a live process that is not this one
    with pytest.raises(ValueError, match=rf"in use by process {os.getppid()}"):
        make(tmp_path, steps=1).fit()


def test_stale_temp_files_are_removed(tmp_path):
    stale = tmp_path / ".last.pt.999.abcdef12.tmp"
    stale.write_bytes(b"killed mid-save")
    make(tmp_path, steps=1).fit()
    assert not stale.exists()


def test_resume_on_other_data_fails(tmp_path):
    make(tmp_path, steps=2).fit()
    images, labels = toy_data(48)
    other = Trainer(ToyModel(), images, labels, TrainConfig(steps=4, batch_size=16),
                    out_dir=tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="other data.*64 images.*48 images"):
        other.fit(resume=True)


def test_training_images_must_be_in_range():
    images, labels = toy_data(8)
    with pytest.raises(ValueError, match="0..255"):
        Trainer(ToyModel(), (images + 1) * 127.5, labels, TrainConfig(batch_size=4), device="cpu")
