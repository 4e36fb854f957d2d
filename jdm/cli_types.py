"""argparse types that check a flag's value while parsing, so the error names the flag and its
allowed range before any work starts (and before anything is allocated from a typo such as
``--n 100000000``): ``int_in(low, high)`` and ``float_in(low, high)``; and flags generated from a
settings dataclass's fields (``add_field_flags``, ``fields_from_flags``), so a default lives in one
place.

    p.add_argument("--seed", type=int_in(0, 2**32 - 1))
    # jdm train: error: argument --seed: must be an integer in 0..4294967295, got 99999999999999999999
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields

from .inputs import MAX_BATCH, SEED_LIMIT

__all__ = ["int_in", "float_in", "add_field_flags", "fields_from_flags", "t_star_value",
           "HelpFormatter", "DEVICE_HELP"]

DEVICE_HELP = "cuda, cuda:1, mps or cpu; default: the best available"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default in its help, unless there is none worth showing (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in ``low..high`` (None: no upper bound), checked while parsing
    so the error names the flag and its range before any work (and before anything allocates)."""
    allowed = (f"an integer in {low}..{high}" if high is not None
               else "a positive integer" if low == 1 else f"an integer >= {low}")

    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        if not (digits.isascii() and digits.isdigit()):  # also '²', which int() would not take
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        value = int(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(low: float | None = None, high: float | None = None, open_low: bool = False):
    """An argparse type: a finite float in [low, high] (``open_low``: low excluded)."""
    allowed = ("a finite number" + (f" {'>' if open_low else '>='} {low:g}" if low is not None else "")
               + (f" and <= {high:g}" if high is not None else ""))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        too_low = low is not None and (value <= low if open_low else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def add_field_flags(parser, cls, types: dict | None = None, extra: dict | None = None,
                    skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass ``cls``: ``--field-name`` (or ``metadata["flag"]``),
    its help from ``metadata["help"]`` and its default shown from the field (the flag's own default
    is None, "not given", so ``fields_from_flags`` leaves the field's default in charge).

    ``types`` maps a field to its argparse type (default ``str``; a bool field becomes ``--x``,
    or ``--x/--no-x`` when it defaults to True); ``metadata`` may also give ``nargs`` and
    ``metavar``; ``extra`` maps a field to more ``add_argument`` keywords; fields in ``skip`` or
    with ``metadata["cli"] is False`` get no flag."""
    types, extra = types or {}, extra or {}
    for f in fields(cls):
        if f.name in skip or f.metadata.get("cli", True) is False:
            continue
        shown = "" if f.default in (None, MISSING) else f" (default: {f.default})"
        kwargs = {"dest": f.name, "default": None, "help": f.metadata["help"] + shown}
        if f.type in (bool, "bool"):  # --x for a False default, --x/--no-x for a True one
            kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
            kwargs["help"] = f.metadata["help"]
        else:
            kwargs.update(type=types.get(f.name, str), choices=f.metadata.get("choices"),
                          **{k: f.metadata[k] for k in ("nargs", "metavar") if k in f.metadata})
        kwargs.update(extra.get(f.name, {}))  # e.g. a help that says the command line's default
        parser.add_argument(f.metadata.get("flag", "--" + f.name.replace("_", "-")), **kwargs)


def fields_from_flags(cls, args: argparse.Namespace, **overrides):
    """``cls(...)`` from the flags ``add_field_flags`` declared; flags left out keep the field's
    default, ``overrides`` win over both."""
    given = {f.name: getattr(args, f.name) for f in fields(cls)
             if getattr(args, f.name, None) is not None}
    return cls(**{**given, **overrides})


def t_star_value(text: str) -> int | str:
    """A counterfactual's ``--t-star``: 'auto' (each image its own) or a positive int."""
    return "auto" if text == "auto" else POSITIVE(text)


# the ranges most flags share
POSITIVE, NON_NEGATIVE = int_in(1), int_in(0)
COUNT = int_in(1, MAX_BATCH)  # images in one request: more is a typo, refused before allocating
SEED = int_in(0, SEED_LIMIT - 1)
FINITE = float_in()
SHARE = float_in(0.0, 1.0)  # dropouts: 0 … 1
