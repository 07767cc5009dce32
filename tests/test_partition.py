"""Tests for fedfish.partition and fedfish.data.load_partition: the partitioners' promises (disjoint,
seeded, covering, skewed as asked), label histograms, and partitions of the built-in datasets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import data
from fedfish.data import load_images, load_partition
from fedfish.partition import (
    PARTITIONERS, label_histogram, make_partitioner, partition_indices, partitioner_names,
)


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
