"""Flower's own FedAvg, with the per-round counts our round log needs.

The dense baseline is Flower's FedAvg unchanged (same messages, same aggregation);
this subclass only notes how many replies were valid or failed, so ``rounds.csv``
has the same columns for every strategy. Its bytes are measured like everyone's,
by :class:`strategies.metering.MeteredGrid`.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from strategies.fedfish import RoundStats


class CountingFedAvg(FedAvg):
    """:class:`flwr.serverapp.strategy.FedAvg` that records a :class:`RoundStats` per round."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.round_stats: dict[int, RoundStats] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Count valid and failed replies, then aggregate as FedAvg does."""
        replies = list(replies)
        failed = sum(1 for r in replies if r.has_error())
        self.round_stats[server_round] = RoundStats(
            phase="train", mask_density=1.0, clients_ok=len(replies) - failed, clients_failed=failed,
            skipped=failed == len(replies),
        )
        return super().aggregate_train(server_round, replies)
