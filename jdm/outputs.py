"""One writer for every file jdm's commands write: check the path before any work, then write it
atomically.

    check_output(Path("runs/x/report.json"), "json", "--json", report_keys=("what", "results"))
    ...                                            # the long work
    write_atomically(path, lambda tmp: tmp.write_text(text))

``check_output`` refuses, before a long run starts, what would fail at its end or destroy work:
a directory where a file is wanted (or the reverse), a missing or unknown image extension, a
parent that is a file, an unwritable folder, too little free space, anything inside jdm's data
folder (the shipped checkpoints, their manifests and ``aliases.json``, the bundled data set) and
an existing file of another kind (a manifest, a notebook, a checkpoint) where a report or an image
would go. ``write_atomically`` writes a temporary file beside the target and renames it over the
target in one step, so an interruption (Ctrl-C, a full disk) never leaves a half-written file and
keeps the previous one; a ``RuntimeError`` from ``torch.save`` on a full disk becomes an
``OSError`` that says so.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

__all__ = ["check_output", "check_writable", "write_atomically", "inside_data_folder", "save_grid"]

_SHIPPED_DATA = Path(__file__).resolve().parent.parent / "data"


def inside_data_folder(path: Path) -> Path | None:
    """The data folder (``$JDM_DATA`` or the checkout's ``data/``) that ``path`` lies in, or None."""
    from .data import data_dir

    resolved = Path(os.path.abspath(path)).resolve()
    for root in {_SHIPPED_DATA, Path(data_dir()).resolve()}:
        if resolved == root or root in resolved.parents:
            return root
    return None


def check_output(path: Path | None, kind: str = "image", flag: str = "--out",
                 need_bytes: int = 1 << 20, report_keys: tuple[str, ...] = ()) -> Path | None:
    """Check an output path (None: nothing to check) before any work starts.

    Args:
        path: where the command will write.
        kind: ``"image"`` (a file whose extension PIL can write), ``"json"`` (a report; an
            existing file there must be an earlier report, i.e. a JSON object with every key in
            ``report_keys``, or a JSON list when ``report_keys`` is empty), ``"file"`` or
            ``"folder"``.
        flag: the option that named ``path``, for messages.
        need_bytes: free space the folder must have.

    Returns ``path``. Missing parent folders are created.

    Raises:
        ValueError: see the module docstring; the message names ``flag``.
    """
    if path is None:
        return None
    path = Path(path)
    root = inside_data_folder(path)
    if root is not None:
        raise ValueError(f"{flag} {path} is inside jdm's data folder {root} (shipped checkpoints, "
                         "manifests, aliases.json and the bundled data set): write outputs "
                         "elsewhere, e.g. runs/")
    folder = path if kind == "folder" else path.parent
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is an existing file; {flag} names a folder")
    if kind != "folder" and path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file name inside it, e.g. "
                         f"{path / ('samples.png' if kind == 'image' else 'report.json')}")
    if kind == "image":
        _check_image_name(path, flag)
    if kind == "json" and path.is_file():
        _check_earlier_report(path, flag, report_keys)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder")
    check_writable(folder, flag, need_bytes)
    return path


def _check_image_name(path: Path, flag: str) -> None:
    from PIL import Image

    Image.init()
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{flag} {path} has {'no' if not path.suffix else 'an unknown'} image "
                         "file extension; use e.g. .png or .jpg")


def _check_earlier_report(path: Path, flag: str, report_keys: tuple[str, ...]) -> None:
    """An existing file is replaced only if it is an earlier report of the same command."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    same = (isinstance(old, dict) and all(k in old for k in report_keys) if report_keys
            else isinstance(old, list))
    if not same:
        raise ValueError(f"{flag} {path} exists and is not an earlier report of this command "
                         "(a manifest, a log or another file): it is never replaced; choose "
                         "another file name")


def check_writable(folder: Path, flag: str, need_bytes: int = 1 << 20) -> None:
    """``folder`` (created if missing) accepts a small test file and has ``need_bytes`` free;
    else a ``ValueError`` naming ``flag``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".jdm-write-test.{os.getpid()}"
        try:
            probe.write_bytes(bytes(4096))
        finally:
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise ValueError(f"cannot write to {folder} ({flag}): {err.strerror or err}") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise ValueError(f"{folder} has {free / 2**20:.1f} MiB free but {flag} needs about "
                         f"{need_bytes / 2**20:.0f} MiB; free some space or choose another place")


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path`` (named ``.NAME.PID.HEX.tmp`` plus
    ``path``'s suffix, so format-by-extension writers work), then one ``os.replace`` onto
    ``path``. On any failure or interruption the temporary file is removed and ``path`` keeps
    its previous contents. Returns ``path``.

    Raises:
        OSError: the write failed; a ``RuntimeError`` from ``torch.save`` (its zip writer reports
            a full disk that way) is turned into an ``OSError`` that says whether the disk is full.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        try:
            write(tmp)
        except RuntimeError as err:
            raise _as_os_error(err, path) from err
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _as_os_error(err: RuntimeError, path: Path) -> OSError:
    free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else None
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    if free is not None and free < (1 << 20):
        return OSError(errno.ENOSPC, f"no space left on the device writing {path} "
                                     f"({free / 2**20:.1f} MiB free; {first}); the previous file, if "
                                     "any, is kept: free some space and run again")
    return OSError(errno.EIO, f"could not write {path} ({first}); the previous file, if any, is "
                              "kept")


def save_grid(images, path: str | Path) -> Path:
    """Save images (N, C, H, W) in [-1, 1] as one roughly square grid image (PNG, JPEG, …),
    atomically: an interruption leaves no partial file."""
    from torchvision.utils import save_image

    path = Path(path)
    if not path.suffix:
        raise ValueError(f"{path} has no file extension; use e.g. samples.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda tmp: save_image(
        images, tmp, nrow=math.ceil(math.sqrt(images.shape[0])), normalize=True,
        value_range=(-1, 1)))
