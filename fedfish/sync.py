"""Which parts of the global model a node must receive to hold it exactly.

Every aggregation produces a new *model version* and changes a known set of flat
positions: the round's mask in masked rounds, the union of sent indices for top-k,
everything in dense rounds. A node that holds version ``h`` differs from the current
global model only on the positions changed after ``h``, so those positions and their
current values are all it needs; nothing else is ever re-sent. Version 0 is the initial
model, which nodes can usually rebuild themselves (a seed or a public checkpoint).
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
    """The version that last changed each position of the flat parameter vector.

    One int32 per parameter (4P bytes, 6.7 MB for the FedAvg CNN) answers "what changed
    since version h" exactly for every h, however old: in the cross-device regime a node
    comes back after tens or hundreds of rounds, and a fixed mask means it still needs only
    the masked values, never the dense model.

    Parameters
    ----------
    num_params : int
        Length of the flat parameter vector P.
    """

    def __init__(self, num_params: int) -> None:
        if num_params < 1:
            raise ValueError(f"ChangeHistory: num_params must be >= 1, got {num_params}")
        self.num_params = num_params
        self.version = 0
        self._last_changed = torch.zeros(num_params, dtype=torch.int32)

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
        if changed is None:
            self._last_changed.fill_(self.version)
        else:
            self._last_changed[changed] = self.version
        return self.version

    def changed_since(self, held_version: int) -> torch.Tensor:
        """Bool (P,): the positions some version after ``held_version`` changed."""
        return self._last_changed > held_version

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
        positions = self.changed_since(held_version)
        if bool(positions.all()):
            return SyncPlan("full")
        return SyncPlan("delta", positions)

    def state_dict(self) -> dict[str, object]:
        """Everything needed to restore this history (for checkpoints)."""
        return {"num_params": self.num_params, "version": self.version, "last_changed": self._last_changed.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> ChangeHistory:
        """Inverse of :meth:`state_dict`."""
        out = cls(int(state["num_params"]))  # type: ignore[arg-type]
        out.version = int(state["version"])  # type: ignore[arg-type]
        last_changed = state["last_changed"]
        if not isinstance(last_changed, torch.Tensor) or last_changed.shape != (out.num_params,):
            raise ValueError("ChangeHistory.from_state_dict: last_changed must be an int tensor of num_params entries")
        out._last_changed = last_changed.to(torch.int32).clone()
        return out
