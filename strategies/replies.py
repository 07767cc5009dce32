"""Validate a round's replies once, in one place, before anything is aggregated.

Every strategy funnels its replies through here: FedFish's codec replies through
:func:`check_replies`, Flower FedAvg's ArrayRecord replies through
:func:`check_array_replies`. Errored replies (failed, timed-out or disconnected
clients) are counted, malformed ones are rejected with their reason logged,
``need-base`` replies mark nodes that lost their state, and only the rest reach
aggregation. A rejected reply never touches the global model.

Checks, in order: structure and scalars (:func:`strategies.records.parse_reply`:
records present, status, versions, partition id, ``0 < num-examples <= max_examples``),
one reply per node and per partition, a model version not from the future, the
payload decode (length, dtype, finite values, mask version and digest, CRC; see
:mod:`fedfish.codec`), and an optional bound on the L2 norm of the update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from fedfish.codec import CodecError
from strategies.records import ACK, STATUS_NEED_BASE, STATUS_OK, Reply, ReplyRejected, parse_reply


@dataclass
class ReplyBatch:
    """A round's replies, sorted out.

    Attributes
    ----------
    accepted : list[tuple[Reply, Any]]
        Valid replies with their decoded payload (None without one), sorted by partition id (then node id)
        so that aggregation sums in the same order in every run, whatever the node ids.
    rejected : list[tuple[int, str]]
        (node id, reason) of each rejected reply.
    failed : int
        Replies that carried an error instead of content.
    lost_state : list[Reply]
        Replies that answered ``need-base``.
    """

    accepted: list[tuple[Reply, Any]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    failed: int = 0
    lost_state: list[Reply] = field(default_factory=list)

    def add_failure(self, message: Message) -> None:
        """Count an errored reply (the client failed, timed out or was unreachable) and log why."""
        self.failed += 1
        log(INFO, "\t> node %d failed: %s", message.metadata.src_node_id, message.error.reason)

    def add_rejection(self, err: ReplyRejected) -> None:
        """Record a rejected reply with its reason and log it."""
        self.rejected.append((err.node_id, err.reason))
        log(WARNING, "\t> %s", err)

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


def check_replies(  # noqa: PLR0913 - one keyword per check
    replies: Iterable[Message],
    *,
    decode: Callable[[Reply], Any] | None,
    max_examples: int | None = None,
    min_examples: int = 1,
    required_payloads: tuple[str, ...] = ("update",),
    max_model_version: int | None = None,
    model_version: int | None = None,
    update_norm: Callable[[Any], float] | None = None,
    max_update_norm: float | None = None,
) -> ReplyBatch:
    """Sort replies into accepted, rejected, failed and lost-state.

    Parameters
    ----------
    replies : Iterable[Message]
        The round's replies.
    decode : Callable[[Reply], Any] | None
        Decodes (and thereby checks length, dtype, finiteness and mask version of) a
        reply's payload; a :class:`fedfish.codec.CodecError` or ``ValueError`` rejects it.
        None for replies without payloads (evaluation).
    max_examples : int | None (default: None)
        Upper bound on a reply's ``num-examples``.
    min_examples : int (default: 1)
        Lower bound on an ``ok`` reply's ``num-examples`` (0 for enrolment replies).
    required_payloads : tuple[str, ...] (default: ("update",))
        Payload keys an ``ok`` reply must carry (ignored when ``decode`` is None).
    max_model_version : int | None (default: None)
        A node cannot acknowledge a model version newer than this.
    model_version : int | None (default: None)
        An ``ok`` reply must acknowledge exactly this version (training replies: their
        change is relative to the model the round sent).
    update_norm : Callable[[Any], float] | None (default: None)
        L2 norm of the change a decoded payload asks for; needed with ``max_update_norm``.
    max_update_norm : float | None (default: None)
        Reject updates whose ``update_norm`` exceeds this; None = no bound.
    """
    if max_update_norm is not None and update_norm is None:
        raise ValueError("check_replies: max_update_norm needs update_norm")
    batch = ReplyBatch()
    seen = _Seen()
    for message in replies:
        if message.has_error():
            batch.add_failure(message)
            continue
        try:
            reply = parse_reply(
                message,
                required_payloads=required_payloads if decode is not None else (),
                max_examples=max_examples,
                min_examples=min_examples,
            )
            seen.claim(reply)
            if max_model_version is not None and reply.model_version > max_model_version:
                raise ReplyRejected(reply.node_id, f"model-version {reply.model_version} is newer than "
                                                   f"the server's {max_model_version}")
            if reply.status == STATUS_NEED_BASE:
                batch.lost_state.append(reply)
                log(INFO, "\t> node %d lost its state; it will get the base again", reply.node_id)
                continue
            if model_version is not None and reply.model_version != model_version:
                raise ReplyRejected(reply.node_id, f"model-version {reply.model_version} is not this round's "
                                                   f"{model_version}")
            decoded = _decode(reply, decode)
            if max_update_norm is not None and decoded is not None:
                _check_norm(reply.node_id, update_norm(decoded), max_update_norm)  # type: ignore[misc]
        except ReplyRejected as err:
            batch.add_rejection(err)
            continue
        batch.accepted.append((reply, decoded))
    batch.accepted.sort(key=lambda item: (item[0].partition_id, item[0].node_id))
    return batch


def check_array_replies(
    replies: Iterable[Message],
    reference: ArrayRecord,
    *,
    max_examples: int | None = None,
    max_update_norm: float | None = None,
    weighted_by_key: str = "num-examples",
) -> tuple[ReplyBatch, list[Message]]:
    """The same checks for Flower FedAvg's replies (a dense ``ArrayRecord`` + ``MetricRecord``).

    Parameters
    ----------
    replies : Iterable[Message]
        The round's replies.
    reference : ArrayRecord
        The global model the round started from: every reply must carry exactly its
        keys, shapes and dtypes, with finite values.
    max_examples : int | None (default: None)
        Upper bound on ``num-examples``.
    max_update_norm : float | None (default: None)
        Bound on the L2 norm of (reply - reference) over all arrays; None = no bound.
    weighted_by_key : str (default: "num-examples")
        The metric FedAvg weights by.

    Returns
    -------
    tuple[ReplyBatch, list[Message]]
        The sorted-out batch (decoded payloads are None) and the accepted messages, in
        the batch's order (partition id, then node id), ready for FedAvg's aggregation.
    """
    reference_arrays = {key: array.numpy() for key, array in reference.items()}
    batch = ReplyBatch()
    seen = _Seen()
    messages: dict[int, Message] = {}
    for message in replies:
        if message.has_error():
            batch.add_failure(message)
            continue
        try:
            reply = _parse_array_reply(message, reference_arrays, max_examples, max_update_norm, weighted_by_key)
            seen.claim(reply)
        except ReplyRejected as err:
            batch.add_rejection(err)
            continue
        batch.accepted.append((reply, None))
        messages[reply.node_id] = message
    batch.accepted.sort(key=lambda item: (item[0].partition_id, item[0].node_id))
    return batch, [messages[reply.node_id] for reply, _ in batch.accepted]


def _parse_array_reply(
    message: Message,
    reference: dict[str, np.ndarray],
    max_examples: int | None,
    max_update_norm: float | None,
    weighted_by_key: str,
) -> Reply:
    node_id = int(message.metadata.src_node_id)
    content = message.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        raise ReplyRejected(node_id, "expected exactly one ArrayRecord and one MetricRecord")
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
    if set(arrays.keys()) != set(reference):
        raise ReplyRejected(node_id, f"array keys {sorted(arrays.keys())} differ from the model's")
    squared_norm = 0.0
    for key, expected in reference.items():
        try:
            value = arrays[key].numpy()
        except (ValueError, TypeError) as err:
            raise ReplyRejected(node_id, f"array {key!r} does not decode: {err}") from err
        if value.shape != expected.shape or value.dtype != expected.dtype:
            raise ReplyRejected(node_id, f"array {key!r} is {value.dtype}{list(value.shape)}, "
                                         f"expected {expected.dtype}{list(expected.shape)}")
        if not np.isfinite(value).all():
            raise ReplyRejected(node_id, f"array {key!r} has non-finite values")
        squared_norm += float(np.square(value.astype(np.float64) - expected).sum())
    num_examples = metrics.get(weighted_by_key)
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples <= 0:
        raise ReplyRejected(node_id, f"{weighted_by_key} must be a positive int, got {num_examples!r}")
    if max_examples is not None and num_examples > max_examples:
        raise ReplyRejected(node_id, f"{weighted_by_key} {num_examples} exceeds the bound {max_examples}")
    if max_update_norm is not None:
        _check_norm(node_id, squared_norm**0.5, max_update_norm)
    ack = content.config_records.get(ACK)
    partition_id = ack.get("partition-id") if ack is not None else None
    if not isinstance(partition_id, int) or isinstance(partition_id, bool) or partition_id < 0:
        raise ReplyRejected(node_id, f"partition-id must be an int >= 0, got {partition_id!r}")
    return Reply(
        node_id=node_id, partition_id=partition_id, status=STATUS_OK, model_version=-1, mask_version=-1,
        num_examples=num_examples, metrics={k: float(v) for k, v in metrics.items()},  # type: ignore[arg-type]
        payloads={},
    )


class _Seen:
    """One reply per node and per partition: a second claim is rejected."""

    def __init__(self) -> None:
        self.nodes: set[int] = set()
        self.partitions: set[int] = set()

    def claim(self, reply: Reply) -> None:
        if reply.node_id in self.nodes:
            raise ReplyRejected(reply.node_id, "duplicate reply from this node")
        if reply.partition_id in self.partitions:
            raise ReplyRejected(reply.node_id, f"partition-id {reply.partition_id} already replied this round")
        self.nodes.add(reply.node_id)
        self.partitions.add(reply.partition_id)


def _check_norm(node_id: int, norm: float, bound: float) -> None:
    if not norm <= bound:  # also catches a NaN norm
        raise ReplyRejected(node_id, f"update norm {norm:.4g} exceeds the bound {bound:.4g}")


def _decode(reply: Reply, decode: Callable[[Reply], Any] | None) -> Any:  # noqa: ANN401 - the decoder's type
    if decode is None:
        return None
    try:
        return decode(reply)
    except (CodecError, ValueError) as err:
        raise ReplyRejected(reply.node_id, f"payload: {err}") from err
