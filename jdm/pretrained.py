"""Shipped checkpoints: list them, load them, and export a training run into one.

A shipped checkpoint is two files in ``data/checkpoints/``:

* ``NAME.pt`` — plain data for ``torch.load(weights_only=True)``: ``{"format": "jdm-weights",
  "spec": model.spec(), "state_dict": EMA weights}``, floating tensors in half precision (enough
  for inference, half the size);
* ``NAME.json`` — the manifest: the spec, the training config and steps, wall time, hardware, the
  exact command that trained it, the sha256 of ``NAME.pt`` and the metrics measured right after
  training.

    jdm.list_pretrained()                        # ['ddpm-fmnist-small', ...]
    model = jdm.load_pretrained("ddpm-fmnist-small")
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from .data import data_dir
from .diffusion import build_model
from .train import read_checkpoint
from .utils import get_device

__all__ = ["checkpoint_dir", "list_pretrained", "load_pretrained", "read_manifest", "export_pretrained"]

WEIGHTS_FORMAT = "jdm-weights"


def checkpoint_dir() -> Path:
    """``data/checkpoints`` inside the data folder (``$JDM_DATA`` or the checkout's ``data/``)."""
    return data_dir() / "checkpoints"


def list_pretrained() -> list[str]:
    """Names of the shipped checkpoints (those with both ``NAME.pt`` and ``NAME.json``)."""
    folder = checkpoint_dir()
    return sorted(p.stem for p in folder.glob("*.json") if p.with_suffix(".pt").is_file())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(name: str) -> dict:
    """The JSON manifest of shipped checkpoint ``name``."""
    path = checkpoint_dir() / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped checkpoint named {name!r} in {checkpoint_dir()}; "
            f"available: {list_pretrained() or 'none'}"
        )
    return json.loads(path.read_text())


def load_pretrained(name: str, device: torch.device | str | None = None) -> nn.Module:
    """Load shipped checkpoint ``name`` as a model in eval mode, in float32, on ``device``.

    The default device is the CPU (pass ``device=jdm.get_device()`` for the best available). The
    weights file's sha256 must match the manifest: a changed or truncated file is an error.
    """
    manifest = read_manifest(name)
    path = checkpoint_dir() / f"{name}.pt"
    if sha256(path) != manifest["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in {name}.json: the file is corrupt or "
                         f"was replaced; restore it with `git checkout -- {path}`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a jdm weights file (format {blob.get('format')!r})")
    model = build_model(blob["spec"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in blob["state_dict"].items()})
    device = get_device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval()


def export_pretrained(run_checkpoint: str | Path, name: str, metrics: dict, command: str,
                      hardware: str, folder: str | Path | None = None) -> Path:
    """Turn a training checkpoint (``last.pt``) into a shipped ``NAME.pt`` + ``NAME.json``.

    Keeps only the EMA weights, in half precision. ``metrics`` are the numbers measured on the
    model right after training; ``command`` and ``hardware`` say how it was trained.
    Returns the path of ``NAME.pt``.
    """
    ckpt = read_checkpoint(run_checkpoint)
    folder = Path(folder) if folder is not None else checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # AveragedModel keys look like "module.unet…" plus "n_averaged": keep the module's own weights
    state = {k.removeprefix("module."): v.half() if v.is_floating_point() else v
             for k, v in ckpt["ema"].items() if k.startswith("module.")}
    weights = folder / f"{name}.pt"
    torch.save({"format": WEIGHTS_FORMAT, "spec": ckpt["spec"], "state_dict": state}, weights)
    manifest = {
        "name": name,
        "spec": ckpt["spec"],
        "train_config": ckpt["train_config"],
        "steps": ckpt["step"],
        "train_seconds": round(float(ckpt.get("train_seconds", 0.0)), 1),
        "hardware": hardware,
        "command": command,
        "sha256": sha256(weights),
        "size_bytes": weights.stat().st_size,
        "metrics": metrics,
    }
    (folder / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return weights
