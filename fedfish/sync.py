"""Which parts of the global model a node must receive to hold it exactly.

Every aggregation produces a new *model version* and changes a known set of flat
positions: the round's mask in masked rounds, the union of sent indices for top-k,
everything in dense rounds. A node that holds version ``h`` differs from the current
global model only on the union of the changes made after ``h``, so that union (its
positions and current values) is all it needs; nothing else is ever re-sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

SyncKind = Literal["current", "delta", "full"]


@dataclass(frozen=True)
class SyncPlan:
    """What a node needs to reach the current model version.

    Attributes
    ----------
    kind : {"current", "delta", "full"}
        ``current``: it already holds it; ``delta``: send the values at ``positions``;
        ``full``: send the dense model.
    positions : torch.Tensor | None
        Bool ``(P,)`` of the positions to send for ``delta``, else None.
    """

    kind: SyncKind
    positions: torch.Tensor | None = None


class ChangeHistory:
    """The positions changed by each model version, oldest first.

    Parameters
    ----------
    num_params : int
        Length of the flat parameter vector P.
    max_versions : int (default: 64)
        How many versions of changes to keep; a node older than that gets the
        dense model, which bounds server memory at ``max_versions * P`` bits.
    """

    def __init__(self, num_params: int, max_versions: int = 64) -> None:
        if num_params < 1:
            raise ValueError(f"ChangeHistory: num_params must be >= 1, got {num_params}")
        if max_versions < 1:
            raise ValueError(f"ChangeHistory: max_versions must be >= 1, got {max_versions}")
        self.num_params = num_params
        self.max_versions = max_versions
        self.version = 0
        # version v -> positions changed from v-1 to v; None means all of them.
        self._changes: dict[int, torch.Tensor | None] = {}

    def record(self, changed: torch.Tensor | None) -> int:
        """Register a new version that changed ``changed`` (bool (P,), None = all).

        Returns
        -------
        int
            The new current version.
        """
        if changed is not None and (changed.dtype != torch.bool or changed.shape != (self.num_params,)):
            raise ValueError(
                f"ChangeHistory.record: expected a bool vector of {self.num_params} entries, "
                f"got {changed.dtype} {tuple(changed.shape)}"
            )
        self.version += 1
        self._changes[self.version] = None if changed is None else changed.clone()
        self._changes.pop(self.version - self.max_versions, None)
        return self.version

    def plan(self, held_version: int | None) -> SyncPlan:
        """The cheapest exact way to bring a node from ``held_version`` to the current one.

        Parameters
        ----------
        held_version : int | None
            The model version the node acknowledged holding; None if it holds nothing.
        """
        if held_version is None or held_version > self.version or held_version < 0:
            return SyncPlan("full")
        if held_version == self.version:
            return SyncPlan("current")
        union = torch.zeros(self.num_params, dtype=torch.bool)
        for v in range(held_version + 1, self.version + 1):
            if v not in self._changes:  # forgotten: too old
                return SyncPlan("full")
            changed = self._changes[v]
            if changed is None:
                return SyncPlan("full")
            union |= changed
        return SyncPlan("delta", union)

    def state_dict(self) -> dict[str, object]:
        """Everything needed to restore this history (for checkpoints)."""
        return {
            "num_params": self.num_params,
            "max_versions": self.max_versions,
            "version": self.version,
            "changes": {v: (None if c is None else c.clone()) for v, c in self._changes.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> ChangeHistory:
        """Inverse of :meth:`state_dict`."""
        out = cls(int(state["num_params"]), int(state["max_versions"]))  # type: ignore[arg-type]
        out.version = int(state["version"])  # type: ignore[arg-type]
        out._changes = dict(state["changes"])  # type: ignore[arg-type]
        return out
