"""Image datasets on local disk and their federated partitions.

Fashion-MNIST is read from its four IDX files (Debian's ``dataset-fashion-mnist``
package, torchvision's download layout, or any directory holding them); CIFAR-10
from torchvision's ``cifar-10-batches-py`` pickles. Partitions come from
flwr-datasets partitioners (``fedfish.partition``) run on an in-memory dataset of
labels only, so no image is ever converted to a HuggingFace dataset.

Command line::

    python -m fedfish.data locate fashion-mnist [--root DIR]    # prints the dir, exit 1 if absent
    python -m fedfish.data download fashion-mnist [--root DIR]  # torchvision download
"""

from __future__ import annotations

import argparse
import functools
import gzip
import math
import os
import pickle
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfish.partition import holdout_indices, partition_indices


@dataclass(frozen=True)
class DatasetSpec:
    """Input shape, class count and normalisation of one dataset.

    ``mean``/``std`` are per channel, of pixel values scaled to [0, 1].
    """

    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(1, 28, 28, 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetSpec(3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
SPLITS: tuple[str, ...] = ("train", "test")

DATA_ENV = "FEDFISH_DATA"
# torchvision's conventional root, relative to the working directory.
DEFAULT_ROOT = Path("data")
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_FOLDER = "cifar-10-batches-py"

_FMNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_IDX_UBYTE = 0x08


def locate_fashion_mnist(root: str | Path | None = None) -> Path:
    """Directory holding the four Fashion-MNIST IDX files (raw or ``.gz``).

    Searched in order, each base both as is and in torchvision's layout
    ``<base>/FashionMNIST/raw``: ``root``, ``$FEDFISH_DATA``, ``./data``; then
    ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

    Returns
    -------
    Path
        Absolute path of the first directory that holds all four files.

    Raises
    ------
    FileNotFoundError
        Listing every place searched and how to get the data.
    """
    stems = [stem for pair in _FMNIST_FILES.values() for stem in pair]
    candidates = [d for base in _search_bases(root) for d in (base, base / "FashionMNIST" / "raw")]
    candidates.append(SYSTEM_FASHION_MNIST_DIR)
    for directory in candidates:
        if all(_idx_path(directory, stem) is not None for stem in stems):
            return directory.resolve()
    raise FileNotFoundError(
        _not_found_message("Fashion-MNIST IDX files", candidates)
        + "\nInstall the Debian package `dataset-fashion-mnist`, or run "
        "`python -m fedfish.data download fashion-mnist [--root DIR]`."
    )


def load_images(
    dataset: str, split: str, root: str | Path | None = None, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole split of a dataset as normalised tensors.

    The decoded uint8 arrays are cached per process (keyed by dataset, split and
    resolved directory), so repeated calls only normalise; every call returns
    fresh tensors, so callers may modify them without touching the cache.

    Parameters
    ----------
    dataset : str
        A key of ``DATASETS``: ``"fashion-mnist"`` or ``"cifar10"``.
    split : str
        ``"train"`` or ``"test"``.
    root : str | Path | None, default None
        Data root searched first (see ``locate_fashion_mnist``; for CIFAR-10 the
        bases ``root``, ``$FEDFISH_DATA``, ``./data`` holding ``cifar-10-batches-py``).
    download : bool, default False
        Download with torchvision when the files are not found.

    Returns
    -------
    images : torch.Tensor
        float32, shape (N, C, H, W), ``(pixel / 255 - mean) / std`` per channel.
    labels : torch.Tensor
        int64, shape (N,).
    """
    directory = _split_dir(dataset, split, root, allow_download=download)
    images, labels = _cached_arrays(dataset, split, str(directory))
    return _to_tensors(dataset, images, labels)


def download(dataset: str, root: str | Path | None = None) -> Path:
    """Download a dataset with torchvision (needs internet); returns its directory.

    ``root`` defaults to ``$FEDFISH_DATA`` if set, else ``./data``; both are
    searched by the loaders afterwards.
    """
    # torchvision takes seconds to import and only downloading needs it.
    from torchvision import datasets as tv_datasets  # noqa: PLC0415

    _check_dataset(dataset)
    target = Path(root) if root is not None else _default_root()
    if dataset == "fashion-mnist":
        # One call fetches all four files, whatever the split.
        tv_datasets.FashionMNIST(str(target), train=True, download=True)
        return locate_fashion_mnist(target)
    tv_datasets.CIFAR10(str(target), train=True, download=True)
    return _locate_cifar10(target)


def load_partition(
    dataset: str,
    partition_id: int,
    num_partitions: int,
    partitioner: str,
    *,
    seed: int = 0,
    root: str | Path | None = None,
    split: str = "train",
    holdout_fraction: float = 0.0,
    **partitioner_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One partition of a split, normalised like ``load_images``; only it is converted.

    Equals both tensors of ``load_images(dataset, split, root)`` indexed with
    ``partition_indices(labels, num_partitions, partitioner, seed=seed,
    **partitioner_kwargs)[partition_id]``. The partition list is cached per
    process, so the clients of a simulation share one partitioning run.

    Parameters
    ----------
    dataset, split, root
        As in ``load_images``; ``split`` defaults to ``"train"``.
    partition_id : int
        Which partition, in [0, num_partitions).
    num_partitions, partitioner, seed, **partitioner_kwargs
        As in ``partition_indices``.
    holdout_fraction : float, default 0.0
        Fraction of the split, in [0, 1), set aside as a public split that no
        partition holds (``holdout_indices``); only the rest is partitioned, and
        the returned indices refer to the whole split. 0 partitions everything.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        float32 images (n, C, H, W) and int64 labels (n,) of that partition.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    directory = str(_split_dir(dataset, split, root, allow_download=False))
    images, labels = _cached_arrays(dataset, split, directory)
    kwargs = tuple(sorted(partitioner_kwargs.items()))
    parts = _cached_partitions(
        dataset, split, directory, num_partitions, partitioner, seed, kwargs, holdout_fraction
    )
    index = parts[partition_id]
    return _to_tensors(dataset, images[index], labels[index])


def partition_sizes(
    dataset: str,
    num_partitions: int,
    partitioner: str,
    *,
    seed: int = 0,
    root: str | Path | None = None,
    split: str = "train",
    holdout_fraction: float = 0.0,
    **partitioner_kwargs: Any,
) -> tuple[int, ...]:
    """Examples in each partition of ``load_partition`` (same arguments, same cached run).

    Decodes the split and partitions its labels, but converts no image.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    directory = str(_split_dir(dataset, split, root, allow_download=False))
    kwargs = tuple(sorted(partitioner_kwargs.items()))
    parts = _cached_partitions(
        dataset, split, directory, num_partitions, partitioner, seed, kwargs, holdout_fraction
    )
    return tuple(len(part) for part in parts)


def _split_dir(dataset: str, split: str, root: str | Path | None, allow_download: bool) -> Path:
    """Validated ``dataset``/``split``; the directory holding the dataset's files."""
    _check_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    try:
        return locate(dataset, root)
    except FileNotFoundError:
        if not allow_download:
            raise
        return download(dataset, root)


def locate(dataset: str, root: str | Path | None = None) -> Path:
    """Directory the loaders read ``dataset`` from, searched as in ``load_images``.

    Raises
    ------
    FileNotFoundError
        Listing every place searched.
    """
    _check_dataset(dataset)
    return locate_fashion_mnist(root) if dataset == "fashion-mnist" else _locate_cifar10(root)


def _locate_cifar10(root: str | Path | None) -> Path:
    candidates = [base / CIFAR_FOLDER for base in _search_bases(root)]
    names = [name for files in _CIFAR_FILES.values() for name in files]
    for directory in candidates:
        if all((directory / name).is_file() for name in names):
            return directory.resolve()
    raise FileNotFoundError(
        _not_found_message("CIFAR-10 python batches", candidates)
        + "\nRun `python -m fedfish.data download cifar10 [--root DIR]` "
        "or pass download=True to load_images."
    )


@functools.lru_cache(maxsize=8)
def _cached_arrays(dataset: str, split: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) and int64 labels (N,), read-only (shared by all callers)."""
    path = Path(directory)
    if dataset == "fashion-mnist":
        images, labels = _read_fashion_mnist(path, split)
    else:
        images, labels = _read_cifar10(path, split)
    spec = DATASETS[dataset]
    expected = (spec.channels, spec.height, spec.width)
    if images.shape[1:] != expected:
        raise ValueError(
            f"{directory}: {split} images have shape {images.shape[1:]}, expected {expected}"
        )
    if labels.size and not 0 <= labels.min() <= labels.max() < spec.num_classes:
        raise ValueError(f"{directory}: {split} labels outside [0, {spec.num_classes})")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=16)
def _cached_partitions(
    dataset: str,
    split: str,
    directory: str,
    num_partitions: int,
    partitioner: str,
    seed: int,
    kwargs: tuple[tuple[str, Any], ...],
    holdout_fraction: float = 0.0,
) -> tuple[np.ndarray, ...]:
    _, labels = _cached_arrays(dataset, split, directory)
    if holdout_fraction == 0.0:
        parts = partition_indices(labels, num_partitions, partitioner, seed=seed, **dict(kwargs))
    else:
        keep = np.setdiff1d(np.arange(labels.shape[0]), holdout_indices(labels.shape[0], holdout_fraction))
        local = partition_indices(labels[keep], num_partitions, partitioner, seed=seed, **dict(kwargs))
        parts = [keep[part] for part in local]
    for part in parts:
        part.flags.writeable = False
    return tuple(parts)


def _read_fashion_mnist(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _FMNIST_FILES[split]
    image_path = _idx_path(directory, image_stem)
    label_path = _idx_path(directory, label_stem)
    if image_path is None or label_path is None:
        raise FileNotFoundError(f"{directory}: missing {image_stem}[.gz] or {label_stem}[.gz]")
    images = _read_idx(image_path, ndim=3)
    labels = _read_idx(label_path, ndim=1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels"
        )
    return images[:, None], labels


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """uint8 array of an IDX file (http://yann.lecun.com/exdb/mnist/), raw or gzipped.

    Header: two zero bytes, type code 0x08 (unsigned byte), ``ndim``, then
    ``ndim`` big-endian uint32 sizes; the body must be exactly their product.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # gzip names no file
        raise ValueError(f"{path}: truncated or corrupt gzip file ({err})") from err
    if len(raw) < 4 or raw[:4] != bytes((0, 0, _IDX_UBYTE, ndim)):
        raise ValueError(
            f"{path}: bad IDX header {raw[:4].hex()}, expected 0000{_IDX_UBYTE:02x}{ndim:02x} "
            f"(unsigned bytes, {ndim} dims)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, needs {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = math.prod(dims)
    if len(raw) - header != body:
        raise ValueError(
            f"{path}: IDX header declares dims {dims} ({body} bytes) but the body has "
            f"{len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_cifar10(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in _CIFAR_FILES[split]:
        path = directory / name
        with path.open("rb") as f:
            # latin1: the batches were pickled by Python 2 (torchvision does the same).
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        batch_labels = np.asarray(entry["labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != batch_labels.shape[0]:
            raise ValueError(
                f"{path}: expected data (n, 3072) and n labels, got data {data.shape} "
                f"and {batch_labels.shape[0]} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def _to_tensors(
    dataset: str, images: np.ndarray, labels: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = DATASETS[dataset]
    x = images.astype(np.float32)  # always a new array: the cached one stays untouched
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    x /= 255.0
    x -= mean
    x /= std
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64, copy=True))


# ----------------------------------------------------------------------------- helpers


def _search_bases(root: str | Path | None) -> list[Path]:
    bases = [] if root is None else [Path(root)]
    env = os.environ.get(DATA_ENV)
    if env:
        bases.append(Path(env))
    bases.append(DEFAULT_ROOT)
    return bases


def _default_root() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else DEFAULT_ROOT


def _idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _not_found_message(what: str, candidates: Sequence[Path]) -> str:
    places = "\n".join(f"  {c.absolute()}" for c in candidates)
    return f"{what} not found; searched, in order:\n{places}"


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {dataset!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedfish.data {locate,download} DATASET [--root DIR]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m fedfish.data", description="Locate or download FedFish datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("locate", "print the directory holding the dataset (exit 1 if absent)"),
        ("download", "download the dataset with torchvision and print its directory"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("dataset", choices=tuple(DATASETS))
        sub.add_argument("--root", default=None, help="data root searched first / download target")
    args = parser.parse_args(argv)
    try:
        if args.command == "locate":
            path = locate(args.dataset, args.root)
        else:
            path = download(args.dataset, args.root)
    except (OSError, RuntimeError) as err:  # not found, or torchvision's failed download
        print(err, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
