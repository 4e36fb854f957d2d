"""Datasets as tensors in [-1, 1], offline first.

Fashion-MNIST ships with the project (``data/FashionMNIST/raw/``, the original idx ``.gz`` files
from Debian's ``dataset-fashion-mnist``, MIT licence) and loads without a network. MNIST, CIFAR-10
and SVHN go through torchvision's downloader into the same folder for users who are online.

    images, labels = load_tensors("fashion_mnist", train=True)   # (60000, 1, 28, 28), (60000,)
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["DATASETS", "CLASS_NAMES", "data_dir", "load_tensors", "load_dataset"]

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
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return name


def _decompress_bundled(raw: Path) -> None:
    """Unpack ``*.gz`` idx files beside themselves, as torchvision's downloader would.

    The bundled archives are Debian's re-compression, so their checksums differ from the ones
    torchvision expects; unpacking them here lets torchvision read them with ``download=False``.
    """
    for archive in raw.glob("*-ubyte.gz"):
        target = archive.with_suffix("")
        if target.exists():
            continue
        tmp = target.with_name(target.name + ".tmp")
        with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)  # atomic: a half-written file is never taken for a good one


def _torchvision_dataset(name: str, train: bool, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, DATASETS[name][0])
    if name == "svhn":
        return cls(root, split="train" if train else "test", download=download)
    return cls(root, train=train, download=download)


def load_tensors(name: str = "fashion_mnist", train: bool = True, root: str | Path | None = None,
                 download: bool = True) -> tuple[Tensor, Tensor]:
    """Load a whole split as tensors.

    Args:
        name: one of ``DATASETS`` ("fashion_mnist", "mnist", "cifar10", "svhn").
        train: the training split (else the test split).
        root: the data folder (default ``data_dir()``).
        download: let torchvision download a dataset that is not on disk (needs a network).

    Returns:
        images: float32 (N, C, H, W) in [-1, 1]; labels: int64 (N,) in 0..9.

    Raises:
        FileNotFoundError: the dataset is not on disk and could not be downloaded; the message
        names the folder and says how to get it.
    """
    _check_name(name)
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


def load_dataset(name: str = "fashion_mnist", train: bool = True, root: str | Path | None = None,
                 download: bool = True) -> TensorDataset:
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
