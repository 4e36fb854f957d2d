"""Tests for jdm.data: the bundled Fashion-MNIST loads offline with the right values."""
import pytest
import torch

from jdm.data import CLASS_NAMES, DATASETS, data_dir, load_dataset, load_tensors


@pytest.fixture(scope="module")
def fmnist():
    return load_tensors("fashion_mnist", train=True), load_tensors("fashion_mnist", train=False)


def test_fashion_mnist_shapes_ranges_and_labels(fmnist):
    (x_train, y_train), (x_test, y_test) = fmnist
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    for x, y in fmnist:
        assert x.min() == -1.0 and x.max() == 1.0
        assert set(y.unique().tolist()) == set(range(10))
    assert y_train.bincount().tolist() == [6000] * 10
    assert y_test.bincount().tolist() == [1000] * 10


def test_fashion_mnist_known_values(fmnist):
    """First labels and pixel sums of the original files (any decoding error changes them)."""
    (x_train, y_train), (x_test, y_test) = fmnist
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    # raw uint8 value v maps to v / 127.5 − 1; sums of the first training images:
    sums = x_train[:3].sum(dim=(1, 2, 3))
    assert torch.allclose(sums, torch.tensor([-185.9843, -120.4863, -559.2000]), atol=1e-3)
    assert x_test[1].sum().item() == pytest.approx(8.1098, abs=1e-3)
    # pixel values sit on the uint8 grid
    raw = (x_train[:100] + 1) * 127.5
    assert torch.allclose(raw, raw.round(), atol=1e-4)


def test_class_names():
    assert CLASS_NAMES["fashion_mnist"][9] == "Ankle boot" and CLASS_NAMES["fashion_mnist"][6] == "Shirt"
    assert all(len(CLASS_NAMES[name]) == 10 for name in DATASETS)


def test_load_dataset_items():
    ds = load_dataset("fashion_mnist", train=False)
    image, label = ds[0]
    assert len(ds) == 10000 and image.shape == (1, 28, 28) and label.item() == 9


def test_bundled_files_are_in_torchvision_layout():
    raw = data_dir() / "FashionMNIST" / "raw"
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert (raw / f"{stem}.gz").is_file()
    assert (data_dir() / "FashionMNIST" / "COPYRIGHT").is_file()


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_tensors("imagenet")


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "cifar10"])
def test_missing_dataset_offline_gives_clear_error(tmp_path, name):
    with pytest.raises(FileNotFoundError) as err:
        load_tensors(name, root=tmp_path, download=False)
    message = str(err.value)
    assert name in message and str(tmp_path) in message and "To get it" in message


def test_jdm_data_env_overrides_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("JDM_DATA", str(tmp_path))
    assert data_dir() == tmp_path


def test_split_names_and_bad_splits():
    x_named, _ = load_tensors("fashion_mnist", train="test")
    assert torch.equal(x_named, load_tensors("fashion_mnist", train=False)[0])
    for bad in ["yes", 1, None]:
        with pytest.raises(ValueError, match="'train' or 'test'"):
            load_tensors("fashion_mnist", train=bad)


def test_damaged_copies_are_rebuilt_from_the_archives(tmp_path):
    import os

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for archive in (data_dir() / "FashionMNIST" / "raw").glob("*.gz"):
        os.symlink(archive, raw / archive.name)
    good = load_tensors("fashion_mnist", train=False, root=tmp_path)[0]
    copy = raw / "t10k-images-idx3-ubyte"
    copy.write_bytes(copy.read_bytes()[:16] + bytes(255 - b for b in copy.read_bytes()[16:]))
    assert torch.equal(load_tensors("fashion_mnist", train=False, root=tmp_path)[0], good)
    archive = raw / "t10k-images-idx3-ubyte.gz"
    head = archive.read_bytes()[:1000]
    archive.unlink()
    archive.write_bytes(head)
    copy.unlink()
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is truncated or corrupt"):
        load_tensors("fashion_mnist", train=False, root=tmp_path)
    assert not [p for p in raw.iterdir() if p.name.endswith(".tmp")]
