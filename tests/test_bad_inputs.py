"""Issue 14's probes: bad or unlucky inputs to the CLI, the API and the data loader.

Each probe tries one input and reports what happened, judged from the outside:

* ``clear error``: a ``ValueError``/``FileNotFoundError``/``AttributeError`` (or, on the command
  line, a non-zero exit with one ``jdm <command>: error: …`` line) whose message says what is wrong,
  or a ``UserWarning`` that does;
* ``handled``: the input is legitimate and the right thing happened (e.g. Ctrl-C saved the run);
* ``silent wrong``: it ran and returned or wrote something wrong without a word;
* ``data loss``: a file that held work (a shipped checkpoint, a run) was damaged or lost;
* ``raw traceback``: any other exception escaped.

The test asserts each probe's expected outcome; ``python tests/test_bad_inputs.py`` replays every
probe and prints the reliability table of docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CLEAR, HANDLED, SILENT, LOSS, RAW = ("clear error", "handled", "silent wrong", "data loss",
                                     "raw traceback")
TINY = ["--config", "tiny", "--limit", "64", "--timesteps", "50", "--batch-size", "16",
        "--samples", "4", "--ddim-steps", "2", "--device", "cpu", "--no-progress",
        "--test-limit", "64", "--log-every", "1"]


# ------------------------------------------------------------------------------ judging
def api(fn: Callable, match: str, errors=(ValueError, FileNotFoundError, AttributeError)) -> str:
    """Outcome of ``fn()`` that should fail (or warn) with a message containing ``match``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except errors as err:
            return CLEAR if match.lower() in str(err).lower() else RAW
        except Exception:  # noqa: BLE001 - any other exception is what the probe looks for
            return RAW
    if any(match.lower() in str(w.message).lower() for w in caught):
        return CLEAR
    return SILENT


def cli(argv: list[str], match: str = "") -> tuple[int | None, str]:
    """Run ``python -m jdm argv`` in this process: (exit status or None if it raised, stderr)."""
    from jdm.__main__ import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit_:
            status = exit_.code
        except BaseException:  # noqa: BLE001
            return None, err.getvalue()
    return status, err.getvalue()


def cli_error(argv: list[str], match: str) -> str:
    status, err = cli(argv)
    if status is None:
        return RAW
    if status == 0:
        return SILENT
    return CLEAR if match.lower() in err.lower() and "Traceback" not in err else RAW


@contextlib.contextmanager
def sandbox(tmp: Path):
    """A data folder (JDM_DATA) with the bundled Fashion-MNIST and copies of the shipped checkpoints."""
    data = tmp / "data"
    (data / "checkpoints").mkdir(parents=True)
    os.symlink(ROOT / "data" / "FashionMNIST", data / "FashionMNIST")
    for f in (ROOT / "data" / "checkpoints").iterdir():
        shutil.copy(f, data / "checkpoints" / f.name)
    old = os.environ.get("JDM_DATA")
    os.environ["JDM_DATA"] = str(data)
    try:
        yield data
    finally:
        if old is None:
            del os.environ["JDM_DATA"]
        else:
            os.environ["JDM_DATA"] = old


def tiny_joint():
    from jdm.joint import JointDiffusion
    from jdm.schedule import NoiseSchedule
    from jdm.unet import UNET_PRESETS, UNet

    torch.manual_seed(0)
    return JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(50)).eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28) * 2 - 1


def toy_trainer(out: Path | None, steps: int, data=None, eval_fn=None, **config):
    """A Trainer of a 1×4×4 toy model (tests/test_train.py's)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_train import ToyModel, toy_data

    from jdm.train import TrainConfig, Trainer

    torch.manual_seed(0)
    x, y = data if data is not None else toy_data()
    cfg = TrainConfig(steps=steps, **{**dict(batch_size=16, lr=1e-2, log_every=1,
                                              checkpoint_every=2), **config})
    return Trainer(ToyModel(dropout=0.0), x, y, cfg, out_dir=out, eval_fn=eval_fn, device="cpu",
                   progress=False)


# ------------------------------------------------------------------------------ 1: export
def export_over(tmp: Path, extra: list[str], victim: str = "joint-fmnist-small") -> str:
    with sandbox(tmp) as data:
        shipped = data / "checkpoints" / f"{victim}.pt"
        before = shipped.read_bytes() if shipped.exists() else None
        outcome = cli_error(["train", *TINY, "--train-steps", "2", "--out", tmp / "run", *extra],
                            "export")
        after = shipped.read_bytes() if shipped.exists() else None
        if before is not None and after != before:
            return LOSS
        stray = [p for p in tmp.rglob("*.pt") if "checkpoints" not in p.parts and p.name != "last.pt"]
        return LOSS if stray else outcome


def export_new_name(tmp: Path) -> str:
    with sandbox(tmp) as data:
        status, err = cli(["train", *TINY, "--train-steps", "2", "--out", tmp / "run",
                           "--export", "ddpm-new"])
        if status is None:
            return RAW
        from jdm.pretrained import load_pretrained

        ok = status == 0 and load_pretrained("ddpm-new").kind == "ddpm"
        return HANDLED if ok and (data / "checkpoints" / "joint-fmnist-small.pt").is_file() else SILENT


# ------------------------------------------------------------------------------ 2: interruptions
def sigint_cli(tmp: Path) -> str:
    """Ctrl-C a real `python -m jdm train`: it must save, say how to resume, and resume."""
    out = tmp / "run"
    cmd = [sys.executable, "-m", "jdm", "train", *TINY, "--train-steps", "100000",
           "--checkpoint-every", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith("step 2/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if "Traceback" in err or proc.returncode in (0, None):
        return RAW if "Traceback" in err else SILENT
    from jdm.checkpoint import read_checkpoint

    if not (out / "last.pt").is_file() or read_checkpoint(out / "last.pt")["step"] < 2:
        return LOSS
    return HANDLED if proc.returncode == 130 and "--resume" in err else RAW


def sigterm_trainer(tmp: Path) -> str:
    from jdm.checkpoint import read_checkpoint

    def send(trainer):
        os.kill(os.getpid(), signal.SIGTERM)
        return {}

    def terminate(*_):  # stands in for SIGTERM's default action, without ending this process
        raise SystemExit(128 + signal.SIGTERM)

    trainer = toy_trainer(tmp, steps=50, eval_fn=send, checkpoint_every=0, eval_every=3)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        trainer.fit()
    except (KeyboardInterrupt, SystemExit) as err:  # TrainingInterrupted is a KeyboardInterrupt
        saved = read_checkpoint(tmp / "last.pt")["step"] if (tmp / "last.pt").exists() else None
        return HANDLED if saved == 3 and "resume" in str(err) else LOSS
    finally:
        signal.signal(signal.SIGTERM, previous)
    return SILENT


def resume_nothing(tmp: Path) -> str:
    status, err = cli(["train", *TINY, "--train-steps", "1", "--out", tmp / "run", "--resume"])
    return HANDLED if status == 0 and "starting a fresh run" in err else SILENT


def time_based_checkpoint(tmp: Path) -> str:
    from jdm.checkpoint import read_checkpoint

    seen = []
    trainer = toy_trainer(tmp, steps=3, checkpoint_every=0, checkpoint_minutes=1e-9, eval_every=2,
                          eval_fn=lambda t: seen.append(read_checkpoint(tmp / "last.pt")["step"]) or {})
    try:
        trainer.fit()
    except FileNotFoundError:
        return LOSS  # nothing saved before the end
    return HANDLED if seen == [1] else LOSS


# ------------------------------------------------------------------------------ 3: lock
def lock_live(tmp: Path) -> str:
    out = tmp / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getppid()}\n")  # a live process that is not this one
    return cli_error(["train", *TINY, "--train-steps", "1", "--out", out], "in use by process")


def lock_stale(tmp: Path) -> str:
    out = tmp / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid}\n")
    status, _ = cli(["train", *TINY, "--train-steps", "1", "--out", out])
    return HANDLED if status == 0 and not (out / ".lock").exists() else RAW


# ------------------------------------------------------------------------------ 4: classify
def classify(x_fn, match: str, t=None, method: str = "classify") -> Callable[[Path], str]:
    def probe(tmp: Path) -> str:
        model = tiny_joint()
        return api(lambda: getattr(model, method)(x_fn(), *([t] if t is not None else [])), match)
    return probe


def ddpm_classify(tmp: Path) -> str:
    from jdm.pretrained import load_pretrained

    model = load_pretrained("ddpm-fmnist-small")
    return api(lambda: model.classify(images()), "joint model")


# ------------------------------------------------------------------------------ 5: splits
def split_name(tmp: Path) -> str:
    from jdm.data import load_tensors

    try:
        x, _ = load_tensors(train="test")
    except Exception:  # noqa: BLE001
        return RAW
    return HANDLED if x.shape[0] == 10000 else SILENT


# ------------------------------------------------------------------------------ 6: corrupt checkpoints
def run_checkpoint(tmp: Path) -> Path:
    trainer = toy_trainer(tmp / "run", steps=2)
    trainer.fit()
    return tmp / "run" / "last.pt"


def flip_tensor_bytes(tmp: Path) -> str:
    from jdm.checkpoint import read_checkpoint

    path = run_checkpoint(tmp)
    weight = torch.load(path, weights_only=True)["model"]["net.1.weight"]
    raw = path.read_bytes()
    at = raw.find(weight.numpy().tobytes())
    path.write_bytes(raw[:at] + bytes(b ^ 0xFF for b in raw[at:at + 64]) + raw[at + 64:])
    return api(lambda: read_checkpoint(path), "last.pt")


def nan_checkpoint(tmp: Path, command: str) -> str:
    path = run_checkpoint(tmp)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["net.1.weight"][0, 0] = float("nan")
    ckpt.pop("checksum", None)  # as an older jdm, or a file saved after diverging, would be
    torch.save(ckpt, path)
    if command == "resume":
        trainer = toy_trainer(tmp / "run", steps=4)
        return api(lambda: trainer.fit(resume=True), "NaN")
    from jdm.pretrained import load_checkpoint_model

    return api(lambda: load_checkpoint_model(path), "NaN")


def nan_sample_cli(tmp: Path) -> str:
    run = tmp / "run"
    status, _ = cli(["train", *TINY, "--train-steps", "1", "--out", run])
    ckpt = torch.load(run / "last.pt", weights_only=True)
    for v in ckpt["ema"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    ckpt.pop("checksum", None)
    torch.save(ckpt, run / "last.pt")
    return cli_error(["sample", "--checkpoint", run / "last.pt", "--n", "2", "--ddim-steps", "2",
                      "--device", "cpu", "--no-progress", "--out", tmp / "s.png"], "NaN")


# ------------------------------------------------------------------------------ 7: NaN stop
def exploding_checkpoint(tmp: Path) -> str:
    """Step 4's update blows the weights up (finite, 1e30): checkpoint 4 must not be written."""
    from jdm.checkpoint import read_checkpoint
    from jdm.divergence import TrainingDiverged

    trainer = toy_trainer(tmp, steps=10)

    def explode(optimizer, *args):
        if trainer.step == 3:  # the update of step 4
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.mul_(1e30)
    trainer.optimizer.register_step_post_hook(explode)
    try:
        trainer.fit()
    except TrainingDiverged as err:
        ckpt_ok = read_checkpoint(tmp / "last.pt")["step"] == 2
        return CLEAR if ckpt_ok and "step 2" in str(err) else SILENT
    return SILENT


# ------------------------------------------------------------------------------ 8: resume settings
def resume_other_limit(tmp: Path) -> str:
    run = tmp / "run"
    cli(["train", *TINY, "--train-steps", "1", "--out", run])
    argv = ["train", *TINY, "--train-steps", "2", "--out", run, "--resume"]
    argv[argv.index("--limit") + 1] = "48"
    return cli_error(argv, "other data")


def resume_other_data(tmp: Path) -> str:
    toy_trainer(tmp, steps=2).fit()
    x, y = toy_trainer(None, steps=1).images, toy_trainer(None, steps=1).labels
    other = toy_trainer(tmp, steps=4, data=(x.flip(0), y.flip(0)))
    return api(lambda: other.fit(resume=True), "other data")


# ------------------------------------------------------------------------------ 9: reports
def sample_too_many_steps(tmp: Path) -> str:
    run = tmp / "run"
    cli(["train", *TINY, "--train-steps", "1", "--out", run])
    return cli_error(["sample", "--checkpoint", run / "last.pt", "--ddim-steps", "1000", "--n", "2",
                      "--device", "cpu", "--no-progress", "--out", tmp / "s.png"], "T = 50")


# ------------------------------------------------------------------------------ 10: CLI paths
def readonly_out(tmp: Path) -> str:
    return cli_error(["train", *TINY, "--train-steps", "1", "--out", "/proc/jdm-run"], "cannot write")


def full_disk(tmp: Path) -> str:
    real = shutil.disk_usage
    shutil.disk_usage = lambda path: real(path)._replace(free=1000)
    try:
        return cli_error(["train", *TINY, "--train-steps", "1", "--out", tmp / "run"], "MiB free")
    finally:
        shutil.disk_usage = real


def missing_parent(tmp: Path) -> str:
    out = tmp / "a" / "b" / "grid.png"
    status, _ = cli(["sample", "--checkpoint", ROOT / "data/checkpoints/ddpm-fmnist-small.pt",
                     "--n", "1", "--ddim-steps", "1", "--device", "cpu", "--no-progress", "--out", out])
    return HANDLED if status == 0 and out.is_file() else RAW


def manifest(tmp: Path, text: str, match: str) -> str:
    with sandbox(tmp) as data:
        (data / "checkpoints" / "ddpm-fmnist-small.json").write_text(text)
        return cli_error(["demo", "--model", "ddpm-fmnist-small", "--device", "cpu", "--out", tmp / "d.png"],
                         match)


def manifest_without_sha(tmp: Path) -> str:
    m = json.loads((ROOT / "data/checkpoints/ddpm-fmnist-small.json").read_text())
    del m["sha256"]
    return manifest(tmp, json.dumps(m), "sha256")


# ------------------------------------------------------------------------------ 11: weights files
def sample_weights_file(tmp: Path) -> str:
    out = tmp / "s.png"
    status, err = cli(["sample", "--checkpoint", ROOT / "data/checkpoints/ddpm-fmnist-small.pt",
                       "--n", "2", "--ddim-steps", "2", "--device", "cpu", "--no-progress",
                       "--out", out])
    return HANDLED if status == 0 and out.is_file() else (RAW if status is None else SILENT)


# ------------------------------------------------------------------------------ 12-13: data cache
def fresh_raw(tmp: Path) -> Path:
    """A FashionMNIST/raw folder holding only (links to) the bundled archives."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (ROOT / "data/FashionMNIST/raw").glob("*.gz"):
        os.symlink(archive, raw / archive.name)
    return raw


def concurrent_first_use(tmp: Path) -> str:
    fresh_raw(tmp)
    code = ("import sys; from jdm.data import load_tensors; "
            f"x, y = load_tensors(train=False, root={str(tmp)!r}); print(float(x.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    if any(p.returncode for p in procs):
        return RAW
    return HANDLED if len({out for out, _ in results}) == 1 else SILENT


def damaged_copy(tmp: Path, how: str) -> str:
    from jdm.data import load_tensors

    raw = fresh_raw(tmp)
    expected = load_tensors(train=False, root=tmp)
    target = raw / "t10k-images-idx3-ubyte"
    data = target.read_bytes()
    target.write_bytes(data[:1000] if how == "truncated" else
                       data[:16] + bytes(255 - b for b in data[16:]))
    try:
        again = load_tensors(train=False, root=tmp)
    except Exception:  # noqa: BLE001
        return RAW
    return HANDLED if torch.equal(again[0], expected[0]) else SILENT


def truncated_archive(tmp: Path) -> str:
    from jdm.data import load_tensors

    raw = fresh_raw(tmp)
    archive = raw / "t10k-images-idx3-ubyte.gz"
    head = archive.read_bytes()[:100_000]
    archive.unlink()  # the link, not the bundled file
    archive.write_bytes(head)
    outcome = api(lambda: load_tensors(train=False, root=tmp, download=False), "truncated")
    return LOSS if list(raw.glob("*.tmp")) + list(raw.glob(".*.tmp")) else outcome


# ------------------------------------------------------------------------------ 14: stale temp files
def stale_tmp(tmp: Path) -> str:
    stale = tmp / ".last.pt.12345.deadbeef.tmp"
    tmp.mkdir(exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    toy_trainer(tmp, steps=1).fit()
    return HANDLED if not stale.exists() else SILENT


# ------------------------------------------------------------------------------ the probes
@dataclass(frozen=True)
class Probe:
    item: int
    name: str
    run: Callable[[Path], str]
    expected: str = CLEAR


BOOT = ["--device", "cpu", "--no-progress"]
PROBES = [
    Probe(1, "export a ddpm over the shipped joint model",
          lambda t: export_over(t, ["--export", "joint-fmnist-small"])),
    Probe(1, "export a ddpm over it with --force", lambda t: export_over(
        t, ["--export", "joint-fmnist-small", "--force"])),
    Probe(1, "export a joint model over it without --force", lambda t: export_over(
        t, ["--model", "joint", "--export", "joint-fmnist-small"])),
    Probe(1, "export to ../../x", lambda t: export_over(t, ["--export", "../../x"])),
    Probe(1, "export to an alias name", lambda t: export_over(t, ["--export", "jdm-fmnist"])),
    Probe(1, "export a new name", export_new_name, HANDLED),
    Probe(2, "Ctrl-C a CLI training run", sigint_cli, HANDLED),
    Probe(2, "SIGTERM during Trainer.fit", sigterm_trainer, HANDLED),
    Probe(2, "--resume with nothing to resume", resume_nothing, HANDLED),
    Probe(2, "checkpoint by time (checkpoint_minutes)", time_based_checkpoint, HANDLED),
    Probe(3, "a second run on a locked --out", lock_live),
    Probe(3, "a lock left by a dead process", lock_stale, HANDLED),
    Probe(4, "classify images in [0, 1]", classify(lambda: torch.rand(4, 1, 28, 28), "[0, 1]")),
    Probe(4, "classify images in [0, 255]", classify(lambda: torch.rand(4, 1, 28, 28) * 255, "255")),
    Probe(4, "predict images in [0, 1]", classify(lambda: torch.rand(4, 1, 28, 28), "[0, 1]",
                                                   method="predict")),
    Probe(4, "predict images in [0, 255]", classify(lambda: torch.rand(4, 1, 28, 28) * 255, "255",
                                                     method="predict")),
    Probe(4, "classify with t = tensor([5000] * 4)", classify(images, "0..49",
                                                              t=torch.full((4,), 5000))),
    Probe(4, "classify with t = -1", classify(images, "0..49", t=-1)),
    Probe(4, "classify with a float t tensor", classify(images, "integer", t=torch.zeros(4))),
    Probe(4, "classify uint8 images", classify(lambda: torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
                                               "127.5")),
    Probe(4, "classify float64 images", classify(lambda: images().double(), "float32")),
    Probe(4, "classify an empty batch", classify(lambda: torch.zeros(0, 1, 28, 28), "empty")),
    Probe(4, "predict an empty batch", classify(lambda: torch.zeros(0, 1, 28, 28), "empty",
                                                method="predict")),
    Probe(4, "classify one image without its batch dimension",
          classify(lambda: images(1)[0], "x[None]")),
    Probe(4, "classify NaN images", classify(lambda: images() * float("nan"), "NaN")),
    Probe(4, "classify a list", classify(lambda: [[0.0]], "tensor")),
    Probe(4, "classify on a DDPM", ddpm_classify),
    Probe(5, "load_tensors(train='test')", split_name, HANDLED),
    Probe(5, "load_tensors(train='yes')", lambda t: api(
        lambda: __import__("jdm.data").data.load_tensors(train="yes"), "'train' or 'test'")),
    Probe(5, "load_tensors(name=None)", lambda t: api(
        lambda: __import__("jdm.data").data.load_tensors(None), "unknown dataset")),
    Probe(6, "read a last.pt with flipped tensor bytes", flip_tensor_bytes),
    Probe(6, "load a model from a last.pt holding NaN", lambda t: nan_checkpoint(t, "load")),
    Probe(6, "--resume a last.pt holding NaN", lambda t: nan_checkpoint(t, "resume")),
    Probe(6, "sample from a last.pt whose EMA is NaN", nan_sample_cli),
    Probe(7, "a checkpoint step whose update exploded the weights", exploding_checkpoint),
    Probe(8, "--resume with another --limit", resume_other_limit),
    Probe(8, "Trainer.fit(resume=True) on other data", resume_other_data),
    Probe(9, "explain --out without an extension", lambda t: cli_error(
        ["explain", "--image-index", "0", "--target", "1", *BOOT[:2], "--out", t / "noext"],
        "extension")),
    Probe(9, "sample --ddim-steps 1000 on a T = 50 model", sample_too_many_steps),
    Probe(10, "train --out an existing file", lambda t: cli_error(
        ["train", *TINY, "--train-steps", "1", "--out", Path(shutil.copy(__file__, t / "f"))], "existing file")),
    Probe(10, "train --out on a read-only filesystem", readonly_out),
    Probe(10, "train --out on a full filesystem", full_disk),
    Probe(10, "sample --out with missing parent folders", missing_parent, HANDLED),
    Probe(10, "sample --out a directory", lambda t: cli_error(
        ["sample", "--checkpoint", ROOT / "data/checkpoints/ddpm-fmnist-small.pt", *BOOT,
         "--out", t], "is a directory")),
    Probe(10, "sample --out x.unknownext", lambda t: cli_error(
        ["sample", "--checkpoint", ROOT / "data/checkpoints/ddpm-fmnist-small.pt", *BOOT,
         "--out", t / "x.abc"], "extension")),
    Probe(10, "train --device banana", lambda t: cli_error(
        ["train", *TINY, "--device", "banana", "--out", t / "r"], "not a device")),
    Probe(10, "demo --device banana", lambda t: cli_error(
        ["demo", "--device", "banana", "--out", t / "d.png"], "not a device")),
    Probe(10, "evaluate --json a directory", lambda t: cli_error(
        ["evaluate", "conditional", "--json", t], "is a directory")),
    Probe(10, "a manifest without sha256", manifest_without_sha),
    Probe(10, "a manifest that is a JSON list", lambda t: manifest(t, "[1, 2]", "ddpm-fmnist-small.json")),
    Probe(10, "a manifest that is not JSON", lambda t: manifest(t, "{nope", "ddpm-fmnist-small.json")),
    Probe(10, "load_pretrained of an alias not shipped yet", lambda t: api(
        lambda: __import__("jdm").load_pretrained("classifier-fmnist")
        if "classifier-fmnist-small" not in __import__("jdm").list_pretrained()
        else __import__("jdm").load_pretrained("nope"), "classifier-fmnist")),
    Probe(11, "sample --checkpoint a shipped weights file", sample_weights_file, HANDLED),
    Probe(11, "sample --raw on a shipped weights file", lambda t: cli_error(
        ["sample", "--checkpoint", ROOT / "data/checkpoints/ddpm-fmnist-small.pt", "--raw", *BOOT,
         "--out", t / "s.png"], "only the EMA")),
    Probe(11, "read a shipped weights file as a run checkpoint (--resume)", lambda t: api(
        lambda: __import__("jdm.checkpoint").checkpoint.read_checkpoint(
            ROOT / "data/checkpoints/ddpm-fmnist-small.pt"), "python -m jdm sample")),
    Probe(12, "three processes use Fashion-MNIST for the first time at once",
          concurrent_first_use, HANDLED),
    Probe(13, "a truncated decompressed copy", lambda t: damaged_copy(t, "truncated"), HANDLED),
    Probe(13, "a decompressed copy with inverted bytes", lambda t: damaged_copy(t, "inverted"),
          HANDLED),
    Probe(13, "a truncated bundled .gz", truncated_archive),
    Probe(14, "a stale .tmp left in the run folder by SIGKILL", stale_tmp, HANDLED),
]


@pytest.mark.parametrize("probe", PROBES, ids=[f"{p.item}-{p.name}" for p in PROBES])
def test_probe(probe: Probe, tmp_path: Path) -> None:
    assert probe.run(tmp_path) == probe.expected


# issue 27: the rows of failing-probes-2026-12.tsv outside J, each named by its row id
import probes_2026_12  # noqa: E402  (its probes use the helpers above)

ROUND_TWO = probes_2026_12.probes()


@pytest.mark.parametrize("row, name, run, expected", ROUND_TWO,
                         ids=[f"{row}-{name}" for row, name, *_ in ROUND_TWO])
def test_row_2026_12(row: str, name: str, run: Callable[[Path], str], expected: str,
                     tmp_path: Path) -> None:
    assert run(tmp_path) == expected


def reliability_table(each: bool = False) -> str:
    """Replay every probe and return the table for docs/reliability.md (markdown); with ``each``,
    one line per probe first."""
    outcomes, lines = Counter(), []
    everything = [(p.item, p.name, p.run) for p in PROBES] + [r[:3] for r in ROUND_TWO]
    for item, name, run in everything:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                outcome = run(Path(tmp))
            except Exception:  # noqa: BLE001 - e.g. an older jdm without the API a probe uses
                outcome = RAW
        outcomes[outcome] += 1
        lines.append(f"| {item} | {name} | {outcome} |")
    rows = [("inputs tried", len(everything)), (f"{CLEAR}s", outcomes[CLEAR]),
            ("handled correctly", outcomes[HANDLED]), (SILENT, outcomes[SILENT]),
            (LOSS, outcomes[LOSS]), (f"{RAW}s", outcomes[RAW])]
    table = "| outcome | probes |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return ("| item | probe | outcome |\n|---:|---|---|\n" + "\n".join(lines) + "\n\n" + table
            if each else table)


if __name__ == "__main__":
    print(reliability_table(each="--each" in sys.argv))
