"""Flower's own FedAvg, behind the same reply validation and round log as FedFish.

The dense baseline is Flower's FedAvg (same messages, same aggregation code). This
subclass only (1) passes replies through :func:`strategies.replies.check_array_replies`
(keys, shapes, dtypes, finite values, num-examples bound, optional update-norm bound),
(2) hands FedAvg the valid replies in partition order, so that the float sums are the
same in every run whatever the random node ids, (3) skips a round with fewer than
``min_replies`` valid replies, leaving the model unchanged, (4) records a
:class:`RoundStats` per round so ``rounds.csv`` has the same columns for every strategy,
and (5) samples nodes as FedFish does (:class:`strategies.holdings.NodeHoldings`: enrolled
partitions, a seeded RNG), so a run is reproducible whatever the random node ids and, for
the same seed, trains the same clients in each round as FedFish does: a paired comparison.
Its bytes are measured like everyone's, by :class:`strategies.metering.MeteredGrid`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from strategies.holdings import NodeHoldings
from strategies.replies import ReplyBatch, ReplyRules, check_array_replies
from strategies.stats import RoundStats


class CountingFedAvg(FedAvg):
    """:class:`flwr.serverapp.strategy.FedAvg` with validated, ordered replies and round counts.

    Parameters
    ----------
    min_replies : int (default: 1)
        Valid replies needed to update the model; with fewer the round is skipped.
    examples_bound : Callable[[int], int | None] | None (default: None)
        Largest credible ``num-examples`` of a partition's reply (its shard size).
    num_partitions : int | None (default: None)
        Partition ids a reply may claim are below this.
    max_update_norm : float | None (default: None)
        Bound on the L2 norm of (reply model - global model); None = no bound.
    update_norm_factor : float | None (default: 10.0)
        With three replies or more, reject a change whose norm exceeds this multiple of the
        round's median; None = off.
    seed : int (default: 0)
        Seed of node sampling.
    enrol_config : dict[str, int | float | str | bool] | None (default: None)
        Keys the ``query.enrol`` message carries (run name and token).
    round_timeout : float (default: 3600)
        Seconds to wait for enrolment replies.
    **kwargs
        Flower's FedAvg arguments.
    """

    def __init__(  # noqa: PLR0913 - keyword configuration, like Flower's
        self,
        *,
        min_replies: int = 1,
        examples_bound: Callable[[int], int | None] | None = None,
        num_partitions: int | None = None,
        max_update_norm: float | None = None,
        update_norm_factor: float | None = 10.0,
        seed: int = 0,
        enrol_config: dict[str, int | float | str | bool] | None = None,
        round_timeout: float = 300.0,
        **kwargs: object,
    ) -> None:
        if min_replies < 1:
            raise ValueError(f"CountingFedAvg: min_replies must be >= 1, got {min_replies}")
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"CountingFedAvg: max_update_norm must be > 0 or None, got {max_update_norm}")
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.min_replies = min_replies
        self.reply_limits = ReplyRules(examples_bound=examples_bound, num_partitions=num_partitions,
                                       max_update_norm=max_update_norm, norm_factor=update_norm_factor)
        self.round_stats: dict[int, RoundStats] = {}
        self._global: ArrayRecord | None = None
        self.holdings = NodeHoldings(public_base=False, seed=seed, num_partitions=num_partitions)
        self.enrol_config = dict(enrol_config or {})
        self._enrolment = ReplyBatch()
        self.round_timeout = round_timeout

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the round's global model (the reference of every reply); FedAvg's messages
        to the nodes sampled as FedFish samples them."""
        self._global = arrays
        return self._messages(server_round, arrays, config, grid, self.fraction_train, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluation messages, to nodes sampled as for training."""
        return self._messages(server_round, arrays, config, grid, self.fraction_evaluate, MessageType.EVALUATE)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and order the replies, then aggregate the valid ones as FedAvg does."""
        if self._global is None:
            raise RuntimeError("CountingFedAvg: aggregate_train before configure_train")
        rules = replace(self.reply_limits, partition_of=self.holdings.partition_of)
        batch, valid = check_array_replies(replies, self._global, rules=rules, weighted_by_key=self.weighted_by_key)
        # The round's enrolment counts too: a node that failed it or claimed a partition not its own.
        enrolment, self._enrolment = self._enrolment, ReplyBatch()
        stats = RoundStats(phase="train", mask_density=1.0, clients_ok=len(batch.accepted))
        stats.count(enrolment)
        stats.count(batch)
        self.round_stats[server_round] = stats
        if len(batch.accepted) < self.min_replies:
            log(WARNING, "Round %d skipped: %d valid replies, %d needed; global model unchanged",
                server_round, len(batch.accepted), self.min_replies)
            stats.skipped = True
            return None, batch.metrics()
        arrays, metrics = super().aggregate_train(server_round, valid)
        return _with_dtypes_of(arrays, self._global), metrics

    def state_dict(self) -> dict[str, object]:
        """Node map and sampling RNG, for checkpoints."""
        return {"holdings": self.holdings.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.holdings.load_state_dict(state["holdings"])  # type: ignore[arg-type]

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, fraction: float, kind: str
    ) -> Iterable[Message]:
        if fraction == 0.0:
            return []
        sampled, self._enrolment = self.holdings.enrol_and_sample(
            grid, fraction, min_nodes=self.min_available_nodes,
            config=self.enrol_config | {"server-round": server_round}, current_model=0, current_mask=-1,
            timeout=self.round_timeout)
        # A copy: the caller's ConfigRecord is shared by every round.
        config = ConfigRecord(dict(config) | {"server-round": server_round})
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, sampled, kind)


def _with_dtypes_of(arrays: ArrayRecord | None, reference: ArrayRecord) -> ArrayRecord | None:
    """Flower averages every array in floating point: integer buffers (BatchNorm's batch
    counters) come back as float64. Cast each array back to the global model's dtype, integers
    rounded, so the next round's replies (which carry the model's own dtypes) still match."""
    if arrays is None:
        return None
    expected = {key: array.numpy().dtype for key, array in reference.items()}
    out = {}
    for key, array in arrays.items():
        value = array.numpy()
        if np.issubdtype(expected[key], np.integer):
            value = np.rint(value)
        out[key] = Array(np.array(value, dtype=expected[key]))  # a C-ordered copy; 0-d stays 0-d
    return ArrayRecord(out)
