"""Evaluation metrics: classification (accuracy, calibration) and generation (Fréchet distance,
precision/recall, class balance) and the conditional ones (class agreement, per-class Fréchet
distance, how far a counterfactual moved).

Generation metrics compare *feature vectors* of real and generated images. In this project the
features come from the project's own Fashion-MNIST evaluator network (``jdm.evaluator``:
``load_evaluator().embed(images)``, 128-d), which works offline. The standard Inception FID needs
torchmetrics + torch-fidelity and downloaded Inception weights: see ``inception_fid``. Numbers
computed with different feature extractors are not comparable with each other, nor with
published FIDs.

    acc = accuracy(logits, y)
    ece = expected_calibration_error(logits, y)
    fd = frechet_distance(evaluator.embed(real), evaluator.embed(fake))
    pr = precision_recall(evaluator.embed(real), evaluator.embed(fake), k=3)
    bal = class_balance(evaluator.predict(fake), num_classes=10)
    agree = class_agreement(evaluator.predict(conditional_samples), requested_labels)
    fds = per_class_frechet(evaluator.embed(real), real_labels, evaluator.embed(fake), requested)
    moved = image_distances(x, x_cf)           # counterfactuals: mean |Δ| per pixel, L2 per image
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["accuracy", "expected_calibration_error", "frechet_distance", "precision_recall",
           "class_balance", "class_agreement", "per_class_frechet", "image_distances",
           "inception_fid"]


def _check_logits(logits: Tensor, y: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError("logits must be a float tensor of shape (N, num_classes) with N >= 1, got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)}")
    if not isinstance(y, Tensor) or y.shape != (logits.shape[0],) or y.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({logits.shape[0]},) to match "
                         f"the logits, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}, got values from "
                         f"{int(y.min())} to {int(y.max())}")


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of examples whose arg-max logit is the label.

    Args:
        logits: (N, C) logits (or probabilities).
        y: (N,) integer labels in 0..C−1.
    """
    _check_logits(logits, y)
    return (logits.argmax(1) == y.to(logits.device)).float().mean().item()


def expected_calibration_error(logits: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, eq. 3), equal-width confidence bins.

    ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|, where the confidence of an example is its
    largest softmax probability, bin b holds confidences in (b/n_bins, (b+1)/n_bins] (the first
    bin also takes 0), acc(B_b) is the accuracy and conf(B_b) the mean confidence in the bin.

    Args:
        logits: (N, C) logits (softmax is applied here).
        y: (N,) integer labels.
        n_bins: number of bins (>= 1).

    Returns:
        ECE in [0, 1].
    """
    _check_logits(logits, y)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    probs = logits.double().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == y.to(pred.device)).double()
    bins = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device).index_add_(
        0, bins, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, bins, conf)
    correct_sum = torch.zeros_like(count).index_add_(0, bins, correct)
    # Σ_b (n_b / N) |acc_b − conf_b| = Σ_b |correct_b − conf_sum_b| / N
    return ((correct_sum - conf_sum).abs().sum() / conf.shape[0]).item()


def _check_features(a: Tensor, b: Tensor, min_rows: int, what: str) -> None:
    for name, f in (("first", a), ("second", b)):
        if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] < min_rows:
            raise ValueError(f"{what}: the {name} feature set must have shape (N, D) with N >= "
                             f"{min_rows}, got "
                             f"{tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{what}: both feature sets need the same dimension D, got {a.shape[1]} "
                         f"and {b.shape[1]}")


def _sqrtm_psd(m: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigen-decomposition."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, FID):

        FD = |μ_a − μ_b|² + tr(Σ_a) + tr(Σ_b) − 2 · tr((Σ_a^½ Σ_b Σ_a^½)^½).

    tr((Σ_a Σ_b)^½) is computed as tr((Σ_a^½ Σ_b Σ_a^½)^½), whose argument is symmetric PSD, so
    both square roots are exact eigen-decompositions (``torch.linalg.eigh``) in float64; no scipy.
    Σ is the unbiased sample covariance.

    Args:
        feats_a: (N, D) features of one set (N >= 2), e.g. real images.
        feats_b: (M, D) features of the other (M >= 2), e.g. generated images.

    Returns:
        FD >= 0 (tiny negative round-off is clipped to 0). Symmetric in its arguments.
    """
    _check_features(feats_a, feats_b, 2, "frechet_distance")
    a, b = feats_a.double(), feats_b.double().to(feats_a.device)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(fd.item(), 0.0)


def _knn_radii(feats: Tensor, k: int, chunk: int) -> Tensor:
    """Distance of each row to its k-th nearest *other* row: (N, D) → (N,)."""
    out = []
    for i in range(0, feats.shape[0], chunk):
        d = torch.cdist(feats[i:i + chunk], feats)  # (chunk, N); the row itself is at distance 0
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(radii: Tensor, support: Tensor, queries: Tensor, chunk: int) -> Tensor:
    """Fraction of ``queries`` inside at least one ball B(support_i, radii_i)."""
    inside = []
    for i in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[i:i + chunk], support)  # (chunk, N_support)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside).double().mean()


def precision_recall(real_feats: Tensor, fake_feats: Tensor, k: int = 3,
                     chunk: int = 1024) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Each set's manifold is the union of balls around its points, the radius of a ball being the
    distance to the point's k-th nearest neighbour in the same set. Precision = fraction of fake
    points inside the real manifold (are samples realistic?); recall = fraction of real points
    inside the fake manifold (is the data's variety covered?).

    Args:
        real_feats: (N, D) features of real images (N > k).
        fake_feats: (M, D) features of generated images (M > k).
        k: neighbourhood size (the paper uses 3).
        chunk: rows per ``torch.cdist`` call (bounds memory to chunk × max(N, M) distances).

    Returns:
        ``{"precision": p, "recall": r}``, both in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    _check_features(real_feats, fake_feats, k + 1, "precision_recall")
    real = real_feats.float()
    fake = fake_feats.float().to(real.device)
    real_radii, fake_radii = _knn_radii(real, k, chunk), _knn_radii(fake, k, chunk)
    return {"precision": _coverage(real_radii, real, fake, chunk).item(),
            "recall": _coverage(fake_radii, fake, real, chunk).item()}


def class_balance(pred_labels: Tensor, num_classes: int) -> dict:
    """How evenly a set of (predicted) labels covers the classes, e.g. of generated samples.

    Args:
        pred_labels: (N,) integer class indices in 0..num_classes−1, N >= 1.
        num_classes: C >= 2.

    Returns:
        ``{"histogram": (C,) long counts, "fractions": (C,) float,
        "normalized_entropy": H(p) / log C in [0, 1] (1 = perfectly balanced),
        "kl_to_uniform": KL(p ‖ uniform) = log C − H(p) in nats (0 = balanced)}``.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if (not isinstance(pred_labels, Tensor) or pred_labels.dim() != 1 or pred_labels.numel() == 0
            or pred_labels.is_floating_point()):
        raise ValueError("pred_labels must be a non-empty integer tensor of shape (N,), got "
                         f"{tuple(pred_labels.shape) if isinstance(pred_labels, Tensor) else type(pred_labels)}")
    if pred_labels.min() < 0 or pred_labels.max() >= num_classes:
        raise ValueError(f"pred_labels must lie in 0..{num_classes - 1}, got values from "
                         f"{int(pred_labels.min())} to {int(pred_labels.max())}")
    hist = torch.bincount(pred_labels.long().cpu(), minlength=num_classes)
    p = hist.double() / hist.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"histogram": hist, "fractions": p.float(),
            "normalized_entropy": entropy / math.log(num_classes),
            "kl_to_uniform": max(math.log(num_classes) - entropy, 0.0)}


def class_agreement(pred_labels: Tensor, requested: Tensor) -> float:
    """Fraction of images whose predicted class is the requested one.

    For conditional samples: ``pred_labels`` from an *independent* classifier (the evaluator), not
    the model's own head, which the guidance optimised and may have fooled. For counterfactuals
    this is the flip rate.

    Args:
        pred_labels: (N,) integer predictions; requested: (N,) integer target classes; N >= 1.
    """
    for name, v in (("pred_labels", pred_labels), ("requested", requested)):
        if not isinstance(v, Tensor) or v.dim() != 1 or v.numel() == 0 or v.is_floating_point():
            raise ValueError(f"{name} must be a non-empty integer tensor of shape (N,), got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    if pred_labels.shape != requested.shape:
        raise ValueError(f"pred_labels and requested must have the same shape, got "
                         f"{tuple(pred_labels.shape)} and {tuple(requested.shape)}")
    return (pred_labels.cpu() == requested.cpu()).double().mean().item()


def per_class_frechet(real_feats: Tensor, real_labels: Tensor, fake_feats: Tensor,
                      fake_labels: Tensor) -> dict[int, float]:
    """Fréchet distance between real and generated features, class by class.

    Class c compares the real images labelled c with the samples *requested* as c, so a sampler
    that draws good images of the wrong class scores badly. Classes with fewer than 2 images on
    either side are left out. With few samples a class's FD is biased upwards (compare values
    only at equal sample sizes).

    Args:
        real_feats: (N, D); real_labels: (N,) their classes.
        fake_feats: (M, D); fake_labels: (M,) the requested classes.

    Returns:
        ``{class: FD}`` for every class present on both sides.
    """
    for feats, labels, name in ((real_feats, real_labels, "real"), (fake_feats, fake_labels, "fake")):
        if not isinstance(labels, Tensor) or labels.shape != (feats.shape[0],) \
                or labels.is_floating_point():
            raise ValueError(f"{name}_labels must be an integer tensor of shape "
                             f"({feats.shape[0]},), one label per feature row")
    out = {}
    real_labels, fake_labels = real_labels.cpu(), fake_labels.cpu()
    for c in sorted(set(real_labels.tolist()) & set(fake_labels.tolist())):
        real_c, fake_c = real_feats[real_labels == c], fake_feats[fake_labels == c]
        if real_c.shape[0] >= 2 and fake_c.shape[0] >= 2:
            out[int(c)] = frechet_distance(real_c, fake_c)
    return out


def image_distances(x: Tensor, x_new: Tensor) -> dict[str, float]:
    """How far images moved, e.g. a counterfactual from its original (both (N, C, H, W), [-1, 1]).

    Returns:
        ``{"l1": mean |Δ| over all pixels (in [-1, 1] units, so at most 2),
        "l2": mean over images of ‖Δ‖₂ (per image, over all its pixels)}``.
    """
    if x.shape != x_new.shape or x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"expected two non-empty image batches (N, C, H, W) of the same shape, "
                         f"got {tuple(x.shape)} and {tuple(x_new.shape)}")
    delta = (x_new.double() - x.double().to(x_new.device)).flatten(1)
    return {"l1": delta.abs().mean().item(), "l2": delta.norm(dim=1).mean().item()}


def inception_fid(real_images: Tensor, fake_images: Tensor, batch_size: int = 100,
                  device: torch.device | str | None = None) -> float:
    """The standard Inception-v3 FID (Heusel et al. 2017) through ``torchmetrics``.

    Optional: needs ``pip install "torchmetrics[image]"`` (which brings ``torch-fidelity``) and the
    FID Inception weights, which torch-fidelity downloads from GitHub on first use (about 100 MB)
    and cannot fetch offline. jdm's own metrics (``frechet_distance`` on evaluator features) need
    neither.

    Args:
        real_images, fake_images: (N, C, H, W) in [-1, 1], C = 1 or 3 (grayscale is repeated to
            RGB; torchmetrics resizes to 299×299).

    Returns:
        The FID (lower is better), comparable with other Inception FIDs only at equal N.

    Raises:
        ImportError: torchmetrics / torch-fidelity is not installed.
        RuntimeError: the Inception weights are not available (offline, no cached copy).
    """
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:
        raise ImportError('inception_fid needs torchmetrics with torch-fidelity: pip install '
                          '"torchmetrics[image]" (and network access once, for the Inception '
                          "weights); or use jdm.metrics.frechet_distance on jdm.evaluator "
                          "features, which works offline") from err
    for name, x in (("real_images", real_images), ("fake_images", fake_images)):
        if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 2:
            raise ValueError(f"{name} must have shape (N, 1 or 3, H, W) with N >= 2, got "
                             f"{tuple(x.shape)}")
        if x.min() < -1 or x.max() > 1:
            raise ValueError(f"{name} must lie in [-1, 1], got values from {x.min().item():.3g} "
                             f"to {x.max().item():.3g}; clamp or rescale them first")
    device = torch.device(device) if device is not None else real_images.device
    try:
        fid = FrechetInceptionDistance(feature=2048, normalize=True).to(device)
    except Exception as err:  # torch-fidelity's download fails with URLError/HTTPError/OSError
        raise RuntimeError("could not load the FID Inception weights (torch-fidelity downloads "
                           "them from GitHub on first use, which needs a network; copy "
                           "'weights-inception-2015-12-05-6726825d.pth' into torch.hub's checkpoint "
                           f"folder to work offline): {type(err).__name__}: {err}") from err
    for real, images in ((True, real_images), (False, fake_images)):
        for i in range(0, images.shape[0], batch_size):
            x = (images[i:i + batch_size].to(device).float() + 1) / 2  # [0, 1], as normalize=True wants
            fid.update(x.expand(-1, 3, -1, -1), real=real)
    return float(fid.compute())
