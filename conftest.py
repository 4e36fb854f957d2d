"""Shared pytest set-up for the unit tests (tests/) and the notebook tests (notebooks/, nbval).

* Notebooks run in quick mode unless the caller says otherwise (``JDM_QUICK=0 pytest notebooks``
  for the full-size run on a GPU). The variable is set before any kernel starts, so nbval's
  kernels inherit it.
* stderr (tqdm's progress bars, warnings) is never compared: it differs between machines.
"""
import os

os.environ.setdefault("JDM_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
