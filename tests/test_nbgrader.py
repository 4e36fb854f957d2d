"""nbgrader itself on a course folder made from the solution notebooks (issue 12).

``generate_assignment`` must accept every notebook and release what ``python -m jdm course student``
writes, source for source; ``autograde`` must give a submitted solution full marks and an untouched
release zero. Autograding executes notebooks, so CI autogrades notebook 01 only (about a minute);
``JDM_GRADE_ALL=1 pytest tests/test_nbgrader.py`` autogrades every notebook (quick mode, ~15 CPU-minutes).
"""
import csv
import getpass
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from jdm import course

nbgrader = pytest.importorskip("nbgrader", reason="nbgrader is in the test extra")

NOTEBOOKS = course.solution_notebooks()
CONFIG = """c = get_config()
c.CourseDirectory.course_id = "jdm"
c.Execute.timeout = 600   # seconds per cell; quick mode needs far less
"""


def _nbgrader(root: Path, *args: str) -> None:
    env = dict(os.environ, JDM_QUICK="1", MPLBACKEND="Agg",
               # nbgrader runs the `alembic` executable of its own environment
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _course(tmp_path: Path, assignment: str, notebooks: list[Path]) -> Path:
    root = tmp_path / "course"
    (root / "source" / assignment).mkdir(parents=True)
    (root / "nbgrader_config.py").write_text(CONFIG)
    for path in notebooks:
        shutil.copy(path, root / "source" / assignment / path.name)
    _nbgrader(root, "generate_assignment", assignment)
    return root


def test_generate_assignment_releases_our_student_editions(tmp_path):
    root = _course(tmp_path, "course", NOTEBOOKS)
    for path in NOTEBOOKS:
        released = nbformat.read(root / "release" / "course" / path.name, as_version=4)
        ours = course.student_edition(nbformat.read(path, as_version=4))
        assert ours.cells.pop(1).source == course.STUDENT_NOTE   # our editions' how-to note
        assert [c.source for c in released.cells] == [c.source for c in ours.cells], path.name
        assert all(c.get("outputs", []) == [] for c in released.cells)


def _autograde(tmp_path: Path, notebooks: list[Path]) -> dict:
    """Submit the solutions as 'solved' and the untouched release as 'untouched'; their scores."""
    from nbgrader.api import Gradebook

    root = _course(tmp_path, "a", notebooks)
    for student, folder in (("solved", root / "source" / "a"), ("untouched", root / "release" / "a")):
        _nbgrader(root, "db", "student", "add", student)
        shutil.copytree(folder, root / "submitted" / student / "a")
    _nbgrader(root, "autograde", "a")
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
        return {student: (gradebook.find_submission("a", student).score,
                          gradebook.find_submission("a", student).max_score)
                for student in ("solved", "untouched")}


def _guide_blocks() -> list[str]:
    """The bash blocks of the guide's nbgrader section, in order."""
    guide = (course.NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    section = guide.split("## Handing out and grading with nbgrader")[1].split("\n## ")[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def _bash(script: str, cwd: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, script + done.stdout[-3000:] + done.stderr[-3000:]


def test_the_guides_nbgrader_cycle_runs_from_release_to_grades_and_feedback(tmp_path):
    """notebooks/README.md's commands in order on notebook 01: a student fetches through the
    exchange and submits the solution; a second hands in the untouched release by the guide's
    no-exchange route (a copy into submitted/). Full marks and zero in grades.csv, and feedback HTML."""
    setup, student, grading = _guide_blocks()
    course_dir, checkout, home = tmp_path / "course", course.NOTEBOOKS.parent, tmp_path / "student"
    setup = re.sub(r"^COURSE=\S+", f"COURSE={course_dir}", setup, flags=re.M)
    _bash(re.sub(r"^JDM=\S+", f"JDM={checkout}", setup, flags=re.M), tmp_path)

    home.mkdir()
    (home / "nbgrader_config.py").write_text(f'c = get_config()\nc.Exchange.root = "{course_dir / "exchange"}"\n')
    fetch, submit = student.strip().splitlines()
    _bash(fetch, home)
    name = NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], home / "ps01" / name)          # the student's work: the solution
    _bash(submit, home)
    (course_dir / "submitted" / "untouched" / "ps01").mkdir(parents=True)
    shutil.copy(course_dir / "release" / "ps01" / name, course_dir / "submitted" / "untouched" / "ps01")
    _bash(grading, course_dir)

    total = sum(e.points for e in course.exercises(nbformat.read(NOTEBOOKS[0], as_version=4)))
    rows = {row["student_id"]: row for row in csv.DictReader(open(course_dir / "grades.csv"))}
    me = getpass.getuser()
    assert {s: (float(rows[s]["raw_score"]), float(rows[s]["max_score"])) for s in (me, "untouched")} == \
        {me: (total, total), "untouched": (0, total)}
    for s in (me, "untouched"):
        assert (course_dir / "feedback" / s / "ps01" / name.replace(".ipynb", ".html")).exists()


@pytest.mark.skipif(os.environ.get("JDM_GRADE_ALL") != "1", reason="set JDM_GRADE_ALL=1 (~15 CPU-minutes)")
def test_autograde_every_notebook(tmp_path):
    scores = _autograde(tmp_path, NOTEBOOKS)
    total = sum(e.points for p in NOTEBOOKS for e in course.exercises(nbformat.read(p, as_version=4)))
    assert scores == {"solved": (total, total), "untouched": (0, total)}
