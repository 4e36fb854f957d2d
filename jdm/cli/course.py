"""``jdm course``: the student editions and the grader (``jdm.course``, ``jdm.grading``)."""
from __future__ import annotations

from pathlib import Path

from ..cli_types import int_in
from ..outputs import check_output


def add_course(subparsers) -> None:
    p = subparsers.add_parser(
        "course", help="student editions of the notebooks, and a grader that needs no nbgrader",
        description="'course student' writes notebooks/student/ from the solution notebooks (answers "
                    "stubbed as nbgrader would, outputs cleared); 'course student --check' only says "
                    "whether they are up to date. 'course grade NB…' executes each notebook in quick "
                    "mode (every cell, also after an error) and scores its check cells.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                               help="student (write the student editions) or grade (score notebooks)")
    s = actions.add_parser("student", help="write (or --check) notebooks/student/")
    s.add_argument("--out", type=Path, default=None, help="folder (default notebooks/student)")
    s.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a student notebook is missing or out of date")
    g = actions.add_parser("grade", help="execute and score notebooks")
    g.add_argument("notebooks", nargs="+", type=Path, help="the notebooks to grade (.ipynb)")
    g.add_argument("--timeout", type=int_in(1, 86_400), default=600, help="seconds per cell (default 600)")
    g.add_argument("--full", action="store_true", help="run in full mode instead of quick mode")
    g.add_argument("--no-run", action="store_true",
                   help="grade the outputs stored in the notebook instead of executing it")
    g.add_argument("--json", type=Path, default=None, help="also write the reports as JSON here")
    p.set_defaults(func=run_course)


def run_course(args) -> int:
    try:  # nbformat and nbclient: the course or test extra
        from .. import course, grading
    except ImportError as err:
        raise ValueError(f"{err}; install the course tools with: pip install -e \".[course]\"") from None

    if args.action == "student":
        if not args.check:
            check_output(args.out, "folder", "--out")  # None: the default notebooks/student
        if args.check:
            stale = course.stale_student_editions(args.out)
            for name in stale:
                print(f"out of date: {name} (run: python -m jdm course student)")
            print("student notebooks up to date" if not stale else f"{len(stale)} out of date")
            return 1 if stale else 0
        for path in course.write_student_editions(args.out):
            print(f"wrote {path}")
        return 0
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    check_output(args.json, "json", "--json")  # before grading, which can take hours for a class
    reports = []   # every notebook is read before any runs: one cannot rewrite the next
    for report in grading.grade_many(args.notebooks, timeout=args.timeout, quick=not args.full,
                                    run=not args.no_run):
        print(report.to_text(), flush=True)
        reports.append(report)
    if len(reports) > 1:
        score, total = sum(r.score for r in reports), sum(r.max_score for r in reports)
        print(f"total: {score:g} / {total:g} points")
    if args.json is not None:
        grading.write_report(reports, args.json)
        print(f"wrote {args.json}")
    return 0


