"""The prepared GPU run: tests, notebooks and the trio trained on one CUDA GPU, in a fixed budget.

    bash tools/gpu_run.sh                    # on the GPU machine (installs the nbval wheels first)
    python tools/gpu_run.py --dry-run        # the same phases on the CPU with tiny settings

In order, each phase with its own time limit, all inside ``--budget`` seconds of wall time:

1. ``unit_tests``  — ``pytest tests/`` with ``JDM_TEST_DEVICE=cuda``; ``demo`` — ``python -m jdm demo``;
2. ``notebooks_quick`` — every notebook under nbval with ``JDM_QUICK=1``, one pytest call each;
3. ``train`` — the trio (ddpm, classifier, joint; plus a joint run at α = 0.001 unless
   ``--no-alpha-run``; UNet ``--config``, default ``fmnist-small``, batch 1,024: see
   ``base_settings``) with the project's CLI, same UNet, same steps, all at once on the
   GPU (each on ``--nproc`` ranks with torchrun, compiled with ``--compile MODE``; the dry run:
   2 gloo ranks, ``aot_eager``): a short calibration segment measures the step rate, then each
   run resumes up to the step count that fits the phase (checkpoints every
   ``--checkpoint-every`` steps), then the CLI
   measures test metrics; each run is exported as half-precision jdm weights;
   ``bench`` — ``benchmarks/bench_train.py`` on the joint recipe (eager vs each option);
4. ``notebooks_full`` — notebooks in full mode while time remains.

Everything produced lands in ``--out`` (``$OUT`` by default): ``report.json`` (every phase's
command, status, seconds and log tail, the training runs with their manifests and images/s, the
benchmark) and one ``NAME.pt`` per exported model (``NAME.pt.gz`` if over 15 MiB:
``export_pretrained`` gzips it so that it stays under the 16 MiB a file may be to come back) — at most 5 files. The report is rewritten after every phase, so
a run cut short still leaves what it did. Without CUDA it refuses to start (exit status 2) unless
``--dry-run``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the checkout's jdm

MAX_FILE_BYTES = 16 * 2**20  # the most one file may be to come back from the GPU machine
GRACE_S = 8  # between SIGTERM and SIGKILL for a command past its time
RECIPE = "joint-fmnist-small"  # the shipped joint model whose command gives the training flags


# Named training recipes (--recipe): what replaces the shipped joint recipe's flags. Under each,
# the trio plus the joint run at α = 0.001: "joint" trains at the course's α (the shipped recipe's),
# "joint-alpha" at the authors' 0.001, e.g. joint-fmnist-paper-gpu and
# joint-fmnist-paper-gpu-alpha0.001 for the paper's Fashion-MNIST setting.
RECIPES = {
    "course": {},  # the shipped CPU recipe's UNet flags, on the --config preset
    # the authors' Fashion-MNIST run: their UNet (jdm.unet, 8.2 M parameters here), T = 500 with
    # β scaled by 1000/T (jdm.schedule.linear_betas), dropout 0.3
    "paper": {"config": "fmnist-paper", "timesteps": 500, "dropout": 0.3},
}


def run_name(kind: str, config: str) -> str:
    """The exported name of one run, e.g. ``joint-fmnist-small-gpu`` (``joint-alpha``: the joint
    run at α = 0.001, ``joint-fmnist-small-gpu-alpha0.001``)."""
    model, _, variant = kind.partition("-")
    return f"{model}-{config}-gpu" + (f"-{variant}0.001" if variant else "")


@dataclass
class Settings:
    """What differs between the real run and the dry run."""

    device: str
    budget: float  # seconds of wall time for everything
    limits: dict[str, float]  # seconds per phase (further capped by the budget left)
    test_paths: list[str]
    config: str  # UNet preset of the trio
    batch_size: int
    calibration_steps: int
    checkpoint_every: int
    log_every: int
    max_steps: int
    fd_samples: int
    lr: float | None = None  # None: the shipped joint recipe's
    timesteps: int | None = None  # None: the shipped joint recipe's
    dropout: float | None = None  # None: the shipped joint recipe's
    nproc: int = 1  # ranks per training run (torchrun --nproc_per_node; 1 = plain python)
    compile: str | None = None  # jdm train --compile MODE (None = eager)
    train_extra: list[str] = field(default_factory=list)  # e.g. --limit for the dry run
    bench_args: list[str] = field(default_factory=list)
    demo_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # for every command


def settings(args: argparse.Namespace) -> Settings:
    """The run's settings: the dry run's or the GPU's, then the command line's overrides of the
    trio's UNet, batch, learning rate and calibration."""
    s = base_settings(args)
    for key, value in RECIPES[getattr(args, "recipe", None) or "course"].items():
        setattr(s, key, value)
    for key in ("config", "batch_size", "lr", "calibration_steps", "nproc", "compile"):
        if getattr(args, key, None) is not None:
            setattr(s, key, getattr(args, key))
    return s


def base_settings(args: argparse.Namespace) -> Settings:
    if args.dry_run:
        return Settings(
            device="cpu", budget=args.budget or 300,
            limits={"unit_tests": 40, "demo": 60, "notebooks_quick": 30, "train": 200, "bench": 40,
                    "notebooks_full": 30},
            # 2 calibration steps: the second one's rate is the compiled step's
            test_paths=["tests/test_utils.py"], config="tiny", batch_size=16, calibration_steps=2,
            checkpoint_every=1, log_every=1, max_steps=3, fd_samples=8,
            # the trio on 2 gloo ranks each, the loss compiled whole (aot_eager: the same single
            # graph without inductor's minutes of C++ build)
            nproc=2, compile="aot_eager",
            train_extra=["--limit", "128", "--timesteps", "50", "--test-limit", "64",
                         "--samples", "4", "--ddim-steps", "2"],
            bench_args=["--config", "tiny", "--images", "64", "--batch", "8", "--models", "ddpm",
                        "--variants", "old", "eager", "--steps", "1", "--trials", "1",
                        "--threads", "1"],
            demo_args=["--test-images", "40", "--samples-per-class", "1", "--ddim-steps", "2",
                       "--counterfactuals", "1"],
            # one thread each: OpenMP's spinning threads slow everything on a shared small CPU
            env={"OMP_NUM_THREADS": "1"})
    return Settings(
        device="cuda", budget=args.budget or 530,
        limits={"unit_tests": 100, "demo": 40, "notebooks_quick": 130, "train": 200, "bench": 60,
                "notebooks_full": 600},
        # Measured on an H100 (docs/gpu_runs.md): a step of these UNets costs ~0.12 s whatever the
        # batch (kernel launches, not arithmetic), so a big batch is what buys data in a short run.
        # The fmnist-small trio at batch 1024 and lr 1e-3 reached 92.8 % in 1 052 steps; the
        # paper-scale fmnist at batch 128 reached 85.7 % in 749 (--config fmnist --batch-size 128).
        test_paths=["tests/"], config="fmnist-small", batch_size=1024, lr=1e-3,
        calibration_steps=100, checkpoint_every=500, log_every=50, max_steps=100_000,
        fd_samples=1000,
        bench_args=["--config", "fmnist-small", "--batch", "1024", "--models", "joint", "--steps",
                    "10", "--trials", "3", "--variants", "old", "eager", "fp32", "channels_last"])


class Run:
    """The run's clock, its report and its subprocesses."""

    def __init__(self, out: Path, s: Settings, dry_run: bool) -> None:
        self.out, self.s, self.start = out, s, time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="jdm-gpu-run-"))
        self.report: dict = {"dry_run": dry_run, "device": s.device, "budget_s": s.budget,
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "phases": {},
                             "work_dir": str(self.work)}

    def left(self) -> float:
        return self.s.budget - (time.monotonic() - self.start)

    def limit(self, phase: str) -> float:
        """Seconds this phase may use: its own limit, or what the budget has left (minus the
        grace a stopped command gets and a few seconds for writing the report)."""
        return max(0.0, min(self.s.limits[phase], self.left() - GRACE_S - 5))

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.out / ".report.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=1) + "\n")
        os.replace(tmp, self.out / "report.json")

    def launch(self, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """Start ``cmd`` in the checkout, in its own process group (so a timeout ends its
        children too: nbval's kernels, DataLoader workers), output into ``log``."""
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                env={**os.environ, **self.s.env, **(env or {})},
                                start_new_session=True)

    def wait(self, procs: list[subprocess.Popen], deadline: float) -> list[str]:
        """Wait until every process ends or the monotonic ``deadline``; for each 'passed',
        'failed' or 'timeout'.

        At the deadline the rest get SIGTERM together (on which ``jdm train`` saves its
        checkpoint and stops) and ``GRACE_S`` seconds before SIGKILL."""
        late = []
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                late.append(proc)
        for proc in late:
            try:
                proc.wait(timeout=max(0.0, deadline + GRACE_S - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return ["timeout" if proc in late else "passed" if proc.returncode == 0 else "failed"
                for proc in procs]

    def sh(self, name: str, cmd: list[str], limit: float, env: dict | None = None) -> dict:
        """Run one command with a time limit; its record for the report (log tail included)."""
        log = self.work / f"{name}.log"
        t0 = time.monotonic()
        if limit < 1:
            return {"command": shlex.join(cmd), "status": "skipped (no time left)"}
        [status] = self.wait([self.launch(cmd, log, env)], t0 + limit)
        return {"command": shlex.join(cmd), "env": env or {}, "status": status,
                "seconds": round(time.monotonic() - t0, 1), "limit_s": round(limit, 1),
                "log_tail": tail(log)}


def tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def pytest_summary(log_tail: str) -> str:
    """The last line of a pytest run, e.g. '120 passed, 2 skipped in 31.2s'."""
    lines = [ln.strip("= ") for ln in log_tail.splitlines() if " in " in ln and (
        "passed" in ln or "failed" in ln or "error" in ln or "skipped" in ln)]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------ phases
def phase_unit_tests(run: Run) -> None:
    # addopts overridden: the project's default options need nbval, which a bare GPU machine lacks
    # tests/test_gpu_run.py is this script's CPU rehearsal, and tests/test_course.py grades every
    # student notebook in fresh kernels (minutes of CPU work; the notebook phases cover CUDA): the
    # first GPU run's 100 s ran out while in it. pytest-xdist, where installed, runs 4 at once.
    cmd = [sys.executable, "-m", "pytest", *run.s.test_paths, "-q", "-p", "no:cacheprovider",
           "-o", "addopts=-ra", "--ignore=tests/test_gpu_run.py", "--ignore=tests/test_course.py",
           *(["-n", "4"] if has_module("xdist") and run.s.device == "cuda" else [])]
    record = run.sh("unit_tests", cmd, run.limit("unit_tests"), {"JDM_TEST_DEVICE": run.s.device})
    record["summary"] = pytest_summary(record.get("log_tail", ""))
    run.report["phases"]["unit_tests"] = record


def phase_demo(run: Run) -> None:
    cmd = [sys.executable, "-m", "jdm", "demo", "--device", run.s.device,
           "--out", str(run.work / "demo.png"), *run.s.demo_args]
    run.report["phases"]["demo"] = run.sh("demo", cmd, run.limit("demo"))


def smoke_notebook(folder: Path) -> Path:
    """A one-cell notebook for the dry run: exercises nbval, the kernel and the quick-mode switch
    without the course's minutes of CPU time."""
    cell = {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [],
            "source": ["import jdm\n", "assert jdm.quick_mode(), 'JDM_QUICK did not reach the kernel'"]}
    nb = {"cells": [cell], "metadata": {"kernelspec": {"display_name": "Python 3",
          "language": "python", "name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / "smoke.ipynb"
    path.write_text(json.dumps(nb))
    return path


def phase_notebooks(run: Run, mode: str, notebooks: list[Path]) -> None:
    """Each notebook under nbval in ``mode`` (quick/full) while the phase's time lasts."""
    phase = f"notebooks_{mode}"
    try:
        import nbval  # noqa: F401
    except ImportError:
        run.report["phases"][phase] = {"status": "skipped: nbval is not installed (carry .whl/ "
                                                 "with the wheels of shared/gpu/README.md)"}
        return
    deadline = time.monotonic() + run.limit(phase)
    results = []
    for nb in notebooks:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with",
               "tests/nbval_sanitize.cfg", str(nb)]
        record = run.sh(f"{phase}_{nb.stem}", cmd, deadline - time.monotonic(),
                        {"JDM_QUICK": "1" if mode == "quick" else "0"})
        record["notebook"] = nb.name
        record["summary"] = pytest_summary(record.get("log_tail", ""))
        results.append(record)
        run.report["phases"][phase] = {"notebooks": results}
        run.save()
    passed = sum(r["status"] == "passed" for r in results)
    run.report["phases"][phase] = {"status": f"{passed}/{len(notebooks)} passed",
                                   "notebooks": results}


def recipe_flags() -> argparse.Namespace:
    """The shipped joint model's training settings, read from its manifest's ``spec`` and
    ``train_config`` (the structured record of its command)."""
    from jdm.pretrained import read_manifest

    manifest = read_manifest(RECIPE)
    spec, config = manifest["spec"], manifest["train_config"]
    return argparse.Namespace(
        lr=config["lr"], warmup_steps=config["warmup_steps"], ema_decay=config["ema_decay"],
        seed=config["seed"], timesteps=spec["schedule"]["num_steps"],
        schedule=spec["schedule"]["kind"], dropout=spec["unet"]["dropout"], alpha=spec["alpha"],
        noise_aware=spec["noise_aware"], augment=spec["augment"],
        head_hidden=spec["head_hidden"], head_dropout=spec["head_dropout"])


def train_commands(run: Run, alpha_run: bool) -> dict[str, list[str]]:
    """{run name: CLI arguments without --train-steps} for the trio (and the α = 0.001 joint run):
    the shipped joint recipe's optimisation flags, the ``Settings.config`` UNet for all, each
    run on ``Settings.nproc`` ranks (torchrun) and compiled as ``Settings.compile`` says."""
    r, s = recipe_flags(), run.s
    common = ["--config", s.config, "--batch-size", str(s.batch_size), "--lr", str(s.lr or r.lr),
              "--warmup-steps", str(r.warmup_steps), "--ema-decay", str(r.ema_decay),
              "--timesteps", str(s.timesteps or r.timesteps), "--schedule", r.schedule,
              "--seed", str(r.seed),
              "--checkpoint-every", str(s.checkpoint_every), "--log-every", str(s.log_every),
              "--device", s.device, "--no-progress", *s.train_extra]
    dropout = s.dropout if s.dropout is not None else r.dropout
    if dropout is not None:
        common += ["--dropout", str(dropout)]
    if s.compile:
        common += ["--compile", s.compile]
    head = ["--head-hidden", str(r.head_hidden), "--head-dropout", str(r.head_dropout)]
    augment = ["--augment"] if r.augment else []
    joint = ["--model", "joint", *(["--noise-aware"] if r.noise_aware else []), *augment, *head]
    commands = {"ddpm": ["--model", "ddpm"],
                "classifier": ["--model", "classifier", *augment, *head],
                "joint": [*joint, "--alpha", str(r.alpha)]}
    if alpha_run:
        commands["joint-alpha"] = [*joint, "--alpha", "0.001"]
    names = {k: run_name(k, s.config) for k in commands}
    launcher = [sys.executable] if s.nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={s.nproc}"]
    return {names[k]: [*launcher, "-m", "jdm", "train", *v, *common,
                       "--out", str(run.work / "runs" / names[k])] for k, v in commands.items()}


def plan_steps(done: int, seconds_per_step: float, seconds_left: float, overhead: float,
               max_steps: int) -> int:
    """Total steps the runs can reach: ``done`` plus what fits in ``seconds_left`` after
    ``overhead`` (start-up, test metrics), at 90 % of the measured rate for safety."""
    fit = int(0.9 * max(0.0, seconds_left - overhead) / seconds_per_step)
    return min(max_steps, done + max(0, fit))


def train_all(run: Run, commands: dict[str, list[str]], extra: list[str], deadline: float,
              tag: str) -> dict[str, dict]:
    """Run every command (plus ``extra`` flags) at once; {name: record} with its train log."""
    threads = run.s.env.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                       // (len(commands) * run.s.nproc))))
    t0 = time.monotonic()
    procs = {name: run.launch(cmd + extra, run.work / f"train_{tag}_{name}.log",
                              {"OMP_NUM_THREADS": threads})
             for name, cmd in commands.items()}
    records = {}
    for (name, proc), status in zip(procs.items(), run.wait(list(procs.values()), deadline)):
        log_path = Path(commands[name][-1]) / "train_log.json"
        log = json.loads(log_path.read_text()) if status == "passed" and log_path.exists() else {}
        records[name] = {"status": status, "wall_s": round(time.monotonic() - t0, 1),
                         "command": shlex.join(commands[name] + extra), "train_log": log,
                         "log_tail": tail(run.work / f"train_{tag}_{name}.log", 3000)}
    return records


def phase_train(run: Run, alpha_run: bool) -> None:
    s = run.s
    phase_end = time.monotonic() + run.limit("train")
    commands = train_commands(run, alpha_run)
    report: dict = {"concurrent_runs": len(commands), "config": s.config, "nproc": s.nproc,
                    "compile": s.compile,
                    "batch_size": s.batch_size, "alpha_0.001_run": "trained alongside the trio"
                    if alpha_run else "not run (--no-alpha-run, or the dry run)"}
    run.report["phases"]["train"] = report
    calib = train_all(run, commands, ["--train-steps", str(s.calibration_steps), "--fd-samples", "0"],
                      phase_end, "calibration")
    report["calibration"] = calib
    run.save()
    ok = {n: r for n, r in calib.items() if r["status"] == "passed"}
    final: dict = {}
    if ok:
        # the slowest run sets the pace (all share the GPU); s/it of its last logged window
        # leaves out compilation and start-up, which the overhead holds (each resume pays both)
        per_step = max(r["train_log"]["history"][-1]["s/it"] for r in ok.values())
        overhead = max(r["wall_s"] - s.calibration_steps * r["train_log"]["history"][-1]["s/it"]
                       for r in ok.values())
        fd_reserve = 40.0 if s.device == "cuda" else 5.0  # FD of 1000 DDIM-50 samples each
        steps = plan_steps(s.calibration_steps, per_step, phase_end - time.monotonic(),
                           overhead + fd_reserve, s.max_steps)
        report.update(seconds_per_step=round(per_step, 4), overhead_s=round(overhead, 1),
                      planned_steps=steps)
        if steps > s.calibration_steps:
            final = train_all(run, {n: commands[n] for n in ok},
                              ["--train-steps", str(steps), "--resume", "--fd-samples",
                               str(s.fd_samples)], phase_end, "final")
            report["final"] = final
    report["exports"] = export_runs(run, commands, calib, final)
    complete = [e for e in report["exports"].values() if e["manifest"]["metrics"]]
    report["status"] = "passed" if len(complete) == len(commands) else "partial"


def export_runs(run: Run, commands: dict, calib: dict, final: dict) -> dict[str, dict]:
    """Export each run's last checkpoint into ``--out`` as half-precision jdm weights, with the
    test metrics the CLI measured at that step (none if the run was stopped before measuring)."""
    from jdm.pretrained import export_pretrained, manifest_path
    from jdm.checkpoint import read_checkpoint

    exports = {}
    for name, cmd in commands.items():
        checkpoint = Path(cmd[-1]) / "last.pt"
        if not checkpoint.exists():
            continue
        step = read_checkpoint(checkpoint)["step"]
        logs = [r["train_log"] for r in (final.get(name), calib.get(name))
                if r and r["train_log"].get("steps") == step]
        log = logs[0] if logs else {}
        metrics = dict(log.get("test_metrics", {}))
        if log.get("history"):
            metrics["final_train_loss"] = round(log["history"][-1]["loss"], 5)
        weights = export_pretrained(checkpoint, name, metrics, log.get("command", shlex.join(cmd)),
                                    log.get("hardware", run.report["hardware"]), folder=run.out)
        manifest_file = manifest_path(weights)
        manifest = json.loads(manifest_file.read_text())
        manifest_file.unlink()  # kept in the report: at most 8 files come back
        record = {"file": weights.name, "manifest": manifest,
                  "note": "" if log else f"stopped at step {step} before its test metrics",
                  "images_per_s": round(step * run.s.batch_size
                                        / max(manifest["train_seconds"], 1e-9), 1)}
        if weights.stat().st_size > MAX_FILE_BYTES:  # not even gzip brought it under the limit
            record["note"] += (f" {weights.name} is {manifest['size_bytes'] / 2**20:.1f} MiB, over "
                               "the 16 MiB a file may be: it will not come back")
        exports[name] = record
    return exports


def phase_bench(run: Run) -> None:
    out = run.work / "bench.json"
    cmd = [sys.executable, "benchmarks/bench_train.py", "--device", run.s.device,
           *run.s.bench_args, "--json", str(out)]
    record = run.sh("bench", cmd, run.limit("bench"))
    if out.exists():
        record["results"] = json.loads(out.read_text())
    run.report["phases"]["bench"] = record


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "runs" / "gpu-run")),
                   help="folder for report.json and the exported weights (default: $OUT)")
    p.add_argument("--dry-run", action="store_true",
                   help="every phase on the CPU with tiny settings (what tests/test_gpu_run.py runs)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of wall time for the whole run (default 530; dry run 300)")
    p.add_argument("--no-alpha-run", dest="alpha_run", action="store_false",
                   help="train only the trio, not the second joint run at α = 0.001")
    p.add_argument("--compile", nargs="?", const="default",
                   choices=["default", "reduce-overhead", "aot_eager"],
                   help="train with torch.compile in this mode (jdm train --compile; dry run: "
                        "aot_eager)")
    p.add_argument("--nproc", type=int, help="ranks per training run: torchrun "
                   "--nproc_per_node (default 1; dry run 2, on gloo); --batch-size is global")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="course",
                   help="named training recipe: 'paper' = the authors' Fashion-MNIST UNet "
                        "(fmnist-paper), T = 500, dropout 0.3; joint runs at the course's α and "
                        "at 0.001 (the alpha run)")
    p.add_argument("--config", help="UNet preset of the trio (default fmnist-small; dry run tiny; "
                                    "--recipe paper: fmnist-paper)")
    p.add_argument("--batch-size", type=int, help="training batch of the trio (default 1024; dry run 16)")
    p.add_argument("--lr", type=float, help="learning rate of the trio (default 1e-3; dry run: the shipped recipe's)")
    p.add_argument("--calibration-steps", type=int, help="steps of the rate-measuring segment (default 100)")
    p.add_argument("--limit", nargs="*", default=[], metavar="PHASE=SECONDS",
                   help="override phase time limits, e.g. --limit train=300 notebooks_quick=90")
    p.add_argument("--skip", nargs="*", default=[], metavar="PHASE",
                   choices=["unit_tests", "demo", "notebooks_quick", "train", "bench",
                            "notebooks_full"], help="phases to leave out")
    args = p.parse_args(argv)

    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    s = settings(args)
    for item in args.limit:
        phase, _, seconds = item.partition("=")
        if phase not in s.limits or not seconds.replace(".", "", 1).isdigit():
            p.error(f"--limit takes PHASE=SECONDS with PHASE one of {sorted(s.limits)}, got {item!r}")
        s.limits[phase] = float(seconds)
    run = Run(args.out, s, args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        run.report["status"] = "refused: no CUDA device"
        run.save()
        print("gpu_run: no CUDA device here (torch.cuda.is_available() is False): this run is "
              "for one CUDA GPU. Rehearse it on the CPU with --dry-run.", file=sys.stderr)
        return 2
    run.report["hardware"] = (torch.cuda.get_device_name() if s.device == "cuda" else "CPU") + \
        f", torch {torch.__version__}, {os.cpu_count()} CPU cores"
    course = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    # the dry run: one smoke notebook in quick mode, none in full mode (the same code path)
    quick, full = ([smoke_notebook(run.work)], []) if args.dry_run else (course, course)
    phases = {"unit_tests": lambda: phase_unit_tests(run), "demo": lambda: phase_demo(run),
              "notebooks_quick": lambda: phase_notebooks(run, "quick", quick),
              "train": lambda: phase_train(run, args.alpha_run and not args.dry_run),
              "bench": lambda: phase_bench(run),
              "notebooks_full": lambda: phase_notebooks(run, "full", full)}
    for name, phase in phases.items():
        t0 = time.monotonic()
        if name in args.skip:
            run.report["phases"][name] = {"status": "skipped (--skip)"}
        else:
            try:
                phase()
            except Exception as err:  # one broken phase must not cost the others their time
                run.report["phases"].setdefault(name, {})["status"] = \
                    f"error: {type(err).__name__}: {err}"
        run.report["phases"][name]["phase_seconds"] = round(time.monotonic() - t0, 1)
        run.save()
        print(f"gpu_run: {name}: {run.report['phases'][name].get('status')} "
              f"({time.monotonic() - t0:.0f} s; {run.left():.0f} s left)", flush=True)
    run.report["files"] = sorted(f.name for f in args.out.iterdir() if not f.name.startswith("."))
    run.report["status"] = "finished"
    run.save()
    shutil.rmtree(run.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
