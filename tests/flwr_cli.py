"""Run ``flwr run .`` on a local simulation SuperLink, and stop what it leaves running.

Flower's CLI starts a detached local SuperLink that outlives ``flwr run``; it is found by
its FLWR_HOME (a temporary folder of the test) and stopped with everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from simulations.deploy import descendants, free_port

REPO = Path(__file__).resolve().parents[1]


def flwr_env(flwr_home: Path, num_supernodes: int) -> dict[str, str]:
    """Environment for Flower's CLI with a local simulation connection of ``num_supernodes``
    in ``flwr_home`` (free ports, no telemetry)."""
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {num_supernodes}\n"
    )
    return os.environ | {
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def flwr_run(flwr_home: Path, run_config: str, num_supernodes: int, timeout: float = 400) -> subprocess.CompletedProcess:
    """``flwr run . --stream --run-config <run_config>`` with a local connection of ``num_supernodes``."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream", "--run-config", run_config],
        cwd=REPO, env=flwr_env(flwr_home, num_supernodes), capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def processes_of(flwr_home: Path) -> set[int]:
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


def stop(pids: set[int]) -> None:
    """SIGTERM, then SIGKILL, each process; wait up to 10 s for each signal to take."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
