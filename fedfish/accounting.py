"""Communication accounting: one record per message, summed per round and per client.

Flower-free: the strategy layer measures the wire bytes of whole Flower messages and the
codec payload bytes inside them, and hands both in as :class:`TrafficRecord` objects.
Bytes are always SUMMED (over clients, phases and rounds), never averaged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import pandas as pd

from fedfish.codec import value_bytes

PHASES: tuple[str, ...] = ("enrol", "warmup", "calibration", "train", "evaluate")
"""Protocol phases a message can belong to."""

DIRECTIONS: tuple[str, ...] = ("down", "up")
"""``"down"``: server to client; ``"up"``: client to server."""

_SUMMED = ("wire_bytes", "payload_bytes", "dense_equivalent_bytes", "one_time_bytes")
# per_round() column prefix of each summed field: wire bytes are the headline "bytes_up/down".
_ROUND_PREFIX = {"wire_bytes": "bytes", "payload_bytes": "payload_bytes",
                 "dense_equivalent_bytes": "dense_equivalent_bytes", "one_time_bytes": "one_time_bytes"}
_CUMULATIVE = ("bytes", "dense_equivalent_bytes", "one_time_bytes")

__all__ = ["DIRECTIONS", "PHASES", "TrafficLog", "TrafficRecord", "dense_equivalent_bytes", "value_bytes"]


def dense_equivalent_bytes(num_values: int, dtype: str = "fp32") -> int:
    """Bytes that ``num_values`` values of ``dtype`` take when sent densely (no header).

    Parameters
    ----------
    num_values : int
        Number of values, >= 0 (for a model update: the number of parameters ``P``).
    dtype : str, default "fp32"
        One of ``fedfish.codec.VALUE_DTYPES``.

    Raises
    ------
    ValueError
        If ``num_values`` is negative or not an int, or ``dtype`` is unknown.
    """
    if isinstance(num_values, bool) or not isinstance(num_values, int) or num_values < 0:
        raise ValueError(f"num_values: expected an int >= 0, got {num_values!r}")
    return num_values * value_bytes(dtype)


@dataclass(frozen=True)
class TrafficRecord:
    """Traffic of one message between the server and one client.

    Parameters
    ----------
    server_round : int
        Flower server round, >= 0.
    phase : str
        One of :data:`PHASES`.
    direction : str
        One of :data:`DIRECTIONS`.
    node_id : int
        Flower node id of the client, >= 0.
    wire_bytes : int
        Bytes of the whole serialized message (records, config, metrics), >= 0.
    payload_bytes : int
        Bytes of the codec payloads inside the message, >= 0.
    dense_equivalent_bytes : int
        Bytes the same content would take sent densely in fp32 (see
        :func:`dense_equivalent_bytes`), >= 0.
    one_time_bytes : int (default: 0)
        The part of ``wire_bytes`` a node needs once rather than every round (a mask, a
        base it could not rebuild, enrolment, calibration), >= 0.

    Raises
    ------
    ValueError
        Naming the field, if an int field is negative or not an int, or ``phase`` /
        ``direction`` is unknown.
    """

    server_round: int
    phase: str
    direction: str
    node_id: int
    wire_bytes: int
    payload_bytes: int
    dense_equivalent_bytes: int
    one_time_bytes: int = 0

    def __post_init__(self) -> None:
        for name in ("server_round", "node_id", *_SUMMED):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrafficRecord.{name}: expected an int >= 0, got {value!r}")
        if self.phase not in PHASES:
            raise ValueError(f"TrafficRecord.phase: expected one of {PHASES}, got {self.phase!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"TrafficRecord.direction: expected one of {DIRECTIONS}, got {self.direction!r}")


_COLUMNS = tuple(f.name for f in fields(TrafficRecord))


class TrafficLog:
    """Append-only list of :class:`TrafficRecord` with summed views as DataFrames."""

    def __init__(self) -> None:
        self._records: list[TrafficRecord] = []

    def add(self, record: TrafficRecord) -> None:
        """Append one record (TypeError if it is not a :class:`TrafficRecord`)."""
        if not isinstance(record, TrafficRecord):
            raise TypeError(f"record: expected a TrafficRecord, got {type(record).__name__}")
        self._records.append(record)

    def extend(self, records: list[TrafficRecord] | tuple[TrafficRecord, ...]) -> None:
        """Append several records; none is added if any of them is not a TrafficRecord."""
        records = list(records)
        for record in records:
            if not isinstance(record, TrafficRecord):
                raise TypeError(f"records: expected TrafficRecord items, got {type(record).__name__}")
        self._records.extend(records)

    @property
    def records(self) -> tuple[TrafficRecord, ...]:
        """All records in insertion order."""
        return tuple(self._records)

    def to_frame(self) -> pd.DataFrame:
        """One row per record; columns are exactly the :class:`TrafficRecord` fields."""
        return pd.DataFrame([asdict(r) for r in self._records], columns=list(_COLUMNS)).astype(
            # Flower's node ids are unsigned 64-bit: int64 would turn half of them negative.
            {"node_id": "uint64"} | {name: "int64" for name in ("server_round", *_SUMMED)}
        )

    def per_round(self) -> pd.DataFrame:
        """Byte sums per server round, both directions side by side.

        Returns
        -------
        pd.DataFrame
            One row per ``server_round`` (ascending) with int64 columns ``bytes_up``,
            ``bytes_down`` (wire), ``payload_bytes_up/down``, ``dense_equivalent_bytes_up/down``,
            ``one_time_bytes_up/down``, and running totals ``cumulative_bytes_up/down``,
            ``cumulative_dense_equivalent_bytes_up/down`` and ``cumulative_one_time_bytes_up/down``.
            A direction without traffic in a round counts 0.
        """
        wide = self._wide(["server_round"])
        for prefix in _CUMULATIVE:
            for direction in ("up", "down"):
                wide[f"cumulative_{prefix}_{direction}"] = wide[f"{prefix}_{direction}"].cumsum()
        return wide

    def per_phase(self) -> pd.DataFrame:
        """Byte sums per (server_round, phase), with the same up/down columns as :meth:`per_round`
        (no cumulative columns)."""
        return self._wide(["server_round", "phase"])

    def per_client(self) -> pd.DataFrame:
        """Byte sums per (server_round, node_id, direction).

        Returns
        -------
        pd.DataFrame
            Columns ``server_round``, ``node_id``, ``direction``, ``wire_bytes``,
            ``payload_bytes``, ``dense_equivalent_bytes``; sorted by the first three.
        """
        keys = ["server_round", "node_id", "direction"]
        return self.to_frame().groupby(keys, as_index=False)[list(_SUMMED)].sum()

    def _wide(self, keys: list[str]) -> pd.DataFrame:
        """Sums per ``keys`` with one ``<prefix>_<direction>`` column per summed field."""
        columns = [f"{_ROUND_PREFIX[f]}_{d}" for f in _SUMMED for d in ("up", "down")]
        frame = self.to_frame()
        if frame.empty:
            return pd.DataFrame({name: pd.Series(dtype="int64") for name in (*keys, *columns)})
        sums = frame.pivot_table(
            index=keys, columns="direction", values=list(_SUMMED), aggfunc="sum", fill_value=0
        )
        out = pd.DataFrame(index=sums.index)
        for field in _SUMMED:
            for direction in ("up", "down"):
                column = (field, direction)
                out[f"{_ROUND_PREFIX[field]}_{direction}"] = sums[column] if column in sums.columns else 0
        return out.astype("int64").reset_index()
