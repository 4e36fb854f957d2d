"""The machinery every exercise check shares (cs231n style: known inputs, known answers).

A check is a function ``check(student_fn) -> None`` written with :func:`exercise`. It calls the
student's function on inputs whose answers are known, compares with a stated tolerance, and on the
first mismatch raises :class:`CheckFailed` (an ``AssertionError``) whose message says *what* is wrong
("posterior variance at t=0 should be 0, got 1.2e-04") and never *how* to fix it. When the student's
function is still the stub (it raises ``NotImplementedError``) the check raises
``NotImplementedError`` naming the exercise, so an untouched notebook stops at the first exercise
with a message that says which one.

Checks return nothing and print one line when they pass. Graders (``python -m jdm course grade`` and
nbgrader) only look at whether the check cell raised.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import Tensor


# ``python -m jdm course grade`` starts each kernel with a secret in JDM_GRADER_TOKEN. It is taken out
# of the environment at import (before any student code runs) and a passing check prints it with its
# own name: a check cell that ends without this line did not pass, whatever the student replaced
# (jdm.checks' functions, the exception handler). See jdm/grading.py.
_GRADER_TOKEN = os.environ.pop("JDM_GRADER_TOKEN", "")
CHECKS: dict[str, Callable] = {}   # every check made by `exercise`, by name: the grader compares


class CheckFailed(AssertionError):
    """An exercise's answer is wrong; the message says what was expected and what came back."""


def fail(message: str) -> None:
    raise CheckFailed(message)


def exercise(title: str) -> Callable:
    """Turn ``body(student_fn, *args) -> int`` (the number of cases it tried) into a check.

    ``title`` names the exercise as the notebook does ("Exercise 1.2 — q_sample"). The check rejects
    a non-callable answer, turns the stub's ``NotImplementedError`` into one that names the exercise,
    and prints a one-line pass message.
    """
    def wrap(body: Callable) -> Callable:
        @functools.wraps(body)
        def check(student_fn, *args, **kwargs) -> None:
            if not callable(student_fn):
                fail(f"{title}: pass your function itself (without calling it), got a "
                     f"{type(student_fn).__name__}")
            try:
                # a check draws its own random numbers: the notebook's random state stays as it was
                with torch.random.fork_rng():
                    cases = body(student_fn, *args, **kwargs)
            except NotImplementedError:
                raise NotImplementedError(
                    f"{title} is not done yet: replace `raise NotImplementedError()` in the exercise "
                    "cell with your code, run that cell, then run this check again.") from None
            except CheckFailed as err:
                raise CheckFailed(f"{title}: {err}") from None
            print(f"✓ {title}: passed ({cases} cases)")
            if _GRADER_TOKEN:
                print(f"{_GRADER_TOKEN} passed {body.__name__}")
        check.title = title
        CHECKS[body.__name__] = check
        return check
    return wrap


def as_tensor(value, what: str) -> Tensor:
    """``value`` as a tensor, or a failure saying what came back instead."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    fail(f"{what} should be a tensor, got {type(value).__name__}")


def expect_shape(got, shape: tuple, what: str) -> Tensor:
    got = as_tensor(got, what)
    if tuple(got.shape) != tuple(shape):
        fail(f"{what} should have shape {tuple(shape)}, got {tuple(got.shape)}")
    return got


def expect_close(got, want: Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """``got`` matches ``want`` elementwise: shape, finiteness, then |got − want| ≤ atol + rtol·|want|.

    The message gives the worst element's position, both values and the relative error, so a
    student can tell an off-by-one timestep from a missing square root.
    """
    want = torch.as_tensor(want)
    got = expect_shape(got, tuple(want.shape), what)
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        fail(f"{what} has non-finite values (nan or inf)")
    gap = (got - want).abs()
    allowed = atol + rtol * want.abs()
    if (gap > allowed).any():
        worst = int((gap - allowed).flatten().argmax())
        where = "" if got.dim() == 0 else f" at index {tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), got.shape))}"
        relative = gap.flatten()[worst] / want.abs().flatten()[worst].clamp_min(1e-12)
        fail(f"{what}{where} should be {want.flatten()[worst].item():.6g}, got "
             f"{got.flatten()[worst].item():.6g} (off by {gap.flatten()[worst].item():.1e}, relative "
             f"error {relative.item():.1e}; allowed {allowed.flatten()[worst].item():.1e} = "
             f"{atol:.0e} + {rtol:.0e}·|expected|)")


def expect_equal(got, want, what: str) -> None:
    if got != want:
        fail(f"{what} should be {want!r}, got {got!r}")


def expect_unchanged(before: Tensor, after: Tensor, what: str) -> None:
    """The student's function must not modify its input in place."""
    if not torch.equal(before, after):
        fail(f"{what} was modified in place; work on a copy")

