"""Throughput of jdm's UNet vs denoising-diffusion-pytorch's Unet at a matched parameter count.

Two measurements, each in images per second, for both networks side by side:

* train  — one optimisation step of the ε-prediction loss L_simple = ||ε − ε̂(x_t, t)||² (DDPM
  Algorithm 1): forward, backward, AdamW step;
* sample — a DDIM run of ``--sample-steps`` UNet evaluations without gradients
  (``jdm.sampling.sample_loop`` drives both networks, so only the UNet differs).

Trials are interleaved (jdm, ddp, ddp, jdm, ...) after a warm-up, and medians are reported, so
a machine whose load drifts penalises both alike.

    python benchmarks/bench_unet.py                       # CPU here, CUDA when available
    python benchmarks/bench_unet.py --device cuda --batch 256 --trials 10

Needs the ``bench`` extra: ``pip install denoising-diffusion-pytorch``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from statistics import median
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jdm.sampling import sample_loop
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, UNet, count_parameters
from jdm.utils import get_device, seed_everything

try:
    from denoising_diffusion_pytorch import Unet as DDPUnet
except ImportError as err:  # pragma: no cover - optional dependency
    raise SystemExit("this benchmark needs `pip install denoising-diffusion-pytorch`") from err

JDM_PRESET = "fmnist-small"
# denoising-diffusion-pytorch's own layout (doubling widths, linear attention at the outer levels,
# full attention innermost) with `dim` chosen so its size matches "fmnist-small" within ±10 %.
DDP_CONFIG = dict(dim=24, dim_mults=(1, 2, 4), channels=1, dropout=0.1)


def build_models(image_size: int) -> dict[str, tuple[nn.Module, str]]:
    """{name: (network, description)} for jdm and ddp at ``image_size`` (1 channel)."""
    levels = len(UNET_PRESETS[JDM_PRESET].channel_mults)
    cfg = replace(UNET_PRESETS[JDM_PRESET], image_size=image_size,
                  attention_resolutions=(image_size // 2 ** (levels - 1),))
    return {
        "jdm": (UNet(cfg), f"jdm.unet.UNet({JDM_PRESET!r}) {asdict(cfg)}"),
        "ddp": (DDPUnet(**DDP_CONFIG), f"denoising_diffusion_pytorch.Unet(**{DDP_CONFIG})"),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_train_step(model: nn.Module, schedule: NoiseSchedule, x0: Tensor) -> Callable[[], None]:
    """One AdamW step on L_simple for a fixed batch x0 (N, 1, H, W) (fresh t and ε each call)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        t = schedule.sample_timesteps(x0.shape[0]).to(x0.device)
        noise = torch.randn_like(x0)
        loss = F.mse_loss(model(schedule.q_sample(x0, t, noise), t), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_sampler(model: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...],
                 steps: int, device: torch.device) -> Callable[[], None]:
    """A DDIM run of ``steps`` UNet evaluations for a batch of ``shape``."""
    def run() -> None:
        with torch.no_grad():
            sample_loop(model, schedule, shape, method="ddim", steps=steps, device=device,
                        progress=False)
    return run


def timed(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Seconds for ``repeats`` calls of ``fn``."""
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--trials", type=int, default=5, help="timed trials per model (default 5)")
    p.add_argument("--device", default=None, help="cpu / cuda / mps (default: best available)")
    p.add_argument("--image-size", type=int, default=28,
                   help="side length; must be divisible by 4 (default 28, Fashion-MNIST)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's default; 1 is steadier on a busy machine)")
    p.add_argument("--train-steps", type=int, default=2, help="optimiser steps per trial (default 2)")
    p.add_argument("--sample-steps", type=int, default=5,
                   help="DDIM steps = UNet evaluations per sampling trial (default 5)")
    args = p.parse_args(argv)
    if args.image_size % 4:
        p.error(f"--image-size must be divisible by 4 (two halvings), got {args.image_size}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    seed_everything(0)
    models = build_models(args.image_size)
    schedule = NoiseSchedule(1000).to(device)
    shape = (args.batch, 1, args.image_size, args.image_size)
    x0 = torch.rand(shape, device=device) * 2 - 1

    print(f"torch {torch.__version__} | device {device} | threads {torch.get_num_threads()} | "
          f"batch {args.batch} | image {args.image_size}×{args.image_size}×1 | "
          f"{args.trials} trials × {args.train_steps} train steps, DDIM {args.sample_steps} steps")
    params = {}
    for name, (model, desc) in models.items():
        model.to(device)
        params[name] = count_parameters(model)
        print(f"  {name}: {params[name]:,} parameters — {desc}")
    mismatch = params["ddp"] / params["jdm"] - 1
    print(f"  parameter mismatch ddp vs jdm: {mismatch:+.1%}")
    if abs(mismatch) > 0.10:
        raise SystemExit("the two networks are not matched within ±10 %: adjust DDP_CONFIG")

    train = {n: make_train_step(m, schedule, x0) for n, (m, _) in models.items()}
    sample = {n: make_sampler(m, schedule, shape, args.sample_steps, device)
              for n, (m, _) in models.items()}
    rates: dict[str, dict[str, list[float]]] = {n: {"train": [], "sample": []} for n in models}

    for name, (model, _) in models.items():  # warm-up: allocator, oneDNN/cuDNN kernel choice
        model.train(); train[name](); train[name]()
        model.eval(); sample[name]()
    for trial in range(args.trials):
        order = list(models) if trial % 2 == 0 else list(models)[::-1]
        for name in order:
            models[name][0].train()
            seconds = timed(train[name], args.train_steps, device)
            rates[name]["train"].append(args.batch * args.train_steps / seconds)
        for name in order:
            models[name][0].eval()
            seconds = timed(sample[name], 1, device)
            rates[name]["sample"].append(args.batch / seconds)

    result = {n: {k: median(v) for k, v in r.items()} for n, r in rates.items()}
    print(f"\n{'':5s} {'train img/s (median [min, max])':>34s}   {'DDIM sample img/s':>28s}")
    for name in models:
        tr, sa = rates[name]["train"], rates[name]["sample"]
        print(f"{name:5s} {median(tr):10.1f} [{min(tr):7.1f}, {max(tr):7.1f}]"
              f"        {median(sa):8.1f} [{min(sa):7.1f}, {max(sa):7.1f}]")
    for kind in ("train", "sample"):
        print(f"ratio jdm/ddp, {kind}: {result['jdm'][kind] / result['ddp'][kind]:.2f}")
    return result


if __name__ == "__main__":
    main()
