"""The conditional samplers side by side on one shipped joint model, same seeds, judged by the evaluator.

    python benchmarks/bench_samplers.py --table main --per-class 50 --json docs/samplers.json
    python benchmarks/bench_samplers.py --table grid --per-class 10 --json docs/samplers.json
    python benchmarks/bench_samplers.py --table maps --per-class 10 --json docs/samplers.json
    python benchmarks/bench_samplers.py --table inner --per-class 10 --json docs/samplers.json
    python benchmarks/bench_samplers.py --table method --per-class 5 --json docs/samplers.json
    python benchmarks/bench_samplers.py --render --json docs/samplers.json --out docs/samplers.md

Tables (each measured on ``--model``, DDIM-``--steps`` at η = 1 unless the row says otherwise):
``main``: unconditional samples (the chance level and the FD to beat), the paper's sampler
(``Guidance("representation")``: the authors' total derivative and sign), the x̂₀ variant and
classifier guidance; ``grid``: the paper's sampler over gradient rule (total / direct) × direction
(descent, the authors' / ascent) × γ; ``maps``: which maps move (all / lowest / highest
resolution); ``inner``: 1 vs 3 feature updates per step; ``method``: ancestral DDPM over every
step vs DDIM. Each row: evaluator agreement with the requested class (overall and per class),
the model's own head's agreement on the same samples, FD against as many class-matched test
images, precision, recall and wall time. Rows of the same table, model and name are replaced in
``--json``; everything else there is kept.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

import jdm
from jdm.utils import hardware_string
from jdm.data import CLASS_NAMES, load_tensors
from jdm.evaluate import evaluate_conditional
from jdm.evaluator import load_evaluator

G = jdm.Guidance
PAPER_GAMMA = 100.0  # the best γ of the authors' rule in the grid (docs/samplers.md)


def table_rows(table: str) -> list[tuple[str, G | None, dict]]:
    """(row name, guidance or None for unconditional, extra sampling kwargs) for one table."""
    if table == "main":
        return [("unconditional", None, {}),
                ("representation (paper: total, descent)", G("representation"), {}),
                ("representation-x0 (jdm variant)", G("representation-x0"), {}),
                ("classifier guidance", G("classifier"), {})]
    if table == "grid":
        gammas = {("total", "descent"): (10, 100, 1000), ("total", "ascent"): (100, 1000),
                  ("direct", "descent"): (100, 1000), ("direct", "ascent"): (300, 1000)}
        return [(f"{rule}, {direction}, γ={g:g}",
                 G("representation", scale=g, gradient=rule, direction=direction), {})
                for (rule, direction), gs in gammas.items() for g in gs]
    if table == "maps":
        return [(f"maps: {levels}", G("representation", levels=levels), {})
                for levels in ("all", "lowest", "highest")]
    if table == "inner":
        return [(f"inner steps: {k}", G("representation", inner_steps=k), {}) for k in (1, 3)]
    if table == "method":
        return [("DDIM-50 (η = 1)", G("representation"), {"method": "ddim", "steps": 50}),
                ("ancestral DDPM, every step", G("representation"), {"method": "ddpm", "steps": None})]
    raise ValueError(f"unknown table {table!r}")


def measure(model, evaluator, test_x, test_y, guidance, per_class: int, seed: int, **sampling) -> dict:
    """One row: the evaluator's verdict on ``per_class`` samples of each class, and the model's own."""
    res = evaluate_conditional(model, evaluator, test_x, test_y, per_class=per_class,
                               guidance=guidance, conditional=guidance is not None,
                               seed=seed, progress=False, **sampling)
    own = (model.predict(res["samples"]) == res["labels"]).double().mean().item()
    return {**{k: res[k] for k in ("agreement", "fd", "precision", "recall", "seconds")},
            "own_head_agreement": own, "agreement_per_class": res["agreement_per_class"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="jdm-fmnist")
    p.add_argument("--table", default="main", choices=("main", "grid", "maps", "inner", "method"))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (rows that set their own keep them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="run only the rows whose name holds one of these")
    p.add_argument("--render", action="store_true", help="measure nothing: write --out from --json")
    p.add_argument("--json", type=Path, default=None, help="merge the results into this JSON report")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = p.parse_args()
    if args.render:
        args.out.write_text(markdown_report(json.loads(args.json.read_text())))
        return

    model = jdm.load_pretrained(args.model)
    evaluator = load_evaluator()
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    rows = table_rows(args.table)
    if args.only:
        rows = [r for r in rows if any(o in r[0] for o in args.only)]
    report = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {"tables": []}
    for name, guidance, sampling in rows:
        sampling = {"steps": args.steps, **sampling}
        row = {"table": args.table, "model": args.model, "sampler": name,
               "guidance": str(guidance.resolve()) if guidance else "none",
               "per_class": args.per_class, "method": sampling.get("method", "ddim"),
               "steps": sampling["steps"], "seed": args.seed,
               **measure(model, evaluator, test_x, test_y, guidance, args.per_class, args.seed, **sampling),
               "hardware": hardware_string(torch.device("cpu")),
               "command": "python benchmarks/bench_samplers.py " + shlex.join(sys.argv[1:])}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                          if k not in ("agreement_per_class", "hardware", "command")}), flush=True)
        key = (row["table"], row["model"], row["sampler"])
        report["tables"] = [r for r in report["tables"]
                            if (r["table"], r["model"], r["sampler"]) != key] + [row]
        if args.json:  # after every row: a long run stopped half-way keeps what it measured
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.out:
        args.out.write_text(markdown_report(report))


TITLES = {"main": "The samplers side by side", "grid": "The paper's sampler: gradient rule × direction × γ",
          "maps": "Which feature maps move", "inner": "Feature updates per reverse step",
          "method": "Ancestral DDPM vs DDIM",
          "legacy": "Before the authors' rule: jdm's direct gradient and ascent (until December 2026)",
          "legacy-sweep": "γ of jdm's former rule (direct, ascent), DDIM-20"}


def markdown_report(report: dict) -> str:
    """docs/samplers.md: one table per (table, model), each row with its command."""
    names = [n.split("/")[0] for n in CLASS_NAMES["fashion_mnist"]]
    lines = ["# The conditional samplers, measured", "",
             "Generated from `docs/samplers.json` by `python benchmarks/bench_samplers.py --render "
             "--json docs/samplers.json --out docs/samplers.md`. Agreement: the share of samples the "
             "independent evaluator CNN assigns to the requested class (chance 0.1); own head: the "
             "same for the model's own classifier head on the same samples. FD: Fréchet distance in "
             "the evaluator's features against as many class-matched test images. Seed 0 for every "
             "row, so rows of one table start from the same noise. The paper's sampler "
             "(`Guidance(\"representation\")`) steps each feature map by +γ·dCE/dz with its total "
             "derivative through the encoder, as the authors' script does; `direct` and `ascent` "
             "are the ablations (`jdm.sampling.GRADIENT_RULES`, `DIRECTIONS`).", ""]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in report["tables"]:
        groups.setdefault((r["table"], r["model"]), []).append(r)
    # the current tables first, the measurements of the former rule last
    for (table, model), rows in sorted(groups.items(), key=lambda kv: kv[0][0].startswith("legacy")):
        first = rows[0]
        lines += [f"## {TITLES.get(table, table)} — `{model}`", "",
                  f"{first['per_class']} samples per class ({10 * first['per_class']} per row), "
                  f"{'DDIM-' + str(first['steps']) if first['method'] == 'ddim' else 'ancestral DDPM'}"
                  f" unless the row says otherwise; {first['hardware']}.", "",
                  "| sampler | agreement | own head | FD | precision | recall | seconds* | weakest class |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:  # rows measured before a column existed show "–" there
            per_class = {int(c): a for c, a in r.get("agreement_per_class", {}).items()}
            worst = min(per_class, key=per_class.get) if per_class else None
            own = f"{r['own_head_agreement']:.3f}" if "own_head_agreement" in r else "–"
            seconds = f"{r['seconds']:.0f}" if "seconds" in r else "–"
            weakest = f"{names[worst]} {per_class[worst]:.2f}" if per_class else "–"
            lines.append(f"| {r['sampler']} | {r['agreement']:.3f} | {own} | {r['fd']:.1f} | "
                         f"{r['precision']:.2f} | {r['recall']:.2f} | {seconds} | {weakest} |")
        commands = dict.fromkeys(r["command"] for r in rows)  # distinct, in order
        lines += ["", "Measured by " + "; ".join(f"`{c}`" for c in commands) + ".", ""]
    lines += ["*Wall time on a CPU shared with other jobs whose load changed between rows: an order "
              "of magnitude, not a comparison between rows.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
