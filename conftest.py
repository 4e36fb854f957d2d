"""Shared pytest set-up for the unit tests (tests/) and the notebook tests (notebooks/, nbval).

* Notebooks run in quick mode unless the caller says otherwise (``JDM_QUICK=0 pytest notebooks``
  for the full-size run on a GPU). The variable is set before any kernel starts, so nbval's
  kernels inherit it.
* stderr (tqdm's progress bars, warnings) is never compared: it differs between machines.
* With ``--durations`` the summary also lists the files that took longest (CI's "where the time
  goes", with pytest-xdist too: workers report each test's duration to the main process).
"""
import collections
import os

os.environ.setdefault("JDM_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (.ci/run: `pytest -n 2`) each worker gets its share of the cores as OpenMP
# threads, unless the caller chose: torch's default, every core in every worker, oversubscribes the
# CPU, and OpenMP's spinning threads then slow all workers. Set before torch is imported (below);
# notebook kernels and subprocesses inherit it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


# Progress bars are never compared either. Without ipywidgets tqdm writes them to stderr (skipped
# above); with it (nbgrader, in the test extra, brings it) they are widget-view display outputs,
# which committed notebooks do not keep (tools/strip_widgets.py). nbval would skip their widget
# part but still compare their plain-text first frame, so they are dropped before comparing.
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _without_widget_views(outputs: list) -> list:
    return [out for out in outputs if WIDGET_VIEW not in out.get("data", {})]


try:
    from nbval.plugin import IPyNbCell
except ImportError:  # pragma: no cover - nbval is in the test extra
    pass
else:
    _nbval_compare = IPyNbCell.compare_outputs

    def _compare_without_widget_views(self, test, ref, skip_compare=None):
        return _nbval_compare(self, _without_widget_views(test), _without_widget_views(ref), skip_compare)

    IPyNbCell.compare_outputs = _compare_without_widget_views


# --------------------------------------------------------------------------- the test device
# One switch for the unit tests' device: `JDM_TEST_DEVICE=cuda pytest tests` runs every test that
# takes the `device` fixture on the GPU (tests/test_devices.py runs the public API there).
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device the unit tests run models on: $JDM_TEST_DEVICE, default the CPU."""
    name = os.environ.get("JDM_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"JDM_TEST_DEVICE={name} but CUDA is not available here")
    return torch.device(name)


# --------------------------------------------------------------------------- where the time goes
# Seconds of setup + call + teardown summed per file (test module or notebook), shown with
# --durations: pytest's own list names single steps, this one the files to look at first.
_seconds_per_file: collections.Counter = collections.Counter()


def pytest_runtest_logreport(report):
    _seconds_per_file[report.nodeid.split("::")[0]] += report.duration


@pytest.hookimpl(trylast=True)   # below pytest's own list of the slowest steps
def pytest_terminal_summary(terminalreporter, config):
    if config.getoption("durations") is None or not _seconds_per_file:
        return
    terminalreporter.write_sep("=", "slowest files (seconds of setup + call + teardown)")
    for path, seconds in _seconds_per_file.most_common(15):
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
    parts = collections.Counter()
    for path, seconds in _seconds_per_file.items():
        parts[path.split("/")[0]] += seconds
    terminalreporter.write_line("   total: " + ", ".join(f"{part}/ {seconds:.0f}s"
                                                        for part, seconds in parts.most_common()))


# --------------------------------------------------------------------------- pytest-xdist
# These files start torchrun jobs, whose gloo ranks wait on each other: on a 2-core machine two such
# jobs at once starve each other past their timeouts (measured: the 2-rank runs of
# test_distributed.py timed out beside the GPU dry run's three). Under --dist loadfile they are one
# unit of work, so one worker runs them one after the other.
TORCHRUN_FILES = ("tests/test_distributed.py", "tests/test_gpu_run.py")


@pytest.hookimpl(optionalhook=True)   # a no-op where pytest-xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class OneTorchrunFileAtATime(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return TORCHRUN_FILES[0] if scope in TORCHRUN_FILES else scope

    return OneTorchrunFileAtATime(config, log)
