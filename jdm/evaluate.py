"""Measuring the conditional sampler and the counterfactuals of a joint model, by an independent judge.

The model's own head cannot judge: the guidance optimised the images (or their features) for that
very head, which may be fooled by changes no person would see. The judge is the project's
evaluator CNN (``jdm.evaluator``), trained separately on real images; its 128-d embedding gives
the Fréchet distances. Notebooks 06 and 07 and ``python -m jdm evaluate`` call these.

    ev = load_evaluator()
    res = evaluate_conditional(model, ev, test_x, test_y, per_class=100, guidance=Guidance("classifier"))
    res["agreement"], res["fd"], res["fd_per_class"]
    cf = evaluate_counterfactuals(model, ev, x, y, targets, test_x, test_y,
                                  settings=CounterfactualSettings(t_star=275))
    cf["flip_rate"], cf["l1"], cf["fd"], cf["guidance"]

Both take the sampler as one ``jdm.Guidance`` (or a kind name, or None for the defaults), exactly
as ``JointDiffusion.sample`` and ``jdm.counterfactual`` do; counterfactuals also take their
``CounterfactualSettings``.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .counterfactual import CounterfactualSettings, counterfactual
from .inference import batched
from .metrics import (accuracy, class_agreement, class_balance, expected_calibration_error,
                      frechet_distance, image_distances, per_class_frechet, precision_recall)
from .sampling import Guidance, eval_mode

__all__ = ["evaluate_conditional", "evaluate_counterfactuals", "runner_up_targets",
           "other_class_targets", "class_matched_indices", "classifier_metrics",
           "generation_metrics", "MIN_FD_SAMPLES"]

MIN_FD_SAMPLES = 4  # precision/recall use k = 3 nearest neighbours: at least 4 images a set


def runner_up_targets(model, images: Tensor) -> Tensor:
    """The class the model's head ranks second for each (clean) image: (N,) long.

    The natural question a counterfactual answers is "why this class and not the runner-up?"
    (shirt rather than T-shirt, sneaker rather than ankle boot), so that is the default target.
    """
    return model.logits(images).topk(2, dim=1).indices[:, 1]


def other_class_targets(labels: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A random target class different from each label, uniformly among the other classes: (N,)."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels.cpu() + shift) % num_classes


def class_matched_indices(real_labels: Tensor, wanted: Tensor, generator: torch.Generator,
                          exclude: Tensor | None = None) -> Tensor:
    """Indices of real images with the class histogram of ``wanted`` (distinct, random), so a
    Fréchet distance compares like with like. ``exclude``: indices not to pick (e.g. originals)."""
    real_labels = real_labels.cpu()
    allowed = torch.ones(len(real_labels), dtype=torch.bool)
    if exclude is not None:
        allowed[exclude.cpu()] = False
    picked = []
    for c, count in zip(*torch.unique(wanted.cpu(), return_counts=True)):
        pool = torch.nonzero(allowed & (real_labels == c)).squeeze(1)
        if len(pool) < count:
            raise ValueError(f"only {len(pool)} real images of class {int(c)} to match {int(count)}")
        picked.append(pool[torch.randperm(len(pool), generator=generator)[:count]])
    return torch.cat(picked)


def _batched(fn, n: int, batch_size: int, progress: bool, desc: str) -> Tensor:
    out = []
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        out.append(fn(slice(i, min(i + batch_size, n))).cpu())
    return torch.cat(out)


def evaluate_conditional(model, evaluator, real_images: Tensor, real_labels: Tensor, *,
                         per_class: int = 100, guidance: Guidance | str | None = None,
                         conditional: bool = True, method: str = "ddim", steps: int | None = None,
                         seed: int = 0, batch_size: int = 250, progress: bool = True) -> dict:
    """Draw ``per_class`` conditional samples of every class and score them.

    Args:
        model: a ``JointDiffusion``.
        evaluator: the judge (``load_evaluator()``), with ``predict`` and ``embed``.
        real_images, real_labels: (N, C, H, W), (N,) real images (the test split) to compare with.
        per_class: samples per class (>= 2, for the per-class FD).
        guidance, method, steps: the sampler (``JointDiffusion.sample``).
        conditional: False samples unconditionally (``guidance`` unused): then ``agreement`` is
            the chance level a sampler must beat.
        seed: seeds the sampler's generator.
        batch_size: images per sampler call.

    Returns:
        ``{"agreement": evaluator says the requested class, "agreement_per_class": {c: …},
        "fd": FD of all samples vs an equal-size class-matched real set, "fd_per_class": {c: FD},
        "precision", "recall", "seconds", "samples" (K, C, H, W), "labels" (K,)}``.
    """
    if per_class < 2:
        raise ValueError(f"per_class must be >= 2 (the per-class FD needs two samples), got {per_class}")
    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    # interleave classes so that every batch holds all of them (no batch-order effects per class)
    labels = labels.reshape(model.num_classes, per_class).T.reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()

    def draw(part: slice) -> Tensor:
        chunk = labels[part]
        return model.sample(len(chunk), target=chunk if conditional else None, guidance=guidance,
                            method=method, steps=steps, generator=generator, progress=False)

    samples = _batched(draw, len(labels), batch_size, progress, "conditional samples")
    seconds = time.perf_counter() - start
    pred = evaluator.predict(samples).cpu()
    real = class_matched_indices(real_labels, labels, torch.Generator().manual_seed(seed))
    real_feats, fake_feats = evaluator.embed(real_images[real]), evaluator.embed(samples)
    hits = (pred == labels)
    return {
        "agreement": class_agreement(pred, labels),
        "agreement_per_class": {c: hits[labels == c].double().mean().item()
                                for c in range(model.num_classes)},
        "fd": frechet_distance(real_feats, fake_feats),
        "fd_per_class": per_class_frechet(real_feats, real_labels.cpu()[real], fake_feats, labels),
        **precision_recall(real_feats, fake_feats),
        "seconds": seconds, "samples": samples, "labels": labels,
    }


def evaluate_counterfactuals(model, evaluator, images: Tensor, labels: Tensor, targets: Tensor,
                             real_images: Tensor, real_labels: Tensor, *,
                             settings: CounterfactualSettings | None = None,
                             guidance: Guidance | str | None = None, seed: int = 0,
                             batch_size: int = 250, exclude: Tensor | None = None,
                             progress: bool = True) -> dict:
    """Counterfactuals of ``images`` towards ``targets``, scored by the evaluator.

    Args:
        model, evaluator: as in ``evaluate_conditional``.
        images, labels, targets: (N, C, H, W) originals, (N,) their classes, (N,) target classes.
        real_images, real_labels: real images to draw the class-matched comparison set from.
        settings, guidance: ``jdm.counterfactual``'s (None: the defaults).
        seed: seeds the generator of the whole run; batch_size: images per counterfactual call.
        exclude: indices into ``real_images`` not to use for the comparison (the originals, when
            they come from the same split).

    Returns:
        ``{"flip_rate": evaluator says the target, "kept_rate": evaluator still says the original
        label, "l1": mean |Δ| per pixel, "l2": mean ‖Δ‖₂ per image, "fd": FD of the counterfactuals
        vs real images of the target classes (class-matched), "t_star": (N,) the t* each image
        was taken to, "t_star_mean", "guidance" and "settings": the resolved ones the
        counterfactuals ran with, "seconds", "counterfactuals" (N, C, H, W) on the CPU,
        "predictions": the evaluator's class for each counterfactual (N,)}``.
    """
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    parts = [counterfactual(model, images[i:i + batch_size], targets[i:i + batch_size], settings,
                            guidance, generator=generator, progress=False)
             for i in tqdm(range(0, len(images), batch_size), desc="counterfactuals",
                           disable=not progress, leave=False)]
    seconds = time.perf_counter() - began
    cfs = torch.cat([part.images.cpu() for part in parts])
    t_stars = torch.cat([part.t_star for part in parts])
    pred = evaluator.predict(cfs).cpu()
    real = class_matched_indices(real_labels, targets, torch.Generator().manual_seed(seed), exclude)
    return {
        "flip_rate": class_agreement(pred, targets),
        "kept_rate": class_agreement(pred, labels),
        **image_distances(images.cpu(), cfs),
        "fd": frechet_distance(evaluator.embed(real_images[real]), evaluator.embed(cfs)),
        "t_star": t_stars, "t_star_mean": t_stars.float().mean().item(),
        "guidance": parts[0].guidance, "settings": parts[0].settings,
        "seconds": seconds, "counterfactuals": cfs, "predictions": pred,
    }


def classifier_metrics(model, images: Tensor, labels: Tensor) -> dict:
    """Test accuracy and ECE of any model with ``logits(x)`` (joint, classifier, evaluator)."""
    logits = model.logits(images).float()
    return {"test_accuracy": round(accuracy(logits, labels), 4),
            "test_ece": round(expected_calibration_error(logits, labels), 4),
            "test_images": int(images.shape[0])}


@torch.no_grad()
def generation_metrics(model, images: Tensor, evaluator=None, n_samples: int = 0,
                       seed: int = 0) -> dict:
    """Held-out L_simple of a generative model (fixed t and ε: seed 0) and, with an
    ``evaluator`` and ``n_samples`` >= ``MIN_FD_SAMPLES``, FD, precision, recall and class
    balance of that many DDIM-50 samples against as many of ``images`` (N, C, H, W)."""
    device = next(model.parameters()).device
    with eval_mode(model):
        torch.manual_seed(0)  # the same t and ε for every model measured this way
        losses = batched(lambda x: model.diffusion_loss(x).reshape(1), images, device=device)
        metrics = {"test_loss": round(losses.mean().item(), 5)}
        n = min(n_samples, images.shape[0])
        if evaluator is None or n < MIN_FD_SAMPLES:
            return metrics
        samples = torch.cat([model.sample(min(250, n - i), steps=50, progress=False,
                                          generator=torch.Generator().manual_seed(seed + i)).cpu()
                             for i in range(0, n, 250)])
    real, fake = evaluator.embed(images[:n]), evaluator.embed(samples)
    balance = class_balance(evaluator.predict(samples), evaluator.num_classes)
    metrics.update({"fd_evaluator": round(frechet_distance(real, fake), 3),
                    **{k: round(v, 4) for k, v in precision_recall(real, fake).items()},
                    "class_balance_entropy": round(balance["normalized_entropy"], 4),
                    "fd_samples": n, "fd_sampler": "ddim-50"})
    return metrics
