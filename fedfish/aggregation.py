"""Server-side aggregation of clients' changes into the fp32 global model.

Changes arrive as :class:`fedfish.updates.DecodedUpdate` (positions + values). Clients that
trained under the same mask send the same positions, so their values are combined in mask
order (k entries, not P); sparse changes at different positions (top-k) are combined on
the union of positions, each client contributing zero where it sent nothing; a dense
change makes the result dense. The global model changes exactly at the returned
positions, which is what :class:`fedfish.sync.ChangeHistory` records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedfish.updates import DecodedUpdate

AGGREGATORS: tuple[str, ...] = ("mean", "median", "trimmed-mean")
"""``mean`` weights by examples; ``median`` and ``trimmed-mean`` are coordinate-wise and
unweighted, as Flower's FedMedian and FedTrimmedAvg (a client's weight is a claim too)."""


def weighted_mean(updates: Sequence[DecodedUpdate], weights: Sequence[float], num_params: int) -> DecodedUpdate:
    """The weighted mean change (weights are normalised to sum 1).

    Parameters
    ----------
    updates : Sequence[DecodedUpdate]
        Non-empty; summed in the given order (callers sort by partition for reproducibility).
    weights : Sequence[float]
        One per update, > 0 (e.g. ``num-examples``).
    num_params : int
        Length P of the flat model.
    """
    if not updates or len(updates) != len(weights):
        raise ValueError(f"weighted_mean: expected as many weights as updates (>= 1), got {len(weights)} "
                         f"for {len(updates)}")
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"weighted_mean: weights must sum to > 0, got {total}")
    first = updates[0].positions
    same_positions = first is not None and all(
        u.positions is first or (u.positions is not None and torch.equal(u.positions, first)) for u in updates
    )
    if same_positions:
        values = sum(u.values * (w / total) for u, w in zip(updates, weights, strict=True))
        return DecodedUpdate(first, values)  # type: ignore[arg-type]
    dense = sum(u.dense(num_params) * (w / total) for u, w in zip(updates, weights, strict=True))
    if any(u.positions is None for u in updates):
        return DecodedUpdate(None, dense)  # type: ignore[arg-type]
    union = torch.zeros(num_params, dtype=torch.bool)
    for u in updates:
        union |= u.positions  # type: ignore[arg-type]
    return DecodedUpdate(union, dense[union])  # type: ignore[index]


def combine(
    updates: Sequence[DecodedUpdate],
    weights: Sequence[float],
    num_params: int,
    aggregator: str = "mean",
    trim_fraction: float = 0.1,
) -> DecodedUpdate:
    """The round's change from the clients' changes, by ``aggregator`` (:data:`AGGREGATORS`).

    ``trimmed-mean`` drops ``floor(trim_fraction * n)`` of the largest and of the smallest
    values of every coordinate (at least one each once there are three changes) before
    averaging; ``median`` takes the middle value (the mean of the two middle ones for an even
    count, as numpy does). Both work over the union of positions, a client contributing zero
    where it sent nothing.
    """
    if aggregator not in AGGREGATORS:
        raise ValueError(f"combine: aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"combine: trim_fraction must be in [0, 0.5), got {trim_fraction}")
    if aggregator == "mean":
        return weighted_mean(updates, weights, num_params)
    if not updates:
        raise ValueError("combine: no updates")
    first = updates[0].positions
    if first is not None and all(u.positions is not None and torch.equal(u.positions, first) for u in updates):
        positions, stacked = first, np.stack([u.values.numpy() for u in updates])
    else:
        dense = np.stack([u.dense(num_params).numpy() for u in updates])
        positions = None if any(u.positions is None for u in updates) else np.any(
            np.stack([u.positions.numpy() for u in updates]), axis=0)  # type: ignore[union-attr]
        stacked = dense if positions is None else dense[:, positions]
        positions = None if positions is None else torch.from_numpy(positions)
    if aggregator == "median":
        values = np.median(stacked, axis=0)
    else:
        n = stacked.shape[0]
        cut = int(trim_fraction * n) if n < 3 else max(int(trim_fraction * n), 1)
        ordered = np.sort(stacked, axis=0)
        values = ordered[cut : n - cut].mean(axis=0)
    return DecodedUpdate(positions, torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))


def apply_change(global_params: torch.Tensor, change: DecodedUpdate) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``global + change`` as a new fp32 vector, and the positions it changed (None = all)."""
    new = global_params.clone()
    if change.positions is None:
        new += change.values
    else:
        new[change.positions] += change.values
    return new, change.positions
