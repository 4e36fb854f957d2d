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

import contextlib
import functools
import operator
import os
from collections.abc import Sequence
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


def expect_close(got, want: Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-6,
                 t: Tensor | None = None) -> None:
    """``got`` matches ``want`` elementwise: shape, finiteness, then |got − want| ≤ atol + rtol·|want|.

    ``rtol`` is at least a few units of ``got``'s own precision (a right float32 answer passes). The
    message gives the worst element's position (with ``t``, the (N,) timesteps of a batch: its batch
    item and that item's t), both values and the relative error, so a student can tell an
    off-by-one timestep from a missing square root.
    """
    want = torch.as_tensor(want)
    got = expect_shape(got, tuple(want.shape), what)
    if got.is_floating_point():
        rtol = max(rtol, 4 * torch.finfo(got.dtype).eps)
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        fail(f"{what} has non-finite values (nan or inf)")
    gap = (got - want).abs()
    allowed = atol + rtol * want.abs()
    if (gap > allowed).any():
        worst = int((gap - allowed).flatten().argmax())
        fail(f"{what}{_where(worst, got.shape, t)} should be {want.flatten()[worst].item():.6g}, got "
             f"{got.flatten()[worst].item():.6g} (off by {gap.flatten()[worst].item():.1e}, relative "
             f"error {(gap.flatten()[worst] / want.abs().flatten()[worst].clamp_min(1e-12)).item():.1e}; "
             f"allowed {allowed.flatten()[worst].item():.1e} = {atol:.0e} + {rtol:.0e}·|expected|)")


def _where(flat: int, shape, t: Tensor | None) -> str:
    """' at index (…)', or with timesteps ' for batch item i (t=…) at (c, h, w)'."""
    if len(shape) == 0:
        return ""
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(shape)))
    if t is None or torch.as_tensor(t).numel() != shape[0]:
        return f" at index {index}"
    step = int(torch.as_tensor(t).flatten()[index[0]])
    return f" for batch item {index[0]} (t={step}) at position {index[1:]}"


def as_int(got, what: str) -> int:
    """An integer answer: a Python or numpy integer or a one-element tensor holding a whole number."""
    if isinstance(got, bool):
        fail(f"{what} should be an int, got bool")
    if torch.is_tensor(got):
        if got.numel() != 1:
            fail(f"{what} should be one number, got a tensor of shape {tuple(got.shape)}")
        if float(got) != int(got):
            fail(f"{what} should be a whole number, got {float(got)}")
        return int(got)
    try:
        return operator.index(got)   # int and numpy's integers (np.argmax returns np.int64)
    except TypeError:
        fail(f"{what} should be an int, got {type(got).__name__}")


def as_pair(got, what: str) -> tuple:
    """A two-item answer: a tuple, a list or any other sequence of length 2."""
    if isinstance(got, (str, bytes, Tensor)) or not isinstance(got, Sequence) or len(got) != 2:
        fail(f"{what} should be a pair (two values), got {type(got).__name__}"
             + (f" of length {len(got)}" if isinstance(got, Sequence) else ""))
    return tuple(got)


class ReferenceUsed(CheckFailed):
    """The student's function called jdm's own version of the answer."""


@contextlib.contextmanager
def reference_blocked(student_fn: Callable, *references: tuple[object, str]):
    """While the block runs (the student's call), each ``(owner, name)`` — a class's method or a
    module's function that computes the answer — raises :class:`ReferenceUsed`: a check compares with
    jdm's version, so calling it would pass without the student writing anything. Names in the
    student's own namespace bound to the same function (``from jdm.metrics import frechet_distance``)
    are blocked too, and a student who catches the error still fails when the block ends."""
    called, undo = [], []

    def block(namespace: dict, key: str, original, label: str) -> None:
        undo.append((namespace, key, original))
        namespace[key] = _raiser(called, label)

    namespace = getattr(student_fn, "__globals__", {})
    for owner, name in references:
        original = vars(owner)[name]
        label = f"{getattr(owner, '__name__', owner)}.{name}"
        func = getattr(original, "__func__", original)
        if isinstance(owner, type):
            undo.append((owner, name, original))
            setattr(owner, name, _raiser(called, label))
        else:
            block(vars(owner), name, original, label)
        for key, value in list(namespace.items()):
            if getattr(value, "__func__", value) is func and not (namespace is vars(owner) and key == name):
                block(namespace, key, value, label)
        for cell in getattr(student_fn, "__closure__", None) or ():   # names of an enclosing function
            contents = _contents(cell)
            if getattr(contents, "__func__", contents) is func:
                undo.append((cell, "cell_contents", cell.cell_contents))
                cell.cell_contents = _raiser(called, label)
    try:
        yield
    finally:
        for where, key, original in reversed(undo):
            if isinstance(where, dict):
                where[key] = original
            else:
                setattr(where, key, original)
    if called:
        fail(f"your function called jdm's {called[0]}, the reference this check compares with: "
             "implement it yourself")


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:   # a closure variable not assigned yet
        return None


def _raiser(called: list, label: str) -> Callable:
    def blocked(*args, **kwargs):
        called.append(label)
        raise ReferenceUsed(f"your function called jdm's {label}, the reference this check compares "
                            "with: implement it yourself")
    return blocked


def expect_equal(got, want, what: str) -> None:
    if got != want:
        fail(f"{what} should be {want!r}, got {got!r}")


def expect_unchanged(before: Tensor, after: Tensor, what: str) -> None:
    """The student's function must not modify its input in place."""
    if not torch.equal(before, after):
        fail(f"{what} was modified in place; work on a copy")

