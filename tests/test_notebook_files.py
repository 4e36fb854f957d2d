"""The committed notebooks: executed, kernel python3, small, no widget state (DESIGN.md, Notebooks)."""
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_the_course_has_its_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert len(NOTEBOOKS) >= 7


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_executed_and_small(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata, "run tools/strip_widgets.py on it"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "commit it executed"
    for cell in code:
        for out in cell.outputs:
            assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {})
            assert out.get("output_type") != "error", f"an error output in {path.name}"
    assert path.stat().st_size < 1_000_000


def _output_texts(nb) -> list[str]:
    """Every stream text and plain-text result of a notebook's code cells."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            for out in cell.get("outputs", []):
                texts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_progress_bar_stuck_below_100_percent(path):
    """tqdm's text bars keep only their final state (tools/strip_widgets.py): a '  0%|' left in a
    committed output is a frozen widget bar or a run cut short."""
    stuck = [m.group(0) for text in _output_texts(nbformat.read(path, as_version=4))
             for m in re.finditer(r"(?<!\d)\d{1,2}%\|[^\n]{0,40}", text)]
    assert not stuck, f"progress bars below 100 % in {path.name}: {stuck[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header_and_quick_mode_switch_come_first(path):
    """Cell 0 says what you will learn, the prerequisites, the paper's section with its link and the
    measured minutes; the first code cell switches quick mode before anything runs."""
    nb = nbformat.read(path, as_version=4)
    header = nb.cells[0].source
    assert nb.cells[0].cell_type == "markdown"
    for part in ("**What you will learn", "**Prerequisites", "**Paper", "arxiv.org/abs/2301.13622",
                 "**Time", "CPU full mode", "CPU quick"):
        assert part in header, f"{path.name}: the header lacks {part!r}"
    assert not re.search(r"\{CPU_\w+\}", header), f"{path.name}: a time left unfilled"
    first_code = next(c for c in nb.cells if c.cell_type == "code").source
    assert "QUICK = None" in first_code and "jdm.set_quick_mode(QUICK)" in first_code
