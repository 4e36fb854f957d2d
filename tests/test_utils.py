"""Tests for jdm.utils: device, seeding and the quick-mode switch."""
import pytest
import torch

from jdm.utils import get_device, pick, quick_mode, seed_everything, sweeps_enabled


def test_get_device_returns_an_available_device():
    device = get_device()
    assert torch.zeros(1, device=device).device.type == device.type
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_an_error():
    with pytest.raises(ValueError, match="not available"):
        get_device("cuda")


def test_seed_everything_repeats_draws():
    g1 = seed_everything(7)
    a, b = torch.randn(3), torch.randn(3, generator=g1)
    g2 = seed_everything(7)
    assert torch.equal(a, torch.randn(3)) and torch.equal(b, torch.randn(3, generator=g2))


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_quick_mode_switch(monkeypatch, value, expected):
    monkeypatch.setenv("JDM_QUICK", value)
    assert quick_mode() is expected
    assert pick(full=1000, quick=10) == (10 if expected else 1000)


@pytest.mark.parametrize("env", ["1", "0", ""])
def test_set_quick_mode_overrides_the_environment_or_leaves_it(monkeypatch, env):
    from jdm.utils import set_quick_mode
    monkeypatch.setenv("JDM_QUICK", env)
    set_quick_mode(None)
    assert quick_mode() is (env == "1")
    set_quick_mode(True)
    assert quick_mode() is True
    set_quick_mode(False)
    assert quick_mode() is False
    with pytest.raises(ValueError, match="True, False or None"):
        set_quick_mode("yes")


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("1", True),
                                             ("yes", True), ("TRUE", True), ("no", False)])
def test_sweeps_switch(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("JDM_SWEEPS", raising=False)
    else:
        monkeypatch.setenv("JDM_SWEEPS", value)
    assert sweeps_enabled() is expected


def test_forced_quick_mode_wins_over_a_notebooks_switch(monkeypatch):
    """Graders set JDM_QUICK=force: a submission's `QUICK = False` must not make grading slow."""
    from jdm.utils import set_quick_mode
    monkeypatch.setenv("JDM_QUICK", "force")
    set_quick_mode(False)
    assert quick_mode() is True
