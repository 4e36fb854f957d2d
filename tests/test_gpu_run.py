"""The prepared GPU run (tools/gpu_run.py): its CPU dry run end to end, so it cannot rot between
GPU runs, and its refusal to start without CUDA."""
import hashlib
import json
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch

from jdm.pretrained import model_from_weights
from scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def load_driver():
    return load_script("tools/gpu_run.py")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-run")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_run.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads((out / "report.json").read_text())


def test_dry_run_passes_every_phase(dry_run):
    _, report = dry_run
    phases = report["phases"]
    assert list(phases) == ["unit_tests", "demo", "notebooks_quick", "train", "bench",
                            "notebooks_full"]  # the order
    assert report["status"] == "finished" and report["elapsed_s"] < report["budget_s"]
    assert phases["unit_tests"]["status"] == "passed" and "passed" in phases["unit_tests"]["summary"]
    assert phases["demo"]["status"] == "passed"
    assert phases["notebooks_quick"]["status"] == "1/1 passed"
    assert phases["train"]["status"] == "passed", json.dumps(phases["train"])[-3000:]
    assert phases["bench"]["status"] == "passed" and phases["bench"]["results"]["rows"]


def test_dry_run_trains_the_trio_alike_and_exports_it(dry_run):
    out, report = dry_run
    train = report["phases"]["train"]
    assert train["planned_steps"] == 3  # calibration (2 steps) then resumed to the plan
    exports = train["exports"]
    assert set(exports) == {"ddpm-tiny-gpu", "classifier-tiny-gpu", "joint-tiny-gpu"}  # KIND-CONFIG-gpu
    unets = set()
    for name, record in exports.items():
        manifest, path = record["manifest"], out / record["file"]
        assert manifest["steps"] == 3 and record["note"] == ""
        assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        blob = torch.load(path, weights_only=True)
        assert all(v.dtype == torch.float16 for v in blob["state_dict"].values()
                   if v.is_floating_point())
        assert model_from_weights(blob, path).kind == blob["spec"]["kind"]  # loads as shipped
        unets.add(json.dumps(blob["spec"]["unet"], sort_keys=True))
        assert "--train-steps 3" in manifest["command"] and "--resume" in manifest["command"]
        # trained on 2 gloo ranks, the loss compiled whole (issue 28)
        assert manifest["command"].startswith("torchrun --nproc_per_node=2 -m jdm train")
        assert "--compile aot_eager" in manifest["command"]
        assert ("test_accuracy" in manifest["metrics"]) == (name != "ddpm-tiny-gpu")
    assert len(unets) == 1  # the same UNet for all three
    assert train["nproc"] == 2 and train["compile"] == "aot_eager"
    assert "--noise-aware" in exports["joint-tiny-gpu"]["manifest"]["command"]


def test_dry_run_output_fits_what_comes_back(dry_run):
    out, _ = dry_run
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)


def test_refuses_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert load_driver().main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert json.loads((tmp_path / "report.json").read_text())["status"].startswith("refused")


def test_plan_steps():
    plan = load_driver().plan_steps
    assert plan(200, 0.1, 100, 10, 100_000) == 200 + 810   # 90 % of (100 − 10) s at 10 steps/s
    assert plan(200, 0.1, 5, 10, 100_000) == 200           # no time: stay at the calibration
    assert plan(200, 0.001, 1000, 0, 5000) == 5000         # capped at the paper's steps


def test_bad_limit_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        load_driver().main(["--dry-run", "--out", str(tmp_path), "--limit", "train=soon"])


def test_commands_past_their_time_are_stopped(tmp_path):
    driver = load_driver()
    run = driver.Run(tmp_path, driver.settings(driver.argparse.Namespace(dry_run=True, budget=None)),
                     dry_run=True)
    start = time.monotonic()
    record = run.sh("sleepy", [sys.executable, "-c", "import time; time.sleep(60)"], limit=1)
    assert record["status"] == "timeout" and time.monotonic() - start < 1 + driver.GRACE_S + 5
    assert run.sh("quick", [sys.executable, "-c", "print('hi')"], limit=30)["log_tail"] == "hi\n"


def test_overrides_reach_the_training_commands(tmp_path):
    driver = load_driver()
    args = driver.argparse.Namespace(dry_run=True, budget=None, config="fmnist-small",
                                     batch_size=8, lr=0.002, calibration_steps=3)
    run = driver.Run(tmp_path, driver.settings(args), dry_run=True)
    assert run.s.calibration_steps == 3
    commands = driver.train_commands(run, alpha_run=True)
    assert set(commands) == {"ddpm-fmnist-small-gpu", "classifier-fmnist-small-gpu",
                             "joint-fmnist-small-gpu", "joint-fmnist-small-gpu-alpha0.001"}
    for command in commands.values():
        flags = " ".join(command)
        assert "--config fmnist-small --batch-size 8 --lr 0.002 " in flags
    assert driver.settings(driver.argparse.Namespace(dry_run=False, budget=None)).batch_size == 1024


def test_nproc_and_compile_reach_the_training_commands(tmp_path):
    driver = load_driver()
    args = driver.argparse.Namespace(dry_run=False, budget=None, nproc=4, compile="reduce-overhead")
    run = driver.Run(tmp_path, driver.settings(args), dry_run=False)
    for command in driver.train_commands(run, alpha_run=False).values():
        assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
        assert " --compile reduce-overhead " in " ".join(command)
    plain = driver.Run(tmp_path, driver.settings(driver.argparse.Namespace(dry_run=False,
                                                                           budget=None)), False)
    for command in driver.train_commands(plain, alpha_run=False).values():
        assert command[1:4] == ["-m", "jdm", "train"] and "--compile" not in command


def test_the_paper_recipe_reaches_the_training_commands(tmp_path):
    driver = load_driver()
    args = driver.argparse.Namespace(dry_run=False, budget=None, recipe="paper")
    run = driver.Run(tmp_path, driver.settings(args), dry_run=False)
    commands = driver.train_commands(run, alpha_run=True)
    assert set(commands) == {"ddpm-fmnist-paper-gpu", "classifier-fmnist-paper-gpu",
                             "joint-fmnist-paper-gpu", "joint-fmnist-paper-gpu-alpha0.001"}
    for command in commands.values():
        flags = " ".join(command)
        assert "--config fmnist-paper " in flags and "--timesteps 500 " in flags
        assert "--dropout 0.3 " in flags
    alpha = driver.recipe_flags().alpha  # the course's α, the shipped joint recipe's
    assert f"--alpha {alpha} " in " ".join(commands["joint-fmnist-paper-gpu"]) and alpha != 0.001
    assert "--alpha 0.001 " in " ".join(commands["joint-fmnist-paper-gpu-alpha0.001"])
