"""A strategy run on the in-process Grid with the model after every round kept, for tests."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedfish.accounting import TrafficLog
from fedfish.layout import ParamLayout
from simulations.config import RunConfig
from simulations.inprocess import InProcessGrid, task_identity
from simulations.server_app import build_strategy, client_config, initial_model
from strategies.metering import MeteredGrid


def run_strategy(
    cfg: RunConfig, rounds: int, grid: InProcessGrid | None = None
) -> tuple[Strategy, InProcessGrid, TrafficLog, dict[int, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Run ``cfg``'s strategy for ``rounds`` on a InProcessGrid.

    Returns the strategy, the grid, the byte log, the flat parameters after each round and
    the whole state (parameters and buffers) the server evaluated after each round.
    """
    torch.manual_seed(cfg.seed)
    model = initial_model(cfg)
    strategy = build_strategy(cfg, model)
    grid = grid or InProcessGrid(cfg.num_partitions)
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
