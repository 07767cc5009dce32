"""The results folder of a run, written as the run goes and read back with pandas.

``results/<run-name>/`` holds:

- ``config.json``: the run config, model size, mask digest and seed;
- ``rounds.csv``: one row per server round (round 0 = the initial model), see
  :data:`ROUND_COLUMNS`;
- ``clients.csv``: one row per message (round, phase, direction, node, wire bytes,
  payload bytes, dense-equivalent bytes);
- ``model.pt`` (final ``state_dict``) and ``mask.bin`` (the final mask, a
  ``fedfish.codec`` payload; absent for dense strategies).

Files are replaced atomically, so a reader or a crash never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

ROUND_COLUMNS = (
    "round", "phase", "accuracy", "loss",
    "bytes_up", "bytes_down", "bytes_total",
    "cumulative_bytes_up", "cumulative_bytes_down", "cumulative_bytes",
    "payload_bytes_up", "payload_bytes_down",
    "dense_equivalent_bytes_up", "dense_equivalent_bytes_down",
    "cumulative_dense_equivalent_bytes",
    "one_time_bytes_up", "one_time_bytes_down", "cumulative_one_time_bytes",
    "mask_density", "clients_ok", "clients_failed", "clients_rejected", "clients_resynced",
    "skipped", "seconds",
)
CLIENT_COLUMNS = (
    "server_round", "phase", "direction", "node_id", "wire_bytes", "payload_bytes", "dense_equivalent_bytes",
    "one_time_bytes",
)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Atomically write ``frame`` as CSV without the index."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write raw bytes."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_state_dict(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Atomically save a ``state_dict``."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def unfinished_reason(run_dir: str | Path) -> str | None:
    """Why a finished run is not the run that was asked for (None if it is): skipped rounds
    (the model was not updated in them) or fewer rounds than ``num-server-rounds`` without
    an early stop."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    rounds = pd.read_csv(run_dir / "rounds.csv")
    skipped = [int(r) for r in rounds.loc[rounds["skipped"].astype(bool), "round"]]
    if skipped:
        return f"{len(skipped)} of {len(rounds) - 1} rounds were skipped (no valid replies): rounds {skipped}"
    asked = int(config["config"]["num-server-rounds"])
    last = int(rounds["round"].max())
    if last < asked and not config["config"].get("stop-patience"):
        return f"it ended after round {last} of {asked}"
    return None


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """``(config, rounds, clients)`` of one run folder, as written by the server."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    rounds = pd.read_csv(run_dir / "rounds.csv")
    clients = pd.read_csv(run_dir / "clients.csv")
    return config, rounds, clients
