"""Course plumbing: the one device helper, the one seeding helper and the one quick-mode switch.

Quick mode (``JDM_QUICK=1`` in the environment) shrinks every training and sampling loop so the
whole course executes in minutes on a CPU. It is read here and nowhere else: code asks
``quick_mode()`` or ``pick(full=..., quick=...)``.
"""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import torch

__all__ = ["get_device", "hardware_string", "seed_everything", "quick_mode", "set_quick_mode",
           "sweeps_enabled", "env_switch", "pick"]


def hardware_string(device: torch.device) -> str:
    """Where a run happened, for logs and manifests, e.g. 'NVIDIA H100 … (cuda), 16 CPU cores, …'."""
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU {platform.processor() or platform.machine()}")
    return (f"{name} ({device.type}), {os.cpu_count()} CPU cores, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple MPS, then CPU.

    ``prefer`` ("cuda", "mps", "cpu" or e.g. "cuda:1") forces a choice; asking for a device that is
    not available raises ``ValueError`` instead of silently falling back.
    """
    if prefer is not None:
        device = torch.device(prefer)
        available = {
            "cpu": True,
            "cuda": torch.cuda.is_available(),
            "mps": torch.backends.mps.is_available(),
        }.get(device.type, False)
        if not available:
            raise ValueError(f"device {prefer!r} is not available here; use 'cpu' or leave it unset")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, torch (CPU and every GPU) and return a CPU ``torch.Generator`` seeded alike.

    NumPy is seeded too when it is installed (matplotlib brings it), so notebooks are repeatable.
    ``seed`` is an int in 0 .. 2**32 - 1 (NumPy's range; the Trainer multiplies it by 1_000_003).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in 0..{2**32 - 1}, got {seed!r}")
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy ships with matplotlib
        pass
    return torch.Generator().manual_seed(seed)


_ON, _OFF = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
QUICK_FORCED = "force"   # JDM_QUICK=force: quick mode that a notebook's set_quick_mode cannot turn off


def env_switch(name: str, more_on: tuple[str, ...] = ()) -> bool:
    """An on/off environment variable: 1/true/yes/on (and ``more_on``) is True, unset/empty/0/false/
    no/off False (any case, surrounding spaces ignored). Anything else (``2``, ``maybe``, ``1.0``)
    is a ``ValueError`` naming the variable: a typo must not silently mean hours of full mode."""
    value = os.environ.get(name, "").strip().lower()
    if value not in _ON + _OFF + more_on:
        raise ValueError(f"{name}={os.environ[name]!r} is not an on/off value; use one of "
                         f"{', '.join(_ON + more_on)} (on) or {', '.join(v for v in _OFF if v)} (off)")
    return value in _ON + more_on


def quick_mode() -> bool:
    """True when ``JDM_QUICK`` is 1/true/yes/on, or force (graders: a notebook cannot turn it off):
    loops shrink so everything runs in minutes (``env_switch`` lists the accepted values)."""
    return env_switch("JDM_QUICK", more_on=(QUICK_FORCED,))


def set_quick_mode(quick: bool | None) -> None:
    """Switch quick mode from inside a notebook, before anything runs (its first code cell).

    True or False overrides ``JDM_QUICK`` for this process (and the processes it starts); None
    leaves the environment variable in charge, which is how CI runs the notebooks quick. Graders
    set ``JDM_QUICK=force``, which wins: a submission's ``QUICK = False`` cannot make grading slow.
    """
    if not isinstance(quick, (bool, type(None))):
        raise ValueError(f"quick must be True, False or None, got {quick!r}")
    if quick is None or os.environ.get("JDM_QUICK", "").strip().lower() == QUICK_FORCED:
        return
    os.environ["JDM_QUICK"] = "1" if quick else "0"


def sweeps_enabled() -> bool:
    """True when ``JDM_SWEEPS`` is set to 1/true/yes: a notebook re-runs its expensive sweeps instead of
    showing the stored results of their last full run (each says which command regenerates them)."""
    return env_switch("JDM_SWEEPS")


def project_path(*parts: str) -> Path:
    """A path inside the checkout the notebooks run from (``project_path("docs", "samplers.json")``).

    Notebooks read stored results through it rather than ``../docs``, so they work from any folder:
    ``notebooks/``, ``notebooks/student/`` or an nbgrader course folder.
    """
    return Path(__file__).resolve().parent.parent.joinpath(*parts)


def pick(full, quick):
    """Return ``quick`` in quick mode and ``full`` otherwise (e.g. ``steps = pick(5000, 50)``)."""
    return quick if quick_mode() else full
