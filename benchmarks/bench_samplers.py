"""The conditional samplers side by side on one shipped joint model, same seeds, judged by the evaluator.

    python benchmarks/bench_samplers.py --per-class 50 --steps 50 --json docs/samplers.json --out docs/samplers.md
    python benchmarks/bench_samplers.py --sweep --per-class 10 --steps 20 --json docs/samplers.json
    python benchmarks/bench_samplers.py --only classifier --json docs/samplers.json   # one row

Rows: unconditional samples (the chance level and the FD to beat), the paper's sampler
(optimised representations, the head on z_t) with the model's noise-aware head and with a head
trained on clean images only (the head the paper's recipe trains; fitted here on the frozen
encoder's clean features, so the encoder and decoder are the same), the x̂₀ variant, and
classifier guidance. Each row: evaluator agreement with the requested class (overall and per
class), FD against as many class-matched test images, precision, recall and wall time.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import jdm
from jdm.__main__ import hardware_string
from jdm.classifier import ClassifierHead, pool_features
from jdm.data import CLASS_NAMES, load_tensors
from jdm.evaluate import evaluate_conditional
from jdm.evaluator import load_evaluator
from jdm.utils import eval_mode


@torch.no_grad()
def _pooled_clean_features(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N, D) pooled encoder features of clean images (t = 0): the head's input."""
    out = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            out.append(pool_features(model.unet.encode(x, torch.zeros(len(x), dtype=torch.long))))
    return torch.cat(out)


def with_clean_head(model, images, labels, test_images, test_labels, epochs: int = 30, seed: int = 0):
    """A copy of ``model`` whose head is retrained on clean features only (t = 0), as the paper's
    joint loss trains it; the UNet is shared and frozen. Returns (model copy, test accuracy)."""
    torch.manual_seed(seed)
    feats, test_feats = _pooled_clean_features(model, images), _pooled_clean_features(model, test_images)
    old = model.head
    head = ClassifierHead(old.feature_channels, old.num_classes, old.hidden, old.dropout_p)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(feats)).split(256):
            loss = F.cross_entropy(head.mlp(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        acc = (head.mlp(test_feats).argmax(1) == test_labels).float().mean().item()
    clean = copy.deepcopy(model)  # the same UNet weights, the new head, never noise-aware
    clean.head, clean.noise_aware = head, False
    return clean, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="joint-fmnist-small")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="sweep γ/s instead of the main table")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: write --out from the --json report")
    p.add_argument("--only", nargs="*", default=None, help="run only these rows (by name)")
    p.add_argument("--head-images", type=int, default=20000,
                   help="training images for the clean-only head")
    p.add_argument("--json", type=Path, default=None,
                   help="merge the results into this JSON report (rows of the same name replaced)")
    p.add_argument("--out", type=Path, default=None, help="write a markdown table here")
    args = p.parse_args()
    if args.render:
        args.out.write_text(markdown_report(json.loads(args.json.read_text())))
        return

    model = jdm.load_pretrained(args.model)
    evaluator = load_evaluator()
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    train_x, train_y = load_tensors("fashion_mnist", train=True)
    G = jdm.Guidance
    CLEAN = "clean"  # stands for the model with a clean-only head, fitted only if a row needs it
    if args.sweep:
        rows = [(f"representation γ={s:g}", model, G("representation", scale=s)) for s in (100, 300, 1000, 3000, 10000)]
        rows += [(f"representation, clean head γ={s:g}", CLEAN, G("representation", scale=s)) for s in (100, 1000, 10000)]
    else:
        rows = [("unconditional", model, None),
                ("representation (paper), noise-aware head", model, G("representation")),
                ("representation (paper), clean-only head", CLEAN, G("representation")),
                ("representation-x0 (jdm variant)", model, G("representation-x0")),
                ("classifier guidance", model, G("classifier"))]
    if args.only:
        rows = [r for r in rows if any(o in r[0] for o in args.only)]
    clean_acc = None
    if any(m is CLEAN for _, m, _ in rows):
        t0 = time.perf_counter()
        clean, clean_acc = with_clean_head(model, train_x[:args.head_images],
                                           train_y[:args.head_images], test_x, test_y)
        print(f"clean-only head: test accuracy {clean_acc:.4f} ({args.head_images} training "
              f"images, {time.perf_counter() - t0:.0f} s)", flush=True)
        rows = [(name, clean if m is CLEAN else m, g) for name, m, g in rows]
    results = []
    for name, m, guidance in rows:
        res = evaluate_conditional(m, evaluator, test_x, test_y, per_class=args.per_class,
                                   guidance=guidance, conditional=guidance is not None,
                                   steps=args.steps, seed=args.seed, progress=False)
        row = {"sampler": name,
               "guidance": str(guidance.resolve(m.noise_aware)) if guidance else "none",
               **{k: res[k] for k in ("agreement", "fd", "precision", "recall", "seconds")},
               "agreement_per_class": res["agreement_per_class"]}
        results.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
                          if k != "agreement_per_class"}), flush=True)
    # merge into the JSON report: rows of the same name are replaced, others kept (the table can
    # be measured in parts, e.g. one sampler at a time, and stays one file)
    report = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    key = "sweep" if args.sweep else "rows"
    report[f"{key}_settings"] = {
        "model": args.model, "per_class": args.per_class, "steps": args.steps, "seed": args.seed,
        "hardware": hardware_string(torch.device("cpu")),
        "command": "python benchmarks/bench_samplers.py " + " ".join(sys.argv[1:])}
    if clean_acc is not None:
        report["clean_head_test_accuracy"] = clean_acc
    merged = {r["sampler"]: r for r in report.get(key, [])}
    merged.update({r["sampler"]: r for r in results})
    report[key] = list(merged.values())
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.out:
        args.out.write_text(markdown_report(report))


def markdown_report(report: dict) -> str:
    """docs/samplers.md: the main table and the γ sweep, with the commands that measured them."""
    names = [n.split("/")[0] for n in CLASS_NAMES["fashion_mnist"]]
    settings = report.get("rows_settings", {})
    lines = ["# The conditional samplers, measured",
             "",
             "Generated from `docs/samplers.json` by `python benchmarks/bench_samplers.py --render "
             "--json docs/samplers.json --out docs/samplers.md`; every number is the evaluator's "
             "verdict (never the model's own head). Agreement: the share of samples the evaluator "
             "assigns to the requested class (chance 0.1). FD: Fréchet distance in the evaluator's "
             "features against as many class-matched test images.",
             ""]
    if settings:
        lines += [f"Model `{settings['model']}`, {settings['per_class']} samples per class "
                  f"({10 * settings['per_class']} per row), DDIM-{settings['steps']}, η = 1, seed "
                  f"{settings['seed']} for every row; {settings['hardware']}. Command: "
                  f"`{settings['command']}` (rows measured in parts and merged).", ""]
        if "clean_head_test_accuracy" in report:
            lines += [f"The clean-only head (fitted on the frozen encoder's clean features, as the "
                      f"paper's joint loss trains it) scores {report['clean_head_test_accuracy']:.3f} "
                      "test accuracy.", ""]
        lines += ["| sampler | agreement | FD | precision | recall | seconds* | weakest class |",
                  "|---|---|---|---|---|---|---|"]
        for r in report.get("rows", []):
            per_class = {int(c): a for c, a in r["agreement_per_class"].items()}
            worst = min(per_class, key=per_class.get)
            lines.append(f"| {r['sampler']} | {r['agreement']:.3f} | {r['fd']:.1f} | "
                         f"{r['precision']:.2f} | {r['recall']:.2f} | {r['seconds']:.0f} | "
                         f"{names[worst]} {per_class[worst]:.2f} |")
        lines += ["", "*Wall time on a CPU shared with other jobs whose load changed between rows: "
                  "an order of magnitude, not a comparison between rows.", ""]
    sweep = report.get("sweep_settings")
    if sweep:
        lines += [f"Step size γ of the paper's sampler: {sweep['per_class']} samples per class, "
                  f"DDIM-{sweep['steps']}. Command: `{sweep['command']}`."
                  + (f" {sweep['note']}." if sweep.get("note") else ""), "",
                  "| sampler | agreement | FD | precision | recall |", "|---|---|---|---|---|"]
        lines += [f"| {r['sampler']} | {r['agreement']:.2f} | {r['fd']:.1f} | {r['precision']:.2f} | "
                  f"{r['recall']:.2f} |" for r in report.get("sweep", [])]
    return "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
