"""Runs in this very process: real messages and the real ClientApp code, no Ray, no SuperLink.

:class:`InProcessGrid` delivers each Message to the ClientApp in the same process, with one
persistent ``Context`` per node (so node state survives across rounds exactly as on a
SuperNode); a ClientApp exception becomes an error reply, as Flower makes it. It runs a
round with ten clients in seconds, so the protocol tests and the robustness bench use it;
the Ray simulation and the SuperLink/SuperNode deployment are what users run.

    run_in_process(RunConfig(num_partitions=10), handler=hostile(client_app.app, 2, "huge-update"))
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity  # the only way to build Messages outside an app

from simulations import client_app
from simulations.config import RunConfig

Handler = Callable[[Message, Context], Message]


@contextlib.contextmanager
def task_identity(run_id: int = 7) -> Iterator[None]:
    """Let the test process construct instruction Messages, as a running ServerApp can."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class InProcessGrid(Grid):
    """Nodes ``1000 + partition id`` running the FedFish ClientApp in this process.

    Parameters
    ----------
    num_nodes : int
        Number of nodes (= partitions).
    handler : Handler | None (default: None)
        Replaces the ClientApp (e.g. to corrupt replies); defaults to the ClientApp itself,
        which routes each message by its type as a SuperNode does.
    """

    def __init__(self, num_nodes: int, handler: Handler | None = None) -> None:
        self.handler = handler or client_app.app
        self.contexts = {
            1000 + i: Context(
                run_id=7, node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(), run_config={},
            )
            for i in range(num_nodes)
        }
        self.delivered: list[Message] = []

    def set_run(self, run: Run) -> None:  # noqa: D102 - no run to set in-process
        pass

    @property
    def run(self) -> Run:  # noqa: D102
        return Run.create_empty(run_id=7)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # noqa: D102
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError("InProcessGrid only supports send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver each message to its node and collect the replies."""
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.delivered.append(message)
            context = self.contexts[message.metadata.dst_node_id]
            try:
                reply = self.handler(message, context)
            except Exception as err:  # noqa: BLE001 - a failing ClientApp yields an error reply
                reply = Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=message)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
        return replies


def run_in_process(cfg: RunConfig, handler: Handler | None = None) -> Path:
    """The whole run of ``cfg`` (``simulations.server_app.run_federation``) on an
    :class:`InProcessGrid` of ``num-partitions`` nodes; returns the results folder."""
    from simulations.server_app import run_federation  # noqa: PLC0415 - it imports this module's users

    with task_identity():
        return run_federation(InProcessGrid(cfg.num_partitions, handler), cfg)
