"""Tests for jdm.metrics: known values, invariants and bad input."""
import importlib.util
import math

import pytest
import torch

from jdm.metrics import (accuracy, class_balance, expected_calibration_error, frechet_distance,
                         inception_fid, precision_recall)


def logits_with_confidence(conf: float, predicted: int, n_classes: int = 2) -> torch.Tensor:
    """Logits whose softmax gives probability ``conf`` to class ``predicted``, the rest shared."""
    p = torch.full((n_classes,), (1 - conf) / (n_classes - 1))
    p[predicted] = conf
    return p.log()


def test_accuracy_known_value():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 0])) == pytest.approx(0.5)


def test_ece_of_calibrated_predictions_is_zero():
    # confidence 0.8 and exactly 8 of 10 right; confidence 0.6 and exactly 3 of 5 right
    logits = torch.stack([logits_with_confidence(0.8, 0)] * 10 + [logits_with_confidence(0.6, 1)] * 5)
    y = torch.tensor([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    assert expected_calibration_error(logits, y) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_an_overconfident_model_by_hand():
    # 4 examples at confidence 0.9, 2 right (gap 0.4); 4 at confidence 0.7, 4 right (gap 0.3):
    # ECE = 4/8 · 0.4 + 4/8 · 0.3 = 0.35
    logits = torch.stack([logits_with_confidence(0.9, 0)] * 4 + [logits_with_confidence(0.7, 1)] * 4)
    y = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    assert expected_calibration_error(logits, y) == pytest.approx(0.35, abs=1e-6)
    # one bin: everything pooled, |6/8 − 0.8| = 0.05
    assert expected_calibration_error(logits, y, n_bins=1) == pytest.approx(0.05, abs=1e-6)


def test_frechet_distance_identical_sets_is_zero():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """Diagonal covariances: FD = |Δμ|² + Σ_i (σ_a,i − σ_b,i)²; here with the exact sample
    moments (the formula holds for the sample mean and covariance)."""
    g = torch.Generator().manual_seed(1)
    n, d = 4000, 5
    mu_a, mu_b = torch.tensor([0.0, 1, 2, 0, 0]), torch.tensor([1.0, 1, 0, 0, -1])
    sd_a, sd_b = torch.tensor([1.0, 2, 0.5, 1, 3]), torch.tensor([2.0, 1, 0.5, 0.1, 1])
    fa = mu_a + sd_a * torch.randn(n, d, generator=g, dtype=torch.float64)
    fb = mu_b + sd_b * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()  # = 6 + 6.81 = 12.81
    assert frechet_distance(fa, fb) == pytest.approx(expected.item(), rel=0.05)
    # exact check with whitened samples whose moments are exactly (μ, diag σ²)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = (z - z.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T
    fd = frechet_distance(mu_a + sd_a * z, mu_b + sd_b * z)
    assert fd == pytest.approx(expected.item(), rel=1e-6)


def test_frechet_distance_is_symmetric_and_matches_scipy():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g) + 0.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    linalg = pytest.importorskip("scipy.linalg")  # not a dependency; a cross-check where present
    a64, b64 = a.double().numpy(), b.double().numpy()
    ca, cb = torch.cov(a.double().T).numpy(), torch.cov(b.double().T).numpy()
    ref = (((a64.mean(0) - b64.mean(0)) ** 2).sum() + ca.trace() + cb.trace()
           - 2 * linalg.sqrtm(ca @ cb).real.trace())
    assert frechet_distance(a, b) == pytest.approx(float(ref), rel=1e-5)


def test_precision_recall_identical_and_far_apart():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(200, 4, generator=g)
    assert precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, torch.randn(150, 4, generator=g) + 100.0, k=3, chunk=64)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_detects_mode_dropping():
    """Fakes covering only half the real data: precise but with low recall."""
    g = torch.Generator().manual_seed(4)
    real = torch.cat([torch.randn(300, 2, generator=g) - 5, torch.randn(300, 2, generator=g) + 5])
    fake = torch.randn(300, 2, generator=g) - 5
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.9 and 0.3 < pr["recall"] < 0.6


def test_class_balance():
    balanced = class_balance(torch.arange(10).repeat(5), num_classes=10)
    assert balanced["histogram"].tolist() == [5] * 10
    assert balanced["normalized_entropy"] == pytest.approx(1.0)
    assert balanced["kl_to_uniform"] == pytest.approx(0.0, abs=1e-12)
    collapsed = class_balance(torch.full((20,), 3), num_classes=4)
    assert collapsed["normalized_entropy"] == pytest.approx(0.0)
    assert collapsed["kl_to_uniform"] == pytest.approx(math.log(4))
    half = class_balance(torch.tensor([0, 1, 0, 1]), num_classes=4)
    assert half["normalized_entropy"] == pytest.approx(0.5)
    torch.testing.assert_close(half["fractions"], torch.tensor([0.5, 0.5, 0.0, 0.0]))


@pytest.mark.parametrize("call, message", [
    (lambda: accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long)), "shape \\(N, num_classes\\)"),
    (lambda: accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long)), "shape \\(3,\\)"),
    (lambda: accuracy(torch.zeros(3, 2), torch.tensor([0, 1, 2])), "0..1"),
    (lambda: expected_calibration_error(torch.zeros(2, 2), torch.zeros(2), 10), "integer"),
    (lambda: expected_calibration_error(torch.zeros(2, 2), torch.tensor([0, 1]), 0), "n_bins"),
    (lambda: frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4)), "same dimension"),
    (lambda: frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3)), "N >= 2"),
    (lambda: frechet_distance(torch.zeros(5), torch.zeros(5)), "shape \\(N, D\\)"),
    (lambda: precision_recall(torch.zeros(3, 2), torch.zeros(9, 2), k=3), "N >= 4"),
    (lambda: precision_recall(torch.zeros(9, 2), torch.zeros(9, 2), k=0), "k must"),
    (lambda: class_balance(torch.tensor([0, 5]), num_classes=3), "0..2"),
    (lambda: class_balance(torch.tensor([0.0, 1.0]), num_classes=3), "integer"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_inception_fid_explains_what_it_needs():
    if importlib.util.find_spec("torchmetrics") is None:
        with pytest.raises(ImportError, match="torchmetrics"):
            inception_fid(torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28))
    else:  # pragma: no cover - depends on the environment
        with pytest.raises(ValueError, match=r"\[-1, 1\]"):
            inception_fid(torch.full((2, 1, 28, 28), 2.0), torch.zeros(2, 1, 28, 28))
