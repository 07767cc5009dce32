"""Record keys and reply parsing shared by the FedFish strategies and ClientApp.

A FedFish message carries three records:

- ``fedfish-config`` (ConfigRecord): scalars, e.g. ``server-round``, ``phase``, ``task``,
  the model version the payload brings the node to, and local-training settings;
- ``fedfish-payload`` (ConfigRecord of bytes): codec payloads (``fedfish.codec``), e.g.
  ``model-dense``, ``model-positions`` + ``model-values``, ``mask``, ``update``, ``scores``;
- in replies, ``fedfish-ack`` (ConfigRecord: ``status``, held model and mask versions,
  the sender's ``partition-id``) and ``metrics`` (MetricRecord with ``num-examples``).

Node ids are random per run (and change when a SuperNode re-registers); the
``partition-id`` in the ack is the stable name of a client's data, so the server keys
what a client holds, and the order it sums replies in, by it.

Replies are checked here, once, before anything is aggregated: a reply that fails any
check raises :class:`ReplyRejected` with the reason, and the strategy drops it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

CONFIG = "fedfish-config"
PAYLOAD = "fedfish-payload"
ACK = "fedfish-ack"
METRICS = "metrics"

STATUS_OK = "ok"
# The node lacks the base model or mask the message assumed (e.g. it restarted).
STATUS_NEED_BASE = "need-base"


class ReplyRejected(ValueError):
    """A client's reply failed validation; ``reason`` says which check."""

    def __init__(self, node_id: int, reason: str) -> None:
        super().__init__(f"reply from node {node_id} rejected: {reason}")
        self.node_id = node_id
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    """The parts of a well-formed reply.

    Attributes
    ----------
    node_id : int
        Sender.
    partition_id : int
        The sender's data partition (its stable identity across runs), >= 0.
    status : str
        ``ok`` or ``need-base``.
    model_version : int
        Model version the node now holds (-1 if none).
    mask_version : int
        Mask version the node now holds (-1 if none).
    num_examples : int
        Examples behind the update (0 for ``need-base``).
    metrics : dict[str, float]
        Every metric in the reply, ``num-examples`` included.
    payloads : dict[str, bytes]
        Codec payloads by key.
    """

    node_id: int
    partition_id: int
    status: str
    model_version: int
    mask_version: int
    num_examples: int
    metrics: dict[str, float]
    payloads: dict[str, bytes]


def downlink(config: dict[str, int | float | str | bool], payloads: dict[str, bytes]) -> RecordDict:
    """Content of a server -> client message (copies ``config``)."""
    return RecordDict({CONFIG: ConfigRecord(dict(config)), PAYLOAD: ConfigRecord(dict(payloads))})


def uplink(  # noqa: PLR0913 - one argument per ack field
    status: str,
    model_version: int,
    mask_version: int,
    metrics: dict[str, int | float],
    payloads: dict[str, bytes],
    partition_id: int,
) -> RecordDict:
    """Content of a client -> server reply."""
    return RecordDict(
        {
            ACK: ConfigRecord(
                {"status": status, "model-version": model_version, "mask-version": mask_version,
                 "partition-id": partition_id}
            ),
            METRICS: MetricRecord(dict(metrics)),
            PAYLOAD: ConfigRecord(dict(payloads)),
        }
    )


def parse_reply(message: Message, *, required_payloads: tuple[str, ...], min_examples: int = 1) -> Reply:
    """Check a reply's structure and scalars; payload *contents* are checked by the codec.

    Parameters
    ----------
    message : Message
        A reply without error (errored replies are filtered before this).
    required_payloads : tuple[str, ...]
        Payload keys an ``ok`` reply must carry.
    min_examples : int (default: 1)
        Lower bound on ``num-examples`` of an ``ok`` reply (0 for enrolment, which trains nothing).

    Raises
    ------
    ReplyRejected
        Naming the first failed check.
    """
    node_id = int(message.metadata.src_node_id)

    def reject(reason: str) -> ReplyRejected:
        return ReplyRejected(node_id, reason)

    content = message.content
    ack = content.config_records.get(ACK)
    metrics = content.metric_records.get(METRICS)
    payload_record = content.config_records.get(PAYLOAD)
    if ack is None or metrics is None or payload_record is None:
        raise reject(f"missing record(s); expected {ACK!r}, {METRICS!r} and {PAYLOAD!r}")
    status = ack.get("status")
    if status not in (STATUS_OK, STATUS_NEED_BASE):
        raise reject(f"unknown status {status!r}")
    versions = {k: ack.get(k) for k in ("model-version", "mask-version")}
    for key, value in versions.items():
        if not _is_int(value) or value < -1:
            raise reject(f"{key} must be an int >= -1, got {value!r}")
    partition_id = ack.get("partition-id")
    if not _is_int(partition_id) or partition_id < 0:
        raise reject(f"partition-id must be an int >= 0, got {partition_id!r}")
    payloads: dict[str, bytes] = {}
    for key, value in payload_record.items():
        if not isinstance(value, bytes):
            raise reject(f"payload {key!r} is {type(value).__name__}, not bytes")
        payloads[key] = value
    num_examples = metrics.get("num-examples")
    if status == STATUS_OK:
        if not _is_int(num_examples) or num_examples < min_examples:
            raise reject(f"num-examples must be an int >= {min_examples}, got {num_examples!r}")
        missing = [k for k in required_payloads if k not in payloads]
        if missing:
            raise reject(f"missing payload(s) {missing}")
    for key, value in metrics.items():
        if not isinstance(value, int | float):
            raise reject(f"metric {key!r} must be a scalar, got {type(value).__name__}")
    return Reply(
        node_id=node_id,
        partition_id=int(partition_id),  # type: ignore[arg-type]
        status=str(status),
        model_version=int(versions["model-version"]),  # type: ignore[arg-type]
        mask_version=int(versions["mask-version"]),  # type: ignore[arg-type]
        num_examples=int(num_examples) if isinstance(num_examples, int) else 0,
        metrics={k: float(v) for k, v in metrics.items()},  # type: ignore[arg-type]
        payloads=payloads,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
