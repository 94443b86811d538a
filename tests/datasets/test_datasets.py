"""Dataset loading without internet, and clear errors when data is missing."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from skymask_ray.config import DataConfig
from skymask_ray.data import datasets
from skymask_ray.data.datasets import load_dataset, read_idx
from skymask_ray.errors import DataNotFoundError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Make torchvision's download fail at once, and point $SKYMASK_DATA at an empty folder."""
    monkeypatch.setattr(datasets, "_try_torchvision", lambda factory, root: False)
    monkeypatch.setenv("SKYMASK_DATA", str(tmp_path / "empty"))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fmnist_from_debian_package(no_download):
    d = load_dataset(DataConfig(dataset="fmnist"))
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert np.bincount(d.y_train).tolist() == [6000] * 10


def test_idx_files_in_data_dir_take_precedence(tmp_path, no_download):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    d = load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert d.x_train.shape == (30, 1, 28, 28) and len(d.y_test) == 10
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert np.allclose(d.x_train[:, 0] * 255.0, raw)
    assert np.array_equal(d.x_train[:, 0], raw.astype(np.float32) / 255.0)  # bit for bit the former conversion


def test_missing_dataset_error_says_where_and_how(tmp_path, no_download):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    msg = str(info.value)
    assert str(tmp_path) in msg and "--data-dir" in msg and "\n" not in msg


def test_missing_har_points_to_uci(tmp_path, no_download):
    with pytest.raises(DataNotFoundError, match="UCI HAR"):
        load_dataset(DataConfig(dataset="har", data_dir=str(tmp_path)))


def test_har_layout(tmp_path, no_download):
    root = tmp_path / "UCI HAR Dataset"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 5)):
        (root / split).mkdir(parents=True)
        np.savetxt(root / split / f"X_{split}.txt", rng.standard_normal((n, 561)))
        np.savetxt(root / split / f"y_{split}.txt", rng.integers(1, 7, n), fmt="%d")
        np.savetxt(root / split / f"subject_{split}.txt", np.repeat([1, 2, 3], n)[:n], fmt="%d")
    d = load_dataset(DataConfig(dataset="har", data_dir=str(tmp_path)))
    assert d.x_train.shape == (12, 561) and d.num_classes == 6 and d.y_train.min() >= 0
    assert d.groups is not None and set(d.groups.tolist()) <= {1, 2, 3}


def test_cifar_batches(tmp_path, no_download):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": [0, 1, 2, 3]}, fh)
    d = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)


def test_digits_and_synthetic_offline():
    d = load_dataset(DataConfig(dataset="digits"))
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_test) == 1797
    s = load_dataset(DataConfig(dataset="synthetic", synthetic_train=500, synthetic_shape=(20,), synthetic_classes=3), 1)
    assert s.x_train.shape == (500, 20) and set(s.y_train.tolist()) == {0, 1, 2}
    # class-conditional: the class means differ
    m = [s.x_train[s.y_train == c].mean(0) for c in range(3)]
    assert np.abs(m[0] - m[1]).max() > 0.1
