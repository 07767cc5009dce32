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

All but the built-ins are partitioned by a flwr-datasets partitioner
(``fedfish.partition.make_partitioner``) and converted by ``fedfish.features``.
The public split is ``holdout_indices(N, holdout-fraction)`` of the train split,
whatever the seed; the seed then permutes the remaining rows before partitioning.
Everything loaded is cached per process (by config); returned tensors are fresh.

``DataConfig``, ``DataConfigError``, ``DataInfo`` and ``register_dataset`` live in
``fedfish.dataconfig`` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedfish import data
from fedfish.dataconfig import (
    LOCAL_BUILDERS, RUN_CONFIG_KEYS, Arrays, DataConfig, DataConfigError, DataInfo, blame, loader_of,
    register_dataset,
)
from fedfish.features import (
    LabelEncoder, Standardiser, check_arrays, from_array, from_dataset, image_column, labels_of,
)
from fedfish.partition import PARTITIONERS, holdout_indices, make_partitioner, partitioner_class

if TYPE_CHECKING:
    import datasets
    from flwr_datasets.partitioner import Partitioner

__all__ = [
    "LOCAL_BUILDERS", "RUN_CONFIG_KEYS", "SPLITS", "DataConfig", "DataConfigError", "DataInfo",
    "check", "clear_cache", "data_info", "load_partition", "load_split", "register_dataset",
]

SPLITS: tuple[str, ...] = ("train", "test", "public")
ROW = "__row__"  # original train row of each example, added before partitioning
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
# Raw train x, y, test x, y, their label encoder, and the partitions (rows of train).
_Loaded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, LabelEncoder, tuple[np.ndarray, ...]]


def data_info(cfg: DataConfig) -> DataInfo:
    """Input shape, class count and partition sizes (loads and partitions the data once)."""
    if cfg.source == "builtin":
        spec = data.DATASETS[cfg.dataset]
        sizes = _builtin(cfg, lambda root, kwargs: data.partition_sizes(
            cfg.dataset, cfg.num_partitions, cfg.partitioner, root=root, **kwargs))
        return DataInfo((spec.channels, spec.height, spec.width), spec.num_classes, sizes)
    prepared = _prepared(cfg)
    return DataInfo(prepared.train_x.shape[1:], prepared.num_classes, tuple(map(len, prepared.parts)))


def load_partition(cfg: DataConfig, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 features (n, *input_shape) and int64 labels (n,) of one client's partition."""
    if cfg.source == "builtin":
        _check_id(partition_id, cfg.num_partitions)
        return _builtin(cfg, lambda root, kwargs: data.load_partition(
            cfg.dataset, partition_id, cfg.num_partitions, cfg.partitioner, root=root, **kwargs))
    prepared = _prepared(cfg)
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
    prepared = _prepared(cfg)
    if split == "test":
        return prepared.tensors("test", None)
    return prepared.tensors("train", _train_rows(len(prepared.train_y), cfg.holdout_fraction, split))


def check(cfg: DataConfig) -> None:
    """Load, convert and partition everything once; raise ``DataConfigError`` on any fault."""
    if cfg.source == "builtin":
        data_info(cfg)
        load_split(cfg, "test")
    else:
        _prepared(cfg)


def clear_cache() -> None:
    """Forget every loaded dataset of this process (fedfish.data's caches excepted)."""
    _prepared.cache_clear()


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
    """fedfish.data falls back to other places; an explicitly given data-root must hold the data itself."""
    try:
        found = data.locate(dataset, root)
    except FileNotFoundError as err:
        raise DataConfigError("data-root", f"{root} holds no {dataset} files ({err})") from err
    if not found.is_relative_to(Path(root).resolve()):
        raise DataConfigError("data-root", f"{root} holds no {dataset} files (found {found} instead)")


# ----------------------------------------------------------------------------- everything else


@dataclass(frozen=True)
class _Prepared:
    """Raw arrays of every train row (original order) and of the test split, and the partitions."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    scaler: Standardiser
    num_classes: int
    parts: tuple[np.ndarray, ...]

    def tensors(self, split: str, rows: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        if rows is not None:
            x, y = x[rows], y[rows]
        return self.scaler.apply(x), torch.from_numpy(y.astype(np.int64, copy=True))


@functools.lru_cache(maxsize=4)
def _prepared(cfg: DataConfig) -> _Prepared:
    partitioner, partition_by = _partitioner(cfg)
    load = _from_federated_dataset if cfg.source in ("builder", "hub") else _from_arrays
    train_x, train_y, test_x, test_y, encoder, parts = load(cfg, partitioner, partition_by)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataConfigError(cfg.location_key, f"test features have shape {test_x.shape[1:]}, "
                                                f"train features {train_x.shape[1:]}")
    for array in (train_x, train_y, test_x, test_y, *parts):
        array.flags.writeable = False
    scaler = Standardiser.fit(train_x)
    return _Prepared(train_x, train_y, test_x, test_y, scaler, encoder.num_classes, parts)


def _partitioner(cfg: DataConfig) -> tuple[Partitioner, str | None]:
    """The configured partitioner and the column it reads (None if it reads none)."""
    with blame("partitioner"):
        cls = partitioner_class(cfg.partitioner)
    args = cfg.partitioner_kwargs
    reserved = sorted({"num_partitions", "seed"} & set(args))
    if reserved:
        raise DataConfigError("partitioner-args", f"set {', '.join(reserved)} with num-partitions/seed")
    ours = {
        "dirichlet": {"alpha": cfg.alpha, "min_partition_size": 1},
        "pathological": {"num_classes_per_partition": cfg.classes_per_partition,
                         "class_assignment_mode": "deterministic"},
        "shard": {"num_shards_per_partition": 2},
    }
    options = ours.get(cfg.partitioner, {}) | args
    partition_by = options.pop("partition_by", cfg.label_column)
    if not isinstance(partition_by, str):
        raise DataConfigError("partitioner-args", f"partition_by must be a column name, not {partition_by!r}")
    with blame("partitioner-args"):
        partitioner = make_partitioner(cfg.partitioner, cfg.num_partitions, partition_by=partition_by,
                                       seed=cfg.seed, **options)
    return partitioner, partition_by if "partition_by" in inspect.signature(cls).parameters else None


def _from_federated_dataset(cfg: DataConfig, partitioner: Partitioner, partition_by: str | None) -> _Loaded:
    """A hub dataset or local files, read and partitioned by flwr-datasets' FederatedDataset."""
    import datasets  # noqa: PLC0415
    from flwr_datasets import FederatedDataset  # noqa: PLC0415

    key, where = cfg.location_key, cfg.describe()
    cfg.check_paths()

    def resplit(tables: datasets.DatasetDict) -> datasets.DatasetDict:
        missing = [split for split in ("train", "test") if split not in tables]
        if missing:
            splits = ", ".join(tables)
            raise DataConfigError(key, f"{where} has no {' or '.join(missing)} split (splits: {splits})")
        return _resplit(tables, cfg.holdout_fraction, cfg.seed)

    load_kwargs: dict[str, Any] = {"data_files": cfg.files} if cfg.files else {}
    if cfg.data_dir:
        load_kwargs["data_dir"] = str(Path(cfg.data_dir).expanduser())
    # shuffle=False: the public split must not depend on the seed; `_resplit` permutes the rest.
    fds = FederatedDataset(
        dataset=cfg.dataset, partitioners={"train": partitioner}, preprocessor=resplit,
        shuffle=False, seed=cfg.seed, **load_kwargs,
    )
    try:
        with _quiet():
            train, public, test = (fds.load_split(split) for split in ("train", "public", "test"))
    except DataConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (any failure to read user files or the hub)
        cause = err.__cause__ or err.__context__  # datasets wraps the reader's error in a generic one
        reason = f"{type(err).__name__}: {err}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        raise DataConfigError(key, f"cannot load {where}: {reason}") from err
    columns = [c for c in train.column_names if c != ROW]
    _require(columns, [cfg.label_column], "label-column", where)
    _require(columns, cfg.feature_columns, "feature-column", where)
    if partition_by is not None:
        _require(columns, [partition_by], "partitioner-args", where, "partition_by: ")
    chosen = cfg.feature_columns or _auto_features(train, columns, cfg.label_column, partition_by)
    _require(test.column_names, [*chosen, cfg.label_column], key, f"the test split of {where}")
    full = datasets.concatenate_datasets([train, public])
    full = full.select(np.argsort(np.asarray(full[ROW])))  # original row order
    with blame("feature-column"):
        train_x, test_x = from_dataset(full, chosen), from_dataset(test, chosen)
    with blame("label-column"):
        values, names = labels_of(full, cfg.label_column)
        encoder = LabelEncoder.fit(values, names)
        train_y = encoder.encode(values, "train")
        test_y = encoder.encode(labels_of(test, cfg.label_column)[0], "test")
    parts = _partition_rows(cfg, fds.partitioners["train"], fds.load_partition)
    return train_x, train_y, test_x, test_y, encoder, parts


def _from_arrays(cfg: DataConfig, partitioner: Partitioner, partition_by: str | None) -> _Loaded:
    """npz files or a loader's arrays, partitioned by the same partitioners on their labels."""
    import datasets  # noqa: PLC0415

    key = cfg.location_key
    name = type(partitioner).__name__
    if "NaturalId" in name or partition_by not in (None, cfg.label_column):
        raise DataConfigError(
            "partitioner", f"{name} reads column {partition_by!r}, but {cfg.source} data has features "
            "and labels only (no id column)",
        )
    if cfg.feature_columns:
        raise DataConfigError("feature-column", f"{cfg.source} data has no columns to choose from")
    splits = _npz_arrays(cfg) if cfg.source == "npz" else _loader_arrays(cfg)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    with blame(key):
        train_x, test_x = from_array(x_train), from_array(x_test)
        encoder = LabelEncoder.fit(y_train)
        train_y, test_y = encoder.encode(y_train, "train"), encoder.encode(y_test, "test")
    labels = datasets.DatasetDict(train=datasets.Dataset.from_dict({cfg.label_column: train_y}))
    tables = _resplit(labels, cfg.holdout_fraction, cfg.seed)
    partitioner.dataset = tables["train"]
    parts = _partition_rows(cfg, partitioner, partitioner.load_partition)
    return train_x, train_y, test_x, test_y, encoder, parts


def _resplit(tables: datasets.DatasetDict, fraction: float, seed: int) -> datasets.DatasetDict:
    """Train rows numbered (``ROW``); the held-out ones become "public", the rest are permuted by seed."""
    import datasets  # noqa: PLC0415

    train = tables["train"].add_column(ROW, np.arange(len(tables["train"]), dtype=np.int64))
    held = holdout_indices(len(train), fraction)
    keep = np.setdiff1d(np.arange(len(train)), held)
    out = dict(tables) | {"train": train.select(np.random.default_rng(seed).permutation(keep)),
                          "public": train.select(held)}
    return datasets.DatasetDict(out)


def _partition_rows(
    cfg: DataConfig, partitioner: Partitioner, load: Callable[[int], Any]
) -> tuple[np.ndarray, ...]:
    """Sorted original train rows of each partition."""
    name = type(partitioner).__name__
    try:
        with _quiet():
            count = partitioner.num_partitions
            if count != cfg.num_partitions:
                raise DataConfigError(
                    "num-partitions", f"{name} makes {count} partitions of this data (one per distinct "
                    f"id for natural-id partitioners) but num-partitions is {cfg.num_partitions}; "
                    f"set num-partitions = {count}",
                )
            parts = tuple(np.sort(np.asarray(load(i)[ROW], dtype=np.int64)) for i in range(count))
    except DataConfigError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise DataConfigError("partitioner", f"{name} cannot split the train split: {err}") from err
    empty = [i for i, part in enumerate(parts) if part.size == 0]
    if empty:
        raise DataConfigError("partitioner", f"{name} leaves partitions {empty[:10]} empty")
    return parts


def _npz_arrays(cfg: DataConfig) -> Arrays:
    """One Keras-style file (x_train, y_train, x_test, y_test), or one file per split (x, y)."""
    files = cfg.files
    if not cfg.data_files.strip().startswith("{"):
        path = files["train"][0]
        x_train, y_train, x_test, y_test = _read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
        with blame("data-files"):
            return check_arrays({"train": (x_train, y_train), "test": (x_test, y_test)}, path)
    out = {split: _read_npz(paths[0], ("x", "y")) for split, paths in files.items()}
    with blame("data-files"):
        return check_arrays(out, cfg.data_files)


def _read_npz(path: str, names: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    if not Path(path).is_file():
        raise DataConfigError("data-files", f"no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [name for name in names if name not in arrays.files]
            if missing:
                have, lack = ", ".join(arrays.files), ", ".join(missing)
                raise DataConfigError("data-files", f"{path} has no array {lack} (arrays: {have})")
            return tuple(np.asarray(arrays[name]) for name in names)
    except DataConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        reason = f"{type(err).__name__}: {err}"
        raise DataConfigError("data-files", f"{path}: cannot read npz ({reason})") from err


def _loader_arrays(cfg: DataConfig) -> Arrays:
    loader = loader_of(cfg.dataset)
    try:
        arrays = loader(cfg)
    except DataConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (a user's loader may fail any way)
        reason = f"{type(err).__name__}: {err}"
        raise DataConfigError("dataset", f"loader {cfg.dataset!r} failed: {reason}") from err
    with blame("dataset"):
        return check_arrays(arrays, f"loader {cfg.dataset!r}")




# ----------------------------------------------------------------------------- helpers



def _require(columns: list[str], needed: list[str], key: str, where: str, prefix: str = "") -> None:
    missing = [name for name in needed if name not in columns]
    if missing:
        raise DataConfigError(key, f"{prefix}no column {', '.join(map(repr, missing))} in {where} "
                                   f"(columns: {', '.join(columns)})")


def _auto_features(
    table: datasets.Dataset, columns: list[str], label: str, partition_by: str | None
) -> list[str]:
    """The image column, else every column but the label and the partitioner's id column."""
    image = image_column(table)
    if image is not None:
        return [image]
    chosen = [name for name in columns if name not in (label, partition_by)]
    if not chosen:
        raise DataConfigError("feature-column", f"no column besides {label!r} to use as features")
    return chosen


def _train_rows(n: int, fraction: float, split: str) -> np.ndarray:
    held = holdout_indices(n, fraction)
    return held if split == "public" else np.setdiff1d(np.arange(n), held)


def _check_id(partition_id: int, count: int) -> None:
    is_int = isinstance(partition_id, int | np.integer) and not isinstance(partition_id, bool)
    if not (is_int and 0 <= partition_id < count):
        raise ValueError(f"partition_id must be an int in [0, {count}), got {partition_id!r}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence pyarrow's sort deprecation and flwr-datasets' per-redraw Dirichlet warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="The specified min_partition_size")
        yield
