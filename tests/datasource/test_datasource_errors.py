"""Tests for fedfish.datasource's refusals: every bad source or setting fails its check with an
error naming the key at fault, and DataConfig refuses bad values (hypothesis for the TOML tables)."""

from __future__ import annotations

import gzip
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedfish import dataset_files, datasource
from fedfish.datasource import DataConfig, DataConfigError, load_partition, load_split
from tests.datasource.tables import Tabular, parquet_config

# The autouse fixture of conftest.py is function-scoped; the DataConfig properties never touch it.
NO_FIXTURE_CHECK = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ----------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Env:
    """What the error cases build on: the tabular data, an empty directory, a tiny Fashion-MNIST."""

    tabular: Tabular
    dir: Path
    fmnist: Path


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _tabular_files(env: Env, suffix: str = ".parquet", garbage: bool = False) -> str:
    for split in ("train", "test"):
        frame = getattr(env.tabular, split)
        if suffix == ".parquet":
            frame.to_parquet(env.dir / f"{split}{suffix}", index=False)
        else:
            (env.dir / f"{split}{suffix}").write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    if garbage:
        (env.dir / f"train{suffix}").write_bytes(b"not a parquet file at all")
    if suffix == ".csv.gz":
        _truncate(env.dir / "train.csv.gz", 300)
    return f"{{train = '{env.dir}/train{suffix}', test = '{env.dir}/test{suffix}'}}"


def _npz(env: Env, drop: str = "", truncate: bool = False, **arrays: np.ndarray) -> str:
    content = {"x_train": np.zeros((6, 2)), "y_train": np.arange(6) % 2, "x_test": np.ones((2, 2)),
               "y_test": np.array([0, 1])} | arrays
    path = env.dir / "k.npz"
    np.savez(path, **{k: v for k, v in content.items() if k != drop})
    if truncate:
        _truncate(path, path.stat().st_size // 2)
    return str(path)


def _fmnist(env: Env, **kwargs) -> DataConfig:
    return DataConfig(dataset="fashion-mnist", root=str(env.fmnist), **kwargs)


def _empty_root(env: Env) -> DataConfig:
    (env.dir / "empty-root").mkdir()
    return DataConfig(dataset="fashion-mnist", root=str(env.dir / "empty-root"))


def _truncated_idx(env: Env) -> DataConfig:
    _truncate(env.fmnist / "t10k-images-idx3-ubyte.gz", 200)
    return _fmnist(env)


ERROR_CASES: list[tuple[str, Callable[[Env], DataConfig], str]] = [
    ("missing label column", lambda e: parquet_config(e.tabular, label_column="digit"),
     r"^label-column: no column 'digit' in parquet files .*train\.parquet.*\(columns: x0, x1"),
    ("missing feature column", lambda e: parquet_config(e.tabular, feature_column="x0,height"),
     r"^feature-column: no column 'height'"),
    ("unknown partitioner", lambda e: parquet_config(e.tabular, partitioner="Foo"),
     r"^partitioner: unknown partitioner 'Foo'; known: iid, .*NaturalIdPartitioner"),
    ("bad partitioner argument", lambda e: parquet_config(e.tabular, partitioner_args="{foo = 1}"),
     r"^partitioner-args: DirichletPartitioner takes no argument foo"),
    ("missing partitioner argument", lambda e: parquet_config(e.tabular, partitioner="SizePartitioner"),
     r"^partitioner-args: SizePartitioner\(\): .*missing .*'partition_sizes'"),
    ("id column missing", lambda e: parquet_config(e.tabular, partitioner="NaturalIdPartitioner",
                                             partitioner_args="{partition_by = 'author'}"),
     r"^partitioner-args: partition_by: no column 'author'"),
    ("natural ids vs num-partitions", lambda e: parquet_config(e.tabular, partitioner="NaturalIdPartitioner",
                                                         partitioner_args="{partition_by = 'writer_id'}"),
     r"^num-partitions: NaturalIdPartitioner makes 8 partitions .* set num-partitions = 8"),
    ("infeasible partitioner",
     lambda e: parquet_config(e.tabular, partitioner="pathological", classes_per_partition=5),
     r"^partitioner: PathologicalPartitioner cannot split"),
    ("no such file", lambda e: DataConfig(dataset="parquet", data_files=f"{e.dir}/nope/*.parquet"),
     r"^data-files: no file matches '.*nope/\*\.parquet' \(split 'train'\)"),
    ("unreadable parquet", lambda e: DataConfig(dataset="parquet", data_files=_tabular_files(e, garbage=True)),
     r"^data-files: cannot load parquet files .*train\.parquet.*ArrowInvalid"),
    ("truncated csv.gz", lambda e: DataConfig(dataset="csv", data_files=_tabular_files(e, ".csv.gz")),
     r"^data-files: cannot load csv files .*train\.csv\.gz.*DatasetGenerationError.*"
     r"\(EOFError: Compressed file ended"),
    ("no test split", lambda e: DataConfig(dataset="parquet", data_files=_tabular_files(e).split("'")[1]),
     r"^data-files: parquet files .* has no test split \(splits: train\)"),
    ("unseen test label", lambda e: DataConfig(dataset="npz", data_files=_npz(e, y_test=np.array([0, 9]))),
     r"^data-files: test labels \[9\] never occur in the train split"),
    ("NaN features", lambda e: DataConfig(dataset="npz", data_files=_npz(e, x_train=np.full((6, 2), np.nan))),
     r"^data-files: features hold NaN"),
    ("empty data dir", lambda e: DataConfig(dataset="imagefolder", data_dir=str(e.dir)),
     r"^data-dir: .* holds no files"),
    ("missing data dir", lambda e: DataConfig(dataset="imagefolder", data_dir=f"{e.dir}/absent"),
     r"^data-dir: .*absent is not a directory"),
    ("npz lacks arrays", lambda e: DataConfig(dataset="npz", data_files=_npz(e, drop="x_test")),
     r"^data-files: .*k\.npz has no array x_test \(arrays: x_train, y_train, y_test\)"),
    ("truncated npz", lambda e: DataConfig(dataset="npz", data_files=_npz(e, truncate=True)),
     r"^data-files: .*k\.npz: cannot read npz"),
    ("npz has no ids",
     lambda e: DataConfig(dataset="npz", data_files=_npz(e), partitioner="NaturalIdPartitioner"),
     r"^partitioner: NaturalIdPartitioner reads column 'label', but npz data has features and labels only"),
    ("module missing", lambda e: DataConfig(dataset="no_such_pkg.mod:fn"),
     r"^dataset: dataset 'no_such_pkg\.mod:fn': cannot import 'no_such_pkg\.mod': ModuleNotFoundError"),
    ("attribute missing", lambda e: DataConfig(dataset="fedfish.data:no_such_loader"),
     r"^dataset: dataset 'fedfish\.data:no_such_loader': 'fedfish\.data' has no attribute 'no_such_loader'"),
    ("loader gives no test", lambda e: DataConfig(dataset="user_loaders:broken"),
     r"^dataset: loader 'user_loaders:broken' must give .*got keys \['train'\]"),
    ("loader raises", lambda e: DataConfig(dataset="user_loaders:failing"),
     r"^dataset: loader 'user_loaders:failing' failed: OSError: disk on fire"),
    ("hub unreachable", lambda e: DataConfig(dataset="someone/absent"),
     r"^dataset: cannot load hub dataset 'someone/absent': ConnectionError"),
    ("empty data-root", _empty_root, r"^data-root: .*empty-root holds no fashion-mnist files"),
    ("truncated IDX .gz", _truncated_idx,
     r"^data-root: .*t10k-images-idx3-ubyte\.gz: truncated or corrupt gzip"),
    ("built-in with a class name", lambda e: _fmnist(e, partitioner="NaturalIdPartitioner"),
     r"^partitioner: built-in dataset 'fashion-mnist' takes one of iid"),
    ("built-in partitioner-args", lambda e: _fmnist(e, partitioner_args="{alpha = 2}"),
     r"^partitioner-args: built-in datasets take only min_partition_size"),
    ("built-in bad classes", lambda e: _fmnist(e, partitioner="pathological", classes_per_partition=11),
     r"^classes-per-partition: classes_per_partition must be in \[1, 10\]"),
]


def _offline(load_dataset: Callable) -> Callable:
    """``datasets.load_dataset`` as it fails without a network, for hub ids only."""

    def load(path: str, *args, **kwargs) -> datasets.DatasetDict:
        if "/" in path:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (offline)")
        return load_dataset(path, *args, **kwargs)

    return load


@pytest.mark.parametrize(("make", "match"), [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_check_names_the_key_at_fault(
    tabular, tiny_fmnist_dir, loader_module, tmp_path, monkeypatch, make: Callable[[Env], DataConfig], match
) -> None:
    # Prepare: no Fashion-MNIST outside the tiny copy; no network.
    monkeypatch.setattr(dataset_files, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(dataset_files, "DEFAULT_ROOT", tmp_path / "no-default-root")
    monkeypatch.delenv(dataset_files.DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", _offline(datasets.load_dataset))
    (tmp_path / "case").mkdir()
    cfg = make(Env(tabular, tmp_path / "case", tiny_fmnist_dir.root))

    # Execute / Assert
    with pytest.raises(DataConfigError, match=match):
        datasource.check(cfg)


def test_root_with_data_elsewhere_is_refused(tiny_fmnist_dir, tmp_path, monkeypatch) -> None:
    # Prepare: fedfish.dataset_files.locate itself would fall back to $FEDFISH_DATA.
    monkeypatch.setenv(dataset_files.DATA_ENV, str(tiny_fmnist_dir.root))
    empty = tmp_path / "empty-root"
    empty.mkdir()

    # Execute / Assert
    with pytest.raises(DataConfigError, match=rf"^data-root: {empty} holds no fashion-mnist files \(found "):
        datasource.check(DataConfig(dataset="fashion-mnist", root=str(empty)))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda cfg: load_partition(cfg, 5), ValueError, r"partition_id must be an int in \[0, 5\), got 5"),
        (lambda cfg: load_partition(cfg, True), ValueError, r"partition_id must be an int"),
        (lambda cfg: load_split(cfg, "validation"), ValueError, "split must be one of"),
        (lambda cfg: load_split(cfg, "public"), DataConfigError, r"^holdout-fraction: is 0"),
    ],
)
def test_bad_arguments_are_refused(tabular, call, error, match: str) -> None:
    with pytest.raises(error, match=match):
        call(parquet_config(tabular, partitioner="iid"))


# ----------------------------------------------------------------------------- DataConfig


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_partitions": 0}, r"^num-partitions: must be >= 1"),
        ({"alpha": 0.0}, r"^alpha: must be a finite number > 0"),
        ({"alpha": float("nan")}, r"^alpha: must be a finite"),
        ({"holdout_fraction": 1.0}, r"^holdout-fraction: must be in \[0, 1\)"),
        ({"seed": -1}, r"^seed: must be >= 0"),
        ({"classes_per_partition": 0}, r"^classes-per-partition: must be >= 1"),
        ({"num_partitions": 2.0}, r"^num-partitions: must be a int"),
        ({"num_partitions": True}, r"^num-partitions: must be a int"),
        ({"label_column": " "}, r"^label-column: must not be empty"),
        ({"dataset": "parquet"}, r"^data-files: 'parquet' reads local files"),
        ({"dataset": "npz"}, r"^data-files: npz needs"),
        ({"dataset": "npz", "data_files": "{train = 'a.npz'}"}, r"^data-files: npz takes one \.npz file, or"),
        ({"data_files": "/d/x.parquet"}, r"^data-files: built-in dataset 'fashion-mnist' is read from"),
        ({"dataset": "csv", "data_files": "{train = 3}"}, r"^data-files: split 'train' must map to a path"),
        ({"dataset": "csv", "data_files": "{train = 'a.csv'"}, r"^data-files: .* is not a TOML inline table"),
        ({"dataset": "my.module:"}, r"^dataset: 'my\.module:' is not of the form 'package\.module:callable'"),
    ],
)
def test_dataconfig_rejects_bad_values(kwargs, match: str) -> None:
    with pytest.raises(DataConfigError, match=match):
        DataConfig(**kwargs)


@given(text=st.text(min_size=1).filter(lambda s: s.strip() and not s.strip().startswith("{")))
@NO_FIXTURE_CHECK
def test_partitioner_args_that_are_not_tables_are_refused(text: str) -> None:
    with pytest.raises(DataConfigError, match=r"^partitioner-args: "):
        DataConfig(partitioner_args=text)


@given(text=st.text(alphabet=string.printable).map(lambda s: "{" + s.replace("}", "")))
@NO_FIXTURE_CHECK
def test_unclosed_tables_are_refused(text: str) -> None:
    with pytest.raises(DataConfigError, match=r"^partitioner-args: "):
        DataConfig(partitioner_args=text)


@given(table=st.dictionaries(
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    st.one_of(st.integers(-10**6, 10**6), st.text(alphabet=string.ascii_letters + " _-'"),
              st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
    max_size=5,
))
@NO_FIXTURE_CHECK
def test_partitioner_args_tables_round_trip(table: dict) -> None:
    # Prepare: TOML values written by hand (json.dumps quotes strings as TOML basic strings).
    def toml(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return json.dumps(value) if isinstance(value, str) else repr(value)

    text = "{" + ", ".join(f"{key} = {toml(value)}" for key, value in table.items()) + "}"

    # Execute
    cfg = DataConfig(partitioner_args=text)

    # Assert
    assert cfg.partitioner_kwargs == table


def test_from_run_config_reads_kebab_keys_and_ignores_others() -> None:
    # Prepare
    run_config = {"dataset": "csv", "data-files": "/d/*.csv", "label-column": "y", "num-partitions": 4,
                  "alpha": 1, "holdout-fraction": 0.1, "data-root": "", "lr": 0.05, "partitioner-args": ""}

    # Execute
    cfg = DataConfig.from_run_config(run_config)

    # Assert
    assert cfg == DataConfig(dataset="csv", data_files="/d/*.csv", label_column="y", num_partitions=4,
                             alpha=1.0, holdout_fraction=0.1)
    assert cfg.files == {"train": ["/d/*.csv"]}
    with pytest.raises(DataConfigError, match=r"^num-partitions: must be a int, got '4'"):
        DataConfig.from_run_config({"num-partitions": "4"})
