"""What "a resumed run equals the uninterrupted one" means, checked on two results folders.

A resume restarts the server; in simulation every node restarts too and gets a new node
id, so the server enrols them again in the first round after the checkpoint (phase
``enrol``: a few hundred bytes per node and direction; the nodes reload their base, mask
and top-k memory from disk, so nothing else changes). Everything else must be equal:
rounds.csv column by column, once those enrolment bytes are added to the reference, and
the byte log message by message (node ids aside: they are random per run).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def enrolment_bytes(run_dir: Path, server_round: int) -> dict[str, int]:
    """Wire bytes of the ``enrol`` phase in ``server_round``, by direction."""
    log = pd.read_csv(run_dir / "clients.csv")
    enrol = log[(log.server_round == server_round) & (log.phase == "enrol")]
    return {str(k): int(v) for k, v in enrol.groupby("direction").wire_bytes.sum().items()}


def byte_log(run_dir: Path) -> pd.DataFrame:
    """clients.csv without node ids, in a canonical order."""
    log = pd.read_csv(run_dir / "clients.csv").drop(columns=["node_id"])
    return log.sort_values(list(log.columns)).reset_index(drop=True)


def assert_resumed_equals_uninterrupted(reference: Path, resumed: Path, resume_round: int, num_nodes: int) -> None:
    """Equal rounds.csv (wall time aside) and byte log, but for one re-enrolment in ``resume_round``."""
    extra = enrolment_bytes(resumed, resume_round)
    assert set(extra) == {"up", "down"}, f"no re-enrolment logged in round {resume_round}"
    assert sum(extra.values()) < num_nodes * 1000, f"re-enrolment cost {extra} bytes for {num_nodes} nodes"
    expected = pd.read_csv(reference / "rounds.csv").drop(columns=["seconds"]).set_index("round")
    actual = pd.read_csv(resumed / "rounds.csv").drop(columns=["seconds"]).set_index("round")
    later = expected.index >= resume_round
    for direction, size in extra.items():
        # Enrolment is a one-time cost: it counts in the one-time columns as well.
        for column in (f"bytes_{direction}", f"cumulative_bytes_{direction}", "bytes_total", "cumulative_bytes",
                       f"one_time_bytes_{direction}", "cumulative_one_time_bytes"):
            column_is_per_round = not column.startswith("cumulative")
            rows = (expected.index == resume_round) if column_is_per_round else later
            expected.loc[rows, column] += size
    pd.testing.assert_frame_equal(expected, actual)
    log = byte_log(resumed)
    log = log[~((log.server_round == resume_round) & (log.phase == "enrol"))].reset_index(drop=True)
    pd.testing.assert_frame_equal(byte_log(reference), log)
