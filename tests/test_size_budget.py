"""The repository's size budget (DESIGN.md): the whole working tree travels to the GPU machine,
64 MiB at most with ~5 MB of nbval wheels, so the tracked files must stay within 55 MiB."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUDGET_BYTES = 55 * 2**20


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_tracked_files_fit_the_budget():
    sizes = {p: p.stat().st_size for p in tracked_files() if p.is_file()}  # deleted: not counted
    total = sum(sizes.values())
    largest = sorted(sizes, key=sizes.get, reverse=True)[:5]
    assert total <= BUDGET_BYTES, (
        f"tracked files are {total / 2**20:.1f} MiB, over the {BUDGET_BYTES / 2**20:.0f} MiB budget; "
        "largest: " + ", ".join(f"{p.relative_to(ROOT)} ({sizes[p] / 2**20:.1f} MiB)" for p in largest)
        + ". Replace a checkpoint of the same kind instead of adding one, in half precision.")


def test_no_tracked_file_is_too_big_to_travel_back():
    too_big = [p for p in tracked_files() if p.is_file() and p.stat().st_size > 16 * 2**20
               and p.parent.name == "checkpoints"]
    assert not too_big, f"checkpoints over 16 MiB: {too_big}"
