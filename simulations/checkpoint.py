"""Checkpoint and resume of the server: its whole state after every complete round.

``<run-dir>/checkpoint.pt`` is replaced atomically (:func:`simulations.results.atomic_write`)
after each round's row is in ``rounds.csv``, so a crash or a kill at any moment leaves
either the previous round's checkpoint or this one, never half a file. It holds:

- the round number and the run config it belongs to;
- the global model (``state_dict``);
- the strategy's state (:meth:`strategies.fedfish.FedFish.state_dict`: change history,
  mask and version, which partition holds which model/mask version, the node -> partition
  map, the run token, its sampling RNG);
- Python's global ``random`` state (Flower's FedAvg samples with it) and torch's;
- the byte log so far (every :class:`fedfish.accounting.TrafficRecord`) and the rows
  of ``rounds.csv``.

A run started again with ``resume=true`` and the same ``run-name`` loads it, checks that
the config matches, and runs the remaining rounds through :class:`RoundOffset`, so
round numbers, seeds and logs continue as if nothing had happened.

Client-side state (base, mask, top-k error-feedback memories) is not in here: each
ClientApp keeps its own on disk (:mod:`simulations.client_state`), tagged with the run
token that the strategy state carries. Node ids are random per run, so after a restart
the server enrols nodes it does not know (a small query per node, phase ``enrol``) and
learns their partition and holdings before it sends anything else. See
``docs/architecture.md`` (Reliability).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedfish.accounting import TrafficRecord
from simulations.config import ConfigError, RunConfig
from simulations.results import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 3  # 3: per-position change history, holdings and mask state in their own records
# File layout: MAGIC, the sha256 of the rest, then torch.save's bytes: a flipped bit is caught.
MAGIC = b"FFCKPT3\n"
# Keys that may differ between the interrupted run and its resumption.
RESUMABLE_CHANGES = ("resume", "num-server-rounds", "results-dir")


@dataclass
class ServerState:
    """Everything the server needs to continue after round ``server_round``.

    Attributes
    ----------
    server_round : int
        Last complete round (0 = only the initial model was evaluated).
    config : dict[str, Any]
        ``RunConfig.to_mapping()`` of the run.
    arrays : dict[str, torch.Tensor]
        Global model after ``server_round``.
    strategy : dict[str, Any]
        The strategy's ``state_dict()`` ({} for strategies without state).
    python_random : tuple
        ``random.getstate()``.
    torch_random : torch.Tensor
        ``torch.get_rng_state()``.
    traffic : list[TrafficRecord]
        The byte log so far.
    rows : list[dict[str, Any]]
        Rows of ``rounds.csv`` so far.
    """

    server_round: int
    config: dict[str, Any]
    arrays: dict[str, torch.Tensor]
    strategy: dict[str, Any]
    python_random: tuple
    torch_random: torch.Tensor
    traffic: list[TrafficRecord]
    rows: list[dict[str, Any]]

    @classmethod
    def capture(  # noqa: PLR0913 - one argument per part of the state
        cls,
        server_round: int,
        cfg: RunConfig,
        arrays: ArrayRecord,
        strategy: Strategy,
        traffic: Iterable[TrafficRecord],
        rows: list[dict[str, Any]],
    ) -> ServerState:
        """The server's state now, after round ``server_round``."""
        state_dict = getattr(strategy, "state_dict", None)
        return cls(
            server_round=server_round,
            config=cfg.to_mapping(),
            arrays={k: v.clone() for k, v in arrays.to_torch_state_dict().items()},
            strategy=state_dict() if callable(state_dict) else {},
            python_random=random.getstate(),
            torch_random=torch.get_rng_state(),
            traffic=list(traffic),
            rows=[dict(row) for row in rows],
        )

    def restore_random(self) -> None:
        """Put Python's and torch's global RNGs back where they were."""
        random.setstate(self.python_random)
        torch.set_rng_state(self.torch_random)

    def check_matches(self, cfg: RunConfig) -> None:
        """Refuse to resume a run with a different config (ConfigError naming the keys)."""
        now = cfg.to_mapping()
        differing = sorted(
            k for k in set(now) | set(self.config)
            if k not in RESUMABLE_CHANGES and now.get(k) != self.config.get(k)
        )
        if differing:
            raise ConfigError(
                f"resume: the checkpoint of run {cfg.run_name!r} was written with a different config; "
                f"differing keys: {differing}"
            )
        if cfg.num_server_rounds < self.server_round:
            raise ConfigError(
                f"num-server-rounds: the checkpoint is at round {self.server_round}, "
                f"beyond num-server-rounds={cfg.num_server_rounds}"
            )


def save_checkpoint(run_dir: Path, state: ServerState) -> Path:
    """Atomically write ``state`` to ``run_dir/checkpoint.pt``; returns the path."""
    path = Path(run_dir) / CHECKPOINT_NAME
    data = {
        "format": FORMAT,
        "server_round": state.server_round,
        "config": state.config,
        "arrays": state.arrays,
        "strategy": _pack(state.strategy),
        "python_random": state.python_random,
        "torch_random": state.torch_random,
        "traffic": [asdict(r) for r in state.traffic],
        "rows": _plain(state.rows),
    }
    buffer = io.BytesIO()
    torch.save(data, buffer)
    body = buffer.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(MAGIC + hashlib.sha256(body).digest() + body))
    return path


def load_checkpoint(run_dir: Path) -> ServerState | None:
    """The state in ``run_dir/checkpoint.pt``; None if there is none.

    Raises
    ------
    ValueError
        The file is not a FedFish checkpoint of this format, or its digest does not match
        (a flipped bit, a truncated copy): the message names the file.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    raw = path.read_bytes()
    head = len(MAGIC) + hashlib.sha256().digest_size
    if not raw.startswith(MAGIC):
        raise ValueError(f"load_checkpoint: {path} is not a format-{FORMAT} FedFish checkpoint")
    if hashlib.sha256(raw[head:]).digest() != raw[len(MAGIC):head]:
        raise ValueError(f"load_checkpoint: {path} is damaged (its sha256 does not match its contents); "
                         "restore it or start the run afresh without resume")
    data = torch.load(io.BytesIO(raw[head:]), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not a format-{FORMAT} FedFish checkpoint")
    return ServerState(
        server_round=int(data["server_round"]),
        config=dict(data["config"]),
        arrays=dict(data["arrays"]),
        strategy=_unpack(data["strategy"]),
        python_random=_as_tuple(data["python_random"]),
        torch_random=data["torch_random"],
        traffic=[TrafficRecord(**r) for r in data["traffic"]],
        rows=[dict(r) for r in data["rows"]],
    )


def remove_checkpoint(run_dir: Path) -> None:
    """Delete a previous run's checkpoint (a fresh run must not resume from it later)."""
    (Path(run_dir) / CHECKPOINT_NAME).unlink(missing_ok=True)


class RoundOffset(Strategy):
    """``strategy`` with round numbers shifted by ``offset``: Flower's ``Strategy.start``
    counts from 1, a resumed run continues at ``offset + 1``.

    Parameters
    ----------
    strategy : Strategy
        The restored strategy.
    offset : int
        Rounds already done (the checkpoint's round), >= 0.
    """

    def __init__(self, strategy: Strategy, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"RoundOffset: offset must be >= 0, got {offset}")
        self.strategy = strategy
        self.offset = offset

    def summary(self) -> None:
        """The wrapped strategy's summary."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Shifted :meth:`Strategy.configure_train`."""
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Shifted :meth:`Strategy.aggregate_train`."""
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Shifted :meth:`Strategy.configure_evaluate`."""
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Shifted :meth:`Strategy.aggregate_evaluate`."""
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def evaluate_fn(
        self, evaluate: Callable[[int, ArrayRecord], MetricRecord | None]
    ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """``evaluate`` shifted; Flower's call for round 0 is skipped when resuming, since
        that round (the checkpoint's) is already evaluated and logged."""

        def shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0 and self.offset > 0:
                return None
            return evaluate(server_round + self.offset, arrays)

        return shifted


# Bool tensors (history and mask positions, P entries each) are stored bit-packed: 8x smaller.
_PACKED = "__packed_bool__"


def _pack(obj: Any) -> Any:  # noqa: ANN401 - nested state of any shape
    if isinstance(obj, torch.Tensor) and obj.dtype == torch.bool:
        return {_PACKED: torch.from_numpy(np.packbits(obj.numpy())), "shape": list(obj.shape)}
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_pack(v) for v in obj)
    return obj


def _unpack(obj: Any) -> Any:  # noqa: ANN401
    if isinstance(obj, dict) and _PACKED in obj:
        shape = list(obj["shape"])
        count = int(np.prod(shape)) if shape else 1
        bits = np.unpackbits(obj[_PACKED].numpy(), count=count).astype(bool)
        return torch.from_numpy(bits.reshape(shape))
    if isinstance(obj, dict):
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_unpack(v) for v in obj)
    return obj


def _plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # numpy scalars -> Python scalars, so the checkpoint loads with weights_only=True.
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()} for row in rows]


def _as_tuple(state: Any) -> tuple:  # noqa: ANN401
    # random.setstate wants tuples all the way down; lists may come back from storage.
    return tuple(_as_tuple(v) if isinstance(v, list | tuple) else v for v in state)
