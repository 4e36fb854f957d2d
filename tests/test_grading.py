"""The jdm grader holds against a student who tries (issue 29; rows J02–J16 of the reliability probes).

Every trick is played on a tiny three-exercise assignment built here (real jdm.checks, 1 + 2 + 3
points), graded once by ``jdm.grading.grade_many`` and, where nbgrader scores it too, once by
``nbgrader autograde``: the jdm grader gives the same score as nbgrader, or 0 where it must.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from jdm import course, grading
from jdm.__main__ import main

TIMEOUT = 15   # seconds per cell: the endless loop costs this much in each grader

ANSWERS = {   # grade_id: (points, the answer's solution source)
    "ex-a": (1, "def half_life(s):\n    # Hint: a mask.\n    ### BEGIN SOLUTION\n"
                "    return int((s.alpha_bars < 0.5).nonzero()[0])\n    ### END SOLUTION"),
    "ex-b": (2, "def matched_beta_end(T, target):\n    # Hint: bisect.\n    ### BEGIN SOLUTION\n"
                "    low, high = 1e-4, 0.5\n    for _ in range(60):\n        mid = (low + high) / 2\n"
                "        end = torch.cumprod(1 - torch.linspace(1e-4, mid, T, dtype=torch.float64), 0)[-1]\n"
                "        low, high = (mid, high) if end > target else (low, mid)\n    return mid\n"
                "    ### END SOLUTION"),
    "ex-c": (3, "def my_cosine_betas(T, s=0.008):\n    # Hint: f(t) / f(0).\n    ### BEGIN SOLUTION\n"
                "    steps = torch.arange(T + 1, dtype=torch.float64) / T\n"
                "    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2\n"
                "    ab = f / f[0]\n    return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)\n"
                "    ### END SOLUTION"),
}
CHECKS = {"ex-a": "half_life(half_life)", "ex-b": "matched_beta_end(matched_beta_end)",
          "ex-c": "cosine_betas(my_cosine_betas)"}
TOTAL = sum(points for points, _ in ANSWERS.values())


def solution_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A tiny assignment"),
                nbformat.v4.new_code_cell("QUICK = None\nimport jdm\njdm.set_quick_mode(QUICK)"),
                nbformat.v4.new_code_cell("import math\nimport torch")]
    for grade_id, (points, source) in ANSWERS.items():
        answer, check = (nbformat.v4.new_code_cell(source),
                         nbformat.v4.new_code_cell(f"# NBVAL_CHECK_OUTPUT\njdm.checks.{CHECKS[grade_id]}"))
        answer.metadata["nbgrader"] = course.solution_metadata(grade_id + "-answer")
        check.metadata["nbgrader"] = course.check_metadata(grade_id, points)
        nb.cells += [answer, check]
    return nb


def _cell(nb, grade_id):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _answered(nb, grade_id, source):
    _cell(nb, grade_id + "-answer").source = source
    return nb


def submissions(solutions: Path) -> dict:
    """Each trick as the notebook a student would hand in."""
    solution = nbformat.read(solutions / "tiny.ipynb", as_version=4)
    def stubs():
        return course.student_edition(solution)

    solved = course.student_edition(solution)
    for grade_id, (_, source) in ANSWERS.items():
        _answered(solved, grade_id, source)
    solved.cells[1].source = solved.cells[1].source.replace("QUICK = None", "QUICK = False")
    _answered(solved, "ex-a", ANSWERS["ex-a"][1].replace(
        "    return", "    assert jdm.quick_mode(), 'graded in full mode'\n    return"))

    tampered = stubs()
    _cell(tampered, "ex-a").source = "pass"                                          # J04
    tampered.cells.remove(_cell(tampered, "ex-b"))                                   # J02
    _answered(tampered, "ex-b", ANSWERS["ex-b"][1])
    _cell(tampered, "ex-c").metadata.nbgrader.points = 1000                          # J03
    _answered(tampered, "ex-c", "import json\nexec(''.join(json.load(open(%r))['cells'][7]['source']))"
              % str(solutions / "tiny.ipynb"))                                       # J07

    loop = _answered(stubs(), "ex-a", "def half_life(s):\n    while True:\n        pass")
    for grade_id in ("ex-b", "ex-c"):
        _answered(loop, grade_id, ANSWERS[grade_id][1])

    # J05 and J06 in one notebook (one kernel less): checks replaced by no-ops in the first answer
    # cell, every error swallowed from the second on; nothing solved
    patched = _answered(stubs(), "ex-a", "import jdm.checks\nfor n in jdm.checks.__all__:\n"
                        "    setattr(jdm.checks, n, lambda *a, **k: None)")          # J05
    _answered(patched, "ex-b", "get_ipython().set_custom_exc((BaseException,), "
              "lambda *a, **k: None)")                                               # J06
    dies = _answered(_answered(stubs(), "ex-a", ANSWERS["ex-a"][1]), "ex-b",
                     "import os\nos._exit(0)")                                       # J11
    faked = _cell(dies, "ex-c")   # a stored pass after the crash must not count
    faked.execution_count = 9
    faked.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                            text="✓ Exercise 1.1 — the cosine schedule: passed (3 cases)\n")]
    return {"solved": solved, "untouched": stubs(), "tampered": tampered, "loop": loop,
            "patched": patched, "dies": dies}


@pytest.fixture(scope="module")
def assignment(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    (root / "solutions").mkdir()
    nbformat.write(solution_notebook(), root / "solutions" / "tiny.ipynb")
    paths = {}
    for student, nb in submissions(root / "solutions").items():
        (root / "submitted" / student / "a").mkdir(parents=True)
        nbformat.write(nb, paths.setdefault(student, root / "submitted" / student / "a" / "tiny.ipynb"))
    return root, paths


@pytest.fixture(scope="module")
def jdm_reports(assignment):
    """Every submission graded by one jdm grading run, plus J12's pair (a rewrites b)."""
    root, paths = assignment
    rewriter, victim = root / "j12" / "a" / "tiny.ipynb", root / "j12" / "b" / "tiny.ipynb"
    for path in (rewriter, victim):
        path.parent.mkdir(parents=True)
    solution = nbformat.read(root / "solutions" / "tiny.ipynb", as_version=4)
    nbformat.write(course.student_edition(solution), victim)
    (rewriter.parent / "grader_decoy.txt").write_text("keep me")
    attack = ("import json, os\nopen('GRADER_MARKER', 'w').write('x')\n"
              "if os.path.exists('grader_decoy.txt'):\n    os.remove('grader_decoy.txt')\n"
              f"nb = json.load(open({str(victim)!r}))\n"
              "for c in nb['cells']:\n    if c['metadata'].get('nbgrader', {}).get('grade'):\n"
              "        c['source'] = 'pass'\n"
              f"json.dump(nb, open({str(victim)!r}, 'w'))")
    nbformat.write(_answered(course.student_edition(solution), "ex-a", attack), rewriter)
    names = list(paths) + ["j12a", "j12b"]
    reports = grading.grade_many(list(paths.values()) + [rewriter, victim], timeout=TIMEOUT,
                                 solutions=root / "solutions")
    return dict(zip(names, reports))


CONFIG = f"""c = get_config()
c.CourseDirectory.course_id = "jdm"
c.Execute.timeout = {TIMEOUT}
"""


@pytest.fixture(scope="module")
def nbgrader_scores(assignment):
    """The same submissions autograded by nbgrader (those it can score: not the kernel killer)."""
    pytest.importorskip("nbgrader", reason="nbgrader is in the test extra")
    from nbgrader.api import Gradebook
    root, paths = assignment
    course_dir = root / "course"
    (course_dir / "source" / "a").mkdir(parents=True)
    (course_dir / "nbgrader_config.py").write_text(CONFIG)
    shutil.copy(root / "solutions" / "tiny.ipynb", course_dir / "source" / "a")
    students = ["solved", "untouched", "tampered", "loop"]
    env = dict(os.environ, JDM_QUICK="force", MPLBACKEND="Agg",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "a"], cwd=course_dir,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for student in students:   # autograde adds them to the gradebook
        shutil.copytree(paths[student].parent, course_dir / "submitted" / student / "a")
    done = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", "a"], cwd=course_dir,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with Gradebook(f"sqlite:///{course_dir / 'gradebook.db'}") as gradebook:
        return {s: (gradebook.find_submission("a", s).score, gradebook.find_submission("a", s).max_score)
                for s in students}


def _earned(report):
    return {r.grade_id: r.earned for r in report.results}


# ----------------------------------------------------------------------------- the same as nbgrader
def test_honest_and_tampered_submissions_score_as_in_nbgrader(jdm_reports, nbgrader_scores):
    """Solved with QUICK = False (the answer refuses full mode: both graders force quick mode), the
    untouched release, a tampered notebook (J02–J04, J07) and an endless loop."""
    mine = {s: (jdm_reports[s].score, jdm_reports[s].max_score) for s in nbgrader_scores}
    assert mine == nbgrader_scores
    assert mine["solved"] == (TOTAL, TOTAL) and mine["untouched"] == (0, TOTAL)


def test_tampered_checks_are_restored_missing_ones_count_zero_points_come_from_the_solution(jdm_reports):
    report = jdm_reports["tampered"]
    assert _earned(report) == {"ex-a": 0, "ex-b": 0, "ex-c": 3}, report.to_text()
    assert report.max_score == TOTAL
    assert "NotImplementedError" in report.results[0].error                 # `pass` was restored
    assert "missing from the submission" in report.results[1].error


def test_an_endless_loop_is_reported_as_a_timeout(jdm_reports):
    report = jdm_reports["loop"]
    assert _earned(report) == {"ex-a": 0, "ex-b": 2, "ex-c": 3}
    assert report.results[0].error == f"timed out after {TIMEOUT} s"


# ----------------------------------------------------------------------------- 0 where it must
@pytest.mark.parametrize("tampering", ["jdm.checks.half_life was replaced", "custom exception handler"])
def test_replaced_checks_or_a_custom_exception_handler_score_zero_with_a_note(jdm_reports, tampering):
    report = jdm_reports["patched"]
    assert report.score == 0 and report.max_score == TOTAL, report.to_text()
    assert any(tampering in note for note in report.notes), report.notes
    # ex-a's check stops at the missing answer (NameError); the others ran a no-op or were swallowed
    assert all("did not confirm a pass" in r.error for r in report.results[1:]), report.to_text()


def test_a_dead_kernel_keeps_what_ran_before_and_says_so(jdm_reports):
    report = jdm_reports["dies"]
    assert _earned(report) == {"ex-a": 1, "ex-b": 0, "ex-c": 0}, report.to_text()
    assert any("kernel died" in note for note in report.notes)
    assert report.results[2].error == "the check cell did not run"


def test_each_notebook_runs_in_its_own_scratch_folder_and_cannot_rewrite_the_next(jdm_reports, assignment):
    root, _ = assignment
    assert jdm_reports["j12b"].score == 0, jdm_reports["j12b"].to_text()
    assert (root / "j12" / "a" / "grader_decoy.txt").exists()
    assert not (root / "j12" / "a" / "GRADER_MARKER").exists()


# ----------------------------------------------------------------------------- without a kernel
def _graded_as_if_run(nb, root: Path, tmp_path: Path):
    """``nb`` with every code cell claiming to have run, graded from its stored outputs."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count = 1
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    return grading.grade(tmp_path / "tiny.ipynb", run=False, solutions=root / "solutions")


def test_no_run_trusts_no_stored_execution_count(assignment, tmp_path):
    """J13: stubs whose check cells claim to have run."""
    root, _ = assignment
    nb = course.student_edition(nbformat.read(root / "solutions" / "tiny.ipynb", as_version=4))
    report = _graded_as_if_run(nb, root, tmp_path)
    assert report.score == 0 and report.max_score == TOTAL
    assert any("a student can edit" in note for note in report.notes)


def test_a_file_without_cells_is_a_clear_failure_not_a_traceback(assignment, tmp_path, capsys):
    """J16, through the CLI (a notebook of the course's own name)."""
    path = tmp_path / course.solution_notebooks()[0].name
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}}))
    assert main(["course", "grade", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 / 11 points" in out and "not a readable notebook" in out and "cells" in out, out


# ----------------------------------------------------------------------------- the pieces, in-process
def test_a_passing_check_prints_the_token_under_the_name_the_grader_looks_for(monkeypatch, capsys):
    import jdm.checks
    from jdm.checks import harness
    monkeypatch.setattr(harness, "_GRADER_TOKEN", "secret")
    jdm.checks.half_life(lambda s: int((s.alpha_bars < 0.5).nonzero()[0]))
    assert "secret passed half_life" in capsys.readouterr().out.splitlines()
    assert set(jdm.checks.__all__) - {"CheckFailed"} <= set(harness.CHECKS)


def test_tampering_names_a_replaced_check_or_helper(monkeypatch):
    import jdm.checks
    from jdm.checks import forward
    assert grading.tampering() == []
    monkeypatch.setattr(jdm.checks, "q_sample", lambda fn: None)
    monkeypatch.setattr(forward, "expect_close", lambda *a, **k: None)
    assert grading.tampering() == ["jdm.checks.q_sample was replaced",
                                   "jdm.checks.forward.expect_close was replaced"]


def test_broken_metadata_in_a_submission_is_no_crash(assignment, tmp_path):
    """Junk nbgrader metadata, a list as grade_id: the checks are still found by the solution's ids."""
    root, paths = assignment
    nb = nbformat.read(paths["untouched"], as_version=4)
    answer, check = _cell(nb, "ex-a-answer"), _cell(nb, "ex-a")
    answer.metadata["nbgrader"] = "junk"
    check.metadata["nbgrader"]["grade_id"] = ["ex-a"]
    report = _graded_as_if_run(nb, root, tmp_path)
    assert report.score == 0 and report.max_score == TOTAL
    assert "missing from the submission" in report.results[0].error
