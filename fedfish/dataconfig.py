"""What a run's data is: the data settings of a run config, checked, and the dataset registry.

``DataConfig`` holds the run-config keys that decide a run's data (``RUN_CONFIG_KEYS``);
its checks need no data. ``register_dataset`` adds a loader under a name. Loading,
converting and partitioning live in ``fedfish.datasource``.
"""

from __future__ import annotations

import contextlib
import glob
import math
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from fedfish import data
from fedfish.plugins import resolve

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]
Loader = Callable[["DataConfig"], Arrays]

LOCAL_BUILDERS: tuple[str, ...] = ("parquet", "csv", "json", "imagefolder")
# DataConfig field -> run-config key.
RUN_CONFIG_KEYS: dict[str, str] = {
    "dataset": "dataset", "data_files": "data-files", "data_dir": "data-dir",
    "feature_column": "feature-column", "label_column": "label-column",
    "partitioner": "partitioner", "partitioner_args": "partitioner-args",
    "num_partitions": "num-partitions", "alpha": "alpha",
    "classes_per_partition": "classes-per-partition", "holdout_fraction": "holdout-fraction",
    "seed": "seed", "root": "data-root",
}
_REGISTRY: dict[str, Loader] = {}


class DataConfigError(ValueError):
    """A data setting that cannot work; the message starts with its run-config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class DataConfig:
    """Where a run's data comes from and how it is partitioned (run-config keys in brackets).

    Parameters
    ----------
    dataset : str, default "fashion-mnist"
        [dataset] A built-in, a registered name, ``"npz"``, ``"package.module:callable"``,
        a local builder (``LOCAL_BUILDERS``) or a Hugging Face hub id.
    data_files : str, default ""
        [data-files] TOML inline table split -> path/glob or list of them, e.g.
        ``"{train = '/d/train.parquet', test = '/d/test.parquet'}"``; a bare path or
        glob means ``{train = <it>}`` (for ``"npz"``: one file with all four arrays).
    data_dir : str, default ""
        [data-dir] Directory for ``"imagefolder"`` (splits from ``train/`` and ``test/``).
    feature_column : str, default ""
        [feature-column] Comma-separated columns; "" = the image column if any,
        else every column but the label and the partitioner's id column.
    label_column : str, default "label"
        [label-column]
    partitioner : str, default "dirichlet"
        [partitioner] ``iid``, ``dirichlet``, ``pathological``, ``shard`` or a class
        name of ``flwr_datasets.partitioner``.
    partitioner_args : str, default ""
        [partitioner-args] TOML inline table of extra constructor arguments.
    num_partitions : int, default 10
        [num-partitions] >= 1; must equal the count a natural-id partitioner finds.
    alpha : float, default 0.5
        [alpha] Dirichlet concentration, > 0.
    classes_per_partition : int, default 2
        [classes-per-partition] Pathological only, >= 1.
    holdout_fraction : float, default 0.0
        [holdout-fraction] Public split no client holds, in [0, 1).
    seed : int, default 0
        [seed] >= 0.
    root : str, default ""
        [data-root] Built-ins only: a directory that must hold the data.
    """

    dataset: str = "fashion-mnist"
    data_files: str = ""
    data_dir: str = ""
    feature_column: str = ""
    label_column: str = "label"
    partitioner: str = "dirichlet"
    partitioner_args: str = ""
    num_partitions: int = 10
    alpha: float = 0.5
    classes_per_partition: int = 2
    holdout_fraction: float = 0.0
    seed: int = 0
    root: str = ""

    def __post_init__(self) -> None:
        kinds: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, kinds[str(field.type)]):
                raise DataConfigError(RUN_CONFIG_KEYS[field.name], f"must be a {field.type}, got {value!r}")
        for name, ok, rule in (
            ("dataset", bool(self.dataset.strip()), "must not be empty"),
            ("label_column", bool(self.label_column.strip()), "must not be empty"),
            ("partitioner", bool(self.partitioner.strip()), "must not be empty"),
            ("num_partitions", self.num_partitions >= 1, "must be >= 1"),
            ("alpha", math.isfinite(self.alpha) and self.alpha > 0, "must be a finite number > 0"),
            ("classes_per_partition", self.classes_per_partition >= 1, "must be >= 1"),
            ("holdout_fraction", 0.0 <= self.holdout_fraction < 1.0, "must be in [0, 1)"),
            ("seed", self.seed >= 0, "must be >= 0"),
        ):
            if not ok:
                raise DataConfigError(RUN_CONFIG_KEYS[name], f"{rule}, got {getattr(self, name)!r}")
        self.partitioner_kwargs  # noqa: B018  (parses, raising on a bad table)
        self._check_source()

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> DataConfig:
        """The keys of ``RUN_CONFIG_KEYS`` present in a run config (others are ignored)."""
        return cls(**{name: run_config[key] for name, key in RUN_CONFIG_KEYS.items() if key in run_config})

    @property
    def source(self) -> str:
        """``builtin``, ``registered``, ``npz``, ``loader``, ``builder`` or ``hub``."""
        if self.dataset in data.DATASETS:
            return "builtin"
        if self.dataset in _REGISTRY:
            return "registered"
        if self.dataset == "npz":
            return "npz"
        if ":" in self.dataset:
            return "loader"
        return "builder" if self.dataset in LOCAL_BUILDERS else "hub"

    @property
    def files(self) -> dict[str, list[str]]:
        """``data_files`` parsed: split -> paths/globs (``~`` expanded)."""
        text = self.data_files.strip()
        if not text:
            return {}
        table = _inline_table(text, "data-files") if text.startswith("{") else {"train": text}
        files = {}
        for split, value in table.items():
            paths = [value] if isinstance(value, str) else value
            if not (isinstance(paths, list) and paths and all(isinstance(p, str) and p for p in paths)):
                raise DataConfigError("data-files", f"split {split!r} must map to a path or a list of paths, "
                                                    f"got {value!r}")
            files[split] = [str(Path(p).expanduser()) if "://" not in p else p for p in paths]
        return files

    @property
    def partitioner_kwargs(self) -> dict[str, Any]:
        """``partitioner_args`` parsed."""
        text = self.partitioner_args.strip()
        return _inline_table(text, "partitioner-args") if text else {}

    @property
    def feature_columns(self) -> list[str]:
        """``feature_column`` split at commas; empty for automatic choice."""
        return [name.strip() for name in self.feature_column.split(",") if name.strip()]

    @property
    def location_key(self) -> str:
        """The run-config key that says where the data is (blamed when it cannot be read)."""
        if self.source == "npz" or (self.source == "builder" and self.files):
            return "data-files"
        return "data-dir" if self.data_dir else "dataset"

    def describe(self) -> str:
        """Where the data is, for messages: the dataset and its files or directory."""
        if self.source == "hub" and not self.files:
            return f"hub dataset {self.dataset!r}"
        return f"{self.dataset} {'files ' + str(self.files) if self.files else 'directory ' + self.data_dir}"

    def check_paths(self) -> None:
        """Every local path of ``data_files`` matches a file; ``data_dir`` is a directory holding files."""
        for split, paths in self.files.items():
            for path in paths:
                if "://" not in path and not glob.glob(path, recursive=True):
                    raise DataConfigError("data-files", f"no file matches {path!r} (split {split!r})")
        directory = Path(self.data_dir).expanduser()
        if self.data_dir and "://" not in self.data_dir:
            if not directory.is_dir():
                raise DataConfigError("data-dir", f"{directory} is not a directory")
            if not any(p.is_file() for p in directory.rglob("*")):
                raise DataConfigError("data-dir", f"{directory} holds no files")

    def _check_source(self) -> None:
        source, files = self.source, self.files
        if source == "builtin" and (files or self.data_dir):
            key = "data-files" if files else "data-dir"
            raise DataConfigError(key, f"built-in dataset {self.dataset!r} is read from data-root, not {key}")
        if source == "npz":
            if self.data_dir or not files:
                raise DataConfigError("data-files", "npz needs one .npz, or {train = 'a.npz', test = 'b.npz'}")
            table = self.data_files.strip().startswith("{")
            if (table and set(files) != {"train", "test"}) or any(len(p) != 1 for p in files.values()):
                raise DataConfigError("data-files", "npz takes one .npz file, or exactly {train = 'a.npz', "
                                                    f"test = 'b.npz'}}, got {self.data_files!r}")
        if source == "builder" and not (files or self.data_dir):
            raise DataConfigError("data-files", f"{self.dataset!r} reads local files: set data-files/data-dir")
        module, _, attr = self.dataset.partition(":")
        well_formed = all(part.isidentifier() for part in module.split(".")) and attr.isidentifier()
        if source == "loader" and not well_formed:
            raise DataConfigError("dataset", f"{self.dataset!r} is not of the form 'package.module:callable'")


@dataclass(frozen=True)
class DataInfo:
    """What a model and the server need to know about a run's data.

    Attributes
    ----------
    input_shape : tuple[int, ...]
        One example's features, e.g. (1, 28, 28) or (12,).
    num_classes : int
    partition_sizes : tuple[int, ...]
        Examples per partition (bounds what a client may claim as num-examples).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    partition_sizes: tuple[int, ...]


def register_dataset(name: str, loader: Loader) -> None:
    """Make ``dataset = name`` call ``loader(cfg)`` for ``{"train": (x, y), "test": (x, y)}``.

    Raises
    ------
    ValueError
        ``name`` is empty, contains ":", is a built-in, ``"npz"`` or a local builder,
        or is registered to another loader; or ``loader`` is not callable.
    """
    reserved = (*data.DATASETS, *LOCAL_BUILDERS, "npz")
    if not isinstance(name, str) or not name or ":" in name or name in reserved:
        raise ValueError(f"name must be a non-empty string without ':', not one of {reserved}; got {name!r}")
    if not callable(loader):
        raise ValueError(f"loader must be callable, got {loader!r}")
    if _REGISTRY.get(name, loader) is not loader:
        raise ValueError(f"name {name!r} is already registered to {_REGISTRY[name]!r}")
    _REGISTRY[name] = loader


def loader_of(spec: str) -> Loader:
    """The loader registered as ``spec``, else the callable ``"package.module:callable"`` names.

    Raises
    ------
    DataConfigError
        Naming ``dataset``: the module cannot be imported, or lacks a callable of that name.
    """
    try:
        loader = resolve(spec, _REGISTRY, "dataset")
    except ValueError as err:
        raise DataConfigError("dataset", str(err)) from err
    if not callable(loader):
        raise DataConfigError("dataset", f"{spec!r} is not callable")
    return loader  # type: ignore[return-value]


def _inline_table(text: str, key: str) -> dict[str, Any]:
    """``text`` parsed as a TOML inline table; nothing else (no extra keys smuggled in on new lines)."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError as err:
        parsed = {"error": str(err)}
    if set(parsed) != {"value"} or not isinstance(parsed["value"], dict):
        example = "\"{name = 'value', n = 2}\""
        raise DataConfigError(key, f"{text!r} is not a TOML inline table such as {example}")
    return parsed["value"]


@contextlib.contextmanager
def blame(key: str) -> Iterator[None]:
    """Re-raise a plain ValueError as a DataConfigError naming ``key``."""
    try:
        yield
    except DataConfigError:
        raise
    except ValueError as err:
        raise DataConfigError(key, str(err)) from err
