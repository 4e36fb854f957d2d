"""Shipped checkpoints: list them, load them, and export a training run into one.

A shipped checkpoint is two files in ``data/checkpoints/``:

* ``NAME.pt`` — plain data for ``torch.load(weights_only=True)``: ``{"format": "jdm-weights",
  "spec": model.spec(), "state_dict": EMA weights}``, floating tensors in half precision (enough
  for inference, half the size); or the same bytes gzipped as ``NAME.pt.gz`` (what
  ``export_pretrained`` writes above ``COMPRESS_ABOVE``), never both;
* ``NAME.json`` — the manifest: the spec, the training config and steps, wall time, hardware, the
  exact command that trained it, the sha256 of the weights file as stored (``.pt`` or ``.pt.gz``),
  the metrics measured right after training and, optionally, ``"defaults"``: the settings the
  model was tuned with (``DEFAULT_KEYS``), which loading attaches to the model as
  ``model.defaults``.

    jdm.list_pretrained()                        # ['ddpm-fmnist-small', ...]
    model = jdm.load_pretrained("ddpm-fmnist-small")
    model = jdm.load_pretrained("ddpm-fmnist")   # an alias (aliases.json): the best DDPM shipped

``data/checkpoints/aliases.json`` maps the short stable names ``jdm-fmnist``, ``ddpm-fmnist`` and
``classifier-fmnist`` to the best shipped checkpoint of each kind (``list_aliases()``). Exporting
never overwrites a shipped checkpoint without ``force`` and never with another kind of model.
"""
from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

import torch
from torch import nn

from .checkpoint import WEIGHTS_FORMAT, check_checkpoint, json_plain, load_file, read_checkpoint
from .data import data_dir, sha256
from .diffusion import MODEL_KINDS, build_model
from .outputs import write_atomically
from .utils import get_device

__all__ = ["checkpoint_dir", "list_pretrained", "list_aliases", "resolve_name", "load_pretrained",
           "load_checkpoint_model", "read_manifest", "export_pretrained", "check_export_name",
           "check_defaults", "model_from_weights", "verify_weights", "manifest_path",
           "DEFAULT_KEYS", "COMPRESS_ABOVE"]

ALIASES_FILE = "aliases.json"
# a manifest's "defaults": key → what its value must be (checked by check_defaults)
DEFAULT_KEYS = {
    "auto_t_star": "[base, per_nat, most]: the rule of jdm.counterfactual.auto_t_star, three "
                   "numbers >= 0 (base and most fractions of T, at most 1)",
    "counterfactual_scales": "{guidance kind: scale}: counterfactuals' guidance scale (a number "
                             ">= 0) per kind (representation, representation-x0, classifier)",
}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
WEIGHTS_SUFFIXES = (".pt", ".pt.gz")  # a shipped weights file, plain or gzipped
# export gzips half-precision weights bigger than this: a file over 16 MiB does not come back from
# the GPU machine (tools/gpu_run.py), and the 1 MiB margin keeps a model near the limit shippable
COMPRESS_ABOVE = 15 * 2**20


def checkpoint_dir() -> Path:
    """``data/checkpoints`` inside the data folder (``$JDM_DATA`` or the checkout's ``data/``)."""
    return data_dir() / "checkpoints"


def list_pretrained() -> list[str]:
    """Names of the shipped checkpoints (those with ``NAME.json`` and ``NAME.pt`` or
    ``NAME.pt.gz``); the short stable names that point at them are ``list_aliases()``."""
    folder = checkpoint_dir()
    return sorted(p.stem for p in folder.glob("*.json") if _weights_files(folder, p.stem))


def _weights_files(folder: Path, name: str) -> list[Path]:
    """The weights files of ``name`` in ``folder``: ``NAME.pt`` and/or ``NAME.pt.gz`` (a
    shipped checkpoint has exactly one; ``verify_weights`` refuses both)."""
    return [folder / f"{name}{suffix}" for suffix in WEIGHTS_SUFFIXES
            if (folder / f"{name}{suffix}").exists()]


def manifest_path(weights: str | Path) -> Path:
    """The manifest beside a weights file: ``NAME.json`` for ``NAME.pt`` and ``NAME.pt.gz``."""
    weights = Path(weights)
    stem = next((weights.name.removesuffix(s) for s in reversed(WEIGHTS_SUFFIXES)
                 if weights.name.endswith(s)), weights.stem)
    return weights.with_name(f"{stem}.json")


def list_aliases() -> dict[str, str]:
    """Short stable names → shipped checkpoint names, from ``data/checkpoints/aliases.json``
    (e.g. ``{"jdm-fmnist": "joint-fmnist-small"}``): code that loads ``"jdm-fmnist"`` keeps
    working when a better joint model replaces the small one. Empty without the file."""
    path = checkpoint_dir() / ALIASES_FILE
    if not path.is_file():
        return {}
    table = _read_json(path)
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in table.items()):
        raise ValueError(f"{path} must be a JSON object of alias → checkpoint name")
    return table


def resolve_name(name: str) -> str:
    """The shipped checkpoint ``name`` stands for: itself, or the target of an alias.

    Raises:
        FileNotFoundError: neither a shipped checkpoint nor an alias, or an alias whose target is
            not (yet) in ``data/checkpoints``; the message lists what is available.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a checkpoint name must be a non-empty string, got {name!r}")
    shipped, aliases = list_pretrained(), list_aliases()
    if name in shipped:
        return name
    if name in aliases:
        if aliases[name] not in shipped:
            raise FileNotFoundError(f"alias {name!r} points to {aliases[name]!r}, which is not in "
                                    f"{checkpoint_dir()} (not shipped yet?); available: "
                                    f"{shipped or 'none'}")
        return aliases[name]
    raise FileNotFoundError(f"no shipped checkpoint named {name!r} in {checkpoint_dir()}; "
                            f"available: {shipped or 'none'}, aliases: {sorted(aliases) or 'none'}"
                            + ("" if shipped else NO_CHECKPOINTS_HINT))


NO_CHECKPOINTS_HINT = (
    ". No checkpoints at all: a plain `pip install .` installs the package without the checkout's "
    "data/ (Fashion-MNIST and data/checkpoints). Set JDM_DATA to a copy of that folder, or install "
    "from a checkout with `pip install -e .` (notebooks/README.md, 'Installing for a class')")


def _existing_kind(weights: list[Path], manifest: Path) -> str:
    """The model kind of an existing export (``weights``: its weights files), or a description
    of what else is there (files that are not a complete weights + manifest pair are never
    replaced)."""
    if not (any(p.is_file() for p in weights) and manifest.is_file()):
        return "incomplete (not a weights file + manifest pair)"
    try:
        spec = _manifest_at(manifest)["spec"]
    except ValueError:
        return "unreadable manifest"
    return spec.get("kind", "unknown") if isinstance(spec, dict) else "unknown"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, bad UTF-8
        raise ValueError(f"{path} is not valid JSON ({err}); restore it with "
                         f"`git checkout -- {path}`") from None


def read_manifest(name: str) -> dict:
    """The JSON manifest of shipped checkpoint (or alias) ``name``.

    Raises:
        FileNotFoundError: see ``resolve_name``.
        ValueError: the manifest is not valid JSON, not an object, or lacks ``sha256``/``spec``.
    """
    return _manifest_at(checkpoint_dir() / f"{resolve_name(name)}.json")


def _manifest_at(path: Path) -> dict:
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object (the manifest), got a "
                         f"{type(manifest).__name__}; restore it with `git checkout -- {path}`")
    missing = [key for key in ("sha256", "spec") if key not in manifest]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a complete manifest; restore it "
                         f"with `git checkout -- {path}` or export the checkpoint again")
    check_defaults(manifest.get("defaults", {}), path)
    return manifest


def check_defaults(defaults, where: str | Path = "defaults") -> dict:
    """A checkpoint's tuned settings (a manifest's ``"defaults"``), checked: a JSON object whose
    keys are among ``DEFAULT_KEYS`` and whose values have the types listed there. Returns them
    as a new plain dict (``auto_t_star`` a tuple of three floats, each scale a float).

    Raises:
        ValueError: not an object, an unknown key, or a value of the wrong type or range; the
            message names ``where`` (the manifest) and the key.
    """
    from .sampling import GUIDANCE_KINDS

    def bad(key: str, value) -> ValueError:
        return ValueError(f'{where}: "defaults"["{key}"] must be {DEFAULT_KEYS[key]}; got '
                          f"{value!r}")

    def number(value) -> bool:  # a finite number >= 0 (JSON has no NaN, but Python callers may)
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and 0 <= value < float("inf"))

    if not isinstance(defaults, dict):
        raise ValueError(f'{where}: "defaults" must be a JSON object (key → setting), got '
                         f"{type(defaults).__name__} {defaults!r}")
    unknown = sorted(str(k) for k in defaults if k not in DEFAULT_KEYS)
    if unknown:
        raise ValueError(f'{where}: unknown key(s) {", ".join(unknown)} in "defaults"; known: '
                         f"{', '.join(DEFAULT_KEYS)}")
    checked = {}
    if "auto_t_star" in defaults:
        rule = defaults["auto_t_star"]
        if not (isinstance(rule, (list, tuple)) and len(rule) == 3 and all(map(number, rule))
                and rule[0] <= 1 and rule[2] <= 1):
            raise bad("auto_t_star", rule)
        checked["auto_t_star"] = tuple(float(v) for v in rule)
    if "counterfactual_scales" in defaults:
        scales = defaults["counterfactual_scales"]
        if not (isinstance(scales, dict) and all(k in GUIDANCE_KINDS and number(v)
                                                 for k, v in scales.items())):
            raise bad("counterfactual_scales", scales)
        checked["counterfactual_scales"] = {k: float(v) for k, v in scales.items()}
    return checked


def verify_weights(path: Path, blob=None) -> dict:
    """The one check of a shipped weights file ``NAME.pt`` or ``NAME.pt.gz`` against its
    manifest ``NAME.json`` beside it, for every way of loading one (``load_pretrained``,
    ``sample --checkpoint``): the manifest must exist and no second weights file of that name
    (``.pt`` beside ``.pt.gz``), its sha256 match the file's bytes as stored (checked before the
    file is unpacked or unpickled when ``blob`` is None), the file (decompressed) load with
    ``weights_only=True``, and its spec equal the manifest's. Returns the loaded file (``blob`` if
    given).

    Raises:
        ValueError: no manifest, two weights files, another sha256, an unreadable file, or specs
            that disagree; the message names the file and how to restore it.
    """
    manifest_file = manifest_path(path)
    if not manifest_file.is_file():
        raise ValueError(f"{path} is a jdm weights file without its manifest {manifest_file.name} "
                         "beside it, so its sha256 cannot be checked; restore both files (`git "
                         "checkout -- data/checkpoints`) or export the run again")
    both = _weights_files(path.parent, manifest_file.stem)
    if len(both) > 1:
        raise ValueError(f"{' and '.join(p.name for p in both)} are both in {path.parent}: one "
                         f"manifest ({manifest_file.name}) vouches for one weights file; delete the "
                         "one whose sha256 it does not hold")
    manifest = _manifest_at(manifest_file)
    if sha256(path) != manifest["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in {manifest_file.name}: the file is "
                         f"corrupt or was replaced; restore it with `git checkout -- {path}`")
    blob = load_file(path) if blob is None else blob
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a jdm weights file (no format={WEIGHTS_FORMAT!r} entry)")
    if json_plain(blob.get("spec")) != json_plain(manifest["spec"]):
        raise ValueError(f"{manifest_file.name} and {path.name} disagree on the model (manifest "
                         f"spec {manifest['spec']!r}, weights spec {blob.get('spec')!r}): one of "
                         f"them was edited or replaced; restore both with `git checkout -- "
                         f"{path.parent}`")
    return blob


def untrained_prefixes(spec: dict) -> tuple[str, ...]:
    """state_dict prefixes of what a model of this spec never trains (not shipped), e.g. the
    classifier baseline's decoder; () for the other kinds."""
    return getattr(MODEL_KINDS.get(spec.get("kind")), "untrained_prefixes", ())


def model_from_weights(blob: dict, path: Path, device: torch.device | str | None = None) -> nn.Module:
    """The model in a loaded ``jdm-weights`` file, in float32 and eval mode, on ``device`` (None:
    the CPU). Refuses weights that hold NaN/inf (naming ``path``)."""
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT or not isinstance(state, dict) or "spec" not in blob:
        raise ValueError(f"{path} is not a jdm weights file (format {blob.get('format')!r})")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is damaged: its state_dict holds values that are not tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path} holds NaN/inf weights ({bad[0]}, …): the file is damaged")
    model = build_model(blob["spec"])
    # a part the model never trains (untrained_prefixes) may be left out of the file: it keeps the
    # weights the model was built with; every other key must be there
    missing, unexpected = model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    untrained = untrained_prefixes(blob["spec"])
    missing = [k for k in missing if not k.startswith(untrained)]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its spec: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}; the file is damaged or from another jdm")
    device = get_device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval()


def load_pretrained(name: str, device: torch.device | str | None = None) -> nn.Module:
    """Load shipped checkpoint (or alias, see ``list_aliases``) ``name`` as a model in eval
    mode, in float32, on ``device``.

    The default device is the CPU (pass ``device=jdm.get_device()`` for the best available). The
    weights file's sha256 must match the manifest: a changed or truncated file is an error.
    """
    name = resolve_name(name)
    return _load_shipped(_weights_files(checkpoint_dir(), name)[0], device)


def _load_shipped(path: Path, device, blob: dict | None = None) -> nn.Module:
    """The model in shipped weights file ``path`` (``blob``: the file, if already loaded), checked
    against its manifest, with the manifest's ``"defaults"`` as ``model.defaults``."""
    model = model_from_weights(verify_weights(path, blob), path, device)
    manifest_file = manifest_path(path)
    model.defaults = check_defaults(_manifest_at(manifest_file).get("defaults", {}), manifest_file)
    return model


def load_checkpoint_model(path: str | Path, ema: bool = True,
                          device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the model saved in a checkpoint (``build_model(ckpt["spec"])``) in eval mode.

    Args:
        path: a checkpoint written by ``Trainer`` (e.g. ``runs/x/last.pt``; ``model.defaults`` is
            then ``{}``), or a shipped weights file (``data/checkpoints/NAME.pt`` or
            ``NAME.pt.gz``), which holds EMA weights and gets its manifest's ``"defaults"`` as
            ``load_pretrained`` does.
        ema: load the EMA weights (what to sample from) instead of the raw ones.
        device: where to put the model (default: the CPU).

    Raises:
        FileNotFoundError / ValueError: as ``jdm.checkpoint.read_checkpoint``; ``ema=False`` on a
            weights file.
    """
    path = Path(path)
    # only shipped weights are gzipped: those are checked against their manifest before unpacking
    gzipped = path.name.endswith(".gz") and path.is_file()
    blob = None if gzipped else load_file(path)
    if gzipped or (isinstance(blob, dict) and blob.get("format") == WEIGHTS_FORMAT):
        if not ema:
            raise ValueError(f"{path} is a shipped weights file: it holds only the EMA weights, "
                             "so there are no raw ones to load (drop --raw / ema=False)")
        return _load_shipped(path, device, blob)
    ckpt = check_checkpoint(blob, path)
    model = build_model(ckpt["spec"])
    if ema:
        if "ema" not in ckpt:
            raise ValueError(f"{path} has no EMA weights; load it with ema=False")
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k != "n_averaged"}
    else:
        state = ckpt["model"]
    model.load_state_dict(state)
    model.defaults = {}  # a run's own checkpoint has no tuned settings
    return model.to(device if device is not None else "cpu").eval()


def check_export_name(name: str, kind: str, force: bool = False,
                      folder: str | Path | None = None) -> Path:
    """The folder ``export_pretrained`` would write ``name`` into (``NAME.pt`` or
    ``NAME.pt.gz``, and ``NAME.json``), if it may.

    Call it before training, so a run is never refused only at its end.

    Raises:
        ValueError: ``name`` is not a plain name (letters, digits, ``.``, ``_``, ``-``; no path),
            is an alias, or is an existing checkpoint (``NAME.pt`` or ``NAME.pt.gz``) and
            ``force`` is False, or is an existing checkpoint of another kind than ``kind`` (never
            replaced, even with ``force``).
    """
    if (not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name)
            or name.endswith((".pt", ".gz"))):
        raise ValueError(f"export name {name!r} must be a plain name such as 'joint-fmnist-large' "
                         "(letters, digits, '.', '_', '-'; no folders, no .pt or .pt.gz)")
    folder = Path(folder) if folder is not None else checkpoint_dir()
    aliases = list_aliases() if folder == checkpoint_dir() else {}
    if name in aliases:
        raise ValueError(f"{name!r} is an alias of {aliases[name]!r}; export under a real name "
                         "and point the alias at it in aliases.json")
    weights, manifest = _weights_files(folder, name), folder / f"{name}.json"
    if manifest.name == ALIASES_FILE:
        raise ValueError(f"export name {name!r} would write {manifest}, the alias table "
                         "(aliases.json), which an export never replaces: choose another name")
    if weights or manifest.exists():
        old, there = _existing_kind(weights, manifest), (weights or [manifest])[0]
        if old != kind:
            raise ValueError(f"{there} is a shipped {old!r} checkpoint; a {kind!r} model "
                             f"never replaces it (nor a file that is not a checkpoint, e.g. "
                             f"{ALIASES_FILE}): export under another name")
        if not force:
            raise ValueError(f"{there} already exists (a shipped {kind!r} checkpoint); pass "
                             "--force (force=True) to replace it, or export under another name")
    from .outputs import check_writable

    check_writable(folder, "--export", need_bytes=16 << 20)  # before training, not after it
    return folder


def export_pretrained(run_checkpoint: str | Path, name: str, metrics: dict, command: str,
                      hardware: str, folder: str | Path | None = None,
                      force: bool = False, defaults: dict | None = None,
                      compress: bool | None = None) -> Path:
    """Turn a training checkpoint (``last.pt``) into a shipped ``NAME.pt`` (or ``NAME.pt.gz``)
    + ``NAME.json``.

    Keeps only the EMA weights, in half precision. ``metrics`` are the numbers measured on the
    model right after training; ``command`` and ``hardware`` say how it was trained. An existing
    ``NAME`` is replaced only with ``force`` and only by a model of the same kind
    (``check_export_name``). ``defaults``: the settings the model was tuned with, written into
    the manifest as ``"defaults"`` (``check_defaults``; None writes none). ``compress``: gzip the
    weights into ``NAME.pt.gz`` (None: when they are over ``COMPRESS_ABOVE`` bytes); the manifest's
    sha256 is then the .gz file's. The same checkpoint always gives the same bytes. Both files are
    written atomically. Returns the path of the weights file; its manifest is
    ``manifest_path(weights)``.
    """
    if defaults is not None:
        defaults = json_plain(check_defaults(defaults, "export_pretrained(defaults=...)"))
    ckpt = read_checkpoint(run_checkpoint)
    folder = check_export_name(name, ckpt["spec"].get("kind"), force, folder)
    folder.mkdir(parents=True, exist_ok=True)
    # AveragedModel keys look like "module.unet…" plus "n_averaged": keep the module's own weights,
    # less any part the model never trains (the classifier baseline's decoder)
    untrained = untrained_prefixes(ckpt["spec"])
    state = {k.removeprefix("module."): v.half() if v.is_floating_point() else v
             for k, v in ckpt["ema"].items()
             if k.startswith("module.") and not k.removeprefix("module.").startswith(untrained)}
    buffer = io.BytesIO()  # not a file: torch.save names the archive after the (temporary) file
    torch.save({"format": WEIGHTS_FORMAT, "spec": ckpt["spec"], "state_dict": state}, buffer)
    data = buffer.getvalue()
    if compress is None:
        compress = len(data) > COMPRESS_ABOVE
    if compress:  # mtime=0 and no file name in the header: the same weights, the same sha256
        data = gzip.compress(data, compresslevel=9, mtime=0)
    weights = folder / f"{name}{WEIGHTS_SUFFIXES[1] if compress else WEIGHTS_SUFFIXES[0]}"
    write_atomically(weights, lambda tmp: tmp.write_bytes(data))
    manifest = {
        "name": name,
        "spec": ckpt["spec"],
        "train_config": ckpt["train_config"],
        "steps": ckpt["step"],
        "train_seconds": round(float(ckpt.get("train_seconds", 0.0)), 1),
        "hardware": hardware,
        "command": command,
        "sha256": sha256(weights),  # of the file as stored: the .gz when compressed
        "size_bytes": weights.stat().st_size,
        "metrics": metrics,
        **({"defaults": defaults} if defaults is not None else {}),
    }
    write_atomically(manifest_path(weights),
                     lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    for other in _weights_files(folder, name):  # a forced export in the other format replaced it
        if other != weights:
            other.unlink()
    return weights
