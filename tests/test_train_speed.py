"""Tests for the Trainer's speed path: device-resident batches, deferred NaN checks, compile."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jdm.checkpoint import read_checkpoint
from jdm.divergence import TrainingDiverged
from jdm.train import TrainConfig, Trainer


class CountingModel(nn.Module):
    """A tiny denoiser whose loss turns NaN (or its gradient NaN) from training step
    ``poison_at`` on (calls without gradients, e.g. the Trainer's checkpoint probe, not counted)."""

    def __init__(self, poison_at: int | None = None, poison_grad: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 16))
        self.calls, self.poison_at, self.poison_grad = 0, poison_at, poison_grad

    def loss(self, x0, y=None):
        self.calls += torch.is_grad_enabled()
        mse = F.mse_loss(self.net(x0 + 0.5 * torch.randn_like(x0)).view_as(x0), x0)
        if self.poison_at is not None and self.calls >= self.poison_at and torch.is_grad_enabled():
            if self.poison_grad:  # value 0, gradient 0 · inf = NaN: a finite loss, NaN weights
                w = self.net[1].weight
                mse = mse + torch.sqrt(((w - w.detach()) ** 2).sum())
            else:
                mse = mse * float("nan")
        return {"loss": mse}

    def spec(self):
        return {"kind": "counting"}


def make(tmp_path, model, steps, **overrides):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(64, 1, 4, 4, generator=g) * 2 - 1, torch.randint(0, 10, (64,))
    cfg = TrainConfig(**{**dict(steps=steps, batch_size=16, lr=1e-2, log_every=5,
                                checkpoint_every=3), **overrides})
    return Trainer(model, images, labels, cfg, out_dir=tmp_path, device="cpu", progress=False)


def test_batch_is_the_documented_order(tmp_path):
    t = make(tmp_path, CountingModel(), steps=1)
    for step in (0, 3, 4, 9):  # 4 batches an epoch: both sides of epoch boundaries
        x, y = t.batch(step)
        idx = t.batch_indices(step)
        assert torch.equal(x, t.images[idx]) and torch.equal(y, t.labels[idx])


@pytest.mark.parametrize("poison_grad", [False, True])
def test_nan_between_checks_names_its_step_and_spares_the_checkpoint(tmp_path, poison_grad):
    # checks run at steps 3 (checkpoint), 5 (log), 6 (checkpoint), …; the loss breaks at step 4
    t = make(tmp_path, CountingModel(poison_at=4, poison_grad=poison_grad), steps=10)
    with pytest.raises(TrainingDiverged, match=r"step 4 \(after 3 good steps\).*last\.pt") as info:
        t.fit()
    assert info.value.step == 4 and info.value.checkpoint == tmp_path / "last.pt"
    assert t.step == 5  # found at the next check, not before
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 3
    assert ("loss is 0." in str(info.value)) == poison_grad  # finite loss, NaN gradient norm
    assert "gradient norm nan" in str(info.value)


def test_host_waits_only_at_check_steps(tmp_path, monkeypatch):
    t = make(tmp_path, CountingModel(), steps=12, checkpoint_every=0)
    checked_at = []
    check = t._losses.check
    monkeypatch.setattr(t._losses, "check", lambda *a: (checked_at.append(t.step), check(*a))[1])
    t.fit()
    assert checked_at == [5, 10, 12]  # log steps and the last one (which also saves)


def test_compile_option_trains_and_saves_plain_weights(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(fn, **options):  # the wiring, without paying inductor's compile time on a CPU
        compiled.append((fn, options))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = CountingModel()
    t = make(tmp_path, model, steps=3, compile=True)
    assert compiled == [(model.loss, {"fullgraph": True})]  # one graph: a graph break is an error
    t.fit()
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["train_config"]["compile"] is True
    assert set(ckpt["model"]) == set(model.state_dict())  # no "_orig_mod." prefixes


def test_dataset_lives_on_the_training_device(tmp_path):
    t = make(tmp_path, CountingModel(), steps=1)
    assert t.images.device == t.device and t.labels.device == t.device
