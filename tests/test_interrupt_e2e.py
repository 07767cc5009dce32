"""Interrupted, failed and refused runs end promptly, leave nothing behind and say so.

Real processes: ``python -m simulations.run`` (a Ray simulation) stopped with SIGINT to its
process group (Ctrl-C) or SIGTERM to the process alone (a supervisor), a run whose every
reply fails, and ``python -m simulations.flwr_run`` (Flower's CLI with an exit status) on a
run config the ServerApp refuses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from simulations.checkpoint import load_checkpoint
from tests.flwr_cli import REPO, flwr_env, processes_of, stop

pytestmark = pytest.mark.e2e
SETTINGS = ("num-partitions=3", "samples-per-client=48", "batch-size=16", "fisher-samples=16", "eval-samples=200")


def _start(results: Path, run_name: str, *extra: str) -> subprocess.Popen:
    log = open(results / f"{run_name}.log", "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *SETTINGS, f"results-dir={results}", f"run-name={run_name}", *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(processes: list[psutil.Process]) -> list[int]:
    return [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _wait_for_round(run_dir: Path, proc: subprocess.Popen, server_round: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        rounds = run_dir / "rounds.csv"
        if rounds.exists() and server_round in set(pd.read_csv(rounds)["round"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"round {server_round} never logged (exit code {proc.poll()})")


@pytest.mark.parametrize("how", ["sigint-group", "sigterm-process"])
def test_a_signal_stops_the_run_in_seconds_and_the_checkpoint_is_the_last_complete_round(
    tmp_path: Path, how: str
) -> None:
    # Prepare: a 6-round run, stopped once round 1 is in its rounds.csv
    proc = _start(tmp_path, "r", "num-server-rounds=6")
    try:
        _wait_for_round(tmp_path / "r", proc, 1)
        members = _tree(proc)
        # Execute
        started = time.monotonic()
        if how == "sigint-group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        seconds = time.monotonic() - started
        time.sleep(1.0)
        # Assert: prompt, nothing left, exit 130, no final model; the checkpoint is the last round in rounds.csv
        assert seconds < 30, seconds
        assert _alive(members) == [], f"left behind: {_alive(members)} of {[p.pid for p in members]}"
        assert len(members) >= 2 and code == 130
        assert not (tmp_path / "r" / "model.pt").exists()
        last_row = int(pd.read_csv(tmp_path / "r" / "rounds.csv")["round"].max())
        assert load_checkpoint(tmp_path / "r").server_round == last_row < 6
        assert "resume=true" in (tmp_path / "r.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # ... and the run resumes from there and finishes
    resumed = _start(tmp_path, "r", "num-server-rounds=6", "resume=true")
    assert resumed.wait(timeout=400) == 0
    assert list(pd.read_csv(tmp_path / "r" / "rounds.csv")["round"]) == list(range(7))


def test_a_run_whose_every_round_was_skipped_exits_non_zero_and_says_so(tmp_path: Path) -> None:
    # Execute: every client message fails, so no round has a valid reply
    done = subprocess.run(
        [sys.executable, "-m", "simulations.run", *SETTINGS, "num-server-rounds=2", "fault-fail-fraction=1.0",
         f"results-dir={tmp_path}", "run-name=s"], cwd=REPO, capture_output=True, text=True, timeout=400, check=False,
    )
    # Assert
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 of 2 rounds were skipped" in done.stderr
    rounds = pd.read_csv(tmp_path / "s" / "rounds.csv")
    assert (rounds.loc[1:, "clients_failed"] == 3).all()


def test_a_config_error_is_exit_status_2_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "simulations.run", "density=1.5", f"results-dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "density: must be in (0.0, 1.0]" in done.stderr
    assert not any(tmp_path.iterdir())


def test_flwr_run_with_a_refused_config_exits_non_zero(tmp_path: Path) -> None:
    # Prepare: a local simulation connection; density 1.5 passes Flower, and the ServerApp refuses it
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    env = flwr_env(flwr_home, num_supernodes=3)
    # Execute
    try:
        done = subprocess.run(
            [sys.executable, "-m", "simulations.flwr_run", ".", "--run-config", "density=1.5 num-partitions=3"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        stop(processes_of(flwr_home))
    # Assert
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "finished:failed" in done.stdout
