"""The data of a run, whatever its source, behind one interface.

``DataConfig`` mirrors the run-config keys; ``data_info``, ``load_partition``,
``load_split`` and ``check`` serve the server, the clients and the start-up check.
Sources, by the ``dataset`` key:

* ``"fashion-mnist"``, ``"cifar10"``: read by ``fedfish.data`` (offline-first) and
  partitioned by ``fedfish.partition``, exactly as before;
* a name given to ``register_dataset``, or ``"package.module:callable"``: a loader
  returning ``{"train": (x, y), "test": (x, y)}`` numpy arrays;
* ``"npz"``: ``data-files`` names a Keras-style ``.npz`` (``x_train``, ``y_train``,
  ``x_test``, ``y_test``) or a table ``{train = 'a.npz', test = 'b.npz'}`` of files
  holding ``x`` and ``y``;
* ``"parquet"``, ``"csv"``, ``"json"``, ``"imagefolder"`` (local files, by
  ``data-files``/``data-dir``) or any Hugging Face hub id: read by flwr-datasets'
  ``FederatedDataset`` (which hands them to ``datasets.load_dataset``).

All but the built-ins are read, partitioned by a flwr-datasets partitioner
(``fedfish.partition.make_partitioner``) and converted by ``fedfish.features`` in
``fedfish.prepared_data``. The public split is ``holdout_indices(N, holdout-fraction)`` of the train split,
whatever the seed; the seed then permutes the remaining rows before partitioning.
Everything loaded is cached per process (by config); returned tensors are fresh.

``DataConfig``, ``DataConfigError``, ``DataInfo`` and ``register_dataset`` live in
``fedfish.dataconfig`` and are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfish import data, dataset_files
from fedfish.dataconfig import (
    LOCAL_BUILDERS, RUN_CONFIG_KEYS, DataConfig, DataConfigError, DataInfo, register_dataset,
)
from fedfish.partition import PARTITIONERS, holdout_indices
from fedfish.prepared_data import prepare

__all__ = [
    "LOCAL_BUILDERS", "RUN_CONFIG_KEYS", "SPLITS", "DataConfig", "DataConfigError", "DataInfo",
    "check", "clear_cache", "data_info", "load_partition", "load_split", "register_dataset",
]

SPLITS: tuple[str, ...] = ("train", "test", "public")
# Built-ins: partitioner-args keys (flwr-datasets names) -> fedfish.partition arguments.
_BUILTIN_ARGS = {
    "min_partition_size": "min_partition_size", "num_shards_per_partition": "shards_per_partition",
}
# fedfish.partition error prefixes -> the run-config key at fault.
_BUILTIN_ERRORS = {
    "alpha": "alpha", "classes_per_partition": "classes-per-partition",
    "num_partitions": "num-partitions", "min_partition_size": "partitioner-args",
    "shards_per_partition": "partitioner-args", "partitioner": "partitioner",
    "partition_indices": "partitioner",
}


def data_info(cfg: DataConfig) -> DataInfo:
    """Input shape, class count and partition sizes (loads and partitions the data once)."""
    if cfg.source == "builtin":
        spec = data.DATASETS[cfg.dataset]
        sizes = _builtin(cfg, lambda root, kwargs: data.partition_sizes(
            cfg.dataset, cfg.num_partitions, cfg.partitioner, root=root, **kwargs))
        return DataInfo((spec.channels, spec.height, spec.width), spec.num_classes, sizes)
    prepared = prepare(cfg)
    return DataInfo(prepared.train_x.shape[1:], prepared.num_classes, tuple(map(len, prepared.parts)))


def load_partition(cfg: DataConfig, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 features (n, *input_shape) and int64 labels (n,) of one client's partition."""
    if cfg.source == "builtin":
        _check_id(partition_id, cfg.num_partitions)
        return _builtin(cfg, lambda root, kwargs: data.load_partition(
            cfg.dataset, partition_id, cfg.num_partitions, cfg.partitioner, root=root, **kwargs))
    prepared = prepare(cfg)
    _check_id(partition_id, len(prepared.parts))
    return prepared.tensors("train", prepared.parts[partition_id])


def load_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split, converted like the partitions.

    ``"test"``: centralised evaluation. ``"public"``: the held-out rows of the
    train split (needs holdout-fraction > 0). ``"train"``: every other train row.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "public" and cfg.holdout_fraction == 0:
        raise DataConfigError("holdout-fraction", "is 0, so there is no public split")
    if cfg.source == "builtin":
        which = "test" if split == "test" else "train"
        x, y = _builtin(cfg, lambda root, kwargs: data.load_images(cfg.dataset, which, root))
        if split == "test":
            return x, y
        rows = torch.from_numpy(_train_rows(len(y), cfg.holdout_fraction, split))
        return x[rows], y[rows]
    prepared = prepare(cfg)
    if split == "test":
        return prepared.tensors("test", None)
    return prepared.tensors("train", _train_rows(len(prepared.train_y), cfg.holdout_fraction, split))


def check(cfg: DataConfig) -> None:
    """Load, convert and partition everything once; raise ``DataConfigError`` on any fault."""
    if cfg.source == "builtin":
        data_info(cfg)
        load_split(cfg, "test")
    else:
        prepare(cfg)


def clear_cache() -> None:
    """Forget every loaded dataset of this process (fedfish.data's caches excepted)."""
    prepare.cache_clear()


# ----------------------------------------------------------------------------- built-ins


def _builtin(cfg: DataConfig, action: Callable[[str | None, dict[str, Any]], Any]) -> Any:
    """``action(root, partition kwargs)`` with data-root checked and errors keyed."""
    if cfg.partitioner not in PARTITIONERS:
        raise DataConfigError("partitioner", f"built-in dataset {cfg.dataset!r} takes one of "
                                             f"{', '.join(PARTITIONERS)}, got {cfg.partitioner!r}")
    unknown = sorted(set(cfg.partitioner_kwargs) - set(_BUILTIN_ARGS))
    if unknown:
        allowed = ", ".join(_BUILTIN_ARGS)
        got = ", ".join(unknown)
        raise DataConfigError("partitioner-args", f"built-in datasets take only {allowed}, got {got}")
    kwargs = {_BUILTIN_ARGS[k]: v for k, v in cfg.partitioner_kwargs.items()} | {
        "seed": cfg.seed, "holdout_fraction": cfg.holdout_fraction,
        "alpha": cfg.alpha, "classes_per_partition": cfg.classes_per_partition,
    }
    root = str(Path(cfg.root).expanduser()) if cfg.root else None
    if root is not None:
        _check_root(cfg.dataset, root)
    try:
        return action(root, kwargs)
    except (OSError, ValueError) as err:
        # Argument errors start "<argument> must" or "partition_indices:"; file errors with a path.
        word = re.match(r"(\w+)(?: must|:)", str(err))
        key = _BUILTIN_ERRORS.get(word.group(1) if word else "", "data-root")
        raise DataConfigError(key if isinstance(err, ValueError) else "data-root", str(err)) from err


def _check_root(dataset: str, root: str) -> None:
    """``dataset_files.locate`` falls back to other places; an explicitly given data-root must hold the data itself."""
    try:
        found = dataset_files.locate(dataset, root)
    except FileNotFoundError as err:
        raise DataConfigError("data-root", f"{root} holds no {dataset} files ({err})") from err
    if not found.is_relative_to(Path(root).resolve()):
        raise DataConfigError("data-root", f"{root} holds no {dataset} files (found {found} instead)")


# ----------------------------------------------------------------------------- helpers


def _train_rows(n: int, fraction: float, split: str) -> np.ndarray:
    held = holdout_indices(n, fraction)
    return held if split == "public" else np.setdiff1d(np.arange(n), held)


def _check_id(partition_id: int, count: int) -> None:
    is_int = isinstance(partition_id, int | np.integer) and not isinstance(partition_id, bool)
    if not (is_int and 0 <= partition_id < count):
        raise ValueError(f"partition_id must be an int in [0, {count}), got {partition_id!r}")
