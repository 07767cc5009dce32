"""Validate a round's replies once, in one place, before anything is aggregated.

Every strategy funnels its replies through :func:`check_replies`: errored replies
(failed or disconnected clients) are counted, malformed ones are rejected with their
reason logged, ``need-base`` replies mark nodes that lost their state, and only the
rest reach aggregation. A rejected reply never touches the global model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import Message, MetricRecord
from flwr.supercore import log

from fedfish.codec import CodecError
from strategies.records import STATUS_NEED_BASE, Reply, ReplyRejected, parse_reply


@dataclass
class ReplyBatch:
    """A round's replies, sorted out.

    Attributes
    ----------
    accepted : list[tuple[Reply, torch.Tensor | None]]
        Valid replies with their decoded payload, sorted by node id so that
        aggregation sums in the same order in every run.
    rejected : list[tuple[int, str]]
        (node id, reason) of each rejected reply.
    failed : int
        Replies that carried an error instead of content.
    lost_state : list[int]
        Nodes that answered ``need-base``.
    """

    accepted: list[tuple[Reply, torch.Tensor | None]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: int = 0
    lost_state: list[int] = field(default_factory=list)

    @property
    def need_base(self) -> int:
        """Number of nodes that asked for the base again."""
        return len(self.lost_state)

    def metrics(self) -> MetricRecord:
        """Aggregate metrics: counts summed, every other metric weighted by num-examples."""
        out: dict[str, int | float] = {
            "clients-ok": len(self.accepted),
            "clients-failed": self.failed,
            "clients-rejected": len(self.rejected),
            "clients-resynced": self.need_base,
        }
        total = sum(r.num_examples for r, _ in self.accepted)
        out["num-examples"] = total
        if total > 0:
            keys = sorted({k for r, _ in self.accepted for k in r.metrics} - {"num-examples"})
            for key in keys:
                out[key] = sum(r.metrics.get(key, 0.0) * r.num_examples for r, _ in self.accepted) / total
        return MetricRecord(out)


def check_replies(
    replies: Iterable[Message],
    *,
    decode: Callable[[Reply], torch.Tensor] | None,
    max_examples: int | None = None,
    required_payloads: tuple[str, ...] = ("update",),
    max_model_version: int | None = None,
) -> ReplyBatch:
    """Sort replies into accepted, rejected, failed and lost-state.

    Parameters
    ----------
    replies : Iterable[Message]
        The round's replies.
    decode : Callable[[Reply], torch.Tensor] | None
        Decodes (and thereby checks length, dtype, finiteness and mask version of) a
        reply's payload; a :class:`fedfish.codec.CodecError` or ``ValueError`` rejects it.
        None for replies without payloads (evaluation).
    max_examples : int | None (default: None)
        Upper bound on a reply's ``num-examples``.
    required_payloads : tuple[str, ...] (default: ("update",))
        Payload keys an ``ok`` reply must carry (ignored when ``decode`` is None).
    max_model_version : int | None (default: None)
        A node cannot acknowledge a model version newer than this.
    """
    batch = ReplyBatch()
    for message in replies:
        if message.has_error():
            batch.failed += 1
            log(INFO, "\t> node %d failed: %s", message.metadata.src_node_id, message.error.reason)
            continue
        try:
            reply = parse_reply(
                message,
                required_payloads=required_payloads if decode is not None else (),
                max_examples=max_examples,
            )
            if max_model_version is not None and reply.model_version > max_model_version:
                raise ReplyRejected(reply.node_id, f"model-version {reply.model_version} is newer than "
                                                   f"the server's {max_model_version}")
            if reply.status == STATUS_NEED_BASE:
                batch.lost_state.append(reply.node_id)
                log(INFO, "\t> node %d lost its state; it will get the base again", reply.node_id)
                continue
            decoded = _decode(reply, decode)
        except ReplyRejected as err:
            batch.rejected.append((err.node_id, err.reason))
            log(WARNING, "\t> %s", err)
            continue
        batch.accepted.append((reply, decoded))
    batch.accepted.sort(key=lambda item: item[0].node_id)
    return batch


def _decode(reply: Reply, decode: Callable[[Reply], torch.Tensor] | None) -> torch.Tensor | None:
    if decode is None:
        return None
    try:
        return decode(reply)
    except (CodecError, ValueError) as err:
        raise ReplyRejected(reply.node_id, f"payload: {err}") from err
