"""Results folders -> tidy pandas DataFrames.

One loader serves the demo, the notebooks, ``bench.savings`` and the README table:
point :func:`load_results` at a run folder, or at a folder of run folders (a sweep).
Sweep points carry ``sweep-point.json`` (written by :mod:`simulations.sweep`); their
axis labels become columns, and points not marked ``done`` are left out. A folder of
committed evidence (``config.json`` and ``rounds.csv`` only) loads as well, with an empty
message log. The savings rules are :mod:`simulations.savings`, the figures
:mod:`simulations.plots`, the mask's own analysis :mod:`simulations.mask_analysis`.

Byte columns are wire bytes (serialized Flower messages) as ``rounds.csv`` and
``clients.csv`` record them; MB = 1e6 bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from simulations.results import CLIENT_COLUMNS

MB = 1e6
POINT_FILE = "sweep-point.json"
# clients.csv phases whose messages are paid once per node or per mask, not per round.
ONE_TIME_PHASES = ("enrol", "calibration")
DIRECTIONS = {"": "total", "_up": "uplink", "_down": "downlink"}


def run_dirs(folder: str | Path) -> list[Path]:
    """Every finished run under ``folder`` (itself included), sorted by path.

    A run is a folder with ``config.json`` and ``rounds.csv``; a sweep point also needs
    ``sweep-point.json`` with status ``done`` (a point still running, or killed half-way,
    is left out).
    """
    folder = Path(folder)
    found = []
    for rounds_csv in folder.rglob("rounds.csv"):
        run_dir = rounds_csv.parent
        if not (run_dir / "config.json").is_file():
            continue
        point = run_dir / POINT_FILE
        if point.is_file() and json.loads(point.read_text()).get("status") != "done":
            continue
        found.append(run_dir)
    return sorted(found)


def load_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tidy frames of all finished runs under ``folder``.

    Returns
    -------
    rounds : pd.DataFrame
        ``rounds.csv`` rows of every run, with ``run`` (folder name relative to ``folder``),
        ``strategy``, ``density``, ``alpha``, ``seed``, ``label`` (the run's method:
        the sweep's ``method`` axis label, else strategy and density) and ``setting``
        (``run`` without its seed: the runs a mean over seeds pools) prepended, and one
        column per sweep axis and tag.
    clients : pd.DataFrame
        ``clients.csv`` rows (one per message) with the same prepended columns (none for
        runs whose folder holds no ``clients.csv``, e.g. committed evidence).
    configs : pd.DataFrame
        One row per run: ``run``, every run-config key, ``num_params`` and the sweep columns.
    """
    folder = Path(folder)
    rounds, clients, configs = [], [], []
    for run_dir in run_dirs(folder):
        name = str(run_dir.relative_to(folder)) if run_dir != folder else run_dir.name
        info = json.loads((run_dir / "config.json").read_text())
        r = pd.read_csv(run_dir / "rounds.csv")
        log = run_dir / "clients.csv"
        c = pd.read_csv(log) if log.is_file() else pd.DataFrame(columns=list(CLIENT_COLUMNS))
        cfg = info["config"]
        tags = _run_tags(name, cfg, run_dir / POINT_FILE)
        for frame in (r, c):
            for i, (key, value) in enumerate(tags.items()):
                frame.insert(i, key, value)
        rounds.append(r)
        clients.append(c)
        configs.append({**tags, **cfg, "num_params": info["num_params"]})
    if not rounds:
        raise FileNotFoundError(f"no finished run folders (config.json + rounds.csv) under {folder}")
    return pd.concat(rounds, ignore_index=True), pd.concat(clients, ignore_index=True), pd.DataFrame(configs)


def _run_tags(name: str, cfg: dict[str, Any], point_file: Path) -> dict[str, Any]:
    tags: dict[str, Any] = {"run": name}
    tags |= {key: cfg[key] for key in ("strategy", "density", "alpha", "seed")}
    if cfg["strategy"] == "fedavg":
        label = "fedavg"
    else:
        label = f"{cfg['strategy']} {100 * cfg['density']:g}%"
    setting = name
    if point_file.is_file():
        point = json.loads(point_file.read_text())
        axes: dict[str, str] = point["axes"]
        label = axes.get("method", label)
        setting = "_".join(value for axis, value in axes.items() if axis != "seed")
        tags |= {f"axis_{axis}": value for axis, value in axes.items()}
        tags |= point.get("tags", {})
    tags["label"] = label
    tags["setting"] = setting
    return tags


def phase_bytes(clients: pd.DataFrame) -> pd.DataFrame:
    """Wire bytes per run, phase and direction (rows: run, phase; columns: up, down, total).

    Phases in ``fedfish.accounting.PHASES``; ``enrol`` (a node's first contact) and ``calibration``
    (client scores for a mask) are one-time costs, as are mask and base payloads inside
    training messages (the ``one_time_bytes`` column, :func:`one_time_bytes`).
    """
    table = clients.pivot_table(index=["run", "phase"], columns="direction", values="wire_bytes",
                                aggfunc="sum", fill_value=0)
    for direction in ("up", "down"):
        if direction not in table.columns:
            table[direction] = 0
    table = table[["up", "down"]]
    table["total"] = table["up"] + table["down"]
    table.columns.name = None
    return table


def one_time_bytes(clients: pd.DataFrame) -> pd.Series:
    """Per run, bytes a node needs once (enrolment, calibration, masks, a base it could not
    rebuild; ``clients.csv``'s ``one_time_bytes``), both directions."""
    return clients.groupby("run")["one_time_bytes"].sum().reindex(clients["run"].unique(), fill_value=0)
