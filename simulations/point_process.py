"""One sweep point in its own process, and the cores it may use when points run side by side.

Each point runs as ``python -m simulations.run key=value ...`` in its own process group, so a
crash or a hung Ray worker costs that point only, and stopping the sweep stops every running
point with its Ray workers. With ``cores`` the point's process pins itself to them before Ray
starts (``FEDFISH_CPUS``); Ray's workers inherit the set and the simulation sizes itself to it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from simulations.run import CORES_ENV, usable_cpu_ids
from simulations.sweep_file import Point

REPO_ROOT = Path(__file__).resolve().parents[1]
# What runs one point: ``python -m <POINT_MODULE> key=value ...``.
POINT_MODULE = "simulations.run"
LOG_FILE = "run.log"

_RUNNING: set[subprocess.Popen[str]] = set()
_RUNNING_LOCK = threading.Lock()


def split_cores(workers: int, cores: Sequence[int] | None = None) -> list[list[int]]:
    """``cores`` (default: those this process may run on) in ``workers`` contiguous sets of
    near-equal size, one per point running at once.

    Raises
    ------
    ValueError
        ``workers`` is below 1 or above the number of cores.
    """
    ids = sorted(usable_cpu_ids() if cores is None else cores)
    if not 1 <= workers <= len(ids):
        raise ValueError(f"--workers must be between 1 and the {len(ids)} cores this process may use, "
                         f"got {workers}")
    size, extra = divmod(len(ids), workers)
    sets, start = [], 0
    for index in range(workers):
        end = start + size + (index < extra)
        sets.append(ids[start:end])
        start = end
    return sets


def environment(cores: Sequence[int] | None = None) -> dict[str, Any]:
    """Where a point ran, for its ``sweep-point.json``: evidence gathered on several machines
    says which numbers came from where (timings differ, and so can the last digits)."""
    import flwr  # noqa: PLC0415 - heavy; the point process imports both anyway
    import torch  # noqa: PLC0415

    return {
        "python": platform.python_version(), "torch": torch.__version__, "flwr": flwr.__version__,
        "machine": platform.machine(), "cores": len(cores) if cores is not None else len(usable_cpu_ids()),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def run_point_subprocess(point: Point, on_line: Callable[[str], None], cores: Sequence[int] | None = None
                         ) -> str | None:
    """Run one point as ``python -m simulations.run key=value ...``, on ``cores`` if given; its
    output goes to ``<point>/run.log`` (appended to when the point continues an interrupted
    run) and each line to ``on_line``. Returns None or the error tail."""
    args = [f"{key}={_toml_value(value)}" for key, value in point.config.to_mapping().items()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cores is not None:
        env[CORES_ENV] = ",".join(map(str, cores))
    point.run_dir.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with (point.run_dir / LOG_FILE).open("a" if point.config.resume else "w") as log:
        # Own process group: stopping the sweep stops the point's Ray workers with it.
        process = subprocess.Popen(
            [sys.executable, "-m", POINT_MODULE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, start_new_session=True,
        )
        with _RUNNING_LOCK:
            _RUNNING.add(process)
        try:
            for line in _lines(process):
                log.write(line + "\n")
                tail = (tail + [line])[-20:]
                on_line(line)
            returncode = process.wait()
        finally:
            _kill(process)
            with _RUNNING_LOCK:
                _RUNNING.discard(process)
    if returncode != 0:
        return f"exit status {returncode}; last lines:\n" + "\n".join(tail)
    return None


def stop_running_points() -> None:
    """Kill every running point's process group (the sweep was interrupted): each point's server
    has checkpointed its last complete round, which the next sweep continues from, so there is
    nothing else to save."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for process in running:
        _kill(process)


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass  # ended between the poll and the kill
        process.wait()


def _lines(process: subprocess.Popen[str]) -> Iterator[str]:
    stdout = process.stdout
    if stdout is None:
        raise RuntimeError("the point process has no stdout pipe")
    for line in stdout:
        yield line.rstrip("\n")


def _toml_value(value: Any) -> str:
    """A value as ``simulations.run.parse_overrides`` reads it back (a TOML scalar)."""
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for any printable text
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
