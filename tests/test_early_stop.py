"""Early stop once accuracy levels off: the rule by hand, and a real in-process run that ends early."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from simulations.config import RunConfig
from simulations.early_stop import Plateau
from simulations.server_app import run_federation
from simulations.inprocess import InProcessGrid, task_identity


def test_plateau_by_hand() -> None:
    # Prepare: accuracy rises until round 6, then stays at 0.7. The 5-round means keep rising
    # while the window still holds older rounds: 0.3 (round 4), 0.4, 0.5, 0.58, 0.64, 0.68, and
    # 0.7 at round 10, the last improvement by more than 0.01.
    accuracies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7] + [0.7] * 7  # rounds 0..13
    plateau = Plateau(patience=3, min_delta=0.01)
    # Execute / Assert: rounds 11, 12, 13 bring nothing; the third of them stops the run
    assert not plateau.reached(accuracies[:13])
    assert plateau.reached(accuracies)
    assert not plateau.reached([0.5] * 5)  # one window, no rounds without improvement yet


def test_small_gains_below_min_delta_do_not_count() -> None:
    # 0.0001 per round is 0.001 per 10 rounds: below 0.002, a plateau; 0.001 per round is not
    assert Plateau(patience=10, min_delta=0.002).reached([0.5 + 0.0001 * r for r in range(15)])
    assert not Plateau(patience=10, min_delta=0.002).reached([0.5 + 0.001 * r for r in range(30)])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="patience"):
        Plateau(0, 0.1)
    with pytest.raises(ValueError, match="min_delta"):
        Plateau(2, -1.0)


def test_a_run_stops_when_it_levels_off_and_a_resume_adds_nothing(tmp_path: Path) -> None:
    # Prepare: a huge min_delta makes every run level off as soon as the rule can tell
    cfg = RunConfig(num_partitions=2, samples_per_client=16, batch_size=16, fisher_samples=8, eval_samples=50,
                    density=0.05, num_server_rounds=20, stop_patience=2, stop_min_delta=1.0,
                    results_dir=str(tmp_path), run_name="flat")
    # Execute
    with task_identity():
        run_dir = run_federation(InProcessGrid(2), cfg)
        rounds = pd.read_csv(run_dir / "rounds.csv")
        resumed = run_federation(InProcessGrid(2), cfg.replace(resume=True))
    # Assert: the first full 5-round window ends at round 4; two more rounds without a rise
    info = json.loads((run_dir / "config.json").read_text())
    assert list(rounds["round"]) == list(range(7)) and info["last_round"] == 6
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "rounds.csv"), rounds)
