"""`flwr run .` works on this project: Flower's CLI, a local simulation SuperLink, our app.

The CLI starts a detached local SuperLink (it outlives `flwr run`); the fixture finds it by
its FLWR_HOME (a temp dir of this test) and stops it with everything it started
(``tests/flwr_cli.py``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.flwr_cli import flwr_run as run_flwr
from tests.flwr_cli import processes_of, stop

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flwr_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.CompletedProcess, Path, Path, set[int]]]:
    flwr_home = tmp_path_factory.mktemp("flwr-home")
    results = flwr_home / "results"
    run_config = (
        "num-partitions=3 samples-per-client=48 num-server-rounds=2 eval-samples=200 fisher-samples=16 "
        f'batch-size=16 results-dir="{results}" run-name="cli"'
    )
    try:
        done = run_flwr(flwr_home, run_config, num_supernodes=3)
        yield done, results / "cli", flwr_home, processes_of(flwr_home)
    finally:
        stop(processes_of(flwr_home))


def test_flwr_run_dot_runs_fedfish_with_run_config_overrides(flwr_run) -> None:
    done, run_dir, _, _ = flwr_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rounds = pd.read_csv(run_dir / "rounds.csv")
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert list(rounds["round"]) == [0, 1, 2]
    assert list(rounds["phase"]) == ["initial", "calibration", "train"]
    assert config["num-server-rounds"] == 2 and config["strategy"] == "fedfish"
    assert (run_dir / "clients.csv").is_file() and (run_dir / "mask.bin").is_file()


def test_the_local_superlink_it_leaves_running_is_found_and_stopped(flwr_run) -> None:
    _, _, flwr_home, left_running = flwr_run
    assert left_running  # `flwr run` returned, its local SuperLink did not
    stop(left_running)
    assert processes_of(flwr_home) == set()
