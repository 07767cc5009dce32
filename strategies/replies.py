"""Validate a round's replies once, in one place, before anything is aggregated.

Every strategy funnels its replies through here: FedFish's codec replies through
:func:`check_replies`, Flower FedAvg's ArrayRecord replies through
:func:`check_array_replies`. Errored replies (failed, timed-out or disconnected
clients) are counted, malformed ones are rejected with their reason logged,
``need-base`` replies mark nodes that lost their state, and only the rest reach
aggregation. A rejected reply never touches the global model.

Checks, in order (:class:`ReplyRules`): structure and scalars
(:func:`strategies.records.parse_reply`: records present, status, versions, partition id),
identity (the partition exists and is the one the node enrolled with), one reply per node
and per partition, a model version not from the future (and this round's, for training),
``num-examples`` within the node's shard, the payload decode (length, dtype, finite
values, mask version and digest, CRC; see :mod:`fedfish.codec`), an optional absolute bound
on the L2 norm of the change, and, once the round's replies are in, a bound relative to the
round's median change norm, which one hostile client cannot move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from fedfish.codec import CodecError
from strategies.records import ACK, STATUS_NEED_BASE, STATUS_OK, Reply, ReplyRejected, parse_reply

# Below three valid changes, a median says nothing about which one is out of line.
MIN_REPLIES_FOR_MEDIAN = 3


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


@dataclass(frozen=True)
class ReplyRules:
    """What a valid reply may claim: the bounds every strategy checks its replies against.

    Attributes
    ----------
    examples_bound : Callable[[int], int | None] | None
        Largest credible ``num-examples`` for a partition (its shard size, as far as the
        server knows it); None or a None bound = unchecked.
    min_examples : int
        Smallest ``num-examples`` of an ``ok`` reply (0 for enrolment, which trains nothing).
    partition_of : Mapping[int, int] | None
        Node id -> the partition it enrolled with: a reply claiming another partition is
        rejected (before it can take the real one's place in the round).
    num_partitions : int | None
        Partition ids must be below this.
    max_model_version : int | None
        A node cannot acknowledge a model version newer than this.
    model_version : int | None
        An ``ok`` reply must acknowledge exactly this version (training replies: their change
        is relative to the model the round sent).
    max_update_norm : float | None
        Absolute bound on the L2 norm of a reply's change; None = none.
    norm_factor : float | None
        With three valid replies or more, reject changes whose norm exceeds this multiple of
        the round's median norm (needs no tuning: one client cannot move the median); None = off.
    """

    examples_bound: Callable[[int], int | None] | None = None
    min_examples: int = 1
    partition_of: Mapping[int, int] | None = None
    num_partitions: int | None = None
    max_model_version: int | None = None
    model_version: int | None = None
    max_update_norm: float | None = None
    norm_factor: float | None = None

    def check_identity(self, reply: Reply) -> None:
        """The partition must exist and be the one the node enrolled with."""
        if self.num_partitions is not None and reply.partition_id >= self.num_partitions:
            raise ReplyRejected(reply.node_id, f"partition-id {reply.partition_id} is out of range "
                                               f"[0, {self.num_partitions})")
        if self.partition_of is None:
            return
        enrolled = self.partition_of.get(reply.node_id)
        if enrolled is None:
            raise ReplyRejected(reply.node_id, "this node never enrolled a partition")
        if enrolled != reply.partition_id:
            raise ReplyRejected(reply.node_id, f"partition-id {reply.partition_id} is not the partition "
                                               f"{enrolled} this node enrolled with")

    def check_examples(self, reply: Reply) -> None:
        """``num-examples`` within what the node's shard holds."""
        if reply.status != STATUS_OK:
            return
        if reply.num_examples < self.min_examples:
            raise ReplyRejected(reply.node_id, f"num-examples must be an int >= {self.min_examples}, "
                                               f"got {reply.num_examples}")
        bound = None if self.examples_bound is None else self.examples_bound(reply.partition_id)
        if bound is not None and reply.num_examples > bound:
            raise ReplyRejected(reply.node_id, f"num-examples {reply.num_examples} exceeds the bound {bound} "
                                               f"(the examples partition {reply.partition_id} holds)")

    def check_norm(self, node_id: int, norm: float) -> None:
        """The absolute bound, if any."""
        if self.max_update_norm is not None:
            _check_norm(node_id, norm, self.max_update_norm)


def check_replies(
    replies: Iterable[Message],
    *,
    decode: Callable[[Reply], Any] | None,
    rules: ReplyRules = ReplyRules(),
    required_payloads: tuple[str, ...] = ("update",),
    update_norm: Callable[[Any], float] | None = None,
) -> ReplyBatch:
    """Sort replies into accepted, rejected, failed and lost-state.

    Parameters
    ----------
    replies : Iterable[Message]
        The round's replies.
    decode : Callable[[Reply], Any] | None
        Decodes (and thereby checks length, dtype, finiteness and mask version of) a
        reply's payload; a :class:`fedfish.codec.CodecError` or ``ValueError`` rejects it.
        None for replies without payloads (evaluation, enrolment).
    rules : ReplyRules (default: no bounds)
        Identity, examples, versions and norm bounds.
    required_payloads : tuple[str, ...] (default: ("update",))
        Payload keys an ``ok`` reply must carry (ignored when ``decode`` is None).
    update_norm : Callable[[Any], float] | None (default: None)
        L2 norm of the change a decoded payload asks for; needed for the norm bounds.
    """
    bounded = rules.max_update_norm is not None or rules.norm_factor is not None
    if bounded and decode is not None and update_norm is None:
        raise ValueError("check_replies: norm bounds need update_norm")
    batch = ReplyBatch()
    seen = _Seen()
    norms: dict[int, float] = {}
    for message in replies:
        if message.has_error():
            batch.add_failure(message)
            continue
        try:
            reply = parse_reply(message, required_payloads=required_payloads if decode is not None else (),
                                min_examples=0)
            rules.check_identity(reply)
            seen.claim(reply)
            if rules.max_model_version is not None and reply.model_version > rules.max_model_version:
                raise ReplyRejected(reply.node_id, f"model-version {reply.model_version} is newer than "
                                                   f"the server's {rules.max_model_version}")
            if reply.status == STATUS_NEED_BASE:
                batch.lost_state.append(reply)
                log(INFO, "\t> node %d lost its state; it will get the base again", reply.node_id)
                continue
            rules.check_examples(reply)
            if rules.model_version is not None and reply.model_version != rules.model_version:
                raise ReplyRejected(reply.node_id, f"model-version {reply.model_version} is not this round's "
                                                   f"{rules.model_version}")
            decoded = _decode(reply, decode)
            if decoded is not None and update_norm is not None:
                norms[reply.node_id] = update_norm(decoded)
                rules.check_norm(reply.node_id, norms[reply.node_id])
        except ReplyRejected as err:
            batch.add_rejection(err)
            continue
        batch.accepted.append((reply, decoded))
    _reject_outlying_norms(batch, norms, rules.norm_factor)
    batch.accepted.sort(key=lambda item: (item[0].partition_id, item[0].node_id))
    return batch


def check_claims(replies: Iterable[Message], rules: ReplyRules, taken: set[int]) -> ReplyBatch:
    """Enrolment replies sorted out: accepted are the claims that stand (valid, in range, not
    held by another connected node, ``taken``, and not claimed by two nodes at once); every
    other claim is rejected and logged, so a node can never take over another's partition."""
    batch = ReplyBatch()
    by_partition: dict[int, list[Reply]] = {}
    for message in replies:
        if message.has_error():
            batch.add_failure(message)
            continue
        try:
            reply = parse_reply(message, required_payloads=(), min_examples=0)
            rules.check_identity(reply)
            if rules.max_model_version is not None and reply.model_version > rules.max_model_version:
                raise ReplyRejected(reply.node_id, f"model-version {reply.model_version} is newer than "
                                                   f"the server's {rules.max_model_version}")
        except ReplyRejected as err:
            batch.add_rejection(err)
            continue
        by_partition.setdefault(reply.partition_id, []).append(reply)
    for partition, claimants in sorted(by_partition.items()):
        if partition in taken or len(claimants) > 1:
            holders = "another connected node" if partition in taken else f"nodes {[r.node_id for r in claimants]}"
            for reply in claimants:
                batch.add_rejection(ReplyRejected(reply.node_id, f"partition {partition} is claimed by {holders}"))
            continue
        batch.accepted.append((claimants[0], None))
    return batch


def check_array_replies(
    replies: Iterable[Message],
    reference: ArrayRecord,
    *,
    rules: ReplyRules = ReplyRules(),
    weighted_by_key: str = "num-examples",
) -> tuple[ReplyBatch, list[Message]]:
    """The same checks for Flower FedAvg's replies (a dense ``ArrayRecord`` + ``MetricRecord``).

    Parameters
    ----------
    replies : Iterable[Message]
        The round's replies.
    reference : ArrayRecord
        The global model the round started from: every reply must carry exactly its
        keys, shapes and dtypes, with finite values; its change is the reply minus it.
    rules : ReplyRules (default: no bounds)
        Identity, examples and norm bounds (versions do not apply).
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
    norms: dict[int, float] = {}
    for message in replies:
        if message.has_error():
            batch.add_failure(message)
            continue
        try:
            reply, norm = _parse_array_reply(message, reference_arrays, weighted_by_key)
            rules.check_identity(reply)
            seen.claim(reply)
            rules.check_examples(reply)
            norms[reply.node_id] = norm
            rules.check_norm(reply.node_id, norm)
        except ReplyRejected as err:
            batch.add_rejection(err)
            continue
        batch.accepted.append((reply, None))
        messages[reply.node_id] = message
    _reject_outlying_norms(batch, norms, rules.norm_factor)
    batch.accepted.sort(key=lambda item: (item[0].partition_id, item[0].node_id))
    return batch, [messages[reply.node_id] for reply, _ in batch.accepted]


def _reject_outlying_norms(batch: ReplyBatch, norms: dict[int, float], factor: float | None) -> None:
    """Move accepted replies whose change norm exceeds ``factor`` x the median to the rejected."""
    measured = [norms[reply.node_id] for reply, _ in batch.accepted if reply.node_id in norms]
    if factor is None or len(measured) < MIN_REPLIES_FOR_MEDIAN:
        return
    bound = factor * float(np.median(measured))
    kept = []
    for reply, decoded in batch.accepted:
        try:
            if reply.node_id in norms:
                _check_norm(reply.node_id, norms[reply.node_id], bound, f"{factor:g} x the round's median")
        except ReplyRejected as err:
            batch.add_rejection(err)
            continue
        kept.append((reply, decoded))
    batch.accepted = kept


def _parse_array_reply(message: Message, reference: dict[str, np.ndarray], weighted_by_key: str) -> tuple[Reply, float]:
    """The reply's scalars and the L2 norm of its change (reply minus reference, all arrays)."""
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
    ack = content.config_records.get(ACK)
    partition_id = ack.get("partition-id") if ack is not None else None
    if not isinstance(partition_id, int) or isinstance(partition_id, bool) or partition_id < 0:
        raise ReplyRejected(node_id, f"partition-id must be an int >= 0, got {partition_id!r}")
    reply = Reply(
        node_id=node_id, partition_id=partition_id, status=STATUS_OK, model_version=-1, mask_version=-1,
        num_examples=num_examples, metrics={k: float(v) for k, v in metrics.items()},  # type: ignore[arg-type]
        payloads={},
    )
    return reply, squared_norm**0.5


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


def _check_norm(node_id: int, norm: float, bound: float, what: str = "") -> None:
    if not norm <= bound:  # also catches a NaN norm
        suffix = f" ({what})" if what else ""
        raise ReplyRejected(node_id, f"update norm {norm:.4g} exceeds the bound {bound:.4g}{suffix}")


def _decode(reply: Reply, decode: Callable[[Reply], Any] | None) -> Any:  # noqa: ANN401 - the decoder's type
    if decode is None:
        return None
    try:
        return decode(reply)
    except (CodecError, ValueError) as err:
        raise ReplyRejected(reply.node_id, f"payload: {err}") from err
