"""Figures the course and the CLI share: labelled image grids, the overview figure, the
counterfactual gallery, the joint model's schematic and the demo figure.

Images are tensors (N, C, H, W) in [-1, 1], as everywhere in jdm.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchvision.utils import make_grid

__all__ = ["image_grid", "show_images", "overview_figure", "counterfactual_gallery",
           "draw_joint_model_schematic", "demo_figure", "ClassifyPanel", "GeneratePanel",
           "ExplainPanel"]

THUMBNAIL_INCHES = 0.9
"""Default size of one image in a grid drawn by ``show_images``: about 65 pixels at Jupyter's 72 dpi,
so a 28×28 image stays readable."""

_PAD = 2  # make_grid's padding in pixels


def image_grid(images: Tensor, nrow: int = 8) -> Tensor:
    """A (H', W', C) float array-like grid in [0, 1] for ``plt.imshow`` (torchvision's make_grid)."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1),
                     pad_value=1, padding=_PAD)
    return grid.permute(1, 2, 0)


def show_images(images: Tensor, nrow: int = 8, title: str | None = None,
                figsize: tuple[float, float] | None = None, ax: plt.Axes | None = None,
                row_labels: list[str] | None = None, col_labels: list[str] | None = None) -> plt.Axes:
    """Draw ``images`` as a grid with ``nrow`` images a row; values outside [-1, 1] are clipped
    for display only. Returns the axes (a new figure unless ``ax`` is given).

    Args:
        row_labels: one label per grid row (e.g. class names), written left of the row.
        col_labels: one label per grid column (e.g. the timestep or sampling step), written above.
        figsize: default ``THUMBNAIL_INCHES`` per image (at most 14 inches wide).
    """
    rows = -(-images.shape[0] // nrow)
    cols = min(nrow, images.shape[0])
    for name, labels, count in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{name} needs one label per grid {name[:3]} ({count}), got {len(labels)}")
    if ax is None:
        if figsize is None:
            scale = min(THUMBNAIL_INCHES, 14 / cols)
            figsize = (cols * scale + (1.2 if row_labels else 0), rows * scale + (0.5 if title or col_labels else 0.1))
        _, ax = plt.subplots(figsize=figsize)
    grid = image_grid(images, nrow)
    ax.imshow(grid.numpy(), cmap="gray" if images.shape[1] == 1 else None)
    step_y, step_x = images.shape[2] + _PAD, images.shape[3] + _PAD
    ax.set_xticks([_PAD + j * step_x + images.shape[3] / 2 for j in range(cols)] if col_labels else [],
                  col_labels or [], fontsize=8)
    ax.set_yticks([_PAD + i * step_y + images.shape[2] / 2 for i in range(rows)] if row_labels else [],
                  row_labels or [], fontsize=8)
    ax.xaxis.set_ticks_position("top")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=20 if col_labels else 4)
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
    fig, axes = plt.subplots(2, 1, figsize=(10, 3.2))
    show_images(noised.clamp(-1, 1), nrow=len(ts), ax=axes[0], title="forward process q(x_t | x_0)",
                col_labels=[f"t={t}" for t in ts.tolist()])
    show_images(samples, nrow=n_samples, ax=axes[1], title="samples of the trained model (DDIM, 50 steps)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def counterfactual_gallery(originals: Tensor, counterfactuals: Tensor, titles: list[str] | None = None,
                           path: str | Path | None = None, column_width: float = 1.5,
                           fig: plt.Figure | None = None) -> plt.Figure:
    """One column per example: original, counterfactual, and their difference x_cf − x (red:
    brighter in the counterfactual, blue: darker; the colour scale is ±1 for every panel, so the
    columns can be compared; a colour bar shows it).

    Args:
        originals, counterfactuals: (N, C, H, W) in [-1, 1], N >= 1.
        titles: one caption per column (e.g. "shirt → T-shirt").
        path: save the figure there (PNG) when given.
        fig: draw into this figure or subfigure (``Figure.subfigures``) instead of a new one.
    """
    if originals.shape != counterfactuals.shape or originals.dim() != 4 or originals.shape[0] < 1:
        raise ValueError(f"originals and counterfactuals must be image batches (N, C, H, W) of the "
                         f"same shape, got {tuple(originals.shape)} and {tuple(counterfactuals.shape)}")
    n = originals.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"need one title per example ({n}), got {len(titles)}")
    x, x_cf = originals.detach().float().cpu(), counterfactuals.detach().float().cpu()
    diff = (x_cf - x).mean(dim=1)  # the same as jdm.counterfactual.difference_map
    if fig is None:
        fig = plt.figure(figsize=(column_width * n + 1.0, 4.6), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    for j in range(n):
        for i, img in enumerate((x[j], x_cf[j])):
            axes[i, j].imshow(image_grid(img[None], nrow=1).numpy(),
                              cmap="gray" if x.shape[1] == 1 else None)
        shown = axes[2, j].imshow(diff[j].numpy(), cmap="bwr", vmin=-1, vmax=1)
        if titles is not None:
            axes[0, j].set_title(titles[j], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i, name in enumerate(("original", "counterfactual", "difference")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    bar = fig.colorbar(shown, ax=axes[2, :].tolist(), shrink=0.9, aspect=8, ticks=[-1, 0, 1])
    bar.set_label("x_cf − x", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def draw_joint_model_schematic(ax: plt.Axes | None = None) -> plt.Axes:
    """The picture the course hangs on: one UNet encoder e(x_t, t) whose features z (bottleneck
    and every skip) feed both the denoising decoder d(z, t) → ε̂ and the classifier head g(z) →
    p(y | x), with the two losses and where conditional sampling moves z. Returns the axes."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.6))
    ax.set(xlim=(0, 10), ylim=(0, 4.2))
    ax.axis("off")

    def box(x, y, w, h, text, colour):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="0.3"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    def arrow(a, b, text=None, colour="0.2", style="-|>", offset=(0, 0.15)):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=12, color=colour, lw=1.4))
        if text:
            ax.text((a[0] + b[0]) / 2 + offset[0], (a[1] + b[1]) / 2 + offset[1], text, ha="center",
                    fontsize=8, color=colour)

    box(0.1, 1.7, 1.3, 0.8, "$x_t$, $t$\n(noisy image)", "#eeeeee")
    box(2.0, 1.4, 1.9, 1.4, "shared encoder\n$e_\\nu(x_t, t)$\nResBlocks, attention", "#cfe2f3")
    box(4.6, 1.5, 1.4, 1.2, "features $z$\nbottleneck\n+ every skip", "#fff2cc")
    box(6.8, 2.8, 1.7, 1.0, "denoising decoder\n$d_\\psi(z, t)$", "#d9ead3")
    box(6.8, 0.4, 1.7, 1.0, "classifier head\n$g_\\omega(z)$: pool, MLP", "#f4cccc")
    box(8.9, 2.95, 1.0, 0.7, "$\\hat\\varepsilon$", "#ffffff")
    box(8.9, 0.55, 1.0, 0.7, "$p(y \\mid x)$", "#ffffff")
    arrow((1.45, 2.1), (1.95, 2.1))
    arrow((3.95, 2.1), (4.55, 2.1))
    arrow((6.05, 2.4), (6.75, 3.2))
    arrow((6.05, 1.8), (6.75, 1.0))
    arrow((8.55, 3.3), (8.85, 3.3))
    arrow((8.55, 0.9), (8.85, 0.9))
    ax.add_patch(FancyArrowPatch((6.75, 0.75), (5.2, 1.45), arrowstyle="-|>", mutation_scale=12,
                                 color="#b45f06", lw=1.2, ls="--", connectionstyle="arc3,rad=-0.35"))
    ax.text(5.25, 0.75, "$\\nabla_z \\log p(y \\mid z)$", ha="center", fontsize=8, color="#b45f06")
    ax.text(9.4, 3.85, "$L_{simple} = \\|\\varepsilon - \\hat\\varepsilon\\|^2$", ha="center", fontsize=8)
    ax.text(9.4, 0.15, "$\\alpha \\cdot$ CE (on $x_0$, $t = 0$)", ha="center", fontsize=8)
    ax.text(5.3, 3.15, "sampling: $z \\leftarrow z + \\gamma \\nabla_z \\log p(y \\mid z)$",
            ha="center", fontsize=8, color="#b45f06")
    ax.text(3.0, 0.2, "one loss trains all three: $L = L_{simple} + \\alpha\\,$CE",
            ha="center", fontsize=8, color="0.3")
    return ax


@dataclass
class ClassifyPanel:
    """The demo figure's first panel: test images (N, C, H, W), their true classes, the model's
    predicted classes and the softmax probability of each prediction (N,); ``caption`` heads it."""
    images: Tensor
    labels: Tensor
    predictions: Tensor
    confidences: Tensor
    caption: str


@dataclass
class GeneratePanel:
    """The second panel: conditional samples (M, C, H, W) and their requested classes (M,),
    grouped by class (the same number per class)."""
    samples: Tensor
    target: Tensor
    caption: str


@dataclass
class ExplainPanel:
    """The third panel: as for ``counterfactual_gallery``."""
    originals: Tensor
    counterfactuals: Tensor
    titles: list[str]
    caption: str


def demo_figure(classify: ClassifyPanel, generate: GeneratePanel, explain: ExplainPanel,
                class_names: list[str], path: str | Path | None = None) -> plt.Figure:
    """The course in one figure (``python -m jdm demo``): classification, class-conditional
    samples and counterfactuals of one joint model; ``class_names`` indexed by class."""
    per_class = int((generate.target == generate.target[0]).sum())
    classes = generate.target[::per_class].tolist()
    fig = plt.figure(figsize=(15, 6.4), layout="constrained")
    left, middle, right = fig.subfigures(1, 3, width_ratios=[1.0, 1.0, 1.5], wspace=0.04)
    cols, c = 3, classify
    axes = left.subplots(-(-len(c.images) // cols), cols, squeeze=False)
    for ax, k in zip(axes.flat, range(len(c.images))):
        ax.imshow(image_grid(c.images[k:k + 1], nrow=1).numpy(), cmap="gray")
        right_answer = int(c.predictions[k]) == int(c.labels[k])
        ax.set_title(f"{class_names[int(c.predictions[k])]} {float(c.confidences[k]):.0%}",
                     fontsize=8, color="green" if right_answer else "red")
        ax.set_xlabel(f"true: {class_names[int(c.labels[k])]}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    left.suptitle("1. classify (title: prediction, green = right)\n" + c.caption, fontsize=9)
    ax = middle.subplots()
    show_images(generate.samples, nrow=per_class, ax=ax, row_labels=[class_names[k] for k in classes])
    middle.suptitle("2. generate on request: one row per class\n" + generate.caption, fontsize=9)
    counterfactual_gallery(explain.originals, explain.counterfactuals, explain.titles, fig=right)
    right.suptitle("3. explain: what would make it another class?\n" + explain.caption, fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
