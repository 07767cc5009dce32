"""Kill a real simulation mid-run, resume it, and compare with an uninterrupted run.

Three ``python -m simulations.run`` processes (Ray simulation, 3 SuperNodes, 4 rounds):
one uninterrupted; one SIGKILLed, with its whole process group (Ray's GCS, raylet and
workers included), once round 2 is in its rounds.csv; and that run started again with
``resume=true``. The two run names have the same length, because the run name travels
in every message (clients file their on-disk state under it).

No failure drill here: Ray puts the worker's traceback, process ids included, in an
error reply, so error replies differ by a few bytes between any two runs. Failures with
a resume are compared byte for byte in ``tests/test_resume.py`` (in-process Grid).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from tests.resume_checks import assert_resumed_equals_uninterrupted

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (
    "strategy=fedfish", "density=0.05", "num-partitions=3", "samples-per-client=48", "batch-size=16",
    "fisher-samples=16", "eval-samples=200", "num-server-rounds=4", "seed=11",
)
RUN_TIMEOUT_S = 300


def _start(results: Path, run_name: str, *extra: str) -> subprocess.Popen:
    """``python -m simulations.run`` in its own session, so it and all it spawns form one group."""
    log = open(results / f"{run_name}-{len(extra)}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *SETTINGS, f"results-dir={results}", f"run-name={run_name}", *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=os.environ | {"RAY_DEDUP_LOGS": "0"},
    )


def _group(proc: subprocess.Popen) -> list[psutil.Process]:
    """The process and all its descendants that are still alive."""
    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill_group(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the process group; returns the processes (by PID) that were in it."""
    members = _group(proc)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    return members


def _wait(proc: subprocess.Popen) -> None:
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    assert rc == 0, f"run failed with exit code {rc}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    results = tmp_path_factory.mktemp("results")
    started: list[subprocess.Popen] = []
    try:
        # Uninterrupted reference.
        started.append(reference := _start(results, "reference"))
        _wait(reference)
        # The run to kill: SIGKILL its group as soon as round 2 is logged.
        started.append(victim := _start(results, "restarted"))
        rounds_csv = results / "restarted" / "rounds.csv"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        rounds_at_kill: list[int] = []
        while time.monotonic() < deadline and victim.poll() is None:
            if rounds_csv.exists():
                rounds_at_kill = list(pd.read_csv(rounds_csv)["round"])
                if 2 in rounds_at_kill:
                    break
            time.sleep(0.2)
        assert victim.poll() is None, "the run ended before it could be killed"
        members = _kill_group(victim)
        time.sleep(1.0)
        survivors = [p.pid for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        ray_members = [p for p in members if p.pid != victim.pid]
        # Resume it.
        started.append(resumed := _start(results, "restarted", "resume=true"))
        _wait(resumed)
        yield {
            "results": results, "rounds_at_kill": rounds_at_kill, "survivors": survivors,
            "num_members": len(ray_members),
            "log": (results / "restarted-1.log").read_text(),
        }
    finally:
        for proc in started:
            if proc.poll() is None:
                _kill_group(proc)


def _model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def test_kill_took_down_the_whole_process_group(runs) -> None:
    assert runs["num_members"] >= 2  # Ray's GCS/raylet/workers were children of the run
    assert runs["survivors"] == []
    assert 4 not in runs["rounds_at_kill"]  # killed mid-run, not after it finished


def test_resumed_run_continued_from_a_checkpoint(runs) -> None:
    assert "resuming after round" in runs["log"]
    resumed_after = int(runs["log"].split("resuming after round ")[1].split()[0].rstrip(","))
    assert resumed_after in (1, 2)


def test_resumed_final_model_equals_uninterrupted(runs) -> None:
    reference, resumed = _model(runs["results"] / "reference"), _model(runs["results"] / "restarted")
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name


def test_resumed_logs_equal_uninterrupted_but_for_reenrolment(runs) -> None:
    # Prepare
    results = runs["results"]
    reference = pd.read_csv(results / "reference" / "rounds.csv")
    resumed_after = int(runs["log"].split("resuming after round ")[1].split()[0].rstrip(","))
    # Assert: every round is there once, and every client trained in each
    assert (reference.loc[1:, "clients_ok"] == 3).all()
    assert list(pd.read_csv(results / "restarted" / "rounds.csv")["round"]) == [0, 1, 2, 3, 4]
    # rounds.csv and the byte log are equal, but for the new nodes' enrolment after the
    # resume (the clients reloaded base, mask and versions from disk: no dense resync)
    assert_resumed_equals_uninterrupted(results / "reference", results / "restarted", resumed_after + 1, num_nodes=3)
