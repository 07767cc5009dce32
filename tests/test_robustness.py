"""Hostile clients and damaged files, with the default configuration: one test per way in.

Each attack runs in-process (InProcessGrid, the real ClientApp, one node lying through
``simulations.attacks``) beside an oracle run: the same run in which the attacker's
messages simply fail. A rejected reply never touches the global model, so the two must end
bit for bit equal; the honest nodes' replies must all count.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import Error, Message

from fedfish.holding import Holding
from simulations import client_app, client_state
from simulations.attacks import hostile
from simulations.checkpoint import CHECKPOINT_NAME, load_checkpoint
from simulations.config import ConfigError, RunConfig
from simulations.server_app import run_federation
from simulations.inprocess import InProcessGrid, task_identity
from tests.loopback import run_strategy

ATTACKER = 2
BASE = RunConfig(num_partitions=3, samples_per_client=50, batch_size=16, fisher_samples=16, eval_samples=100,
                 seed=5, density=0.05)


def _failing(kinds: tuple[str, ...]):  # noqa: ANN202 - a handler
    """The attacker's messages of these types fail (the oracle: what a rejected reply must equal)."""

    def handler(message: Message, context):  # noqa: ANN001, ANN202
        if int(context.node_config["partition-id"]) == ATTACKER and message.metadata.message_type in kinds:
            return Message(Error(code=0, reason="oracle: this reply failed"), reply_to=message)
        return client_app.app(message, context)

    return handler


def _run(cfg: RunConfig, handler, rounds: int = 3):  # noqa: ANN001, ANN202
    return run_strategy(cfg, rounds, InProcessGrid(cfg.num_partitions, handler))


@pytest.mark.parametrize(
    ("kind", "cfg", "failing", "reason"),
    [
        ("huge-update", BASE, ("train.fedfish",), r"update norm .* exceeds the bound .*median"),
        ("inflated-count", BASE, ("train.fedfish",), r"num-examples 60000 exceeds the bound 50"),
        ("inflated-count", BASE.replace(strategy="fedavg"), ("train",), r"num-examples 60000 exceeds the bound 50"),
        ("stolen-identity", BASE, ("query.enrol",), r"partition-id 1000000000000 is out of range"),
    ],
    ids=["huge-update", "inflated-count", "inflated-count-fedavg", "stolen-identity"],
)
def test_a_hostile_client_leaves_the_model_as_if_its_replies_had_failed(kind, cfg, failing, reason) -> None:
    # Execute
    strategy, grid, _, attacked, _ = _run(cfg, hostile(client_app.app, ATTACKER, kind))
    _, _, _, oracle, _ = _run(cfg, _failing(failing))
    _, _, _, honest, _ = _run(cfg, client_app.app)
    # Assert: bit for bit the oracle; finite; and within the honest run's own movement of it
    for server_round in (1, 2, 3):
        assert torch.equal(attacked[server_round], oracle[server_round]), server_round
    assert torch.isfinite(attacked[3]).all()
    assert (attacked[3] - honest[3]).norm() < (honest[3] - honest[0]).norm()
    reasons = [why for stats in strategy.round_stats.values() for _, why in stats.rejections]
    assert reasons and all(re.search(reason, why) for why in reasons), reasons
    # The honest nodes' replies all counted, every round
    assert all(stats.clients_ok == 2 for stats in strategy.round_stats.values())


def test_a_client_claiming_anothers_partition_never_blocks_it() -> None:
    # Prepare: the attacker enrols honestly as partition 2, then every reply claims partition 0
    def claims_zero(message: Message, context):  # noqa: ANN001, ANN202
        reply = client_app.app(message, context)
        if int(context.node_config["partition-id"]) == ATTACKER and message.metadata.message_type == "train.fedfish":
            reply.content.config_records["fedfish-ack"]["partition-id"] = 0
        return reply

    # Execute
    strategy, _, _, attacked, _ = _run(BASE, claims_zero)
    _, _, _, oracle, _ = _run(BASE, _failing(("train.fedfish",)))
    # Assert: rejected every round as not its enrolled partition; partition 0's own reply counts
    for stats in strategy.round_stats.values():
        assert stats.clients_ok == 2
        assert [why for _, why in stats.rejections] == ["partition-id 0 is not the partition 2 this node enrolled with"]
    assert torch.equal(attacked[3], oracle[3])


def test_one_poisoning_client_of_ten_cannot_choose_the_mask() -> None:
    # Prepare: ten clients send Fisher scores; one puts all its mass on the last 5% of positions
    cfg = BASE.replace(num_partitions=10, samples_per_client=32)
    chosen = torch.zeros(1_663_370, dtype=torch.bool)
    chosen[-int(0.05 * 1_663_370):] = True
    # Execute
    honest = _run(cfg, client_app.app, rounds=1)[0].mask
    attacked = _run(cfg, hostile(client_app.app, ATTACKER, "mask-poisoning"), rounds=1)[0].mask
    undefended = _run(cfg.replace(robust_calibration=False), hostile(client_app.app, ATTACKER, "mask-poisoning"),
                      rounds=1)[0].mask
    # Assert: without the defence it owns most of the mask; with it, a sliver, and the mask is
    # the honest one but for a few percent
    share = lambda mask: float((mask.bits & chosen).sum()) / mask.k  # noqa: E731
    overlap = float((attacked.bits & honest.bits).sum()) / honest.k
    assert share(undefended) > 0.5
    assert share(attacked) <= share(honest) + 0.02
    assert overlap >= 0.9


def test_a_flipped_bit_in_a_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    # Prepare
    cfg = BASE.replace(results_dir=str(tmp_path), run_name="r", num_server_rounds=2)
    with task_identity():
        run_dir = run_federation(InProcessGrid(3), cfg)
    path = run_dir / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # Execute / Assert
    with pytest.raises(ValueError, match=rf"{path}.*damaged"):
        load_checkpoint(run_dir)
    with task_identity(), pytest.raises(ValueError, match="damaged"):
        run_federation(InProcessGrid(3), cfg.replace(resume=True, num_server_rounds=3))


def test_a_flipped_bit_in_a_client_state_file_is_never_used(tmp_path: Path) -> None:
    # Prepare: a 2-round run leaves client state on disk; partition 1's file loses a bit
    cfg = BASE.replace(results_dir=str(tmp_path), run_name="r", num_server_rounds=2)
    with task_identity():
        run_federation(InProcessGrid(3), cfg)
    state_file = tmp_path / "client-state" / "r" / "partition-1.state"
    data = bytearray(state_file.read_bytes())
    data[100] ^= 0x10
    state_file.write_bytes(bytes(data))
    # Execute: resume (the same node ids, so no enrolment): nodes reload their state from disk
    grid = InProcessGrid(3)
    with task_identity():
        resumed = run_federation(grid, cfg.replace(resume=True, num_server_rounds=4))
    # Assert: partition 1 refused its damaged state and said need-base in round 3 instead of
    # training on it; in round 4 it rebuilt version 0, got the mask and values again, and trained
    rounds = pd.read_csv(resumed / "rounds.csv").set_index("round")
    assert rounds.loc[3, "clients_resynced"] == 1 and rounds.loc[3, "clients_ok"] == 2
    assert rounds.loc[4, "clients_ok"] == 3 and rounds.loc[4, "clients_rejected"] == 0
    mask_sent = [(int(m.content.config_records["fedfish-config"]["server-round"]), m.metadata.dst_node_id)
                 for m in grid.delivered if m.metadata.message_type == "train.fedfish"
                 and "mask" in m.content.config_records["fedfish-payload"]]
    assert mask_sent == [(4, 1001)]
    held = Holding.from_bytes(grid.contexts[1001].state.config_records[client_state.RECORD]["holding"])
    assert held.model_version == 4 - 1


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda tmp: BASE.replace(initial_model=str(_text_file(tmp))), r"^initial-model: .* is not a saved state_dict"),
        (lambda tmp: BASE.replace(data_root=str(tmp)), r"^data-root: "),
    ],
    ids=["initial-model-is-text", "empty-data-root"],
)
def test_bad_files_at_the_edge_are_errors_naming_the_key(tmp_path: Path, make, match: str) -> None:
    # Execute / Assert
    with task_identity(), pytest.raises(ConfigError, match=match):
        run_federation(InProcessGrid(3), make(tmp_path).replace(results_dir=str(tmp_path)))


def _text_file(folder: Path) -> Path:
    path = folder / "model.txt"
    path.write_text("these are not weights\n")
    return path
