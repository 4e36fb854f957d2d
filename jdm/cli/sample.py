"""``jdm sample`` (a grid from a checkpoint) and ``jdm demo`` (the course in one figure,
``jdm.demo``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..cli_types import COUNT, DEVICE_HELP, POSITIVE, SEED, HelpFormatter, float_in, int_in
from ..outputs import check_output, save_grid
from ..utils import get_device


def add_sample(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="draw images from a trained checkpoint into one grid image",
        description="Load a checkpoint written by 'jdm train' (or a shipped weights file) and "
                    "save a grid of samples.",
        formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="checkpoint file written by 'jdm train' (e.g. runs/x/last.pt), or a "
                        "shipped one (e.g. data/checkpoints/ddpm-fmnist-small.pt, or NAME.pt.gz)")
    p.add_argument("--n", type=COUNT, default=64, help="number of images")
    p.add_argument("--method", choices=["ddpm", "ddim"], default="ddim",
                   help="ddim: few deterministic steps (Song et al.); ddpm: ancestral, all T steps")
    p.add_argument("--ddim-steps", type=POSITIVE, default=None,
                   help="DDIM steps, at most the model's T (default 50); not allowed with "
                        "ddpm, which uses every step")
    p.add_argument("--eta", type=float_in(0.0), default=0.0,
                   help="DDIM noise: 0 = deterministic, 1 = as much noise as DDPM")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the starting noise")
    p.add_argument("--raw", action="store_true",
                   help="use the raw trained weights instead of their EMA")
    p.add_argument("--out", type=Path, required=True,
                   help="image file for the grid; the extension picks the format (e.g. .png)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from ..pretrained import load_checkpoint_model

    if args.method == "ddpm" and (args.ddim_steps is not None or args.eta != 0.0):
        raise ValueError("--ddim-steps and --eta only apply to --method ddim; ancestral DDPM "
                         "visits every timestep")
    check_output(args.out, "image")
    if args.checkpoint.is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint} is a directory; pass a checkpoint file, "
                         f"e.g. {args.checkpoint / 'last.pt'} or data/checkpoints/NAME.pt(.gz)")
    device = get_device(args.device)
    model = load_checkpoint_model(args.checkpoint, ema=not args.raw, device=device)
    if not hasattr(model, "sample"):
        raise ValueError(f"{args.checkpoint} holds a {model.kind!r} model, which does not "
                         "generate; pass a DDPM or joint checkpoint")
    T = model.schedule.num_steps
    if args.ddim_steps is not None and args.ddim_steps > T:
        raise ValueError(f"--ddim-steps {args.ddim_steps} is more than the model's T = {T} "
                         f"diffusion steps; use at most {T}")
    steps = (args.ddim_steps or 50) if args.method == "ddim" else None
    images = model.sample(args.n, method=args.method, steps=steps, eta=args.eta,
                          generator=torch.Generator().manual_seed(args.seed),
                          progress=not args.no_progress)
    print(f"wrote {save_grid(images.cpu(), args.out)} ({args.n} images, {args.method}, "
          f"{min(steps, T) if steps else T} steps)")
    return 0


def add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the course in one figure: one shipped joint model classifies, generates on "
                     "request and explains",
        description="Load the shipped joint model, measure its test accuracy, draw class-conditional "
                    "samples (a row per class) and counterfactuals of a few test images towards the "
                    "class the model ranks second, and save all three as one figure (jdm.demo). "
                    "Runs offline in under a minute on a CPU.",
        formatter_class=HelpFormatter)
    p.add_argument("--model", default="jdm-fmnist",
                   help="name of a shipped joint checkpoint (see jdm.list_pretrained())")
    p.add_argument("--test-images", type=POSITIVE, default=2_000,
                   help="measure the test accuracy on the first N Fashion-MNIST test images "
                        "(10000: all of them, about a minute more on a 2-core CPU)")
    p.add_argument("--samples-per-class", type=int_in(1, 1000), default=3,
                   help="conditional samples drawn for each class (default guidance)")
    p.add_argument("--ddim-steps", type=POSITIVE, default=20,
                   help="DDIM steps of the conditional samples")
    p.add_argument("--counterfactuals", type=int_in(1, 1000), default=4,
                   help="test images explained (jdm.counterfactual with its defaults)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the samples and counterfactuals")
    p.add_argument("--out", type=Path, default=Path("jdm-demo.png"),
                   help="image file for the figure (e.g. .png)")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..demo import demo

    check_output(args.out, "image")
    s = demo(args.model, test_images=args.test_images, samples_per_class=args.samples_per_class,
             ddim_steps=args.ddim_steps, counterfactuals=args.counterfactuals, seed=args.seed,
             out=args.out, device=args.device)
    print(f"{s['model']}: test accuracy {s['accuracy']:.4f} on {s['test_images']:,} Fashion-MNIST "
          "test images")
    print(f"wrote {args.out}: {s['test_images']:,} test images classified, {s['samples']} "
          f"conditional samples ({s['sampler']}), {s['counterfactuals']} counterfactuals by "
          f"{s['counterfactual_sampler']} ({s['flipped']} judged the target class by the "
          f"evaluator) in {s['seconds']:.0f} s on {s['device']}")
    return 0


