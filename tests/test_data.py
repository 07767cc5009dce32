"""Tests for fedfish.data and fedfish.dataset_files: IDX/CIFAR loading, data search order, partitions, CLI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import data, dataset_files
from fedfish.data import DATASETS, load_images, load_partition
from fedfish.dataset_files import locate_fashion_mnist
from fedfish.partition import (
    PARTITIONERS, label_histogram, make_partitioner, partition_indices, partitioner_names,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _denormalize(x: torch.Tensor, dataset: str) -> np.ndarray:
    """Independent inverse of the loader's normalisation, back to uint8 pixels."""
    spec = DATASETS[dataset]
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8).numpy()


@pytest.fixture
def isolated_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $FEDFISH_DATA, ./data and the system directory pointed at empty places."""
    monkeypatch.delenv(dataset_files.DATA_ENV, raising=False)
    monkeypatch.setattr(dataset_files, "DEFAULT_ROOT", tmp_path / "default-root")
    monkeypatch.setattr(dataset_files, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "system")
    return tmp_path


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("split", ["train", "test"])
def test_fmnist_idx_round_trip(tiny_fmnist_dir, split: str) -> None:
    # Prepare
    images, labels = tiny_fmnist_dir.arrays[split]

    # Execute
    x, y = load_images("fashion-mnist", split, root=tiny_fmnist_dir.root)

    # Assert
    assert x.dtype == torch.float32 and x.shape == (len(labels), 1, 28, 28)
    assert y.dtype == torch.int64
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_array_equal(_denormalize(x, "fashion-mnist"), images)


def test_load_images_returns_tensors_that_do_not_alias_the_cache(tiny_fmnist_dir) -> None:
    # Prepare
    x1, y1 = load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)
    expected_x, expected_y = x1.clone(), y1.clone()

    # Execute
    x1.fill_(7.0)
    y1.fill_(3)
    x2, y2 = load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)

    # Assert
    assert torch.equal(x2, expected_x) and torch.equal(y2, expected_y)


@pytest.mark.skipif(
    not dataset_files.SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed"
)
def test_real_fmnist_sizes_and_normalisation() -> None:
    # Execute
    x_train, y_train = load_images("fashion-mnist", "train", root=dataset_files.SYSTEM_FASHION_MNIST_DIR)
    x_test, _ = load_images("fashion-mnist", "test", root=dataset_files.SYSTEM_FASHION_MNIST_DIR)

    # Assert: the published constants standardise the training set.
    assert x_train.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(y_train).tolist() == [6000] * 10
    assert abs(x_train.mean().item()) < 1e-2 and abs(x_train.std().item() - 1) < 1e-2


def _install_copy(source: Path, directory: Path) -> Path:
    shutil.copytree(source, directory)
    return directory.resolve()


@pytest.mark.parametrize(
    ("use_root", "use_env", "use_default", "expected"),
    [
        (True, True, True, "root"),
        (False, True, True, "env"),
        (False, False, True, "default"),
        (False, False, False, "system"),
    ],
)
def test_locate_search_order(
    tiny_fmnist_dir, isolated_search, monkeypatch, use_root, use_env, use_default, expected
) -> None:
    # Prepare: root as a flat directory, env and ./data in torchvision's layout.
    tmp = isolated_search
    dirs = {
        "root": _install_copy(tiny_fmnist_dir.root, tmp / "explicit"),
        "env": _install_copy(tiny_fmnist_dir.root, tmp / "env" / "FashionMNIST" / "raw"),
        "default": _install_copy(tiny_fmnist_dir.root, tmp / "default-root" / "FashionMNIST" / "raw"),
        "system": _install_copy(tiny_fmnist_dir.root, tmp / "system"),
    }
    if use_env:
        monkeypatch.setenv(dataset_files.DATA_ENV, str(tmp / "env"))
    if not use_default:
        shutil.rmtree(tmp / "default-root")

    # Execute
    found = locate_fashion_mnist(tmp / "explicit" if use_root else None)

    # Assert
    assert found == dirs[expected]


def test_locate_error_lists_every_place_and_how_to_get_the_data(isolated_search, monkeypatch) -> None:
    # Prepare
    tmp = isolated_search
    monkeypatch.setenv(dataset_files.DATA_ENV, str(tmp / "env"))

    # Execute
    with pytest.raises(FileNotFoundError) as info:
        locate_fashion_mnist(tmp / "explicit")

    # Assert
    message = str(info.value)
    for base in ("explicit", "env", "default-root"):
        assert str((tmp / base).absolute()) + "\n" in message
        assert str((tmp / base / "FashionMNIST" / "raw").absolute()) in message
    assert str((tmp / "system").absolute()) in message
    assert "dataset-fashion-mnist" in message
    assert "python -m fedfish.data download fashion-mnist" in message


def _set_byte(path: Path, offset: int, value: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("file_name", "corrupt", "match"),
    [
        ("train-images-idx3-ubyte", lambda p: _set_byte(p, 2, 0x0D), "train-images.*bad IDX header"),
        ("train-images-idx3-ubyte", lambda p: _set_byte(p, 3, 2), "train-images.*bad IDX header"),
        ("train-labels-idx1-ubyte", lambda p: p.write_bytes(b"\x00\x00"), "train-labels.*bad IDX header"),
        ("train-labels-idx1-ubyte", lambda p: p.write_bytes(p.read_bytes()[:6]), "truncated IDX header"),
        ("train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:-1]), "train-images.*body has"),
        ("train-labels-idx1-ubyte", lambda p: _set_byte(p, 7, 99), "train-labels.*body has"),
    ],
)
def test_corrupt_idx_rejected_naming_the_file(tiny_fmnist_dir, file_name, corrupt, match) -> None:
    # Prepare
    corrupt(tiny_fmnist_dir.root / file_name)

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "Compressed file ended"),
        (lambda p: p.write_bytes(b"not gzip at all"), "Not a gzipped file"),
    ],
)
def test_corrupt_gzip_idx_rejected_naming_the_file(tiny_fmnist_dir, corrupt, reason: str) -> None:
    # Prepare: the fixture's test files are gzipped.
    path = tiny_fmnist_dir.root / "t10k-images-idx3-ubyte.gz"
    corrupt(path)

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: truncated or corrupt gzip file \({reason}"):
        load_images("fashion-mnist", "test", root=tiny_fmnist_dir.root)


def test_image_and_label_counts_must_agree(tiny_fmnist_dir) -> None:
    # Prepare: a consistent labels file that holds one label fewer.
    path = tiny_fmnist_dir.root / "train-labels-idx1-ubyte"
    raw = path.read_bytes()
    n = int.from_bytes(raw[4:8], "big")
    path.write_bytes(raw[:4] + (n - 1).to_bytes(4, "big") + raw[8:-1])

    # Execute / Assert
    with pytest.raises(ValueError, match="holds 100 images but .*train-labels.* 99 labels"):
        load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)


@pytest.mark.parametrize(
    ("dataset", "split", "match"),
    [("mnist", "train", "dataset must be one of"), ("fashion-mnist", "val", "split must be one of")],
)
def test_load_images_rejects_unknown_names(tiny_fmnist_dir, dataset, split, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_images(dataset, split, root=tiny_fmnist_dir.root)


def test_download_flag_fetches_then_loads(isolated_search, tiny_fmnist_dir, monkeypatch) -> None:
    # Prepare: a stand-in for torchvision's downloader that writes its raw layout.
    calls = []

    def fake_fashion_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        shutil.copytree(tiny_fmnist_dir.root, Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
    target = isolated_search / "fresh"

    # Execute
    with pytest.raises(FileNotFoundError):
        load_images("fashion-mnist", "test", root=target)
    _, y = load_images("fashion-mnist", "test", root=target, download=True)

    # Assert
    assert calls == [(str(target), True)]
    np.testing.assert_array_equal(y.numpy(), tiny_fmnist_dir.arrays["test"][1])


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize(("split", "n"), [("train", 20), ("test", 10)])
def test_cifar_tiny_fixture_loads(tiny_cifar_root, isolated_search, split: str, n: int) -> None:
    # Prepare
    images, labels = tiny_cifar_root.arrays[split]

    # Execute
    x, y = load_images("cifar10", split, root=tiny_cifar_root.root)

    # Assert
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_array_equal(y.numpy(), labels)
    np.testing.assert_array_equal(_denormalize(x, "cifar10"), images)


def test_cifar_missing_names_the_download_command(isolated_search) -> None:
    with pytest.raises(FileNotFoundError, match="download cifar10"):
        load_images("cifar10", "test", root=isolated_search / "nowhere")


# ----------------------------------------------------------------------------- partitions


@pytest.fixture(scope="module")
def labels_2000() -> np.ndarray:
    """200 samples of each of 10 classes, shuffled."""
    return np.random.default_rng(3).permutation(np.arange(2000) % 10)


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_partitions_disjoint_deterministic_and_seeded(labels_2000, partitioner: str) -> None:
    # Execute
    parts = partition_indices(labels_2000, 10, partitioner, seed=5)
    again = partition_indices(labels_2000, 10, partitioner, seed=5)
    other = partition_indices(labels_2000, 10, partitioner, seed=6)

    # Assert
    flat = np.concatenate(parts)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)
    assert len(np.unique(flat)) == len(flat)
    assert flat.min() >= 0 and flat.max() < len(labels_2000)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_partitioners_that_promise_full_coverage_use_every_sample(labels_2000, partitioner) -> None:
    # Execute (pathological: 10 partitions x 2 classes cover all 10 classes)
    parts = partition_indices(labels_2000, 10, partitioner, seed=0)

    # Assert
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(2000))


def test_iid_sizes_equal_and_classes_mixed(labels_2000) -> None:
    # Execute
    parts = partition_indices(labels_2000, 7, "iid", seed=0)

    # Assert
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert (label_histogram(labels_2000, parts) > 0).all(axis=None)


def test_shard_partitions_are_whole_label_sorted_shards(labels_2000) -> None:
    # Execute: 20 shards of 2000 // 20 = 100 samples.
    parts = partition_indices(labels_2000, 10, "shard", shards_per_partition=2, seed=0)

    # Assert: each shard of a label-sorted 200-per-class set is single-class.
    hist = label_histogram(labels_2000, parts)
    assert all(len(p) == 200 for p in parts)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert set(np.unique(hist.to_numpy())) <= {0, 100, 200}


@pytest.mark.parametrize("classes_per_partition", [1, 2, 3])
def test_pathological_partitions_hold_at_most_c_classes(labels_2000, classes_per_partition) -> None:
    # Execute
    parts = partition_indices(
        labels_2000, 10, "pathological", classes_per_partition=classes_per_partition, seed=0
    )

    # Assert: partition i holds classes i .. i + c - 1 (mod 10).
    hist = label_histogram(labels_2000, parts)
    for pid, row in hist.iterrows():
        expected = {(pid + j) % 10 for j in range(classes_per_partition)}
        assert set(row[row > 0].index) == expected


def test_dirichlet_small_alpha_is_more_skewed(labels_2000) -> None:
    # Prepare
    def mean_top_class_share(alpha: float) -> float:
        hist = label_histogram(labels_2000, partition_indices(labels_2000, 10, "dirichlet", alpha=alpha))
        return float((hist.max(axis=1) / hist.sum(axis=1)).mean())

    # Execute
    skewed, near_iid = mean_top_class_share(0.1), mean_top_class_share(100.0)

    # Assert: alpha=100 is close to the uniform 0.1 share; alpha=0.1 is dominated by one class.
    assert near_iid < 0.2
    assert skewed > 0.5


def test_dirichlet_default_min_size_allows_small_alpha_with_many_partitions(labels_2000) -> None:
    # Execute: 40 samples per partition on average, alpha=0.1.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # must succeed by redrawing, without the top-up
        parts = partition_indices(labels_2000, 50, "dirichlet", alpha=0.1, seed=1)

    # Assert
    assert min(len(p) for p in parts) >= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(2000))


def test_dirichlet_tops_up_when_every_redraw_fails(labels_2000) -> None:
    # Prepare: 20 samples per partition on average, alpha=0.05: redraws never reach 5 each.
    args = (labels_2000, 100, "dirichlet")
    kwargs = {"alpha": 0.05, "min_partition_size": 5, "seed": 1}

    # Execute
    with pytest.warns(UserWarning, match=r"moved \d+ random samples"):
        parts = partition_indices(*args, **kwargs)
    with pytest.warns(UserWarning):
        again = partition_indices(*args, **kwargs)

    # Assert: sizes met, still a partition of all samples, still deterministic.
    assert min(len(p) for p in parts) >= 5
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@given(
    n=st.integers(1, 300),
    num_partitions=st.integers(1, 20),
    num_classes=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=25, deadline=None)
def test_iid_partitions_are_a_partition_of_all_samples(n, num_partitions, num_classes, seed) -> None:
    # Prepare
    num_partitions = min(num_partitions, n)
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)

    # Execute
    parts = partition_indices(labels, num_partitions, "iid", seed=seed)

    # Assert
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize(
    ("labels", "num_partitions", "partitioner", "kwargs", "match"),
    [
        (np.arange(20) % 5, 2, "random", {}, "partitioner must be one of"),
        (np.arange(20) % 5, 0, "iid", {}, r"num_partitions must be in \[1, 20\]"),
        (np.arange(20) % 5, 21, "iid", {}, r"num_partitions must be in \[1, 20\]"),
        (np.arange(20) % 5, 2, "dirichlet", {"alpha": 0.0}, "alpha must be a finite number > 0"),
        (np.arange(20) % 5, 2, "dirichlet", {"alpha": -1.0}, "alpha must be"),
        (np.arange(20) % 5, 2, "dirichlet", {"alpha": float("nan")}, "alpha must be"),
        (np.arange(20) % 5, 2, "dirichlet", {"min_partition_size": 11}, r"min_partition_size must be in \[0, 10\]"),
        (np.arange(20) % 5, 2, "pathological", {"classes_per_partition": 0}, r"classes_per_partition must be in \[1, 5\]"),
        (np.arange(20) % 5, 2, "pathological", {"classes_per_partition": 6}, r"classes_per_partition must be in \[1, 5\]"),
        (np.arange(20) % 5, 2, "shard", {"shards_per_partition": 0}, r"shards_per_partition must be in \[1, 10\]"),
        (np.arange(20) % 5, 2, "shard", {"shards_per_partition": 11}, r"shards_per_partition must be in \[1, 10\]"),
        (np.zeros((4, 5), dtype=int), 2, "iid", {}, "labels must be a non-empty 1-D array"),
        (np.array([], dtype=int), 1, "iid", {}, "labels must be a non-empty 1-D array"),
        (np.array([0, -1, 2]), 1, "iid", {}, "labels must be non-negative integers"),
        (np.array([0.0, 1.0]), 1, "iid", {}, "labels must be non-negative integers"),
    ],
)
def test_partition_indices_rejects_bad_arguments(labels, num_partitions, partitioner, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        partition_indices(labels, num_partitions, partitioner, **kwargs)


def test_pathological_infeasible_split_relays_flwr_reason() -> None:
    # Prepare: class 1 has one sample but 2 partitions x 2 classes ask for it twice.
    labels = np.array([0, 0, 0, 1])

    # Execute / Assert
    with pytest.raises(ValueError, match="flwr-datasets 'pathological' partitioner: Label: 1"):
        partition_indices(labels, 2, "pathological", classes_per_partition=2)


# 5 partitions x 3 classes in deterministic mode reach classes 0..6 only; flwr warns.
@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used")
@pytest.mark.parametrize(
    ("partitioner", "kwargs"),
    [("iid", {}), ("pathological", {"classes_per_partition": 3}), ("dirichlet", {"alpha": 0.3})],
)
def test_load_partition_equals_indexing_the_full_split(tiny_fmnist_dir, partitioner, kwargs) -> None:
    # Prepare
    x_all, y_all = load_images("fashion-mnist", "train", root=tiny_fmnist_dir.root)
    parts = partition_indices(y_all.numpy(), 5, partitioner, seed=2, **kwargs)

    for pid, index in enumerate(parts):
        # Execute
        x, y = load_partition(
            "fashion-mnist", pid, 5, partitioner, seed=2, root=tiny_fmnist_dir.root, **kwargs
        )

        # Assert
        assert torch.equal(x, x_all[index]) and torch.equal(y, y_all[index])


@pytest.mark.parametrize(
    ("partition_id", "num_partitions", "match"),
    [
        (-1, 5, r"partition_id must be in \[0, 5\)"),
        (5, 5, r"partition_id must be in \[0, 5\)"),
        (0, 0, "num_partitions must be >= 1"),
    ],
)
def test_load_partition_rejects_bad_ids(tiny_fmnist_dir, partition_id, num_partitions, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_partition("fashion-mnist", partition_id, num_partitions, "iid", root=tiny_fmnist_dir.root)


@pytest.mark.parametrize("holdout_fraction", [0.0, 0.2])
def test_partition_sizes_are_those_of_load_partition(tiny_fmnist_dir, holdout_fraction: float) -> None:
    # Prepare
    args = ("fashion-mnist", 4, "dirichlet")
    kwargs = {"seed": 1, "root": tiny_fmnist_dir.root, "holdout_fraction": holdout_fraction, "alpha": 0.5}

    # Execute
    sizes = data.partition_sizes(*args, **kwargs)

    # Assert
    expected = [len(load_partition(args[0], pid, *args[1:], **kwargs)[1]) for pid in range(4)]
    assert sizes == tuple(expected)
    assert sum(sizes) == 100 - round(100 * holdout_fraction)


def test_make_partitioner_passes_only_the_arguments_a_class_takes() -> None:
    # Prepare: flwr-datasets' class built by hand is the oracle.
    from datasets import Dataset  # noqa: PLC0415
    from flwr_datasets.partitioner import DirichletPartitioner  # noqa: PLC0415

    table = Dataset.from_dict({"y": np.arange(60) % 3, "writer": np.arange(60) % 4, "idx": np.arange(60)})
    reference = DirichletPartitioner(3, partition_by="y", alpha=0.3, min_partition_size=0, seed=4)

    # Execute: IidPartitioner takes no seed or partition_by, NaturalIdPartitioner no num_partitions.
    iid = make_partitioner("iid", 3, partition_by="y", seed=4)
    natural = make_partitioner("NaturalIdPartitioner", 3, partition_by="writer")
    dirichlet = make_partitioner("DirichletPartitioner", 3, partition_by="y", seed=4, alpha=0.3, min_partition_size=0)
    for partitioner in (iid, natural, dirichlet, reference):
        partitioner.dataset = table

    # Assert
    assert iid.num_partitions == 3 and natural.num_partitions == 4
    assert sorted(natural.load_partition(1)["idx"]) == list(range(1, 60, 4))
    for pid in range(3):
        assert list(dirichlet.load_partition(pid)["idx"]) == list(reference.load_partition(pid)["idx"])


def test_partitioner_names_list_row_partitioners_only() -> None:
    # Execute
    names = partitioner_names()

    # Assert
    assert names[:4] == PARTITIONERS
    assert {"NaturalIdPartitioner", "DirichletPartitioner", "SizePartitioner"} <= set(names)
    assert not any(name.startswith("Vertical") or name == "Partitioner" for name in names)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("Random", {}, r"unknown partitioner 'Random'; known: iid, dirichlet, .*NaturalIdPartitioner"),
        ("VerticalEvenPartitioner", {}, r"unknown partitioner 'VerticalEvenPartitioner'"),
        ("dirichlet", {"alpha": 0.5, "beta": 1}, r"DirichletPartitioner takes no argument beta; it takes: num_partitions"),
        ("pathological", {}, r"PathologicalPartitioner\(.*\): .*num_classes_per_partition"),
    ],
)
def test_make_partitioner_rejects_unknown_names_and_arguments(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_partitioner(name, 3, **options)


def test_label_histogram_counts_by_hand() -> None:
    # Prepare
    labels = np.array([0, 1, 1, 2, 2, 2])
    parts = [np.array([0, 3]), np.array([1, 2, 4, 5]), np.array([], dtype=np.int64)]

    # Execute
    hist = label_histogram(labels, parts, num_classes=4)

    # Assert
    np.testing.assert_array_equal(hist.to_numpy(), [[1, 0, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]])
    assert hist.index.name == "partition_id" and list(hist.index) == [0, 1, 2]
    assert list(hist.columns) == [0, 1, 2, 3]
    assert hist.to_numpy().dtype == np.int64


def test_label_histogram_rejects_too_few_classes() -> None:
    with pytest.raises(ValueError, match=r"num_classes must be >= 3"):
        label_histogram(np.array([0, 2]), [np.array([0, 1])], num_classes=2)


# ----------------------------------------------------------------------------- CLI


def test_cli_locate_prints_dir_or_fails(tiny_fmnist_dir, isolated_search, capsys) -> None:
    # Execute
    found_rc = data.main(["locate", "fashion-mnist", "--root", str(tiny_fmnist_dir.root)])
    found_out = capsys.readouterr().out
    missing_rc = data.main(["locate", "fashion-mnist"])
    missing_err = capsys.readouterr().err

    # Assert
    assert found_rc == 0 and found_out.strip() == str(tiny_fmnist_dir.root.resolve())
    assert missing_rc == 1 and "searched, in order" in missing_err


def test_cli_as_module_uses_fedfish_data_env(tiny_fmnist_dir, tmp_path) -> None:
    # Prepare
    env = {**os.environ, dataset_files.DATA_ENV: str(tiny_fmnist_dir.root)}

    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "fedfish.data", "locate", "fashion-mnist"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )

    # Assert
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tiny_fmnist_dir.root.resolve())
