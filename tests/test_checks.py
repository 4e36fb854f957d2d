"""The check harness (jdm/checks/harness.py), and that every check is tested both ways."""
import importlib
from pathlib import Path

import pytest
import torch

import jdm.checks
from jdm.checks.harness import CheckFailed, exercise, expect_close

CASE_MODULES = sorted(p.stem for p in Path(__file__).parent.glob("test_checks_*.py"))


def test_every_check_has_a_right_and_a_plausible_wrong_answer_under_test():
    cases = {}
    for name in CASE_MODULES:
        cases.update(importlib.import_module(name).CASES)
    checks = set(jdm.checks.__all__) - {"CheckFailed"}
    assert checks <= set(cases), f"no test cases for {sorted(checks - set(cases))}"
    assert all(len(cases[name][1]) >= 1 for name in checks)
    assert len(checks) >= 24


@exercise("Exercise 0.1 — a demo")
def _demo(student_fn) -> int:
    torch.manual_seed(0)                      # a check may draw random numbers ...
    expect_close(student_fn(torch.rand(3)), torch.zeros(3), "the answer")
    return 1


def test_a_check_passes_fails_and_names_its_exercise(capsys):
    _demo(lambda x: x * 0)
    assert capsys.readouterr().out == "✓ Exercise 0.1 — a demo: passed (1 cases)\n"
    with pytest.raises(CheckFailed, match=r"Exercise 0.1 — a demo: the answer at index \(1,\) should be 0, got 0.768"):
        _demo(lambda x: x)
    with pytest.raises(NotImplementedError, match="Exercise 0.1 — a demo is not done yet"):
        _demo(lambda x: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(CheckFailed, match="pass your function itself"):
        _demo(torch.zeros(3))
    with pytest.raises(CheckFailed, match="should have shape"):
        _demo(lambda x: x[:2] * 0)


def test_a_check_leaves_the_notebooks_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _demo(lambda x: x * 0)                    # ... without moving the notebook's random stream
    assert torch.equal(torch.rand(3), expected)
