"""Training on several GPUs or machines with ``torchrun`` and ``DistributedDataParallel``.

    torchrun --nproc_per_node=4 -m jdm train --model joint --batch-size 512 --out runs/x
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m jdm train ...                              # the same command on every machine

torchrun starts one process (rank) per GPU and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
``init_distributed`` joins them (NCCL on CUDA, gloo on the CPU). What the ``Trainer`` then does:

* ``--batch-size`` is the **global** batch. Every rank draws the same global batch (the same
  seeded permutation) and the same t, ε and augmentation for all of it (the same seeded global
  RNG), then computes the loss on its own rows only (``loss(x, y, rows=...)``); DDP averages the
  gradients. So W ranks × B/W images give the weights 1 process × B gives, to float rounding
  (``tests/test_distributed.py``), whatever W is. Two exceptions, measured by no test: dropout
  masks are drawn per rank for its rows (the same distribution, other numbers), and a plain batch
  whose labels are partly −1 averages each rank's mean CE rather than taking one mean (exact when
  every rank holds as many labelled rows, as with ``labelled_batch_size``, which is split per part).
* Rank 0 alone writes checkpoints, logs, samples and exports, and takes the run folder's lock;
  every rank reads the same ``last.pt`` to resume (on several machines ``--out`` must be a shared
  folder).
* SIGINT/SIGTERM on any rank stops every rank after the same step: the ranks agree on a stop flag
  each step (a small all-reduce on a CPU gloo group: no GPU sync), rank 0 saves, all wait for it.
* A rank that dies breaks the others' next all-reduce; ``RankLost`` says so, and torchrun ends
  the rest. Checkpoints are written atomically, so none is ever half-written.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Distributed", "init_distributed", "RankLost"]


class RankLost(RuntimeError):
    """Another rank stopped (died, or failed) while this one waited for it in a collective."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job: ``rank`` of ``world_size``, ``local_rank`` on
    its machine, ``device`` it trains on, and a CPU (gloo) group for host-side flags."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    cpu_group: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def launcher(self) -> str:
        """The torchrun command line's start that runs this job's shape (for logs and manifests)."""
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        nodes = self.world_size // per_node
        return ("torchrun " + (f"--nnodes={nodes} --rdzv-endpoint=HOST:PORT " if nodes > 1 else "")
                + f"--nproc_per_node={per_node} -m jdm")

    def rows(self, batch_size: int, labelled_batch_size: int = 0) -> Tensor:
        """This rank's rows (M,) long of a global batch of ``batch_size`` images followed by
        ``labelled_batch_size`` labelled ones: an equal contiguous share of each part, so every
        rank holds as many labelled images."""
        parts, start = [], 0
        for size in (batch_size, labelled_batch_size):
            if size % self.world_size:
                raise ValueError(f"a global batch of {size} images does not split over "
                                 f"{self.world_size} ranks: choose a multiple of {self.world_size}")
            share = size // self.world_size
            parts.append(torch.arange(start + self.rank * share, start + (self.rank + 1) * share))
            start += size
        return torch.cat(parts).to(self.device)

    def wrap(self, model: nn.Module, loss_fn, rows: Tensor) -> nn.Module:
        """``loss_fn(x, y, rows=rows)`` behind ``DistributedDataParallel`` (its forward is what
        makes the backward pass all-reduce the gradients). The model itself is not wrapped, so its
        ``state_dict`` keys and checkpoints are the single-process ones."""
        # EncoderClassifier never trains its decoder: DDP must not wait for those gradients
        unused = bool(getattr(model, "untrained_prefixes", ()))
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            _RowsLoss(model, loss_fn, rows), device_ids=ids, forward_sync_buffers=False,
            find_unused_parameters=unused)

    def agree_stop(self, signum: int | None) -> int | None:
        """The stop signal any rank got (the largest number), or None: every rank gets the same
        answer, so all stop after the same step."""
        flag = torch.tensor([signum or 0])
        self._collective(lambda: dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.cpu_group))
        return int(flag) or None

    def mean(self, values: Tensor) -> Tensor:
        """The mean over ranks of ``values`` (on the device), e.g. the logged losses."""
        values = values.clone()
        self._collective(lambda: dist.all_reduce(values))
        return values / self.world_size

    def barrier(self) -> None:
        self._collective(lambda: dist.barrier(group=self.cpu_group))

    @contextmanager
    def lost_ranks(self):
        """Turn a collective's failure (the gradients' all-reduce included) into ``RankLost``."""
        try:
            yield
        except RuntimeError as err:
            text = str(err)
            if not (isinstance(err, dist.DistError) or "gloo" in text or "NCCL" in text):
                raise  # not a communication failure: a bug of this rank's own
            raise RankLost(f"rank {self.rank} of {self.world_size}: another rank stopped while this "
                           f"one waited for it ({type(err).__name__}: {text.splitlines()[0][:300]}); "
                           "the run ends here. Its last checkpoint is the last one rank 0 saved "
                           "(written atomically); resume with the same command and --resume") from err

    def _collective(self, call) -> None:
        with self.lost_ranks():
            call()


class _RowsLoss(nn.Module):
    """``forward(x, y) = loss_fn(x, y, rows=rows)``: the module DDP wraps."""

    def __init__(self, model: nn.Module, loss_fn, rows: Tensor) -> None:
        super().__init__()
        self.model, self.loss_fn, self.rows = model, loss_fn, rows

    def forward(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        return self.loss_fn(x, y, rows=self.rows)


def init_distributed(device: torch.device) -> Distributed | None:
    """Join the ``torchrun`` job this process belongs to, or None when it runs alone.

    ``device``: the device asked for; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=10))
    # the stop flag and barriers stay on the host: a CPU group even when training with NCCL
    cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return Distributed(rank, dist.get_world_size(), local_rank, device, cpu_group)
