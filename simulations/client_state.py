"""A ClientApp's state on disk, so that a restarted node or a resumed run needs no dense resync.

The state a FedFish node carries between messages (``context.state``: the base model at
the version it acknowledged, its mask and versions, the top-k error-feedback memory) dies
with the process: a SuperNode restart, or a simulation killed and resumed. This module
mirrors it to ``<state-dir>/<run-name>/partition-<id>.pt`` after every message, atomically,
and loads it back into an empty ``context.state``.

A file belongs to one run: it carries the server's ``run-token`` (new for every fresh
run, kept across resumes), and a file with another token is ignored, so a new run of the
same name never trains on a stale base. The state directory is the SuperNode's
``--node-config state-dir=...`` if given, else the run config's ``client-state-dir``
(the server resolves its default to a folder beside the results); empty = memory only.
"""

from __future__ import annotations

import pickle
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.supercore import log

from simulations.results import atomic_write

FORMAT = 1
BASE = "fedfish-base"  # ArrayRecord: "params" (P,) fp32, "ef-memory" (P,) fp32
NODE = "fedfish-node"  # ConfigRecord: model-version, mask-version, mask (bytes)


def state_path(cfg: dict, context: Context) -> Path | None:
    """Where this node's state lives, or None when it is kept in memory only."""
    folder = str(context.node_config.get("state-dir", cfg.get("client-state-dir", "")))
    if not folder:
        return None
    return Path(folder) / str(cfg["run-name"]) / f"partition-{int(context.node_config['partition-id'])}.pt"


def restore(cfg: dict, context: Context) -> None:
    """Fill an empty ``context.state`` from disk, if a state of this run is there."""
    if NODE in context.state.config_records:
        return
    path = state_path(cfg, context)
    if path is None or not path.is_file():
        return
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        log(WARNING, "client state %s unreadable (%s); starting without it", path, err)
        return
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("run-token") != cfg["run-token"]:
        return  # another run's (or an older format's) state: never a base to build on
    context.state.config_records[NODE] = ConfigRecord(saved["node"])
    context.state.array_records[BASE] = ArrayRecord(
        {key: Array(np.ascontiguousarray(value.numpy())) for key, value in saved["arrays"].items()}
    )


def persist(cfg: dict, context: Context) -> None:
    """Write ``context.state``'s FedFish records to disk (atomically)."""
    path = state_path(cfg, context)
    node = context.state.config_records.get(NODE)
    base = context.state.array_records.get(BASE)
    if path is None or node is None or base is None:
        return
    saved = {
        "format": FORMAT,
        "run-token": str(cfg["run-token"]),
        "node": dict(node),
        "arrays": {key: torch.from_numpy(array.numpy().copy()) for key, array in base.items()},
    }
    try:
        atomic_write(path, lambda tmp: torch.save(saved, tmp))
    except OSError as err:
        # Training goes on from memory; only a restart would cost a dense resync.
        log(WARNING, "client state not saved to %s (%s); set --node-config state-dir=... to a writable folder",
            path, err)


def forget(cfg: dict, context: Context) -> None:
    """Drop the state in memory and on disk (as a node that lost everything would)."""
    context.state.config_records.pop(NODE, None)
    context.state.array_records.pop(BASE, None)
    path = state_path(cfg, context)
    if path is not None:
        path.unlink(missing_ok=True)
