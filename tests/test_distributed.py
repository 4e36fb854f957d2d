"""``torchrun -m jdm train`` on 2 CPU ranks (gloo): the same weights as one process with the same
global batch, an exact resume after a stop signal on one rank, and a rank that dies taking the run
down cleanly (issue 28; jdm.distributed)."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from jdm.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
STEPS = 10  # of the reference runs; the interrupted one stops long before (after ~step 2)
# the joint model with every random draw of a step (t, ε, augmentation); head dropout 0 and the
# tiny UNet's 0: dropout masks are drawn per rank (jdm.distributed)
TRAIN = ["-m", "jdm", "train", "--model", "joint", "--noise-aware", "--augment", "--config", "tiny",
         "--limit", "64", "--timesteps", "50", "--batch-size", "16", "--head-dropout", "0",
         "--lr", "1e-3", "--log-every", "1", "--samples", "2", "--ddim-steps", "1",
         "--test-limit", "16", "--no-progress", "--device", "cpu"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="finds each rank's process in /proc")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int) -> list[str]:
    # --standalone: a rendezvous on a free local port
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def train(out: Path, steps: int, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if nproc == 1 else torchrun(nproc)  # 1: no torchrun at all
    proc = subprocess.run([*launcher, *TRAIN, "--train-steps", str(steps), "--out", str(out), *extra],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class Running:
    """A 2-rank ``torchrun`` training run in the background, its output collected line by line."""

    def __init__(self, out: Path, *extra: str) -> None:
        self.proc = subprocess.Popen([*torchrun(2), *TRAIN, "--train-steps", "100000", "--out", str(out),
                                      *extra], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                         daemon=True).start()

    def wait_for(self, text: str, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None and time.monotonic() < end, "".join(self.lines)[-3000:]
            time.sleep(0.05)

    def rank_pid(self, rank: int) -> int:
        """The pid of the worker torchrun started with RANK=rank (one of its children)."""
        for d in Path("/proc").iterdir():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (d / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.proc.pid and f"RANK={rank}".encode() in environ:
                return int(d.name)
        raise AssertionError(f"no rank {rank} under torchrun {self.proc.pid}")

    def finish(self, timeout: float = 120) -> str:
        self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the reader thread takes the last lines
        return "".join(self.lines)


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()},
            **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An interrupted-and-resumed 2-rank run, an uninterrupted one, and one process alone."""
    root = tmp_path_factory.mktemp("distributed")
    interrupted = Running(root / "resumed")
    interrupted.wait_for("step 2/")
    os.kill(interrupted.rank_pid(1), signal.SIGTERM)  # one rank only: all must stop
    stop_output = interrupted.finish()
    stopped_at = read_checkpoint(root / "resumed" / "last.pt")["step"]
    assert 2 <= stopped_at < STEPS, stop_output[-3000:]
    train(root / "resumed", STEPS, 2, "--resume")
    train(root / "two", STEPS, 2)
    alone = train(root / "one", STEPS, 1)
    return root, stop_output, stopped_at, interrupted.proc.returncode, alone


def test_two_ranks_with_half_batches_train_as_one_process(runs):
    root, *_ = runs
    two, one = weights(root / "two" / "last.pt"), weights(root / "one" / "last.pt")
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_signal_on_one_rank_stops_all_with_one_checkpoint_and_the_resume_is_exact(runs):
    root, stop_output, stopped_at, returncode, _ = runs
    assert returncode != 0
    assert stop_output.count("resume with: torchrun") == 1, stop_output[-3000:]  # rank 0 only
    assert f"after step {stopped_at}/" in stop_output
    assert not list((root / "resumed").glob(".*.tmp"))
    resumed, straight = weights(root / "resumed" / "last.pt"), weights(root / "two" / "last.pt")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # bit for bit


def test_a_rank_that_dies_takes_the_run_down_without_a_half_written_checkpoint(tmp_path):
    run = Running(tmp_path, "--checkpoint-every", "1")  # rank 0 saves every step
    run.wait_for("step 3/")
    os.kill(run.rank_pid(1), signal.SIGKILL)
    output = run.finish()
    assert run.proc.returncode != 0
    # torchrun names the dead rank; rank 0 says why it stopped
    assert "SIGKILL" in output and "another rank stopped" in output, output[-3000:]
    assert not list(tmp_path.glob(".*.tmp"))
    assert read_checkpoint(tmp_path / "last.pt")["step"] >= 3  # intact (checksum verified)
