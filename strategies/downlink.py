"""What the server sends one node: the sync payloads it lacks and the mask, encoded once.

A node that holds model version ``h`` gets, per :meth:`fedfish.sync.ChangeHistory.plan`:
nothing (``current``), the values at the mask (``delta-mask``: the steady state of fixed-mask
training, positions implied by the mask it holds), the values at an explicit set of
positions (``delta``: after a refresh, a skipped round or top-k updates), or the dense
model (``full``: first contact, lost state, or whenever the delta would not be smaller).
Downlink values are always fp32 so that every node holds the global model exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedfish import codec
from fedfish.masks import Mask
from fedfish.sync import ChangeHistory


@dataclass(frozen=True)
class NodeSync:
    """One node's share of a message.

    Attributes
    ----------
    config : dict[str, int | str]
        ``sync``, ``model-version``, ``base-version`` and, with a mask, ``mask-version``
        (and ``mask-seed`` for seeded random masks).
    payloads : dict[str, bytes]
        ``model-dense`` | ``model-positions`` + ``model-values`` | ``model-values``; ``mask``.
    """

    config: dict[str, int | str]
    payloads: dict[str, bytes]


class DownlinkEncoder:
    """Builds :class:`NodeSync` objects; nodes in the same situation share encoded bytes.

    Parameters
    ----------
    num_params : int
        Length P of the flat parameter vector.
    """

    def __init__(self, num_params: int) -> None:
        self.num_params = num_params
        self._cache: dict[tuple[object, ...], bytes] = {}

    def clear(self) -> None:
        """Forget encoded payloads (the global model changed)."""
        self._cache.clear()

    def node_sync(
        self,
        history: ChangeHistory,
        global_params: torch.Tensor,
        held_model: int | None,
        held_mask: int | None,
        mask: Mask | None,
        mask_seed: int | None,
    ) -> NodeSync:
        """What a node holding ``(held_model, held_mask)`` needs to train under ``mask``.

        Parameters
        ----------
        history : ChangeHistory
            Positions changed per model version; its current version is ``global_params``'.
        global_params : torch.Tensor
            fp32 ``(P,)``, the current global model.
        held_model, held_mask : int | None
            Versions the node acknowledged; None if unknown.
        mask : Mask | None
            The mask of this round's training, None for dense or top-k rounds.
        mask_seed : int | None
            Seed of ``mask`` if it is a seeded random mask (the node regenerates it).
        """
        plan = history.plan(held_model)
        config: dict[str, int | str] = {
            "model-version": history.version,
            "base-version": -1 if held_model is None else held_model,
        }
        payloads: dict[str, bytes] = {}
        if mask is not None:
            config["mask-version"] = mask.version
            if mask_seed is not None:
                config["mask-seed"] = mask_seed
            elif held_mask != mask.version:
                payloads["mask"] = self._once(history, ("mask", mask.version), lambda: codec.encode_mask(mask))
        sync = plan.kind
        if plan.kind == "delta":
            positions = plan.positions
            if mask is not None and torch.equal(positions, mask.bits):
                sync = "delta-mask"
                payloads["model-values"] = self._once(
                    history, ("values", mask.version),
                    lambda: codec.encode_values(global_params[mask.bits], mask, "fp32"),
                )
            else:
                key = ("delta", held_model)
                position_mask = Mask(bits=positions)
                encoded = self._once(history, key + ("positions",), lambda: codec.encode_mask(position_mask))
                if len(encoded) + 4 * position_mask.k >= 4 * self.num_params:
                    sync = "full"  # the delta would not be smaller than the model
                else:
                    payloads["model-positions"] = encoded
                    payloads["model-values"] = self._once(
                        history, key + ("values",),
                        lambda: codec.encode_values(global_params[positions], position_mask, "fp32"),
                    )
        if sync == "full":
            payloads["model-dense"] = self._once(history, ("dense",), lambda: codec.encode_dense(global_params, "fp32"))
        config["sync"] = sync
        return NodeSync(config, payloads)

    def buffers(self, history: ChangeHistory, buffers: torch.Tensor) -> bytes:
        """The global buffers (BatchNorm statistics) as a dense fp32 payload, encoded once per version."""
        return self._once(history, ("buffers",), lambda: codec.encode_dense(buffers, "fp32"))

    def _once(self, history: ChangeHistory, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        full_key = (history.version, *key)
        if full_key not in self._cache:
            self._cache[full_key] = make()
        return self._cache[full_key]
