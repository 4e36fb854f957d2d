"""Noticing that training diverged (a NaN/inf loss or gradient norm) without stalling the GPU.

    watch = LossWatch()
    watch.add(parts)                 # every step: the loss (and gradient norm) stay on the device
    watch.check(step, last_saved)    # at logging/checkpoint steps: one sync; TrainingDiverged

The error names the first bad step and the last good checkpoint, which is never overwritten by a
diverged state: before each save the Trainer calls ``probe_loss``, which refuses weights that hold
NaN/inf or give a NaN/inf loss on a fixed batch.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoint import first_non_finite
from .sampling import eval_mode

__all__ = ["TrainingDiverged", "LossWatch", "probe_loss"]


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite. ``step`` is the failing step,
    ``checkpoint`` the last good checkpoint on disk (or None); that checkpoint is left untouched.
    Finiteness is checked at logging, evaluation and checkpoint steps (not every step, which
    would stall the GPU), so the model in memory may be a few steps past the failure: resume
    from the checkpoint."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class LossWatch:
    """The per-step losses (and gradient norms) not yet checked, kept on the device."""

    def __init__(self) -> None:
        self.window: list[Tensor] = []  # one (1 or 2,) tensor a step

    def add(self, parts: dict[str, Tensor]) -> None:
        """Remember this step's ``parts["loss"]`` (and ``parts["grad_norm"]``)."""
        watched = [parts["loss"].detach().float()]
        if "grad_norm" in parts:  # an infinite gradient turns the weights NaN after a finite loss
            watched.append(parts["grad_norm"].float())
        self.window.append(torch.stack(watched))

    def check(self, step: int, saved: tuple[Path, int] | None) -> None:
        """Raise ``TrainingDiverged`` naming the first step since the last check whose loss or
        gradient norm was NaN/inf (``step`` is the last step added; ``saved`` the last checkpoint
        and its step). One host-device sync for the whole window of steps."""
        if not self.window:
            return
        window = torch.stack(self.window)  # (steps, 1 or 2)
        self.window = []
        bad = ~torch.isfinite(window).all(dim=1)
        if not bad.any():
            return
        i = int(bad.nonzero()[0])
        loss, *grad_norm = window[i].tolist()
        failed = step - window.shape[0] + i + 1
        good = saved[0] if saved is not None and saved[0].exists() else None
        where = (f"the last good checkpoint is {good} (step {saved[1]}; its weights gave a "
                 "finite loss when saved): resume from it with a lower lr, or with "
                 "fit(resume=True) after fixing the cause" if good is not None
                 else "no checkpoint was written before it")
        norm = f" (gradient norm {grad_norm[0]})" if grad_norm else ""
        raise TrainingDiverged(f"training diverged: loss is {loss}{norm} at step {failed} "
                               f"(after {failed - 1} good steps); {where}",
                               step=failed, checkpoint=good)


@torch.no_grad()
def probe_loss(model: nn.Module, ema_model: nn.Module, x: Tensor, y: Tensor | None,
               device: torch.device, amp: bool, step: int, saved: tuple[Path, int] | None) -> float:
    """``model``'s loss (eval mode) on the fixed batch ``x, y``, with the RNG restored afterwards
    (exact resume holds); ``amp``: bf16 autocast on CUDA. Raises ``TrainingDiverged`` (``step``,
    ``saved`` as in ``LossWatch.check``) if it, or any weight of ``model`` or ``ema_model``, is
    not finite: such weights would diverge on every batch, so they are never saved."""
    with eval_mode(model), \
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.autocast(device.type, dtype=torch.bfloat16,
                           enabled=amp and device.type == "cuda"):
        loss = float(model.loss(x, y)["loss"])
    bad = first_non_finite({"model": model.state_dict(), "ema": ema_model.state_dict()})
    if bad is None and torch.isfinite(torch.tensor(loss)):
        return loss
    what = f"weights hold NaN/inf ({bad})" if bad else f"loss on a fixed batch is {loss}"
    where = (f"the last good checkpoint is {saved[0]} (step {saved[1]}; left as it was)"
             if saved is not None and saved[0].exists() else "no good checkpoint was written")
    raise TrainingDiverged(f"training diverged: after step {step} the {what}, so it was not "
                           f"saved; {where}", step=step,
                           checkpoint=saved[0] if saved is not None else None)
