"""Tests for the command line (jdm.cli, run as python -m jdm): help texts, a tiny train → sample run, bad input."""
import argparse
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torchvision.utils import make_grid

from jdm.__main__ import build_parser, main
from jdm.checkpoint import read_checkpoint

QUICK = ["--config", "tiny", "--limit", "64", "--timesteps", "50", "--batch-size", "16",
         "--samples", "4", "--ddim-steps", "2", "--device", "cpu", "--no-progress",
         "--test-limit", "64"]


def grid_size(n: int, nrow: int, side: int = 28) -> tuple[int, int]:
    grid = make_grid(torch.zeros(n, 1, side, side), nrow=nrow)  # the layout save_image uses
    return grid.shape[2], grid.shape[1]  # PIL's (width, height)


def test_module_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "jdm", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "train" in out and "sample" in out


@pytest.mark.parametrize("command", ["train", "sample", "demo"])
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_every_flag_is_explained():
    def parsers(parser, name="jdm"):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    yield f"{name} {sub_name}", sub
                    yield from parsers(sub, f"{name} {sub_name}")

    for name, parser in parsers(build_parser()):
        for action in parser._actions:
            assert action.help and len(action.help) > 10, (name, action.option_strings or action.dest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *QUICK, "--train-steps", "3", "--checkpoint-every", "2", "--out", str(out)]) == 0
    return out


def test_train_writes_checkpoint_samples_and_log(trained):
    assert read_checkpoint(trained / "last.pt")["step"] == 3
    assert Image.open(trained / "samples.png").size == grid_size(4, nrow=2)
    log = json.loads((trained / "train_log.json").read_text())
    assert log["command"].startswith("python -m jdm train --config tiny")
    assert log["steps"] == 3 and log["images"] == 64 and log["hardware"]
    assert log["wall_seconds"] > 0 and log["history"][-1]["step"] == 3
    assert log["spec"]["schedule"]["num_steps"] == 50


def test_generative_metrics_after_training(trained, tmp_path):
    log = json.loads((trained / "train_log.json").read_text())
    assert 0 < log["test_metrics"]["test_loss"] < 3  # held-out L_simple, always measured
    out = tmp_path / "fd"
    assert main(["train", *QUICK, "--train-steps", "1", "--fd-samples", "8", "--out", str(out)]) == 0
    metrics = json.loads((out / "train_log.json").read_text())["test_metrics"]
    assert metrics["fd_samples"] == 8 and metrics["fd_evaluator"] > 0
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1


def test_sample_from_checkpoint(trained, capsys):
    out = trained / "grid.png"
    assert main(["sample", "--checkpoint", str(trained / "last.pt"), "--n", "6", "--ddim-steps", "2",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert Image.open(out).size == grid_size(6, nrow=3)
    assert "wrote" in capsys.readouterr().out


def test_train_refuses_to_overwrite_and_resumes(trained, capsys):
    assert main(["train", *QUICK, "--train-steps", "4", "--out", str(trained)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", *QUICK, "--train-steps", "4", "--out", str(trained), "--resume"]) == 0
    assert read_checkpoint(trained / "last.pt")["step"] == 4
    # resuming with another architecture is refused, naming both
    assert main(["train", *QUICK, "--train-steps", "5", "--timesteps", "60", "--out", str(trained),
                 "--resume"]) == 2
    assert "different model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train"], "--out"),                                           # required flag missing
    (["train", "--config", "huge", "--out", "x"], "invalid choice"),
    (["train", "--train-steps", "0", "--out", "x"], "positive integer"),
    (["sample", "--checkpoint", "x.pt"], "--out"),
    ([], "COMMAND"),
])
def test_bad_arguments_exit_nonzero(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "tiny", "--dataset", "cifar10", "--out", "{tmp}/a"], "cifar10"),
    (["train", *QUICK, "--lr", "0", "--out", "{tmp}/b"], "lr must be > 0"),
    (["train", *QUICK, "--limit", "10", "--out", "{tmp}/c"], "larger than the dataset"),
    (["sample", "--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/s.png"], "no checkpoint at"),
    (["sample", "--checkpoint", "{tmp}/m.pt", "--method", "ddpm", "--ddim-steps", "5",
      "--out", "{tmp}/s.png"], "only apply to --method ddim"),
])
def test_bad_values_give_a_message(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdm ") and message in err


def test_demo_classifies_generates_and_explains_with_the_shipped_joint_model(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--test-images", "40", "--samples-per-class", "1", "--ddim-steps", "2",
                 "--counterfactuals", "2", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy ")[1].split()[0])
    assert "joint-fmnist-small" in printed and "on 40 Fashion-MNIST test images" in printed
    assert 0.7 < accuracy <= 1.0  # 0.891 on all 10,000 test images
    assert "10 conditional samples" in printed and "2 counterfactuals" in printed
    assert Image.open(out).size[0] > 1000
    assert main(["demo", "--model", "ddpm-fmnist", "--out", str(out)]) == 2
    assert "not a joint model" in capsys.readouterr().err


def test_sample_from_a_shipped_weights_file(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", "data/checkpoints/ddpm-fmnist-small.pt", "--n", "2",
                 "--ddim-steps", "2", "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    assert out.is_file() and "2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", *QUICK, "--export", "../x", "--out", "{tmp}/r"], "plain name"),
    (["train", *QUICK, "--device", "banana", "--out", "{tmp}/r"], "not a device"),
    (["train", *QUICK, "--out", "{file}"], "existing file"),
    (["sample", "--checkpoint", "x.pt", "--out", "{tmp}"], "is a directory"),
    (["sample", "--checkpoint", "x.pt", "--out", "{tmp}/noext"], "no image file extension"),
    (["evaluate", "conditional", "--json", "{tmp}"], "is a directory"),
])
def test_bad_outputs_are_refused_before_any_work(argv, message, tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("")
    assert main([a.format(tmp=tmp_path, file=file) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jdm ") and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").glob("*.pt"))
