"""The grader behind ``python -m jdm course grade``: scores a submission as nbgrader would, and holds.

A submission is graded against the course's own solution notebook (same file name, else the one
sharing its check cells' ``grade_id``s), never against what the submission says about itself:

* each check cell's source and points come from the solution; a check cell the student changed is
  restored (as nbgrader's autograder does) and one the student deleted counts 0 of its points;
* the notebook runs in a fresh kernel in a scratch folder of its own, in quick mode that the
  submission cannot turn off (``JDM_QUICK=force``), every cell even after an error;
* a check passes only if its cell ran without an error *and* printed the run's secret token, which
  only a genuine :mod:`jdm.checks` check prints (see ``harness._GRADER_TOKEN``): a check replaced by a
  no-op, or an error swallowed by a custom exception handler, scores 0; a last grader cell also names
  such tampering, and then the whole notebook scores 0;
* a cell past the timeout, a kernel that dies, a file that is not a notebook: a note in the report,
  never a traceback.

These defences stop a student who tampers with the notebook; student code still runs with the
grader's rights, so a determined one can read the grader's secrets from inside its own process.
Grade inside a container or as a separate user (notebooks/README.md).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from .course import NOTEBOOKS, exercises

CHECK_CALL = re.compile(r"\bjdm\.checks\.(\w+)\(")
INTEGRITY_MARK = "jdm-grader-integrity"


# ----------------------------------------------------------------------------- the report
@dataclass
class ExerciseResult:
    grade_id: str
    points: float
    earned: float
    passed: bool
    error: str = ""


@dataclass
class GradeReport:
    notebook: str
    results: list[ExerciseResult] = field(default_factory=list)
    seconds: float = 0.0
    executed: bool = True
    other_errors: list[str] = field(default_factory=list)   # cells outside the checks that raised
    notes: list[str] = field(default_factory=list)          # what the grader saw beyond the checks

    @property
    def score(self) -> float:
        return sum(r.earned for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.points for r in self.results)

    def to_json(self) -> dict:
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "seconds": round(self.seconds, 1), "executed": self.executed,
                "exercises": [asdict(r) for r in self.results], "other_errors": self.other_errors,
                "notes": self.notes}

    def to_text(self) -> str:
        width = max((len(r.grade_id) for r in self.results), default=10)
        lines = [f"{self.notebook}: {self.score:g} / {self.max_score:g} points "
                 f"({100 * self.score / max(self.max_score, 1e-9):.0f} %)"]
        for r in self.results:
            mark = "pass" if r.passed else "FAIL"
            lines.append(f"  {mark}  {r.grade_id:<{width}}  {r.earned:g}/{r.points:g}"
                         + (f"  {r.error}" if r.error else ""))
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  note: outside the checks, {error}" for error in self.other_errors]
        return "\n".join(lines)


def write_report(reports: list[GradeReport], path: Path) -> None:
    """The JSON form of one or more reports (what ``--json`` writes)."""
    Path(path).write_text(json.dumps([r.to_json() for r in reports], indent=1) + "\n")


# ----------------------------------------------------------------------------- the reference
def _read(path: Path):
    """The notebook at ``path``, or the reason it is not one (a string)."""
    try:
        return nbformat.reads(Path(path).read_text(encoding="utf-8"), as_version=4)
    except Exception as err:   # JSON, schema or encoding: all mean "not a notebook we can grade"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not a readable notebook ({reason[:200]})"


def _nbgrader(cell) -> dict:
    """A cell's nbgrader metadata; {} where a submission broke it (not a dict, a grade_id not a string)."""
    meta = cell.get("metadata", {}).get("nbgrader", {}) if isinstance(cell.get("metadata"), dict) else {}
    if not isinstance(meta, dict):
        return {}
    return meta if isinstance(meta.get("grade_id", ""), str) else {**meta, "grade_id": None}


def _check_ids(nb) -> set[str]:
    return {_nbgrader(c).get("grade_id") for c in nb.get("cells", []) if _nbgrader(c).get("grade")}


def find_solution(path: Path, nb, solutions: Path = NOTEBOOKS) -> Path | None:
    """The solution notebook a submission answers: the same file name, else (a renamed copy) the one
    sharing most of its check cells' grade_ids; None if neither."""
    same = Path(solutions) / Path(path).name
    if same.exists():
        return same
    ids = _check_ids(nb) if not isinstance(nb, str) else set()
    if not ids:
        return None
    overlap = {p: len(ids & _check_ids(nbformat.read(p, as_version=4)))
               for p in sorted(Path(solutions).glob("*.ipynb"))}
    best = max(overlap, key=overlap.get, default=None)
    return best if best is not None and overlap[best] > 0 else None


# ----------------------------------------------------------------------------- the graded copy
def _code_cell(source: str):
    return nbformat.v4.new_code_cell(source, metadata={"jdm_grader": True})


def _restore_checks(nb, solution) -> dict[str, int]:
    """Give every check cell of ``nb`` that the solution has its solution source and metadata
    (nbgrader's restore of locked cells); ``{grade_id: cell index}`` of the first of each."""
    reference = {_nbgrader(c)["grade_id"]: c for c in solution.cells if _nbgrader(c).get("grade")
                 and not _nbgrader(c).get("solution")}
    where = {}
    for i, cell in enumerate(nb.cells):
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in reference:
            cell.cell_type, cell.source = "code", reference[grade_id].source
            cell.metadata["nbgrader"] = dict(reference[grade_id].metadata["nbgrader"])
            cell.pop("attachments", None)
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
            where.setdefault(grade_id, i)
        elif _nbgrader(cell).get("grade") and not _nbgrader(cell).get("solution"):
            cell.metadata["nbgrader"] = {**_nbgrader(cell), "grade": False}   # not a course check
    return where


def graded_copy(nb, solution, end_marker: str):
    """The notebook to execute: checks restored, a first grader cell that imports jdm (so the token
    leaves the environment before any student code runs), a marker printed at the end of each
    check cell that calls no jdm.checks function, and a last grader cell reporting tampering."""
    where = _restore_checks(nb, solution)
    for cell in nb.cells:   # nothing the student's machine stored counts: a cell that never runs is empty
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    for grade_id, i in where.items():
        if not CHECK_CALL.search(nb.cells[i].source):
            nb.cells[i].source += f"\nprint({end_marker + ' ' + grade_id!r})"
    first = _code_cell("import jdm  # the grader's own cell")
    last = _code_cell("import json, jdm.grading  # the grader's own cell\n"
                      f"print({INTEGRITY_MARK!r}, json.dumps(jdm.grading.tampering()))")
    nb.cells = [first] + nb.cells + [last]
    return nb, {grade_id: i + 1 for grade_id, i in where.items()}


def tampering() -> list[str]:
    """Run in the graded kernel (its last cell): what a submission changed that a check relies on."""
    import jdm.checks
    from jdm.checks import harness

    found = [f"jdm.checks.{name} was replaced" for name in jdm.checks.__all__
             if name != "CheckFailed" and getattr(jdm.checks, name, None) is not harness.CHECKS.get(name)]
    # the helpers every check calls (fail, expect_close, …), in each module that imported them
    helpers = [n for n in dir(harness) if callable(getattr(harness, n)) and not n.startswith("_")]
    modules = {harness, *(getattr(jdm.checks, n) for n in dir(jdm.checks)
                          if type(getattr(jdm.checks, n)) is type(harness))}
    for module in sorted(modules, key=lambda m: m.__name__):
        for name in helpers:
            helper = getattr(module, name, None)
            if helper is not None and getattr(helper, "__module__", "") not in (
                    "jdm.checks.harness", getattr(getattr(harness, name), "__module__", "")):
                found.append(f"{module.__name__}.{name} was replaced")
    try:
        shell = get_ipython()   # noqa: F821  defined inside IPython kernels
        if shell.custom_exceptions:
            found.append("a custom exception handler was installed (set_custom_exc)")
    except NameError:
        pass
    return found


# ----------------------------------------------------------------------------- execution
def execute(nb, cwd: Path, timeout: int, quick: bool, token: str) -> tuple[dict, str]:
    """Run every cell of ``nb`` (in place) in a fresh python3 kernel in ``cwd``, going on after
    errors; ``({cell index: seconds}, failure)``, failure '' unless the run stopped early."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    started, seconds = {}, {}
    env = {"JDM_QUICK": "force" if quick else "0", "JDM_GRADER_TOKEN": token,
           "MPLBACKEND": os.environ.get("MPLBACKEND", "Agg")}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # the kernel inherits this process's environment when it starts
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True, resources={"metadata": {"path": str(cwd)}},
                            on_cell_execute=lambda cell, cell_index: started.__setitem__(
                                cell_index, time.monotonic()),
                            on_cell_executed=lambda cell, cell_index, execute_reply: seconds.__setitem__(
                                cell_index, time.monotonic() - started[cell_index]))
    failure = ""
    try:
        client.execute()
    except DeadKernelError:
        failure = "the kernel died (os._exit, a crash or out of memory); cells after it did not run"
    except CellTimeoutError:
        failure = f"a cell timed out after {timeout} s and could not be interrupted"
    except Exception as err:   # the kernel would not start, …: a note for this notebook only
        failure = f"execution stopped: {type(err).__name__}: {str(err)[:200]}"
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return seconds, failure


def _error_of(cell) -> str:
    """The first error a cell's outputs hold, as 'Name: message' (one line), or ''."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            message = f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".strip()
            return message.splitlines()[0] if message else "error"
    return ""


def _stdout(cell) -> list[str]:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream").splitlines()


def _verdict(cell, seconds: float | None, timeout: int, proof: list[str]) -> str:
    """'' if the executed check cell passed, else why not."""
    if cell.get("execution_count") is None:
        return "the check cell did not run"
    error = _error_of(cell)
    if error.startswith("KeyboardInterrupt") and seconds is not None and seconds >= timeout - 1:
        return f"timed out after {timeout} s"
    if error:
        return error
    missing = [line for line in proof if line not in _stdout(cell)]
    if missing:
        return ("the check did not confirm a pass (were jdm.checks' functions replaced, or an "
                "error swallowed by an exception handler?)")
    return ""


# ----------------------------------------------------------------------------- grading
def _failed(name: str, solution, note: str, executed: bool) -> GradeReport:
    """A notebook that could not be graded: every exercise of its solution at 0, and why."""
    report = GradeReport(name, executed=executed, notes=[note])
    for ex in exercises(solution) if solution is not None else []:
        report.results.append(ExerciseResult(ex.grade_id, ex.points, 0, False, "not graded"))
    return report


def _prepare(path: Path, solutions: Path):
    """(name, submission or reason, solution notebook or None); raises only for a missing file or
    a notebook that is no exercise of this course."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = _read(path)
    found = find_solution(path, nb, solutions)
    if found is None:
        if isinstance(nb, str):
            return path.name, nb, None
        if not _check_ids(nb):
            raise ValueError(f"{path.name} has no graded check cells (nbgrader metadata 'grade': true)")
        raise ValueError(f"{path.name} is not a notebook of this course: {solutions} has no notebook of "
                         "that name or with its check cells")
    return path.name, nb, nbformat.read(found, as_version=4)


def grade_many(paths: list[Path], timeout: int = 600, quick: bool = True, run: bool = True,
               solutions: Path = NOTEBOOKS):
    """Read every submission first (so that one cannot rewrite the next), then yield one
    :class:`GradeReport` each, in order."""
    prepared = [_prepare(p, solutions) for p in paths]

    def reports():
        for name, nb, solution in prepared:
            if isinstance(nb, str):
                yield _failed(name, solution, nb, executed=False)
            elif run:
                yield _grade_run(name, nb, solution, timeout, quick)
            else:
                yield _grade_stored(name, nb, solution)
    return reports()


def grade(path: Path, timeout: int = 600, quick: bool = True, run: bool = True,
          solutions: Path = NOTEBOOKS) -> GradeReport:
    """Score one notebook's check cells against its solution notebook (see the module docstring).

    ``run=False`` grades the outputs stored in the notebook instead of executing it: a check passes
    only if its cell is the solution's, unchanged, and its stored output says it passed. A student
    can edit stored outputs, so the report says they are unverified.
    """
    return next(grade_many([path], timeout=timeout, quick=quick, run=run, solutions=solutions))


def _grade_run(name: str, nb, solution, timeout: int, quick: bool) -> GradeReport:
    token, marker = secrets.token_hex(16), secrets.token_hex(16)
    nb, where = graded_copy(nb, solution, marker)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="jdm-grade-") as scratch:   # its own folder, then gone
        seconds, failure = execute(nb, Path(scratch), timeout, quick, token)
    report = GradeReport(name, seconds=time.time() - start, notes=[failure] if failure else [])
    tampered = _integrity(nb.cells[-1], failure)
    report.notes += tampered
    for ex in exercises(solution):
        if ex.grade_id not in where:
            report.results.append(ExerciseResult(ex.grade_id, ex.points, 0, False,
                                                 "the check cell is missing from the submission"))
            continue
        cell = nb.cells[where[ex.grade_id]]
        calls = CHECK_CALL.findall(ex.source)
        proof = [f"{token} passed {c}" for c in calls] or [f"{marker} {ex.grade_id}"]
        error = _verdict(cell, seconds.get(where[ex.grade_id]), timeout, proof)
        if tampered and not error:
            error = "not counted: the submission tampered with the grading (see the notes)"
        report.results.append(ExerciseResult(ex.grade_id, ex.points, 0 if error else ex.points,
                                             not error, error))
    checks = set(where.values())
    report.other_errors = [f"cell {i - 1}: {_error_of(cell)}" for i, cell in enumerate(nb.cells)
                           if i not in checks and _error_of(cell)
                           and not cell.metadata.get("jdm_grader")]
    return report


def _integrity(cell, failure: str) -> list[str]:
    """The tampering the last grader cell found; a note if it could not tell."""
    for line in _stdout(cell):
        if line.startswith(INTEGRITY_MARK + " "):
            return [f"tampering: {t} (the notebook scores 0)"
                    for t in json.loads(line[len(INTEGRITY_MARK) + 1:])]
    if failure:
        return []   # the run stopped early: the checks that ran before it still count
    return ["tampering: the grader's integrity check did not report (the notebook scores 0)"]


def _grade_stored(name: str, nb, solution) -> GradeReport:
    """``--no-run``: trust nothing but an unchanged check cell whose stored output says it passed."""
    report = GradeReport(name, executed=False, notes=[
        "not executed: scores come from the stored outputs, which a student can edit; grade without "
        "--no-run for marks that count"])
    import jdm.checks

    cells = {}
    for cell in nb.cells:
        cells.setdefault(_nbgrader(cell).get("grade_id"), cell)
    for ex in exercises(solution):
        cell = cells.get(ex.grade_id)
        titles = [getattr(jdm.checks, c).title for c in CHECK_CALL.findall(ex.source)
                  if hasattr(jdm.checks, c)]
        if cell is None:
            error = "the check cell is missing from the submission"
        elif cell.source != ex.source:
            error = "the check cell was changed"
        elif _error_of(cell):
            error = _error_of(cell)
        elif cell.get("execution_count") is None:
            error = "the check cell did not run"
        elif not all(
                any(line.startswith(f"✓ {t}: passed") for line in _stdout(cell)) for t in titles):
            error = "no stored output shows this check passing"
        else:
            error = ""
        report.results.append(ExerciseResult(ex.grade_id, ex.points, 0 if error else ex.points,
                                             not error, error))
    return report
