"""examples/custom_model_and_data end to end: its README's two commands, as a user runs them.

A model defined outside the package (an MLP whose head is ``out``), parquet files with
string labels, one client per device (NaturalIdPartitioner): once through
``python -m simulations.run`` (Ray simulation) and once through ``flwr run .`` (a local
simulation SuperLink, stopped afterwards).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from examples.custom_model_and_data import data as activity
from tests.flwr_cli import REPO, processes_of, stop
from tests.flwr_cli import flwr_run as run_flwr

pytestmark = pytest.mark.e2e
SETTINGS = {
    "model": "examples.custom_model_and_data.model:make_model",
    "dataset": "parquet",
    "label-column": "activity",
    "partitioner": "NaturalIdPartitioner",
    "partitioner-args": "{partition_by = 'device_id'}",
    "num-partitions": 24,
    "fraction-train": 0.25,
    "density": 0.1,
    "num-server-rounds": 3,
}


def _check(run_dir: Path) -> None:
    rounds = pd.read_csv(run_dir / "rounds.csv")
    config = json.loads((run_dir / "config.json").read_text())
    assert list(rounds["round"]) == [0, 1, 2, 3]
    assert (rounds["clients_ok"].iloc[1:] == 6).all() and not rounds["skipped"].any()
    assert rounds["accuracy"].iloc[-1] > rounds["accuracy"].iloc[0]
    assert config["config"]["model"] == SETTINGS["model"] and config["mask_k"] > 0


def test_the_example_runs_through_simulations_run(tmp_path: Path) -> None:
    # Prepare
    files = activity.write(tmp_path / "activity")
    args = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in SETTINGS.items()]
    args += [f'data-files="{files}"', f'results-dir="{tmp_path}"', 'run-name="activity"']
    # Execute
    done = subprocess.run([sys.executable, "-m", "simulations.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=400, check=False)
    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check(tmp_path / "activity")


def test_the_example_runs_through_flwr_run(tmp_path: Path) -> None:
    # Prepare
    files = activity.write(tmp_path / "activity")
    run_config = " ".join(
        [f"{k}={v!r}".replace("'{", '"{').replace("}'", '}"') if isinstance(v, str) else f"{k}={v}"
         for k, v in SETTINGS.items()]
        + [f'data-files="{files}"', f'results-dir="{tmp_path}"', 'run-name="activity"']
    )
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    # Execute
    try:
        done = run_flwr(flwr_home, run_config, num_supernodes=24)
    finally:
        stop(processes_of(flwr_home))
    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _check(tmp_path / "activity")
    assert processes_of(flwr_home) == set()
