"""Issue 27's probes: the rows of ../shared/reliability/failing-probes-2026-12.tsv outside J.

Each probe replays one row (its id leads the name) and judges it from the outside, with the
helpers and outcome names of ``test_bad_inputs`` (which lists these probes after its own). The
helpers are imported when a probe runs, so this module and ``test_bad_inputs`` can import each
other whichever is loaded first.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
CLEAR, HANDLED, SILENT, LOSS, RAW = ("clear error", "handled", "silent wrong", "data loss",
                                     "raw traceback")


# (row id, name, probe, expected outcome) of each probe written as a function: its row stands on it
ROWS: list[tuple] = []


def row(row_id: str, name: str, expected: str):
    def register(probe):
        ROWS.append((row_id, name, probe, expected))
        return probe
    return register


def h():
    """The shared helpers (``api``, ``cli``, ``cli_error``, ``sandbox``, ``TINY``, …)."""
    import test_bad_inputs

    return test_bad_inputs


def train(out: Path, *extra) -> list:
    return ["train", *h().TINY, "--train-steps", "2", "--out", out, *extra]


def refused_before_work(argv: list, match: str, out: Path) -> str:
    """A clear error, and nothing trained (no ``out/last.pt``)."""
    outcome = h().cli_error(argv, match)
    return RAW if outcome == CLEAR and (out / "last.pt").exists() else outcome


def test_images(n: int = 64) -> torch.Tensor:
    from jdm.data import load_tensors

    return load_tensors(train=False)[0][:n]


# ------------------------------------------------------------------------------ A, B: train, export
def export_alias_table(tmp: Path, force: bool) -> str:
    with h().sandbox(tmp) as data:
        table = data / "checkpoints" / "aliases.json"
        before = table.read_bytes()
        outcome = h().cli_error(train(tmp / "run", "--export", "aliases",
                                      *(["--force"] if force else [])), "alias table")
        if table.read_bytes() != before or (data / "checkpoints" / "aliases.pt").exists():
            return LOSS
        from jdm.pretrained import load_pretrained

        load_pretrained("jdm-fmnist")  # still resolves
        return outcome


@row("B03", "train --out <data>/checkpoints --export last --force", CLEAR)
def export_over_last(tmp: Path) -> str:
    with h().sandbox(tmp) as data:
        out = data / "checkpoints"
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        outcome = h().cli_error(train(out, "--export", "last", "--force"), "data folder")
        after = {p.name: p.read_bytes() for p in out.iterdir()}
        return LOSS if after != before else outcome


@row("B04", "train --export into a read-only folder", CLEAR)
def export_readonly(tmp: Path) -> str:
    """The export folder refuses writes (a read-only mount; root ignores chmod, so simulated)."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if "checkpoints" in self.parts:
            raise OSError(30, "Read-only file system")
        return real(self, data)

    with h().sandbox(tmp), mock.patch.object(Path, "write_bytes", write_bytes):
        return refused_before_work(train(tmp / "run", "--export", "ddpm-new"), "--export",
                                   tmp / "run")


# ------------------------------------------------------------------------------ C: commands
SAMPLE = ["sample", "--checkpoint", ROOT / "data/checkpoints/ddpm-fmnist-small.pt", "--device",
          "cpu", "--no-progress"]


@row("C14", "demo --ddim-steps 2000 on a T = 1000 model", CLEAR)
def demo_steps_above_t(tmp: Path) -> str:
    out = tmp / "c14.png"
    outcome = h().cli_error(["demo", "--model", "jdm-fmnist", "--test-images", "20",
                             "--samples-per-class", "1", "--ddim-steps", "2000",
                             "--counterfactuals", "1", "--device", "cpu", "--out", out], "T = ")
    return SILENT if out.exists() else outcome


# ------------------------------------------------------------------------------ D: the API
def predict(x_fn, match: str, **kwargs):
    def probe(tmp: Path) -> str:
        model = h().tiny_joint()
        return h().api(lambda: model.predict(x_fn(), **kwargs), match)
    return probe


def normalized() -> torch.Tensor:
    return ((test_images() + 1) / 2 - 0.286) / 0.353  # torchvision Normalize: [-0.81, 2.02]


def train_config(tmp: Path, **bad) -> str:
    from jdm.train import TrainConfig

    return h().api(lambda: TrainConfig(**bad), next(iter(bad)))


def fractional_steps(tmp: Path) -> str:
    """steps = 5 epochs * 60000 / 128 (a float): refused, so the final last.pt is never skipped."""
    return train_config(tmp, steps=5 * 60000 / 128)


def env_switch(variable: str, read) -> callable:
    def probe(tmp: Path) -> str:
        old = os.environ.get(variable)
        try:
            for junk in ("2", "maybe", "y", "enable", "1.0"):
                os.environ[variable] = junk
                if h().api(read, variable) != CLEAR:
                    return SILENT
            for good, value in ((" TRUE ", True), ("on", True), ("0", False), ("", False)):
                os.environ[variable] = good
                if read() is not value:
                    return SILENT
            return CLEAR
        finally:
            os.environ.pop(variable, None) if old is None else os.environ.__setitem__(variable, old)
    return probe


@row("D47", "sample with a CUDA generator on a CPU model", CLEAR)
def foreign_generator(tmp: Path) -> str:
    """A CUDA generator for a CPU model (constructing one needs CUDA, so a stand-in reports it)."""
    fake = mock.create_autospec(torch.Generator, instance=True)
    fake.device = torch.device("cuda")
    model = h().tiny_joint()
    return h().api(lambda: model.sample(2, steps=2, generator=fake, progress=False), "generator")


def evaluator_input(x_fn, match: str):
    def probe(tmp: Path) -> str:
        from jdm.evaluator import load_evaluator

        return h().api(lambda: load_evaluator().predict(x_fn()), match)
    return probe


def encoder_features_255(tmp: Path) -> str:
    from jdm.probe import encoder_features

    model = h().tiny_joint()
    return h().api(lambda: encoder_features(model.unet, model.schedule, h().images() * 127.5 + 127.5,
                                            t=0), "255")


def counterfactual_01(tmp: Path) -> str:
    import jdm

    model = h().tiny_joint()
    settings = jdm.CounterfactualSettings(t_star=10, steps=2)
    return h().api(lambda: jdm.counterfactual(model, (test_images(4) + 1) / 2, target=0,
                                              settings=settings, progress=False), "[0, 1]")


@row("D23", "eps with t = 5000 on a T = 50 model", CLEAR)
def eps_outside_t(tmp: Path) -> str:
    from jdm.diffusion import DiffusionModel

    model = DiffusionModel(h().tiny_joint().unet, h().tiny_joint().schedule)
    return h().api(lambda: model.eps(h().images(), torch.full((4,), 5000)), "0..49")


# ------------------------------------------------------------------------------ E: checkpoints
def shipped_file(tmp: Path, damage, command: str, match: str, name: str = "ddpm-fmnist-small") -> str:
    """Damage ``NAME.pt`` in a sandbox (``damage(pt, manifest)``), then load it."""
    with h().sandbox(tmp) as data:
        pt, manifest = data / "checkpoints" / f"{name}.pt", data / "checkpoints" / f"{name}.json"
        damage(pt, manifest)
        if command == "load":
            from jdm.pretrained import load_pretrained

            return h().api(lambda: load_pretrained(name), match)
        if command == "demo":
            return h().cli_error(["demo", "--model", name, "--device", "cpu", "--out", tmp / "d.png"],
                                 match)
        return h().cli_error([*SAMPLE[:2], pt, *SAMPLE[3:], "--n", "2", "--ddim-steps", "2", "--out",
                              tmp / "s.png"], match)


def with_sha(pt: Path, manifest: Path) -> None:
    from jdm.data import sha256

    m = json.loads(manifest.read_text())
    m["sha256"] = sha256(pt)
    manifest.write_text(json.dumps(m))


@row("E07", "a code-running pickle with a matching sha256", CLEAR)
def code_pickle(tmp: Path) -> str:
    marker = tmp / "marker"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    def damage(pt, manifest):
        torch.save({"format": "jdm-weights", "x": Evil()}, pt)
        with_sha(pt, manifest)
    outcome = shipped_file(tmp, damage, "demo", "joint-fmnist-small.pt", "joint-fmnist-small")
    return "security" if marker.exists() else outcome


def random_bytes(pt: Path, manifest: Path) -> None:
    pt.write_bytes(os.urandom(4096))
    with_sha(pt, manifest)


def edited_spec(pt: Path, manifest: Path) -> None:
    m = json.loads(manifest.read_text())
    m["spec"]["kind"] = "ddpm"
    m["spec"]["unet"]["base_channels"] = 64
    manifest.write_text(json.dumps(m))


def flipped_weights(pt: Path, manifest: Path) -> None:
    state = torch.load(pt, weights_only=True)["state_dict"]
    weight = next(v for v in state.values() if v.is_floating_point() and v.numel() >= 64)
    raw = pt.read_bytes()
    at = raw.find(weight.numpy().tobytes()[:64])
    pt.write_bytes(raw[:at] + bytes(b ^ 0x01 for b in raw[at:at + 64]) + raw[at + 64:])


def run_checkpoint(tmp: Path) -> Path:
    run = tmp / "run"
    h().cli(["train", *h().TINY, "--train-steps", "1", "--out", run])
    return run / "last.pt"


def edited_checkpoint(tmp: Path, edit, command: str, match: str) -> str:
    path = run_checkpoint(tmp)
    ckpt = torch.load(path, weights_only=True)
    torch.save(edit(ckpt), path)
    if command == "resume":
        return h().cli_error(["train", *h().TINY, "--train-steps", "2", "--out", path.parent, "--resume"],
                             match)
    return h().cli_error([*SAMPLE[:2], path, *SAMPLE[3:], "--n", "2", "--ddim-steps", "2", "--out",
                          tmp / "s.png"], match)


def unchecked_ema(ckpt: dict) -> dict:
    del ckpt["checksum"]
    for v in ckpt["ema"].values():
        if v.is_floating_point():
            v.mul_(-3)
    return ckpt


def string_version(ckpt: dict) -> dict:
    ckpt["version"] = "2"
    return ckpt


def no_checksum_no_rng(ckpt: dict) -> dict:
    del ckpt["checksum"], ckpt["rng"]
    return ckpt


@row("E15", "an incomplete last.pt (sample and --resume)", CLEAR)
def incomplete(tmp: Path) -> str:
    path = tmp / "run" / "last.pt"
    path.parent.mkdir()
    torch.save({"format": "jdm-checkpoint", "version": 1}, path)
    outcomes = {h().cli_error([*SAMPLE[:2], path, *SAMPLE[3:], "--out", tmp / "s.png"], "last.pt"),
                h().cli_error(["train", *h().TINY, "--train-steps", "1", "--out", path.parent, "--resume"],
                              "checksum")}
    return outcomes.pop() if len(outcomes) == 1 else RAW


@row("E16", "last.pt is a directory (--resume)", CLEAR)
def last_pt_directory(tmp: Path) -> str:
    (tmp / "run" / "last.pt").mkdir(parents=True)
    return h().cli_error(["train", *h().TINY, "--train-steps", "1", "--out", tmp / "run", "--resume"],
                         "is a directory")


# ------------------------------------------------------------------------------ F: interruptions
def jdm_process(argv: list) -> subprocess.Popen:
    """``python -m jdm argv`` of the jdm this process imported (the checkout under test)."""
    import jdm

    code = Path(jdm.__file__).resolve().parent.parent
    return subprocess.Popen([sys.executable, "-m", "jdm", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=code,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)},
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C as a user's terminal delivers it. A shell starts background
    jobs with SIGINT ignored, which exec keeps and Python then honours, so a test suite run in the
    background would otherwise send its SIGINTs into the void."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return


def clean_stop(proc: subprocess.Popen) -> tuple[bool, str]:
    """(stopped with a non-zero exit and without a traceback, stderr)."""
    _, err = proc.communicate(timeout=300)
    return proc.returncode not in (0, None) and "Traceback" not in err, err


def interrupt_while_sampling(proc: subprocess.Popen, delay: float) -> str:
    """SIGINT ``delay`` seconds after the DDIM progress bar shows; the process's whole stderr."""
    seen = ""
    while "ddim sampling" not in seen and proc.poll() is None:
        seen += proc.stderr.read(1)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return seen + err


@row("F08", "two Ctrl-C 20 ms apart during training", HANDLED)
def double_ctrl_c(tmp: Path) -> str:
    out = tmp / "run"
    proc = jdm_process(["train", *h().TINY, "--train-steps", "100000", "--checkpoint-every", "0",
                        "--out", out])
    wait_for(proc, "step 3/")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    ok, err = clean_stop(proc)
    return HANDLED if ok and "jdm train:" in err and not list(out.glob(".*.tmp*")) else RAW


@row("F09", "Ctrl-C while drawing samples.png, then --resume", HANDLED)
def ctrl_c_while_sampling(tmp: Path) -> str:
    """SIGINT once the samples.png progress bar shows (training is over and saved)."""
    out = tmp / "run"
    argv = ["train", *[a for a in h().TINY if a != "--no-progress"], "--train-steps", "2", "--samples",
            "64", "--ddim-steps", "50", "--out", out]
    proc = jdm_process(argv)
    err = interrupt_while_sampling(proc, 0.2)
    if proc.returncode in (0, None) or "Traceback" in err:
        return RAW
    if not (out / "last.pt").is_file():
        return LOSS
    again = ["train", *h().TINY, "--train-steps", "2", "--out", out, "--resume"]  # fewer samples: faster
    status, _ = h().cli(again)
    return HANDLED if status == 0 and (out / "train_log.json").is_file() else RAW


@row("F10", "Ctrl-C while jdm starts", HANDLED)
def ctrl_c_at_start(tmp: Path) -> str:
    proc = jdm_process(["train", *h().TINY, "--train-steps", "2", "--out", tmp / "run"])
    _wait_until_torch_loads(proc)  # jdm's quiet hook is installed before it imports torch
    proc.send_signal(signal.SIGINT)
    ok, _ = clean_stop(proc)
    return HANDLED if ok else RAW


def _wait_until_torch_loads(proc: subprocess.Popen, limit: float = 60.0) -> None:
    """Until the process has mapped libtorch (jdm is importing torch), or ``limit`` seconds."""
    maps, start = Path(f"/proc/{proc.pid}/maps"), time.monotonic()
    while proc.poll() is None and time.monotonic() - start < limit:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            return
        time.sleep(0.02)


@row("F11", "Ctrl-C during sample", HANDLED)
def ctrl_c_sample(tmp: Path) -> str:
    """SIGINT once sample's progress bar shows: no traceback, no partial image."""
    out = tmp / "f11.png"
    proc = jdm_process([*[a for a in SAMPLE if a != "--no-progress"], "--n", "64", "--ddim-steps", "200",
                        "--out", out])
    err = interrupt_while_sampling(proc, 0.5)
    if out.exists() or list(tmp.glob(".*.tmp*")):
        return LOSS
    ok = proc.returncode not in (0, None) and "Traceback" not in err
    return HANDLED if ok and "jdm sample:" in err else RAW


# ------------------------------------------------------------------------------ G: the run lock
def _contend(folder: str, barrier, inside, overlap, rounds: int) -> None:
    from jdm.runlock import RunLock

    real_unlink = Path.unlink

    def slow_unlink(self, *args, **kwargs):  # an unlucky scheduler: widens any read-then-unlink race
        time.sleep(0.005)
        return real_unlink(self, *args, **kwargs)

    mock.patch.object(Path, "unlink", slow_unlink).start()  # this worker process only
    for _ in range(rounds):
        barrier.wait(timeout=60)
        try:
            with RunLock(folder):
                with inside.get_lock():
                    inside.value += 1
                    overlap.value = max(overlap.value, inside.value)
                time.sleep(0.02)
                with inside.get_lock():
                    inside.value -= 1
        except ValueError:
            pass
        barrier.wait(timeout=60)


@row("G02", "four processes take a stale lock at once", HANDLED)
def stale_lock_race(tmp: Path, processes: int = 4, rounds: int = 20) -> str:
    """Several processes take a folder whose .lock names a dead process, at the same instant."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    inside, overlap = ctx.Value("i", 0), ctx.Value("i", 0)
    workers = [ctx.Process(target=_contend, args=(str(tmp), barrier, inside, overlap, rounds))
               for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        for _ in range(rounds):
            (tmp / ".lock").write_text(f"{dead.pid}\n")
            barrier.wait(timeout=60)  # go
            barrier.wait(timeout=60)  # round over
    except threading.BrokenBarrierError:  # a worker died
        return RAW
    finally:
        for w in workers:
            w.join(60)
    return HANDLED if overlap.value == 1 else SILENT


@row("G03", "a lock naming a live process that is not jdm", CLEAR)
def live_foreign_pid(tmp: Path) -> str:
    out = tmp / "run"
    out.mkdir()
    (out / ".lock").write_text("1\n")
    return h().cli_error(["train", *h().TINY, "--train-steps", "1", "--out", out], "stale")


# ------------------------------------------------------------------------------ H: full disks
@row("H02", "a full disk inside torch.save", CLEAR)
def full_disk_in_save(tmp: Path) -> str:
    """torch.save fails as on a full disk (a RuntimeError) at the second checkpoint."""
    real_save, real_usage, calls = torch.save, shutil.disk_usage, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            shutil.disk_usage = lambda path: real_usage(path)._replace(free=0)
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")
        return real_save(obj, f, *args, **kwargs)

    out = tmp / "run"
    try:
        with mock.patch.object(torch, "save", save):
            outcome = h().cli_error(["train", *h().TINY, "--train-steps", "6", "--checkpoint-every", "2",
                                     "--out", out], "no space")
    finally:
        shutil.disk_usage = real_usage
    from jdm.checkpoint import read_checkpoint

    if read_checkpoint(out / "last.pt")["step"] != 2 or list(out.glob(".*.tmp*")):
        return LOSS
    return outcome


@row("H04", "no room to unpack Fashion-MNIST", CLEAR)
def full_disk_in_cache(tmp: Path) -> str:
    import errno

    h().fresh_raw(tmp / "data")
    old = os.environ.get("JDM_DATA")
    os.environ["JDM_DATA"] = str(tmp / "data")

    def no_space(src, dst, *args):
        raise OSError(errno.ENOSPC, "No space left on device")
    try:
        with mock.patch("jdm.data.shutil.copyfileobj", no_space):
            return h().cli_error(train(tmp / "run"), "the archive is fine")
    finally:
        os.environ.pop("JDM_DATA") if old is None else os.environ.__setitem__("JDM_DATA", old)


# ------------------------------------------------------------------------------ K, M: outputs
@row("K01", "evaluate --json a shipped manifest", CLEAR)
def evaluate_over_manifest(tmp: Path) -> str:
    with h().sandbox(tmp) as data:
        manifest = data / "checkpoints" / "joint-fmnist-small-gpu.json"
        before = manifest.read_bytes()
        outcome = h().cli_error(["evaluate", "counterfactual", "--n", "2", "--t-star", "10",
                                 "--ddim-steps", "1", "--device", "cpu", "--json", manifest], "data folder")
        return LOSS if manifest.read_bytes() != before else outcome


@row("K02", "course grade --json a directory", CLEAR)
def grade_json_directory(tmp: Path) -> str:
    start = time.perf_counter()
    outcome = h().cli_error(["course", "grade", ROOT / "notebooks/student/01_forward_process.ipynb",
                             "--json", tmp], "--json")
    return RAW if outcome == CLEAR and time.perf_counter() - start > 10 else outcome


@row("K03", "student editions over the solution notebooks", CLEAR)
def student_over_solutions(tmp: Path) -> str:
    from jdm import course

    folder = tmp / "notebooks"
    folder.mkdir()
    for nb in course.solution_notebooks(ROOT / "notebooks"):
        shutil.copy(nb, folder / nb.name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    outcome = h().api(lambda: course.write_student_editions(folder, folder=folder), "solution")
    return LOSS if {p.name: p.read_bytes() for p in folder.iterdir()} != before else outcome


@row("K04", "a new run over an earlier run's samples and log", CLEAR)
def earlier_outputs(tmp: Path) -> str:
    out = tmp / "k04"
    out.mkdir()
    (out / "samples.png").write_bytes(b"an earlier run's grid")
    (out / "train_log.json").write_text('{"earlier": true}')
    outcome = refused_before_work(["train", *h().TINY, "--train-steps", "1", "--seed", "5", "--out", out],
                                  "earlier run", out)
    kept = (out / "samples.png").read_bytes() == b"an earlier run's grid"
    return outcome if kept and (out / "train_log.json").read_text() == '{"earlier": true}' else LOSS


# ------------------------------------------------------------------------------ L: data cache
@row("L01", "a .verified.json holding a list", HANDLED)
def verified_list(tmp: Path) -> str:
    from jdm.data import load_tensors

    raw = h().fresh_raw(tmp)
    (raw / ".verified.json").write_text("[1, 2]")
    x, _ = load_tensors(train=False, root=tmp)
    return HANDLED if x.shape[0] == 10000 else SILENT


@row("L02", "a damaged copy with size and mtime kept", HANDLED)
def damaged_copy_same_stat(tmp: Path) -> str:
    """Image 0 inverted in the unpacked copy, size and mtime kept (as cp -p / rsync -t do)."""
    from jdm.data import load_tensors

    raw = h().fresh_raw(tmp)
    expected = load_tensors(train=False, root=tmp)[0]
    target = raw / "t10k-images-idx3-ubyte"
    stat, data = target.stat(), target.read_bytes()
    target.write_bytes(data[:16] + bytes(255 - b for b in data[16:16 + 784]) + data[16 + 784:])
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load_tensors(train=False, root=tmp)[0]
    return HANDLED if torch.equal(again, expected) else SILENT


# ------------------------------------------------------------------------------ the rows
def probes():
    """(row id, name, probe, expected outcome) for every row outside J, in row order: the rows
    below, whose probes are a line or a call with arguments, and the functions' ``@row``s."""
    cli_error, api = h().cli_error, h().api
    t = lambda *a: a  # noqa: E731
    images = h().images
    return sorted(ROWS + [
        t("A06", "train --alpha inf", lambda d: refused_before_work(
            train(d / "r", "--alpha", "inf", "--model", "joint"), "--alpha", d / "r"), CLEAR),
        t("A08", "train --seed 99999999999999999999", lambda d: cli_error(
            train(d / "r", "--seed", "99999999999999999999"), "--seed"), CLEAR),
        t("A11", "train --head-hidden 2000000000", lambda d: cli_error(
            train(d / "r", "--head-hidden", "2000000000", "--model", "joint"), "--head-hidden"), CLEAR),
        t("A12", "train --timesteps 2000000000", lambda d: cli_error(
            train(d / "r", "--timesteps", "2000000000"), "--timesteps"), CLEAR),
        t("A13", "train --labelled-batch-size 1000000000", lambda d: cli_error(
            train(d / "r", "--model", "joint", "--labels-per-class", "1", "--labelled-batch-size",
                  "1000000000"), "--labelled-batch-size"), CLEAR),
        t("A21", "train --samples 100000000", lambda d: cli_error(
            train(d / "r", "--samples", "100000000"), "--samples"), CLEAR),
        t("A23", "train --fd-samples 3", lambda d: refused_before_work(
            train(d / "r", "--fd-samples", "3"), "--fd-samples", d / "r"), CLEAR),
        t("B01", "train --export aliases", lambda d: export_alias_table(d, False), CLEAR),
        t("B02", "train --export aliases --force", lambda d: export_alias_table(d, True), CLEAR),
        t("C02", "sample --seed 99999999999999999999", lambda d: cli_error(
            [*SAMPLE, "--seed", "99999999999999999999", "--out", d / "s.png"], "--seed"), CLEAR),
        t("C03", "sample --n 100000000", lambda d: cli_error(
            [*SAMPLE, "--n", "100000000", "--ddim-steps", "1", "--out", d / "s.png"], "--n"), CLEAR),
        t("C04", "sample --checkpoint a directory", lambda d: cli_error(
            ["sample", "--checkpoint", ROOT / "data/checkpoints", "--device", "cpu", "--out",
             d / "s.png"], "--checkpoint"), CLEAR),
        t("C08", "explain --target ²", lambda d: cli_error(
            ["explain", "--image-index", "0", "--target", "²", "--device", "cpu", "--out",
             d / "e.png"], "--target"), CLEAR),
        t("C11", "explain --scale inf", lambda d: cli_error(
            ["explain", "--image-index", "0", "--target", "1", "--scale", "inf", "--ddim-steps", "2",
             "--t-star", "20", "--device", "cpu", "--out", d / "e.png"], "--scale"), CLEAR),
        t("D09", "predict torchvision-Normalize'd images", predict(normalized, "[-1, 1]"), CLEAR),
        t("D10", "predict x * 2 - 1 of [-1, 1] images", predict(
            lambda: test_images() * 2 - 1, "[-1, 1]"), CLEAR),
        t("D11", "predict batch_size=0", predict(images, "batch_size", batch_size=0), CLEAR),
        t("D12", "predict batch_size=-1", predict(images, "batch_size", batch_size=-1), CLEAR),
        t("D13", "predict batch_size=2.5", predict(images, "batch_size", batch_size=2.5), CLEAR),
        t("D14", "sample generator='seed'", lambda d: api(
            lambda: h().tiny_joint().sample(2, target=3, steps=2, generator="seed"), "generator"),
          CLEAR),
        t("D15", "sample steps=5000 on a T = 50 model", lambda d: api(
            lambda: h().tiny_joint().sample(1, steps=5000), "steps"), CLEAR),
        t("D18", "counterfactual of [0, 1] images", counterfactual_01, CLEAR),
        t("D25", "TrainConfig(steps=2.5) and steps=5*60000/128", lambda d: (
            train_config(d, steps=2.5) if fractional_steps(d) == CLEAR else SILENT), CLEAR),
        t("D26", "TrainConfig(steps='10')", lambda d: train_config(d, steps="10"), CLEAR),
        t("D27", "TrainConfig(batch_size=16.0)", lambda d: train_config(d, batch_size=16.0), CLEAR),
        t("D30", "seed_everything(2**70)", lambda d: api(
            lambda: __import__("jdm").seed_everything(2**70), "seed"), CLEAR),
        t("D32", "JDM_QUICK junk values", env_switch(
            "JDM_QUICK", lambda: __import__("jdm").quick_mode()), CLEAR),
        t("D35", "Guidance(scale=inf)", lambda d: api(
            lambda: __import__("jdm").Guidance("classifier", scale=math.inf), "scale"), CLEAR),
        t("D36", "NoiseSchedule(2.5)", lambda d: api(
            lambda: __import__("jdm").NoiseSchedule(2.5), "num_steps"), CLEAR),
        t("D41", "encoder_features of 0..255 images", encoder_features_255, CLEAR),
        t("D42", "evaluator predict of 0..255 images", evaluator_input(
            lambda: images() * 127.5 + 127.5, "255"), CLEAR),
        t("D46", "evaluator predict of an empty batch", evaluator_input(
            lambda: torch.zeros(0, 1, 28, 28), "empty batch"), CLEAR),
        t("D51", "JDM_SWEEPS junk values", env_switch(
            "JDM_SWEEPS", lambda: __import__("jdm.utils").utils.sweeps_enabled()), CLEAR),
        t("E08", "random bytes with a matching sha256", lambda d: shipped_file(
            d, random_bytes, "load", "ddpm-fmnist-small.pt"), CLEAR),
        t("E10", "a manifest spec that contradicts its .pt", lambda d: shipped_file(
            d, edited_spec, "load", "disagree", "joint-fmnist-small"), CLEAR),
        t("E13", "a last.pt without its checksum, EMA altered", lambda d: edited_checkpoint(
            d, unchecked_ema, "sample", "checksum"), CLEAR),
        t("E14", "a last.pt with version '2'", lambda d: edited_checkpoint(
            d, string_version, "sample", "version"), CLEAR),
        t("E18", "a last.pt without checksum and rng (--resume)", lambda d: edited_checkpoint(
            d, no_checksum_no_rng, "resume", "checksum"), CLEAR),
        t("E19", "sample --checkpoint a shipped file with flipped bytes", lambda d: shipped_file(
            d, flipped_weights, "sample", "sha256"), CLEAR),
        t("K00", "evaluate counterfactual --n 1", lambda d: cli_error(
            ["evaluate", "counterfactual", "--n", "1", "--t-star", "10", "--ddim-steps", "1",
             "--json", d / "k.json"], "--n"), CLEAR),
        t("M01", "course student --out an unwritable folder", lambda d: cli_error(
            ["course", "student", "--out", "/proc/jdm-student"], "cannot write"), CLEAR),
    ], key=lambda r: r[0])
