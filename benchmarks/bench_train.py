"""Training throughput of the shipped training configs: jdm's Trainer, eager vs each speed option.

For each shipped recipe (ddpm, classifier, joint: the spec and batch size of its manifest in
data/checkpoints/, ``NAME-fmnist-small``: the CPU recipe, batch 64; ``--batch`` and ``--config``
change it) it times full optimiser steps of ``jdm.train.Trainer.fit`` (loss, backward, clipping,
AdamW, EMA) in images/s:

* ``old``           — the Trainer before the GPU-speed work (``--old-rev``, loaded from git), as shipped;
* ``base``          — the whole ``jdm`` package (models, losses, Trainer) at ``--base-rev``, loaded
                      from git as ``jdm_base``: today's code against a revision of it, in one run;
* ``eager``         — today's Trainer as shipped (bf16 autocast on CUDA, fused AdamW, data on the device);
* ``fp32``          — today's Trainer without autocast (CUDA only: what bf16 buys);
* ``compile``       — ``TrainConfig(compile=True)``: the whole loss, forward and backward, as one
                      inductor graph; its compile time is reported apart, and its speed as a ratio
                      to ``eager`` (``compile/eager``);
* ``cudagraphs``    — ``TrainConfig(compile="reduce-overhead")``: the same with CUDA graphs (CUDA only);
* ``channels_last`` — model converted with ``.to(memory_format=torch.channels_last)``.

After one warm-up call each, timed trials of the variants alternate (forward, then reversed order),
and medians are reported, so a machine whose load drifts penalises all alike. It also times one
EMA update (torch.optim.swa_utils, a foreach lerp) against a per-tensor loop, and its share of a step.

    python benchmarks/bench_train.py --threads 1            # CPU: the table in benchmarks/README.md
    python benchmarks/bench_train.py --threads 1 --variants eager compile --old-rev ''   # compiled vs eager
    python benchmarks/bench_train.py --threads 1 --variants base eager --old-rev '' --base-rev 946d75c
    python benchmarks/bench_train.py --threads 1 --models joint classifier --variants base eager \
        --old-rev '' --base-rev 946d75c --labels-per-class 10 --labelled-batch 32   # a label budget
    python benchmarks/bench_train.py --device cuda --config fmnist --batch 256 --steps 20
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from statistics import median
from types import ModuleType

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from jdm.data import hide_labels, label_subset, load_tensors
from jdm.diffusion import build_model
from jdm.pretrained import read_manifest
from jdm.train import TrainConfig, Trainer
from jdm.unet import UNET_PRESETS
from jdm.utils import get_device

ROOT = Path(__file__).resolve().parent.parent
# the last commit before the Trainer's GPU-speed work (issue 10): the "old" column
OLD_REV = "7a32def"
KINDS = ("ddpm", "classifier", "joint")


def recipe(kind: str, config: str | None) -> tuple[str, dict, dict]:
    """(manifest name, model spec, train_config) of the shipped ``kind``; ``config`` swaps in
    another UNet preset (e.g. "fmnist" for the paper-scale network)."""
    # the CPU recipe first: the aliases (ddpm-fmnist, …) now name the GPU trio, trained at batch 1024
    for name in (f"{kind}-fmnist-small", f"{kind}-fmnist"):
        try:
            manifest = read_manifest(name)  # an alias resolves to the checkpoint it names
            name, spec, train = manifest["name"], manifest["spec"], manifest["train_config"]
            break
        except FileNotFoundError:
            continue
    else:
        if kind != "classifier":
            raise SystemExit(f"no shipped {kind} manifest in data/checkpoints/")
        # no classifier shipped yet: the joint recipe's encoder and head, cross-entropy only
        name, joint, train = recipe("joint", None)
        spec = {"kind": "classifier", "unet": joint["unet"], "num_classes": joint["num_classes"],
                "augment": joint["augment"], "head_hidden": joint["head_hidden"],
                "head_dropout": joint["head_dropout"]}
        name = f"{name} (as classifier)"
    if config is not None:
        spec = {**spec, "unet": {**asdict(UNET_PRESETS[config]), "dropout": spec["unet"]["dropout"]}}
    return name, spec, train


def load_old_trainer(rev: str) -> ModuleType | None:
    """jdm/train.py as of ``rev``, imported as a module of the jdm package (None without git)."""
    try:
        source = subprocess.run(["git", "show", f"{rev}:jdm/train.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "train_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("jdm._train_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # relative imports resolve against today's jdm package
    return module


def load_package_at(rev: str) -> ModuleType | None:
    """The ``jdm`` package as of git revision ``rev``, imported as ``jdm_base`` (its relative
    imports resolve inside it), or None without git."""
    folder = Path(tempfile.mkdtemp())
    try:
        archive = subprocess.run(["git", "archive", rev, "jdm"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_file_location(
        "jdm_base", folder / "jdm" / "__init__.py", submodule_search_locations=[str(folder / "jdm")])
    package = importlib.util.module_from_spec(spec)
    sys.modules["jdm_base"] = package
    spec.loader.exec_module(package)
    return package


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(trainer, steps: int) -> float:
    """Run ``steps`` more optimiser steps; returns the wall seconds (device work included)."""
    trainer.config.steps = trainer.step + steps
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's per-log line
        trainer.fit()
    sync(trainer.device)
    return time.perf_counter() - start


VARIANTS = ("old", "base", "eager", "fp32", "compile", "cudagraphs", "channels_last")


def make_variants(spec: dict, train: dict, images, labels, device, old, batch: int,
                  wanted: list[str], base: ModuleType | None = None,
                  labelled_batch: int = 0) -> dict:
    """{variant name: Trainer} for one recipe (those of ``wanted`` that apply to ``device``),
    each from the same initial weights; ``labelled_batch`` > 0: steps of a label budget."""
    torch.manual_seed(0)
    model = build_model(spec)
    settings = {k: v for k, v in train.items() if k in TrainConfig.__dataclass_fields__}
    settings.update(batch_size=batch, log_every=10**9, checkpoint_every=0, steps=1)
    if labelled_batch and spec["kind"] in ("joint", "classifier"):  # a label budget's steps
        settings["labelled_batch_size"] = labelled_batch

    def trainer(module, overrides: dict | None = None, channels_last: bool = False,
                package: ModuleType | None = None):
        m = copy.deepcopy(model)
        if package is not None:  # the same weights in the other revision's classes
            m = package.diffusion.build_model(spec)
            m.load_state_dict(model.state_dict())
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        # the old Trainer predates some fields (e.g. checkpoint_minutes): give each only its own
        fields = module.TrainConfig.__dataclass_fields__
        cfg = module.TrainConfig(**{k: v for k, v in {**settings, **(overrides or {})}.items()
                                    if k in fields})
        return module.Trainer(m, images, labels, cfg, device=device, progress=False)

    import jdm.train as new
    build = {"old": lambda: trainer(old), "eager": lambda: trainer(new),
             "base": lambda: trainer(base.train, package=base),
             "fp32": lambda: trainer(new, {"amp": False}),
             "compile": lambda: trainer(new, {"compile": True}),
             "cudagraphs": lambda: trainer(new, {"compile": "reduce-overhead"}),
             "channels_last": lambda: trainer(new, channels_last=True)}
    skip = ({"old"} if old is None else set()) | ({"base"} if base is None else set())
    if device.type != "cuda":
        skip |= {"fp32", "cudagraphs"}  # autocast and CUDA graphs are CUDA-only
    return {v: build[v]() for v in VARIANTS if v in wanted and v not in skip}


def time_ema(trainer: Trainer, reps: int = 20) -> dict:
    """ms per EMA update: swa_utils' multi-tensor (foreach lerp) update vs a per-tensor loop."""
    model = trainer.model
    loop = AveragedModel(model, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
    result = {}
    for name, ema in (("foreach", trainer.ema_model), ("loop", loop)):
        ema.update_parameters(model)
        sync(trainer.device)
        start = time.perf_counter()
        for _ in range(reps):
            ema.update_parameters(model)
        sync(trainer.device)
        result[f"ema_{name}_ms"] = 1000 * (time.perf_counter() - start) / reps
    return result


def bench_recipe(kind: str, args, images, labels, device, old) -> dict:
    name, spec, train = recipe(kind, args.config)
    batch = args.batch or train["batch_size"]
    variants = make_variants(spec, train, images, labels, device, old, batch, args.variants,
                             args.base, args.labelled_batch)
    first_call = {}
    for vname, tr in list(variants.items()):  # warm-up: first call pays compilation, caches
        try:
            first_call[vname] = run_steps(tr, args.warmup)
        except Exception as err:  # e.g. no C++ compiler for inductor: report it, keep going
            print(f"  {kind}/{vname} failed: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
            variants.pop(vname)
    times: dict[str, list[float]] = {v: [] for v in variants}
    order = list(variants)
    for trial in range(args.trials):
        for vname in (order if trial % 2 == 0 else order[::-1]):
            times[vname].append(run_steps(variants[vname], args.steps))
    rates = {v: args.steps * batch / median(ts) for v, ts in times.items()}
    row = {"recipe": name, "kind": kind, "batch": batch, "unet": spec["unet"],
           "images_per_s": {v: round(r, 2) for v, r in rates.items()},
           "first_call_s": {v: round(s, 1) for v, s in first_call.items()}}
    if "old" in rates:
        row["ratio_to_old"] = {v: round(r / rates["old"], 3) for v, r in rates.items()}
    if "eager" in rates:
        row["ratio_to_eager"] = {v: round(rates[v] / rates["eager"], 3) for v in rates
                                 if v in ("compile", "cudagraphs")}
        if "base" in rates:  # today's eager against the base revision's
            row["eager_to_base"] = round(rates["eager"] / rates["base"], 3)
    if "eager" in variants:
        ema = time_ema(variants["eager"])
        step_ms = 1000 * batch / rates["eager"]
        row.update({k: round(v, 3) for k, v in ema.items()})
        row["ema_share_of_step"] = round(ema["ema_foreach_ms"] / step_ms, 4)
    for v in ("compile", "cudagraphs"):  # compile time ≈ its first call minus a step
        if v in first_call and "eager" in rates:
            row[f"{v}_seconds"] = round(first_call[v] - args.warmup * batch / rates["eager"], 1)
    return row


def markdown(rows: list[dict], device: torch.device) -> str:
    variants = [v for v in VARIANTS if any(v in r["images_per_s"] for r in rows)]
    compiled = [v for v in ("compile", "cudagraphs") if v in variants and any(
        v in r.get("ratio_to_eager", {}) for r in rows)]
    lines = [f"| recipe ({device.type}) | batch | " + " | ".join(variants)
             + "".join(f" | {v}/eager (compile s)" for v in compiled) + " | EMA update (share) |",
             "|---|---|" + "---|" * (len(variants) + len(compiled)) + "---|"]
    for r in rows:
        cells = []
        for v in variants:
            rate = r["images_per_s"].get(v)
            ratio = r.get("ratio_to_old", {}).get(v)
            cells.append("—" if rate is None else f"{rate:.1f}" + (f" (×{ratio:.2f})" if ratio and v != "old" else ""))
        ema = (f"{r['ema_foreach_ms']:.1f} ms ({100 * r['ema_share_of_step']:.1f} %), "
               f"loop {r['ema_loop_ms']:.1f} ms" if "ema_foreach_ms" in r else "—")
        for v in compiled:
            ratio, secs = r.get("ratio_to_eager", {}).get(v), r.get(f"{v}_seconds")
            cells.append("—" if ratio is None else f"×{ratio:.2f} ({secs:.0f} s)")
        if "eager_to_base" in r:
            cells[variants.index("eager")] += f" (×{r['eager_to_base']:.2f} base)"
        lines.append(f"| {r['recipe']} | {r['batch']} | " + " | ".join(cells) + f" | {ema} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="cuda, cpu, …; default: the best available")
    p.add_argument("--models", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--config", choices=sorted(UNET_PRESETS), default=None,
                   help="UNet preset instead of the manifest's (e.g. fmnist, the paper-scale one)")
    p.add_argument("--batch", type=int, default=None, help="default: the manifest's batch size")
    p.add_argument("--steps", type=int, default=2, help="optimiser steps per timed trial")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="steps of each variant's untimed first call")
    p.add_argument("--images", type=int, default=4096, help="training images resident (a subset)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--old-rev", default=OLD_REV, help="git revision of the 'old' Trainer ('' = skip)")
    p.add_argument("--base-rev", default=None, help="git revision of the whole jdm package for "
                   "the 'base' variant (e.g. the branch point, to compare today's code with it)")
    p.add_argument("--labels-per-class", type=int, default=None, metavar="K",
                   help="a label budget: keep K labels a class (seed 0), the rest −1")
    p.add_argument("--labelled-batch", type=int, default=0, metavar="L",
                   help="with --labels-per-class: joint and classifier steps add L labelled images "
                        "(TrainConfig.labelled_batch_size), as label_budgets.py trains")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.labelled_batch and args.labels_per_class is None:
        p.error("--labelled-batch needs --labels-per-class")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    old = load_old_trainer(args.old_rev) if args.old_rev else None
    if args.old_rev and old is None:
        print(f"no git revision {args.old_rev} here: the 'old' column is skipped", file=sys.stderr)
    args.base = load_package_at(args.base_rev) if args.base_rev else None
    if "base" in args.variants and args.base is None:
        print("no --base-rev (or no git): the 'base' column is skipped", file=sys.stderr)
    images, labels = load_tensors("fashion_mnist", train=True)
    images, labels = images[:args.images], labels[:args.images]
    if args.labels_per_class is not None:
        labels = hide_labels(labels, label_subset(labels, per_class=args.labels_per_class))
    start = time.perf_counter()
    rows = []
    for kind in args.models:
        rows.append(bench_recipe(kind, args, images, labels, device, old))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, device)
    print(f"\n{device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.trials} trials × {args.steps} steps, {time.perf_counter() - start:.0f} s\n{table}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows, "table": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
