"""Tests for fedfish.accounting: validation and byte sums against hand-computed totals."""

from __future__ import annotations

from dataclasses import fields

import pandas as pd
import pytest

from fedfish.accounting import TrafficLog, TrafficRecord, dense_equivalent_bytes, value_bytes


def rec(server_round: int, phase: str, direction: str, node_id: int, wire: int, payload: int, dense: int,
        one_time: int = 0) -> TrafficRecord:
    return TrafficRecord(server_round, phase, direction, node_id, wire, payload, dense, one_time)


# Two clients (7, 9), three rounds; round 2 has downlink only, round 3 uplink only.
RECORDS = [
    rec(1, "calibration", "down", 7, 1_000, 900, 0, 1_000),
    rec(1, "train", "down", 7, 400_100, 400_000, 400_000, 300),
    rec(1, "train", "down", 9, 400_100, 400_000, 400_000),
    rec(1, "train", "up", 7, 20_050, 20_000, 400_000),
    rec(1, "train", "up", 9, 20_060, 20_000, 400_000),
    rec(1, "evaluate", "up", 9, 30, 0, 0),
    rec(2, "train", "down", 7, 20_100, 20_000, 400_000),
    rec(3, "train", "up", 7, 20_070, 20_000, 400_000),
    rec(3, "train", "up", 7, 5, 0, 0),
]


def make_log() -> TrafficLog:
    log = TrafficLog()
    log.add(RECORDS[0])
    log.extend(RECORDS[1:])
    return log


@pytest.mark.parametrize(("dtype", "expected"), [("fp32", 4), ("fp16", 2), ("bf16", 2)])
def test_value_bytes_and_dense_equivalent(dtype: str, expected: int) -> None:
    assert value_bytes(dtype) == expected
    assert dense_equivalent_bytes(1_663_370, dtype) == 1_663_370 * expected
    assert dense_equivalent_bytes(0, dtype) == 0


def test_dense_equivalent_defaults_to_fp32() -> None:
    assert dense_equivalent_bytes(83_000) == 332_000


@pytest.mark.parametrize(
    ("num_values", "dtype", "match"),
    [(-1, "fp32", "num_values"), (2.0, "fp32", "num_values"), (True, "fp32", "num_values"), (3, "fp64", "dtype")],
)
def test_dense_equivalent_rejects_bad_input(num_values: object, dtype: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dense_equivalent_bytes(num_values, dtype)  # type: ignore[arg-type]


VALID = {"server_round": 1, "phase": "train", "direction": "up", "node_id": 3, "wire_bytes": 10,
         "payload_bytes": 8, "dense_equivalent_bytes": 40}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("server_round", -1),
        ("node_id", -5),
        ("wire_bytes", -1),
        ("payload_bytes", 1.5),
        ("dense_equivalent_bytes", "40"),
        ("one_time_bytes", -3),
        ("wire_bytes", True),
        ("phase", "fit"),
        ("direction", "sideways"),
    ],
)
def test_traffic_record_rejects_bad_fields_naming_them(field: str, value: object) -> None:
    # Prepare
    kwargs = {**VALID, field: value}
    # Execute / Assert
    with pytest.raises(ValueError, match=f"TrafficRecord.{field}"):
        TrafficRecord(**kwargs)  # type: ignore[arg-type]


def test_log_rejects_non_records_and_adds_nothing_on_failure() -> None:
    # Prepare
    log = make_log()
    # Execute / Assert
    with pytest.raises(TypeError, match="TrafficRecord"):
        log.add(VALID)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TrafficRecord"):
        log.extend([RECORDS[0], VALID])  # type: ignore[list-item]
    assert log.records == tuple(RECORDS)


def test_to_frame_has_one_row_per_record_and_exactly_the_record_fields() -> None:
    # Execute
    frame = make_log().to_frame()
    # Assert
    assert list(frame.columns) == [f.name for f in fields(TrafficRecord)]
    assert len(frame) == len(RECORDS)
    assert frame.iloc[3].tolist() == [1, "train", "up", 7, 20_050, 20_000, 400_000, 0]
    assert frame["wire_bytes"].sum() == sum(r.wire_bytes for r in RECORDS)


def test_per_round_sums_each_direction_with_zero_for_missing_and_cumulative_totals() -> None:
    # Prepare: totals computed by hand from RECORDS.
    expected = pd.DataFrame(
        {
            "server_round": [1, 2, 3],
            "bytes_up": [20_050 + 20_060 + 30, 0, 20_070 + 5],
            "bytes_down": [1_000 + 400_100 + 400_100, 20_100, 0],
            "payload_bytes_up": [40_000, 0, 20_000],
            "payload_bytes_down": [800_900, 20_000, 0],
            "dense_equivalent_bytes_up": [800_000, 0, 400_000],
            "dense_equivalent_bytes_down": [800_000, 400_000, 0],
            "one_time_bytes_up": [0, 0, 0],
            "one_time_bytes_down": [1_300, 0, 0],
            "cumulative_bytes_up": [40_140, 40_140, 60_215],
            "cumulative_bytes_down": [801_200, 821_300, 821_300],
            "cumulative_dense_equivalent_bytes_up": [800_000, 800_000, 1_200_000],
            "cumulative_dense_equivalent_bytes_down": [800_000, 1_200_000, 1_200_000],
            "cumulative_one_time_bytes_up": [0, 0, 0],
            "cumulative_one_time_bytes_down": [1_300, 1_300, 1_300],
        }
    )
    # Execute
    per_round = make_log().per_round()
    # Assert
    pd.testing.assert_frame_equal(per_round, expected)


def test_per_phase_splits_a_round_by_phase() -> None:
    # Execute
    per_phase = make_log().per_phase().set_index(["server_round", "phase"])
    # Assert
    assert per_phase.loc[(1, "train"), "bytes_down"] == 800_200
    assert per_phase.loc[(1, "train"), "bytes_up"] == 40_110
    assert per_phase.loc[(1, "calibration"), ["bytes_down", "bytes_up", "payload_bytes_down"]].tolist() == [1_000, 0, 900]
    assert per_phase.loc[(1, "evaluate"), "bytes_up"] == 30
    assert len(per_phase) == 5
    assert "cumulative_bytes_up" not in per_phase.columns


def test_per_client_sums_per_round_node_and_direction() -> None:
    # Execute
    per_client = make_log().per_client()
    # Assert
    assert list(per_client.columns) == ["server_round", "node_id", "direction", "wire_bytes", "payload_bytes",
                                        "dense_equivalent_bytes", "one_time_bytes"]
    rows = {tuple(r[:3]): tuple(r[3:]) for r in per_client.itertuples(index=False)}
    assert rows == {
        (1, 7, "down"): (401_100, 400_900, 400_000, 1_300),
        (1, 9, "down"): (400_100, 400_000, 400_000, 0),
        (1, 7, "up"): (20_050, 20_000, 400_000, 0),
        (1, 9, "up"): (20_090, 20_000, 400_000, 0),
        (2, 7, "down"): (20_100, 20_000, 400_000, 0),
        (3, 7, "up"): (20_075, 20_000, 400_000, 0),
    }


def test_empty_log_gives_empty_frames_with_the_columns() -> None:
    # Prepare
    log = TrafficLog()
    # Execute
    per_round = log.per_round()
    # Assert
    assert per_round.empty and "cumulative_bytes_up" in per_round.columns
    assert list(log.to_frame().columns) == [f.name for f in fields(TrafficRecord)]
    assert log.per_client().empty


def test_node_ids_above_2_63_survive_the_frame() -> None:
    # Flower node ids are unsigned 64-bit numbers.
    log = TrafficLog()
    big = 2**64 - 5
    log.add(TrafficRecord(server_round=1, phase="train", direction="up", node_id=big, wire_bytes=10,
                          payload_bytes=5, dense_equivalent_bytes=20))
    assert int(log.to_frame()["node_id"].iloc[0]) == big
    assert int(log.per_client()["node_id"].iloc[0]) == big
