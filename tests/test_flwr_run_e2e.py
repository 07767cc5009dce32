"""`flwr run .` works on this project: Flower's CLI, a local simulation SuperLink, our app.

The CLI starts a detached local SuperLink (it outlives `flwr run`); the fixture finds it by
its FLWR_HOME (a temp dir of this test) and stops it with everything it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from simulations.deploy import descendants, free_port

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def _processes_of(flwr_home: Path) -> set[int]:
    """Processes whose command line names ``flwr_home`` (the local SuperLink), and their children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(flwr_home) in cmdline:
                found.add(int(entry.name))
    return found | {child for pid in found for child in descendants(pid)}


def _stop(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def flwr_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.CompletedProcess, Path, Path, set[int]]]:
    flwr_home = tmp_path_factory.mktemp("flwr-home")
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 3\n'
    )
    results = flwr_home / "results"
    env = os.environ | {
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    run_config = (
        "num-partitions=3 samples-per-client=48 num-server-rounds=2 eval-samples=200 fisher-samples=16 "
        f'batch-size=16 results-dir="{results}" run-name="cli"'
    )
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream", "--run-config", run_config],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False,
        )
        yield done, results / "cli", flwr_home, _processes_of(flwr_home)
    finally:
        _stop(_processes_of(flwr_home))


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
    _stop(left_running)
    assert _processes_of(flwr_home) == set()
