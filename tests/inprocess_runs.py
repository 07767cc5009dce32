"""Whole runs (``run_federation``) on the in-process Grid, for the reliability and resume tests."""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Message

from simulations.config import RunConfig
from simulations.inprocess import InProcessGrid, task_identity
from simulations.server_app import run_federation

TINY = RunConfig(
    num_partitions=3, samples_per_client=48, batch_size=16, lr=0.05, fisher_samples=16,
    partitioner="dirichlet", alpha=0.5, eval_samples=200, seed=7, density=0.05, num_server_rounds=4,
)


class RecordingLoopback(InProcessGrid):
    """InProcessGrid that keeps every (instruction, reply) pair."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__(num_nodes)
        self.pairs: list[tuple[Message, Message]] = []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201, D102
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.pairs += list(zip(messages, replies, strict=True))
        return replies


def federate(cfg: RunConfig, grid: InProcessGrid) -> Path:
    with task_identity():
        return run_federation(grid, cfg)


def final_params(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "model.pt", weights_only=True)
    return torch.cat([t.reshape(-1) for t in state.values()])


def renumbered(grid: InProcessGrid, offset: int) -> InProcessGrid:
    """The same partitions behind other node ids, in reverse order."""
    contexts = list(grid.contexts.values())
    grid.contexts = {}
    for i, context in enumerate(reversed(contexts)):
        context.node_id = 5000 - offset - i
        grid.contexts[context.node_id] = context
    return grid
