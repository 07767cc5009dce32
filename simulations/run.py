"""Scripted runs: one FedFish simulation from Python or the command line.

    python -m simulations.run strategy=fedfish density=0.05 num-server-rounds=5

Keys are the run-config keys (see README); values are parsed as TOML scalars
(``0.05``, ``true``, ``"text"``; bare words are strings).

SIGINT (Ctrl-C) or SIGTERM stops the run within seconds: Ray and its workers are shut
down, the round in progress is dropped, and the checkpoint keeps the last complete round
(``resume=true`` continues from it). Exit status: 0 when every round ran, 1 when the run
ended with skipped rounds, 2 for a config error, 130 when it was interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation as flwr_run_simulation

from simulations.config import ConfigError, RunConfig
from simulations.results import unfinished_reason
from strategies.metering import RunInterrupted

# Set by SIGINT/SIGTERM: the ServerApp's next wait for replies ends with RunInterrupted.
STOP = threading.Event()
# The cores a run may use, when a sweep runs points side by side (see usable_cpu_ids).
CORES_ENV = "FEDFISH_CPUS"


def run_simulation(cfg: RunConfig, *, num_supernodes: int | None = None, verbose: bool = False) -> Path:
    """Run ``cfg`` in Flower's Ray simulation with one SuperNode per partition.

    Parameters
    ----------
    cfg : RunConfig
        The run.
    num_supernodes : int | None (default: None)
        Virtual SuperNodes; defaults to ``cfg.num_partitions``.
    verbose : bool (default: False)
        Flower's debug logging.

    Returns
    -------
    Path
        The results folder ``<results-dir>/<run-name>``.
    """
    from simulations.client_app import app as client_app  # noqa: PLC0415 - heavy import
    from simulations.server_app import check_plugins, run_federation  # noqa: PLC0415

    check_plugins(cfg)  # a bad name or file fails here, before Ray starts
    done: list[Path] = []
    server_app = ServerApp()
    STOP.clear()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        done.append(run_federation(grid, cfg, stop=STOP))

    # Each virtual client gets one core and one torch thread: more would oversubscribe.
    os.environ.setdefault("FEDFISH_CLIENT_THREADS", "1")
    backend_config = simulation_backend_config()
    _start_ray(backend_config["init_args"])
    try:
        with _stop_on_signals():
            flwr_run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_supernodes or cfg.num_partitions,
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    except KeyboardInterrupt:
        raise RunInterrupted(f"run {cfg.run_name!r} interrupted; its checkpoint holds the last complete "
                             "round: continue with resume=true") from None
    finally:
        _reap_ray_workers()
    if not done:
        raise RuntimeError("the simulation ended without finishing the run; see the log above")
    return done[0]


def simulation_backend_config(cpus: int | None = None, gpus: int | None = None) -> dict[str, Any]:
    """Flower's Ray backend config: one core per virtual client and, when CUDA devices are
    present, a GPU share such that as many clients train at once as there are cores (Ray
    places a client on a GPU only if it asks for a share). ``FEDFISH_CLIENT_GPUS`` overrides
    the share (``0`` keeps clients on the CPU). The cores are those this process may run on
    (``taskset`` or a container's CPU set), not the machine's: Ray's workers inherit that set,
    so counting the machine's would start more clients at once than there are cores."""
    cpus = cpus or usable_cpus()
    if gpus is None:
        import torch  # noqa: PLC0415 - heavy, and the client app imports it anyway

        gpus = torch.cuda.device_count()
    share = float(os.environ.get("FEDFISH_CLIENT_GPUS", gpus / cpus if gpus else 0.0))
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": share},
        "init_args": {"include_dashboard": False, "num_cpus": cpus, "num_gpus": gpus},
    }


def usable_cpus() -> int:
    """How many cores this process may run on (see :func:`usable_cpu_ids`)."""
    return len(usable_cpu_ids())


def usable_cpu_ids() -> list[int]:
    """The cores this process may run on: ``$FEDFISH_CPUS`` (``0,1,2,3``; a sweep running points
    side by side sets it), else the process's CPU affinity (``taskset``, a container's CPU
    set), else every core of the machine."""
    if spec := os.environ.get(CORES_ENV, "").strip():
        try:
            cores = sorted({int(core) for core in spec.split(",")})
        except ValueError:
            raise ConfigError(f"{CORES_ENV} must list core numbers like 0,1,2,3, got {spec!r}") from None
        if not cores or cores[0] < 0:
            raise ConfigError(f"{CORES_ENV} must list core numbers like 0,1,2,3, got {spec!r}")
        return cores
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_to_usable_cpus() -> None:
    """Pin this process to ``$FEDFISH_CPUS`` before Ray starts, so that Ray's workers (which
    inherit the set) stay off the cores of the points running beside it. Platforms without
    CPU affinity only size the simulation to the set."""
    if os.environ.get(CORES_ENV, "").strip() and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, usable_cpu_ids())
        except OSError as err:
            raise ConfigError(f"{CORES_ENV}={os.environ[CORES_ENV]!r} names cores this machine does not "
                              f"let us use: {err}") from None


def _start_ray(init_args: dict[str, Any]) -> None:
    """Start Ray as Flower's Ray backend would (it then reuses it), so that the signal handlers
    installed next are ours: ``ray.init`` installs its own SIGTERM handlers (a Python
    ``sys.exit`` and a C++ one that aborts the process), which would leave Ray behind."""
    import ray  # noqa: PLC0415 - heavy, and only simulations need it

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(filter(None, [*sys.path, os.environ.get("PYTHONPATH", "")]))
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)


def _reap_ray_workers(grace: float = 10.0) -> None:
    """Ray's shutdown stops its raylet, but its worker processes (``ray::...``, no longer our
    children by then) exit a few seconds later: wait for those of our process group, then
    kill what is left, so that a finished or interrupted run leaves nothing behind."""
    group = os.getpgid(0)

    def workers() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            try:
                if (process.pid != os.getpid() and os.getpgid(process.pid) == group
                        and (process.info["cmdline"] or [""])[0].startswith("ray::")):
                    found.append(process)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    _, alive = psutil.wait_procs(workers(), timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM set :data:`STOP` (the ServerApp stops waiting) and unwind the main
    thread like Ctrl-C, so Flower stops Ray and its workers instead of leaving them behind."""

    def stop(signum: int, frame: object) -> None:
        STOP.set()
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["density=0.05", "strategy=fedfish"]`` -> ``{"density": 0.05, "strategy": "fedfish"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m simulations.run key=value ...``; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="run-config overrides, key=value")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        pin_to_usable_cpus()
        cfg = RunConfig.from_mapping(parse_overrides(args.overrides))
        run_dir = run_simulation(cfg, verbose=args.verbose)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(str(err), file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Flower's message threads may still be blocked on Ray's stopped workers, and the
        # interpreter would join them forever: everything is on disk, so leave at once.
        os._exit(130)
    print(f"results: {run_dir}")
    reason = unfinished_reason(run_dir)
    if reason is not None:
        print(f"the run did not finish as asked: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
