"""FedFish strategy through real messages and the real ClientApp, in-process (InProcessGrid)."""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import pytest
import torch
from flwr.app import Error, Message

from fedfish import codec
from fedfish.holding import Holding
from fedfish.layout import ParamLayout
from fedfish.masks import Mask
from fedfish.models import build_model, head_names
from simulations import client_app, client_state
from simulations.config import RunConfig
from strategies import records
from strategies.fedfish import FedFish
from strategies.metering import wire_bytes
from simulations.inprocess import InProcessGrid
from tests.loopback import run_strategy

BASE = RunConfig(
    num_partitions=3, samples_per_client=48, batch_size=16, lr=0.05, fisher_samples=16,
    partitioner="dirichlet", alpha=0.5, eval_samples=100, seed=3,
)


def run(cfg: RunConfig, rounds: int, grid: InProcessGrid | None = None):
    """Run ``cfg``'s strategy for ``rounds`` on a InProcessGrid; return strategy, grid, log, snapshots."""
    strategy, grid, traffic, snapshots, _ = run_strategy(cfg, rounds, grid)
    return strategy, grid, traffic, snapshots


def test_density_one_equals_flower_fedavg() -> None:
    # Prepare
    fedfish_cfg = BASE.replace(strategy="fedfish", density=1.0, warmup_rounds=0)
    fedavg_cfg = BASE.replace(strategy="fedavg")
    # Execute
    _, _, _, fish = run(fedfish_cfg, rounds=2)
    _, _, _, avg = run(fedavg_cfg, rounds=2)
    # Assert: same start, and after 2 rounds the same model
    assert torch.equal(fish[0], avg[0])
    assert not torch.allclose(avg[2], avg[0])
    # Float32 sums in a different order: equal up to rounding, not bit for bit.
    torch.testing.assert_close(fish[2], avg[2], rtol=1e-4, atol=1e-5)


def test_unmasked_parameters_never_change_in_masked_rounds() -> None:
    # Prepare / Execute: 1 warm-up round, then calibration + 2 masked rounds
    strategy, _, _, snaps = run(BASE.replace(density=0.05, warmup_rounds=1), rounds=3)
    # Assert
    mask = strategy.mask
    assert mask is not None and mask.version == 1
    assert not torch.equal(snaps[1][~mask.bits], snaps[0][~mask.bits])  # warm-up is dense
    for r in (2, 3):
        assert torch.equal(snaps[r][~mask.bits], snaps[1][~mask.bits])
        assert not torch.equal(snaps[r][mask.bits], snaps[r - 1][mask.bits])
    head = ParamLayout.of(build_model("cnn")).indicator(head_names(build_model("cnn")))
    assert bool(mask.bits[head].all())


def test_logged_bytes_are_serialized_message_sizes() -> None:
    # Prepare / Execute
    strategy, grid, traffic, _ = run(BASE.replace(density=0.05, warmup_rounds=0), rounds=3)
    frame = traffic.to_frame()
    # Assert: every delivered message was logged once, at its serialized size
    down = frame[frame.direction == "down"]
    assert sorted(down.wire_bytes) == sorted(wire_bytes(m) for m in grid.delivered)
    assert set(frame.phase) == {"enrol", "calibration", "train"}
    # Enrolment: once per node and direction, in round 1 only, small, and all one-time
    enrol = frame[frame.phase == "enrol"]
    assert set(enrol.server_round) == {1}
    assert sorted(enrol.groupby("direction").node_id.apply(sorted).tolist()) == [[1000, 1001, 1002]] * 2
    assert (enrol.payload_bytes == 0).all() and (enrol.wire_bytes < 1000).all()
    assert (enrol.one_time_bytes == enrol.wire_bytes).all()
    # Steady state: a synced node gets only the masked values, and sends only its change there
    k = strategy.mask.k
    steady = frame[(frame.server_round == 3)]
    assert (steady.phase == "train").all()
    assert (steady.payload_bytes == codec.HEADER_SIZE + 4 * k).all()
    assert (steady.wire_bytes < 1.02 * 4 * k).all()
    assert (steady.one_time_bytes == 0).all()
    # Round 1: nodes rebuild the seeded initial model, so calibration sends no model, and the
    # first training message carries the mask alone (a one-time cost); no dense vector, ever
    first = frame[(frame.server_round == 1) & (frame.direction == "down")]
    mask_bytes = len(codec.encode_mask(strategy.mask))
    assert (first[first.phase == "calibration"].payload_bytes == 0).all()
    assert (first[first.phase == "train"].payload_bytes == mask_bytes).all()
    assert (first[first.phase == "train"].one_time_bytes == mask_bytes).all()
    assert (down.payload_bytes < 4 * strategy.layout.num_params / 10).all()


def _syncs(grid: InProcessGrid) -> dict[tuple[int, int], str]:
    """(round, node) -> sync kind of every training message delivered."""
    return {(int(m.content[records.CONFIG]["server-round"]), m.metadata.dst_node_id): m.content[records.CONFIG]["sync"]
            for m in grid.delivered if m.metadata.message_type == "train.fedfish"}


def test_node_that_lost_state_is_resynced_from_version_0() -> None:
    # Prepare: partition 1 forgets everything before round 3 (a restart)
    cfg = BASE.replace(density=0.05, fault_forget_state="1@3")
    # Execute
    strategy, grid, traffic, snaps = run(cfg, rounds=4)
    # Assert: it answered need-base in round 3, then rebuilt version 0 and got the mask and
    # the values under it in round 4 (no dense model), and trained
    assert strategy.round_stats[3].clients_resynced == 1
    assert strategy.round_stats[3].clients_ok == 2
    syncs = _syncs(grid)
    assert syncs[(3, 1001)] == "delta-mask"
    assert syncs[(4, 1001)] == "delta-mask" and syncs[(4, 1000)] == "delta-mask"
    resync = traffic.to_frame().query("server_round == 4 and direction == 'down' and node_id == 1001")
    assert int(resync.payload_bytes.sum()) == codec.HEADER_SIZE + 4 * strategy.mask.k + int(resync.one_time_bytes.sum())
    assert strategy.round_stats[4].clients_ok == 3
    mask = strategy.mask
    assert torch.equal(snaps[4][~mask.bits], snaps[1][~mask.bits])


def test_node_first_sampled_late_gets_mask_and_values_never_the_dense_model() -> None:
    # Prepare: 10 nodes, 2 per round: most are first sampled long after the model moved on;
    # node 1003's machine cannot rebuild version 0 (its checkpoint path does not exist)
    grid = InProcessGrid(10)
    grid.contexts[1003].node_config["initial-model"] = "/nonexistent/initial.pt"
    cfg = BASE.replace(num_partitions=10, fraction_train=0.2, density=0.05, samples_per_client=32)
    # Execute
    strategy, grid, traffic, _ = run(cfg, rounds=8, grid=grid)
    # Assert: every first contact after round 1 is the mask plus the k current values
    frame = traffic.to_frame().query("phase == 'train'")
    first_round = frame[frame.direction == "down"].groupby("node_id").server_round.min()
    late = first_round[(first_round >= 3) & (first_round.index != 1003)]
    assert len(late) >= 2
    k, mask_bytes = strategy.mask.k, len(codec.encode_mask(strategy.mask))
    for node, server_round in late.items():
        sent = frame.query(f"node_id == {node} and server_round == {server_round} and direction == 'down'")
        assert int(sent.payload_bytes.iloc[0]) == mask_bytes + codec.HEADER_SIZE + 4 * k
    dense = 4 * strategy.layout.num_params
    assert (frame[frame.node_id != 1003].payload_bytes < dense).all()
    # The node that cannot rebuild version 0 (sampled in round 1 with seed 3) said so at
    # calibration, got the dense model once (a one-time cost), trained in that very round, and
    # later got only the values under the mask, like everyone else
    assert strategy.holdings.no_public_base == {3}
    assert strategy.round_stats[1].clients_resynced == 1 and strategy.round_stats[1].clients_ok == 2
    node_down = frame.query("node_id == 1003 and direction == 'down'").sort_values("server_round")
    assert (node_down.payload_bytes >= dense).tolist() == [True] + [False] * (len(node_down) - 1)
    assert int(node_down.one_time_bytes.iloc[0]) == int(node_down.payload_bytes.iloc[0])
    assert len(node_down) >= 2 and (node_down.payload_bytes.iloc[1:] == codec.HEADER_SIZE + 4 * k).all()


def _corrupt(kind: str):
    """A ClientApp whose node 1002 sends a malformed reply of the given kind in round 2."""

    def handler(message: Message, context):
        reply = client_app.app(message, context)
        cfg = message.content[records.CONFIG]
        if message.metadata.dst_node_id != 1002 or cfg["server-round"] != 2 or message.metadata.message_type != "train.fedfish":
            return reply
        if kind == "error":
            return Message(Error(code=0, reason="client crashed"), reply_to=message)
        payloads = reply.content[records.PAYLOAD]
        mask = Mask(bits=codec.decode_mask(_mask_payload(context)).bits, version=int(cfg["mask-version"]))
        if kind == "wrong-length":
            payloads["update"] = codec.encode_dense(torch.zeros(10))
        elif kind == "nan":
            raw = bytearray(codec.encode_values(torch.zeros(mask.k), mask))
            raw[codec.HEADER_SIZE + 12: codec.HEADER_SIZE + 16] = np.float32(math.nan).tobytes()
            payloads["update"] = _reseal(bytes(raw))
        elif kind == "stale-mask":
            stale = Mask(bits=mask.bits, version=mask.version + 5)
            payloads["update"] = codec.encode_values(torch.zeros(mask.k), stale)
        elif kind == "zero-examples":
            reply.content[records.METRICS]["num-examples"] = 0
        elif kind == "missing-payload":
            del payloads["update"]
        return reply

    return handler


def _mask_payload(context) -> bytes:
    return Holding.from_bytes(context.state.config_records[client_state.RECORD]["holding"]).mask


def _reseal(payload: bytes) -> bytes:
    """Recompute the CRC (documented layout: crc32 of header[:36] + body, stored at 36) so
    that only the finiteness check can catch the payload."""
    header = bytearray(payload[: codec.HEADER_SIZE])
    body = payload[codec.HEADER_SIZE:]
    header[36:40] = zlib.crc32(body, zlib.crc32(bytes(header[:36]))).to_bytes(4, "little")
    return bytes(header) + body


@pytest.fixture(scope="module")
def reference_without_node_1002() -> dict[int, torch.Tensor]:
    """The same run in which node 1002's round-2 reply is an error: what a dropped reply must give."""
    return run(BASE.replace(density=0.05), rounds=2, grid=InProcessGrid(3, _corrupt("error")))[3]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong-length", "payload"),
        ("nan", "finite|NaN|nan"),
        ("stale-mask", "version"),
        ("zero-examples", "num-examples"),
        ("missing-payload", "missing payload"),
    ],
)
def test_malformed_reply_is_dropped_and_model_untouched(
    kind: str, reason: str, reference_without_node_1002: dict[int, torch.Tensor]
) -> None:
    # Prepare
    cfg = BASE.replace(density=0.05)
    # Execute: the same run with node 1002's round-2 reply malformed (reference: with it failing)
    bad, _, _, bad_snaps = run(cfg, rounds=2, grid=InProcessGrid(3, _corrupt(kind)))
    ref_snaps = reference_without_node_1002
    # Assert
    stats = bad.round_stats[2]
    assert stats.clients_rejected == 1 and stats.clients_ok == 2
    node, why = stats.rejections[0]
    assert node == 1002
    assert re.search(reason, why), why
    assert torch.equal(bad_snaps[2], ref_snaps[2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"density": 0.0}, "density"),
        ({"density": 1.5}, "density"),
        ({"mask_source": "oracle"}, "unknown mask source 'oracle'"),
        ({"update": "everything"}, "unknown update rule 'everything'"),
        ({"value_dtype": "int4"}, "value_dtype"),
        ({"fraction_train": 0.0}, "fraction_train"),
        ({"min_replies": 0}, "min_replies"),
        ({"fisher_source": "server"}, "server_scores_fn"),
        ({"fisher_source": "proxy"}, "fisher_source must be one of"),
        ({"mask_scope": "per-block"}, "mask_scope must be one of"),
        ({"downlink_dtype": "int8"}, "int8 downlink .* needs public_base"),
        ({"buffers": "shared"}, "buffers must be one of"),
        ({"aggregator": "mode"}, "aggregator must be one of"),
        ({"fraction_evaluate": 1.5}, "fraction_evaluate"),
        ({"warmup_rounds": -1}, "warmup_rounds"),
        ({"update_norm_factor": 1.0}, "update_norm_factor"),
        ({"head": torch.zeros(3, dtype=torch.bool)}, "head must be a bool vector"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    layout = ParamLayout.of(build_model("cnn"))
    args = {"layout": layout, "head": torch.zeros(layout.num_params, dtype=torch.bool), "client_config": {}}
    with pytest.raises(ValueError, match=match):
        FedFish(**(args | kwargs))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 'public' initial model on disk (what simulations.pretrain would write)."""
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("public") / "initial.pt"
    torch.save(build_model("cnn").state_dict(), path)
    return str(path)


def test_public_initial_model_is_never_sent_and_changes_nothing(checkpoint: str) -> None:
    # Prepare: fine-tuning from a checkpoint every client holds, server-side Fisher
    cfg = BASE.replace(density=0.05, initial_model=checkpoint, fisher_source="server", server_samples=32)
    # Execute
    strategy, _, traffic, snaps = run(cfg.replace(public_initial_model=True), rounds=2)
    _, _, sent_traffic, sent_snaps = run(cfg.replace(public_initial_model=False), rounds=2)
    # Assert: no dense model crossed the wire; the first downlink is mask + masked values
    frame = traffic.to_frame()
    dense = 4 * strategy.layout.num_params
    assert (frame.payload_bytes < dense / 10).all()
    assert (sent_traffic.to_frame().query("server_round == 1 and direction == 'down' and phase != 'enrol'").payload_bytes >= dense).all()
    assert frame.wire_bytes.sum() < sent_traffic.to_frame().wire_bytes.sum() / 5
    # ... and the run is the same run: the client's base is the checkpoint either way
    assert torch.equal(snaps[2], sent_snaps[2])


def test_node_without_the_public_checkpoint_gets_the_dense_base(checkpoint: str) -> None:
    # Prepare: partition 1's machine has no copy of the checkpoint
    grid = InProcessGrid(3)
    grid.contexts[1001].node_config["initial-model"] = "/nonexistent/initial.pt"
    cfg = BASE.replace(density=0.05, initial_model=checkpoint, public_initial_model=True,
                       fisher_source="server", server_samples=32)
    # Execute
    strategy, grid, _, _ = run(cfg, rounds=3, grid=grid)
    # Assert: it said need-base once, then got the dense model, then trained
    syncs = _syncs(grid)
    assert strategy.round_stats[1].clients_resynced == 1
    assert syncs[(1, 1001)] != "full" and syncs[(2, 1001)] == "full" and syncs[(2, 1000)] == "delta-mask"
    assert strategy.round_stats[3].clients_ok == 3
    assert strategy.holdings.no_public_base == {1}


@pytest.mark.parametrize("strategy", ["saliency", "magnitude", "random-fixed", "random-per-round", "topk-ef"])
def test_every_sparse_baseline_runs_through_the_same_harness(strategy: str) -> None:
    # Prepare / Execute
    bad_or_failed = 0
    strategy_obj, _, traffic, snaps = run(BASE.replace(strategy=strategy, density=0.05), rounds=2)
    for stats in strategy_obj.round_stats.values():
        bad_or_failed += stats.clients_rejected + stats.clients_failed + stats.clients_resynced
    # Assert: every reply accepted, the model moved, and round 2 uplinks carry ~5% of the model
    assert bad_or_failed == 0
    assert not torch.equal(snaps[2], snaps[1])
    up = traffic.to_frame().query("server_round == 2 and direction == 'up'")
    assert (up.payload_bytes < 0.1 * 4 * strategy_obj.layout.num_params).all()


def test_fedavg_and_fedfish_train_the_same_clients_each_round_for_a_seed() -> None:
    # Prepare: 10 nodes, 3 sampled per round, node ids differing between the runs
    cfg = BASE.replace(num_partitions=10, fraction_train=0.3, samples_per_client=16, density=0.05)

    def sampled(strategy: str, offset: int) -> list[list[int]]:
        grid = InProcessGrid(10)
        grid.contexts = {node + offset: context for node, context in grid.contexts.items()}
        _, grid, _, _ = run(cfg.replace(strategy=strategy), rounds=3, grid=grid)
        partition = {node: int(c.node_config["partition-id"]) for node, c in grid.contexts.items()}
        rounds: dict[int, list[int]] = {}
        for m in grid.delivered:
            if m.metadata.message_type in ("train", "train.fedfish"):
                records_name = records.CONFIG if m.metadata.message_type == "train.fedfish" else "config"
                server_round = int(m.content.config_records[records_name]["server-round"])
                rounds.setdefault(server_round, []).append(partition[m.metadata.dst_node_id])
        return [sorted(rounds[r]) for r in sorted(rounds)]

    # Execute
    fedavg, fedfish, fedavg_again = sampled("fedavg", 0), sampled("fedfish", 0), sampled("fedavg", 77)
    # Assert: a paired comparison, reproducible whatever the node ids
    assert len(fedavg) == 3 and all(len(r) == 3 for r in fedavg)
    assert fedavg == fedfish == fedavg_again
    assert len({tuple(r) for r in fedavg}) > 1
