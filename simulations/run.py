"""Scripted runs: one FedFish simulation from Python or the command line.

    python -m simulations.run strategy=fedfish density=0.05 num-server-rounds=5

Keys are the run-config keys (see README); values are parsed as TOML scalars
(``0.05``, ``true``, ``"text"``; bare words are strings).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation as flwr_run_simulation

from simulations.config import RunConfig


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
    from simulations.server_app import run_federation  # noqa: PLC0415

    done: list[Path] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        done.append(run_federation(grid, cfg))

    # Each virtual client gets one core and one torch thread: more would oversubscribe.
    os.environ.setdefault("FEDFISH_CLIENT_THREADS", "1")
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "num_cpus": os.cpu_count() or 1},
    }
    flwr_run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_supernodes or cfg.num_partitions,
        backend_config=backend_config,
        verbose_logging=verbose,
    )
    if not done:
        raise RuntimeError("the simulation ended without finishing the run; see the log above")
    return done[0]


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


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m simulations.run key=value ...``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="run-config overrides, key=value")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    cfg = RunConfig.from_mapping(parse_overrides(args.overrides))
    run_dir = run_simulation(cfg, verbose=args.verbose)
    print(f"results: {run_dir}")


if __name__ == "__main__":
    main()
