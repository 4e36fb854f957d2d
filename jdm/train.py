"""Training: the ``Trainer`` loop, EMA, checkpoints and exact resume.

    trainer = Trainer(model, images, labels, TrainConfig(steps=2000), out_dir="runs/fmnist")
    history = trainer.fit()               # writes runs/fmnist/last.pt as it goes
    history = trainer.fit(resume=True)    # after an interruption: continues exactly where it stopped

Any ``nn.Module`` with ``loss(x0, y) -> {"loss": total, ...parts}`` and ``spec() -> dict`` trains
here (``DiffusionModel``, the joint model, or a toy model in a test).

Speed: the dataset is copied to the device once and batches are gathered there; AdamW is the
fused kernel; on CUDA the forward runs under bf16 autocast. The Trainer itself waits for the device
only at logging/checkpoint steps, and the shipped models' losses have no host-device sync either
(no data-dependent branch: ``tests/test_graph_breaks.py`` finds 0 graph breaks), so
``TrainConfig(compile=True)`` compiles the whole loss, forward and backward, as one graph.
Measured images/s, eager and compiled: benchmarks/README.md (``python benchmarks/bench_train.py``).

Resume is *exact*: the Trainer draws its own batches from the resident tensors (epoch ``e`` is the
permutation ``torch.randperm(N, generator=Generator().manual_seed(seed * 1_000_003 + e))``, step
``k`` of an epoch takes batch ``k`` of it, the last incomplete batch is dropped), and a checkpoint
holds the model, the EMA, the optimiser, the step and the global RNG state (the diffusion loss
draws t and ε from it). A run interrupted and resumed ends with bit-identical weights.

A checkpoint is plain data (``torch.load(path, weights_only=True)`` reads it):
``{"format": "jdm-checkpoint", "version": 1, "spec", "train_config", "step", "model", "ema",
"optimizer", "rng", "history", "train_seconds", "data", "probe_loss", "checksum"}``.

Nothing is lost, nothing is silently wrong:

* a checkpoint is written atomically (a temporary file, then one ``os.replace``), every
  ``checkpoint_every`` steps *and* every ``checkpoint_minutes`` minutes, and only after its
  weights gave a finite loss on a fixed batch (``probe_loss``): ``last.pt`` is always a state
  that trains;
* reading one checks its ``checksum`` (sha256 of every tensor and value) and that every tensor is
  finite, and names the file when it refuses;
* Ctrl-C (SIGINT) or SIGTERM during ``fit`` finishes the current step, saves, and raises
  ``TrainingInterrupted`` (a second Ctrl-C stops at once; the last checkpoint stays);
* ``fit`` locks its folder (``jdm.runlock.RunLock``: an flock on ``out_dir/.lock``), so two runs
  cannot write the same ``last.pt``, and removes temporary files a killed run left behind;
* resuming checks that the model (``spec``) and the data (``data``: size and sha256 of the
  images and labels) are the ones the checkpoint was trained with.
"""
from __future__ import annotations

import hashlib
import json
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .distributed import Distributed
from .inputs import MAX_BATCH, SEED_LIMIT, check_float, check_image_range, check_int
from .outputs import write_atomically
from .runlock import RunLock
from .sampling import eval_mode
from .utils import get_device, seed_everything

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "RunLock",
    "read_checkpoint",
    "load_checkpoint_model",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
]

CHECKPOINT_FORMAT = "jdm-checkpoint"
CHECKPOINT_VERSION = 1

# TrainConfig.compile → torch.compile's arguments (always fullgraph=True: a graph break fails loudly)
COMPILE_MODES = {"default": {}, "reduce-overhead": {"mode": "reduce-overhead"},
                 "aot_eager": {"backend": "aot_eager"}}

# Changing these between an interrupted run and its resume changes the run itself (other batches,
# another optimiser trajectory); the others (steps, logging, checkpointing) are safe to change.
_TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "ema_decay", "ema_warmup", "grad_clip",
                      "warmup_steps", "seed", "amp", "compile", "labelled_batch_size")


@dataclass
class TrainConfig:
    """Optimisation settings (the paper: AdamW, lr 1e-4, EMA 0.9999).

    Attributes:
        steps: total optimiser steps of the run (a resumed run continues up to this number).
        batch_size: images per step; must not exceed the dataset size.
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay.
        ema_decay: EMA decay in [0, 1); 0 makes the EMA a copy of the model.
        ema_warmup: use ``min(ema_decay, (1 + step) / (10 + step))`` so short runs get a useful
            EMA (with 0.9999 and no warm-up the EMA still holds 37% of the random init after 10k
            steps). Set False for a constant decay.
        grad_clip: clip the global gradient norm to this (0 disables clipping).
        warmup_steps: linear learning-rate warm-up over this many steps (0 = none).
        log_every: add the mean loss parts to ``history`` every this many steps (and at the end).
        eval_every: call ``eval_fn(trainer)`` every this many steps (0 = never).
        checkpoint_every: write ``out_dir/last.pt`` every this many steps (0 = only at the end).
        checkpoint_minutes: also write it when this many minutes of training passed since the
            last one (0 = never by time), so a long run never has much to lose.
        seed: seeds the global RNG at step 0 and the batch order.
        amp: bf16 autocast for the forward pass; used only on CUDA.
        compile: run the model's loss, forward and backward, through ``torch.compile`` as one
            graph (``fullgraph=True``): False = eager; True or ``"default"`` = inductor;
            ``"reduce-overhead"`` = inductor with CUDA graphs (not measured yet);
            ``"aot_eager"`` = the same single graph and AOT backward without code generation
            (what the CPU tests and the dry run use: inductor's C++ build takes minutes on a
            small CPU). The first steps pay the compilation; benchmarks/README.md has the
            measured speed. Compiled random numbers differ from eager ones, so a run is
            repeatable but not bit-identical to an eager one.
        labelled_batch_size: 0 = every step is ``batch_size`` images drawn from all the data with
            their labels. L > 0 (semi-supervised, labels −1 = unlabelled): every step is
            ``batch_size`` images drawn from all the data with their labels *hidden* (−1: the
            joint model's diffusion loss only) followed by L images drawn from the labelled ones
            (label >= 0), so the classification loss sees exactly L labelled images a step
            whatever the share of labels, and a model trained on the same data and seed sees the
            same labelled batches. The labelled images are drawn epoch by epoch over the
            labelled set (a new permutation each pass, repeating it when L exceeds its size).
    """

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    grad_clip: float = 1.0
    warmup_steps: int = 0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0
    seed: int = 0
    amp: bool = True
    compile: bool | str = False
    labelled_batch_size: int = 0

    def __post_init__(self) -> None:
        # integers must be ints (steps=2.5 would train past the end and never save the final
        # checkpoint), numbers finite; each message names the field and its range
        for name, low, high in (("steps", 1, None), ("batch_size", 1, MAX_BATCH),
                                ("warmup_steps", 0, None), ("log_every", 1, None),
                                ("eval_every", 0, None), ("checkpoint_every", 0, None),
                                ("seed", 0, SEED_LIMIT - 1),
                                ("labelled_batch_size", 0, MAX_BATCH)):
            check_int(getattr(self, name), name, low, high)
        for name, low in (("weight_decay", 0.0), ("grad_clip", 0.0), ("checkpoint_minutes", 0.0)):
            check_float(getattr(self, name), name, low)
        if check_float(self.lr, "lr") <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= check_float(self.ema_decay, "ema_decay") < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        for name in ("ema_warmup", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.compile, bool) or self.compile in COMPILE_MODES):
            raise ValueError(f"compile must be False, True or one of {list(COMPILE_MODES)}, "
                             f"got {self.compile!r}")


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


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` stopped on SIGINT (Ctrl-C) or SIGTERM after finishing its step and saving.

    ``signal`` is the signal's number, ``step`` the steps done, ``checkpoint`` the file saved
    (None without an ``out_dir``). A ``KeyboardInterrupt``, so code that handles Ctrl-C still does.
    """

    def __init__(self, message: str, signal: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signal = signal
        self.step = step
        self.checkpoint = checkpoint


def _clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove the temporary files (``.NAME.PID.HEX.tmp``) a killed ``save_checkpoint`` left in
    ``folder``; call it only while holding the folder's ``RunLock``. Returns what was removed."""
    stale = sorted(folder.glob(".*.pt.*.tmp*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _digest(value, h=None) -> str:
    """sha256 of a checkpoint's contents: every tensor's dtype, shape and bytes, and every other
    value's repr, in a fixed order (dict keys sorted), so the same state always hashes alike."""
    h = hashlib.sha256() if h is None else h
    if isinstance(value, Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(f"K{key!r}".encode())
            _digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _digest(item, h)
    else:
        h.update(f"V{value!r}".encode())
    return h.hexdigest()


def _first_non_finite(value, where: str = "") -> str | None:
    """The key path of the first floating tensor holding NaN/inf in ``value``, or None."""
    if isinstance(value, Tensor):
        return where if value.is_floating_point() and not torch.isfinite(value).all() else None
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, (list, tuple)) else ())
    for key, item in items:
        found = _first_non_finite(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def _plain(value, where: str):
    """Turn a logged value into plain Python data (so checkpoints load with weights_only=True)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: expected a number, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    try:  # numpy scalars and the like
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: cannot store {type(value).__name__} in the history; "
                         "return numbers, strings, lists or dicts") from None


def _json_plain(spec: dict) -> dict:
    """Normalise a spec as a JSON round trip would (tuples → lists) so specs compare equal."""
    return json.loads(json.dumps(spec))


def read_checkpoint(path: str | Path) -> dict:
    """Read a jdm checkpoint onto the CPU with ``torch.load(weights_only=True)`` and check it.

    A checkpoint with a ``checksum`` must match it (older ones have none), and every floating
    tensor in it must be finite.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a jdm checkpoint, is truncated/corrupt (checksum), holds
            NaN/inf, is a shipped weights file (load those with ``jdm.load_pretrained``), or is
            from a newer jdm. The message names the file.
    """
    path = Path(path)
    return _check_checkpoint(_load_file(path), path)


def _load_file(path: Path):
    """``torch.load(path, weights_only=True)`` onto the CPU, with a clear error for a missing,
    truncated or foreign file."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint file; pass the file inside it "
                         f"(e.g. {path / 'last.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (python -m jdm train "
                                f"--out DIR writes DIR/last.pt) or pass the path of an existing one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, pickled code: all mean "unusable"
        raise ValueError(f"not a jdm checkpoint or corrupt: {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); "
                         "delete it or pass another") from err


def _check_checkpoint(ckpt, path: Path) -> dict:
    """``ckpt`` if it is a readable, intact jdm training checkpoint (see ``read_checkpoint``)."""
    if isinstance(ckpt, dict) and ckpt.get("format") == "jdm-weights":
        raise ValueError(f"{path} is a shipped weights file (format 'jdm-weights': EMA weights "
                         "only, no optimiser state), not a training checkpoint: it cannot be "
                         "resumed; sample from it with `python -m jdm sample --checkpoint "
                         f"{path} --out x.png` or load it with jdm.load_pretrained(name)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a jdm checkpoint or corrupt: {path} (no format={CHECKPOINT_FORMAT!r} "
                         "entry); delete it or pass another")
    version = ckpt.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"checkpoint {path} is corrupt: its version is {version!r}, not an "
                         "integer; use an earlier checkpoint or train again")
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} is a version {version} checkpoint; this jdm reads up to "
                         f"version {CHECKPOINT_VERSION}: upgrade jdm")
    _verify_checkpoint(ckpt, path)
    return ckpt


# what every training checkpoint holds (``Trainer.checkpoint``), with the types it needs
_REQUIRED = {"spec": dict, "train_config": dict, "step": int, "model": dict, "ema": dict,
             "optimizer": dict, "rng": dict}


def _verify_checkpoint(ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint that holds NaN/inf, lacks its checksum or a part, or whose contents
    changed since it was saved. Every checkpoint this jdm writes has a checksum: one without is
    damaged or hand-made, and loading it unchecked could sample from altered weights."""
    bad = _first_non_finite({k: ckpt.get(k) for k in ("model", "ema", "optimizer")})
    if bad is not None:
        raise ValueError(f"checkpoint {path} holds NaN/inf values (in {bad}): the run had diverged "
                         "or the file is damaged; use an earlier checkpoint or train again")
    stored = ckpt.get("checksum")
    if not isinstance(stored, str):
        raise ValueError(f"checkpoint {path} has no checksum, so its integrity cannot be checked "
                         "(damaged, edited, or not written by jdm's Trainer); use an earlier "
                         "checkpoint or train again")
    if _digest({k: v for k, v in ckpt.items() if k != "checksum"}) != stored:
        raise ValueError(f"checkpoint {path} is corrupt: its contents do not match the checksum "
                         "stored when it was saved; use an earlier checkpoint or train again")
    missing = [k for k, kind in _REQUIRED.items() if not isinstance(ckpt.get(k), kind)
               or isinstance(ckpt.get(k), bool)]
    if missing or "torch" not in ckpt["rng"]:
        raise ValueError(f"checkpoint {path} is incomplete: {', '.join(missing) or 'rng'} missing "
                         "or of the wrong type; use an earlier checkpoint or train again")


def _fused_adamw_supported(device: torch.device) -> bool:
    """Use the fused AdamW kernel where torch has one: one kernel for all parameters instead of a
    loop over them (measured on 2 CPU cores: 2.3 ms vs 12.8 ms a step for 1.6 M parameters)."""
    return device.type in ("cuda", "cpu")


class Trainer:
    """Train ``model`` on in-memory tensors with AdamW, gradient clipping, EMA and checkpoints.

    Args:
        model: an ``nn.Module`` with ``loss(x0, y) -> dict`` (key ``"loss"`` is backpropagated,
            the other keys are logged) and ``spec() -> dict``. Moved to ``device``.
        images: (N, C, H, W) float training images in [-1, 1]; copied to ``device`` once, so each
            batch is a gather on the device (Fashion-MNIST is 188 MB in float32).
        labels: (N,) long labels, or None for unlabelled data (the model gets ``y=None``).
        config: the ``TrainConfig``.
        out_dir: folder for ``last.pt``; None trains without checkpoints.
        eval_fn: ``eval_fn(trainer) -> dict`` called every ``config.eval_every`` steps; its numbers
            go into ``history``. The model is put back in train mode afterwards.
        device: where to train (default ``get_device()``).
        progress: show a tqdm progress bar; without it, print one line per logged step (for logs
            of background runs).
        distributed: this process's rank in a ``torchrun`` job (``jdm.distributed``), or None
            to train alone. ``config.batch_size`` is then the global batch, split over the ranks;
            rank 0 alone writes checkpoints and logs.

    Attributes:
        model; ema_model (an ``AveragedModel``, kept in eval mode; the averaged network is
        ``ema_model.module``); optimizer; step (optimiser steps done); history (list of dicts, one
        per logged step).
    """

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor | None,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        eval_fn=None,
        device: str | torch.device | None = None,
        progress: bool = True,
        distributed: Distributed | None = None,
    ) -> None:
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError("images must be a float tensor of shape (N, C, H, W), got "
                             f"{tuple(images.shape) if isinstance(images, Tensor) else type(images)}")
        if labels is not None and (labels.dim() != 1 or labels.shape[0] != images.shape[0]):
            raise ValueError(f"labels must have shape ({images.shape[0]},) to match the images, "
                             f"got {tuple(labels.shape)}")
        if config.batch_size > images.shape[0]:
            raise ValueError(f"batch_size {config.batch_size} is larger than the dataset "
                             f"({images.shape[0]} images); lower it or use more data")
        if config.eval_every and eval_fn is None:
            raise ValueError(f"eval_every={config.eval_every} but no eval_fn was given")
        self._labelled: Tensor | None = None  # CPU indices of labels >= 0 (labelled_batch_size)
        if config.labelled_batch_size:
            if labels is None or not (labels >= 0).any():
                raise ValueError(f"labelled_batch_size={config.labelled_batch_size} needs labels "
                                 "with at least one labelled image (label >= 0; −1 = unlabelled)")
            self._labelled = (labels.cpu() >= 0).nonzero().squeeze(1)
        for name in ("loss", "spec"):
            if not callable(getattr(model, name, None)):
                raise ValueError(f"the model must have a {name}() method (see jdm.diffusion)")
        if images.shape[0] and images.is_floating_point():
            check_image_range(images, "training images", strict=True)  # once, not every step
        classes = getattr(model, "num_classes", None)  # the loss checks labels only on the CPU
        if labels is not None and labels.numel() and classes is not None and not (
                int(labels.min()) >= -1 and int(labels.max()) < classes):
            raise ValueError(f"labels must lie in 0..{classes - 1}, or be −1 for unlabelled "
                             f"images; got values from {int(labels.min())} to {int(labels.max())}")

        self.config = config
        self.device = device if isinstance(device, torch.device) else get_device(device)
        self.model = model.to(self.device)
        # resident on the device: no DataLoader, no per-step host-to-device copy
        self.images = images.to(self.device)
        self.labels = labels.to(self.device) if labels is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_fn = eval_fn
        self._dist = distributed
        self._main = distributed is None or distributed.is_main  # writes checkpoints and logs
        self.progress = progress and self._main
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay,
                                           fused=_fused_adamw_supported(self.device))
        self.ema_model = AveragedModel(model, multi_avg_fn=self._ema_update, use_buffers=True)
        self.ema_model.eval()  # only ever evaluated or sampled from (no dropout)
        # swa_utils branches on its update counter (`if n_averaged > 0`) every update: kept on the
        # CPU, that reads host memory instead of waiting for the GPU
        self.ema_model.n_averaged = self.ema_model.n_averaged.cpu()
        # torch.compile wraps the bound method, so state_dict keys and checkpoints are unchanged
        self._loss_fn = model.loss
        if config.compile:
            options = COMPILE_MODES["default" if config.compile is True else config.compile]
            self._loss_fn = torch.compile(model.loss, fullgraph=True, **options)
        if distributed is not None:  # each rank computes its rows of the global batch
            self._loss_fn = distributed.wrap(model, self._loss_fn, distributed.rows(
                config.batch_size, config.labelled_batch_size))
        self.step = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0  # wall time spent in fit(), summed over resumes
        self._epoch_perm: tuple[int, Tensor] | None = None  # (epoch, permutation on the CPU)
        self._device_perm: tuple[int, Tensor] | None = None  # the same, copied to the device
        self._labelled_perms: dict[int, Tensor] = {}  # pass over the labelled set → permutation
        self._window: list[Tensor] = []  # per-step losses (and grad norms) not yet checked
        self._data: dict | None = None  # size and sha256 of the training data (``_data_id``)
        self._saved: tuple[Path, int] | None = None  # the last checkpoint written/read, its step
        self._stop_signal: int | None = None  # set by SIGINT/SIGTERM during fit()
        self._previous_handlers: dict[int, object] = {}  # signal → handler before fit()
        self._lock: RunLock | None = None  # out_dir's lock while fit() runs
        self._last_save_time = time.monotonic()

    # ------------------------------------------------------------------------------ pieces
    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir/last.pt``, or None without an ``out_dir``."""
        return self.out_dir / "last.pt" if self.out_dir is not None else None

    def ema_decay_now(self) -> float:
        """The EMA decay used at the current step (see ``TrainConfig.ema_warmup``)."""
        decay = self.config.ema_decay
        if self.config.ema_warmup:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        return decay

    def _ema_update(self, ema_params: list[Tensor], params: list[Tensor], n_averaged: Tensor) -> None:
        get_ema_multi_avg_fn(self.ema_decay_now())(ema_params, params, n_averaged)

    def lr_now(self) -> float:
        """The learning rate of the next step: linear warm-up, then constant."""
        warmup = self.config.warmup_steps
        return self.config.lr * (min(1.0, (self.step + 1) / warmup) if warmup else 1.0)

    def batch_indices(self, step: int) -> Tensor:
        """The dataset indices (batch_size,) of step ``step`` (0-based), a pure function of it."""
        per_epoch = self.images.shape[0] // self.config.batch_size
        epoch, k = divmod(step, per_epoch)
        if self._epoch_perm is None or self._epoch_perm[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._epoch_perm = (epoch, torch.randperm(self.images.shape[0], generator=g))
        bs = self.config.batch_size
        return self._epoch_perm[1][k * bs:(k + 1) * bs]

    def batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        """The images (batch_size, C, H, W) and labels (batch_size,) or None of step ``step``,
        gathered on the device by ``batch_indices(step)``.

        The permutation is drawn on the CPU (so the order is the same on every device) and copied
        to the device once an epoch: a step then needs no host-to-device transfer.
        """
        per_epoch = self.images.shape[0] // self.config.batch_size
        epoch, k = divmod(step, per_epoch)
        if self._device_perm is None or self._device_perm[0] != epoch:
            self.batch_indices(step)  # makes sure _epoch_perm holds this epoch
            self._device_perm = (epoch, self._epoch_perm[1].to(self.device))
        bs = self.config.batch_size
        idx = self._device_perm[1][k * bs:(k + 1) * bs]
        if self._labelled is None:
            return self.images[idx], self.labels[idx] if self.labels is not None else None
        extra = self.labelled_batch_indices(step).to(self.device)
        hidden = torch.full((bs,), -1, dtype=self.labels.dtype, device=self.device)
        return (torch.cat([self.images[idx], self.images[extra]]),
                torch.cat([hidden, self.labels[extra]]))

    def labelled_batch_indices(self, step: int) -> Tensor:
        """The dataset indices (labelled_batch_size,) of step ``step``'s labelled part (see
        ``TrainConfig.labelled_batch_size``), a pure function of it: positions ``step·L …
        (step+1)·L − 1`` of an endless stream of passes over the labelled images, pass ``p``
        ordered by ``randperm(M, generator=Generator().manual_seed(seed * 1_000_003 + 500_009 +
        p))``."""
        if self._labelled is None:
            raise ValueError("this Trainer has no labelled batches (labelled_batch_size is 0)")
        n, size = self._labelled.shape[0], self.config.labelled_batch_size
        position, end, parts = step * size, (step + 1) * size, []
        while position < end:  # one slice of each pass the step's positions fall in
            p, within = divmod(position, n)
            take = min(end - position, n - within)
            if p not in self._labelled_perms:
                if len(self._labelled_perms) > 4:
                    self._labelled_perms.pop(min(self._labelled_perms))
                g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + 500_009 + p)
                self._labelled_perms[p] = torch.randperm(n, generator=g)
            parts.append(self._labelled[self._labelled_perms[p][within:within + take]])
            position += take
        return torch.cat(parts)

    # ------------------------------------------------------------------------------ training
    def fit(self, resume: bool = False) -> list[dict]:
        """Train until ``config.steps`` optimiser steps in total and return ``history``.

        With ``resume=True``, ``out_dir/last.pt`` (if it exists) is loaded first and training
        continues exactly from its step; if there is none, a line on stderr says so and the run
        starts fresh (so one command line both starts and continues a run). Otherwise a run at
        step 0 seeds the global RNG with ``config.seed``. While it runs, ``out_dir`` is locked
        (``RunLock``) and SIGINT/SIGTERM stop it cleanly after the current step.

        Raises:
            TrainingDiverged: the loss became NaN/inf; ``last.pt`` keeps the last good state.
            TrainingInterrupted: SIGINT/SIGTERM; ``last.pt`` holds the state after the last step.
            ValueError: ``out_dir`` is in use by another process, or the checkpoint to resume
                does not fit this model or data.
        """
        self._begin(resume)
        cfg = self.config
        use_amp = cfg.amp and self.device.type == "cuda"
        sums: dict[str, Tensor] = {}
        n_summed, t_window = 0, time.perf_counter()
        self.model.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="training", disable=not self.progress,
                   dynamic_ncols=True)
        self._window = []  # an interrupted fit() may have left unchecked steps of another state
        try:
            while self.step < cfg.steps:
                t_step = time.perf_counter()
                x, y = self.batch(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_now()

                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                    parts = self._loss_fn(x, y)
                loss = parts["loss"]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    parts = {**parts, "grad_norm": nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                            cfg.grad_clip)}
                self.optimizer.step()
                self.ema_model.update_parameters(self.model)
                self.step += 1
                self._watch(parts)
                log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
                eval_now = bool(cfg.eval_every) and self.step % cfg.eval_every == 0
                if self._dist is not None:  # all ranks stop after the same step
                    self._stop_signal = self._dist.agree_stop(self._stop_signal)
                save_now = self.out_dir is not None and self._main and (
                    self.step == cfg.steps
                    or bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
                    or self._save_due())
                if log_now or eval_now or save_now:
                    # the only host-device sync: nothing unchecked is ever logged or saved
                    self._check_finite()
                self.train_seconds += time.perf_counter() - t_step

                for key, value in parts.items():
                    sums[key] = sums.get(key, 0) + value.detach().float()
                n_summed += 1
                bar.update(1)
                record: dict = {}
                if log_now:
                    now = time.perf_counter()
                    means = torch.stack(list(sums.values())) / n_summed
                    means = (self._dist.mean(means) if self._dist else means).tolist()
                    record.update(zip(sums, means))
                    record["lr"] = self.optimizer.param_groups[0]["lr"]
                    record["s/it"] = (now - t_window) / n_summed
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    sums, n_summed, t_window = {}, 0, now
                if eval_now:
                    record.update(_plain(self.eval_fn(self), "eval_fn result"))
                    self.model.train()
                if record:
                    self.history.append({"step": self.step, **record})
                    if not self.progress and self._main:  # a background run leaves a log
                        print(f"step {self.step}/{cfg.steps} " + " ".join(
                            f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)),
                            flush=True)
                if save_now:
                    self.save_checkpoint()
                if self._stop_signal is not None:
                    self._interrupted()
        finally:
            bar.close()
            self._end()
        return self.history

    # ------------------------------------------------------------------------------ run safety
    def _begin(self, resume: bool) -> None:
        """Start of ``fit``: lock ``out_dir``, remove stale temporary files, resume or seed, and
        catch SIGINT/SIGTERM. ``_end`` undoes the lock and the handlers."""
        self._lock = RunLock(self.out_dir) if self.out_dir is not None and self._main else None
        if self._lock is not None:
            self._lock.__enter__()
        try:
            if self._lock is not None:
                _clean_stale_tmp(self.out_dir)
            path = self.checkpoint_path
            if resume and path is not None and path.exists():
                self.load_checkpoint(path)
            elif self.step == 0:
                if resume:
                    print(f"no checkpoint at {path} to resume from: starting a fresh run at step 0",
                          file=sys.stderr, flush=True)
                seed_everything(self.config.seed)
            self._install_signal_handlers()
        except BaseException:
            self._end()
            raise
        self._last_save_time = time.monotonic()

    def _end(self) -> None:
        self._restore_signal_handlers()
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def _install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM set ``_stop_signal``; the loop saves and stops after its step. A second
        signal restores the previous handlers and raises ``KeyboardInterrupt`` at once. Only the
        main thread can install handlers; elsewhere signals keep their usual effect."""
        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame) -> None:
            if self._stop_signal is not None:
                self._restore_signal_handlers()
                raise KeyboardInterrupt
            self._stop_signal = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                  "(again to stop at once)", file=sys.stderr, flush=True)

        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers = {}

    def _save_due(self) -> bool:
        """A checkpoint is due for a stop signal, or ``checkpoint_minutes`` after the last one."""
        minutes = self.config.checkpoint_minutes
        return self._stop_signal is not None or (
            bool(minutes) and time.monotonic() - self._last_save_time >= 60 * minutes)

    def _interrupted(self) -> None:
        """Save the state after this step (unless just saved) and raise ``TrainingInterrupted``."""
        if self.out_dir is not None and self._main and (
                self._saved is None or self._saved[1] != self.step):
            self._check_finite()
            self.save_checkpoint()  # a signal during eval_fn arrives after this step's save check
        if self._dist is not None:
            self._dist.barrier()  # no rank exits (which ends the job) before rank 0 has saved
        signum, saved = self._stop_signal, self._saved
        where = (f"saved {saved[0]} at step {saved[1]}; continue with fit(resume=True) "
                 "(python -m jdm train: the same command with --resume)" if saved is not None
                 and saved[1] == self.step else "no out_dir, nothing saved")
        raise TrainingInterrupted(f"training stopped by {signal.Signals(signum).name} after step "
                                  f"{self.step}/{self.config.steps}: {where}", signal=signum,
                                  step=self.step, checkpoint=saved[0] if saved else None)

    def _watch(self, parts: dict[str, Tensor]) -> None:
        """Remember this step's loss (and gradient norm) on the device for ``_check_finite``."""
        watched = [parts["loss"].detach().float()]
        if "grad_norm" in parts:  # an infinite gradient turns the weights NaN after a finite loss
            watched.append(parts["grad_norm"].float())
        self._window.append(torch.stack(watched))

    def _check_finite(self) -> None:
        """Raise ``TrainingDiverged`` naming the first step since the last check whose loss or
        gradient norm was NaN/inf. One host-device sync for the whole window of steps."""
        if not self._window:
            return
        window = torch.stack(self._window)  # (steps, 1 or 2)
        self._window = []
        bad = ~torch.isfinite(window).all(dim=1)
        if bad.any():
            i = int(bad.nonzero()[0])
            values = window[i].tolist()
            self._diverged(values[0], values[1:], step=self.step - window.shape[0] + i + 1)

    def _diverged(self, loss: float, grad_norm: list[float], step: int) -> None:
        good = self._saved[0] if self._saved is not None and self._saved[0].exists() else None
        where = (f"the last good checkpoint is {good} (step {self._saved[1]}; its weights gave a "
                 "finite loss when saved): resume from it with a lower lr, or with "
                 "fit(resume=True) after fixing the cause" if good is not None
                 else "no checkpoint was written before it")
        norm = f" (gradient norm {grad_norm[0]})" if grad_norm else ""
        raise TrainingDiverged(f"training diverged: loss is {loss}{norm} at step {step} "
                               f"(after {step - 1} good steps); {where}",
                               step=step, checkpoint=good)

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict:
        """The full training state as plain data (what ``save_checkpoint`` writes)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "spec": _json_plain(self.model.spec()),
            "train_config": asdict(self.config),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "history": _plain(self.history, "history"),
            "train_seconds": float(self.train_seconds),
            "data": self._data_id(),
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the training state atomically to ``path`` (default ``out_dir/last.pt``).

        First the weights must give a finite loss on a fixed batch (``probe_loss``), else
        ``TrainingDiverged`` names the last good checkpoint, which stays as it was. Then
        ``torch.save`` writes a temporary file in the same folder, with a ``checksum`` of the
        contents, which replaces ``path`` in one ``os.replace``: a crash mid-save leaves the
        previous checkpoint intact (and the next ``fit`` removes the temporary file).
        """
        if path is None:
            if self.checkpoint_path is None:
                raise ValueError("no path given and the Trainer has no out_dir")
            path = self.checkpoint_path
        path = Path(path)
        state = {**self.checkpoint(), "probe_loss": self._probe_loss()}
        state["checksum"] = _digest(state)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(state, tmp))  # a full disk: an OSError
        self._saved, self._last_save_time = (path, self.step), time.monotonic()
        return path

    @torch.no_grad()
    def _probe_loss(self) -> float:
        """The model's loss (eval mode) on the first batch of the data, with the RNG restored
        afterwards (exact resume holds). Raises ``TrainingDiverged`` if it, or any weight, is not
        finite: such weights would diverge on every batch, so they are never saved."""
        x, y = self.images[:self.config.batch_size], (
            self.labels[:self.config.batch_size] if self.labels is not None else None)
        with eval_mode(self.model), \
                torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                torch.autocast(self.device.type, dtype=torch.bfloat16,
                               enabled=self.config.amp and self.device.type == "cuda"):
            loss = float(self.model.loss(x, y)["loss"])
        bad = _first_non_finite({"model": self.model.state_dict(), "ema": self.ema_model.state_dict()})
        if bad is not None or not torch.isfinite(torch.tensor(loss)):
            what = f"weights hold NaN/inf ({bad})" if bad else f"loss on a fixed batch is {loss}"
            self._diverged_at_save(what)
        return loss

    def _diverged_at_save(self, what: str) -> None:
        saved = self._saved
        where = (f"the last good checkpoint is {saved[0]} (step {saved[1]}; left as it was)"
                 if saved is not None and saved[0].exists() else "no good checkpoint was written")
        raise TrainingDiverged(f"training diverged: after step {self.step} the {what}, so it was "
                               f"not saved; {where}", step=self.step,
                               checkpoint=saved[0] if saved is not None else None)

    def _data_id(self) -> dict:
        """Size and sha256 of the training images and labels (computed once): resuming on other
        data (another --dataset or --limit) would silently train another run."""
        if self._data is None:
            labels = self.labels if self.labels is not None else torch.zeros(0)
            self._data = {"images": int(self.images.shape[0]),
                          "sha256": _digest([self.images, labels])}
        return self._data

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, EMA, optimiser, step, history and RNG from a checkpoint.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a jdm checkpoint / corrupt, or saved from another architecture or
                other training data.
        """
        ckpt = read_checkpoint(path)
        mine = _json_plain(self.model.spec())
        if ckpt.get("spec") != mine:
            raise ValueError(f"checkpoint {path} was saved from a different model:\n"
                             f"  checkpoint spec: {ckpt.get('spec')}\n  this model's spec: {mine}\n"
                             "build the model with the checkpoint's settings, or use another out_dir")
        data = ckpt.get("data")
        if data is not None and data != self._data_id():
            raise ValueError(f"checkpoint {path} was trained on other data ({data['images']} "
                             f"images, sha256 {data['sha256'][:12]}…) than this run "
                             f"({self._data_id()['images']} images, sha256 "
                             f"{self._data_id()['sha256'][:12]}…): resume with the same data (the "
                             "same --dataset and --limit), or use another out_dir")
        saved = ckpt.get("train_config", {})
        changed = [f"{k}: {saved[k]!r} -> {getattr(self.config, k)!r}" for k in _TRAJECTORY_FIELDS
                   if k in saved and saved[k] != getattr(self.config, k)]
        if changed:
            warnings.warn(f"resuming {path} with changed settings ({', '.join(changed)}): the run "
                          "will not match an uninterrupted one", stacklevel=2)
        self.model.load_state_dict(ckpt["model"])
        self.ema_model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.history = list(ckpt.get("history", []))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self._saved = (Path(path), self.step)


def load_checkpoint_model(path: str | Path, ema: bool = True,
                          device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the model saved in a checkpoint (``build_model(ckpt["spec"])``) in eval mode.

    Args:
        path: a checkpoint written by ``Trainer`` (e.g. ``runs/x/last.pt``), or a shipped weights
            file (``data/checkpoints/NAME.pt``, see ``jdm.pretrained``), which holds EMA weights.
        ema: load the EMA weights (what to sample from) instead of the raw ones.
        device: where to put the model (default: the CPU).

    Raises:
        FileNotFoundError / ValueError: as ``read_checkpoint``; ``ema=False`` on a weights file.
    """
    from .diffusion import build_model  # here, not at the top: the Trainer itself needs no UNet
    from .pretrained import WEIGHTS_FORMAT, model_from_weights, verify_weights

    path = Path(path)
    blob = _load_file(path)
    if isinstance(blob, dict) and blob.get("format") == WEIGHTS_FORMAT:
        if not ema:
            raise ValueError(f"{path} is a shipped weights file: it holds only the EMA weights, "
                             "so there are no raw ones to load (drop --raw / ema=False)")
        verify_weights(path, blob)  # against its manifest, as load_pretrained does
        return model_from_weights(blob, path, device)
    ckpt = _check_checkpoint(blob, path)
    model = build_model(ckpt["spec"])
    if ema:
        if "ema" not in ckpt:
            raise ValueError(f"{path} has no EMA weights; load it with ema=False")
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k != "n_averaged"}
    else:
        state = ckpt["model"]
    model.load_state_dict(state)
    return model.to(device if device is not None else "cpu").eval()
