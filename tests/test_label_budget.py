"""Label budgets (issue 13): the class-balanced subset sampler, labelled batches in the Trainer,
unlabelled images in the classifier baseline, and the CLI flags end to end."""
import json
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jdm.__main__ import main
from jdm.data import hide_labels, label_subset, load_tensors
from jdm.encoder_classifier import EncoderClassifier
from jdm.pretrained import read_manifest
from jdm.train import TrainConfig, Trainer
from jdm.unet import UNET_PRESETS, UNet
from scripts import load_script

# an unbalanced toy label set: class c has 5 + 3c members, shuffled
TOY = torch.cat([torch.full((5 + 3 * c,), c) for c in range(4)])
TOY = TOY[torch.randperm(38, generator=torch.Generator().manual_seed(1))]


def test_per_class_is_balanced_sorted_and_unique():
    keep = label_subset(TOY, per_class=5, seed=0)
    assert torch.equal(torch.bincount(TOY[keep]), torch.full((4,), 5))
    assert torch.equal(keep, keep.sort().values) and keep.unique().numel() == keep.numel()


def test_fraction_keeps_a_share_of_every_class():
    keep = label_subset(TOY, fraction=0.5, seed=0)
    counts = torch.bincount(TOY, minlength=4)
    assert torch.equal(torch.bincount(TOY[keep]), (counts * 0.5).round().long())
    assert torch.equal(label_subset(TOY, fraction=1.0), torch.arange(38))
    assert torch.bincount(TOY[label_subset(TOY, fraction=0.01)]).tolist() == [1, 1, 1, 1]


def test_the_seed_decides_the_subset():
    a, b = label_subset(TOY, per_class=3, seed=7), label_subset(TOY, per_class=3, seed=7)
    assert torch.equal(a, b)
    others = {tuple(label_subset(TOY, per_class=3, seed=s).tolist()) for s in range(5)}
    assert len(others) > 1


@pytest.mark.parametrize("kwargs, message", [
    ({"per_class": 6}, "class 0 has only 5 images"),
    ({"per_class": 0}, "positive integer"),
    ({"per_class": 2.5}, "positive integer"),
    ({"fraction": 0.0}, r"\(0, 1\]"),
    ({"fraction": 1.5}, r"\(0, 1\]"),
    ({"fraction": -0.1}, r"\(0, 1\]"),
    ({}, "exactly one"),
    ({"per_class": 2, "fraction": 0.5}, "exactly one"),
])
def test_impossible_budgets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        label_subset(TOY, **kwargs)


def test_hidden_labels_are_refused_as_input():
    with pytest.raises(ValueError, match="before any are hidden"):
        label_subset(hide_labels(TOY, torch.tensor([0, 1])), per_class=1)


def test_hide_labels():
    keep = label_subset(TOY, per_class=2, seed=0)
    hidden = hide_labels(TOY, keep)
    assert torch.equal(hidden[keep], TOY[keep])
    assert (hidden >= 0).sum() == 8 and set(hidden[hidden < 0].tolist()) == {-1}
    with pytest.raises(ValueError, match="outside"):
        hide_labels(TOY, torch.tensor([38]))


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def loss(self, x, y=None):
        return {"loss": self.w * x.mean()}

    def spec(self):
        return {"kind": "toy"}


def toy_trainer(labels, **config):
    images = torch.zeros(labels.shape[0], 1, 4, 4)
    return Trainer(Toy(), images, labels, TrainConfig(steps=3, **config), device="cpu",
                   progress=False)


def test_labelled_batches_are_a_pure_function_of_the_step():
    labels = hide_labels(TOY, label_subset(TOY, per_class=2, seed=0))  # 8 labelled of 38
    t = toy_trainer(labels, batch_size=6, labelled_batch_size=5)
    x, y = t.batch(0)
    assert x.shape[0] == 11 and torch.equal(y[:6], torch.full((6,), -1))
    assert (y[6:] >= 0).all()
    labelled = set((labels >= 0).nonzero().squeeze(1).tolist())
    stream = torch.cat([t.labelled_batch_indices(k) for k in range(8)])  # 40 = 5 passes over 8
    assert set(stream.tolist()) <= labelled
    for p in range(5):  # every pass visits each labelled image once
        assert sorted(stream[8 * p:8 * p + 8].tolist()) == sorted(labelled)
    again = toy_trainer(labels, batch_size=6, labelled_batch_size=5)
    assert torch.equal(again.labelled_batch_indices(6), t.labelled_batch_indices(6))
    assert torch.equal(again.batch(3)[1], t.batch(3)[1])
    other = toy_trainer(labels, batch_size=6, labelled_batch_size=5, seed=1)
    assert not torch.equal(other.labelled_batch_indices(0), t.labelled_batch_indices(0))


def test_labelled_batches_need_labels():
    with pytest.raises(ValueError, match="at least one labelled"):
        toy_trainer(torch.full((38,), -1), batch_size=6, labelled_batch_size=5)
    with pytest.raises(ValueError, match="labelled_batch_size must be >= 0"):
        TrainConfig(labelled_batch_size=-1)


def test_the_classifier_baseline_skips_unlabelled_images():
    torch.manual_seed(0)
    model = EncoderClassifier(UNet(UNET_PRESETS["tiny"])).eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    y = torch.tensor([-1, 4, -1, 7, 2])
    expected = F.cross_entropy(model.classify(x[y >= 0]), y[y >= 0])
    assert torch.allclose(model.loss(x, y)["loss"], expected)
    none = model.loss(x, torch.full((5,), -1))["loss"]
    none.backward()
    assert float(none.detach()) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.unet.parameters())


QUICK = ["--config", "tiny", "--limit", "200", "--timesteps", "50", "--batch-size", "8",
         "--samples", "4", "--ddim-steps", "2", "--device", "cpu", "--no-progress",
         "--test-limit", "64", "--train-steps", "2"]


@pytest.mark.parametrize("model", ["joint", "classifier"])
def test_cli_trains_on_a_label_budget_and_logs_the_subset(model, tmp_path):
    out = tmp_path / model
    assert main(["train", "--model", model, *QUICK, "--labels-per-class", "3", "--seed", "5",
                 "--out", str(out)]) == 0
    log = json.loads((out / "train_log.json").read_text())
    budget = log["label_budget"]
    _, labels = load_tensors("fashion_mnist", train=True)
    keep = torch.tensor(budget["indices"])
    assert budget["labelled"] == 30 and budget["label_seed"] == 5
    assert torch.equal(keep, label_subset(labels[:200], per_class=3, seed=5))  # reproducible
    assert torch.bincount(labels[keep], minlength=10).tolist() == [3] * 10
    assert budget["labelled_batch_size"] == 8 == log["train_config"]["labelled_batch_size"]


def test_cli_label_fraction_with_its_own_seed(tmp_path):
    out = tmp_path / "f"
    assert main(["train", "--model", "classifier", *QUICK, "--label-fraction", "0.1",
                 "--label-seed", "3", "--labelled-batch-size", "4", "--out", str(out)]) == 0
    budget = json.loads((out / "train_log.json").read_text())["label_budget"]
    _, labels = load_tensors("fashion_mnist", train=True)
    assert budget["indices"] == label_subset(labels[:200], fraction=0.1, seed=3).tolist()
    assert budget["labelled_batch_size"] == 4


@pytest.mark.parametrize("flags, message", [
    (["--model", "joint", "--labels-per-class", "1000"], "has only"),
    (["--model", "joint", "--label-fraction", "0"], "(0, 1]"),
    (["--model", "classifier", "--label-fraction", "1.5"], "(0, 1]"),
    (["--model", "joint", "--labels-per-class", "2", "--label-fraction", "0.5"], "not both"),
    (["--model", "ddpm", "--labels-per-class", "2"], "only apply to --model joint or classifier"),
    (["--model", "joint", "--label-seed", "2"], "needs --labels-per-class"),
])
def test_cli_refuses_impossible_budgets(flags, message, tmp_path, capsys):
    assert main(["train", *QUICK, *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdm ") and message in err
    assert not (tmp_path / "x" / "last.pt").exists()


def _recipe(command: str) -> list[str]:
    """A shipped run's command without what may differ between the two models of a pair."""
    argv, out, skip = shlex.split(command), [], 0
    for a in argv:
        if skip:
            skip -= 1
        elif a in ("--model", "--out", "--export", "--samples", "--sample-steps"):  # as recorded
            skip = 1
        elif a != "--force":
            out.append(a)
    return out


@pytest.mark.parametrize("budget", ["10pc", "100pc", "all"])
def test_shipped_label_budget_pairs_share_their_recipe(budget):
    joint = read_manifest(f"joint-fmnist-tiny-{budget}")
    clf = read_manifest(f"classifier-fmnist-tiny-{budget}")
    assert joint["spec"]["kind"] == "joint" and clf["spec"]["kind"] == "classifier"
    assert joint["train_config"] == clf["train_config"]
    assert joint["train_config"]["labelled_batch_size"] > 0 and joint["steps"] == clf["steps"]
    assert joint["spec"]["unet"] == clf["spec"]["unet"]
    for key in ("augment", "head_hidden", "head_dropout"):
        assert joint["spec"][key] == clf["spec"][key]
    assert _recipe(joint["command"]) == _recipe(clf["command"])
    table = json.loads((Path(__file__).resolve().parent.parent / "docs" / "label_budgets.json").read_text())
    for name, manifest in ((f"joint-fmnist-tiny-{budget}", joint), (f"classifier-fmnist-tiny-{budget}", clf)):
        row = next(r for r in table["rows"] if r.get("exported") == name)
        assert row["command"] == manifest["command"]
        assert row["test_accuracy"] == manifest["metrics"]["test_accuracy"]


def test_label_budget_commands_run_from_any_checkout():
    """The recorded commands name their run folder relative to the repository, not this machine's
    path: benchmarks/label_budgets.py passes --out relative to the root its runs start in."""
    root = Path(__file__).resolve().parent.parent
    module = load_script("benchmarks/label_budgets.py")
    assert module.relative_to_root(root / "runs" / "label_budgets" / "x") == Path("runs/label_budgets/x")
    assert module.relative_to_root(Path("/elsewhere/x")) == Path("/elsewhere/x")
    for row in json.loads((root / "docs" / "label_budgets.json").read_text())["rows"]:
        argv = shlex.split(row["command"])
        assert argv[argv.index("--out") + 1].startswith("runs/label_budgets/"), row["command"]


@pytest.mark.parametrize("kind", ["joint", "classifier"])
@pytest.mark.parametrize("rows", [None, torch.tensor([2, 3, 4, 5, 8, 9])])  # a rank's share
def test_a_labelled_tail_gives_the_masked_loss_without_classifying_the_unlabelled(kind, rows):
    """Labelled batches (``labelled_batch_size``): only the last rows carry labels, so the CE on
    that slice equals the CE over the whole masked batch, unlabelled rows never classified."""
    from jdm.joint import JointDiffusion
    from jdm.schedule import NoiseSchedule

    torch.manual_seed(0)
    unet = UNet(UNET_PRESETS["tiny"])
    model = (JointDiffusion(unet, NoiseSchedule(50), noise_aware=True, augment=True, head_dropout=0.0)
             if kind == "joint" else EncoderClassifier(unet, augment=True, head_dropout=0.0))
    x = torch.rand(10, 1, 28, 28) * 2 - 1
    y = torch.tensor([-1] * 6 + [3, 1, 4, 1])  # 6 hidden, then the labelled batch of 4
    tail = 4 if rows is None else 2  # each of two ranks holds half of each part
    parts, seen = {}, {}
    for k in (0, tail):
        calls = []
        handle = model.head.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
        torch.manual_seed(1)
        parts[k], seen[k] = model.loss(x, y, rows=rows, labelled_tail=k), calls
        handle.remove()
    for name, value in parts[0].items():
        assert torch.allclose(value, parts[tail][name], atol=1e-6), name
    n = 10 if rows is None else 6
    assert set(seen[0]) == {n} and tail in seen[tail]
    assert seen[tail].count(n) == (1 if kind == "joint" else 0)  # only the noisy CE sees every row
