"""What the server knows of each node: its partition, and the model and mask versions it holds.

Node ids are random per run (and per SuperNode registration); partition ids name the data
and stay, so holdings are keyed by partition. Before sampling, every connected node the
server does not know yet is sent a small ``query.enrol`` message (phase ``enrol``) that
returns its partition and the versions it holds (clients keep those on disk, so after a
restart or a resumed run a node needs deltas, not the dense model). Sampling runs over
nodes in partition order with a seeded RNG, so two runs with the same seed pick the same
partitions whatever the node ids.

A node the server has not heard from holds version 0 when every node can rebuild the
initial model itself (``public_base``: a seed or a public checkpoint); a node that said it
cannot (``need-base``) gets the dense model from then on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies import records
from strategies.replies import ReplyBatch, ReplyRules, check_claims

ENROL = "query.enrol"


class NodeHoldings:
    """Partition of every known node, and the versions each partition acknowledged.

    Parameters
    ----------
    public_base : bool
        Nodes can rebuild version 0 themselves: one never heard from holds version 0.
    seed : int
        Seed of node sampling.
    num_partitions : int | None (default: None)
        Partitions a node may claim are below this.
    """

    def __init__(self, *, public_base: bool, seed: int, num_partitions: int | None = None) -> None:
        self.public_base = public_base
        self.num_partitions = num_partitions
        self.rng = random.Random(seed)  # node sampling; checkpointed with the state
        self.partition_of: dict[int, int] = {}  # node id -> partition id
        self.held_model: dict[int, int] = {}  # partition -> model version it acknowledged
        self.held_mask: dict[int, int] = {}  # partition -> mask version it acknowledged
        # Partitions that could not rebuild version 0: they get the dense model.
        self.no_public_base: set[int] = set()

    def held(self, node: int) -> tuple[int | None, int | None]:
        """(model version, mask version) the node holds; None where unknown."""
        partition = self.partition_of.get(node)
        held_model = None if partition is None else self.held_model.get(partition)
        held_mask = None if partition is None else self.held_mask.get(partition)
        if held_model is None and self.public_base and partition not in self.no_public_base:
            held_model = 0
        return held_model, held_mask

    def sample(self, nodes: list[int], fraction: float) -> list[int]:
        """``max(int(len * fraction), 1)`` of the enrolled nodes, drawn with the seeded RNG over
        partition order and returned in that order (a node without a partition takes no part)."""
        enrolled = sorted((node for node in nodes if node in self.partition_of), key=self.partition_of.__getitem__)
        if not enrolled:
            return []
        size = max(int(len(enrolled) * fraction), 1)
        return sorted(self.rng.sample(enrolled, size), key=self.partition_of.__getitem__)

    def enrol_and_sample(
        self,
        grid: Grid,
        fraction: float,
        *,
        min_nodes: int,
        config: dict[str, int | float | str | bool],
        current_model: int,
        current_mask: int,
        timeout: float,
    ) -> tuple[list[int], ReplyBatch]:
        """The round's nodes: wait for ``min_nodes`` to connect, enrol those not known yet
        (a round trip: sampling by partition needs their partitions), then :meth:`sample`
        ``fraction`` of the enrolled. Returns them and the enrolment replies sorted out."""
        nodes = wait_for_nodes(grid, min_nodes)
        enrolment = self.enrol(grid, nodes, config, current_model=current_model, current_mask=current_mask,
                               timeout=timeout)
        return self.sample(nodes, fraction), enrolment

    def enrol(
        self,
        grid: Grid,
        nodes: Iterable[int],
        config: dict[str, int | float | str | bool],
        *,
        current_model: int,
        current_mask: int,
        timeout: float,
    ) -> ReplyBatch:
        """Ask nodes the server has not heard from for their partition and holdings (a
        ``query.enrol`` message carrying ``config``, phase ``enrol``); returns the enrolment
        replies sorted out (failures and rejected claims count in the round).

        A node's partition is fixed here, once: a partition that another connected node holds,
        or that two new nodes claim at once, is given to none of them (logged), so that no
        node can take over another's identity; nodes that leave free theirs. A node's claim
        only ever lowers what the server assumes it holds: a node that got the next version
        in a round the server did not checkpoint is sent that round's delta again (harmless,
        and the resumed run's traffic equals an uninterrupted one's), and a claimed mask newer
        than the server's (rebuilt in such a round) counts as no mask.
        """
        connected = set(nodes)
        self.partition_of = {node: p for node, p in self.partition_of.items() if node in connected}
        unknown = sorted(connected - set(self.partition_of))
        if not unknown:
            return ReplyBatch()
        content = dict(config) | {"phase": "enrol"}
        messages = [Message(content=records.downlink(content, {}), message_type=ENROL, dst_node_id=node)
                    for node in unknown]
        replies = grid.send_and_receive(messages, timeout=timeout)
        batch = check_claims(replies, ReplyRules(min_examples=0, max_model_version=current_model,
                                                 num_partitions=self.num_partitions),
                             taken=set(self.partition_of.values()))
        for reply, _ in batch.accepted:
            self.partition_of[reply.node_id] = reply.partition_id
            held = ((self.held_model, reply.model_version, current_model),
                    (self.held_mask, reply.mask_version, current_mask))
            for holdings, version, newest in held:
                if 0 <= version <= newest:
                    holdings[reply.partition_id] = min(holdings.get(reply.partition_id, version), version)
                else:
                    holdings.pop(reply.partition_id, None)
        log(INFO, "Enrolled %d of %d new node(s)", len(batch.accepted), len(unknown))
        return batch

    def note_acks(self, batch: ReplyBatch) -> None:
        """Record what replying nodes now hold; nodes that lost their state hold nothing."""
        for reply in batch.lost_state:
            self.partition_of[reply.node_id] = reply.partition_id
            if reply.partition_id not in self.held_model:
                # It was assumed to hold version 0 and could not rebuild it.
                self.no_public_base.add(reply.partition_id)
            self.held_model.pop(reply.partition_id, None)
            self.held_mask.pop(reply.partition_id, None)
        for reply, _ in batch.accepted:
            self.partition_of[reply.node_id] = reply.partition_id
            self.held_model[reply.partition_id] = reply.model_version
            if reply.mask_version >= 0:
                self.held_mask[reply.partition_id] = reply.mask_version

    def state_dict(self) -> dict[str, object]:
        """Holdings, node map and sampling RNG, for checkpoints."""
        return {
            "partition_of": dict(self.partition_of),
            "held_model": dict(self.held_model),
            "held_mask": dict(self.held_mask),
            "no_public_base": sorted(self.no_public_base),
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.partition_of = dict(state["partition_of"])  # type: ignore[arg-type]
        self.held_model = dict(state["held_model"])  # type: ignore[arg-type]
        self.held_mask = dict(state["held_mask"])  # type: ignore[arg-type]
        self.no_public_base = set(state["no_public_base"])  # type: ignore[arg-type]
        self.rng.setstate(state["rng"])  # type: ignore[arg-type]


def wait_for_nodes(grid: Grid, minimum: int) -> list[int]:
    """Connected node ids once at least ``minimum`` are connected."""
    nodes = list(grid.get_node_ids())
    while len(nodes) < minimum:
        log(INFO, "Waiting for nodes to connect: %d connected, %d needed", len(nodes), minimum)
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    return nodes
