"""Figures the course and the CLI share: image grids and the overview figure.

Images are tensors (N, C, H, W) in [-1, 1], as everywhere in jdm.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchvision.utils import make_grid

__all__ = ["image_grid", "show_images", "overview_figure", "counterfactual_gallery"]


def image_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """A (H', W', C) float array-like grid in [0, 1] for ``plt.imshow`` (torchvision's make_grid)."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1),
                     pad_value=1)
    return grid.permute(1, 2, 0)


def show_images(images: Tensor, nrow: int = 8, title: str | None = None,
                figsize: tuple[float, float] = (8, 2.2), ax: plt.Axes | None = None) -> plt.Axes:
    """Draw ``images`` as a grid with ``nrow`` images a row; values outside [-1, 1] are clipped
    for display only. Returns the axes (a new figure unless ``ax`` is given)."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    grid = image_grid(images, nrow)
    ax.imshow(grid.numpy(), cmap="gray" if images.shape[1] == 1 else None)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def overview_figure(model, image: Tensor, n_samples: int = 10, seed: int = 0,
                    path: str | Path | None = None) -> plt.Figure:
    """Two rows: ``image`` (1, C, H, W) noised by ``model``'s forward process at ten timesteps, and
    ``n_samples`` DDIM samples of ``model``. Saved to ``path`` when given."""
    schedule = model.schedule
    # quadratic spacing: most of the visible change happens early (notebook 01)
    ts = (torch.linspace(0, 1, 10) ** 2 * (schedule.num_steps - 1)).round().long()
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    noised = schedule.q_sample(image.expand(len(ts), -1, -1, -1).cpu(), ts,
                               noise.expand(len(ts), -1, -1, -1))
    samples = model.sample(n_samples, generator=torch.Generator().manual_seed(seed), progress=False)
    fig, axes = plt.subplots(2, 1, figsize=(10, 2.6))
    show_images(noised.clamp(-1, 1), nrow=len(ts), ax=axes[0],
                title="forward process q(x_t | x_0), t = " + ", ".join(map(str, ts.tolist())))
    show_images(samples, nrow=n_samples, ax=axes[1], title="samples of the trained model (DDIM, 50 steps)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def counterfactual_gallery(originals: Tensor, counterfactuals: Tensor, titles: list[str] | None = None,
                           path: str | Path | None = None, column_width: float = 1.5) -> plt.Figure:
    """One column per example: original, counterfactual, and their difference x_cf − x (red:
    brighter in the counterfactual, blue: darker; the colour scale is ±1 for every panel, so the
    columns can be compared).

    Args:
        originals, counterfactuals: (N, C, H, W) in [-1, 1], N >= 1.
        titles: one caption per column (e.g. "shirt → T-shirt").
        path: save the figure there (PNG) when given.
    """
    if originals.shape != counterfactuals.shape or originals.dim() != 4 or originals.shape[0] < 1:
        raise ValueError(f"originals and counterfactuals must be image batches (N, C, H, W) of the "
                         f"same shape, got {tuple(originals.shape)} and {tuple(counterfactuals.shape)}")
    n = originals.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"need one title per example ({n}), got {len(titles)}")
    x, x_cf = originals.detach().float().cpu(), counterfactuals.detach().float().cpu()
    diff = (x_cf - x).mean(dim=1)  # the same as jdm.counterfactual.difference_map
    fig, axes = plt.subplots(3, n, figsize=(column_width * n, 4.6), squeeze=False)
    for j in range(n):
        for i, img in enumerate((x[j], x_cf[j])):
            axes[i, j].imshow(image_grid(img[None], nrow=1).numpy(),
                              cmap="gray" if x.shape[1] == 1 else None)
        axes[2, j].imshow(diff[j].numpy(), cmap="bwr", vmin=-1, vmax=1)
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, name in enumerate(("original", "counterfactual", "difference")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
