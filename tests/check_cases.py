"""What every test of a ``jdm.checks`` check asserts (imported by tests/test_checks_*.py).

A check must pass on a right answer, raise ``NotImplementedError`` naming its exercise on the stub a
student receives, and raise an ``AssertionError`` naming its exercise on each plausible wrong answer.
Each test module lists its cases as ``CASES = {check_name: (right_answer, [wrong_answers…])}``;
tests/test_checks.py makes sure every check in ``jdm.checks`` has such an entry.
"""
import re

import pytest

import jdm.checks


def stub(*args, **kwargs):
    """What nbgrader leaves in a solution cell: ``raise NotImplementedError()``."""
    raise NotImplementedError()


def assert_check_behaves(name: str, right, wrongs: list) -> None:
    check = getattr(jdm.checks, name)
    check(right)
    with pytest.raises(NotImplementedError, match=re.escape(check.title)):
        check(stub)
    assert wrongs, f"{name}: give at least one plausible wrong answer"
    for wrong in wrongs:
        with pytest.raises(AssertionError, match=re.escape(check.title)):
            check(wrong)
