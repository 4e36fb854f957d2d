"""Notebook 05's two slow measurements, run once and stored for the notebook to show.

    python benchmarks/bench_joint_trio.py --json docs/joint_trio.json
    python benchmarks/bench_joint_trio.py --only alpha --json docs/joint_trio.json   # one part

``generation``: the shipped DDPM and joint model (aliases ``ddpm-fmnist`` and ``jdm-fmnist``) each
draw ``--n`` DDIM-50 samples (seed i for the chunk starting at image i, as in the notebook); FD,
precision and recall (k = 3) against as many test images in the evaluator's features, and the class
balance of the evaluator's labels; the row "real (train vs test)" is the floor at that size.

``alpha``: the tiny joint model trained ``--alpha-steps`` steps for each α from the same initial
weights; held-out L_simple (fixed t and ε) and clean test accuracy on ``--n-eval`` test images.

Notebook 05 reads the JSON (section 3 and 4) and re-runs both at this size with ``JDM_SWEEPS=1``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

import jdm
from jdm.utils import hardware_string
from jdm.data import load_tensors
from jdm.evaluator import load_evaluator
from jdm.joint import JointDiffusion
from jdm.metrics import accuracy, class_balance, frechet_distance, precision_recall
from jdm.schedule import NoiseSchedule
from jdm.unet import UNET_PRESETS, UNet

ALPHAS = [0.0, 0.1, 1.0, 10.0]


def generation(n: int, device: torch.device) -> list[dict]:
    train_x, _ = load_tensors("fashion_mnist", train=True)
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    evaluator = load_evaluator(device)
    real = evaluator.embed(test_x[:n])
    rows = []
    for name, alias in (("DDPM", "ddpm-fmnist"), ("joint", "jdm-fmnist")):
        model = jdm.load_pretrained(alias, device=device)
        start = time.perf_counter()
        samples = torch.cat([model.sample(min(250, n - i), steps=50, progress=False,
                                          generator=torch.Generator().manual_seed(i)).cpu()
                             for i in range(0, n, 250)])
        rows.append(_row(name, alias, evaluator, real, samples, time.perf_counter() - start))
    rows.append(_row("real (train vs test)", None, evaluator, real, train_x[:n], 0.0))
    return rows


def _row(name, alias, evaluator, real, images, seconds) -> dict:
    feats = evaluator.embed(images)
    balance = class_balance(evaluator.predict(images), evaluator.num_classes)
    return {"model": name, "checkpoint": alias and jdm.pretrained.resolve_name(alias),
            "fd": frechet_distance(real, feats), **precision_recall(real, feats, k=3),
            "class_balance": balance["normalized_entropy"], "seconds": round(seconds, 1)}


def alpha_sweep(steps: int, n_eval: int, device: torch.device) -> list[dict]:
    train_x, train_y = load_tensors("fashion_mnist", train=True)
    test_x, test_y = load_tensors("fashion_mnist", train=False)
    config = jdm.TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=steps // 10,
                             ema_decay=0.99, log_every=50, checkpoint_every=0, seed=0)
    rows = []
    for alpha in ALPHAS:
        torch.manual_seed(0)
        model = JointDiffusion(UNet(UNET_PRESETS["tiny"]), NoiseSchedule(1000), alpha=alpha)
        start = time.perf_counter()
        trainer = jdm.Trainer(model, train_x, train_y, config, device=device, progress=False)
        trainer.fit()
        ema = trainer.ema_model.module.eval()
        with torch.no_grad():
            torch.manual_seed(123)
            loss = ema.diffusion_loss(test_x[:n_eval].to(device)).item()
            logits = torch.cat([ema.classify(test_x[i:min(i + 500, n_eval)].to(device)).cpu()
                                for i in range(0, n_eval, 500)])
        rows.append({"alpha": alpha, "held_out_l_simple": loss,
                     "test_accuracy": accuracy(logits, test_y[:n_eval]),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["generation", "alpha"], default=None,
                        help="run one part and keep the other from --json")
    parser.add_argument("--n", type=int, default=500, help="generation: samples per model")
    parser.add_argument("--alpha-steps", type=int, default=250, help="alpha: training steps each")
    parser.add_argument("--n-eval", type=int, default=2000, help="alpha: test images measured")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    device = jdm.get_device(args.device)
    report = json.loads(args.json.read_text()) if args.only and args.json.exists() else {}
    command = "python benchmarks/bench_joint_trio.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.only in (None, "generation"):
        start = time.perf_counter()
        report["generation"] = generation(args.n, device)
        report["generation_settings"] = {
            "n": args.n, "sampler": "DDIM-50, eta 0", "command": command,
            "hardware": hardware_string(device), "seconds": round(time.perf_counter() - start)}
        print(json.dumps(report["generation"], indent=1), flush=True)
    if args.only in (None, "alpha"):
        start = time.perf_counter()
        report["alpha"] = alpha_sweep(args.alpha_steps, args.n_eval, device)
        report["alpha_settings"] = {
            "steps": args.alpha_steps, "n_eval": args.n_eval, "unet": "tiny", "command": command,
            "hardware": hardware_string(device), "seconds": round(time.perf_counter() - start)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
