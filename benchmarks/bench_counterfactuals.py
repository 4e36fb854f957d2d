"""The counterfactual frontier: flip rate against closeness over t*, guidance scale and start.

    python benchmarks/bench_counterfactuals.py --starts inversion noise --guidance classifier \
        --scales 100 300 --t-stars 200 275 400 --n 500 --json docs/counterfactuals.json
    python benchmarks/bench_counterfactuals.py --targets random --n 200 --t-stars 275 ...
    python benchmarks/bench_counterfactuals.py --t-stars auto --min-change 0 0.2 ...
    python benchmarks/bench_counterfactuals.py --render --json docs/counterfactuals.json \
        --out docs/counterfactuals.md

Every combination of the given starts (DDIM inversion or fresh noise), guidance kinds, scales,
t* (an int, or ``auto``: each image its own, ``jdm.counterfactual.auto_t_star``), ``keep``, η and
``min_change`` values is one row: ``--n`` test images from ``--first`` (0: the report's; another
slice to tune a rule on, which gets its own table) explained towards their targets
(the class the model's head ranks second, or a random other class) by ``jdm.counterfactual``
with DDIM-``--steps``, scored by the project's evaluator (flip rate, kept rate, mean |Δ| per
pixel, FD against real images of the target classes). Scale 0 is the unguided round trip: how
much of the change the route costs before any guidance. Rows merge into the JSON report by name
(a file lock makes parallel runs safe), so the frontier can be measured in parts.
"""
from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import sys
from pathlib import Path

import torch

import jdm
from jdm.cli_types import t_star_value
from jdm.counterfactual import (DEFAULT_COUNTERFACTUAL_STEPS, DEFAULT_MIN_CHANGE, DEFAULT_T_STAR,
                                STARTS, CounterfactualSettings)
from jdm.utils import hardware_string
from jdm.data import load_tensors
from jdm.evaluate import evaluate_counterfactuals, other_class_targets, runner_up_targets
from jdm.evaluator import load_evaluator
from jdm.sampling import GUIDANCE_KINDS


def row_name(targets: str, n: int, start: str, kind: str, scale: float, t_star: int | str,
             keep: float, eta: float | None, min_change: float, rule: tuple[float, float, float]) -> str:
    """The row's key in the report. A t* auto row names its rule: the default rule has changed
    once (``AUTO_T_STAR``), and a row measured with the old one must not be replaced by the new."""
    name = f"{targets} | n={n} | {start} | {kind} {scale:g} | t*={t_star}"
    return (name + (f" | keep {keep:g}" if keep else "") + (f" | eta {eta:g}" if eta is not None else "")
            + (f" | min change {min_change:g}" if min_change else "")
            + (f" | rule {' '.join(f'{v:g}' for v in rule)}" if t_star == "auto" else ""))


def check_model(report: dict, path: Path, model: str) -> None:
    """A report holds the rows of one model: refuse to mix another's in."""
    if report["settings"]["model"] != model:
        raise SystemExit(f"{path} holds rows of {report['settings']['model']}, not of {model}: "
                         f"pass --model {report['settings']['model']} or another --json")


def merge(path: Path, rows: list[dict], settings: dict) -> None:
    """Add ``rows`` to the JSON report at ``path`` (same name: replaced), under a file lock."""
    path.touch()
    with path.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        report = json.loads(text) if text.strip() else {"settings": settings, "rows": []}
        check_model(report, path, settings["model"])
        merged = {r["name"]: r for r in report["rows"]}
        merged.update({r["name"]: r for r in rows})
        report["rows"] = sorted(merged.values(), key=lambda r: r["name"])
        f.seek(0)
        f.truncate()
        f.write(json.dumps(report, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="joint-fmnist-small",
                   help="shipped joint model; a report holds one model's rows (the default keeps the "
                        "commands stored in docs/counterfactuals.json as they were run)")
    p.add_argument("--n", type=int, default=500, help="test images (n of them from --first on)")
    p.add_argument("--first", type=int, default=0,
                   help="index of the first test image (0: the report's images; e.g. 8000 for a "
                        "slice to tune on, away from them)")
    p.add_argument("--auto-rule", type=float, nargs=3, default=None, metavar=("BASE", "PER_NAT", "MOST"),
                   help="t* auto with this rule instead of the model's own (its defaults, else "
                        "jdm.counterfactual.AUTO_T_STAR)")
    p.add_argument("--targets", choices=("runner-up", "random"), default="runner-up")
    p.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    p.add_argument("--guidance", nargs="+", choices=GUIDANCE_KINDS, default=["classifier"])
    p.add_argument("--scales", nargs="+", type=float, default=[None],
                   help="guidance scales (default: jdm.counterfactual's for the kind; 0: unguided "
                        "round trip)")
    p.add_argument("--t-stars", nargs="+", type=t_star_value, default=[DEFAULT_T_STAR],
                   help="ints, or auto (jdm.counterfactual.auto_t_star)")
    p.add_argument("--keep", nargs="+", type=float, default=[0.0])
    p.add_argument("--min-change", nargs="+", type=float, default=[DEFAULT_MIN_CHANGE],
                   help="fade out pixel changes below this (jdm.counterfactual's min_change)")
    p.add_argument("--etas", nargs="+", type=float, default=[None],
                   help="DDIM η of the reverse process (default: jdm.counterfactual's for the start)")
    p.add_argument("--steps", type=int, default=DEFAULT_COUNTERFACTUAL_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, required=True, help="merge rows into this JSON report")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--render", action="store_true", help="measure nothing: write --out from --json")
    args = p.parse_args()
    if args.render:
        args.out.write_text(markdown_report(json.loads(args.json.read_text()), args.json, args.out))
        return

    existing = args.json.read_text() if args.json.is_file() else ""
    if existing.strip():   # before minutes of measuring
        check_model(json.loads(existing), args.json, args.model)
    model = jdm.load_pretrained(args.model)
    evaluator = load_evaluator()
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    x, y = test_x[args.first:args.first + args.n], test_y[args.first:args.first + args.n]
    targets = (runner_up_targets(model, x) if args.targets == "runner-up"
               else other_class_targets(y, model.num_classes, torch.Generator().manual_seed(args.seed)))
    rule = tuple(args.auto_rule) if args.auto_rule else None   # None: the model's own
    settings = {"model": args.model, "steps": args.steps, "seed": args.seed,
                "hardware": hardware_string(torch.device("cpu")),
                "torch": torch.__version__}
    for start, kind, scale, t_star, keep, eta, min_change in itertools.product(
            args.starts, args.guidance, args.scales, args.t_stars, args.keep, args.etas,
            args.min_change):
        asked = CounterfactualSettings(t_star=t_star, start=start, keep=keep,
                                       min_change=min_change, steps=args.steps, t_star_rule=rule)
        res = evaluate_counterfactuals(model, evaluator, x, y, targets, test_x, test_y,
                                       settings=asked, guidance=jdm.Guidance(kind, scale=scale, eta=eta),
                                       seed=args.seed,
                                       exclude=torch.arange(args.first, args.first + args.n),
                                       progress=False)
        guidance, used = res["guidance"], res["settings"]   # what the counterfactuals ran with
        name = row_name(args.targets, args.n, start, kind, guidance.scale, t_star, keep, eta,
                        min_change, used.t_star_rule)
        row = {"name": name + (f" | first {args.first}" if args.first else ""),
               "targets": args.targets, "n": args.n, "first": args.first, "start": start, "kind": kind,
               "scale": guidance.scale, "t_star": t_star, "keep": keep, "steps": args.steps,
               "eta": guidance.eta, "min_change": min_change,
               **({"auto_rule": list(used.t_star_rule)} if t_star == "auto" else {}),
               **{k: res[k] for k in ("flip_rate", "kept_rate", "l1", "l2", "fd", "t_star_mean",
                                      "seconds")},
               "command": "python benchmarks/bench_counterfactuals.py " + " ".join(sys.argv[1:])}
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()
                          if k != "command"}), flush=True)
        merge(args.json, [row], settings)
    if args.out:
        args.out.write_text(markdown_report(json.loads(args.json.read_text()), args.json, args.out))


def t_star_cell(row: dict) -> str:
    if row["t_star"] != "auto":
        return str(row["t_star"])
    return f"auto {'/'.join(f'{v:g}' for v in row['auto_rule'])} ({row['t_star_mean']:.0f})"


def markdown_report(report: dict, json_path: Path = Path("docs/counterfactuals.json"),
                    out_path: Path = Path("docs/counterfactuals.md")) -> str:
    """docs/counterfactuals.md (or ``out_path``, from ``json_path``): one table per target kind,
    rows sorted by start, kind, scale, t*."""
    s = report["settings"]
    lines = ["# The counterfactual frontier, measured", "",
             f"Generated from `{json_path}` by `python benchmarks/bench_counterfactuals.py "
             f"--render --json {json_path} --out {out_path}`; each row's "
             "command is in the JSON. Every number is the project's evaluator's verdict, never the "
             "explained model's own head. Flip: the evaluator says the target class. Kept: it still "
             "says the original label. Mean |Δ|: per pixel, in [-1, 1] units. FD: counterfactuals "
             "against as many real test images of their target classes (evaluator features).", "",
             f"Model `{s['model']}`, DDIM-{s['steps']} over [0, t*], seed {s['seed']}; η is the "
             f"reverse process's DDIM noise; min change: pixel changes below it fade "
             f"(`min_change`); t* auto: each image its own (`auto_t_star`, with its rule base/per nat/most "
             f"and the mean t* in brackets); rows on a tuning slice (away from the first test "
             f"images the other rows use) are in their own tables; {s['hardware']}.", "",
             "Guidance `representation` is the paper's sampler as the authors run it (each feature "
             "map's total derivative, +γ·∇CE; notebook 06); `representation-direct-ascent` rows were "
             "measured with jdm's former rule for it (each map detached, up log p), before December "
             "2026.", ""]
    order = lambda r: (r["start"], r["kind"], r["eta"], r["scale"], r["keep"], r["min_change"],  # noqa: E731
                       isinstance(r["t_star"], str), str(r["t_star"]).zfill(4))
    slices = sorted({(r["targets"] != "runner-up", r.get("first", 0), r["n"] if r.get("first") else 0)
                     for r in report["rows"]})
    for random, first, n in slices:
        targets = "random" if random else "runner-up"
        rows = sorted((r for r in report["rows"] if r["targets"] == targets and r.get("first", 0) == first
                       and (not first or r["n"] == n)), key=order)
        title = f"## {targets} targets" + (f", tuning slice: test images {first}–{first + n - 1}"
                                           if first else "")
        lines += [title, "",
                  "| start | guidance | scale | η | keep | min change | t* | n | flip | kept | mean abs Δ | FD | seconds* |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['start']} | {r['kind']} | {r['scale']:g} | {r['eta']:g} | {r['keep']:g} | "
                  f"{r['min_change']:g} | {t_star_cell(r)} | "
                  f"{r['n']} | {r['flip_rate']:.3f} | {r['kept_rate']:.3f} | {r['l1']:.3f} | "
                  f"{r['fd']:.1f} | {r['seconds']:.0f} |" for r in rows]
        lines.append("")
    lines += ["*Wall time on a 2-core CPU shared with other jobs: an order of magnitude only.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
