"""What the server sends one node: the sync payloads it lacks and the mask, encoded once.

A node that holds model version ``h`` gets, per :meth:`fedfish.sync.ChangeHistory.plan`:
nothing (``current``), the values at the mask (``delta-mask``: the steady state of fixed-mask
training, positions implied by the mask it holds), the values at an explicit set of
positions (``delta``: after a refresh, a skipped round or top-k updates), or the dense
model (``full``: first contact, lost state, or whenever the delta would not be smaller).

Downlink values are fp32 by default, so that every node holds the global model exactly.
With another ``dtype`` (fp16, bf16, int8) the values sent are the changes from version 0,
which every node rebuilds itself (a seed or a public checkpoint): a change since version 0
usually spans less than a weight does, so eight bits keep it close, and a node overwrites what
it held rather than adding to it, so a node's error never outlives its next sync. The
node then trains from within one rounding step of the global model and uploads the change
from what it received, which the server adds to its exact fp32 model. The dense model
(``full``) is always fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedfish import codec
from fedfish.masks import Mask
from fedfish.sync import ChangeHistory
from fedfish.value_section import value_section_size


@dataclass(frozen=True)
class NodeSync:
    """One node's share of a message.

    Attributes
    ----------
    config : dict[str, int | str]
        ``sync``, ``model-version``, ``base-version``, with a mask ``mask-version`` (and
        ``mask-seed`` for seeded random masks), and ``values-from: version0`` when the
        values are changes from version 0 (a downlink dtype other than fp32).
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
    dtype : str (default: "fp32")
        Wire dtype of ``delta-mask`` and ``delta`` values, one of ``codec.VALUE_DTYPES``;
        anything but fp32 sends changes from ``version0``.
    version0 : torch.Tensor | None (default: None)
        fp32 ``(P,)``, the version-0 model every node rebuilds; required unless fp32.
    seed : int (default: 0)
        Seeds int8's stochastic rounding, per model version (reproducible runs).
    """

    def __init__(self, num_params: int, dtype: str = "fp32", version0: torch.Tensor | None = None,
                 seed: int = 0) -> None:
        if dtype not in codec.VALUE_DTYPES:
            raise ValueError(f"downlink dtype: expected one of {codec.VALUE_DTYPES}, got {dtype!r}")
        if dtype != "fp32" and (version0 is None or version0.shape != (num_params,)):
            raise ValueError(f"a {dtype} downlink sends changes from version 0: pass version0, a ({num_params},) "
                             "vector every node can rebuild")
        self.num_params = num_params
        self.dtype = dtype
        self.version0 = version0.detach().float().clone() if dtype != "fp32" else None
        self.seed = seed
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
                    lambda: self._values(history, global_params, mask),
                )
            else:
                key = ("delta", held_model)
                position_mask = Mask(bits=positions)
                encoded = self._once(history, key + ("positions",), lambda: codec.encode_mask(position_mask))
                if len(encoded) + value_section_size(position_mask.k, self.dtype) >= 4 * self.num_params:
                    sync = "full"  # the delta would not be smaller than the model
                else:
                    payloads["model-positions"] = encoded
                    payloads["model-values"] = self._once(
                        history, key + ("values",), lambda: self._values(history, global_params, position_mask),
                    )
        if "model-values" in payloads and self.version0 is not None:
            config["values-from"] = "version0"
        if sync == "full":
            payloads["model-dense"] = self._once(history, ("dense",), lambda: codec.encode_dense(global_params, "fp32"))
        config["sync"] = sync
        return NodeSync(config, payloads)

    def _values(self, history: ChangeHistory, global_params: torch.Tensor, positions: Mask) -> bytes:
        if self.version0 is None:
            return codec.encode_values(global_params[positions.bits], positions, "fp32")
        change = global_params[positions.bits] - self.version0[positions.bits]
        rounding = torch.Generator().manual_seed(self.seed * 1_000_003 + history.version)
        return codec.encode_values(change, positions, self.dtype, generator=rounding)

    def buffers(self, history: ChangeHistory, buffers: torch.Tensor) -> bytes:
        """The global buffers (BatchNorm statistics) as a dense fp32 payload, encoded once per version."""
        return self._once(history, ("buffers",), lambda: codec.encode_dense(buffers, "fp32"))

    def _once(self, history: ChangeHistory, key: tuple[object, ...], make: Callable[[], bytes]) -> bytes:
        full_key = (history.version, *key)
        if full_key not in self._cache:
            self._cache[full_key] = make()
        return self._cache[full_key]
