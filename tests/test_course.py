"""The course as assignments (jdm/course.py): exercise metadata, student editions, the grader."""
import copy
import json
import re

import nbformat
import pytest

import jdm.checks
from jdm import course, grading
from jdm.__main__ import main

NOTEBOOKS = course.solution_notebooks()
CHECK_CALL = re.compile(r"^# NBVAL_CHECK_OUTPUT\njdm\.checks\.(\w+)\((\w+)\)$")



# What issue 12 asks the exercises to cover, and the check that covers each.
TOPICS = {
    "a β schedule": "cosine_betas", "q_sample": "q_sample", "the posterior mean/variance": "posterior",
    "a DDIM step": "ddim_step", "the time embedding or a ResBlock": "timestep_embedding",
    "the encode/decode split": "edit_bottleneck", "the DDPM loss": "ddpm_loss", "an EMA update": "ema_update",
    "a linear probe": "linear_probe", "the head's pooling": "pooled_features", "the joint loss": "joint_loss",
    "gradient routing": "ce_gradient_norms", "ECE": "ece", "Fréchet distance": "frechet",
    "the representation-sampler step": "paper_eps", "classifier guidance's ε shift": "guidance_shift",
    "the counterfactual loop": "counterfactual_loop", "a flip-rate metric": "counterfactual_scores",
    "a semi-supervised loss with unlabelled examples": "semi_supervised_loss",
}


def _read(path):
    return nbformat.read(path, as_version=4)


def _solution_and_check_pairs(nb):
    """(solution cell, check cell) for every exercise, asserting each answer is followed by its check."""
    pairs = []
    for i, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            check = nb.cells[i + 1]
            assert check.metadata.get("nbgrader", {}).get("grade"), f"{meta['grade_id']}: no check cell after it"
            pairs.append((cell, check))
    return pairs


# ----------------------------------------------------------------------------- stubbing
def test_clear_solution_keeps_indentation_and_the_hint():
    source = ("def f(x):\n    \"\"\"Doc.\"\"\"\n    # Hint: square it.\n    ### BEGIN SOLUTION\n"
              "    y = x * x\n    return y\n    ### END SOLUTION\n")
    assert course.clear_solution(source) == ("def f(x):\n    \"\"\"Doc.\"\"\"\n    # Hint: square it.\n"
                                             "    # YOUR CODE HERE\n    raise NotImplementedError()\n")
    assert course.clear_solution("Answer: ### BEGIN SOLUTION\n42\n### END SOLUTION", "markdown") == \
        "YOUR ANSWER HERE"


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1\n", "### BEGIN SOLUTION\n### BEGIN SOLUTION\n"
                                    "### END SOLUTION\n"])
def test_clear_solution_refuses_broken_markers(source):
    with pytest.raises(ValueError, match="BEGIN SOLUTION"):
        course.clear_solution(source)


def _tiny_notebook():
    nb = nbformat.v4.new_notebook()
    sol = nbformat.v4.new_code_cell("def f():\n    # Hint: one.\n    ### BEGIN SOLUTION\n    return 1\n"
                                    "    ### END SOLUTION")
    sol.metadata["nbgrader"] = course.solution_metadata("ex-f-answer")
    chk = nbformat.v4.new_code_cell("assert f() == 1")
    chk.metadata["nbgrader"] = course.check_metadata("ex-f", 2)
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), sol, chk]
    return nb


def test_exercises_reject_malformed_metadata():
    nb = _tiny_notebook()
    assert [(e.grade_id, e.points) for e in course.exercises(nb)] == [("ex-f", 2)]
    for breaking in ("repeat", "points", "marker", "id"):
        bad = copy.deepcopy(nb)
        if breaking == "repeat":
            bad.cells[2].metadata.nbgrader.grade_id = "ex-f-answer"
        elif breaking == "points":
            bad.cells[2].metadata.nbgrader.points = 0
        elif breaking == "marker":
            bad.cells.append(nbformat.v4.new_code_cell("### BEGIN SOLUTION\n### END SOLUTION"))
        else:
            bad.cells[2].metadata.nbgrader.grade_id = "ex f"
        with pytest.raises(ValueError):
            course.exercises(bad)


# ----------------------------------------------------------------------------- the notebooks
def test_at_least_24_graded_exercises_in_every_notebook_with_checks():
    counts = {p.name[:2]: len(course.exercises(_read(p))) for p in NOTEBOOKS}
    assert sorted(counts) == [f"{i:02d}" for i in range(1, 9)], counts
    assert sum(counts.values()) >= 24, counts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_exercise_is_an_answer_a_hint_and_one_check(path):
    nb = _read(path)
    pairs = _solution_and_check_pairs(nb)
    assert len(pairs) == len(course.exercises(nb))
    number = int(path.name[:2])
    for solution, check in pairs:
        lines = solution.source.split("\n")
        begin = next(i for i, line in enumerate(lines) if course.BEGIN in line)
        first = begin - 1   # the hint: the comment lines just above the solution, wrapped
        while lines[first].strip().startswith("#   "):
            first -= 1
        assert lines[first].strip().startswith("# Hint:"), f"{solution.metadata.nbgrader.grade_id}: no hint"
        assert solution.metadata.nbgrader.grade_id == check.metadata.nbgrader.grade_id + "-answer"
        match = CHECK_CALL.match(check.source)
        assert match, f"check cell should be one jdm.checks call: {check.source!r}"
        name, function = match.groups()
        assert name in jdm.checks.__all__
        assert re.search(rf"\bdef {function}\(", solution.source), f"{name} checks {function}, not defined above"
        assert getattr(jdm.checks, name).title.startswith(f"Exercise {number}."), name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_hints_fit_the_screen(path):
    """A hint is read in the student edition, in a code cell: at most 99 columns."""
    wide = [line for cell in _read(path).cells if cell.metadata.get("nbgrader", {}).get("solution")
            for line in cell.source.split("\n") if "# Hint:" in line or line.strip().startswith("#   ")
            if len(line) > 99]
    assert not wide, wide


def test_the_exercises_cover_the_topics_the_course_promises():
    missing = {topic: name for topic, name in TOPICS.items() if name not in jdm.checks.__all__}
    assert not missing, missing


def test_every_check_is_used_once_by_the_notebooks():
    used = [CHECK_CALL.match(check.source).group(1) for p in NOTEBOOKS
            for _, check in _solution_and_check_pairs(_read(p))]
    assert sorted(used) == sorted(set(used)), "a check used twice"
    assert set(used) == set(jdm.checks.__all__) - {"CheckFailed"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_edition_stubs_answers_and_keeps_everything_else(path):
    nb, student = _read(path), course.student_edition(_read(path))
    assert len(student.cells) == len(nb.cells) + 1
    note = student.cells.pop(1)   # the how-to note under the title, in student editions only
    assert note.cell_type == "markdown" and note.source == course.STUDENT_NOTE
    for cell, mine in zip(nb.cells, student.cells):
        assert mine.cell_type == cell.cell_type and mine.metadata.get("nbgrader") == cell.metadata.get("nbgrader")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            assert "raise NotImplementedError()" in mine.source and course.BEGIN not in mine.source
        else:
            assert mine.source == cell.source
        if mine.cell_type == "code":
            assert mine.outputs == [] and mine.execution_count is None


def test_committed_student_notebooks_are_up_to_date():
    assert course.stale_student_editions() == [], "run: python -m jdm course student"


# ----------------------------------------------------------------------------- the grader
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_solutions_score_full_marks_from_their_outputs(path):
    report = grading.grade(path, run=False)
    assert report.score == report.max_score > 0, report.to_text()


def test_grader_scores_a_solution_and_one_solved_exercise(tmp_path):
    """Executed in quick mode: 100 %, and a student edition with only its second exercise answered
    gets exactly that exercise's points (the untouched ones: the test below)."""
    solution = NOTEBOOKS[0]
    full = grading.grade(solution)
    assert full.score == full.max_score and full.other_errors == [], full.to_text()

    student_path = tmp_path / solution.name
    student = course.student_edition(_read(solution))
    answer, check = _solution_and_check_pairs(_read(solution))[1]
    for cell in student.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == answer.metadata.nbgrader.grade_id:
            cell.source = answer.source
    nbformat.write(student, student_path)
    one = grading.grade(student_path)
    assert one.score == check.metadata.nbgrader.points
    assert [r.grade_id for r in one.results if r.passed] == [check.metadata.nbgrader.grade_id]


def test_cli_grade_writes_text_and_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["course", "grade", "--no-run", str(NOTEBOOKS[0]), str(NOTEBOOKS[1]), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "100 %" in text and "total:" in text
    reports = json.loads(out.read_text())
    assert [r["score"] == r["max_score"] for r in reports] == [True, True]
    assert all({"grade_id", "points", "earned", "passed"} <= set(e) for e in reports[0]["exercises"])


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["course", "grade", str(tmp_path / "missing.ipynb")]) == 2
    assert "no notebook at" in capsys.readouterr().err
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), plain)
    assert main(["course", "grade", "--no-run", str(plain)]) == 2
    assert "no graded check cells" in capsys.readouterr().err
    assert main(["course", "student", "--check"]) == 0


STUDENT_NOTEBOOKS = sorted((course.NOTEBOOKS / "student").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", STUDENT_NOTEBOOKS, ids=lambda p: p.name)
def test_untouched_student_notebook_scores_zero_and_fails_only_in_its_checks(path):
    """Run top to bottom in quick mode (going on after errors, as the graders do): every check says
    its exercise is not done yet, and no other cell raises — nothing after an exercise uses it."""
    report = grading.grade(path)
    assert report.score == 0 and report.other_errors == [], report.to_text()
    nb = _read(path)
    for result, exercise in zip(report.results, course.exercises(nb)):
        title = getattr(jdm.checks, CHECK_CALL.match(exercise.source).group(1)).title
        assert result.error.startswith(f"NotImplementedError: {title} is not done yet"), result.error


def test_instructor_guide_lists_every_exercise_with_its_points():
    guide = (course.NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    exercises = [e for p in NOTEBOOKS for e in course.exercises(_read(p))]
    for e in exercises:
        assert f"`{e.grade_id}` | {e.points:g} |" in guide, f"{e.grade_id} ({e.points:g} points) not in the guide"
    assert f"{len(exercises)} graded exercises, {sum(e.points for e in exercises):g} points" in guide


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_instructor_guide_quotes_each_notebooks_own_times(path):
    """The guide's "run: full / quick" column is what the notebook's header measured."""
    header = " ".join(_read(path).cells[0].source.split())
    full = re.search(r"CPU full mode: ([\d.]+) min", header).group(1)
    quick = re.search(r"CPU quick mode: ([\d.]+) min", header).group(1)
    guide = (course.NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    row = next(line for line in guide.splitlines() if line.startswith(f"| {path.name[:2]} "))
    assert row.endswith(f"| {full} / {quick} min |"), (row, full, quick)
