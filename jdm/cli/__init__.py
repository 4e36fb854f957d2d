"""The command line: ``python -m jdm <command>`` (or ``jdm <command>`` once installed).

    python -m jdm train --config tiny --limit 256 --train-steps 3 --timesteps 50 --out runs/try
    python -m jdm sample --checkpoint runs/try/last.pt --n 16 --out samples.png

The CLI parses, calls and prints; the work is in the package (``jdm.recipe`` trains,
``jdm.counterfactual`` and ``jdm.evaluate`` explain and measure, ``jdm.demo`` draws the demo).
Flags that set a settings dataclass (``RunConfig``, ``TrainConfig``, ``Guidance``,
``CounterfactualSettings``) are generated from its fields, so each default lives in one place.
One module a command group; each command is a pair: ``add_<name>(subparsers)`` declares its flags
and points ``func`` at ``run_<name>(args)``, which returns the exit status; ``COMMANDS`` lists the
``add_`` functions. ``ValueError`` and every ``OSError`` (missing file, read-only or full disk, …)
become one error line and exit status 2; output paths are checked before any work starts.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ..utils import get_device
from .course import add_course
from .explain import add_evaluate, add_explain
from .sample import add_demo, add_sample
from .train import add_train

__all__ = ["main", "build_parser", "COMMANDS"]


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
