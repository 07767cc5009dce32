"""Hostile clients, for the robustness tests and bench: a ClientApp that lies in one way.

Each wraps the real ClientApp (any ``(Message, Context) -> Message`` handler): the node
does its honest work, then changes its reply the way a hostile client would, keeping the
payload well-formed (valid CRC, finite values) so that only the strategy's defaults can
stop it. ``docs/robustness.md`` tabulates what each does to a run with the defaults.

==================  ===========================================================================
kind                what the hostile node sends
==================  ===========================================================================
``huge-update``     a change of 1e30 in every trained position (finite in fp32)
``inflated-count``  its honest change, claiming ``num-examples = 60000``
``stolen-identity`` its honest change, claiming to be partition 0 (and 10**12 at enrolment
                    when ``stolen_identity_at_enrolment``)
``mask-poisoning``  calibration scores of 1.0 at 5% of positions of its choice, 0 elsewhere
==================  ===========================================================================
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Context, Message

from fedfish import codec
from strategies import records

Handler = Callable[[Message, Context], Message]
ATTACKS: tuple[str, ...] = ("huge-update", "inflated-count", "stolen-identity", "mask-poisoning")


def hostile(handler: Handler, attacker_partition: int, kind: str) -> Handler:
    """``handler`` with the node serving ``attacker_partition`` lying as ``kind`` says."""
    if kind not in ATTACKS:
        raise ValueError(f"hostile: kind must be one of {ATTACKS}, got {kind!r}")

    def lie(message: Message, context: Context) -> Message:
        reply = handler(message, context)
        if int(context.node_config["partition-id"]) != attacker_partition or reply.has_error():
            return reply
        kind_of_message = message.metadata.message_type
        if kind == "huge-update" and kind_of_message == "train.fedfish":
            _replace_update(reply, 1e30)
        elif kind == "inflated-count" and kind_of_message in ("train.fedfish", "train"):
            reply.content.metric_records[records.METRICS]["num-examples"] = 60000
        elif kind == "stolen-identity":
            reply.content.config_records[records.ACK]["partition-id"] = (
                10**12 if kind_of_message == "query.enrol" else 0)
        elif kind == "mask-poisoning" and kind_of_message == "query.scores":
            reply.content.config_records[records.PAYLOAD]["scores"] = _poisoned_scores(reply)
        return reply

    return lie


def _replace_update(reply: Message, value: float) -> None:
    """Every value of the reply's fp32 change payload set to ``value``; header and CRC stay valid
    (the header's layout is documented in :mod:`fedfish.payload_header`)."""
    payload = reply.content.config_records[records.PAYLOAD]["update"]
    header = codec.parse_header(payload)  # type: ignore[arg-type]
    if header.dtype != "fp32" or header.kind not in (codec.Kind.VALUES, codec.Kind.DENSE):
        raise ValueError("huge-update forges fp32 values or dense changes only")
    body = np.full(header.count, value, dtype="<f4").tobytes()
    head = bytearray(payload[: codec.HEADER_SIZE])  # type: ignore[index]
    head[36:40] = zlib.crc32(body, zlib.crc32(bytes(head[:36]))).to_bytes(4, "little")
    reply.content.config_records[records.PAYLOAD]["update"] = bytes(head) + body


def _poisoned_scores(reply: Message) -> bytes:
    """Scores of 1.0 at 5% of the positions (the last ones: trained weights of the first layers
    are what it wants to freeze out), zero elsewhere."""
    payload = reply.content.config_records[records.PAYLOAD]["scores"]
    num_params = codec.parse_header(payload).num_params  # type: ignore[arg-type]
    chosen = torch.zeros(num_params)
    chosen[-int(0.05 * num_params):] = 1.0
    return codec.encode_dense(chosen, "fp32")
