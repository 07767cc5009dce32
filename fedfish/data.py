"""The built-in image datasets as normalised tensors, and their federated partitions.

``DATASETS`` names each dataset's input shape, class count and normalisation. Its files
are found, downloaded and decoded by :mod:`fedfish.dataset_files`; here the decoded
uint8 arrays are cached per process, normalised into fresh tensors, and partitioned by
flwr-datasets partitioners (``fedfish.partition``) run on an in-memory dataset of labels
only, so no image is ever converted to a HuggingFace dataset.

Command line::

    python -m fedfish.data locate fashion-mnist [--root DIR]    # prints the dir, exit 1 if absent
    python -m fedfish.data download fashion-mnist [--root DIR]  # torchvision download
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfish.dataset_files import download, locate, read_split
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
        Data root searched first (``fedfish.dataset_files.locate``: then
        ``$FEDFISH_DATA``, ``./data`` and, for Fashion-MNIST, the Debian package's directory).
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


@functools.lru_cache(maxsize=8)
def _cached_arrays(dataset: str, split: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, C, H, W) and int64 labels (N,), read-only (shared by all callers)."""
    images, labels = read_split(dataset, Path(directory), split)
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
