"""The built-in datasets' files: where they are searched, how they are downloaded and read.

Fashion-MNIST is four IDX files (Debian's ``dataset-fashion-mnist`` package,
torchvision's download layout, or any directory holding them); CIFAR-10 is torchvision's
``cifar-10-batches-py`` pickles. :func:`locate` finds a dataset's directory,
:func:`download` fetches it with torchvision, :func:`read_split` decodes one split into
uint8 arrays. Normalising, caching and partitioning are :mod:`fedfish.data`'s.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DATA_ENV = "FEDFISH_DATA"
# torchvision's conventional root, relative to the working directory.
DEFAULT_ROOT = Path("data")
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_FOLDER = "cifar-10-batches-py"

# The files of each split, per dataset (Fashion-MNIST: images, then labels; raw or .gz).
_SPLIT_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion-mnist": {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    },
    "cifar10": {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    },
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
    stems = [stem for files in _SPLIT_FILES["fashion-mnist"].values() for stem in files]
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


def locate(dataset: str, root: str | Path | None = None) -> Path:
    """Directory the loaders read ``dataset`` from.

    Fashion-MNIST as in :func:`locate_fashion_mnist`; CIFAR-10 in the bases ``root``,
    ``$FEDFISH_DATA``, ``./data`` holding ``cifar-10-batches-py``.

    Raises
    ------
    FileNotFoundError
        Listing every place searched.
    """
    _check_dataset(dataset)
    return locate_fashion_mnist(root) if dataset == "fashion-mnist" else _locate_cifar10(root)


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


def read_split(dataset: str, directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)`` of ``split`` (``"train"`` or
    ``"test"``), read from ``directory`` (as :func:`locate` returns it).

    Raises
    ------
    FileNotFoundError
        A file of the split is missing.
    ValueError
        A file is truncated or corrupt, or images and labels disagree in number.
    """
    _check_dataset(dataset)
    if dataset == "fashion-mnist":
        return _read_fashion_mnist(directory, split)
    return _read_cifar10(directory, split)


def _locate_cifar10(root: str | Path | None) -> Path:
    candidates = [base / CIFAR_FOLDER for base in _search_bases(root)]
    names = [name for files in _SPLIT_FILES["cifar10"].values() for name in files]
    for directory in candidates:
        if all((directory / name).is_file() for name in names):
            return directory.resolve()
    raise FileNotFoundError(
        _not_found_message("CIFAR-10 python batches", candidates)
        + "\nRun `python -m fedfish.data download cifar10 [--root DIR]` "
        "or pass download=True to load_images."
    )


def _read_fashion_mnist(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _SPLIT_FILES["fashion-mnist"][split]
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
    for name in _SPLIT_FILES["cifar10"][split]:
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
    if dataset not in _SPLIT_FILES:
        raise ValueError(f"dataset must be one of {tuple(_SPLIT_FILES)}, got {dataset!r}")
