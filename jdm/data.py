"""Datasets as tensors in [-1, 1], offline first.

Fashion-MNIST ships with the project (``data/FashionMNIST/raw/``, the original idx ``.gz`` files
from Debian's ``dataset-fashion-mnist``, MIT licence) and loads without a network. MNIST, CIFAR-10
and SVHN go through torchvision's downloader into the same folder for users who are online.

    images, labels = load_tensors("fashion_mnist", train=True)   # (60000, 1, 28, 28), (60000,)
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import uuid
import zlib
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["DATASETS", "CLASS_NAMES", "data_dir", "load_tensors", "load_dataset", "sha256",
           "label_subset", "hide_labels"]

# name -> (torchvision class name, image shape)
DATASETS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "fashion_mnist": ("FashionMNIST", (1, 28, 28)),
    "mnist": ("MNIST", (1, 28, 28)),
    "cifar10": ("CIFAR10", (3, 32, 32)),
    "svhn": ("SVHN", (3, 32, 32)),
}

CLASS_NAMES: dict[str, list[str]] = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
    "svhn": [str(i) for i in range(10)],
}


def data_dir() -> Path:
    """The data folder: ``$JDM_DATA`` if set, else ``data/`` at the root of this checkout."""
    env = os.environ.get("JDM_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return name


# size and sha256 of each decompressed Fashion-MNIST file (the canonical idx files, whatever
# compressed them), recorded once from the bundled archives
FASHION_MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
_VERIFIED = ".verified.json"  # {file: [size, mtime_ns, ctime_ns, inode]} of copies whose sha256 matched


def sha256(path: Path) -> str:
    """The hex sha256 of a file, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_good_copy(path: Path, verified: dict) -> bool:
    """Whether ``path`` has the recorded size and sha256, hashed once per file state: size,
    mtime, ctime and inode. ``cp -p``/``rsync -t`` of a damaged copy keep size and mtime, but no
    program can set the ctime (any write or new file changes it), so a changed file is hashed."""
    size, digest = FASHION_MNIST_FILES[path.name]
    if not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != size:
        return False
    state = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    if verified.get(path.name) == state:
        return True
    if sha256(path) != digest:
        return False
    verified[path.name] = state
    return True


def _decompress_bundled(raw: Path) -> None:
    """Unpack ``*.gz`` idx files beside themselves, as torchvision's downloader would, and check
    every unpacked copy against ``FASHION_MNIST_FILES``: a missing, truncated or altered copy is
    rebuilt from its archive.

    The bundled archives are Debian's re-compression, so their checksums differ from the ones
    torchvision expects; unpacking them here lets torchvision read them with ``download=False``.
    Several processes may do this at once: each writes its own temporary file, and an atomic
    rename publishes it, so a half-written or foreign copy is never taken for a good one.

    Raises:
        ValueError: an archive is truncated or corrupt (the message names it and says how to
            restore it); no temporary file is left behind.
    """
    verified_path = raw / _VERIFIED
    try:
        verified = json.loads(verified_path.read_text())
    except (OSError, ValueError):
        verified = {}
    if not isinstance(verified, dict):  # e.g. '[1, 2]': as unusable as invalid JSON, rebuilt
        verified = {}
    before = dict(verified)
    for archive in sorted(raw.glob("*-ubyte.gz")):
        target = archive.with_suffix("")
        if target.name not in FASHION_MNIST_FILES or _is_good_copy(target, verified):
            continue
        verified.pop(target.name, None)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            size, digest = FASHION_MNIST_FILES[target.name]
            if tmp.stat().st_size != size or sha256(tmp) != digest:
                raise ValueError("its contents differ from Fashion-MNIST's")
            tmp.replace(target)  # atomic: a half-written file is never taken for a good one
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                raise _corrupt_archive(archive, err) from None
            raise OSError(err.errno, f"cannot unpack {archive.name} into {raw} "
                                     f"({err.strerror}); the archive is fine: free some space (the "
                                     "copy needs about "
                                     f"{FASHION_MNIST_FILES[target.name][0] / 2**20:.0f} MiB) or "
                                     "point JDM_DATA at a writable folder") from None
        except (EOFError, zlib.error, ValueError) as err:
            raise _corrupt_archive(archive, err) from None
        finally:
            tmp.unlink(missing_ok=True)
        _is_good_copy(target, verified)
    if verified != before:
        tmp = verified_path.with_name(f"{_VERIFIED}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(json.dumps(verified))
            tmp.replace(verified_path)
        except OSError:  # a read-only data folder: the copies are checked again next time
            tmp.unlink(missing_ok=True)


def _corrupt_archive(archive: Path, err: BaseException) -> ValueError:
    return ValueError(f"the bundled archive {archive} is truncated or corrupt ({err}); "
                      f"restore it with `git checkout -- {archive}` (or copy Fashion-MNIST's "
                      "original .gz there)")


def _split_is_train(train: bool | str) -> bool:
    """``train`` as a bool: True/False or the split names "train"/"test"; anything else is an error."""
    if isinstance(train, bool):
        return train
    if train in ("train", "test"):
        return train == "train"
    raise ValueError(f"train must be True, False, 'train' or 'test', got {train!r}")


def _torchvision_dataset(name: str, train: bool, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, DATASETS[name][0])
    if name == "svhn":
        return cls(root, split="train" if train else "test", download=download)
    return cls(root, train=train, download=download)


def load_tensors(name: str = "fashion_mnist", train: bool | str = True,
                 root: str | Path | None = None, download: bool = True) -> tuple[Tensor, Tensor]:
    """Load a whole split as tensors.

    Args:
        name: one of ``DATASETS`` ("fashion_mnist", "mnist", "cifar10", "svhn").
        train: True or "train" for the training split, False or "test" for the test split.
        root: the data folder (default ``data_dir()``).
        download: let torchvision download a dataset that is not on disk (needs a network).

    Returns:
        images: float32 (N, C, H, W) in [-1, 1]; labels: int64 (N,) in 0..9.

    Raises:
        FileNotFoundError: the dataset is not on disk and could not be downloaded; the message
        names the folder and says how to get it.
        ValueError: an unknown name or split, or a corrupt bundled Fashion-MNIST archive.
    """
    _check_name(name)
    train = _split_is_train(train)
    root = Path(root) if root is not None else data_dir()
    if name == "fashion_mnist":
        raw = root / "FashionMNIST" / "raw"
        if raw.is_dir():
            _decompress_bundled(raw)
    try:
        ds = _torchvision_dataset(name, train, root, download=False)
    except RuntimeError:
        if not download:
            raise FileNotFoundError(_missing_message(name, root, tried_download=False)) from None
        try:
            ds = _torchvision_dataset(name, train, root, download=True)
        except Exception as err:  # URLError, socket errors, HTTP errors: all mean "could not fetch"
            raise FileNotFoundError(_missing_message(name, root, tried_download=True)) from err

    if name == "svhn":
        images, labels = torch.as_tensor(ds.data), torch.as_tensor(ds.labels)
    elif name == "cifar10":
        images = torch.as_tensor(ds.data).permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.targets)
    else:
        images, labels = ds.data.unsqueeze(1), ds.targets
    images = images.contiguous().float().div_(127.5).sub_(1.0)
    return images, labels.long()


def load_dataset(name: str = "fashion_mnist", train: bool | str = True,
                 root: str | Path | None = None, download: bool = True) -> TensorDataset:
    """``load_tensors`` wrapped in a ``TensorDataset`` of (image (C, H, W), label) pairs."""
    return TensorDataset(*load_tensors(name, train, root, download))


def _missing_message(name: str, root: Path, tried_download: bool) -> str:
    tv_name = DATASETS[name][0]
    how = (
        "Fashion-MNIST ships with the project: restore data/FashionMNIST/raw/ from the repository "
        "(git checkout -- data/), or set JDM_DATA to a folder that holds FashionMNIST/raw/"
        if name == "fashion_mnist"
        else f"run once with a network connection (torchvision downloads it into {root}), or copy "
        f"torchvision's {tv_name} files there yourself"
    )
    why = "could not be downloaded (no network?)" if tried_download else "is not on disk"
    return f"dataset {name!r} ({tv_name}) {why}; looked in {root}. To get it: {how}."


def label_subset(labels: Tensor, per_class: int | None = None, fraction: float | None = None,
                 seed: int = 0) -> Tensor:
    """A class-balanced, seeded choice of which training images keep their label.

    The semi-supervised setting of Deja et al. (2023): a few labelled images, the rest train the
    diffusion loss only. Each class ``c`` keeps ``per_class`` images, or ``max(1, round(fraction *
    n_c))`` of its ``n_c`` images, drawn without replacement by ``torch.randperm`` under a
    ``torch.Generator`` seeded with ``seed`` (one draw per class, classes in order), so the same
    labels and seed always give the same subset.

    Args:
        labels: (N,) int64 class labels (no −1: pass the full labels of the split).
        per_class: K labelled images per class (1 <= K <= the smallest class's size).
        fraction: f in (0, 1], the share of each class that keeps its label (1 = all).
        seed: seeds the draw.

    Returns:
        (M,) int64 indices into ``labels``, sorted ascending (M = K · classes, or the sum over
        classes for a fraction).

    Raises:
        ValueError: neither or both of ``per_class`` and ``fraction``, K < 1 or larger than the
            smallest class, f outside (0, 1], or labels that are not a 1-D integer tensor of
            class indices >= 0.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError("labels must be a 1-D integer tensor of class indices, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels)}")
    if labels.numel() and labels.min() < 0:
        raise ValueError("labels must be the full class labels (>= 0); this picks which to keep, "
                         "so pass the labels before any are hidden as −1")
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class (labels per class) and fraction "
                         "(share of labelled images)")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"labels per class must be a positive integer, got {per_class!r}")
        smallest = int(counts.min()) if counts.numel() else 0
        if per_class > smallest:
            c = int(classes[counts.argmin()]) if counts.numel() else None
            raise ValueError(f"cannot keep {per_class} labels per class: class {c} has only "
                             f"{smallest} images; choose labels per class <= {smallest} (or a "
                             "fraction)")
    elif not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
              and 0 < fraction <= 1):
        raise ValueError(f"label fraction must lie in (0, 1] (1 = every label), got {fraction!r}")
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c, n_c in zip(classes.tolist(), counts.tolist()):
        members = (labels == c).nonzero().squeeze(1)
        k = per_class if per_class is not None else max(1, round(fraction * n_c))
        chosen.append(members[torch.randperm(n_c, generator=generator)[:k]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def hide_labels(labels: Tensor, keep: Tensor) -> Tensor:
    """A copy of ``labels`` (N,) with −1 ("unlabelled") everywhere except at the indices ``keep``
    (e.g. from ``label_subset``); the joint model trains only its diffusion loss on the −1s."""
    keep = torch.as_tensor(keep, dtype=torch.long)
    if keep.numel() and (keep.min() < 0 or keep.max() >= labels.shape[0]):
        raise ValueError(f"keep holds indices outside 0..{labels.shape[0] - 1}")
    hidden = torch.full_like(labels, -1)
    hidden[keep] = labels[keep]
    return hidden
