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
autograder does) and scores the check cells against the solution notebook (:mod:`jdm.grading`).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN, END = "BEGIN SOLUTION", "END SOLUTION"    # nbgrader's delimiters (found anywhere in a line)
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"   # nbgrader's ClearSolutions.code_stub
TEXT_STUB = "YOUR ANSWER HERE"                                # nbgrader's ClearSolutions.text_stub
SCHEMA_VERSION = 3                                            # nbgrader's cell-metadata schema
GRADE_ID = re.compile(r"^[A-Za-z0-9_\-]+$")                   # what nbgrader accepts as a grade_id
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NOTATION = "NOTATION.md"   # the notation sheet every notebook header links, copied beside the students'


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


STUDENT_NOTE = """**How to work this notebook.** Run the cells in order from the top (Shift+Enter). Each
exercise is a cell with `# YOUR CODE HERE`: replace `raise NotImplementedError()` by your code, run
that cell, then run the check cell below it. A check prints ✓ when your answer is right, or says
what is wrong (never how to fix it). *Run All* stops at the first check whose exercise is not done
yet; that is expected: click the cell after it and use *Run → Run Selected Cell and All Below*. The
notebook never uses your answers after their check, so an unfinished exercise costs only its own
points. Check cells are locked; their first line, `# NBVAL_CHECK_OUTPUT`, only tells the course's
automatic tests to compare that cell's output: leave it. `QUICK = True` in the first code cell makes
every loop short. Symbols (α and ᾱ, 0-based t, γ and s, η, t\\*): the
[notation sheet](NOTATION.md)."""
"""The note :func:`student_edition` puts under a student edition's title (not in the solutions)."""


def student_edition(nb):
    """A copy of a solution notebook as a student receives it: answers stubbed, outputs cleared,
    and :data:`STUDENT_NOTE` under the title."""
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
    note = nbformat.v4.new_markdown_cell(STUDENT_NOTE)
    note.id = "jdm-student-note"   # a fixed id: the same solution gives the same student edition
    student.cells.insert(1, note)
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
    if (Path(folder) / NOTATION).exists():   # the notebooks' headers link it, beside them
        (out_dir / NOTATION).write_text((Path(folder) / NOTATION).read_text(encoding="utf-8"),
                                        encoding="utf-8")
        written.append(out_dir / NOTATION)
    return written


def stale_student_editions(out_dir: Path | None = None, folder: Path = NOTEBOOKS) -> list[str]:
    """Names of student notebooks that are missing or differ from what their solutions generate."""
    out_dir = Path(out_dir) if out_dir is not None else Path(folder) / "student"
    stale = []
    for path in solution_notebooks(folder):
        target = out_dir / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != student_text(path):
            stale.append(path.name)
    notation = Path(folder) / NOTATION
    if notation.exists() and (not (out_dir / NOTATION).exists() or (out_dir / NOTATION).read_text(
            encoding="utf-8") != notation.read_text(encoding="utf-8")):
        stale.append(NOTATION)
    return stale
