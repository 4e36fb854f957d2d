"""``jdm explain`` (a counterfactual gallery) and ``jdm evaluate`` (samples or counterfactuals
measured by the evaluator). Their sampler and counterfactual flags are generated from
``jdm.Guidance`` and ``jdm.counterfactual.CounterfactualSettings``."""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import torch

from ..cli_types import (COUNT, DEVICE_HELP, FINITE, NON_NEGATIVE, POSITIVE, SEED, HelpFormatter,
                         add_field_flags, fields_from_flags, float_in, int_in, t_star_value)
from ..outputs import check_output, write_atomically
from ..utils import get_device, hardware_string


_SETTINGS_TYPES = {"t_star": t_star_value, "keep": FINITE, "min_change": FINITE,
                   "steps": POSITIVE, "t_star_rule": FINITE}
_GUIDANCE_TYPES = {"scale": FINITE, "inner_steps": int_in(1, 1000), "eta": float_in(0.0)}


def _add_model_flags(p, what: str) -> None:
    """The settings and sampler flags (generated from ``CounterfactualSettings`` and
    ``Guidance``), the model, the seed and the device."""
    from ..counterfactual import CounterfactualSettings
    from ..sampling import Guidance

    add_field_flags(p, CounterfactualSettings, _SETTINGS_TYPES,
                    extra={"t_star": {"nargs": "+"}} if what == "evaluate" else None)
    add_field_flags(p, Guidance, _GUIDANCE_TYPES)
    p.add_argument("--model", default="jdm-fmnist",
                   help="name of a shipped joint checkpoint (see jdm.list_pretrained()); its "
                        "manifest's tuned defaults (t* rule, guidance scales) come with it")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the noise")
    p.add_argument("--device", default=None, help=DEVICE_HELP)


def _joint_model(args: argparse.Namespace):
    from ..joint import JointDiffusion
    from ..pretrained import load_pretrained

    model = load_pretrained(args.model, device=get_device(args.device))
    if not isinstance(model, JointDiffusion):
        raise ValueError(f"{args.model!r} is not a joint model; {args.command} needs its "
                         "classifier head (e.g. jdm-fmnist)")
    return model


def _class_index(text: str, names: list[str]) -> int:
    """A class given as an index ("0") or a name ("T-shirt/top", "t-shirt", case-insensitive)."""
    if text.isascii() and text.isdigit():
        if int(text) >= len(names):
            raise ValueError(f"--target {text} is not a class: use an index 0..{len(names) - 1} "
                             "or a name (" + ", ".join(names) + ")")
        return int(text)
    lowered = {name.lower(): i for i, name in enumerate(names)}
    lowered.update({name.lower().split("/")[0]: i for i, name in enumerate(names)})
    if text.lower() not in lowered:
        raise ValueError(f"--target: unknown class {text!r}; use an index 0..{len(names) - 1} or "
                         "one of: " + ", ".join(names))
    return lowered[text.lower()]


def add_explain(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="visual counterfactual explanations of test images, as one gallery PNG",
        description="Take Fashion-MNIST test images to step t* (DDIM inversion, or fresh noise "
                    "with --start noise) and run the joint model's conditional reverse process "
                    "towards a target class (jdm.counterfactual); save originals, counterfactuals "
                    "and their differences as one figure, and print what the independent "
                    "evaluator network says before and after.",
        formatter_class=HelpFormatter)
    p.add_argument("--image-index", type=NON_NEGATIVE, nargs="+", required=True,
                   help="test-set indices of the images to explain")
    p.add_argument("--target", nargs="+", required=True,
                   help="target class (index or name, e.g. 0 or T-shirt): one for all images, or "
                        "one per image")
    _add_model_flags(p, "explain")
    p.add_argument("--out", type=Path, default=Path("jdm-explain.png"),
                   help="image file for the gallery (e.g. .png)")
    p.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    check_output(args.out, "image")
    import matplotlib

    matplotlib.use("Agg")
    from ..counterfactual import CounterfactualSettings, counterfactual
    from ..data import CLASS_NAMES, load_tensors
    from ..evaluator import load_evaluator
    from ..metrics import image_distances
    from ..sampling import Guidance
    from ..viz import counterfactual_gallery

    names = CLASS_NAMES["fashion_mnist"]
    if len(args.target) not in (1, len(args.image_index)):
        raise ValueError(f"give one --target for all images or one per image "
                         f"({len(args.image_index)}), got {len(args.target)}")
    targets = [_class_index(t, names) for t in args.target] * (
        len(args.image_index) if len(args.target) == 1 else 1)
    settings = fields_from_flags(CounterfactualSettings, args)
    guidance = fields_from_flags(Guidance, args)
    model = _joint_model(args)
    images, labels = load_tensors("fashion_mnist", train=False)
    bad = [i for i in args.image_index if i >= images.shape[0]]
    if bad:
        raise ValueError(f"--image-index must be below {images.shape[0]}, got {bad}")
    x, y = images[args.image_index], labels[args.image_index]
    made = counterfactual(model, x, torch.tensor(targets), settings, guidance,
                          generator=torch.Generator().manual_seed(args.seed))
    x_cf = made.images.cpu()
    evaluator = load_evaluator(x_cf.device)
    before, after = evaluator.predict(x).tolist(), evaluator.predict(x_cf).tolist()
    short = [n.split("/")[0] for n in names]
    counterfactual_gallery(x, x_cf, [f"{short[a]} → {short[b]}" for a, b in zip(y.tolist(), targets)],
                           path=args.out)
    for i, a, b, t, d, ts in zip(args.image_index, before, after, targets,
                                 (x_cf - x).abs().flatten(1).mean(1).tolist(), made.t_star.tolist()):
        print(f"test image {i} ({names[int(labels[i])]}): evaluator {names[a]} → {names[b]} "
              f"(target {names[t]}{', flipped' if b == t else ', not flipped'}); t* {ts}, "
              f"mean |Δ| {d:.3f}")
    flips = sum(b == t for b, t in zip(after, targets))
    s = made.settings
    print(f"wrote {args.out}: {flips}/{len(targets)} flipped to the target, mean |Δ| "
          f"{image_distances(x, x_cf)['l1']:.3f} (t* = {s.t_star}, start {s.start}, keep "
          f"{s.keep:g}, min change {s.min_change:g}, {made.guidance})")
    return 0


def add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="measure conditional samples or counterfactuals with the evaluator",
        description="conditional: draw --per-class samples of every class and report the "
                    "evaluator's agreement with the requested class, FD (overall and per class) "
                    "and precision/recall. counterfactual: explain the first --n test images "
                    "towards --targets at each --t-star and report flip rate, L1/L2 distance "
                    "and FD against real images of the target classes (jdm.evaluate).",
        formatter_class=HelpFormatter)
    p.add_argument("what", choices=["conditional", "counterfactual"], help="what to measure")
    p.add_argument("--per-class", type=int_in(2, 10_000), default=100,
                   help="conditional: samples per class")
    p.add_argument("--n", type=int_in(2, 10_000), default=1000,
                   help="counterfactual: number of test images explained")
    p.add_argument("--targets", choices=["runner-up", "random"], default="runner-up",
                   help="counterfactual: each image's target is the class the model ranks second, "
                        "or a random other class")
    p.add_argument("--batch-size", type=COUNT, default=250, help="images per sampler call")
    _add_model_flags(p, "evaluate")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    check_output(args.json, "json", "--json", report_keys=("what", "results"))
    from dataclasses import asdict

    from ..counterfactual import CounterfactualSettings
    from ..data import load_tensors
    from ..evaluate import (evaluate_conditional, evaluate_counterfactuals, other_class_targets,
                           runner_up_targets)
    from ..evaluator import load_evaluator
    from ..sampling import Guidance

    guidance = fields_from_flags(Guidance, args)
    settings = [fields_from_flags(CounterfactualSettings, args, t_star=t)
                for t in args.t_star or [CounterfactualSettings.t_star]]
    model = _joint_model(args)
    device = next(model.parameters()).device
    evaluator = load_evaluator(device)
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    rows = []
    if args.what == "conditional":
        res = evaluate_conditional(model, evaluator, test_x, test_y, per_class=args.per_class,
                                   guidance=guidance, steps=args.steps, seed=args.seed,
                                   batch_size=args.batch_size)
        rows.append({"guidance": str(guidance.resolve()),
                     **{k: v for k, v in res.items() if k not in ("samples", "labels")}})
    else:
        if args.n > test_x.shape[0]:
            raise ValueError(f"--n must be at most {test_x.shape[0]}, got {args.n}")
        x, y = test_x[:args.n], test_y[:args.n]
        targets = (runner_up_targets(model, x) if args.targets == "runner-up" else
                   other_class_targets(y, model.num_classes, torch.Generator().manual_seed(args.seed)))
        for each in settings:
            res = evaluate_counterfactuals(model, evaluator, x, y, targets, test_x, test_y,
                                           settings=each, guidance=guidance, seed=args.seed,
                                           batch_size=args.batch_size, exclude=torch.arange(args.n))
            rows.append({"targets": args.targets, **asdict(res["settings"]),
                         "t_star": each.t_star, "guidance": str(res["guidance"]),
                         **{k: v for k, v in res.items() if k not in (
                             "counterfactuals", "predictions", "t_star", "settings", "guidance")}})
    report = {"what": args.what, "model": args.model, "command": "python -m jdm " +
              shlex.join(args.argv), "hardware": hardware_string(device), "results": rows}
    for row in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if not isinstance(v, (dict, list, tuple))}))
    if args.json is not None:
        write_atomically(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
        print(f"wrote {args.json}")
    return 0


