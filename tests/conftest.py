"""Shared fixtures: tiny on-disk datasets in the exact formats fedfish.dataset_files reads.

``tiny_fmnist_dir``: the four Fashion-MNIST IDX files (train raw, test gzipped).
``tiny_cifar_root``: a root holding torchvision's ``cifar-10-batches-py`` pickles.
Both return a ``TinyImages`` with the arrays that were written, for round trips.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TINY_FMNIST_SIZES = {"train": 100, "test": 20}
TINY_CIFAR_BATCH = 4  # images per data_batch_i; the test batch holds 10


@dataclass(frozen=True)
class TinyImages:
    """A tiny dataset on disk.

    Attributes
    ----------
    root : Path
        Directory to pass as ``root`` to the loaders.
    arrays : dict[str, tuple[np.ndarray, np.ndarray]]
        Per split: uint8 images (N, C, H, W) and int64 labels (N,) as written.
    """

    root: Path
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]


def _balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Every class 0..9 present, in shuffled order."""
    return rng.permutation(np.arange(n) % 10).astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes((0, 0, 0x08, array.ndim)) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.fixture
def tiny_fmnist_dir(tmp_path: Path) -> TinyImages:
    """100 train and 20 test 28x28 images; train files raw, test files ``.gz``."""
    directory = tmp_path / "tiny-fmnist"
    directory.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix, suffix in (("train", "train", ""), ("test", "t10k", ".gz")):
        n = TINY_FMNIST_SIZES[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = _balanced_labels(n, rng)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))
        arrays[split] = (images[:, None], labels)
    return TinyImages(directory, arrays)


@pytest.fixture
def tiny_cifar_root(tmp_path: Path) -> TinyImages:
    """torchvision's CIFAR-10 layout with 5 x 4 train and 10 test images."""
    root = tmp_path / "tiny-cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    arrays = {}
    for split, names, n in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)], TINY_CIFAR_BATCH),
        ("test", ["test_batch"], 10),
    ):
        images, labels = [], []
        for name in names:
            data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
            batch_labels = _balanced_labels(n, rng)
            entry = {
                "batch_label": name,
                "labels": batch_labels.tolist(),
                "data": data,
                "filenames": [f"{name}_{i}.png" for i in range(n)],
            }
            # Protocol 2 like the real archive, which was written by Python 2.
            (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
            images.append(data.reshape(n, 3, 32, 32))
            labels.append(batch_labels)
        arrays[split] = (np.concatenate(images), np.concatenate(labels))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return TinyImages(root, arrays)


@pytest.hookimpl(tryfirst=True)  # before xdist's hook, which turns the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (``make test``), the tests that start Flower (Ray
    simulations, SuperLink/SuperNode processes) share one worker and run one at a time: two Ray
    clusters at once would only compete for the same cores, and a run's cleanup reaps the Ray
    workers of its process group, which xdist's workers share."""
    for item in items:
        if item.get_closest_marker("e2e") or item.path.name.endswith("_e2e.py"):
            item.add_marker(pytest.mark.xdist_group("flower"))
