"""``jdm train``: flags generated from ``RunConfig`` and ``TrainConfig``; the work is
``jdm.recipe.TrainJob``'s. Exit 1 when training diverged, 128 + the signal's number when it was
interrupted (after saving, with the command that resumes it)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from ..cli_types import (COUNT, DEVICE_HELP, FINITE, NON_NEGATIVE, POSITIVE, SEED, SHARE,
                         HelpFormatter, add_field_flags, fields_from_flags, float_in, int_in)
from ..inputs import MAX_BATCH
from ..outputs import check_output
from ..recipe import RunConfig
from ..train import COMPILE_MODES, TrainConfig
from ..utils import get_device


_RUN_TYPES = {"limit": POSITIVE, "timesteps": int_in(1, 100_000), "dropout": SHARE,
              "alpha": float_in(0.0), "head_hidden": int_in(1, 16_384), "head_dropout": SHARE,
              "labels_per_class": POSITIVE, "label_fraction": FINITE, "label_seed": SEED,
              "test_limit": POSITIVE, "fd_samples": int_in(0, 10_000), "samples": COUNT,
              "ddim_steps": int_in(1, 100_000)}
_TRAIN_TYPES = {"steps": POSITIVE, "batch_size": COUNT, "lr": FINITE,
                "weight_decay": float_in(0.0), "ema_decay": FINITE, "grad_clip": float_in(0.0),
                "warmup_steps": NON_NEGATIVE, "log_every": POSITIVE,
                "checkpoint_every": NON_NEGATIVE, "checkpoint_minutes": float_in(0.0),
                "seed": SEED, "labelled_batch_size": int_in(0, MAX_BATCH)}


def add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a diffusion model and write a checkpoint, a sample grid and a log",
        description="Train a model on a dataset (jdm.recipe). Writes OUT/last.pt (every "
                    "--checkpoint-every steps and at the end), OUT/samples.png (EMA model, DDIM) "
                    "and OUT/train_log.json (history, wall time, command, hardware).",
        formatter_class=HelpFormatter)
    add_field_flags(p, RunConfig, _RUN_TYPES)
    add_field_flags(p, TrainConfig, _TRAIN_TYPES, extra={
        "compile": {"nargs": "?", "const": "default", "choices": list(COMPILE_MODES)},
        "labelled_batch_size": {"metavar": "L", "help": (
            "joint, classifier: every step = --batch-size images with labels hidden (diffusion "
            "loss only) + L labelled images, so both models see the same L labelled images a "
            "step; default: --batch-size under a label budget, else 0 (plain batches)")}})
    p.add_argument("--out", type=Path, required=True,
                   help="output folder for last.pt, samples.png and train_log.json")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (exactly where it stopped; the model and data "
                        "flags must match); without OUT/last.pt, say so and start fresh")
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Check --out, then train while holding its lock (a second run on it is refused). Under
    ``torchrun`` every rank trains its share and rank 0 holds the lock (``jdm.distributed``)."""
    from contextlib import nullcontext

    from ..distributed import init_distributed
    from ..runlock import RunLock

    check_output(args.out, "folder")
    run = fields_from_flags(RunConfig, args)
    config = fields_from_flags(TrainConfig, args)
    if args.labelled_batch_size is None:
        config = run.with_label_batches(config)
    dist = init_distributed(get_device(args.device))  # None without torchrun
    with RunLock(args.out) if dist is None or dist.is_main else nullcontext():
        status = _train(args, run, config, dist)
    if dist is not None and status == 0:  # (a broken group could hang here: left to the exit)
        torch.distributed.destroy_process_group()
    return status


def _train(args: argparse.Namespace, run: RunConfig, config: TrainConfig, dist) -> int:
    from ..distributed import RankLost
    from ..recipe import TrainJob
    from ..divergence import TrainingDiverged
    from ..interrupts import TrainingInterrupted

    launcher = "python -m jdm" if dist is None else dist.launcher()
    job = TrainJob(run, config, args.out, resume=args.resume, device=args.device,
                   progress=not args.no_progress, command=f"{launcher} " + shlex.join(args.argv),
                   dist=dist)
    again = f"{launcher} " + shlex.join(args.argv + ([] if args.resume else ["--resume"]))
    try:
        history = job.fit()
    except (TrainingDiverged, RankLost) as err:
        print(f"jdm train: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        if job.is_main:
            print(f"jdm train: {err}\nresume with: {again}", file=sys.stderr)
        return 128 + err.signal
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stays
        if job.is_main:
            print(f"jdm train: stopped at once by a second Ctrl-C; {job.saved_text()}",
                  file=sys.stderr)
        return 130
    if not job.is_main:
        return 0  # rank 0 alone samples, measures, logs and exports
    try:
        log = job.finish()
    except KeyboardInterrupt:  # while drawing samples.png or measuring: training is saved
        print(f"jdm train: interrupted after training; {job.saved_text()}; to write "
              f"samples.png and train_log.json, run: {again}", file=sys.stderr)
        return 130
    last = history[-1] if history else {}
    print(f"trained {log['steps']} steps on {job.device} in {log['train_seconds']:.1f} s"
          + (f" (final loss {last['loss']:.4f})" if "loss" in last else ""))
    if log["test_metrics"]:
        print(", ".join(f"{k} {v}" for k, v in log["test_metrics"].items()))
    print("wrote " + ", ".join(log["written"]))
    return 0


