"""Batched inference: apply a model to many images a batch at a time, without gradients.

Every ``logits``/``predict``/``embed`` in the package goes through ``batched``, so there is one
batch size (``INFERENCE_BATCH``), one place that moves batches to the model's device and back to
the CPU, and one progress bar:

    logits = batched(model.classify, images, device=device)   # (N, K) on the CPU, the model's dtype
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["batched", "INFERENCE_BATCH"]

INFERENCE_BATCH = 500  # images per forward pass: a small CPU's cache and a GPU's launches both like it


@torch.no_grad()
def batched(fn: Callable[..., Tensor], x: Tensor, *args: Tensor, batch_size: int = INFERENCE_BATCH,
            device: torch.device | str | None = None, progress: bool = False,
            desc: str = "inference") -> Tensor:
    """``torch.cat([fn(x[i:j], *(a[i:j] for a in args)) ...])`` over batches of ``batch_size``.

    Args:
        fn: maps a batch (B, ...) (and the matching slices of ``args``) to (B, ...).
        x: (N, ...) inputs, on any device; each batch moves to ``device`` (None: it stays where
            it is).
        args: more (N, ...) tensors sliced alongside ``x`` (e.g. timesteps).
    Returns:
        (N, ...) on the CPU. Gradients are off; the caller sets eval mode (``jdm.sampling.eval_mode``).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = x.device if device is None else device
    out = [fn(x[i:i + batch_size].to(device), *(a[i:i + batch_size].to(device) for a in args)).cpu()
           for i in tqdm(range(0, x.shape[0], batch_size), desc=desc, disable=not progress,
                         leave=False)]
    if not out:
        raise ValueError("batched needs at least one input, got an empty batch")
    return torch.cat(out)
