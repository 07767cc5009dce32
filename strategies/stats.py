"""Per-round counts every strategy keeps, so ``rounds.csv`` has the same columns for all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strategies.replies import ReplyBatch


@dataclass
class RoundStats:
    """What happened in one round.

    Attributes
    ----------
    phase : str
        ``warmup``, ``calibration`` (the round built a mask from client scores) or ``train``.
    mask_density : float
        Fraction of parameters trained and sent (1.0 for dense rounds).
    clients_ok, clients_failed, clients_rejected, clients_resynced : int
        Valid replies; replies that carried an error or never came; replies rejected by
        validation; nodes that answered ``need-base``. Failures and rejections add up over
        the round's exchanges (calibration, then training).
    skipped : bool
        The global model was not updated this round.
    rejections : list[tuple[int, str]]
        (node id, reason) of each rejected reply.
    """

    phase: str = "train"
    mask_density: float = 1.0
    clients_ok: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    clients_resynced: int = 0
    skipped: bool = False
    rejections: list[tuple[int, str]] = field(default_factory=list)

    def count(self, batch: ReplyBatch) -> None:
        """Add an exchange's failures, rejections and resyncs (enrolment, calibration or
        training) to the round's."""
        self.clients_failed += batch.failed
        self.clients_rejected += len(batch.rejected)
        self.clients_resynced += batch.need_base
        self.rejections.extend(batch.rejected)
