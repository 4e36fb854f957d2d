"""benchmarks/bench_counterfactuals.py: row names and the markdown report it renders."""
import json

import pytest

from scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_counterfactuals.py")


def row(**kw):
    base = {"targets": "runner-up", "n": 500, "start": "inversion", "kind": "classifier", "scale": 300.0,
            "eta": 0.5, "keep": 0.0, "min_change": 0.0, "t_star": 225, "flip_rate": 0.872,
            "kept_rate": 0.166, "l1": 0.184, "fd": 7.9, "seconds": 100.0}
    return {**base, **kw}


def test_row_names_tell_settings_apart(bench):
    names = {bench.row_name("runner-up", 500, "inversion", "classifier", 300.0, t, 0.0, None, m, rule)
             for t in (225, "auto") for m in (0.0, 0.3) for rule in ((0.15, 0.025, 0.5), (0.175, 0.025, 0.5))}
    assert len(names) == 6   # the rule tells auto rows apart; a fixed t* has none
    assert bench.row_name("random", 200, "noise", "classifier", 300.0, "auto", 0.1, 0.5, 0.3,
                          (0.15, 0.025, 0.5)) == \
        "random | n=200 | noise | classifier 300 | t*=auto | keep 0.1 | eta 0.5 | min change 0.3 | rule 0.15 0.025 0.5"


def test_report_shows_auto_rows_with_their_mean_t_star(bench):
    report = {"settings": {"model": "m", "steps": 20, "seed": 0, "hardware": "cpu"},
              "rows": [row(), row(t_star="auto", t_star_mean=282.75, min_change=0.3, flip_rate=0.904,
                               auto_rule=[0.175, 0.025, 0.5]),
                       row(t_star=75), row(targets="random", n=200, t_star=400),
                       row(first=8000, flip_rate=0.5)]}
    text = bench.markdown_report(report)
    lines = [line for line in text.splitlines() if line.startswith("| inversion")]
    # sorted by min_change, then fixed t* in numeric order (75 before 225), then auto
    assert [line.split(" | ")[6] for line in lines[:3]] == ["75", "225", "auto 0.175/0.025/0.5 (283)"]
    assert "| 0.3 | auto 0.175/0.025/0.5 (283) | 500 | 0.904 |" in text
    assert "## random targets" in text
    # a tuning slice gets its own table, after the report's images
    tuning = text.index("## runner-up targets, tuning slice: test images 8000–8499")
    assert text.index("| 0.500 |") > tuning > text.index("| 0.904 |")


def test_a_report_refuses_another_models_rows(bench, tmp_path):
    path = tmp_path / "report.json"
    settings = {"model": "joint-fmnist-small", "steps": 20, "seed": 0, "hardware": "cpu"}
    bench.merge(path, [row(name="a")], settings)
    bench.merge(path, [row(name="b")], settings)
    with pytest.raises(SystemExit, match="holds rows of joint-fmnist-small"):
        bench.merge(path, [row(name="c")], {**settings, "model": "joint-fmnist-small-gpu"})
    assert [r["name"] for r in json.loads(path.read_text())["rows"]] == ["a", "b"]
