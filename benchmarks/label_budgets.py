"""Joint model vs the classifier alone at several label budgets (notebook 08, issue 13).

For every budget × seed, trains two models with ``python -m jdm train`` on the same labelled
subset (``--labels-per-class`` / ``--label-fraction``, drawn with the run's seed) and the same
batches: each step is ``--batch-size`` training images with their labels hidden (the joint
model's diffusion loss; the classifier skips them) followed by ``--labelled-batch-size`` labelled
images (both models' cross-entropy). Same UNet encoder, head, augmentation, optimiser, seed and
number of steps; the only difference is the diffusion loss. Test accuracy and ECE come from the
CLI (all 10,000 test images, EMA weights).

    python benchmarks/label_budgets.py                 # the whole grid, one run at a time
    python benchmarks/label_budgets.py --print         # the table of docs/label_budgets.json

Results go to ``docs/label_budgets.json`` after every run (a finished run is not trained again:
delete its row, or pass --force, to redo it), with each run's exact command, wall time, the
machine's load average, and the hardware. Runs live in ``runs/label_budgets/``; with
``--export-seed S`` the runs of seed S are also shipped to ``data/checkpoints`` as
``{joint,classifier}-fmnist-tiny-{budget}``.

    python benchmarks/label_budgets.py --probes        # linear probes of the encoders

``--probes`` writes ``docs/label_budgets_probes.json``: notebook 04's probe protocol (the first
3,000 training and 1,000 test images, x_t noised with seeds 1 and 2, ``jdm.probe.fit_linear_probe``
per encoder block and on all blocks concatenated) over noise levels for the encoders of the shipped
DDPM, joint model and classifier, and at t = 0 (all blocks) for the shipped tiny label-budget
models of the exported seed. Missing entries are computed, present ones kept.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = {"10pc": ["--labels-per-class", "10"], "100pc": ["--labels-per-class", "100"],
           "all": ["--label-fraction", "1"]}
# the recipe both models share (small enough for the 2-core CPU: see docs/label_budgets.json)
RECIPE = ["--config", "tiny", "--batch-size", "32", "--labelled-batch-size", "32", "--lr", "2e-3",
          "--warmup-steps", "100", "--ema-decay", "0.995", "--dropout", "0.0", "--augment",
          "--log-every", "100", "--checkpoint-every", "0", "--no-progress"]


def relative_to_root(path: Path) -> Path:
    """``path`` relative to the repository when it lies inside (runs start there, so the recorded
    command works in any checkout), else as given."""
    resolved = path.resolve()
    return resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path


def command(model: str, budget: str, seed: int, steps: int, out: Path, export: str | None) -> list[str]:
    cmd = ["train", "--model", model, *BUDGETS[budget], "--seed", str(seed), "--train-steps", str(steps),
           *RECIPE, "--out", str(out)]
    if model == "joint":
        cmd += ["--samples", "16", "--ddim-steps", "20"]
    if export:
        cmd += ["--export", export, "--force"]
    return cmd


def table(rows: list[dict]) -> str:
    lines = [f"{'budget':>7} {'labels':>6} {'model':>10} {'seed':>4} {'accuracy':>8} {'ECE':>6} "
             f"{'steps':>5} {'train s':>7} {'load':>5}"]
    for r in rows:
        lines.append(f"{r['budget']:>7} {r['labelled']:>6} {r['model']:>10} {r['seed']:>4} "
                     f"{r['test_accuracy']:>8.4f} {r['test_ece']:>6.4f} {r['steps']:>5} "
                     f"{r['train_seconds']:>7.0f} {r['load_average']:>5.2f}")
    return "\n".join(lines)


PROBE_TIMESTEPS = [0, 100, 300, 500, 900]
TRIO = ["ddpm-fmnist-small", "joint-fmnist-small", "classifier-fmnist-small"]


def probe_row(unet, schedule, timesteps: list[int], n_train: int = 3000, n_test: int = 1000) -> dict:
    """Notebook 04's protocol: per-block and all-blocks linear-probe test accuracy at each t."""
    import torch

    from jdm.data import load_tensors
    from jdm.probe import encoder_features, fit_linear_probe

    train_x, train_y = [t[:n_train] for t in load_tensors("fashion_mnist", train=True)]
    test_x, test_y = [t[:n_test] for t in load_tensors("fashion_mnist", train=False)]
    per_block, concat = [], []
    for t in timesteps:
        tr = encoder_features(unet, schedule, train_x, t=t, seed=1)
        te = encoder_features(unet, schedule, test_x, t=t, seed=2)
        per_block.append([round(fit_linear_probe(a, train_y, b, test_y), 4) for a, b in zip(tr, te)])
        concat.append(round(fit_linear_probe(torch.cat(tr, 1), train_y, torch.cat(te, 1), test_y), 4))
        print(f"  t = {t}: all blocks {concat[-1]:.3f}", flush=True)
    return {"timesteps": timesteps, "per_block": per_block, "all_blocks": concat,
            "n_train": n_train, "n_test": n_test}


def run_probes(path: Path) -> None:
    import torch

    import jdm
    from jdm.schedule import NoiseSchedule

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update({"protocol": "notebook 04: jdm.probe.encoder_features (noise seeds 1 train, 2 test) "
                             "and jdm.probe.fit_linear_probe on the first 3000 training / 1000 test "
                             "images; the classifier's encoder is probed with the DDPM's schedule "
                             "(T = 1000, linear β)",
                 "regenerate": "python benchmarks/label_budgets.py --probes",
                 "machine": f"{os.cpu_count()} CPU cores, shared with other jobs"})
    models = data.setdefault("models", {})
    schedule = NoiseSchedule(1000, "linear")
    names = TRIO + [f"{m}-fmnist-tiny-{b}" for b in BUDGETS for m in ("joint", "classifier")]
    for name in names:
        if name in models or name not in jdm.list_pretrained():
            continue
        model = jdm.load_pretrained(name)
        timesteps = PROBE_TIMESTEPS if name in TRIO else [0]
        print(f"probing {name} at t = {timesteps}", flush=True)
        t0 = time.perf_counter()
        models[name] = {**probe_row(model.unet, getattr(model, "schedule", schedule), timesteps),
                        "seconds": round(time.perf_counter() - t0, 1)}
        path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--models", nargs="+", choices=["joint", "classifier"],
                   default=["joint", "classifier"])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "label_budgets.json")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "label_budgets")
    p.add_argument("--export-seed", type=int, default=None,
                   help="also ship the runs of this seed as data/checkpoints/*-fmnist-tiny-*")
    p.add_argument("--force", action="store_true", help="train again runs already in --json")
    p.add_argument("--print", action="store_true", help="only print the table of --json")
    p.add_argument("--probes", action="store_true",
                   help="only compute the linear probes (docs/label_budgets_probes.json)")
    args = p.parse_args(argv)
    if args.probes:
        run_probes(ROOT / "docs" / "label_budgets_probes.json")
        return 0

    data = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
    if args.print:
        print(table(data["rows"]))
        return 0
    data.update({
        "what": "joint model vs classifier alone (same encoder, head, augmentation, optimiser, "
                "seed, steps and labelled batches) at label budgets on Fashion-MNIST",
        "regenerate": "python " + shlex.join([str(Path(__file__).relative_to(ROOT)), *(argv or sys.argv[1:])]),
        "recipe": RECIPE,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                   "shared with other jobs (see load_average per run); OMP_NUM_THREADS=1",
    })
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for seed in args.seeds:  # seed-major: a cut-short grid still has every budget once
        for budget in args.budgets:
            for model in args.models:
                key = (budget, model, seed)
                rows = data["rows"]
                if not args.force and any((r["budget"], r["model"], r["seed"]) == key for r in rows):
                    continue
                out = args.runs / f"{model}-{budget}-s{seed}"
                export = (f"{model}-fmnist-tiny-{budget}" if args.export_seed == seed else None)
                cmd = command(model, budget, seed, args.steps, relative_to_root(out), export)
                if (out / "last.pt").exists():
                    cmd.append("--resume")
                print("python -m jdm " + shlex.join(cmd), flush=True)
                load0, t0 = os.getloadavg()[0], time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "jdm", *cmd], cwd=ROOT, env=env)
                wall = time.perf_counter() - t0
                if done.returncode != 0:
                    print(f"run failed with status {done.returncode}", file=sys.stderr)
                    return done.returncode
                log = json.loads((out / "train_log.json").read_text())
                m = log["test_metrics"]
                row = {"budget": budget, "model": model, "seed": seed,
                       "labelled": log["label_budget"]["labelled"],
                       "labels_per_class": log["label_budget"]["labels_per_class"],
                       "label_fraction": log["label_budget"]["label_fraction"],
                       "test_accuracy": m["test_accuracy"], "test_ece": m["test_ece"],
                       "test_images": m["test_images"], "test_loss": m.get("test_loss"),
                       "steps": log["steps"], "train_seconds": round(log["train_seconds"], 1),
                       "wall_seconds": round(wall, 1),
                       "load_average": round((load0 + os.getloadavg()[0]) / 2, 2),
                       "command": log["command"], "hardware": log["hardware"],
                       "exported": export}
                data["rows"] = [r for r in rows if (r["budget"], r["model"], r["seed"]) != key] + [row]
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(data, indent=1) + "\n")
                print(table([row]).splitlines()[1], flush=True)
    print(table(data["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
