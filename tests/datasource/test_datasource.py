"""Tests for fedfish.datasource: every kind of source, partitions and conversion (errors and config
checks: test_datasource_errors.py).

The datasets are tiny and written here (parquet, csv, imagefolder PNGs, npz, a loader
module); the oracles are numpy/pandas computations on what was written.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fedfish import data, datasource
from fedfish.datasource import DataConfig, data_info, load_partition, load_split
from fedfish.partition import holdout_indices
from tests.datasource.tables import FEATURES, N_CLASSES, N_TRAIN, N_WRITERS, data_files_table, parquet_config

IMAGES_PER_CLASS = {"train": 12, "test": 4}


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
    cfg = parquet_config(tabular, partitioner=partitioner, holdout_fraction=0.1, seed=3)
    oracle = _standardised(tabular.train[FEATURES].to_numpy(), tabular.train[FEATURES].to_numpy(), (0,))
    held = holdout_indices(N_TRAIN, 0.1)

    # Execute
    parts = [_rows(load_partition(cfg, pid)[0], oracle) for pid in range(5)]
    public = _rows(load_split(cfg, "public")[0], oracle)
    datasource.clear_cache()
    again = [_rows(load_partition(cfg, pid)[0], oracle) for pid in range(5)]
    other_seed = [_rows(load_partition(parquet_config(tabular, partitioner=partitioner, holdout_fraction=0.1, seed=4),
                                       pid)[0], oracle) for pid in range(5)]
    other_public = _rows(load_split(parquet_config(tabular, holdout_fraction=0.1, seed=4), "public")[0], oracle)

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
    cfg = DataConfig(dataset="json", data_files=data_files_table(tmp_path, "jsonl"), label_column="kind", partitioner="iid",
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
    cfg = DataConfig(dataset="parquet", data_files=data_files_table(tmp_path, "parquet"), feature_column=feature_column,
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
    cfg = parquet_config(tabular, partitioner="iid")
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
    cfg = DataConfig(dataset="npz", data_files=data_files_table(tmp_path, "npz"), partitioner="iid", num_partitions=3)

    # Execute
    info = data_info(cfg)
    _, y = load_split(cfg, "test")

    # Assert
    assert info.input_shape == (5,) and info.num_classes == 3 and info.partition_sizes == (10, 10, 10)
    np.testing.assert_array_equal(y.numpy(), [1, 0, 2] * 3)


def _toy_loader(cfg: DataConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": (np.eye(12), np.arange(12) % 4), "test": (np.eye(12)[:4], np.arange(4))}


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
