"""Tests for jdm.evaluator: the CNN's shapes, spec, training, the CLI route and the shipped one."""
import json

import pytest
import torch
import torch.nn.functional as F

import jdm.pretrained as pretrained
from jdm.__main__ import main
from jdm.data import load_tensors
from jdm.diffusion import build_model
from jdm.evaluator import EVALUATOR_NAME, EvaluatorNet, load_evaluator, train_evaluator
from jdm.metrics import accuracy


@pytest.fixture(scope="module")
def data():
    images, labels = load_tensors("fashion_mnist", train=True)
    return images[:256], labels[:256]


def test_shapes_and_features():
    net = EvaluatorNet().eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    assert net(x).shape == (5, 10)
    feats = net.features(x)
    assert feats.shape == (5, 128) and net.feature_dim == 128 and (feats >= 0).all()
    assert net.embed(x, batch_size=2).shape == (5, 128)
    assert net.predict(x).shape == (5,)
    torch.testing.assert_close(net.logits(x, batch_size=3), net(x))
    cifar = EvaluatorNet(image_channels=3, image_size=32, feature_dim=64)
    assert cifar.eval().features(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


def test_spec_round_trip_and_bad_input():
    net = EvaluatorNet(width=8, feature_dim=16, dropout=0.1)
    spec = json.loads(json.dumps(net.spec()))
    rebuilt = build_model(spec)
    assert isinstance(rebuilt, EvaluatorNet) and rebuilt.spec() == net.spec()
    rebuilt.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="expected images of shape"):
        net(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="needs labels"):
        net.loss(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="not a valid evaluator spec"):
        EvaluatorNet.from_spec({"kind": "evaluator", "depth": 3})
    with pytest.raises(ValueError, match="dropout"):
        EvaluatorNet(dropout=1.5)


def test_tiny_training_lowers_the_loss(data):
    images, labels = data
    torch.manual_seed(0)
    untrained = EvaluatorNet(width=8, feature_dim=32).eval()  # train_evaluator's init (seed 0)
    with torch.no_grad():
        before = F.cross_entropy(untrained(images), labels).item()
    net = train_evaluator(images, labels, epochs=6, batch_size=32, lr=3e-3, seed=0, progress=False,
                          device="cpu", width=8, feature_dim=32)
    assert not net.training
    with torch.no_grad():
        after = F.cross_entropy(net(images), labels).item()
    assert after < 0.7 * before, (before, after)


def test_cli_trains_and_exports_an_evaluator(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "checkpoint_dir", lambda: tmp_path / "checkpoints")
    with pytest.raises(FileNotFoundError, match="python -m jdm train --model evaluator"):
        load_evaluator()
    assert main(["train", "--model", "evaluator", "--limit", "256", "--train-steps", "4",
                 "--batch-size", "32", "--lr", "1e-3", "--test-limit", "100", "--device", "cpu",
                 "--no-progress", "--out", str(tmp_path / "run"), "--export", EVALUATOR_NAME]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    manifest = pretrained.read_manifest(EVALUATOR_NAME)
    assert manifest["command"].startswith("python -m jdm train --model evaluator")
    assert manifest["metrics"]["test_images"] == 100 and manifest["steps"] == 4
    assert not (tmp_path / "run" / "samples.png").exists()
    net = load_evaluator()
    assert isinstance(net, EvaluatorNet) and not net.training


def test_shipped_evaluator_reaches_90_percent_on_the_test_set():
    """The shipped checkpoint, recomputed on all 10,000 Fashion-MNIST test images."""
    net = load_evaluator()
    images, labels = load_tensors("fashion_mnist", train=False)
    acc = accuracy(net.logits(images), labels)
    manifest = pretrained.read_manifest(EVALUATOR_NAME)
    assert acc >= 0.90, acc
    assert manifest["metrics"]["test_images"] == 10_000
    # the manifest's number was measured in float32 before the half-precision export
    assert acc == pytest.approx(manifest["metrics"]["test_accuracy"], abs=0.003)
