"""The course as assignments: exercises marked for nbgrader, student editions, a grader without nbgrader.

The numbered notebooks in ``notebooks/`` are the *solution* notebooks and the only source. Each
graded exercise is two cells carrying nbgrader's cell metadata, so an instructor who uses nbgrader
can put the notebooks in a course folder as they are:

* a **solution cell** (``solution: true``) whose answer sits between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION``, with a one-line ``# Hint: …`` comment just above the first marker;
* a **check cell** (``grade: true``, ``locked: true``, ``points: n``) that calls a
  :mod:`jdm.checks` function on the student's answer. It passes if it runs without an error.

:func:`student_edition` does what ``nbgrader generate_assignment`` does to a solution cell (the
region becomes ``# YOUR CODE HERE`` / ``raise NotImplementedError()``, the hint stays) and clears
every output; ``python -m jdm course student`` writes them to ``notebooks/student/``.
:func:`grade` executes a notebook (quick mode, every cell even after an error, as nbgrader's
autograder does) and scores the check cells.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"    # nbgrader's delimiters (found anywhere in a line)
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"   # nbgrader's ClearSolutions.code_stub
TEXT_STUB = "YOUR ANSWER HERE"                                # nbgrader's ClearSolutions.text_stub
SCHEMA_VERSION = 3                                            # nbgrader's cell-metadata schema
GRADE_ID = re.compile(r"^[A-Za-z0-9_\-]+$")                   # what nbgrader accepts as a grade_id
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


# ----------------------------------------------------------------------------- cell metadata
def solution_metadata(grade_id: str) -> dict:
    """nbgrader metadata of an exercise's answer cell (autograded answer: not itself graded)."""
    return {"grade": False, "grade_id": grade_id, "locked": False,
            "schema_version": SCHEMA_VERSION, "solution": True, "task": False}


def check_metadata(grade_id: str, points: int) -> dict:
    """nbgrader metadata of an exercise's check cell (an autograder test worth ``points``)."""
    return {"grade": True, "grade_id": grade_id, "locked": True, "points": points,
            "schema_version": SCHEMA_VERSION, "solution": False, "task": False}


@dataclass
class Exercise:
    """One graded check cell: its nbgrader ``grade_id``, its points and where it sits."""
    grade_id: str
    points: float
    cell_index: int
    source: str


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercises(nb) -> list[Exercise]:
    """The graded check cells of a notebook, in order; raises ValueError on malformed metadata."""
    seen, found = set(), []
    for i, cell in enumerate(nb.cells):
        meta = _nbgrader(cell)
        if not meta:
            if BEGIN in cell.source:
                raise ValueError(f"cell {i} has a {BEGIN} marker but no nbgrader metadata")
            continue
        grade_id = meta.get("grade_id", "")
        if not GRADE_ID.match(grade_id) or grade_id in seen:
            raise ValueError(f"cell {i}: grade_id {grade_id!r} is empty, malformed or repeated")
        seen.add(grade_id)
        if meta.get("grade") and not meta.get("solution"):
            points = meta.get("points")
            if not isinstance(points, (int, float)) or points <= 0:
                raise ValueError(f"check cell {grade_id!r} needs positive points, has {points!r}")
            found.append(Exercise(grade_id, points, i, cell.source))
    return found


# ----------------------------------------------------------------------------- student edition
def clear_solution(source: str, cell_type: str = "code") -> str:
    """Replace each BEGIN/END SOLUTION region by nbgrader's stub, indented like the BEGIN line."""
    stub = (CODE_STUB if cell_type == "code" else TEXT_STUB).split("\n")
    lines, inside = [], False
    for line in source.split("\n"):
        if BEGIN in line:
            if inside:
                raise ValueError(f"nested {BEGIN} in:\n{source}")
            inside = True
            indent = re.match(r"\s*", line).group(0)
            lines += [indent + s for s in stub]
        elif END in line:
            inside = False
        elif not inside:
            lines.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END} in:\n{source}")
    return "\n".join(lines)


def student_edition(nb):
    """A copy of a solution notebook as a student receives it: answers stubbed, outputs cleared."""
    exercises(nb)   # validates the metadata first
    for cell in nb.cells:
        if _nbgrader(cell).get("solution") and cell.cell_type == "code" and BEGIN not in cell.source:
            raise ValueError(f"solution cell {_nbgrader(cell)['grade_id']!r} has no {BEGIN} ... {END} "
                             "region (is this already a student edition?)")
    student = copy.deepcopy(nb)
    for cell in student.cells:
        if _nbgrader(cell).get("solution"):
            cell.source = clear_solution(cell.source, cell.cell_type)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    student.metadata.pop("widgets", None)
    return student


def solution_notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    """The numbered notebooks that hold at least one graded exercise."""
    return [p for p in sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))
            if exercises(nbformat.read(p, as_version=4))]


def student_text(path: Path) -> str:
    """The student edition of ``path`` as the exact text ``write_student_editions`` writes."""
    return nbformat.writes(student_edition(nbformat.read(path, as_version=4))) + "\n"


def write_student_editions(out_dir: Path | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """Write ``<out_dir>/NN_name.ipynb`` for every solution notebook; returns the paths written."""
    out_dir = Path(out_dir) if out_dir is not None else Path(folder) / "student"
    sources = solution_notebooks(folder)
    # a student edition never replaces a solution notebook (e.g. --out notebooks): checked for
    # every file before the first is written
    clash = [out_dir / p.name for p in sources if (out_dir / p.name).is_file()
             and "BEGIN SOLUTION" in (out_dir / p.name).read_text(encoding="utf-8")]
    if clash:
        raise ValueError(f"--out {out_dir} holds solution notebooks ({clash[0].name}, …): student "
                         "editions never replace them; choose another folder (default "
                         "notebooks/student)")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources:
        target = out_dir / path.name
        target.write_text(student_text(path), encoding="utf-8")
        written.append(target)
    return written


def stale_student_editions(out_dir: Path | None = None, folder: Path = NOTEBOOKS) -> list[str]:
    """Names of student notebooks that are missing or differ from what their solutions generate."""
    out_dir = Path(out_dir) if out_dir is not None else Path(folder) / "student"
    stale = []
    for path in solution_notebooks(folder):
        target = out_dir / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != student_text(path):
            stale.append(path.name)
    return stale


# ----------------------------------------------------------------------------- grading
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

    @property
    def score(self) -> float:
        return sum(r.earned for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.points for r in self.results)

    def to_json(self) -> dict:
        return {"notebook": self.notebook, "score": self.score, "max_score": self.max_score,
                "seconds": round(self.seconds, 1), "executed": self.executed,
                "exercises": [asdict(r) for r in self.results], "other_errors": self.other_errors}

    def to_text(self) -> str:
        width = max((len(r.grade_id) for r in self.results), default=10)
        lines = [f"{self.notebook}: {self.score:g} / {self.max_score:g} points "
                 f"({100 * self.score / max(self.max_score, 1e-9):.0f} %)"]
        for r in self.results:
            mark = "pass" if r.passed else "FAIL"
            lines.append(f"  {mark}  {r.grade_id:<{width}}  {r.earned:g}/{r.points:g}"
                         + (f"  {r.error}" if r.error else ""))
        for error in self.other_errors:
            lines.append(f"  note: outside the checks, {error}")
        return "\n".join(lines)


def _error_of(cell) -> str:
    """The first error a cell's outputs hold, as 'Name: message' (one line), or ''."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            message = f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".strip()
            return message.splitlines()[0] if message else "error"
    return ""


def execute(nb, cwd: Path, timeout: int = 600, quick: bool = True):
    """Run every cell of ``nb`` in a fresh python3 kernel in ``cwd``, going on after errors.

    Quick mode is set through ``JDM_QUICK`` (every notebook's first cell follows it). A cell that
    runs past ``timeout`` seconds is interrupted and counts as an error, as in nbgrader.
    """
    from nbclient import NotebookClient

    env_before = os.environ.get("JDM_QUICK")
    os.environ["JDM_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                interrupt_on_timeout=True,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("JDM_QUICK", None)
        else:
            os.environ["JDM_QUICK"] = env_before
    return nb


def grade(path: Path, timeout: int = 600, quick: bool = True, run: bool = True) -> GradeReport:
    """Score a notebook's check cells: full points for a check cell that ran without an error.

    ``run=False`` grades the outputs already stored in the notebook (a check cell that was never
    run scores 0). With ``run=True`` the notebook is executed first, in its own folder; the file on
    disk is left as it was.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    found = exercises(nb)
    if not found:
        raise ValueError(f"{path.name} has no graded check cells (nbgrader metadata 'grade': true)")
    start = time.time()
    if run:
        execute(nb, path.resolve().parent, timeout=timeout, quick=quick)
    report = GradeReport(path.name, seconds=time.time() - start, executed=run)
    for ex in found:
        cell = nb.cells[ex.cell_index]
        ran = cell.get("execution_count") is not None
        error = _error_of(cell) or ("" if ran else "the check cell did not run")
        report.results.append(ExerciseResult(ex.grade_id, ex.points, 0 if error else ex.points,
                                             not error, error))
    checks = {ex.cell_index for ex in found}
    report.other_errors = [f"cell {i}: {_error_of(cell)}" for i, cell in enumerate(nb.cells)
                           if i not in checks and _error_of(cell)]
    return report


def write_report(reports: list[GradeReport], path: Path) -> None:
    """The JSON form of one or more reports (what ``--json`` writes)."""
    Path(path).write_text(json.dumps([r.to_json() for r in reports], indent=1) + "\n")
