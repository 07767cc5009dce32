"""The server's global model between Flower's ArrayRecords: fp32 values, buffers, versions, downlinks.

Flower hands a strategy the global model as an ArrayRecord and takes a new one back after
each aggregation. In between, FedFish works on one fp32 vector in ``ParamLayout`` order
(changes add exactly, whatever the arrays' dtypes), on the buffers (BatchNorm statistics)
as one fp32 vector, and on a :class:`~fedfish.sync.ChangeHistory` of the positions each
model version changed: what a node holding an older version lacks. What nodes are sent is
encoded from these once per version (:mod:`strategies.downlink`) and forgotten whenever
the model is replaced.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedfish.aggregation import apply_change
from fedfish.layout import ParamLayout
from fedfish.masks import Mask
from fedfish.sync import ChangeHistory
from fedfish.updates import DecodedUpdate
from strategies.downlink import DownlinkEncoder, NodeSync


class GlobalModel:
    """The current global model, its version history and the payloads encoded from it.

    Parameters
    ----------
    layout : ParamLayout
        Flat parameter order (the ArrayRecord's keys are its names).
    buffer_names : tuple[str, ...]
        The model's buffers, in the order of :attr:`buffers`.
    syncs_buffers : bool
        Buffers are averaged from the training replies and sent with every message
        (``aggregate``); otherwise each client keeps its own and the server's stay as adopted.
    downlink : DownlinkEncoder | None (default: None)
        Encodes what nodes are sent; None = exact fp32 values.
    """

    def __init__(self, layout: ParamLayout, buffer_names: tuple[str, ...], syncs_buffers: bool,
                 downlink: DownlinkEncoder | None = None) -> None:
        self.layout = layout
        self.buffer_names = tuple(buffer_names)
        self.syncs_buffers = syncs_buffers
        self.history = ChangeHistory(layout.num_params)
        self.buffers: torch.Tensor | None = None  # fp32, buffer_names order
        self._params: torch.Tensor | None = None
        self._arrays: ArrayRecord | None = None
        self._downlink = downlink or DownlinkEncoder(layout.num_params)

    @property
    def params(self) -> torch.Tensor:
        """fp32 ``(P,)`` values of the current version."""
        if self._params is None:
            raise RuntimeError("FedFish: no global model yet (configure_train not called)")
        return self._params

    @property
    def downlink_dtype(self) -> str:
        """Wire dtype of the values nodes are sent (:class:`~strategies.downlink.DownlinkEncoder`)."""
        return self._downlink.dtype

    def adopt(self, arrays: ArrayRecord) -> None:
        """Take ``arrays`` as the current model; a no-op for the record :meth:`apply` returned last."""
        if arrays is self._arrays and self._params is not None:
            return
        state = arrays.to_torch_state_dict()
        missing = [n for n in (*self.layout.names, *self.buffer_names) if n not in state]
        if missing:
            raise ValueError(f"FedFish: the global ArrayRecord lacks {missing}")
        self._params = torch.cat([state[n].reshape(-1).float() for n in self.layout.names])
        self.buffers = torch.cat([state[n].reshape(-1).float() for n in self.buffer_names]) if self.buffer_names \
            else torch.zeros(0)
        self._arrays = arrays
        self._downlink.clear()

    def apply(self, change: DecodedUpdate, buffers: list[torch.Tensor], weights: list[int]) -> ArrayRecord:
        """Apply an aggregated change as a new version; returns the new global ArrayRecord.

        When buffers are synced, ``buffers`` (one fp32 vector per accepted reply) are averaged
        with ``weights`` (the replies' examples) as FedAvg averages them: running statistics,
        not changes.
        """
        new_params, changed = apply_change(self.params, change)
        if self.syncs_buffers:
            self.buffers = sum(b * (w / sum(weights)) for b, w in zip(buffers, weights, strict=True))
        self.history.record(changed)
        self._params = new_params
        self._arrays = self._to_arrays(new_params)
        return self._arrays

    def node_sync(
        self, held_model: int | None, held_mask: int | None, mask: Mask | None, mask_seed: int | None
    ) -> NodeSync:
        """What a node holding ``(held_model, held_mask)`` lacks to train under ``mask``
        (:meth:`strategies.downlink.DownlinkEncoder.node_sync`), and the buffers when synced."""
        sync = self._downlink.node_sync(self.history, self.params, held_model, held_mask, mask, mask_seed)
        if not self.syncs_buffers:
            return sync
        buffers = self._downlink.buffers(self.history, self.buffers)  # type: ignore[arg-type]
        return NodeSync(sync.config, sync.payloads | {"buffers": buffers})

    def load_history(self, state: dict[str, object]) -> None:
        """Restore the version history from :meth:`fedfish.sync.ChangeHistory.state_dict`."""
        self.history = ChangeHistory.from_state_dict(state)
        self._downlink.clear()

    def _to_arrays(self, flat: torch.Tensor) -> ArrayRecord:
        state = self._arrays.to_torch_state_dict() if self._arrays is not None else {}
        for name, tensor in zip(self.layout.names, self.layout.split(flat), strict=True):
            state[name] = tensor.clone()
        if self.syncs_buffers:
            sizes = [state[name].numel() for name in self.buffer_names]
            for name, chunk in zip(self.buffer_names, torch.split(self.buffers, sizes), strict=True):
                old = state[name]
                value = chunk if old.is_floating_point() else chunk.round()
                state[name] = value.reshape(old.shape).to(old.dtype)
        self._downlink.clear()
        return ArrayRecord(state)
