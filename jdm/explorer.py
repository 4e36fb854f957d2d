"""An interactive counterfactual explorer for notebook 07 (ipywidgets; a few seconds per click on a CPU).

Pick a test image, a target class, t* (or "auto"), the guidance scale and the sampler; the explorer
shows the image, its counterfactual, the difference map and the evaluator's verdict::

    from jdm.explorer import counterfactual_explorer
    counterfactual_explorer(model, evaluator, test_x, test_y)

The work a click does is :func:`explain`, a plain function (tested without a browser); the widget
only collects its arguments and draws what it returns (:func:`draw`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .counterfactual import (CounterfactualSettings, counterfactual, counterfactual_guidance,
                             difference_map)
from .data import CLASS_NAMES
from .sampling import GUIDANCE_KINDS, Guidance

EXPLORER_STEPS = 10   # DDIM steps over [0, t*]: a click takes a few seconds on a CPU
NAMES = [n.split("/")[0] for n in CLASS_NAMES["fashion_mnist"]]


def default_scale(model, kind: str) -> float:
    """The scale ``jdm.counterfactual`` uses for ``kind`` on ``model`` when none is given (γ or s)."""
    return counterfactual_guidance(model, kind).scale


def scale_options(model) -> list[float]:
    """The explorer's choices of γ or s: 1, 3, 10, … 10⁴ and each sampler's default on ``model``."""
    grid = {m * 10.0 ** e for e in range(5) for m in (1, 3)} - {3e4}
    return sorted(grid | {default_scale(model, kind) for kind in GUIDANCE_KINDS})


@dataclass
class Explanation:
    """What one click shows. Images (C, H, W) in [-1, 1]; ``difference`` (H, W) in [-2, 2]."""
    x: Tensor
    x_cf: Tensor
    difference: Tensor
    label: int               # the image's true class
    target: int
    t_star: int              # the step the image was taken to
    before: int              # the evaluator's class for x …
    after: int               # … and for the counterfactual
    p_target_before: float   # the evaluator's probability of the target, before and after
    p_target_after: float
    mean_abs_change: float

    @property
    def flipped(self) -> bool:
        return self.after == self.target

    def verdict(self, names: list[str] = NAMES) -> str:
        """One line: what the independent evaluator says, before and after."""
        return (f"evaluator: {names[self.before]} → {names[self.after]}; "
                f"p({names[self.target]}) {self.p_target_before:.2f} → {self.p_target_after:.2f}; "
                f"{'flipped to the target' if self.flipped else 'not flipped'}; "
                f"t* {self.t_star}, mean |Δ| {self.mean_abs_change:.3f}")


def explain(model, evaluator, images: Tensor, labels: Tensor, *, index: int, target: int,
            t_star: int | str = "auto", scale: float | None = None, kind: str = "representation",
            steps: int = EXPLORER_STEPS, seed: int = 0) -> Explanation:
    """One counterfactual of ``images[index]`` towards ``target`` and the evaluator's verdict.

    ``t_star``: an int or "auto"; ``scale``: γ or s (None: the counterfactual default of ``kind``);
    ``seed`` makes a click repeatable. Raises ValueError for an index or target out of range.
    """
    if not 0 <= index < len(images):
        raise ValueError(f"index must lie in [0, {len(images) - 1}], got {index}")
    if not 0 <= target < model.num_classes:
        raise ValueError(f"target must lie in [0, {model.num_classes - 1}], got {target}")
    device = next(model.parameters()).device
    x = images[index:index + 1].to(device)
    cf = counterfactual(model, x, target, CounterfactualSettings(t_star=t_star, steps=steps),
                        Guidance(kind=kind, scale=scale),
                        generator=torch.Generator(device).manual_seed(seed), progress=False)
    x_cf = cf.images
    with torch.no_grad():
        p = torch.softmax(evaluator(torch.cat([x, x_cf]).to(next(evaluator.parameters()).device)), 1)
    return Explanation(x[0].cpu(), x_cf[0].cpu(), difference_map(x, x_cf)[0].cpu(),
                       int(labels[index]), target, int(cf.t_star[0]), int(p[0].argmax()),
                       int(p[1].argmax()),
                       float(p[0, target]), float(p[1, target]), float((x_cf - x).abs().mean()))


def draw(result: Explanation, names: list[str] = NAMES):
    """The image, its counterfactual and the difference map side by side; returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for ax, image, title in ((axes[0], result.x, f"{names[result.label]} (true class)"),
                             (axes[1], result.x_cf, f"towards {names[result.target]}")):
        ax.imshow(image[0].numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=9)
    limit = max(float(result.difference.abs().max()), 1e-6)
    shown = axes[2].imshow(result.difference.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[2].set_title("difference (red: brighter)", fontsize=9)
    fig.colorbar(shown, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def counterfactual_explorer(model, evaluator, images: Tensor, labels: Tensor, *,
                            steps: int = EXPLORER_STEPS, names: list[str] = NAMES):
    """The widget: sliders and menus for :func:`explain`'s arguments, an *Explain* button, and an
    output area with :func:`draw`'s figure and the verdict. Needs ipywidgets (the course extra)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    T = model.schedule.num_steps
    controls = {
        "index": w.BoundedIntText(value=0, min=0, max=len(images) - 1, description="test image"),
        "target": w.Dropdown(options=[(n, k) for k, n in enumerate(names)], value=1, description="target"),
        "auto": w.Checkbox(value=True, description="t* auto (per image)"),
        "t_star": w.IntSlider(value=T // 4, min=T // 20, max=T // 2, step=T // 40, description="t*",
                              disabled=True),
        "kind": w.Dropdown(options=list(GUIDANCE_KINDS), value="representation", description="sampler"),
        # a selection, not a FloatLogSlider: the browser snaps a slider's value to its grid (300 → 316)
        # and sends that back, so the first click would not use the sampler's default
        "scale": w.SelectionSlider(options=[(f"{s:g}", s) for s in scale_options(model)],
                                   value=default_scale(model, "representation"), description="γ or s"),
    }
    button, out = w.Button(description="Explain", button_style="primary"), w.Output()
    controls["auto"].observe(lambda change: setattr(controls["t_star"], "disabled", change["new"]),
                             names="value")
    # γ and s live on different scales: a new sampler starts from its own default
    controls["kind"].observe(lambda change: setattr(controls["scale"], "value",
                                                    default_scale(model, change["new"])),
                             names="value")

    def on_click(_=None):
        values = {k: c.value for k, c in controls.items()}
        with out:
            out.clear_output(wait=True)
            try:
                result = explain(model, evaluator, images, labels, index=values["index"],
                                 target=values["target"], kind=values["kind"], scale=values["scale"],
                                 t_star="auto" if values["auto"] else values["t_star"], steps=steps)
            except ValueError as err:   # e.g. a sampler this model's head cannot serve
                print(f"cannot explain: {err}")
                return
            fig = draw(result, names)
            display(fig)
            plt.close(fig)
            print(result.verdict(names))

    button.on_click(on_click)
    box = w.VBox([w.HBox([controls["index"], controls["target"], controls["kind"]]),
                  w.HBox([controls["auto"], controls["t_star"], controls["scale"]]), button, out])
    box.explain = on_click   # run a click from code (tests, or a notebook cell)
    box.controls, box.output = controls, out
    return box
