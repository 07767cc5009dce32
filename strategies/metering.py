"""One byte-accounting path for every strategy: a Grid that measures what crosses it.

:class:`MeteredGrid` wraps the Grid handed to a ServerApp. Whatever a strategy sends or
receives through it (training, evaluation, calibration queries; FedFish or Flower's own
FedAvg) is measured once, as Flower serializes the Message (``flwr.common.serde``),
and appended to a :class:`fedfish.accounting.TrafficLog`. Strategies therefore never
count bytes themselves, and no strategy can forget to.

It also owns the waiting: ``send_and_receive`` pushes, then polls for replies, logging a
line every 30 s while it waits; a node that has not replied by the timeout gets an error
reply in its stead (so it counts as failed, like one that crashed), and a stop request
(SIGINT/SIGTERM, :data:`stop`) ends the wait at once with :class:`RunInterrupted`, before
the round is aggregated or checkpointed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Error, Message, MessageType
from flwr.common.serde import message_to_proto
from flwr.supercore.run import Run
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore import log

from fedfish.accounting import TrafficLog, TrafficRecord
from strategies.records import CONFIG

_PHASE_OF_TYPE = {
    MessageType.TRAIN: "train",
    MessageType.EVALUATE: "evaluate",
    MessageType.QUERY: "calibration",
}
# Payloads a node receives once (a mask version, a base it could not rebuild): counted in
# ``one_time_bytes`` so that analyses can set them apart from the recurring per-round cost.
_ONE_TIME_PAYLOADS = ("mask", "model-dense")
_ONE_TIME_PHASES = ("enrol", "calibration")
WAIT_LOG_SECONDS = 30.0
POLL_SECONDS = 0.1


class RunInterrupted(Exception):  # noqa: N818 - the run was stopped, not an error of its own
    """A stop was requested while waiting for replies; the round in progress does not count."""


_ID_FIELDS = ("run_id", "src_node_id", "dst_node_id", "src_task_id", "dst_task_id")
_MAX_UINT64 = 2**64 - 1


def wire_bytes(message: Message) -> int:
    """Size of ``message`` (metadata + content or error) as Flower serializes it.

    Run, node and task ids are random 64-bit numbers whose varint encoding takes 1 to 10
    bytes; they are counted at full width, so that two runs with the same seed log the
    same bytes. The result is the exact serialized size with maximal ids: at most 50 bytes
    above the size of the message as sent, never below it.
    """
    proto = message_to_proto(message)
    for name in _ID_FIELDS:
        if getattr(proto.metadata, name):
            setattr(proto.metadata, name, _MAX_UINT64)
    return proto.ByteSize()


def payload_bytes(message: Message) -> int:
    """Bytes of model-carrying payloads: codec payloads and ArrayRecord array data."""
    if not message.has_content():
        return 0
    content = message.content
    total = sum(len(a.data) for record in content.array_records.values() for a in record.values())
    for record in content.config_records.values():
        total += sum(len(v) for v in record.values() if isinstance(v, bytes))
    return total


def category(message_type: str) -> str:
    """``train``, ``evaluate`` or ``query`` of a message type such as ``train.fedfish``."""
    return message_type.split(".", 1)[0]


def one_time_bytes(message: Message, phase: str) -> int:
    """Bytes of ``message`` that a node needs once, not every round: whole enrolment and
    calibration messages, and mask or dense-base payloads outside dense warm-up rounds."""
    if phase in _ONE_TIME_PHASES:
        return wire_bytes(message)
    if phase == "warmup" or not message.has_content():
        return 0
    return sum(
        len(value) for record in message.content.config_records.values()
        for key, value in record.items() if key in _ONE_TIME_PAYLOADS and isinstance(value, bytes)
    )


def _round_and_phase(message: Message) -> tuple[int, str]:
    server_round, phase = 0, _PHASE_OF_TYPE.get(category(message.metadata.message_type), "train")
    if message.has_content():
        for name, record in message.content.config_records.items():
            if "server-round" in record:
                server_round = int(record["server-round"])  # type: ignore[arg-type]
            if name == CONFIG and "phase" in record:
                phase = str(record["phase"])
    return server_round, phase


class MeteredGrid(Grid):
    """A Grid that logs every message it carries; otherwise it is ``grid``.

    Parameters
    ----------
    grid : Grid
        The real Grid (simulation or deployment).
    traffic : TrafficLog
        Where records go, one per message and direction.
    model_bytes : int
        Dense fp32 size of the model in bytes: the dense-equivalent of any message that
        carries a model or a per-parameter vector (all but evaluation replies and enrolment).
    stop : threading.Event | None (default: None)
        Set to end the run: the next wait raises :class:`RunInterrupted`.
    """

    def __init__(self, grid: Grid, traffic: TrafficLog, model_bytes: int, stop: threading.Event | None = None) -> None:
        self._grid = grid
        self.traffic = traffic
        self.model_bytes = model_bytes
        self.stop = stop or threading.Event()
        # message id -> (server round, phase, message type, destination) of outstanding instructions
        self._sent: dict[str, tuple[int, str, str, int]] = {}

    # --- delegation --------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Set the run on the wrapped grid."""
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        """Run information of the wrapped grid."""
        return self._grid.run

    def create_message(
        self,
        content,  # noqa: ANN001 - signature of Grid.create_message
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message on the wrapped grid."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Connected nodes of the wrapped grid."""
        return self._grid.get_node_ids()

    # --- metered paths -----------------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push and log each message (downlink)."""
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        self._log_sent(messages)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull and log each reply (uplink)."""
        replies = list(self._grid.pull_messages(message_ids))
        self._log_replies(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, wait for replies (or the timeout, or a stop) and log both directions.

        Every message gets a reply: a node's own, or an error saying it did not answer in time.
        """
        messages = list(messages)
        self._check_stop()
        try:
            ids = list(self._grid.push_messages(messages))
        except NotImplementedError:  # an in-process Grid (tests) that only sends and receives at once
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
            self._log_sent(messages)
            self._log_replies(replies)
            answered = {r.metadata.reply_to_message_id for r in replies}
            return replies + self._timed_out([m for m in messages if m.metadata.message_id not in answered], timeout)
        self._log_sent(messages)
        pending = dict(zip(ids, messages, strict=True))
        replies: list[Message] = []
        start = last_log = time.monotonic()
        while pending:
            self._check_stop()
            got = list(self.pull_messages(list(pending)))
            replies += got
            for reply in got:
                pending.pop(reply.metadata.reply_to_message_id, None)
            now = time.monotonic()
            if not pending or (timeout is not None and now - start >= timeout):
                break
            if now - last_log >= WAIT_LOG_SECONDS:
                log(INFO, "Waiting for %d of %d replies (%.0f s of a %s s round-timeout)",
                    len(pending), len(messages), now - start, f"{timeout:g}" if timeout is not None else "no")
                last_log = now
            time.sleep(POLL_SECONDS)
        return replies + self._timed_out(list(pending.values()), timeout)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise RunInterrupted("stop requested; the round in progress is dropped")

    def _timed_out(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """An error reply in place of each unanswered instruction (not on the wire: not logged)."""
        out = []
        for message in messages:
            self._sent.pop(message.metadata.message_id, None)
            reason = f"no reply within the round-timeout of {timeout:g} s" if timeout is not None else "no reply"
            out.append(Message(Error(code=ErrorCode.REPLY_MESSAGE_UNAVAILABLE, reason=reason), reply_to=message))
        return out

    def _log_sent(self, messages: list[Message]) -> None:
        for m in messages:
            server_round, phase = _round_and_phase(m)
            self._sent[m.metadata.message_id] = (
                server_round, phase, m.metadata.message_type, int(m.metadata.dst_node_id)
            )
            self.traffic.add(
                TrafficRecord(
                    server_round=server_round,
                    phase=phase,
                    direction="down",
                    node_id=int(m.metadata.dst_node_id),
                    wire_bytes=wire_bytes(m),
                    payload_bytes=payload_bytes(m),
                    dense_equivalent_bytes=0 if phase == "enrol" else self.model_bytes,
                    one_time_bytes=one_time_bytes(m, phase),
                )
            )

    def _log_replies(self, replies: list[Message]) -> None:
        for r in replies:
            # The SuperLink itself answers for an unreachable node: attribute the reply to
            # the node the instruction went to, not to its sender.
            server_round, phase, message_type, node_id = self._sent.pop(
                r.metadata.reply_to_message_id, (0, "train", r.metadata.message_type, int(r.metadata.src_node_id))
            )
            carries_vector = category(message_type) != MessageType.EVALUATE and phase != "enrol" and not r.has_error()
            self.traffic.add(
                TrafficRecord(
                    server_round=server_round,
                    phase=phase,
                    direction="up",
                    node_id=node_id,
                    wire_bytes=wire_bytes(r),
                    payload_bytes=payload_bytes(r),
                    dense_equivalent_bytes=self.model_bytes if carries_vector else 0,
                    one_time_bytes=one_time_bytes(r, phase) if phase in _ONE_TIME_PHASES else 0,
                )
            )
