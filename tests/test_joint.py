"""Tests for jdm.joint: the joint loss, where its gradients go, labels, options, training, spec."""
import json

import pytest
import torch
import torch.nn.functional as F

from jdm.__main__ import main
from jdm.data import load_tensors
from jdm.diffusion import DiffusionModel, build_model
from jdm.joint import JointDiffusion, augment_images
from jdm.schedule import NoiseSchedule
from jdm.checkpoint import read_checkpoint
from jdm.pretrained import load_checkpoint_model
from jdm.train import TrainConfig, Trainer
from jdm.unet import UNET_PRESETS, UNet


def make(**kwargs) -> JointDiffusion:
    torch.manual_seed(0)
    kwargs.setdefault("head_dropout", 0.0)  # deterministic losses for comparisons
    return JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50), **kwargs)


@pytest.fixture(scope="module")
def data():
    images, labels = load_tensors("fashion_mnist", train=True)
    return images[:256], labels[:256]


def decoder_params(model):
    return [p for m in (model.unet.up, model.unet.out) for p in m.parameters()]


def encoder_modules(model):
    u = model.unet
    return {"time_embed": u.time_embed, "stem": u.stem, "down": u.down, "middle": u.middle,
            "head": model.head}


def test_loss_parts():
    model = make(alpha=0.5)
    x, y = torch.rand(6, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3, 4, 5])
    parts = model.loss(x, y)
    assert set(parts) == {"loss", "diffusion", "classification", "accuracy"}
    assert all(v.shape == () and torch.isfinite(v) for v in parts.values())
    torch.testing.assert_close(parts["loss"], parts["diffusion"] + 0.5 * parts["classification"])
    assert parts["classification"] > 1.0  # untrained head: about log(10) = 2.3
    model.eval()  # no dropout: the clean-image accuracy the loss reports can be recomputed
    with torch.no_grad():
        expected = (model.classify(x).argmax(1) == y).float().mean()
    assert model.loss(x, y)["accuracy"] == expected


def test_alpha_zero_is_the_plain_ddpm():
    """Same seed, same UNet weights: the diffusion term is exactly DiffusionModel's loss."""
    joint = make(alpha=0.0)
    ddpm = DiffusionModel(joint.unet, joint.schedule)
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([1, 2, 3, 4])
    torch.manual_seed(5)
    expected = ddpm.loss(x)["loss"]
    torch.manual_seed(5)
    parts = joint.loss(x, y)
    torch.testing.assert_close(parts["diffusion"], expected)
    torch.testing.assert_close(parts["loss"], expected)


@pytest.mark.parametrize("noise_aware", [False, True])
def test_classification_gradients_reach_the_encoder_but_not_the_decoder(noise_aware):
    model = make(noise_aware=noise_aware)
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 3, 5, 9])
    parts = model.loss(x, y)
    ce = parts["classification"] + parts.get("classification_noisy", 0)
    ce.backward()
    for p in decoder_params(model):
        assert p.grad is None or not p.grad.any()
    for name, module in encoder_modules(model).items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    # and the diffusion loss does reach the decoder
    model.zero_grad()
    model.loss(x, y)["diffusion"].backward()
    assert all(p.grad is not None for p in decoder_params(model))


def test_unlabelled_examples_give_only_the_diffusion_loss():
    model = make()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    for y in (torch.full((5,), -1), None):
        parts = model.loss(x, y)
        assert parts["classification"] == 0 and parts["accuracy"] == 0
        torch.testing.assert_close(parts["loss"], parts["diffusion"])
        parts["loss"].backward()  # still a valid graph
    # a mixed batch: CE is the mean over the labelled examples only
    y = torch.tensor([-1, 4, -1, 7, 2])
    parts = model.loss(x, y)
    labelled = y >= 0
    expected = F.cross_entropy(model.classify(x[labelled]), y[labelled])
    torch.testing.assert_close(parts["classification"], expected)


def test_noise_aware_adds_the_noisy_term():
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    plain, aware = make(alpha=2.0), make(alpha=2.0, noise_aware=True)
    torch.manual_seed(1)
    p = plain.loss(x, y)
    torch.manual_seed(1)
    a = aware.loss(x, y)
    assert "classification_noisy" in a and "classification_noisy" not in p
    torch.testing.assert_close(a["diffusion"], p["diffusion"])
    torch.testing.assert_close(a["classification"], p["classification"])
    torch.testing.assert_close(a["loss"], a["diffusion"]
                               + 2.0 * (a["classification"] + a["classification_noisy"]))
    assert a["loss"] > p["loss"]


def test_augment_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    assert torch.equal(augment_images(x, max_shift=0, flip=False), x)
    flipped = augment_images(x, max_shift=0, generator=g)
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x))
    dot = torch.full((64, 1, 28, 28), -1.0)
    dot[:, :, 14, 14] = 1.0
    moved = augment_images(dot, max_shift=2, flip=False, generator=g)
    where = (moved == 1.0).nonzero()[:, 2:]  # one bright pixel per image, within 2 px of (14, 14)
    assert where.shape == (64, 2) and (where - 14).abs().max() <= 2
    assert len({tuple(w.tolist()) for w in where}) > 5  # the shifts differ between images
    with pytest.raises(ValueError):
        augment_images(x[0])


def test_augment_only_touches_the_classifier_path():
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    plain, aug = make(), make(augment=True)
    torch.manual_seed(2)
    p = plain.loss(x, y)
    torch.manual_seed(2)
    a = aug.loss(x, y)
    torch.testing.assert_close(a["diffusion"], p["diffusion"])
    assert not torch.allclose(a["classification"], p["classification"])


def test_classify_and_predict():
    model = make(noise_aware=True).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert model.classify(x).shape == (3, 10)
    torch.testing.assert_close(model.classify(x), model.classify(x, 0))
    torch.testing.assert_close(model.classify(x, 7), model.classify(x, torch.full((3,), 7)))
    assert not torch.allclose(model.classify(x, 40), model.classify(x))
    model.train()
    pred = model.predict(x)
    assert pred.shape == (3,) and pred.dtype == torch.long and model.training
    assert torch.equal(pred, model.eval().classify(x).argmax(1))


def test_bad_input():
    model = make()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    with pytest.raises(ValueError, match="0..9"):
        model.loss(x, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="0..9"):
        model.loss(x, torch.tensor([0, -2, 1]))
    with pytest.raises(ValueError, match="integer tensor of shape \\(3,\\)"):
        model.loss(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        model.loss(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expected images"):
        model.classify(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match="t must"):
        model.classify(x, 50)
    with pytest.raises(ValueError, match="t must"):
        model.classify(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha"):
        make(alpha=-1.0)
    from jdm.classifier import ClassifierHead
    with pytest.raises(ValueError, match="feature channels"):
        make(head=ClassifierHead([8, 8]))
    with pytest.raises(ValueError, match="classes"):
        make(head=ClassifierHead(UNet(UNET_PRESETS["tiny"]).feature_channels(), num_classes=5))


def test_spec_round_trips_through_build_model():
    model = make(alpha=0.3, noise_aware=True, augment=True, head_hidden=32, head_dropout=0.2,
                 num_classes=7)
    spec = json.loads(json.dumps(model.spec()))
    assert {k: spec[k] for k in ("kind", "alpha", "noise_aware", "augment", "num_classes",
                                 "head_hidden", "head_dropout")} == {
        "kind": "joint", "alpha": 0.3, "noise_aware": True, "augment": True, "num_classes": 7,
        "head_hidden": 32, "head_dropout": 0.2}
    rebuilt = build_model(spec)
    assert isinstance(rebuilt, JointDiffusion) and rebuilt.spec() == model.spec()
    rebuilt.load_state_dict(model.state_dict())  # same architecture, head included


def evaluate(model, images, labels):
    """Fixed-seed L_simple and clean CE on the given images (eval mode, no dropout)."""
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, model.schedule.num_steps, (images.shape[0],), generator=g)
    noise = torch.randn(images.shape, generator=g)
    model.eval()
    with torch.no_grad():
        diffusion = F.mse_loss(model.eps(model.schedule.q_sample(images, t, noise), t), noise)
        ce = F.cross_entropy(model.classify(images), labels)
    return diffusion.item(), ce.item()


def test_tiny_training_lowers_both_loss_parts(data, tmp_path):
    images, labels = data
    model = make(head_dropout=0.1)
    before = evaluate(model, images, labels)
    trainer = Trainer(model, images, labels, TrainConfig(steps=30, batch_size=32, lr=2e-3,
                                                          ema_decay=0.0, log_every=10),
                      out_dir=tmp_path, device="cpu", progress=False)
    history = trainer.fit()
    after = evaluate(trainer.model, images, labels)
    assert after[0] < 0.7 * before[0], (before, after)  # L_simple
    assert after[1] < before[1] - 0.3, (before, after)  # CE
    assert {"diffusion", "classification", "accuracy"} <= set(history[-1])
    reloaded = load_checkpoint_model(tmp_path / "last.pt", ema=False)
    assert isinstance(reloaded, JointDiffusion)
    torch.testing.assert_close(reloaded.classify(images[:4]), trainer.model.eval().classify(images[:4]))


def test_cli_trains_a_joint_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "joint", "--config", "tiny", "--limit", "256", "--train-steps", "3",
                 "--timesteps", "50", "--batch-size", "32", "--samples", "4", "--ddim-steps",
                 "2", "--test-limit", "200", "--noise-aware", "--alpha", "0.5", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    ckpt = read_checkpoint(out / "last.pt")
    assert ckpt["spec"]["kind"] == "joint" and ckpt["spec"]["alpha"] == 0.5
    assert ckpt["spec"]["noise_aware"] is True and ckpt["step"] == 3
    log = json.loads((out / "train_log.json").read_text())
    assert log["test_metrics"]["test_images"] == 200
    ema = load_checkpoint_model(out / "last.pt", ema=True).eval()  # re-measure what the log says
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    with torch.no_grad():
        measured = (ema.classify(test_x[:200]).argmax(1) == test_y[:200]).float().mean().item()
    assert log["test_metrics"]["test_accuracy"] == round(measured, 4)
    assert "classification_noisy" in log["history"][-1]
    assert (out / "samples.png").is_file()
    assert "test_accuracy" in capsys.readouterr().out


def test_cli_rejects_joint_flags_for_other_models(tmp_path, capsys):
    assert main(["train", "--config", "tiny", "--alpha", "1", "--out", str(tmp_path / "x")]) == 2
    assert "only apply to --model joint" in capsys.readouterr().err
