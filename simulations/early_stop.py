"""Stop a run once its accuracy has levelled off, so each method gets the rounds it needs.

Methods that send a hundredth of FedAvg's bytes per round may need many more rounds to
level off; a fixed round budget either cuts them short or wastes hours on a flat curve.
:class:`Plateau` watches the server's accuracy after every round: the mean of the last
:data:`WINDOW` rounds must beat its best so far by ``min_delta`` at least once every
``patience`` rounds, else the run ends there (``num-server-rounds`` stays the cap).
The decision depends on the accuracies alone, so a resumed run stops where an
uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Sequence

WINDOW = 5
"""Rounds averaged: the same window as the results' final accuracy."""


class Converged(Exception):  # noqa: N818 - a run ending as asked, not an error
    """Raised after a round's row and checkpoint are written, when the run has levelled off."""

    def __init__(self, server_round: int) -> None:
        super().__init__(f"accuracy levelled off; stopping after round {server_round}")
        self.server_round = server_round


class Plateau:
    """Has a run levelled off?

    Parameters
    ----------
    patience : int
        Rounds without an improvement of the windowed mean before stopping, >= 1.
    min_delta : float
        Smallest rise of the windowed mean accuracy that counts as an improvement, >= 0.
    """

    def __init__(self, patience: int, min_delta: float) -> None:
        if patience < 1 or min_delta < 0:
            raise ValueError(f"Plateau: patience must be >= 1 and min_delta >= 0, got {patience}, {min_delta}")
        self.patience = patience
        self.min_delta = min_delta

    def reached(self, accuracies: Sequence[float]) -> bool:
        """Whether the run should stop after the last of ``accuracies`` (round 0 first)."""
        best, best_round = float("-inf"), 0
        for end in range(WINDOW, len(accuracies) + 1):
            mean = sum(accuracies[end - WINDOW : end]) / WINDOW
            if mean > best + self.min_delta:
                best, best_round = mean, end - 1
        return len(accuracies) - 1 - best_round >= self.patience and len(accuracies) > WINDOW
