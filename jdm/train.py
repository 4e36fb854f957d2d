"""Training: the ``Trainer`` loop, EMA, checkpoints and exact resume.

    trainer = Trainer(model, images, labels, TrainConfig(steps=2000), out_dir="runs/fmnist")
    history = trainer.fit()               # writes runs/fmnist/last.pt as it goes
    history = trainer.fit(resume=True)    # after an interruption: continues exactly where it stopped

Any ``nn.Module`` with ``loss(x0, y) -> {"loss": total, ...parts}`` and ``spec() -> dict`` trains
here (``DiffusionModel``, the joint model, or a toy model in a test).

Speed: the dataset is copied to the device once and batches are gathered there; AdamW is the
fused kernel; on CUDA the forward runs under bf16 autocast. The Trainer waits for the device only
at logging/checkpoint steps, and the shipped models' losses have no host-device sync either
(``tests/test_graph_breaks.py``), so ``TrainConfig(compile=True)`` compiles the whole loss,
forward and backward, as one graph. Measured images/s: benchmarks/README.md.

Resume is *exact*: the Trainer draws its own batches from the resident tensors (epoch ``e`` is the
permutation ``torch.randperm(N, generator=Generator().manual_seed(seed * 1_000_003 + e))``, step
``k`` of an epoch takes batch ``k`` of it, the last incomplete batch is dropped), and a checkpoint
(``jdm.checkpoint``) holds the model, the EMA, the optimiser, the step and the global RNG state
(the diffusion loss draws t and ε from it). A run interrupted and resumed ends with bit-identical
weights.

Nothing is lost, nothing is silently wrong: a checkpoint is written atomically, every
``checkpoint_every`` steps and every ``checkpoint_minutes`` minutes, only after its weights gave a
finite loss on a fixed batch, so ``last.pt`` is always a state that trains; a NaN/inf loss raises
``TrainingDiverged`` (``jdm.divergence``); Ctrl-C or SIGTERM saves and raises
``TrainingInterrupted`` (``jdm.interrupts``); ``fit`` locks its folder (``jdm.runlock``); resuming
checks that the model and the data are the ones the checkpoint was trained with.
"""
from __future__ import annotations

import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from functools import partial
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, check_resumable, clean_stale_tmp,
                         digest, json_plain, plain, read_checkpoint, restore_rng,
                         rng_state, write_checkpoint)
from .distributed import Distributed
from .divergence import LossWatch, probe_loss
from .inputs import MAX_BATCH, SEED_LIMIT, check_float, check_int, check_training_inputs
from .interrupts import StopSignals, TrainingInterrupted
from .runlock import RunLock
from .utils import get_device, seed_everything

__all__ = ["TrainConfig", "Trainer"]

# TrainConfig.compile → torch.compile's arguments (always fullgraph=True: a graph break fails loudly)
COMPILE_MODES = {"default": {}, "reduce-overhead": {"mode": "reduce-overhead"},
                 "aot_eager": {"backend": "aot_eager"}}

# Changing these between an interrupted run and its resume changes the run itself (other batches,
# another optimiser trajectory); the others (steps, logging, checkpointing) are safe to change.
_TRAJECTORY_FIELDS = ("batch_size", "lr", "weight_decay", "ema_decay", "ema_warmup", "grad_clip",
                      "warmup_steps", "seed", "amp", "compile", "labelled_batch_size")


@dataclass
class TrainConfig:
    """Optimisation settings (the paper: AdamW, lr 1e-4, EMA 0.9999). Each field's ``help``
    (``dataclasses.fields(TrainConfig)``'s metadata) says what it means; the CLI's ``train`` flags
    are made from them.

    ``compile``: ``True``/``"default"`` = inductor; ``"reduce-overhead"`` = inductor with CUDA
    graphs; ``"aot_eager"`` = the same single graph without code generation (the CPU tests and
    the dry run: inductor's C++ build takes minutes on a small CPU). Compiled random numbers
    differ from eager ones: a run is repeatable but not bit-identical to an eager one.
    ``labelled_batch_size`` L > 0 (semi-supervised, labels −1 = unlabelled): every step is
    ``batch_size`` images from all the data with their labels *hidden* (the joint model's
    diffusion loss only) followed by L images from the labelled ones
    (``Trainer.labelled_batch_indices``), so the classification loss sees exactly L labelled
    images a step whatever the share of labels.
    """

    steps: int = field(default=10_000, metadata={
        "flag": "--train-steps",  # --steps is the DDIM step count in the sampling commands
        "help": "total optimiser steps of the run (a resumed run continues up to this number)"})
    batch_size: int = field(default=128, metadata={
        "help": "images per optimiser step (under torchrun: over all ranks), at most the number "
                "of training images"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (> 0)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (>= 0)"})
    ema_decay: float = field(default=0.9999, metadata={
        "help": "EMA decay per optimiser step, in [0, 1) (0 makes the EMA a copy of the model)"})
    ema_warmup: bool = field(default=True, metadata={
        "help": "warm the EMA decay up as min(ema_decay, (1 + step) / (10 + step)) so short runs "
                "get a useful EMA"})
    grad_clip: float = field(default=1.0, metadata={
        "help": "clip the global gradient norm to this (0 = no clipping)"})
    warmup_steps: int = field(default=0, metadata={
        "help": "linear learning-rate warm-up over this many optimiser steps (0 = none)"})
    log_every: int = field(default=50, metadata={
        "help": "add the mean loss parts to the history every this many optimiser steps (and at "
                "the end)"})
    # not a flag: the CLI has no eval_fn to call (Trainer(eval_fn=...) is Python only)
    eval_every: int = field(default=0, metadata={
        "cli": False, "help": "call eval_fn(trainer) every this many optimiser steps (0 = never)"})
    checkpoint_every: int = field(default=1000, metadata={
        "help": "write OUT/last.pt every this many optimiser steps (0 = only at the end)"})
    checkpoint_minutes: float = field(default=5.0, metadata={
        "help": "also write OUT/last.pt when this many minutes of training passed since the last "
                "one (0 = never by time)"})
    seed: int = field(default=0, metadata={
        "help": "seeds the global RNG at step 0 and the batch order"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast of the forward (CUDA only)"})
    compile: bool | str = field(default=False, metadata={
        "choices": tuple(COMPILE_MODES),
        "help": "torch.compile the loss, forward and backward, as one graph (fullgraph=True): "
                "False = eager, True = 'default' (inductor), or one of the choices; the first "
                "steps pay the compilation"})
    labelled_batch_size: int = field(default=0, metadata={
        "help": "labelled images added to every step, whose batch_size images then train with "
                "their labels hidden (0 = plain batches)"})

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
        check_training_inputs(model, images, labels, config, eval_fn)
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
        # the fused kernel (one for all parameters, not a loop over them) where torch has one
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay,
                                           fused=self.device.type in ("cuda", "cpu"))
        self.ema_model = AveragedModel(model, multi_avg_fn=self._ema_update, use_buffers=True)
        self.ema_model.eval()  # only ever evaluated or sampled from (no dropout)
        # swa_utils branches on its update counter (`if n_averaged > 0`) every update: kept on the
        # CPU, that reads host memory instead of waiting for the GPU
        self.ema_model.n_averaged = self.ema_model.n_averaged.cpu()
        tail = config.labelled_batch_size // (distributed.world_size if distributed else 1)
        # only each rank's last `tail` rows carry labels (rows()): the CE skips the others
        self._loss_fn = partial(model.loss, labelled_tail=tail) if tail else model.loss
        if config.compile:  # it wraps the bound method: state_dict keys, checkpoints unchanged
            options = COMPILE_MODES["default" if config.compile is True else config.compile]
            self._loss_fn = torch.compile(self._loss_fn, fullgraph=True, **options)
        if distributed is not None:  # each rank computes its rows of the global batch
            self._loss_fn = distributed.wrap(model, self._loss_fn, distributed.rows(
                config.batch_size, config.labelled_batch_size))
        self.step = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0  # wall time spent in fit(), summed over resumes
        # CPU indices of labels >= 0, for labelled_batch_size
        self._labelled = ((labels.cpu() >= 0).nonzero().squeeze(1)
                          if config.labelled_batch_size else None)
        self._epoch_perm: tuple[int, Tensor] | None = None  # (epoch, permutation on the CPU)
        self._device_perm: tuple[int, Tensor] | None = None  # the same, copied to the device
        self._labelled_perms: dict[int, Tensor] = {}  # pass over the labelled set → permutation
        self._losses = LossWatch()  # per-step losses (and grad norms) not yet checked
        self._sums: dict[str, Tensor] = {}  # loss parts summed since the last logged step
        self._n_summed, self._t_window = 0, time.perf_counter()  # steps in _sums, their start
        self._data: dict | None = None  # size and sha256 of the training data (``_data_id``)
        self.saved: tuple[Path, int] | None = None  # the last checkpoint written/read, its step
        self._stop = StopSignals()  # SIGINT/SIGTERM during fit()
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
        with self._session(resume), tqdm(total=self.config.steps, initial=self.step,
                                         desc="training", disable=not self.progress,
                                         dynamic_ncols=True) as bar:
            while self.step < self.config.steps:
                t_step = time.perf_counter()
                parts = self._train_step()
                log_now, eval_now, save_now = self._due()
                if log_now or eval_now or save_now:
                    # the only host-device sync: nothing unchecked is ever logged or saved
                    self._losses.check(self.step, self.saved)
                self.train_seconds += time.perf_counter() - t_step
                self._add_to_log(parts)
                bar.update(1)
                record = self._log_means(bar) if log_now else {}
                if eval_now:
                    record.update(plain(self.eval_fn(self), "eval_fn result"))
                    self.model.train()
                if record:
                    self._record(record)
                if save_now:
                    self.save_checkpoint()
                if self._stop.signum is not None:
                    self._interrupted()
        return self.history

    def _train_step(self) -> dict[str, Tensor]:
        """One optimiser step on batch ``step`` (AdamW, clipping, EMA); its loss parts, and the
        gradient norm when clipping, stay on the device."""
        x, y = self.batch(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_now()
        use_amp = self.config.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            parts = self._loss_fn(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if self.config.grad_clip > 0:
            parts = {**parts, "grad_norm": nn.utils.clip_grad_norm_(self.model.parameters(),
                                                                    self.config.grad_clip)}
        self.optimizer.step()
        self.ema_model.update_parameters(self.model)
        self.step += 1
        self._losses.add(parts)
        return parts

    def _due(self) -> tuple[bool, bool, bool]:
        """Whether the step just done logs, evaluates and saves. A checkpoint is also due after a
        stop signal (on which all ranks agree first) or ``checkpoint_minutes`` after the last."""
        cfg = self.config
        log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
        eval_now = bool(cfg.eval_every) and self.step % cfg.eval_every == 0
        if self._dist is not None:  # all ranks stop after the same step
            self._stop.signum = self._dist.agree_stop(self._stop.signum)
        late = bool(cfg.checkpoint_minutes) and (
            time.monotonic() - self._last_save_time >= 60 * cfg.checkpoint_minutes)
        save_now = self.out_dir is not None and self._main and (
            self.step == cfg.steps
            or bool(cfg.checkpoint_every) and self.step % cfg.checkpoint_every == 0
            or self._stop.signum is not None or late)
        return log_now, eval_now, save_now

    def _add_to_log(self, parts: dict[str, Tensor]) -> None:
        for key, value in parts.items():
            self._sums[key] = self._sums.get(key, 0) + value.detach().float()
        self._n_summed += 1

    def _log_means(self, bar) -> dict:
        """The loss parts' means since the last logged step (over all ranks), the lr and s/it."""
        now = time.perf_counter()
        means = torch.stack(list(self._sums.values())) / self._n_summed
        means = (self._dist.mean(means) if self._dist else means).tolist()
        record = dict(zip(self._sums, means))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["s/it"] = (now - self._t_window) / self._n_summed
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        self._sums, self._n_summed, self._t_window = {}, 0, now
        return record

    def _record(self, record: dict) -> None:
        self.history.append({"step": self.step, **record})
        if not self.progress and self._main:  # a background run leaves a log
            print(f"step {self.step}/{self.config.steps} " + " ".join(
                f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)), flush=True)

    @contextmanager
    def _session(self, resume: bool):
        """Around ``fit``'s loop: lock ``out_dir``, remove stale temporary files, resume or seed,
        and catch SIGINT/SIGTERM; on the way out, the handlers and the lock are given back."""
        with ExitStack() as stack:
            if self.out_dir is not None and self._main:
                stack.enter_context(RunLock(self.out_dir))
                clean_stale_tmp(self.out_dir)
            path = self.checkpoint_path
            if resume and path is not None and path.exists():
                self.load_checkpoint(path)
            elif self.step == 0:
                if resume:
                    print(f"no checkpoint at {path} to resume from: starting a fresh run at step 0",
                          file=sys.stderr, flush=True)
                seed_everything(self.config.seed)
            stack.enter_context(self._stop)
            self._last_save_time = time.monotonic()
            self._losses.window.clear()  # an interrupted fit() may have left unchecked steps
            self._sums, self._n_summed, self._t_window = {}, 0, time.perf_counter()
            self.model.train()
            yield

    def _interrupted(self) -> None:
        """Save the state after this step (unless just saved) and raise ``TrainingInterrupted``."""
        if self.out_dir is not None and self._main and (
                self.saved is None or self.saved[1] != self.step):
            self._losses.check(self.step, self.saved)
            self.save_checkpoint()  # a signal during eval_fn arrives after this step's save check
        if self._dist is not None:
            self._dist.barrier()  # no rank exits (which ends the job) before rank 0 has saved
        signum, saved = self._stop.signum, self.saved
        where = (f"saved {saved[0]} at step {saved[1]}; continue with fit(resume=True) "
                 "(python -m jdm train: the same command with --resume)" if saved is not None
                 and saved[1] == self.step else "no out_dir, nothing saved")
        raise TrainingInterrupted(f"training stopped by {signal.Signals(signum).name} after step "
                                  f"{self.step}/{self.config.steps}: {where}", signal=signum,
                                  step=self.step, checkpoint=saved[0] if saved else None)

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict:
        """The full training state as plain data (what ``save_checkpoint`` writes)."""
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "spec": json_plain(self.model.spec()), "train_config": asdict(self.config),
                "step": self.step, "model": self.model.state_dict(),
                "ema": self.ema_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": rng_state(), "history": plain(self.history, "history"),
                "train_seconds": float(self.train_seconds), "data": self._data_id()}

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write the training state atomically to ``path`` (default ``out_dir/last.pt``), with a
        checksum (``jdm.checkpoint.write_checkpoint``), if its weights give a finite loss on a
        fixed batch (``jdm.divergence.probe_loss``); else ``TrainingDiverged`` names the last good
        checkpoint, which stays as it was."""
        if path is None:
            if self.checkpoint_path is None:
                raise ValueError("no path given and the Trainer has no out_dir")
            path = self.checkpoint_path
        bs = self.config.batch_size  # the fixed batch: the data's first
        probe = probe_loss(self.model, self.ema_model, self.images[:bs],
                           self.labels[:bs] if self.labels is not None else None, self.device,
                           self.config.amp, self.step, self.saved)
        path = write_checkpoint(path, {**self.checkpoint(), "probe_loss": probe})
        self.saved, self._last_save_time = (path, self.step), time.monotonic()
        return path

    def _data_id(self) -> dict:
        """Size and sha256 of the training images and labels (computed once): resuming on other
        data (another --dataset or --limit) would silently train another run."""
        if self._data is None:
            labels = self.labels if self.labels is not None else torch.zeros(0)
            self._data = {"images": int(self.images.shape[0]),
                          "sha256": digest([self.images, labels])}
        return self._data

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, EMA, optimiser, step, history and RNG from a checkpoint.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a jdm checkpoint / corrupt, or saved from another architecture or
                other training data.
        """
        ckpt = read_checkpoint(path)
        check_resumable(ckpt, path, json_plain(self.model.spec()), self._data_id(),
                        {k: getattr(self.config, k) for k in _TRAJECTORY_FIELDS})
        self.model.load_state_dict(ckpt["model"])
        self.ema_model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.history = list(ckpt.get("history", []))
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        restore_rng(ckpt["rng"])
        self.saved = (Path(path), self.step)

