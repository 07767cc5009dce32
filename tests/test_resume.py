"""Whole runs stopped and resumed, and run-to-run determinism, in process (InProcessGrid, real
ClientApp code): a resumed run equals the uninterrupted one bit for bit, whatever the node ids
and whatever the clients kept on disk. The real process kill is in ``test_resume_e2e.py``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from simulations.inprocess import InProcessGrid
from strategies import records
from tests.inprocess_runs import TINY, RecordingLoopback, federate, final_params, renumbered
from tests.resume_checks import assert_resumed_equals_uninterrupted


@pytest.mark.parametrize("strategy", ["fedfish", "topk-ef"])
def test_same_seed_same_results_and_resume_matches(tmp_path: Path, strategy: str) -> None:
    # Prepare: two full runs whose node ids differ (loopback ids 1000+i vs. other, reversed
    # ones), and a run stopped after round 2 then resumed with new nodes (fresh contexts,
    # new ids): what they held survives only on disk. top-k carries error-feedback memories.
    cfg = TINY.replace(strategy=strategy, results_dir=str(tmp_path), fault_fail_fraction=0.3, num_server_rounds=3)
    # Execute
    first = federate(cfg.replace(run_name="a"), InProcessGrid(3))
    second = federate(cfg.replace(run_name="b"), renumbered(InProcessGrid(3), offset=50))
    federate(cfg.replace(run_name="c", num_server_rounds=2), InProcessGrid(3))
    resumed = federate(cfg.replace(run_name="c", resume=True), renumbered(InProcessGrid(3), offset=90))
    # Assert: identical rounds.csv (but wall time) and bit-identical models
    a, b = (pd.read_csv(d / "rounds.csv").drop(columns=["seconds"]) for d in (first, second))
    pd.testing.assert_frame_equal(a, b)
    assert torch.equal(final_params(first), final_params(second))
    assert torch.equal(final_params(first), final_params(resumed))
    # ... and the logs are equal but for the nodes' re-enrolment after the resume (new node ids)
    assert_resumed_equals_uninterrupted(first, resumed, resume_round=3, num_nodes=3)


def test_resume_after_a_round_the_server_never_checkpointed(tmp_path: Path) -> None:
    # Prepare: the server dies after its round-3 messages went out (and were trained on and
    # persisted by the clients) but before its round-3 checkpoint: replay that with the
    # round-2 checkpoint put back after round 3.
    cfg = TINY.replace(results_dir=str(tmp_path), num_server_rounds=3)
    first = federate(cfg.replace(run_name="a"), InProcessGrid(3))
    stopped = federate(cfg.replace(run_name="c", num_server_rounds=2), InProcessGrid(3))
    round_2 = (stopped / "checkpoint.pt").read_bytes()
    federate(cfg.replace(run_name="c", resume=True), renumbered(InProcessGrid(3), offset=70))
    (stopped / "checkpoint.pt").write_bytes(round_2)
    # Execute
    resumed = federate(cfg.replace(run_name="c", resume=True), renumbered(InProcessGrid(3), offset=90))
    # Assert: the clients, a version ahead of the checkpoint, are sent round 3's delta again
    assert torch.equal(final_params(first), final_params(resumed))
    assert_resumed_equals_uninterrupted(first, resumed, resume_round=3, num_nodes=3)


def test_resume_without_client_state_on_disk_resyncs_from_version_0(tmp_path: Path) -> None:
    # Prepare: the same stop-and-resume, but clients keep their state in memory only
    cfg = TINY.replace(results_dir=str(tmp_path), num_server_rounds=3, client_state_dir="off")
    # Execute
    first = federate(cfg.replace(run_name="a"), InProcessGrid(3))
    federate(cfg.replace(run_name="c", num_server_rounds=2), InProcessGrid(3))
    resumed = federate(cfg.replace(run_name="c", resume=True), renumbered(InProcessGrid(3), offset=90))
    # Assert: nothing on disk; each node enrols holding nothing, rebuilds version 0, and in
    # round 3 gets the mask once more besides the values it needs anyway: never the dense
    # model, no need-base round trip, and the model is still the uninterrupted one
    assert not (tmp_path / "client-state").exists()
    assert torch.equal(final_params(first), final_params(resumed))
    a, c = (pd.read_csv(d / "rounds.csv").set_index("round") for d in (first, resumed))
    mask_bytes = len((first / "mask.bin").read_bytes())
    assert c.loc[3, "payload_bytes_down"] - a.loc[3, "payload_bytes_down"] == 3 * mask_bytes
    assert c.loc[3, "one_time_bytes_down"] - a.loc[3, "one_time_bytes_down"] >= 3 * mask_bytes
    assert c.loc[3, "clients_resynced"] == 0


def test_fresh_run_of_the_same_name_never_builds_on_stale_client_state(tmp_path: Path) -> None:
    # Prepare: run "x" leaves client state on disk; a new run "x" (no resume) gets a new token
    cfg = TINY.replace(results_dir=str(tmp_path), run_name="x", num_server_rounds=2)
    federate(cfg, InProcessGrid(3))
    stale = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "client-state" / "x").iterdir()}
    # Execute
    grid = RecordingLoopback(3)
    federate(cfg.replace(num_server_rounds=1), grid)
    # Assert: every node enrolled holding nothing (the stale state has another run token), and
    # was then sent nothing in calibration: it rebuilt version 0, not the stale model
    enrolled = [r.content[records.ACK] for m, r in grid.pairs if m.metadata.message_type == "query.enrol"]
    assert [(ack["model-version"], ack["mask-version"]) for ack in enrolled] == [(-1, -1)] * 3
    first_sync: dict[int, str] = {}
    for message in grid.delivered:
        if message.metadata.message_type != "query.enrol":
            first_sync.setdefault(message.metadata.dst_node_id, message.content[records.CONFIG]["sync"])
    assert first_sync == {1000: "current", 1001: "current", 1002: "current"}
    fresh = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "client-state" / "x").iterdir()}
    assert fresh.keys() == stale.keys() and all(fresh[k] > stale[k] for k in stale)


def test_fedavg_same_seed_same_model_whatever_the_node_ids(tmp_path: Path) -> None:
    # Prepare: Flower's FedAvg sums replies in arrival order; ours hands it partition order
    cfg = TINY.replace(strategy="fedavg", results_dir=str(tmp_path), num_server_rounds=2)
    # Execute
    first = federate(cfg.replace(run_name="a"), InProcessGrid(3))
    second = federate(cfg.replace(run_name="b"), renumbered(InProcessGrid(3), offset=50))
    # Assert
    a, b = (pd.read_csv(d / "rounds.csv").drop(columns=["seconds"]) for d in (first, second))
    pd.testing.assert_frame_equal(a, b)
    assert torch.equal(final_params(first), final_params(second))
