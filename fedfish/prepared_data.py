"""Every data source but the built-ins, read, converted and partitioned once per process.

:func:`prepare` turns a :class:`~fedfish.dataconfig.DataConfig` whose source is a
loader, ``npz`` files, local files (parquet, csv, json, imagefolder) or a Hugging Face
hub id into :class:`PreparedData`: the raw arrays of every train row (original order) and
of the test split, the standardiser fitted on the train rows, the class count, and the
rows of each partition. Local files and hub ids are read and partitioned by flwr-datasets'
``FederatedDataset``; loader and npz arrays go through the same partitioners on their
labels. The public split is ``holdout_indices(N, holdout-fraction)`` of the train split,
whatever the seed; the seed then permutes the remaining rows before partitioning. Every
fault is a ``DataConfigError`` naming the run-config key at fault.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedfish.dataconfig import Arrays, DataConfig, DataConfigError, blame, loader_of
from fedfish.features import (
    LabelEncoder, Standardiser, check_arrays, from_array, from_dataset, image_column, labels_of,
)
from fedfish.partition import holdout_indices, make_partitioner, partitioner_class

if TYPE_CHECKING:
    import datasets
    from flwr_datasets.partitioner import Partitioner

ROW = "__row__"  # original train row of each example, added before partitioning
# Raw train x, y, test x, y, their label encoder, and the partitions (rows of train).
_Loaded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, LabelEncoder, tuple[np.ndarray, ...]]


@dataclass(frozen=True)
class PreparedData:
    """Raw arrays of every train row (original order) and of the test split, and the partitions.

    ``scaler`` is fitted on the train rows; ``parts`` holds the sorted original train rows
    of each partition. The arrays are read-only: :meth:`tensors` converts copies.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    scaler: Standardiser
    num_classes: int
    parts: tuple[np.ndarray, ...]

    def tensors(self, split: str, rows: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised float32 features and int64 labels of ``split`` ("train" or "test"),
        at ``rows`` (None: all of them); fresh tensors, the raw arrays stay untouched."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        if rows is not None:
            x, y = x[rows], y[rows]
        return self.scaler.apply(x), torch.from_numpy(y.astype(np.int64, copy=True))


@functools.lru_cache(maxsize=4)
def prepare(cfg: DataConfig) -> PreparedData:
    """Read, convert and partition ``cfg``'s data once per process (cached by config).

    Raises
    ------
    DataConfigError
        Naming the run-config key at fault (files, columns, partitioner, loader).
    """
    partitioner, partition_by = _partitioner(cfg)
    load = _from_federated_dataset if cfg.source in ("builder", "hub") else _from_arrays
    train_x, train_y, test_x, test_y, encoder, parts = load(cfg, partitioner, partition_by)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataConfigError(cfg.location_key, f"test features have shape {test_x.shape[1:]}, "
                                                f"train features {train_x.shape[1:]}")
    for array in (train_x, train_y, test_x, test_y, *parts):
        array.flags.writeable = False
    scaler = Standardiser.fit(train_x)
    return PreparedData(train_x, train_y, test_x, test_y, scaler, encoder.num_classes, parts)


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence pyarrow's sort deprecation and flwr-datasets' per-redraw Dirichlet warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="The specified min_partition_size")
        yield
