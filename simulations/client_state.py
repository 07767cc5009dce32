"""A ClientApp's holding, in ``context.state`` and on disk, so a restart costs no dense resync.

What a FedFish node carries between messages (:class:`fedfish.holding.Holding`: the model
version it holds as values over version 0, its mask, error-feedback memory) lives in
``context.state`` as one serialized blob, and the same bytes are mirrored to
``<state-dir>/<run-name>/partition-<id>.state`` whenever they change, atomically, so the
state survives a SuperNode restart or a killed and resumed simulation.

A blob belongs to one run: it carries the server's ``run-token`` (new for every fresh run,
kept across resumes), and a blob of another run is ignored, so a new run of the same name
never trains on a stale model. A blob that fails its sha256 (a flipped bit, a truncated
file) is never used: the node starts from nothing and says so (``need-base``). The state
directory is the SuperNode's ``--node-config state-dir=...`` if given, else the run
config's ``client-state-dir`` (the server resolves its default beside the results);
empty = memory only.
"""

from __future__ import annotations

from logging import WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.supercore import log

from fedfish.holding import Holding, HoldingError
from simulations.results import atomic_write

RECORD = "fedfish-node"  # ConfigRecord {"holding": bytes}
SUFFIX = ".state"


def state_path(cfg: dict, context: Context) -> Path | None:
    """Where this node's state lives, or None when it is kept in memory only."""
    folder = str(context.node_config.get("state-dir", cfg.get("client-state-dir", "")))
    if not folder:
        return None
    return Path(folder) / str(cfg["run-name"]) / f"partition-{int(context.node_config['partition-id'])}{SUFFIX}"


def load(cfg: dict, context: Context) -> Holding:
    """This run's holding: from ``context.state``, else from disk, else an empty one."""
    token = str(cfg["run-token"])
    record = context.state.config_records.get(RECORD)
    blob, where = (record["holding"], "memory") if record is not None else (_read(cfg, context), "disk")
    if not blob:
        return Holding(run_token=token)
    try:
        holding = Holding.from_bytes(blob)  # type: ignore[arg-type]
    except HoldingError as err:
        log(WARNING, "client state in %s (%s) unusable: %s; starting without it",
            where, state_path(cfg, context) or "context.state", err)
        return Holding(run_token=token)
    if holding.run_token != token:
        return Holding(run_token=token)  # another run's state: never a base to build on
    return holding


def save(cfg: dict, context: Context, holding: Holding) -> int:
    """Store ``holding`` in ``context.state`` and, if it changed, on disk; returns its size in bytes."""
    blob = holding.to_bytes()
    record = context.state.config_records.get(RECORD)
    if record is not None and record["holding"] == blob:
        return len(blob)
    context.state.config_records[RECORD] = ConfigRecord({"holding": blob})
    path = state_path(cfg, context)
    if path is not None:
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(blob))
        except OSError as err:
            # Training goes on from memory; only a restart would cost a resync.
            log(WARNING, "client state not saved to %s (%s); set --node-config state-dir=... to a writable folder",
                path, err)
    return len(blob)


def forget(cfg: dict, context: Context) -> None:
    """Drop the state in memory and on disk (as a node that lost everything would)."""
    context.state.config_records.pop(RECORD, None)
    path = state_path(cfg, context)
    if path is not None:
        path.unlink(missing_ok=True)


def _read(cfg: dict, context: Context) -> bytes:
    path = state_path(cfg, context)
    if path is None or not path.is_file():
        return b""
    try:
        return path.read_bytes()
    except OSError as err:
        log(WARNING, "client state %s unreadable (%s); starting without it", path, err)
        return b""
