"""Tests for fedfish.datasource: every kind of source, partitions, conversion, errors, config checks.

The datasets are tiny and written here (parquet, csv, imagefolder PNGs, npz, a loader
module); the oracles are numpy/pandas computations on what was written.
"""

from __future__ import annotations

import gzip
import json
import string
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import flwr_datasets.common.telemetry
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fedfish import data, dataset_files, datasource
from fedfish.datasource import DataConfig, DataConfigError, data_info, load_partition, load_split
from fedfish.partition import holdout_indices

FEATURES = [f"x{i}" for i in range(6)]
N_TRAIN, N_TEST, N_WRITERS, N_CLASSES = 200, 40, 8, 4
IMAGES_PER_CLASS = {"train": 12, "test": 4}
# The autouse fixture below is function-scoped; the DataConfig properties never touch it.
NO_FIXTURE_CHECK = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def _offline_quiet_hf(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """HF cache in a temp dir, no progress bars, no flwr-datasets telemetry, fresh caches."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf-cache")
    monkeypatch.setattr(flwr_datasets.common.telemetry, "FLWR_TELEMETRY_ENABLED", "0")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    datasource.clear_cache()
    if bars:
        datasets.enable_progress_bars()


@dataclass(frozen=True)
class Tabular:
    """Tiny tabular data on disk: the frames written and their data-files strings."""

    train: pd.DataFrame
    test: pd.DataFrame
    parquet: str
    csv: str


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Tabular:
    """200 train / 40 test rows: 6 float features, 4 classes, 8 writers (25 train rows each)."""
    directory = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    frames = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        frame = pd.DataFrame(rng.normal(3.0, 2.0, size=(n, len(FEATURES))), columns=FEATURES)
        frame["label"] = rng.permutation(np.arange(n) % N_CLASSES)
        frame["writer_id"] = rng.permutation(np.arange(n) % N_WRITERS)
        frame.to_parquet(directory / f"{split}.parquet", index=False)
        frame.to_csv(directory / f"{split}.csv", index=False)
        frames[split] = frame
    return Tabular(frames["train"], frames["test"], _files(directory, "parquet"), _files(directory, "csv"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """imagefolder layout: train/ and test/ with cat/ and dog/ 8x8 RGB PNGs."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for split, n in IMAGES_PER_CLASS.items():
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def keras_npz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A Keras-style npz of 60 train / 12 test 8x8 greyscale images, labels 0..2."""
    rng = np.random.default_rng(2)
    arrays = {
        "x_train": rng.integers(0, 256, size=(60, 8, 8), dtype=np.uint8),
        "y_train": np.arange(60) % 3,
        "x_test": rng.integers(0, 256, size=(12, 8, 8), dtype=np.uint8),
        "y_test": np.arange(12) % 3,
    }
    path = tmp_path_factory.mktemp("npz") / "keras.npz"
    np.savez(path, **arrays)
    return path, arrays


def _files(directory: Path, ext: str) -> str:
    """The data-files table of ``train.<ext>`` and ``test.<ext>`` in ``directory``."""
    return f"{{train = '{directory}/train.{ext}', test = '{directory}/test.{ext}'}}"


def _parquet(tabular: Tabular, **kwargs) -> DataConfig:
    defaults = {"dataset": "parquet", "data_files": tabular.parquet, "feature_column": ",".join(FEATURES),
                "num_partitions": 5}
    return DataConfig(**defaults | kwargs)


def _standardised(train: np.ndarray, other: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Oracle: ``other`` standardised with the train mean and population std over ``axes``."""
    mean, std = train.mean(axis=axes, keepdims=True), train.std(axis=axes, keepdims=True)
    return (other - mean) / std


def _rows(x: torch.Tensor, oracle: np.ndarray) -> np.ndarray:
    """Which oracle row each row of ``x`` is (each must match one to 1e-5)."""
    got, want = x.numpy().reshape(len(x), 1, -1), oracle.reshape(1, len(oracle), -1)
    distance = np.abs(got - want).max(axis=2)
    assert distance.min(axis=1).max() < 1e-5
    return distance.argmin(axis=1)


# ----------------------------------------------------------------------------- tabular


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tabular_shapes_dtypes_and_standardisation(tabular, fmt: str) -> None:
    # Prepare
    cfg = DataConfig(dataset=fmt, data_files=getattr(tabular, fmt), feature_column=",".join(FEATURES),
                     partitioner="iid", num_partitions=4)
    train, test = tabular.train[FEATURES].to_numpy(), tabular.test[FEATURES].to_numpy()

    # Execute
    info = data_info(cfg)
    x_train, y_train = load_split(cfg, "train")
    x_test, y_test = load_split(cfg, "test")
    x0, y0 = load_partition(cfg, 0)

    # Assert
    assert info.input_shape == (6,) and info.num_classes == N_CLASSES and sum(info.partition_sizes) == N_TRAIN
    assert x0.dtype == torch.float32 and y0.dtype == torch.int64 and x0.shape == (info.partition_sizes[0], 6)
    np.testing.assert_allclose(x_train.numpy(), _standardised(train, train, (0,)), atol=1e-5)
    np.testing.assert_allclose(x_test.numpy(), _standardised(train, test, (0,)), atol=1e-5)
    np.testing.assert_array_equal(y_train.numpy(), tabular.train["label"])
    np.testing.assert_array_equal(y_test.numpy(), tabular.test["label"])


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological", "shard", "LinearPartitioner"])
def test_partitions_disjoint_cover_non_holdout_rows_and_follow_the_seed(tabular, partitioner: str) -> None:
    # Prepare
    cfg = _parquet(tabular, partitioner=partitioner, holdout_fraction=0.1, seed=3)
    oracle = _standardised(tabular.train[FEATURES].to_numpy(), tabular.train[FEATURES].to_numpy(), (0,))
    held = holdout_indices(N_TRAIN, 0.1)

    # Execute
    parts = [_rows(load_partition(cfg, pid)[0], oracle) for pid in range(5)]
    public = _rows(load_split(cfg, "public")[0], oracle)
    datasource.clear_cache()
    again = [_rows(load_partition(cfg, pid)[0], oracle) for pid in range(5)]
    other_seed = [_rows(load_partition(_parquet(tabular, partitioner=partitioner, holdout_fraction=0.1, seed=4),
                                       pid)[0], oracle) for pid in range(5)]
    other_public = _rows(load_split(_parquet(tabular, holdout_fraction=0.1, seed=4), "public")[0], oracle)

    # Assert
    flat = np.concatenate(parts)
    assert len(np.unique(flat)) == len(flat)
    np.testing.assert_array_equal(np.sort(flat), np.setdiff1d(np.arange(N_TRAIN), held))
    assert not np.isin(held, flat).any()
    np.testing.assert_array_equal(public, held)
    np.testing.assert_array_equal(other_public, held)  # the public split ignores the seed
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(parts, other_seed, strict=True))


def test_natural_id_partitioner_gives_one_partition_per_writer(tabular) -> None:
    # Prepare: automatic features leave out the label and the id column.
    cfg = DataConfig(dataset="csv", data_files=tabular.csv, partitioner="NaturalIdPartitioner",
                     partitioner_args="{partition_by = 'writer_id'}", num_partitions=N_WRITERS)
    oracle = _standardised(tabular.train[FEATURES].to_numpy(), tabular.train[FEATURES].to_numpy(), (0,))
    groups = tabular.train.groupby("writer_id").indices  # writer -> rows, writers ascending

    # Execute
    info = data_info(cfg)
    parts = [np.sort(_rows(load_partition(cfg, pid)[0], oracle)) for pid in range(N_WRITERS)]

    # Assert
    assert info.input_shape == (len(FEATURES),)
    assert info.partition_sizes == tuple(len(rows) for rows in groups.values())
    for part, rows in zip(parts, groups.values(), strict=True):
        np.testing.assert_array_equal(part, np.sort(rows))


def test_string_labels_become_ids_by_sorted_name(tmp_path) -> None:
    # Prepare
    names = np.array(["zebra", "ant", "moth"])
    rng = np.random.default_rng(5)
    frames = {s: pd.DataFrame({"a": rng.normal(size=30), "kind": names[np.arange(30) % 3]})
              for s in ("train", "test")}
    for split, frame in frames.items():
        frame.to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
    cfg = DataConfig(dataset="json", data_files=_files(tmp_path, "jsonl"), label_column="kind", partitioner="iid",
                     num_partitions=3)

    # Execute
    _, y = load_split(cfg, "test")

    # Assert
    expected = np.searchsorted(np.array(["ant", "moth", "zebra"]), frames["test"]["kind"].to_numpy())
    np.testing.assert_array_equal(y.numpy(), expected)
    assert data_info(cfg).num_classes == 3


@pytest.mark.parametrize(("feature_column", "width"), [("vec", 4), ("x0", 1), ("", 5)])
def test_one_vector_column_or_chosen_scalar_columns_form_the_table(tmp_path, feature_column, width) -> None:
    # Prepare: a list column "vec" and a scalar "x0"; "" picks both (every column but the label).
    rng = np.random.default_rng(7)
    vectors = {s: rng.normal(size=(n, 4)) for s, n in (("train", 24), ("test", 8))}
    scalars = {s: rng.normal(size=len(v)) for s, v in vectors.items()}
    for split in ("train", "test"):
        labels = np.arange(len(scalars[split])) % 2
        frame = pd.DataFrame({"vec": list(vectors[split]), "x0": scalars[split], "label": labels})
        frame.to_parquet(tmp_path / f"{split}.parquet", index=False)
    cfg = DataConfig(dataset="parquet", data_files=_files(tmp_path, "parquet"), feature_column=feature_column,
                     partitioner="iid", num_partitions=2)
    chosen = {"vec": vectors, "x0": {s: v[:, None] for s, v in scalars.items()},
              "": {s: np.column_stack([vectors[s], scalars[s]]) for s in scalars}}
    table = chosen[feature_column]

    # Execute
    x, _ = load_split(cfg, "test")

    # Assert: list values are stored as float64 by pyarrow, so float32 precision is the bound.
    assert data_info(cfg).input_shape == (width,)
    np.testing.assert_allclose(x.numpy(), _standardised(table["train"], table["test"], (0,)), atol=1e-5)


def test_hub_ids_go_through_federated_dataset_to_load_dataset(tabular, monkeypatch) -> None:
    # Prepare: a stand-in for the hub (tests run offline).
    calls = []

    def fake_load_dataset(path: str, name: str | None = None, **kwargs) -> datasets.DatasetDict:
        calls.append((path, name, kwargs))
        return datasets.DatasetDict({s: datasets.Dataset.from_pandas(getattr(tabular, s))
                                     for s in ("train", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(dataset="someone/tabular", feature_column=",".join(FEATURES), partitioner="iid",
                     num_partitions=2)

    # Execute
    info = data_info(cfg)

    # Assert
    assert calls == [("someone/tabular", None, {})]
    assert info.input_shape == (6,) and info.partition_sizes == (100, 100)


def test_returned_tensors_do_not_alias_the_cache(tabular) -> None:
    # Prepare
    cfg = _parquet(tabular, partitioner="iid")
    x, y = load_partition(cfg, 1)
    expected_x, expected_y = x.clone(), y.clone()

    # Execute
    x.fill_(7.0)
    y.fill_(3)
    x2, y2 = load_partition(cfg, 1)

    # Assert
    assert torch.equal(x2, expected_x) and torch.equal(y2, expected_y)


# ----------------------------------------------------------------------------- images, npz, loaders


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_imagefolder_images_are_chw_and_standardised_per_channel(image_dir, tmp_path, mode, channels) -> None:
    # Prepare: the same pictures, converted to the mode under test; the oracle reads them back.
    root = tmp_path / "images"
    pixels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for path in sorted(image_dir.rglob("*.png")):
        target = root / path.relative_to(image_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert(mode).save(target)
        split, name = path.relative_to(image_dir).parts[:2]
        pixels[split].append(np.asarray(Image.open(target)).reshape(8, 8, channels).transpose(2, 0, 1) / 255.0)
        labels[split].append(["cat", "dog"].index(name))
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), partitioner="iid", num_partitions=2)
    train, test = np.stack(pixels["train"]), np.stack(pixels["test"])

    # Execute
    info = data_info(cfg)
    x, y = load_split(cfg, "test")

    # Assert
    assert info.input_shape == (channels, 8, 8) and info.num_classes == 2 and info.partition_sizes == (12, 12)
    expected = _standardised(train, test, (0, 2, 3))
    order = _rows(x, expected)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(test)))
    np.testing.assert_array_equal(y.numpy(), np.array(labels["test"])[order])


def test_keras_npz_is_read_partitioned_and_standardised(keras_npz) -> None:
    # Prepare
    path, arrays = keras_npz
    cfg = DataConfig(dataset="npz", data_files=str(path), partitioner="pathological", num_partitions=3,
                     classes_per_partition=1, holdout_fraction=0.25)
    train = arrays["x_train"][:, None] / 255.0

    # Execute
    info = data_info(cfg)
    x_test, y_test = load_split(cfg, "test")
    parts = [load_partition(cfg, pid) for pid in range(3)]

    # Assert
    assert info.input_shape == (1, 8, 8) and info.num_classes == 3 and sum(info.partition_sizes) == 45
    expected = _standardised(train, arrays["x_test"][:, None] / 255.0, (0, 2, 3))
    np.testing.assert_allclose(x_test.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(y_test.numpy(), arrays["y_test"])
    assert [set(y.tolist()) for _, y in parts] == [{0}, {1}, {2}]  # one class each


def test_npz_per_split_files_with_string_labels(tmp_path) -> None:
    # Prepare
    rng = np.random.default_rng(6)
    for split, n in (("train", 30), ("test", 9)):
        np.savez(tmp_path / f"{split}.npz", x=rng.normal(size=(n, 5)), y=np.array(["b", "a", "c"] * (n // 3)))
    cfg = DataConfig(dataset="npz", data_files=_files(tmp_path, "npz"), partitioner="iid", num_partitions=3)

    # Execute
    info = data_info(cfg)
    _, y = load_split(cfg, "test")

    # Assert
    assert info.input_shape == (5,) and info.num_classes == 3 and info.partition_sizes == (10, 10, 10)
    np.testing.assert_array_equal(y.numpy(), [1, 0, 2] * 3)


LOADER_MODULE = """
import numpy as np

def blobs(cfg):
    rng = np.random.default_rng(cfg.seed)
    return {split: (rng.normal(size=(n, 3)), np.arange(n) % 2) for split, n in (("train", 40), ("test", 10))}

def broken(cfg):
    return {"train": (np.zeros((4, 3)), np.zeros(4))}

def failing(cfg):
    raise OSError("disk on fire")
"""


def _toy_loader(cfg: DataConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": (np.eye(12), np.arange(12) % 4), "test": (np.eye(12)[:4], np.arange(4))}


@pytest.fixture
def loader_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user's module, importable as ``user_loaders``."""
    (tmp_path / "user_loaders.py").write_text(textwrap.dedent(LOADER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_loaders"


def test_callable_and_registered_loaders(loader_module) -> None:
    # Prepare
    datasource.register_dataset("toy-eye", _toy_loader)
    by_path = DataConfig(dataset=f"{loader_module}:blobs", partitioner="iid", num_partitions=4)
    by_name = DataConfig(dataset="toy-eye", partitioner="iid", num_partitions=3)

    # Execute
    path_info, name_info = data_info(by_path), data_info(by_name)
    x, y = load_split(by_name, "test")

    # Assert
    assert path_info == datasource.DataInfo((3,), 2, (10, 10, 10, 10))
    assert name_info == datasource.DataInfo((12,), 4, (4, 4, 4))
    np.testing.assert_array_equal(y.numpy(), np.arange(4))
    np.testing.assert_allclose(x.numpy(), _standardised(np.eye(12), np.eye(12)[:4], (0,)), atol=1e-6)


def test_register_dataset_refuses_reserved_and_taken_names() -> None:
    datasource.register_dataset("toy-eye", _toy_loader)  # the same loader again: fine
    for name in ("fashion-mnist", "npz", "parquet", "a:b", ""):
        with pytest.raises(ValueError, match="name must be"):
            datasource.register_dataset(name, _toy_loader)
    with pytest.raises(ValueError, match="already registered"):
        datasource.register_dataset("toy-eye", lambda cfg: {})


# ----------------------------------------------------------------------------- built-ins


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used")
@pytest.mark.parametrize(("partitioner", "holdout"), [("dirichlet", 0.0), ("iid", 0.2), ("pathological", 0.0)])
def test_builtin_partitions_equal_fedfish_data(tiny_fmnist_dir, partitioner: str, holdout: float) -> None:
    # Prepare
    cfg = DataConfig(dataset="fashion-mnist", root=str(tiny_fmnist_dir.root), partitioner=partitioner,
                     num_partitions=5, alpha=0.3, classes_per_partition=3, holdout_fraction=holdout, seed=2)

    for pid in range(5):
        # Execute
        x, y = load_partition(cfg, pid)
        x_ref, y_ref = data.load_partition(
            "fashion-mnist", pid, 5, partitioner, seed=2, root=tiny_fmnist_dir.root, holdout_fraction=holdout,
            alpha=0.3, classes_per_partition=3,
        )

        # Assert
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
        assert data_info(cfg).partition_sizes[pid] == len(y_ref)
    assert data_info(cfg).input_shape == (1, 28, 28) and data_info(cfg).num_classes == 10


def test_builtin_public_split_is_the_holdout_of_train(tiny_fmnist_dir) -> None:
    # Prepare
    cfg = DataConfig(dataset="fashion-mnist", root=str(tiny_fmnist_dir.root), holdout_fraction=0.1)
    x_all, y_all = data.load_images("fashion-mnist", "train", tiny_fmnist_dir.root)

    # Execute
    x, y = load_split(cfg, "public")

    # Assert
    index = torch.from_numpy(holdout_indices(100, 0.1))
    assert torch.equal(x, x_all[index]) and torch.equal(y, y_all[index])
    datasource.check(cfg)


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
    ("missing label column", lambda e: _parquet(e.tabular, label_column="digit"),
     r"^label-column: no column 'digit' in parquet files .*train\.parquet.*\(columns: x0, x1"),
    ("missing feature column", lambda e: _parquet(e.tabular, feature_column="x0,height"),
     r"^feature-column: no column 'height'"),
    ("unknown partitioner", lambda e: _parquet(e.tabular, partitioner="Foo"),
     r"^partitioner: unknown partitioner 'Foo'; known: iid, .*NaturalIdPartitioner"),
    ("bad partitioner argument", lambda e: _parquet(e.tabular, partitioner_args="{foo = 1}"),
     r"^partitioner-args: DirichletPartitioner takes no argument foo"),
    ("missing partitioner argument", lambda e: _parquet(e.tabular, partitioner="SizePartitioner"),
     r"^partitioner-args: SizePartitioner\(\): .*missing .*'partition_sizes'"),
    ("id column missing", lambda e: _parquet(e.tabular, partitioner="NaturalIdPartitioner",
                                             partitioner_args="{partition_by = 'author'}"),
     r"^partitioner-args: partition_by: no column 'author'"),
    ("natural ids vs num-partitions", lambda e: _parquet(e.tabular, partitioner="NaturalIdPartitioner",
                                                         partitioner_args="{partition_by = 'writer_id'}"),
     r"^num-partitions: NaturalIdPartitioner makes 8 partitions .* set num-partitions = 8"),
    ("infeasible partitioner",
     lambda e: _parquet(e.tabular, partitioner="pathological", classes_per_partition=5),
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
        call(_parquet(tabular, partitioner="iid"))


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
