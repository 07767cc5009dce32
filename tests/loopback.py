"""An in-process Grid for fast strategy tests: real messages, real ClientApp code, no Ray.

``LoopbackGrid`` delivers each Message to ``simulations.client_app`` in the same process,
with one persistent ``Context`` per node (so node state survives across rounds exactly
as on a SuperNode). Client exceptions become error replies, as Flower does. The real
Ray simulation and SuperLink/SuperNode paths are covered by the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.run import Run
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity  # the only way to build Messages outside an app

from fedfish.accounting import TrafficLog
from fedfish.layout import ParamLayout
from simulations import client_app
from simulations.config import RunConfig
from simulations.server_app import build_strategy, client_config, initial_model
from strategies.metering import MeteredGrid

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


class LoopbackGrid(Grid):
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
        raise NotImplementedError("LoopbackGrid only supports send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError("LoopbackGrid only supports send_and_receive")

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


def run_strategy(
    cfg: RunConfig, rounds: int, grid: LoopbackGrid | None = None
) -> tuple[Strategy, LoopbackGrid, TrafficLog, dict[int, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Run ``cfg``'s strategy for ``rounds`` on a LoopbackGrid.

    Returns the strategy, the grid, the byte log, the flat parameters after each round and
    the whole state (parameters and buffers) the server evaluated after each round.
    """
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg)
    strategy = build_strategy(cfg, model)
    grid = grid or LoopbackGrid(cfg.num_partitions)
    traffic = TrafficLog()
    layout = ParamLayout.of(model)
    snapshots: dict[int, torch.Tensor] = {}
    states: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        states[server_round] = state
        snapshots[server_round] = torch.cat([state[n].reshape(-1) for n in layout.names])
        return MetricRecord({})

    with task_identity():
        strategy.start(
            grid=MeteredGrid(grid, traffic, model_bytes=4 * layout.num_params),
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord(client_config(cfg)),
            evaluate_fn=snapshot,
        )
    return strategy, grid, traffic, snapshots, states
