"""Federated partitions of a labelled split: who holds which samples.

Partitions come from flwr-datasets partitioners (IID, Dirichlet(alpha), k classes per
client, shards) applied to an in-memory ``datasets.Dataset`` of labels only, so they
are cheap and deterministic by seed. A fixed slice of the split can be held out as a
public split that no partition holds (fine-tuning checkpoints are trained on it).
``make_partitioner`` builds any flwr-datasets row partitioner by short name or class
name (``fedfish.datasource`` partitions users' datasets with it).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "pathological", "shard")
# The flwr-datasets class behind each short name.
PARTITIONER_CLASSES: dict[str, str] = {
    "iid": "IidPartitioner",
    "dirichlet": "DirichletPartitioner",
    "pathological": "PathologicalPartitioner",
    "shard": "ShardPartitioner",
}
# Seed of the public held-out split: fixed, so it is the same for every run seed.
HOLDOUT_SEED = 20210611


def partition_indices(
    labels: np.ndarray | Sequence[int],
    num_partitions: int,
    partitioner: str,
    *,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    shards_per_partition: int = 2,
    min_partition_size: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices into federated partitions with a flwr-datasets partitioner.

    The rows are first permuted by ``seed`` (IidPartitioner takes contiguous
    blocks, and the pathological assignment is deterministic, so the seed must
    choose the samples), then handed to the partitioner, which also gets ``seed``.

    Parameters
    ----------
    labels : np.ndarray | Sequence[int]
        Class of each sample, shape (N,), non-negative integers.
    num_partitions : int
        Number of partitions, in [1, N].
    partitioner : str
        ``"iid"`` (equal random blocks, all samples used), ``"dirichlet"`` (per
        class, a Dirichlet(alpha) draw splits its samples over the partitions;
        all samples used), ``"pathological"`` (partition i holds classes
        i, ..., i + classes_per_partition - 1 modulo the class count, each class
        split evenly among its holders; with fewer partitions than classes the
        classes no partition reaches stay unused and flwr-datasets warns) or ``"shard"`` (samples sorted by label,
        cut into ``num_partitions * shards_per_partition`` equal shards, each
        partition gets ``shards_per_partition`` random ones; the remainder is unused).
    alpha : float, default 0.5
        Dirichlet concentration, > 0; smaller is more skewed. Dirichlet only.
    classes_per_partition : int, default 2
        Classes per partition, in [1, number of distinct labels]. Pathological only.
    shards_per_partition : int, default 2
        Shards per partition, >= 1 with ``num_partitions * shards_per_partition <= N``.
        Shard only.
    min_partition_size : int, default 1
        Dirichlet only, in [0, N // num_partitions]: flwr-datasets redraws (up to
        11 times) until every partition holds at least this many samples. If no
        draw succeeds (small ``alpha`` with few samples per partition, e.g.
        alpha=0.05 with 600 samples per partition fails about 1 time in 3), the
        last draw is kept and its small partitions are topped up with random
        samples moved from the largest ones, with a warning. The default only
        forbids empty partitions (flwr-datasets' default of 10 fails more often).
    seed : int, default 0
        Seed of the row permutation, of the partitioner and of the top-up.

    Returns
    -------
    list[np.ndarray]
        ``num_partitions`` sorted int64 index arrays, pairwise disjoint.

    Raises
    ------
    ValueError
        Naming the offending argument and its allowed range, or relaying
        flwr-datasets' reason when it cannot build the partitions.
    """
    labels = _check_labels(labels)
    n = labels.shape[0]
    if partitioner not in PARTITIONERS:
        raise ValueError(f"partitioner must be one of {PARTITIONERS}, got {partitioner!r}")
    if not 1 <= num_partitions <= n:
        raise ValueError(
            f"num_partitions must be in [1, {n}] (the sample count), got {num_partitions}"
        )
    num_classes_present = len(np.unique(labels))
    options: dict[str, Any] = {}  # partitioner-specific flwr-datasets arguments
    if partitioner == "dirichlet":
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
        if not 0 <= min_partition_size <= n // num_partitions:
            raise ValueError(
                f"min_partition_size must be in [0, {n // num_partitions}] "
                f"(N // num_partitions), got {min_partition_size}"
            )
        options.update(alpha=float(alpha), min_partition_size=min_partition_size)
    elif partitioner == "pathological":
        if not 1 <= classes_per_partition <= num_classes_present:
            raise ValueError(
                f"classes_per_partition must be in [1, {num_classes_present}] "
                f"(distinct labels), got {classes_per_partition}"
            )
        options.update(
            num_classes_per_partition=classes_per_partition, class_assignment_mode="deterministic"
        )
    elif partitioner == "shard":
        if not 1 <= shards_per_partition <= n // num_partitions:
            raise ValueError(
                f"shards_per_partition must be in [1, {n // num_partitions}] "
                f"(N // num_partitions), got {shards_per_partition}"
            )
        options.update(num_shards_per_partition=shards_per_partition)
    try:
        return _run_partitioner(labels, num_partitions, partitioner, seed, options)
    except ValueError as err:
        if partitioner != "dirichlet":
            raise ValueError(
                f"partition_indices: flwr-datasets {partitioner!r} partitioner: {err}"
            ) from err
    # flwr-datasets gave up redrawing; one unconstrained draw, then the top-up.
    options["min_partition_size"] = 0
    parts = _run_partitioner(labels, num_partitions, "dirichlet", seed, options)
    return _top_up(parts, min_partition_size, np.random.default_rng(seed))


def _run_partitioner(
    labels: np.ndarray, num_partitions: int, partitioner: str, seed: int, options: dict[str, Any]
) -> list[np.ndarray]:
    """Sorted index arrays from one flwr-datasets partitioner run on a seeded row permutation."""
    from datasets import Dataset  # noqa: PLC0415

    # IidPartitioner takes no seed: `perm` randomises it.
    part = make_partitioner(partitioner, num_partitions, partition_by="label", seed=seed, **options)
    perm = np.random.default_rng(seed).permutation(labels.shape[0])
    part.dataset = Dataset.from_dict({"label": labels[perm], "idx": perm})
    with warnings.catch_warnings():
        # pyarrow deprecation inside Dataset.sort, and one warning per Dirichlet
        # redraw: neither is actionable here (a final failure raises instead).
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="The specified min_partition_size")
        return [
            np.sort(np.asarray(part.load_partition(i)["idx"], dtype=np.int64))
            for i in range(num_partitions)
        ]


def partitioner_names() -> tuple[str, ...]:
    """Every name ``make_partitioner`` accepts.

    The short names (``PARTITIONERS``), then the class names of flwr-datasets'
    row partitioners: every concrete ``Partitioner`` subclass it exports except
    the vertical ones, which split columns rather than rows.
    """
    from flwr_datasets import partitioner as fp  # noqa: PLC0415  (3 s import; only this needs it)

    classes = [
        name for name in fp.__all__
        if inspect.isclass(cls := getattr(fp, name)) and issubclass(cls, fp.Partitioner)
        and not inspect.isabstract(cls) and not name.startswith("Vertical")
    ]
    return PARTITIONERS + tuple(sorted(classes))


def partitioner_class(name: str) -> type[Partitioner]:
    """The flwr-datasets class of a short name (``"dirichlet"``) or a class name.

    Raises
    ------
    ValueError
        ``name`` is not in ``partitioner_names()``; the message lists them.
    """
    from flwr_datasets import partitioner as fp  # noqa: PLC0415

    known = partitioner_names()
    if name not in known:
        raise ValueError(f"unknown partitioner {name!r}; known: {', '.join(known)}")
    cls: type[Partitioner] = getattr(fp, PARTITIONER_CLASSES.get(name, name))
    return cls


def make_partitioner(
    name: str, num_partitions: int, *, partition_by: str = "label", seed: int = 0, **options: Any
) -> Partitioner:
    """A flwr-datasets partitioner, by short name or class name, not yet given a dataset.

    ``num_partitions``, ``partition_by`` and ``seed`` are passed only to classes
    whose constructor takes them (``NaturalIdPartitioner`` takes no
    ``num_partitions``: its ids decide the count; ``IidPartitioner`` takes no
    seed); ``options`` are passed as they are and win over those three.

    Parameters
    ----------
    name : str
        One of ``partitioner_names()``.
    num_partitions : int
        Number of partitions, for classes that take it.
    partition_by : str, default "label"
        Column the partitioner reads (labels, or natural ids), for classes that take it.
    seed : int, default 0
        For classes that take it.
    **options : Any
        Other constructor arguments, by their flwr-datasets names
        (``alpha``, ``num_classes_per_partition``, ``min_partition_size``, ...).

    Raises
    ------
    ValueError
        Unknown ``name``; an argument the class does not take (naming the ones it
        does); or the constructor's own rejection, relayed.
    """
    cls = partitioner_class(name)
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"{cls.__name__} takes no argument {', '.join(unknown)}; it takes: {', '.join(params)}"
        )
    defaults = {"num_partitions": num_partitions, "partition_by": partition_by, "seed": seed}
    kwargs = {key: value for key, value in defaults.items() if key in params} | options
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cls.__name__}({_call_args(kwargs)}): {err}") from err


def _call_args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move random samples from the largest partitions into those below ``min_size``.

    Needs ``sum(sizes) >= len(parts) * min_size`` (checked by the caller), which
    guarantees the largest partition exceeds ``min_size`` while one is below it.
    """
    parts = list(parts)
    moved = 0
    for i in range(len(parts)):
        while len(parts[i]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            take = min(min_size - len(parts[i]), len(parts[donor]) - min_size)
            chosen = rng.permutation(len(parts[donor]))[:take]
            parts[i] = np.sort(np.concatenate([parts[i], parts[donor][chosen]]))
            parts[donor] = np.delete(parts[donor], chosen)
            moved += take
    if moved:
        warnings.warn(
            f"partition_indices: no Dirichlet draw gave every partition {min_size} samples; "
            f"moved {moved} random samples from the largest partitions to the smallest",
            stacklevel=3,
        )
    return parts


def holdout_indices(num_samples: int, fraction: float) -> np.ndarray:
    """Sorted indices of the public held-out split: ``round(fraction * num_samples)`` samples.

    The draw depends on ``num_samples`` and ``fraction`` only (a fixed generator,
    ``HOLDOUT_SEED``), never on a run's seed, so a checkpoint pre-trained on it
    stays disjoint from the clients' data of every seed.

    Parameters
    ----------
    num_samples : int
        Size of the split, >= 0.
    fraction : float
        Fraction held out, in [0, 1).

    Returns
    -------
    np.ndarray
        int64, ascending.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    count = round(fraction * num_samples)
    return np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(num_samples)[:count]).astype(np.int64)


def label_histogram(
    labels: np.ndarray | Sequence[int],
    partitions: Sequence[np.ndarray],
    num_classes: int | None = None,
) -> pd.DataFrame:
    """Per-partition class counts.

    Parameters
    ----------
    labels : np.ndarray | Sequence[int]
        Class of each sample, shape (N,).
    partitions : Sequence[np.ndarray]
        Index arrays into ``labels``, as from ``partition_indices``.
    num_classes : int | None, default None
        Number of columns; defaults to ``max(labels) + 1``.

    Returns
    -------
    pd.DataFrame
        int64 counts; index ``partition_id`` 0..len(partitions)-1, columns ``class`` 0..C-1.
    """
    labels = _check_labels(labels)
    needed = int(labels.max()) + 1
    c = needed if num_classes is None else num_classes
    if c < needed:
        raise ValueError(f"num_classes must be >= {needed} (max label + 1), got {num_classes}")
    counts = np.zeros((len(partitions), c), dtype=np.int64)
    for row, index in enumerate(partitions):
        counts[row] = np.bincount(labels[np.asarray(index, dtype=np.int64)], minlength=c)
    return pd.DataFrame(
        counts,
        index=pd.RangeIndex(len(partitions), name="partition_id"),
        columns=pd.RangeIndex(c, name="class"),
    )


# ----------------------------------------------------------------------------- loading


def _check_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise ValueError(f"labels must be non-negative integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)
