"""The command line: ``python -m jdm <command>`` (or ``jdm <command>`` once installed).

    python -m jdm train --config tiny --limit 256 --steps 3 --timesteps 50 --out runs/try
    python -m jdm sample --checkpoint runs/try/last.pt --n 16 --out samples.png

Each command is a pair of functions: ``add_<name>(subparsers)`` declares its flags and points
``func`` at ``run_<name>(args)``, which returns the exit status. To add a command, write the pair
and list ``add_<name>`` in ``COMMANDS``. ``ValueError`` and every ``OSError`` (missing file, read-only
or full disk, …) raised by a command become one error line and exit status 2; a diverged training
run exits with status 1, an interrupted one (Ctrl-C, SIGTERM) with 128 + the signal's number after
saving its checkpoint and printing the command that resumes it. Output paths are checked
(``check_out``) before any work starts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .cli_types import float_in, int_in
from .data import DATASETS
from .inputs import MAX_BATCH, SEED_LIMIT
from .outputs import check_output as check_out
from .outputs import write_atomically
from .divergence import TrainingDiverged
from .interrupts import TrainingInterrupted
from .runlock import RunLock
from .train import TrainConfig
from .unet import UNET_PRESETS
from .utils import get_device

__all__ = ["main", "build_parser", "COMMANDS"]

_TRAIN = TrainConfig()  # its defaults are the CLI's defaults


_positive_int, _non_negative_int = int_in(1), int_in(0)
_count = int_in(1, MAX_BATCH)  # images in one request: more is a typo, refused before allocating
_seed = int_in(0, SEED_LIMIT - 1)
_finite = float_in()
_share = float_in(0.0, 1.0)  # dropouts: 0 … 1
MIN_FD_SAMPLES = 4  # precision/recall use k = 3 nearest neighbours: at least 4 images a set


def _t_star(text: str) -> int | str:
    """A counterfactual's --t-star: 'auto' (each image its own) or a positive int."""
    return "auto" if text == "auto" else _positive_int(text)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in its help, unless there is none worth showing (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def hardware_string(device: torch.device) -> str:
    """Where a run happened, for logs and checkpoint manifests, e.g. 'NVIDIA H100 …, torch 2.x'."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.processor() or platform.machine()}")
    return (f"{name} ({device.type}), {os.cpu_count()} CPU cores, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def save_grid(images: torch.Tensor, path: str | Path) -> Path:
    """Save images (N, C, H, W) in [-1, 1] as one roughly square grid image (PNG, JPEG, …),
    atomically: an interruption leaves no partial file."""
    from torchvision.utils import save_image

    path = Path(path)
    if not path.suffix:
        raise ValueError(f"{path} has no file extension; use e.g. samples.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: save_image(
        images, tmp, nrow=math.ceil(math.sqrt(images.shape[0])), normalize=True,
        value_range=(-1, 1)))


# ---------------------------------------------------------------------------------- train
def add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a diffusion model and write a checkpoint, a sample grid and a log",
        description="Train a model on a dataset. Writes OUT/last.pt (every --checkpoint-every "
                    "steps and at the end), OUT/samples.png (EMA model, DDIM) and "
                    "OUT/train_log.json (history, wall time, command, hardware).",
        formatter_class=_HelpFormatter)
    p.add_argument("--model", choices=["ddpm", "joint", "classifier", "evaluator"], default="ddpm",
                   help="which model to train: ddpm = plain DDPM (ε-prediction UNet); joint = "
                        "joint diffusion (DDPM + classifier head on the shared encoder, needs "
                        "labels); classifier = the same encoder and head trained with "
                        "cross-entropy only (the baseline); evaluator = the small CNN classifier "
                        "used for metrics (ignores the UNet and diffusion flags)")
    p.add_argument("--config", choices=sorted(UNET_PRESETS), default="fmnist-small",
                   help="UNet preset (jdm.unet.UNET_PRESETS); 'tiny' is for quick checks")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion_mnist",
                   help="training set; Fashion-MNIST ships with the project, the others download")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N training images (quick runs); default: all")
    p.add_argument("--steps", type=_positive_int, default=_TRAIN.steps,
                   help="total optimiser steps (a resumed run continues up to this number)")
    p.add_argument("--batch-size", type=_count, default=_TRAIN.batch_size,
                   help="images per optimiser step")
    p.add_argument("--lr", type=_finite, default=_TRAIN.lr, help="AdamW learning rate")
    p.add_argument("--warmup-steps", type=_non_negative_int, default=_TRAIN.warmup_steps,
                   help="linear learning-rate warm-up over this many steps (0 = none)")
    p.add_argument("--ema-decay", type=_finite, default=_TRAIN.ema_decay,
                   help="EMA decay in [0, 1) (warmed up as min(decay, (1+step)/(10+step)))")
    p.add_argument("--timesteps", type=int_in(1, 100_000), default=1000,
                   help="T, the number of diffusion steps")
    p.add_argument("--schedule", choices=["linear", "cosine"], default="linear",
                   help="noise schedule: linear β 1e-4→0.02 (DDPM) or cosine (Nichol & Dhariwal)")
    p.add_argument("--dropout", type=_share, default=None,
                   help="dropout inside the UNet's ResBlocks; default: the preset's value")
    p.add_argument("--alpha", type=float_in(0.0), default=None,
                   help="joint: weight α of the classification loss (L = L_simple + α·CE, both "
                        "means); default jdm.joint.DEFAULT_ALPHA")
    p.add_argument("--noise-aware", action="store_true",
                   help="joint: also train the head on noisy (x_t, t) features (for guidance)")
    p.add_argument("--augment", action="store_true",
                   help="joint, classifier: random flip + translation of the classifier's clean "
                        "images")
    p.add_argument("--head-hidden", type=int_in(1, 16_384), default=256,
                   help="joint, classifier: hidden width of the classifier head's MLP")
    p.add_argument("--head-dropout", type=_share, default=0.1,
                   help="joint, classifier: dropout in the classifier head")
    p.add_argument("--labels-per-class", type=_positive_int, default=None, metavar="K",
                   help="joint, classifier: semi-supervised run; keep the labels of K training "
                        "images per class (class-balanced, drawn with --label-seed) and mark the "
                        "rest −1 (the joint model trains only its diffusion loss on them, the "
                        "classifier skips them); the subset is written to OUT/train_log.json")
    p.add_argument("--label-fraction", type=_finite, default=None, metavar="F",
                   help="joint, classifier: like --labels-per-class, but keep a share F in (0, 1] "
                        "of each class's labels (1 = all)")
    p.add_argument("--label-seed", type=_seed, default=None,
                   help="seed of the labelled subset; default: --seed")
    p.add_argument("--labelled-batch-size", type=int_in(0, MAX_BATCH), default=None, metavar="L",
                   help="joint, classifier: every step = --batch-size images with labels hidden "
                        "(diffusion loss only) + L labelled images, so both models see the same "
                        "L labelled images a step (TrainConfig.labelled_batch_size); default: "
                        "--batch-size with a label budget, else 0 (plain batches)")
    p.add_argument("--test-limit", type=_positive_int, default=None,
                   help="classifiers (joint, evaluator): measure test accuracy and ECE on the "
                        "first N test images after training; default: the whole test split")
    p.add_argument("--fd-samples", type=int_in(0, 10_000), default=0,
                   help="generative models on Fashion-MNIST: after training, draw this many DDIM "
                        "samples and measure FD, precision and recall against as many test images "
                        "in the shipped evaluator's feature space (0 = skip)")
    p.add_argument("--export", default=None, metavar="NAME",
                   help="after training, ship the EMA weights as data/checkpoints/NAME.pt + "
                        "NAME.json (manifest with this command and the test metrics); NAME is a "
                        "plain name, checked before training starts")
    p.add_argument("--force", action="store_true",
                   help="let --export replace an existing checkpoint of the same kind (never one "
                        "of another kind)")
    p.add_argument("--seed", type=_seed, default=_TRAIN.seed,
                   help="seeds the weights, the batch order, the noise and the final samples")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder for last.pt, samples.png and train_log.json")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (exactly where it stopped; the model and data "
                        "flags must match); without OUT/last.pt, say so and start fresh")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu; default: the best available")
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=_TRAIN.checkpoint_every,
                   help="write OUT/last.pt every this many steps (0 = only at the end)")
    p.add_argument("--checkpoint-minutes", type=float_in(0.0), default=_TRAIN.checkpoint_minutes,
                   help="also write OUT/last.pt after this many minutes since the last one (0 = "
                        "never by time); Ctrl-C or SIGTERM always saves before stopping")
    p.add_argument("--log-every", type=_positive_int, default=_TRAIN.log_every,
                   help="add the mean loss to the history every this many steps")
    p.add_argument("--samples", type=_count, default=64,
                   help="number of images in OUT/samples.png")
    p.add_argument("--sample-steps", type=int_in(1, 100_000), default=50,
                   help="DDIM steps for OUT/samples.png")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--compile", nargs="?", const="default", default=False,
                   choices=["default", "reduce-overhead", "aot_eager"],
                   help="torch.compile the training loss, forward and backward, as one graph "
                        "(TrainConfig.compile; 'aot_eager' skips code generation); the first "
                        "steps pay minutes of compilation; measured speed-ups, CPU only so far: "
                        "benchmarks/README.md")
    p.set_defaults(func=run_train)


def _build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The untrained model the flags describe (checks the preset fits the dataset first)."""
    from .diffusion import DiffusionModel
    from .schedule import NoiseSchedule
    from .unet import UNet

    if args.model == "evaluator":
        from .evaluator import EvaluatorNet

        channels, size, _ = DATASETS[args.dataset][1]
        extra = {"dropout": args.dropout} if args.dropout is not None else {}
        return EvaluatorNet(image_channels=channels, image_size=size, **extra)
    unet_config = UNET_PRESETS[args.config]
    preset_shape = (unet_config.image_channels, unet_config.image_size, unet_config.image_size)
    data_shape = DATASETS[args.dataset][1]
    if preset_shape != data_shape:
        fitting = sorted(n for n, c in UNET_PRESETS.items()
                         if (c.image_channels, c.image_size, c.image_size) == data_shape)
        raise ValueError(f"--config {args.config} is for {preset_shape} images but {args.dataset} "
                         f"has {data_shape}; use one of {fitting or 'no preset yet'}")
    if args.dropout is not None:
        unet_config = replace(unet_config, dropout=args.dropout)
    unet_config.validate()
    unet, schedule = UNet(unet_config), NoiseSchedule(args.timesteps, args.schedule)
    if args.model == "joint":
        from .joint import DEFAULT_ALPHA, JointDiffusion

        alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
        return JointDiffusion(unet, schedule, alpha=alpha, noise_aware=args.noise_aware,
                              augment=args.augment, head_hidden=args.head_hidden, head_dropout=args.head_dropout)
    if args.model == "classifier":
        from .encoder_classifier import EncoderClassifier

        return EncoderClassifier(unet, augment=args.augment, head_hidden=args.head_hidden,
                                 head_dropout=args.head_dropout)
    return DiffusionModel(unet, schedule)


@torch.no_grad()
def _test_metrics(model: torch.nn.Module, dataset: str, limit: int | None,
                  device: torch.device) -> dict:
    """Test accuracy and ECE of a classifier (``classify(x)`` or ``forward(x)`` gives logits)."""
    from .data import load_tensors
    from .metrics import accuracy, expected_calibration_error

    images, labels = load_tensors(dataset, train=False)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    model.eval()
    logits_fn = getattr(model, "classify", model)
    logits = torch.cat([logits_fn(images[i:i + 500].to(device)).float().cpu()
                        for i in range(0, images.shape[0], 500)])
    return {"test_accuracy": round(accuracy(logits, labels), 4),
            "test_ece": round(expected_calibration_error(logits, labels), 4),
            "test_images": int(images.shape[0])}


@torch.no_grad()
def _generation_metrics(model: torch.nn.Module, args: argparse.Namespace,
                        device: torch.device) -> dict:
    """Held-out L_simple (fixed seed) and, on Fashion-MNIST with the shipped evaluator, FD,
    precision, recall and class balance of ``--fd-samples`` DDIM samples vs as many test images."""
    from .data import load_tensors
    from .metrics import class_balance, frechet_distance, precision_recall
    from .pretrained import list_pretrained

    images, _ = load_tensors(args.dataset, train=False)
    if args.test_limit is not None:
        images = images[:args.test_limit]
    model.eval()
    torch.manual_seed(0)  # the same t and ε for every model measured this way
    losses = [model.diffusion_loss(images[i:i + 500].to(device)).item()
              for i in range(0, images.shape[0], 500)]
    metrics = {"test_loss": round(sum(losses) / len(losses), 5)}
    n = min(args.fd_samples, images.shape[0])
    if n < 2 or args.dataset != "fashion_mnist" or "evaluator-fmnist" not in list_pretrained():
        return metrics
    from .evaluator import load_evaluator

    evaluator = load_evaluator(device)
    samples = torch.cat([model.sample(min(250, n - i), steps=50, progress=False,
                                      generator=torch.Generator().manual_seed(args.seed + i)).cpu()
                         for i in range(0, n, 250)])
    real, fake = evaluator.embed(images[:n]), evaluator.embed(samples)
    balance = class_balance(evaluator.predict(samples), evaluator.num_classes)
    metrics.update({"fd_evaluator": round(frechet_distance(real, fake), 3),
                    **{k: round(v, 4) for k, v in precision_recall(real, fake).items()},
                    "class_balance_entropy": round(balance["normalized_entropy"], 4),
                    "fd_samples": n, "fd_sampler": "ddim-50"})
    return metrics


def run_train(args: argparse.Namespace) -> int:
    """Check --out, then train while holding its lock (a second run on it is refused). Under
    ``torchrun`` every rank trains its share and rank 0 holds the lock (``jdm.distributed``)."""
    from contextlib import nullcontext

    from .distributed import init_distributed

    check_out(args.out, "folder")
    dist = init_distributed(get_device(args.device))  # None without torchrun
    with RunLock(args.out) if dist is None or dist.is_main else nullcontext():
        status = _train(args, dist)
    if dist is not None and status == 0:  # (a broken group could hang here: left to the exit)
        torch.distributed.destroy_process_group()
    return status


def _train(args: argparse.Namespace, dist=None) -> int:
    from contextlib import nullcontext

    from .data import load_tensors
    from .distributed import RankLost
    from .train import Trainer

    start = time.perf_counter()
    checkpoint = args.out / "last.pt"
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"{checkpoint} already exists: pass --resume to continue that run, or "
                         "choose another --out")
    _check_earlier_outputs(args.out, resuming=args.resume and checkpoint.is_file())
    _check_sizes(args)
    if args.model != "joint" and (args.alpha is not None or args.noise_aware):
        raise ValueError("--alpha and --noise-aware only apply to --model joint")
    if args.model not in ("joint", "classifier") and args.augment:
        raise ValueError("--augment only applies to --model joint or classifier")
    budget = args.labels_per_class is not None or args.label_fraction is not None
    if args.model not in ("joint", "classifier") and (
            budget or args.labelled_batch_size or args.label_seed is not None):
        raise ValueError("--labels-per-class, --label-fraction, --label-seed and "
                         "--labelled-batch-size only apply to --model joint or classifier")
    if args.labels_per_class is not None and args.label_fraction is not None:
        raise ValueError("give --labels-per-class or --label-fraction, not both")
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        raise ValueError(f"--label-fraction must lie in (0, 1] (1 = every label), got "
                         f"{args.label_fraction}")
    if args.label_seed is not None and not budget:
        raise ValueError("--label-seed needs --labels-per-class or --label-fraction")
    labelled_batch = (args.labelled_batch_size if args.labelled_batch_size is not None
                      else args.batch_size if budget else 0)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
                         log_every=args.log_every, checkpoint_every=args.checkpoint_every,
                         checkpoint_minutes=args.checkpoint_minutes, seed=args.seed,
                         compile=args.compile, labelled_batch_size=labelled_batch)
    device = get_device(args.device) if dist is None else dist.device
    torch.manual_seed(args.seed)  # the initial weights
    model = _build_model(args)
    if args.export:
        from .pretrained import check_export_name

        check_export_name(args.export, model.spec()["kind"], args.force)
    # last.pt holds weights, EMA and two AdamW moments; a save needs room for a second copy
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    check_out(args.out, "folder", need_bytes=8 * state_bytes + (1 << 20))

    images, labels = load_tensors(args.dataset, train=True)
    if args.limit is not None:
        if args.limit > images.shape[0]:
            raise ValueError(f"--limit {args.limit} is more than the {images.shape[0]} training "
                             f"images of {args.dataset}")
        images, labels = images[:args.limit], labels[:args.limit]
    label_budget = None
    if budget:
        from .data import hide_labels, label_subset

        label_seed = args.seed if args.label_seed is None else args.label_seed
        try:
            keep = label_subset(labels, args.labels_per_class, args.label_fraction, label_seed)
        except ValueError as err:  # name the flags, not the function's arguments
            raise ValueError(f"--labels-per-class/--label-fraction: {err}") from None
        labels = hide_labels(labels, keep)
        label_budget = {"labels_per_class": args.labels_per_class,
                        "label_fraction": args.label_fraction, "label_seed": label_seed,
                        "labelled": int(keep.numel()), "labelled_batch_size": labelled_batch,
                        "indices": keep.tolist()}

    trainer = Trainer(model, images, labels, config, out_dir=args.out, device=device,
                      progress=not args.no_progress, distributed=dist)
    main_rank = dist is None or dist.is_main
    launcher = "python -m jdm" if dist is None else dist.launcher()
    again = f"{launcher} " + shlex.join(args.argv + ([] if args.resume else ["--resume"]))
    try:
        with dist.lost_ranks() if dist is not None else nullcontext():
            history = trainer.fit(resume=args.resume)
    except (TrainingDiverged, RankLost) as err:
        print(f"jdm train: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        if main_rank:
            print(f"jdm train: {err}\nresume with: {again}", file=sys.stderr)
        return 128 + err.signal
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stays
        if main_rank:
            print(f"jdm train: stopped at once by a second Ctrl-C; {_saved_text(trainer)}",
                  file=sys.stderr)
        return 130
    if not main_rank:
        return 0  # rank 0 alone samples, measures, logs and exports
    try:
        return _finish_train(args, trainer, history, model, config, images, label_budget, device,
                             start, launcher)
    except KeyboardInterrupt:  # while drawing samples.png or measuring: training is saved
        print(f"jdm train: interrupted after training; {_saved_text(trainer)}; to write "
              f"samples.png and train_log.json, run: {again}", file=sys.stderr)
        return 130


def _saved_text(trainer) -> str:
    saved = trainer._saved
    return (f"{saved[0]} holds step {saved[1]}" if saved is not None and saved[0].exists()
            else "no checkpoint was written yet")


def _check_earlier_outputs(out: Path, resuming: bool) -> None:
    """A new run never overwrites an earlier run's samples.png or train_log.json (its last.pt
    may have been deleted to save space, but its results are still work)."""
    if resuming:
        return  # they belong to the run being continued
    earlier = [name for name in ("samples.png", "train_log.json") if (out / name).exists()]
    if earlier:
        raise ValueError(f"{out} holds an earlier run's {' and '.join(earlier)}: a new run would "
                         "overwrite them; choose another --out, or move them away first")


def _check_sizes(args: argparse.Namespace) -> None:
    """Requests that only fail after training (sampling, measuring), checked before it."""
    if args.model in ("ddpm", "joint") and args.sample_steps > args.timesteps:
        raise ValueError(f"--sample-steps {args.sample_steps} is more than --timesteps "
                         f"{args.timesteps} (T); use at most {args.timesteps}")
    if args.fd_samples:
        available = args.test_limit if args.test_limit is not None else args.fd_samples
        if min(args.fd_samples, available) < MIN_FD_SAMPLES:
            raise ValueError(f"--fd-samples must be 0 (skip) or at least {MIN_FD_SAMPLES} (FD, "
                             f"precision and recall need {MIN_FD_SAMPLES} images a set), with "
                             f"--test-limit at least as large; got --fd-samples {args.fd_samples}"
                             + (f" and --test-limit {args.test_limit}" if args.test_limit else ""))


def _finish_train(args, trainer, history, model, config, images, label_budget, device,
                  start, launcher: str = "python -m jdm") -> int:
    """After ``fit``: samples.png, the test metrics, train_log.json and the export."""
    checkpoint = args.out / "last.pt"
    ema = trainer.ema_model.module
    written = [checkpoint]
    if hasattr(ema, "sample"):  # the evaluator CNN does not generate
        samples = ema.sample(args.samples, method="ddim", steps=args.sample_steps,
                             generator=torch.Generator().manual_seed(args.seed),
                             progress=not args.no_progress)
        written.append(save_grid(samples.cpu(), args.out / "samples.png"))
    metrics = (_test_metrics(ema, args.dataset, args.test_limit, device)
               if args.model in ("joint", "classifier", "evaluator") else {})
    if hasattr(ema, "sample"):
        metrics.update(_generation_metrics(ema, args, device))
    command = f"{launcher} " + shlex.join(args.argv)
    log = {
        "command": command,
        "hardware": hardware_string(device),
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": trainer.train_seconds,
        "steps": trainer.step,
        "images": int(images.shape[0]),
        "dataset": args.dataset,
        "label_budget": label_budget,
        "spec": model.spec(),
        "train_config": asdict(config),
        "history": history,
        "test_metrics": metrics,
    }
    log_path = write_atomically(args.out / "train_log.json",
                                lambda tmp: tmp.write_text(json.dumps(log, indent=1) + "\n"))
    written.append(log_path)
    last = history[-1] if history else {}
    print(f"trained {trainer.step} steps on {device} in {trainer.train_seconds:.1f} s"
          + (f" (final loss {last['loss']:.4f})" if "loss" in last else ""))
    if metrics:
        print(", ".join(f"{k} {v}" for k, v in metrics.items()))
    if args.export:
        from .pretrained import export_pretrained

        if last:
            metrics = {**metrics, "final_train_loss": round(last["loss"], 5)}
        weights = export_pretrained(checkpoint, args.export, metrics, command,
                                    hardware_string(device), force=args.force)
        written += [weights, weights.with_suffix(".json")]
    print("wrote " + ", ".join(map(str, written)))
    return 0


# ---------------------------------------------------------------------------------- sample
def add_sample(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="draw images from a trained checkpoint into one grid image",
        description="Load a checkpoint written by 'jdm train' (or a shipped weights file) and "
                    "save a grid of samples.",
        formatter_class=_HelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="checkpoint file written by 'jdm train' (e.g. runs/x/last.pt), or a "
                        "shipped one (e.g. data/checkpoints/ddpm-fmnist-small.pt)")
    p.add_argument("--n", type=_count, default=64, help="number of images")
    p.add_argument("--method", choices=["ddpm", "ddim"], default="ddim",
                   help="ddim: few deterministic steps (Song et al.); ddpm: ancestral, all T steps")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="DDIM steps, at most the model's T (default 50); not allowed with "
                        "ddpm, which uses every step")
    p.add_argument("--eta", type=float_in(0.0), default=0.0,
                   help="DDIM noise: 0 = deterministic, 1 = as much noise as DDPM")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the starting noise")
    p.add_argument("--raw", action="store_true",
                   help="use the raw trained weights instead of their EMA")
    p.add_argument("--out", type=Path, required=True,
                   help="image file for the grid; the extension picks the format (e.g. .png)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu; default: the best available")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from .pretrained import load_checkpoint_model

    if args.method == "ddpm" and (args.steps is not None or args.eta != 0.0):
        raise ValueError("--steps and --eta only apply to --method ddim; ancestral DDPM visits "
                         "every timestep")
    check_out(args.out, "image")
    if args.checkpoint.is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint} is a directory; pass a checkpoint file, "
                         f"e.g. {args.checkpoint / 'last.pt'} or data/checkpoints/NAME.pt")
    device = get_device(args.device)
    model = load_checkpoint_model(args.checkpoint, ema=not args.raw, device=device)
    if not hasattr(model, "sample"):
        raise ValueError(f"{args.checkpoint} holds a {model.kind!r} model, which does not "
                         "generate; pass a DDPM or joint checkpoint")
    T = model.schedule.num_steps
    if args.steps is not None and args.steps > T:
        raise ValueError(f"--steps {args.steps} is more than the model's T = {T} diffusion steps; "
                         f"use at most {T}")
    steps = (args.steps or 50) if args.method == "ddim" else None
    images = model.sample(args.n, method=args.method, steps=steps, eta=args.eta,
                          generator=torch.Generator().manual_seed(args.seed),
                          progress=not args.no_progress)
    print(f"wrote {save_grid(images.cpu(), args.out)} ({args.n} images, {args.method}, "
          f"{min(steps, T) if steps else T} steps)")
    return 0


# ---------------------------------------------------------------------------------- demo
def add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the course in one figure: one shipped joint model classifies, generates on "
                     "request and explains",
        description="Load the shipped joint model, measure its test accuracy, draw class-conditional "
                    "samples (a row per class) and counterfactuals of a few test images towards the "
                    "class the model ranks second, and save all three as one figure. Runs offline "
                    "in under a minute on a CPU.",
        formatter_class=_HelpFormatter)
    p.add_argument("--model", default="jdm-fmnist",
                   help="name of a shipped joint checkpoint (see jdm.list_pretrained())")
    p.add_argument("--test-images", type=_positive_int, default=2_000,
                   help="measure the test accuracy on the first N Fashion-MNIST test images "
                        "(10000: all of them, about a minute more on a 2-core CPU)")
    p.add_argument("--samples-per-class", type=int_in(1, 1000), default=3,
                   help="conditional samples drawn for each class (default guidance)")
    p.add_argument("--sample-steps", type=_positive_int, default=20,
                   help="DDIM steps of the conditional samples")
    p.add_argument("--counterfactuals", type=int_in(1, 1000), default=4,
                   help="test images explained (jdm.counterfactual with its defaults)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the samples and counterfactuals")
    p.add_argument("--out", type=Path, default=Path("jdm-demo.png"),
                   help="image file for the figure (e.g. .png)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu; default: the best available")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    from tqdm.auto import tqdm

    from .counterfactual import counterfactual, counterfactual_guidance
    from .data import CLASS_NAMES, load_tensors
    from .evaluator import load_evaluator
    from .joint import JointDiffusion
    from .metrics import accuracy
    from .pretrained import load_pretrained, resolve_name
    from .sampling import Guidance
    from .utils import eval_mode
    from .viz import demo_figure

    check_out(args.out, "image")
    start = time.perf_counter()
    device = get_device(args.device)
    model = load_pretrained(args.model, device=device)
    if not isinstance(model, JointDiffusion):
        raise ValueError(f"{args.model!r} is not a joint model (e.g. jdm-fmnist): the demo needs "
                         "its classifier head")
    T = model.schedule.num_steps
    if args.sample_steps > T:  # checked before the work, never clamped under a wrong caption
        raise ValueError(f"--sample-steps {args.sample_steps} is more than the model's T = {T} "
                         f"diffusion steps; use at most {T}")
    images, labels = load_tensors("fashion_mnist", train=False)
    n = min(args.test_images, images.shape[0])
    names = [name.split("/")[0] for name in CLASS_NAMES["fashion_mnist"]]

    # 1. classify: the head on the shared encoder's features of the clean image
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model.classify(images[i:min(i + 500, n)].to(device)).float().cpu()
                            for i in tqdm(range(0, n, 500), desc="classifying test images")])
    acc = accuracy(logits, labels[:n])
    print(f"{resolve_name(args.model)}: test accuracy {acc:.4f} on {n:,} Fashion-MNIST test images")

    # 2. generate on request: the default guidance, one row per class
    guidance = Guidance().resolve()
    wanted = torch.arange(model.num_classes).repeat_interleave(args.samples_per_class)
    samples = model.sample(len(wanted), labels=wanted, steps=args.sample_steps,
                           generator=torch.Generator().manual_seed(args.seed)).cpu()

    # 3. explain: the first few test images towards the class the model ranks second
    k = min(args.counterfactuals, n)
    x, runner_up = images[:k], logits[:k].topk(2, dim=1).indices[:, 1]
    x_cf = counterfactual(model, x, runner_up.to(device),
                          generator=torch.Generator().manual_seed(args.seed)).cpu()
    cf_guidance = counterfactual_guidance(None, model.noise_aware)
    # judged by the independent evaluator CNN, never by the head the guidance optimised
    flipped = (load_evaluator(device).predict(x_cf) == runner_up).sum().item()

    shown = min(12, n)
    probs = logits[:shown].softmax(1)
    demo_figure(images[:shown], labels[:shown], probs.argmax(1), probs.max(1).values, samples, wanted,
                x, x_cf, [f"{names[a]} → {names[b]}" for a, b in zip(labels[:k].tolist(),
                                                                    runner_up.tolist())],
                names, accuracy_text=f"test accuracy {acc:.3f} on {n:,} images",
                sampler_text=f"{_sampler_name(guidance)}, DDIM-{args.sample_steps}",
                cf_text=f"towards the runner-up class by {_sampler_name(cf_guidance)};\nthe "
                        f"independent evaluator CNN says the target for {flipped} of {k}",
                path=args.out)
    print(f"wrote {args.out}: {n:,} test images classified, {len(wanted)} conditional samples "
          f"({_sampler_name(guidance)}, DDIM-{args.sample_steps}), {k} counterfactuals by "
          f"{_sampler_name(cf_guidance)} ({flipped} "
          f"judged the target class by the evaluator) in {time.perf_counter() - start:.0f} s on "
          f"{device}")
    return 0


def _sampler_name(g) -> str:
    """A resolved ``Guidance`` in words, e.g. "the paper's sampler (γ = 100)"."""
    if g.kind == "representation":
        return f"the paper's sampler (γ = {g.scale:g})"
    return f"{g.kind} guidance ({'γ' if g.kind != 'classifier' else 's'} = {g.scale:g})"


# ---------------------------------------------------------------------------------- explain
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
        raise ValueError(f"--target: unknown class {text!r}; use an index 0..{len(names) - 1} or one of: "
                         + ", ".join(names))
    return lowered[text.lower()]


def _add_guidance_flags(p) -> None:
    """The sampler flags, generated from ``jdm.Guidance``'s fields (their defaults stay there),
    plus the model, the DDIM steps, the seed and the device."""
    from dataclasses import fields

    from .sampling import Guidance

    for f in fields(Guidance):
        kind = {"scale": _finite, "inner_steps": int_in(1, 1000), "eta": float_in(0.0)}.get(f.name, str)
        p.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), dest=f.name,
                       type=kind, choices=f.metadata.get("choices"), default=None,
                       help=f.metadata["help"] + (f" (default: {f.default})"
                                                  if f.default is not None else ""))
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="DDIM steps of the reverse process (default: jdm.sampling.DEFAULT_DDIM_STEPS "
                        "for samples, jdm.counterfactual.DEFAULT_COUNTERFACTUAL_STEPS over [0, t*] "
                        "for counterfactuals)")
    p.add_argument("--model", default="joint-fmnist-small-gpu",
                   help="name of a shipped joint checkpoint (see jdm.list_pretrained()); the "
                        "default is the GPU-trained one the counterfactual defaults were fitted on "
                        "(docs/counterfactuals_gpu.md)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the noise")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:1, mps or cpu; default: the best available")


def _guidance(args: argparse.Namespace):
    """The ``jdm.Guidance`` the flags describe (flags left out keep Guidance's defaults)."""
    from dataclasses import fields

    from .sampling import Guidance

    given = {f.name: getattr(args, f.name) for f in fields(Guidance)
             if getattr(args, f.name) is not None}
    return Guidance(**given)


def add_explain(subparsers) -> None:
    from .counterfactual import DEFAULT_T_STAR

    p = subparsers.add_parser(
        "explain", help="visual counterfactual explanations of test images, as one gallery PNG",
        description="Take Fashion-MNIST test images to step t* (DDIM inversion, or fresh noise "
                    "with --start noise) and run the joint model's "
                    "conditional reverse process towards a target class (jdm.counterfactual); "
                    "save originals, counterfactuals and their differences as one figure, and "
                    "print what the independent evaluator network says before and after.",
        formatter_class=_HelpFormatter)
    p.add_argument("--image-index", type=_non_negative_int, nargs="+", required=True,
                   help="test-set indices of the images to explain")
    p.add_argument("--target", nargs="+", required=True,
                   help="target class (index or name, e.g. 0 or T-shirt): one for all images, or "
                        "one per image")
    p.add_argument("--t-star", type=_t_star, default=DEFAULT_T_STAR,
                   help="the step the images are taken to (of T = 1000; larger changes more), or "
                        "'auto': each image its own, further for a target the model finds less "
                        "likely (jdm.counterfactual.auto_t_star)")
    _add_counterfactual_flags(p)
    _add_guidance_flags(p)
    p.add_argument("--out", type=Path, default=Path("jdm-explain.png"),
                   help="image file for the gallery (e.g. .png)")
    p.set_defaults(func=run_explain)


def _add_counterfactual_flags(p) -> None:
    """How the images reach t* and how hard they are held near the original."""
    from .counterfactual import DEFAULT_MIN_CHANGE, DEFAULT_START, STARTS

    p.add_argument("--start", choices=STARTS, default=DEFAULT_START,
                   help="counterfactuals: reach t* by DDIM inversion (deterministic; the unguided "
                        "round trip returns the image) or by fresh noise (the paper's)")
    p.add_argument("--keep", type=_finite, default=0.0,
                   help="counterfactuals: pull each step's clean-image estimate this fraction of "
                        "the way to the original, 0 … 1")
    p.add_argument("--min-change", type=_finite, default=DEFAULT_MIN_CHANGE,
                   help="counterfactuals: fade out pixel changes smaller than this ([-1, 1] units; "
                        "0: off)")


def run_explain(args: argparse.Namespace) -> int:
    check_out(args.out, "image")
    import matplotlib

    matplotlib.use("Agg")
    from .counterfactual import auto_t_star, counterfactual, counterfactual_guidance
    from .data import CLASS_NAMES, load_tensors
    from .evaluator import load_evaluator
    from .joint import JointDiffusion
    from .metrics import image_distances
    from .pretrained import load_pretrained
    from .viz import counterfactual_gallery

    names = CLASS_NAMES["fashion_mnist"]
    if len(args.target) not in (1, len(args.image_index)):
        raise ValueError(f"give one --target for all images or one per image "
                         f"({len(args.image_index)}), got {len(args.target)}")
    targets = [_class_index(t, names) for t in args.target] * (
        len(args.image_index) if len(args.target) == 1 else 1)
    device = get_device(args.device)
    model = load_pretrained(args.model, device=device)
    if not isinstance(model, JointDiffusion):
        raise ValueError(f"{args.model!r} is not a joint model; counterfactuals need its classifier "
                         "head (e.g. joint-fmnist-small)")
    images, labels = load_tensors("fashion_mnist", train=False)
    bad = [i for i in args.image_index if i >= images.shape[0]]
    if bad:
        raise ValueError(f"--image-index must be below {images.shape[0]}, got {bad}")
    index = torch.tensor(args.image_index)
    x, y = images[index], labels[index]
    guidance = _guidance(args)
    # resolved once here, so the printout can say each image's t*
    t_stars = (auto_t_star(model, x.to(device), torch.tensor(targets, device=device)).cpu()
               if args.t_star == "auto" else torch.full((len(targets),), args.t_star))
    x_cf = counterfactual(model, x, torch.tensor(targets), t_star=t_stars, guidance=guidance,
                          start=args.start, keep=args.keep, min_change=args.min_change,
                          steps=args.steps, generator=torch.Generator().manual_seed(args.seed)).cpu()
    evaluator = load_evaluator(device)
    before, after = evaluator.predict(x).tolist(), evaluator.predict(x_cf).tolist()
    short = [n.split("/")[0] for n in names]
    titles = [f"{short[a]} → {short[b]}" for a, b in zip(y.tolist(), targets)]
    counterfactual_gallery(x, x_cf, titles, path=args.out)
    for i, a, b, t, d, ts in zip(args.image_index, before, after, targets,
                                 (x_cf - x).abs().flatten(1).mean(1).tolist(), t_stars.tolist()):
        print(f"test image {i} ({names[int(labels[i])]}): evaluator {names[a]} → {names[b]} "
              f"(target {names[t]}{', flipped' if b == t else ', not flipped'}); t* {ts}, "
              f"mean |Δ| {d:.3f}")
    flips = sum(b == t for b, t in zip(after, targets))
    print(f"wrote {args.out}: {flips}/{len(targets)} flipped to the target, mean |Δ| "
          f"{image_distances(x, x_cf)['l1']:.3f} (t* = {args.t_star}, start {args.start}, "
          f"keep {args.keep:g}, min change {args.min_change:g}, "
          f"{counterfactual_guidance(guidance, model.noise_aware, args.start)})")
    return 0


# ---------------------------------------------------------------------------------- evaluate
def add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="measure conditional samples or counterfactuals with the evaluator",
        description="conditional: draw --per-class samples of every class and report the "
                    "evaluator's agreement with the requested class, FD (overall and per class) "
                    "and precision/recall. counterfactual: explain the first --n test images "
                    "towards --targets at each --t-star and report flip rate, L1/L2 distance "
                    "and FD against real images of the target classes.",
        formatter_class=_HelpFormatter)
    p.add_argument("what", choices=["conditional", "counterfactual"], help="what to measure")
    p.add_argument("--per-class", type=int_in(2, 10_000), default=100,
                   help="conditional: samples per class")
    p.add_argument("--n", type=int_in(2, 10_000), default=1000,
                   help="counterfactual: number of test images explained")
    p.add_argument("--t-star", type=_t_star, nargs="+", default=None,
                   help="counterfactual: noising step(s) t*, each a positive int or 'auto' "
                        "(default: jdm.counterfactual's)")
    p.add_argument("--targets", choices=["runner-up", "random"], default="runner-up",
                   help="counterfactual: each image's target is the class the model ranks second, "
                        "or a random other class")
    p.add_argument("--batch-size", type=_count, default=250, help="images per sampler call")
    _add_counterfactual_flags(p)
    _add_guidance_flags(p)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    check_out(args.json, "json", "--json", report_keys=("what", "results"))
    from .data import load_tensors
    from .evaluate import (evaluate_conditional, evaluate_counterfactuals, other_class_targets,
                           runner_up_targets)
    from .evaluator import load_evaluator
    from .joint import JointDiffusion
    from .pretrained import load_pretrained

    device = get_device(args.device)
    model = load_pretrained(args.model, device=device)
    if not isinstance(model, JointDiffusion):
        raise ValueError(f"{args.model!r} is not a joint model (e.g. joint-fmnist-small)")
    guidance = _guidance(args)
    evaluator = load_evaluator(device)
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    sampler = dict(guidance=guidance, steps=args.steps, seed=args.seed, batch_size=args.batch_size)
    rows = []
    if args.what == "conditional":
        res = evaluate_conditional(model, evaluator, test_x, test_y, per_class=args.per_class,
                                   **sampler)
        rows.append({"guidance": str(guidance.resolve()),
                     **{k: v for k, v in res.items() if k not in ("samples", "labels")}})
    else:
        if args.n > test_x.shape[0]:
            raise ValueError(f"--n must be at most {test_x.shape[0]}, got {args.n}")
        from .counterfactual import DEFAULT_T_STAR, counterfactual_guidance

        if args.targets == "runner-up":
            targets = runner_up_targets(model, test_x[:args.n])
        else:
            targets = other_class_targets(test_y[:args.n], model.num_classes,
                                          torch.Generator().manual_seed(args.seed))
        for t_star in args.t_star or [DEFAULT_T_STAR]:
            res = evaluate_counterfactuals(model, evaluator, test_x[:args.n], test_y[:args.n],
                                           targets, test_x, test_y, t_star=t_star,
                                           start=args.start, keep=args.keep,
                                           min_change=args.min_change,
                                           exclude=torch.arange(args.n), **sampler)
            rows.append({"t_star": t_star, "targets": args.targets, "start": args.start,
                         "keep": args.keep, "min_change": args.min_change,
                         "guidance": str(counterfactual_guidance(guidance, model.noise_aware,
                                                                 args.start)),
                         **{k: v for k, v in res.items()
                            if k not in ("counterfactuals", "predictions")}})
    report = {"what": args.what, "model": args.model, "command": "python -m jdm " +
              shlex.join(args.argv), "hardware": hardware_string(device), "results": rows}
    for row in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if not isinstance(v, dict)}))
    if args.json is not None:
        write_atomically(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------- course
def add_course(subparsers) -> None:
    p = subparsers.add_parser(
        "course", help="student editions of the notebooks, and a grader that needs no nbgrader",
        description="'course student' writes notebooks/student/ from the solution notebooks (answers "
                    "stubbed as nbgrader would, outputs cleared); 'course student --check' only says "
                    "whether they are up to date. 'course grade NB…' executes each notebook in quick "
                    "mode (every cell, also after an error) and scores its check cells.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                               help="student (write the student editions) or grade (score notebooks)")
    s = actions.add_parser("student", help="write (or --check) notebooks/student/")
    s.add_argument("--out", type=Path, default=None, help="folder (default notebooks/student)")
    s.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a student notebook is missing or out of date")
    g = actions.add_parser("grade", help="execute and score notebooks")
    g.add_argument("notebooks", nargs="+", type=Path, help="the notebooks to grade (.ipynb)")
    g.add_argument("--timeout", type=int_in(1, 86_400), default=600, help="seconds per cell (default 600)")
    g.add_argument("--full", action="store_true", help="run in full mode instead of quick mode")
    g.add_argument("--no-run", action="store_true",
                   help="grade the outputs stored in the notebook instead of executing it")
    g.add_argument("--json", type=Path, default=None, help="also write the reports as JSON here")
    p.set_defaults(func=run_course)


def run_course(args) -> int:
    try:
        from . import course  # nbformat and nbclient: the course or test extra
    except ImportError as err:
        raise ValueError(f"{err}; install the course tools with: pip install -e \".[course]\"") from None

    if args.action == "student":
        if not args.check:
            check_out(args.out, "folder", "--out")  # None: the default notebooks/student
        if args.check:
            stale = course.stale_student_editions(args.out)
            for name in stale:
                print(f"out of date: {name} (run: python -m jdm course student)")
            print("student notebooks up to date" if not stale else f"{len(stale)} out of date")
            return 1 if stale else 0
        for path in course.write_student_editions(args.out):
            print(f"wrote {path}")
        return 0
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    check_out(args.json, "json", "--json")  # before grading, which can take hours for a class
    reports = []   # every notebook is read before any runs: one cannot rewrite the next
    for report in course.grade_many(args.notebooks, timeout=args.timeout, quick=not args.full,
                                    run=not args.no_run):
        print(report.to_text(), flush=True)
        reports.append(report)
    if len(reports) > 1:
        score, total = sum(r.score for r in reports), sum(r.max_score for r in reports)
        print(f"total: {score:g} / {total:g} points")
    if args.json is not None:
        course.write_report(reports, args.json)
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------- entry point
COMMANDS = [add_train, add_sample, add_demo, add_explain, add_evaluate, add_course]
"""Each adds one subcommand."""


def build_parser() -> argparse.ArgumentParser:
    """The ``jdm`` argument parser with every command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="jdm", description="Joint Diffusion Models, built up from scratch: train and use "
                                "the course's models from the command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       help="run 'jdm COMMAND --help' for its flags")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        _check_device(getattr(args, "device", None))
        return args.func(args)
    except (ValueError, OSError) as err:  # OSError: missing files, read-only or full disks, …
        print(f"jdm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as err:
        if not _out_of_memory(err):
            raise  # a bug: its traceback is what a report needs
        print(f"jdm {args.command}: error: out of memory ({str(err).splitlines()[0][:200]}); "
              "lower the sizes you asked for (--n, --samples, --batch-size, …)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside training: every output is written atomically
        print(f"jdm {args.command}: interrupted (Ctrl-C); files already written are kept, no "
              "partial file is left", file=sys.stderr)
        return 130


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: torch reports it as a RuntimeError (CPU: "can't allocate",
    "bad_alloc"; CUDA: OutOfMemoryError) and Python as a MemoryError."""
    text = str(err).lower()
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or any(
        key in text for key in ("can't allocate", "bad_alloc", "out of memory", "not enough memory"))


def _check_device(name: str | None) -> None:
    """A --device that is not a device name, or not available here, is a ValueError."""
    if name is None:
        return
    try:
        torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    get_device(name)


if __name__ == "__main__":
    sys.exit(main())
