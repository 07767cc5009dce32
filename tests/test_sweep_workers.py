"""Sweeps running points side by side: the core sets, the pool, pinning, and interruption."""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from simulations import point_process, run
from simulations import sweep as sweep_mod
from simulations.analysis import POINT_FILE
from simulations.config import ConfigError
from simulations.point_process import split_cores
from simulations.run import pin_to_usable_cpus, usable_cpu_ids
from simulations.sweep import run_sweep
from simulations.sweep_file import Point, parse_sweep

GRID = {
    "name": "t",
    "base": {"num-server-rounds": 1, "num-partitions": 2},
    "axes": {"seed": [0, 1, 2]},
}


def _finish(point: Point) -> None:
    pd.DataFrame({"round": range(point.config.num_server_rounds + 1)}).to_csv(point.run_dir / "rounds.csv", index=False)
    (point.run_dir / "config.json").write_text(json.dumps({"config": point.config.to_mapping()}))


@given(cores=st.lists(st.integers(0, 255), min_size=1, max_size=64, unique=True), data=st.data())
def test_core_sets_are_disjoint_contiguous_near_equal_and_cover_every_core(cores: list[int], data) -> None:  # noqa: ANN001
    workers = data.draw(st.integers(1, len(cores)))

    sets = split_cores(workers, cores)

    assert len(sets) == workers
    assert [core for part in sets for core in part] == sorted(cores)
    assert max(map(len, sets)) - min(map(len, sets)) <= 1


@pytest.mark.parametrize("workers", [0, 5])
def test_more_workers_than_cores_or_none_is_refused(workers: int) -> None:
    with pytest.raises(ValueError, match="between 1 and the 4 cores"):
        split_cores(workers, [0, 1, 2, 3])


def test_points_run_side_by_side_each_on_its_own_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 4 cores, 2 workers, 3 points; the first two must be running at the same time
    # (each waits at a barrier for the other), the third reuses a freed core set.
    monkeypatch.setattr(point_process, "usable_cpu_ids", lambda: [0, 1, 2, 3])
    sweep = parse_sweep(GRID, tmp_path)
    barrier = threading.Barrier(2, timeout=10)
    running: list[tuple[str, list[int]]] = []

    def runner(point: Point, on_line, cores: list[int]) -> str | None:  # noqa: ANN001
        running.append((point.name, cores))
        if point.name != "seed2":
            barrier.wait()
        _finish(point)
        return None

    # Execute
    report = run_sweep(sweep, runner, progress=False, workers=2)

    # Assert
    assert report.done == ["seed0", "seed1", "seed2"] and not report.failed
    first_two = sorted(cores for _, cores in running[:2])
    assert first_two == [[0, 1], [2, 3]]
    assert running[2][1] in first_two
    # and each point records where it ran
    recorded = json.loads((sweep.points[0].run_dir / POINT_FILE).read_text())["environment"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    assert (recorded["cores"], recorded["device"]) == (2, device)
    assert (recorded["torch"], recorded["python"]) == (torch.__version__, platform.python_version())


def test_an_interrupted_sweep_stops_its_running_points_and_starts_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 2 workers, 3 points; both running points block until the sweep stops them; a
    # signal (as SIGTERM does for the command) interrupts the waiting main thread.
    monkeypatch.setattr(point_process, "usable_cpu_ids", lambda: [0, 1])
    sweep = parse_sweep(GRID, tmp_path)
    stopped = threading.Event()
    started: list[str] = []
    both_running = threading.Barrier(3, timeout=10)

    def runner(point: Point, on_line, cores: list[int]) -> str | None:  # noqa: ANN001
        started.append(point.name)
        both_running.wait()
        stopped.wait(10)
        return "exit status -9"

    monkeypatch.setattr(sweep_mod, "stop_running_points", stopped.set)
    previous = signal.signal(signal.SIGUSR1, sweep_mod._interrupt)  # noqa: SLF001 - the command's handler
    threading.Thread(target=lambda: (both_running.wait(), os.kill(os.getpid(), signal.SIGUSR1))).start()

    # Execute
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(sweep, runner, progress=False, workers=2)
    finally:
        signal.signal(signal.SIGUSR1, previous)

    # Assert: the running points were stopped and stay "running" (redone next time)
    assert stopped.is_set()
    assert sorted(started) == ["seed0", "seed1"]
    for point in sweep.points[:2]:
        assert json.loads((point.run_dir / POINT_FILE).read_text())["status"] == "running"
    assert not sweep.points[2].run_dir.exists()


def test_a_run_uses_the_cores_the_sweep_gave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv(run.CORES_ENV, "3,2")
    pinned: list[list[int]] = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: pinned.append(list(cores)), raising=False)

    # Execute
    pin_to_usable_cpus()

    # Assert: pinned there, and Ray is sized to them
    assert pinned == [[2, 3]]
    assert usable_cpu_ids() == [2, 3]
    assert run.simulation_backend_config(gpus=0)["init_args"]["num_cpus"] == 2


@pytest.mark.parametrize("spec", ["two,three", ",", "-1"])
def test_a_malformed_core_list_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    monkeypatch.setenv(run.CORES_ENV, spec)

    with pytest.raises(ConfigError, match="FEDFISH_CPUS"):
        usable_cpu_ids()


def test_a_run_asked_for_cores_the_machine_lacks_exits_with_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setenv(run.CORES_ENV, "100000")

    def refuse(pid: int, cores: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse, raising=False)

    # Execute
    status = run.main(["strategy=fedavg"])

    # Assert
    assert status == 2
    assert "FEDFISH_CPUS='100000'" in capsys.readouterr().err
