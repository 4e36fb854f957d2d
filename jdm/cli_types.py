"""argparse types that check a flag's value while parsing, so the error names the flag and its
allowed range before any work starts (and before anything is allocated from a typo such as
``--n 100000000``): ``int_in(low, high)`` and ``float_in(low, high)``.

    p.add_argument("--seed", type=int_in(0, 2**32 - 1))
    # jdm train: error: argument --seed: must be an integer in 0..4294967295, got 99999999999999999999
"""
from __future__ import annotations

import argparse
import math

__all__ = ["int_in", "float_in"]


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
