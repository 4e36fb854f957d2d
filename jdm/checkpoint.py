"""The training checkpoint: its format, writing it atomically, and reading it back checked.

    state = {...}                                    # what Trainer.checkpoint() returns
    write_checkpoint("runs/x/last.pt", state)        # adds the checksum; one os.replace
    ckpt = read_checkpoint("runs/x/last.pt")         # checksum, finiteness and parts checked

A checkpoint is plain data (``torch.load(path, weights_only=True)`` reads it):
``{"format": "jdm-checkpoint", "version": 1, "spec", "train_config", "step", "model", "ema",
"optimizer", "rng", "history", "train_seconds", "data", "probe_loss", "checksum"}``. The
``checksum`` is the sha256 of every tensor and value (``digest``): a file whose contents changed
since it was written, that holds NaN/inf, or that lacks a part is refused with a message naming
it. Loading a model from a checkpoint is ``jdm.pretrained.load_checkpoint_model``; the shipped
weights files (``jdm-weights``) are ``jdm.pretrained``'s too.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import warnings
import zlib
from pathlib import Path

import torch
from torch import Tensor

from .outputs import write_atomically

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "WEIGHTS_FORMAT", "read_checkpoint",
           "write_checkpoint", "load_file", "check_checkpoint", "check_resumable", "digest",
           "first_non_finite", "plain", "json_plain", "rng_state", "restore_rng",
           "clean_stale_tmp"]

CHECKPOINT_FORMAT = "jdm-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FORMAT = "jdm-weights"  # a shipped weights file (jdm.pretrained): EMA weights only

# what every training checkpoint holds (``Trainer.checkpoint``), with the types it needs
_REQUIRED = {"spec": dict, "train_config": dict, "step": int, "model": dict, "ema": dict,
             "optimizer": dict, "rng": dict}


def digest(value, h=None) -> str:
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
            digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}".encode())
        for item in value:
            digest(item, h)
    else:
        h.update(f"V{value!r}".encode())
    return h.hexdigest()


def first_non_finite(value, where: str = "") -> str | None:
    """The key path of the first floating tensor holding NaN/inf in ``value``, or None."""
    if isinstance(value, Tensor):
        return where if value.is_floating_point() and not torch.isfinite(value).all() else None
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, (list, tuple)) else ())
    for key, item in items:
        found = first_non_finite(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def plain(value, where: str):
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
        return [plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v, where) for k, v in value.items()}
    try:  # numpy scalars and the like
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: cannot store {type(value).__name__} in the history; "
                         "return numbers, strings, lists or dicts") from None


def json_plain(spec: dict) -> dict:
    """Normalise a spec as a JSON round trip would (tuples → lists) so specs compare equal."""
    return json.loads(json.dumps(spec))


def rng_state() -> dict:
    """The global RNG state (CPU, and every CUDA device where there is one) for a checkpoint."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    """Set the global RNG state ``rng_state`` saved (the CUDA part only where there is CUDA)."""
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` plus its ``checksum`` to ``path`` atomically: ``torch.save`` into a
    temporary file in the same folder, then one ``os.replace``, so a crash mid-save leaves the
    previous checkpoint intact (``clean_stale_tmp`` removes the temporary file). A full disk is
    an ``OSError``."""
    path = Path(path)
    state = {**state, "checksum": digest(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: torch.save(state, tmp))


def clean_stale_tmp(folder: Path) -> list[Path]:
    """Remove the temporary files (``.NAME.PID.HEX.tmp``) a killed ``write_checkpoint`` left in
    ``folder``; call it only while holding the folder's ``RunLock``. Returns what was removed."""
    stale = sorted(folder.glob(".*.pt.*.tmp*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def read_checkpoint(path: str | Path) -> dict:
    """Read a jdm checkpoint onto the CPU with ``torch.load(weights_only=True)`` and check it.

    A checkpoint must match its ``checksum``, and every floating tensor in it must be finite.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a jdm checkpoint, is truncated/corrupt (checksum), holds
            NaN/inf, is a shipped weights file (load those with ``jdm.load_pretrained``), or is
            from a newer jdm. The message names the file.
    """
    path = Path(path)
    return check_checkpoint(load_file(path), path)


def load_file(path: Path):
    """``torch.load(path, weights_only=True)`` onto the CPU (a ``.gz`` file gunzipped in memory
    first: shipped weights may be), with a clear error for a missing, truncated or foreign file."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a checkpoint file; pass the file inside it "
                         f"(e.g. {path / 'last.pt'})")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (python -m jdm train "
                                f"--out DIR writes DIR/last.pt) or pass the path of an existing one")
    source = path
    if path.name.endswith(".gz"):
        try:
            source = io.BytesIO(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; EOF: truncated
            raise ValueError(f"{path} is not a readable gzip file ({type(err).__name__}: {err}); "
                             f"restore it (a shipped file: `git checkout -- {path}`) or export it "
                             "again") from None
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, pickled code: all mean "unusable"
        raise ValueError(f"not a jdm checkpoint or corrupt: {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); "
                         "delete it or pass another") from err


def check_checkpoint(ckpt, path: Path) -> dict:
    """``ckpt`` if it is a readable, intact jdm training checkpoint (see ``read_checkpoint``)."""
    if isinstance(ckpt, dict) and ckpt.get("format") == WEIGHTS_FORMAT:
        raise ValueError(f"{path} is a shipped weights file (format {WEIGHTS_FORMAT!r}: EMA "
                         "weights only, no optimiser state), not a training checkpoint: it cannot "
                         "be resumed; sample from it with `python -m jdm sample --checkpoint "
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


def _verify_checkpoint(ckpt: dict, path: Path) -> None:
    """Refuse a checkpoint that holds NaN/inf, lacks its checksum or a part, or whose contents
    changed since it was saved. Every checkpoint this jdm writes has a checksum: one without is
    damaged or hand-made, and loading it unchecked could sample from altered weights."""
    bad = first_non_finite({k: ckpt.get(k) for k in ("model", "ema", "optimizer")})
    if bad is not None:
        raise ValueError(f"checkpoint {path} holds NaN/inf values (in {bad}): the run had diverged "
                         "or the file is damaged; use an earlier checkpoint or train again")
    stored = ckpt.get("checksum")
    if not isinstance(stored, str):
        raise ValueError(f"checkpoint {path} has no checksum, so its integrity cannot be checked "
                         "(damaged, edited, or not written by jdm's Trainer); use an earlier "
                         "checkpoint or train again")
    if digest({k: v for k, v in ckpt.items() if k != "checksum"}) != stored:
        raise ValueError(f"checkpoint {path} is corrupt: its contents do not match the checksum "
                         "stored when it was saved; use an earlier checkpoint or train again")
    missing = [k for k, kind in _REQUIRED.items() if not isinstance(ckpt.get(k), kind)
               or isinstance(ckpt.get(k), bool)]
    if missing or "torch" not in ckpt["rng"]:
        raise ValueError(f"checkpoint {path} is incomplete: {', '.join(missing) or 'rng'} missing "
                         "or of the wrong type; use an earlier checkpoint or train again")


def check_resumable(ckpt: dict, path: Path, spec: dict, data: dict, trajectory: dict) -> None:
    """Refuse to resume ``ckpt`` with a model of another ``spec`` (the model's, JSON-plain) or on
    other ``data`` (``{"images": N, "sha256": ...}``): either would silently train another run.
    Warn if a ``trajectory`` setting (name → value: what changes the batches or the optimiser's
    path) differs from the checkpoint's ``train_config``: the run stays valid but is another one."""
    if ckpt.get("spec") != spec:
        raise ValueError(f"checkpoint {path} was saved from a different model:\n"
                         f"  checkpoint spec: {ckpt.get('spec')}\n  this model's spec: {spec}\n"
                         "build the model with the checkpoint's settings, or use another out_dir")
    saved = ckpt.get("data")
    if saved is not None and saved != data:
        raise ValueError(f"checkpoint {path} was trained on other data ({saved['images']} "
                         f"images, sha256 {saved['sha256'][:12]}…) than this run "
                         f"({data['images']} images, sha256 {data['sha256'][:12]}…): resume with "
                         "the same data (the same --dataset and --limit), or use another out_dir")
    config = ckpt.get("train_config", {})
    changed = [f"{k}: {config[k]!r} -> {v!r}" for k, v in trajectory.items()
               if k in config and config[k] != v]
    if changed:
        warnings.warn(f"resuming {path} with changed settings ({', '.join(changed)}): the run "
                      "will not match an uninterrupted one", stacklevel=3)
