"""Reliability: failing clients, fuzzed replies and the checkpoint file.

Fast, in-process tests (InProcessGrid, real ClientApp code); whole runs stopped and resumed
are in ``test_resume.py`` (in process) and ``test_resume_e2e.py`` (a real process kill).
"""

from __future__ import annotations

import copy
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedfish import codec
from fedfish.accounting import TrafficRecord
from fedfish.layout import ParamLayout, flatten_params
from fedfish.masks import Mask
from fedfish.models import seeded_model
from simulations.checkpoint import RoundOffset, ServerState, load_checkpoint, save_checkpoint
from simulations.config import ConfigError
from simulations.results import read_run
from strategies import records
from strategies.fedavg import CountingFedAvg
from strategies.fedfish import FedFish
from strategies.replies import ReplyRules, check_array_replies, check_replies
from simulations.inprocess import InProcessGrid, task_identity
from tests.inprocess_runs import TINY, RecordingLoopback, federate, final_params

# ---------------------------------------------------------------- failing clients
@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory):
    cfg = TINY.replace(fault_fail_fraction=0.3, results_dir=str(tmp_path_factory.mktemp("faulty")), run_name="f")
    grid = RecordingLoopback(cfg.num_partitions)
    run_dir = federate(cfg, grid)
    return cfg, grid, run_dir


def test_failed_messages_are_counted_and_the_run_finishes(faulty_run) -> None:
    cfg, grid, run_dir = faulty_run
    _, rounds, clients = read_run(run_dir)
    # Assert: every round logged; failures counted per round as the replies say
    assert list(rounds["round"]) == [0, 1, 2, 3, 4]
    for server_round in range(1, 5):
        sent = [(m.metadata.message_type, r) for m, r in grid.pairs
                if m.content[records.CONFIG]["server-round"] == server_round]
        train = [r for kind, r in sent if kind == "train.fedfish"]
        row = rounds.set_index("round").loc[server_round]
        assert row["clients_failed"] == sum(r.has_error() for _, r in sent)  # calibration included
        assert row["clients_ok"] == sum(not r.has_error() for r in train)
    assert rounds["clients_failed"].sum() > 0
    # Only delivered messages are logged; a failure carries no payload
    up = clients[clients.direction == "up"]
    assert len(up) == len(grid.pairs)
    errors = [r for _, r in grid.pairs if r.has_error()]
    assert (up.payload_bytes == 0).sum() >= len(errors)
    # Enrolment replies carry no vector either; among the rest, exactly the failures do not
    assert (up[up.phase != "enrol"].dense_equivalent_bytes == 0).sum() == len(errors)
    assert (up[up.phase == "enrol"].dense_equivalent_bytes == 0).all()


def test_failed_replies_never_change_the_model(faulty_run) -> None:
    cfg, grid, run_dir = faulty_run
    # Prepare: an independent oracle: the masked values the last round started from (sent to
    # a synced node) plus np.average of the changes of the ok replies alone
    mask = codec.decode_mask((run_dir / "mask.bin").read_bytes())
    _, rounds, _ = read_run(run_dir)
    last = [(m, r) for m, r in grid.pairs if m.metadata.message_type == "train.fedfish"
            and m.content[records.CONFIG]["server-round"] == cfg.num_server_rounds]
    ok = [(m, r) for m, r in last if not r.has_error()]
    start = next(codec.decode_values(m.content[records.PAYLOAD]["model-values"], mask) for m, _ in last
                 if m.content[records.CONFIG]["sync"] == "delta-mask")
    changes = np.stack([codec.decode_values(r.content[records.PAYLOAD]["update"], mask).numpy() for _, r in ok])
    weights = [r.content[records.METRICS]["num-examples"] for _, r in ok]
    expected = start.numpy().astype(np.float64) + np.average(changes.astype(np.float64), axis=0, weights=weights)
    # Execute
    final = final_params(run_dir)
    # Assert: masked entries moved by the ok replies' average alone; the rest is the initial model
    initial = flatten_params(seeded_model(cfg.model, cfg.seed))
    assert len(ok) >= 1
    np.testing.assert_allclose(final[mask.bits].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(final[~mask.bits], initial[~mask.bits])
    assert not bool(rounds["skipped"].any())


def test_round_with_too_few_replies_is_skipped_and_model_unchanged(tmp_path: Path) -> None:
    # Prepare: every message fails
    cfg = TINY.replace(fault_fail_fraction=1.0, num_server_rounds=2, results_dir=str(tmp_path), run_name="x",
                       min_replies=2)
    # Execute
    run_dir = federate(cfg, InProcessGrid(cfg.num_partitions))
    # Assert
    _, rounds, _ = read_run(run_dir)
    assert rounds.loc[rounds["round"] > 0, "skipped"].all()
    assert (rounds.loc[rounds["round"] > 0, "clients_failed"] == 3).all()
    assert torch.equal(final_params(run_dir), flatten_params(seeded_model(cfg.model, cfg.seed)))


# ---------------------------------------------------------------- fuzzed replies
TINY_MODEL = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
LAYOUT = ParamLayout.of(TINY_MODEL)
P = LAYOUT.num_params
MASK = Mask(bits=torch.arange(P) % 3 == 0, version=2)
MAX_EXAMPLES = 1000
MAX_NORM = 50.0
MALFORMED = (
    "nan", "inf", "wrong-length", "stale-mask", "other-mask", "truncated", "bit-flip", "wrong-kind",
    "zero-examples", "negative-examples", "too-many-examples", "float-examples", "missing-update",
    "missing-ack", "bad-status", "bad-partition", "future-version", "huge-norm", "not-bytes",
)


def _strategy() -> FedFish:
    strategy = FedFish(layout=LAYOUT, head=torch.zeros(P, dtype=torch.bool), client_config={},
                       examples_bound=lambda partition: MAX_EXAMPLES, max_update_norm=MAX_NORM, min_replies=1,
                       update_norm_factor=None)
    strategy.masks.mask = MASK
    # Valid replies come from nodes 500 + i (partition i), malformed ones from 900 + j (partition 10 + j)
    strategy.holdings.partition_of = {500 + i: i for i in range(10)} | {900 + j: 10 + j for j in range(10)}
    strategy.global_model.history.record(None)
    strategy.global_model.history.record(MASK.bits)
    torch.manual_seed(0)
    strategy.global_model.adopt(ArrayRecord(copy.deepcopy(TINY_MODEL).state_dict()))
    return strategy


def _reply(node: int, partition: int, values: torch.Tensor, num_examples: object, *, kind: str = "ok") -> Message:
    payload = codec.encode_values(values, MASK)
    status, model_version, ack_partition = records.STATUS_OK, 2, partition
    metrics: dict = {"num-examples": num_examples, "train-loss": 0.5}
    if kind in ("nan", "inf"):
        raw = bytearray(payload)
        raw[codec.HEADER_SIZE: codec.HEADER_SIZE + 4] = np.float32(np.nan if kind == "nan" else np.inf).tobytes()
        payload = _reseal(bytes(raw))
    elif kind == "wrong-length":
        shorter = Mask(bits=MASK.bits.clone(), version=MASK.version)
        shorter.bits[0] = False
        payload = codec.encode_values(values[1:], shorter)
    elif kind == "stale-mask":
        payload = codec.encode_values(values, Mask(bits=MASK.bits, version=MASK.version - 1))
    elif kind == "other-mask":
        payload = codec.encode_values(values, Mask(bits=MASK.bits.roll(1), version=MASK.version))
    elif kind == "truncated":
        payload = payload[:-3]
    elif kind == "bit-flip":
        payload = payload[:-1] + bytes([payload[-1] ^ 0x10])
    elif kind == "wrong-kind":
        payload = codec.encode_dense(torch.zeros(P))
    elif kind == "zero-examples":
        metrics["num-examples"] = 0
    elif kind == "negative-examples":
        metrics["num-examples"] = -5
    elif kind == "too-many-examples":
        metrics["num-examples"] = MAX_EXAMPLES + 1
    elif kind == "float-examples":
        metrics["num-examples"] = 12.5
    elif kind == "bad-status":
        status = "fine"
    elif kind == "bad-partition":
        ack_partition = -3
    elif kind == "future-version":
        model_version = 9
    elif kind == "huge-norm":
        payload = codec.encode_values(torch.full_like(values, 1e4), MASK)
    content = records.uplink(status, model_version, MASK.version, metrics,
                             {} if kind == "missing-update" else {"update": payload}, ack_partition)
    if kind == "missing-ack":
        del content.config_records[records.ACK]
    elif kind == "not-bytes":
        content.config_records[records.PAYLOAD]["update"] = "not bytes"
    instruction = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(content, reply_to=instruction)


def _reseal(payload: bytes) -> bytes:
    """Recompute the CRC (crc32 of header[:36] + body, stored at 36) so only the finiteness check can fail."""
    header = bytearray(payload[: codec.HEADER_SIZE])
    body = payload[codec.HEADER_SIZE:]
    header[36:40] = zlib.crc32(body, zlib.crc32(bytes(header[:36]))).to_bytes(4, "little")
    return bytes(header) + body


def _arrays_equal(a: ArrayRecord | None, b: ArrayRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    sa, sb = a.to_torch_state_dict(), b.to_torch_state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    valid=st.lists(st.tuples(st.integers(1, 500), st.floats(-1.0, 1.0, width=32)), min_size=0, max_size=3),
    malformed=st.lists(st.sampled_from(MALFORMED), min_size=1, max_size=6),
    order_seed=st.integers(0, 2**16),
)
def test_malformed_replies_are_rejected_and_never_reach_the_model(valid, malformed, order_seed) -> None:
    # Prepare: valid replies from partitions 0.., malformed ones from partitions 10..
    with task_identity():
        good = [_reply(500 + i, i, torch.full((MASK.k,), v) + torch.arange(MASK.k) * 0.01, n)
                for i, (n, v) in enumerate(valid)]
        bad = [_reply(900 + j, 10 + j, torch.zeros(MASK.k), 10, kind=kind) for j, kind in enumerate(malformed)]
    mixed = good + bad
    random.Random(order_seed).shuffle(mixed)
    fuzzed, clean = _strategy(), _strategy()
    # Execute
    with task_identity():
        arrays_fuzzed, _ = fuzzed.aggregate_train(3, mixed)
        arrays_clean, _ = clean.aggregate_train(3, list(reversed(good)))
    # Assert: each malformed reply rejected, with a reason; the model is the valid replies' alone
    stats = fuzzed.round_stats[3]
    assert sorted(node for node, _ in stats.rejections) == [900 + j for j in range(len(malformed))]
    assert all(reason for _, reason in stats.rejections)
    assert stats.clients_ok == len(good) and stats.clients_rejected == len(bad)
    assert _arrays_equal(arrays_fuzzed, arrays_clean)
    assert (arrays_fuzzed is None) == (not good)  # nothing valid: round skipped, model unchanged
    assert stats.skipped == (not good)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("wrong-length", "mismatch"), ("stale-mask", "mask version"),
        ("other-mask", "digest"), ("truncated", "payload"), ("bit-flip", "crc32"), ("wrong-kind", "payload kind"),
        ("zero-examples", "num-examples must be an int >= 1"), ("negative-examples", "num-examples"),
        ("too-many-examples", "exceeds the bound"), ("float-examples", "num-examples"),
        ("missing-update", "missing payload"), ("missing-ack", "missing record"), ("bad-status", "unknown status"),
        ("bad-partition", "partition-id"), ("future-version", "newer than"), ("huge-norm", "update norm"),
        ("not-bytes", "not bytes"),
    ],
)
def test_each_malformed_kind_is_rejected_for_its_reason(kind: str, reason: str) -> None:
    # Prepare
    strategy = _strategy()
    with task_identity():
        reply = _reply(901, 11, torch.zeros(MASK.k), 10, kind=kind)
        # Execute
        arrays, _ = strategy.aggregate_train(3, [reply])
    # Assert
    assert arrays is None
    [(node, why)] = strategy.round_stats[3].rejections
    assert node == 901 and reason in why, why


def test_duplicate_node_or_partition_is_rejected() -> None:
    # Prepare
    with task_identity():
        first = _reply(500, 0, torch.zeros(MASK.k), 10)
        same_node = _reply(500, 1, torch.ones(MASK.k), 10)
        same_partition = _reply(501, 0, torch.ones(MASK.k), 10)
        # Execute
        batch = check_replies([first, same_node, same_partition], decode=lambda r: torch.zeros(1))
    # Assert
    assert [r.node_id for r, _ in batch.accepted] == [500]
    assert [why for _, why in batch.rejected] == ["duplicate reply from this node",
                                                 "partition-id 0 already replied this round"]


def test_norm_bound_needs_a_norm_function() -> None:
    with pytest.raises(ValueError, match="norm bounds need update_norm"):
        check_replies([], decode=lambda reply: reply, rules=ReplyRules(max_update_norm=1.0))


def test_fedavg_replies_are_validated_and_ordered_by_partition() -> None:
    # Prepare: FedAvg-style replies (dense ArrayRecord); one with NaN, one of the wrong shape
    reference = ArrayRecord(TINY_MODEL.state_dict())
    state = TINY_MODEL.state_dict()

    def fedavg_reply(node: int, partition: int, arrays: dict, num_examples: int = 10) -> Message:
        content = RecordDict({
            "arrays": ArrayRecord({k: v.clone() for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": num_examples}),
            records.ACK: ConfigRecord({"partition-id": partition}),
        })
        return Message(content, reply_to=Message(content=RecordDict(), dst_node_id=node,
                                                 message_type=MessageType.TRAIN))

    nan_state = {k: v.clone() for k, v in state.items()}
    nan_state["0.bias"][0] = float("nan")
    wrong_shape = dict(state) | {"0.bias": torch.zeros(7)}
    far = {k: v + 100.0 for k, v in state.items()}
    with task_identity():
        replies = [fedavg_reply(30, 2, state), fedavg_reply(10, 1, state), fedavg_reply(20, 5, nan_state),
                   fedavg_reply(40, 6, wrong_shape), fedavg_reply(50, 7, far),
                   Message(Error(code=0, reason="gone"), reply_to=Message(
                       content=RecordDict(), dst_node_id=60, message_type=MessageType.TRAIN))]
        # Execute
        batch, valid = check_array_replies(replies, reference, rules=ReplyRules(
            examples_bound=lambda partition: 100, max_update_norm=10.0))
    # Assert
    assert [r.partition_id for r, _ in batch.accepted] == [1, 2]
    assert [m.metadata.src_node_id for m in valid] == [10, 30]
    assert batch.failed == 1
    reasons = dict(batch.rejected)
    assert "non-finite" in reasons[20] and "expected" in reasons[40] and "update norm" in reasons[50]


def test_counting_fedavg_skips_round_below_min_replies() -> None:
    # Prepare
    strategy = CountingFedAvg(min_replies=2)
    strategy._global = ArrayRecord(TINY_MODEL.state_dict())
    with task_identity():
        error = Message(Error(code=0, reason="gone"), reply_to=Message(
            content=RecordDict(), dst_node_id=60, message_type=MessageType.TRAIN))
        # Execute
        arrays, _ = strategy.aggregate_train(1, [error])
    # Assert
    assert arrays is None and strategy.round_stats[1].skipped and strategy.round_stats[1].clients_failed == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_update_norm": 0.0}, "max_update_norm"), ({"max_update_norm": -1.0}, "max_update_norm")],
)
def test_fedfish_rejects_bad_norm_bound(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FedFish(layout=LAYOUT, head=torch.zeros(P, dtype=torch.bool), client_config={}, **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [({"min_replies": 0}, "min_replies"),
                                                ({"max_update_norm": 0.0}, "max_update_norm")])
def test_counting_fedavg_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CountingFedAvg(**kwargs)


# ---------------------------------------------------------------- checkpoint and resume
def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    # Prepare
    strategy = _strategy()
    holdings = strategy.holdings
    holdings.held_model, holdings.held_mask = {0: 2, 4: 1}, {0: 2}
    holdings.partition_of = {77: 0, 78: 4}
    holdings.rng.random()
    random.seed(123)
    state = ServerState.capture(
        3, TINY, ArrayRecord(TINY_MODEL.state_dict()), strategy,
        [TrafficRecord(1, "train", "up", 77, 100, 60, 400)], [{"round": 0, "accuracy": np.float64(0.5)}],
    )
    # Execute
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)
    restored = _strategy()
    restored.load_state_dict(loaded.strategy)
    # Assert
    assert loaded.server_round == 3 and loaded.traffic == state.traffic and loaded.rows == [{"round": 0, "accuracy": 0.5}]
    assert all(torch.equal(loaded.arrays[k], state.arrays[k]) for k in state.arrays)
    assert torch.equal(restored.mask.bits, MASK.bits) and restored.mask.version == MASK.version
    assert restored.holdings.held_model == {0: 2, 4: 1} and restored.holdings.held_mask == {0: 2}
    assert restored.holdings.partition_of == {77: 0, 78: 4}
    assert restored.client_config["run-token"] == strategy.client_config["run-token"] != _strategy().client_config["run-token"]
    assert restored.holdings.rng.random() == holdings.rng.random()
    plan = restored.global_model.history.plan(1)
    assert plan.kind == "delta" and torch.equal(plan.positions, MASK.bits)
    loaded.restore_random()
    expected = random.Random(123).random()
    assert random.random() == expected


def test_no_checkpoint_loads_as_none_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None
    torch.save({"something": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a format-3 FedFish checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"format": 1}, tmp_path / "checkpoint.pt")  # before client state was on disk
    with pytest.raises(ValueError, match="not a format-3 FedFish checkpoint"):
        load_checkpoint(tmp_path)


def test_resume_refuses_a_different_config() -> None:
    state = ServerState(2, TINY.to_mapping(), {}, {}, random.getstate(), torch.get_rng_state(), [], [])
    state.check_matches(TINY.replace(resume=True, num_server_rounds=9))  # allowed changes
    with pytest.raises(ConfigError, match=r"differing keys: \['density', 'lr'\]"):
        state.check_matches(TINY.replace(density=0.1, lr=0.1))
    with pytest.raises(ConfigError, match="num-server-rounds"):
        state.check_matches(TINY.replace(num_server_rounds=1))


def test_round_offset_rejects_negative_offset() -> None:
    with pytest.raises(ValueError, match="offset"):
        RoundOffset(_strategy(), -1)
