"""Figures the course and the CLI share: image grids and the overview figure.

Images are tensors (N, C, H, W) in [-1, 1], as everywhere in jdm.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchvision.utils import make_grid

__all__ = ["image_grid", "show_images", "overview_figure"]


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
