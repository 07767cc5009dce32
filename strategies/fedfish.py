"""FedFish: federated training of a fixed sparse (FISH) mask, and its sparse baselines.

One strategy serves every sparse method so they share sampling, the sync protocol,
validation and accounting; what differs is where the mask comes from (a registered
:mod:`fedfish.mask_sources` source: fisher, saliency, magnitude, random-fixed,
random-per-round, ...) and what clients send back (a registered :mod:`fedfish.updates`
rule: the change under the mask, or top-k with error feedback).

Phases: ``warmup`` (dense rounds), ``calibration`` (the round's mask is built first; from
clients' scores this costs an exchange), then masked rounds; the mask is rebuilt every
``mask_refresh`` rounds (0 = fixed). Downlinks send a node only what it lacks
(:mod:`strategies.downlink`): nothing it can rebuild (version 0), then the values changed
since the version it acknowledged, and the mask once. Uplinks carry changes, which the
server averages into its fp32 model (:mod:`fedfish.aggregation`).

Node bookkeeping (partitions, holdings, enrolment, sampling) is :mod:`strategies.holdings`;
the mask's life cycle is :mod:`strategies.masking`; the fp32 global model, its version
history and the payloads encoded from it are :mod:`strategies.global_model`; which settings
are accepted is :mod:`strategies.settings`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import replace
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedfish import codec
from fedfish.aggregation import combine
from fedfish.layout import ParamLayout
from fedfish.mask_sources import mask_source as find_mask_source
from fedfish.updates import DecodedUpdate, UpdateRule, update_rule
from strategies import records
from strategies.calibration import combine_scores, request_scores
from strategies.downlink import DownlinkEncoder
from strategies.global_model import GlobalModel
from strategies.holdings import NodeHoldings
from strategies.masking import MaskState, ServerScores
from strategies.replies import ReplyBatch, ReplyRules, check_replies
from strategies.settings import check_settings
from strategies.stats import RoundStats

TRAIN, EVALUATE, SCORES = "train.fedfish", "evaluate.fedfish", "query.scores"
# What an enrolling node needs to find its on-disk state (simulations.client_state).
ENROL_KEYS = ("run-name", "run-token", "client-state-dir")


class FedFish(Strategy):
    """Sparse federated training with a shared mask and exact delta sync.

    Parameters
    ----------
    layout : ParamLayout
        Flat parameter order of the model (keys of the ArrayRecord are its names).
    head : torch.Tensor
        Bool ``(P,)``: the classifier head, always inside every mask.
    client_config : dict[str, int | float | str | bool]
        Settings every client needs (data, model, local training); copied into each message.
    mask_source : str (default: "fisher")
        A registered mask source (``fedfish.mask_sources.MASK_SOURCES``); unused by rules
        that train without a mask (top-k).
    update : str (default: "values")
        A registered update rule (``fedfish.updates.UPDATE_RULES``): ``values`` (the change
        under the mask) or ``topk-ef`` (top-k changes with error feedback).
    density : float (default: 0.05)
        Fraction of parameters in the mask, or kept by top-k, in (0, 1].
    mask_scope : str (default: "global")
        ``global`` top-k over all parameters or ``per-layer`` top-k.
    warmup_rounds : int (default: 0)
        Dense rounds before the first mask.
    mask_refresh : int (default: 0)
        Rebuild the mask every this many masked rounds; 0 keeps it fixed.
    value_dtype : str (default: "fp32")
        Dtype of uplink changes (fp32, fp16, bf16, int8).
    downlink_dtype : str (default: "fp32")
        Dtype of the values nodes are sent: fp32 (nodes hold the exact global model) or, with
        ``public_base`` and ``version0``, fp16, bf16 or int8 changes from version 0
        (:mod:`strategies.downlink`). A dense model is always sent in fp32.
    version0 : torch.Tensor | None (default: None)
        fp32 ``(P,)``: the version-0 model the nodes rebuild; needed by a downlink dtype other than fp32.
    error_feedback : bool (default: False)
        Clients keep what the uplink dtype dropped and add it to their next change.
    fisher_source : str (default: "client")
        For data-based sources: ``client`` (sampled clients send scores; bytes counted) or
        ``server`` (``server_scores_fn`` on a proxy set).
    server_scores_fn : ServerScores | None (default: None)
        Scores (P,) of a flat global model on the server: needed for model-based sources
        (magnitude) and for ``fisher_source="server"``.
    fraction_train, fraction_evaluate : float (default: 1.0, 0.0)
        Fraction of connected nodes sampled per round.
    min_replies : int (default: 1)
        Valid replies needed to update the model; with fewer the round is skipped.
    min_available_nodes : int (default: 1)
        Wait for this many connected nodes before sampling.
    examples_bound : Callable[[int], int | None] | None (default: None)
        Largest credible ``num-examples`` of a partition's reply (its shard size).
    num_partitions : int | None (default: None)
        Partition ids a reply may claim are below this.
    round_timeout : float (default: 300)
        Seconds to wait for enrolment and calibration replies.
    max_update_norm : float | None (default: None)
        Reject a training reply whose change has a larger L2 norm; None = no bound.
    update_norm_factor : float | None (default: 10.0)
        With three replies or more, reject a change whose L2 norm exceeds this multiple of the
        round's median; None = off.
    aggregator : str (default: "mean")
        How accepted changes are combined: ``mean`` (weighted by examples), ``median`` or
        ``trimmed-mean`` (coordinate-wise, unweighted, as Flower's FedMedian and FedTrimmedAvg).
    trim_fraction : float (default: 0.1)
        Fraction of the largest and of the smallest values dropped per coordinate by
        ``trimmed-mean`` and by robust calibration.
    robust_calibration : bool (default: True)
        Combine clients' mask scores so that none can choose the mask (unit-sum scores, a
        trimmed mean: :mod:`strategies.calibration`); False = the examples-weighted mean.
    seed : int (default: 0)
        Seed of random masks and of node sampling.
    public_base : bool (default: False)
        Every node can rebuild version 0 itself (a seed or a public checkpoint; clients
        check its digest): a node never heard from holds version 0 and gets only the mask
        and the values under it, never the dense model.
    buffer_names : tuple[str, ...] (default: ())
        The model's buffers (BatchNorm statistics; ``fedfish.layout.buffer_names``).
    buffers : str (default: "aggregate")
        ``aggregate``: every message carries the global buffers and every training reply
        the client's, averaged like FedAvg averages them (a few KB, counted); ``local``:
        each client keeps its own (FedBN), and the server's stay those of version 0.
    run_token : str | None (default: None)
        Names this run in the clients' on-disk state, so a node never builds on another
        run's model; None draws a fresh one (a resumed run restores it from the checkpoint).
    """

    def __init__(  # noqa: PLR0913 - a strategy is configured by keyword, like Flower's
        self,
        *,
        layout: ParamLayout,
        head: torch.Tensor,
        client_config: dict[str, int | float | str | bool],
        mask_source: str = "fisher",
        update: str = "values",
        density: float = 0.05,
        mask_scope: str = "global",
        warmup_rounds: int = 0,
        mask_refresh: int = 0,
        value_dtype: str = "fp32",
        downlink_dtype: str = "fp32",
        version0: torch.Tensor | None = None,
        error_feedback: bool = False,
        fisher_source: str = "client",
        server_scores_fn: ServerScores | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 0.0,
        min_replies: int = 1,
        min_available_nodes: int = 1,
        examples_bound: Callable[[int], int | None] | None = None,
        num_partitions: int | None = None,
        round_timeout: float = 300.0,
        max_update_norm: float | None = None,
        update_norm_factor: float | None = 10.0,
        aggregator: str = "mean",
        trim_fraction: float = 0.1,
        robust_calibration: bool = True,
        seed: int = 0,
        public_base: bool = False,
        buffer_names: tuple[str, ...] = (),
        buffers: str = "aggregate",
        run_token: str | None = None,
    ) -> None:
        source = find_mask_source(mask_source)
        self.rule: UpdateRule = update_rule(update)
        check_settings(
            num_params=layout.num_params, head=head, density=density, mask_scope=mask_scope, value_dtype=value_dtype,
            downlink_dtype=downlink_dtype, public_base=public_base, fisher_source=fisher_source, buffers=buffers,
            aggregator=aggregator, fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
            warmup_rounds=warmup_rounds, mask_refresh=mask_refresh, min_replies=min_replies,
            max_update_norm=max_update_norm, update_norm_factor=update_norm_factor,
        )
        self.scores_on_server = source.kind == "model" or (source.kind == "data" and fisher_source == "server")
        if self.rule.trains_under_mask and self.scores_on_server and server_scores_fn is None:
            raise ValueError(f"FedFish: mask source {mask_source!r} with fisher_source={fisher_source!r} "
                             "needs server_scores_fn")
        self.layout = layout
        self.client_config = dict(client_config) | {"run-token": run_token or secrets.token_hex(16), "buffers": buffers}
        self.update = update
        self.density = density
        self.warmup_rounds = warmup_rounds
        self.value_dtype = value_dtype
        self.error_feedback = error_feedback
        self.fisher_source = fisher_source
        self.server_scores_fn = server_scores_fn
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_replies = min_replies
        self.min_available_nodes = min_available_nodes
        self.round_timeout = round_timeout
        self.reply_limits = ReplyRules(examples_bound=examples_bound, num_partitions=num_partitions,
                                       max_update_norm=max_update_norm, norm_factor=update_norm_factor)
        self.aggregator = aggregator
        self.trim_fraction = trim_fraction
        self.robust_calibration = robust_calibration
        self.masks = MaskState(source=source, layout=layout, head=head, density=density, scope=mask_scope,
                               refresh=mask_refresh, seed=seed)
        self.holdings = NodeHoldings(public_base=public_base, seed=seed, num_partitions=num_partitions)
        self.global_model = GlobalModel(layout, tuple(buffer_names),
                                        syncs_buffers=bool(buffer_names) and buffers == "aggregate",
                                        downlink=DownlinkEncoder(layout.num_params, downlink_dtype, version0, seed))
        self.round_stats: dict[int, RoundStats] = {}

    @property
    def mask(self):  # noqa: ANN201 - Mask | None, as the results writer reads it
        """The current mask (None before the first masked round)."""
        return self.masks.mask

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedFish: update=%s mask_source=%s density=%.4f scope=%s",
            self.update, self.masks.source.name, self.density, self.masks.scope)
        log(INFO, "\t├──> warm-up rounds=%d, mask refresh=%d, value dtype=%s (downlink %s), fisher source=%s",
            self.warmup_rounds, self.masks.refresh, self.value_dtype, self.global_model.downlink_dtype,
            self.fisher_source)
        log(INFO, "\t└──> fraction train=%.2f evaluate=%.2f, min replies=%d",
            self.fraction_train, self.fraction_evaluate, self.min_replies)

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes, (re)build the mask if due, and send each node what it lacks."""
        self.global_model.adopt(arrays)
        stats = self.round_stats.setdefault(server_round, RoundStats())
        nodes = self._sample(server_round, grid, self.fraction_train)
        dense = self._is_dense_round(server_round)
        stats.phase = "warmup" if dense else "train"
        if not dense and self.rule.trains_under_mask and self.masks.due(server_round):
            stats.phase = "calibration"
            # Scores from clients need a network round trip before training can be configured.
            if not self._build_mask(server_round, nodes, grid):
                log(WARNING, "Round %d: calibration failed; no training this round", server_round)
                stats.skipped = True
                return []
        stats.mask_density = self._round_density(dense)
        task_config = dict(config) | self.client_config | {
            "server-round": server_round,
            "update": "dense" if dense else self.update,
            "value-dtype": self.value_dtype,
            "density": self.density,
            "error-feedback": self.error_feedback,
        }
        return [
            Message(content=self._downlink(node, task_config, warmup=dense), message_type=TRAIN, dst_node_id=node)
            for node in nodes
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, average the valid changes and apply them to the fp32 model."""
        stats = self.round_stats.setdefault(server_round, RoundStats())
        rule = update_rule("dense") if self._is_dense_round(server_round) else self.rule
        mask = self.masks.mask if rule.trains_under_mask else None
        model = self.global_model

        def decode(reply: records.Reply) -> tuple[DecodedUpdate, torch.Tensor | None]:
            update = rule.decode(reply.payloads["update"], mask, self.layout.num_params)
            buffers = codec.decode_dense(reply.payloads["buffers"], len(model.buffers)) if model.syncs_buffers else None
            return update, buffers

        batch = check_replies(
            replies,
            decode=decode,
            rules=self._rules(model_version=model.history.version, norms=True),
            required_payloads=("update", "buffers") if model.syncs_buffers else ("update",),
            update_norm=_change_norm,
        )
        self._count(stats, batch)
        stats.clients_ok = len(batch.accepted)
        if len(batch.accepted) < self.min_replies:
            log(WARNING, "Round %d skipped: %d valid replies, %d needed; global model unchanged",
                server_round, len(batch.accepted), self.min_replies)
            stats.skipped = True
            return None, batch.metrics()
        weights = [reply.num_examples for reply, _ in batch.accepted]
        updates = [update for _, (update, _) in batch.accepted]
        change = combine(updates, weights, self.layout.num_params, self.aggregator, self.trim_fraction)
        buffers = [b for _, (_, b) in batch.accepted]
        return model.apply(change, buffers, weights), batch.metrics()

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Client-side evaluation of the current model (off when fraction_evaluate is 0)."""
        if self.fraction_evaluate == 0.0:
            return []
        self.global_model.adopt(arrays)
        nodes = self._sample(server_round, grid, self.fraction_evaluate)
        task_config = dict(config) | self.client_config | {"server-round": server_round}
        return [
            Message(content=self._downlink(node, task_config, phase="evaluate"), message_type=EVALUATE,
                    dst_node_id=node)
            for node in nodes
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Sample-weighted evaluation metrics of the valid replies."""
        batch = check_replies(replies, decode=None, rules=self._rules())
        self.holdings.note_acks(batch)
        return batch.metrics() if batch.accepted else None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, object]:
        """Server-side strategy state, for checkpoints (holdings keyed by partition id, the
        node id -> partition map, the change history, the mask and the run token)."""
        return {
            "run_token": self.client_config["run-token"],
            "history": self.global_model.history.state_dict(),
            "masks": self.masks.state_dict(),
            "holdings": self.holdings.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.global_model.load_history(state["history"])  # type: ignore[arg-type]
        self.masks.load_state_dict(state["masks"])  # type: ignore[arg-type]
        self.holdings.load_state_dict(state["holdings"])  # type: ignore[arg-type]
        self.client_config["run-token"] = str(state["run_token"])

    # ------------------------------------------------------------------ helpers
    def _is_dense_round(self, server_round: int) -> bool:
        return server_round <= self.warmup_rounds

    def _round_density(self, dense: bool) -> float:
        if dense:
            return 1.0
        if not self.rule.trains_under_mask:
            return self.density
        return self.masks.mask.density if self.masks.mask is not None else 1.0

    def _sample(self, server_round: int, grid: Grid, fraction: float) -> list[int]:
        enrol_config = {key: self.client_config[key] for key in ENROL_KEYS if key in self.client_config}
        current_mask = self.masks.mask.version if self.masks.mask is not None else -1
        nodes, enrolment = self.holdings.enrol_and_sample(
            grid, fraction, min_nodes=self.min_available_nodes, config=enrol_config | {"server-round": server_round},
            current_model=self.global_model.history.version, current_mask=current_mask, timeout=self.round_timeout)
        self.round_stats.setdefault(server_round, RoundStats()).count(enrolment)
        return nodes

    def _build_mask(self, server_round: int, nodes: list[int], grid: Grid) -> bool:
        """Make the next mask; returns False when calibration got no usable scores."""
        scores = None
        if self.scores_on_server:
            scores = self.server_scores_fn(self.global_model.params)  # type: ignore[misc]
        elif self.masks.source.kind == "data":
            scores = self._client_scores(server_round, nodes, grid)
            if scores is None:
                return False
        self.masks.build(server_round, scores)
        return True

    def _client_scores(self, server_round: int, nodes: list[int], grid: Grid) -> torch.Tensor | None:
        """Calibration exchange: sampled clients send scores of the current model."""
        task_config = self.client_config | {"server-round": server_round, "mask-source": self.masks.source.name}
        messages = [
            Message(content=self._downlink(node, task_config, phase="calibration", with_mask=False),
                    message_type=SCORES, dst_node_id=node)
            for node in nodes
        ]
        batch = request_scores(grid, messages, self.layout.num_params, self._rules(), self.round_timeout)
        self._count(self.round_stats[server_round], batch)
        return combine_scores(batch, self.trim_fraction, self.robust_calibration)

    def _rules(self, *, model_version: int | None = None, norms: bool = False) -> ReplyRules:
        """What replies may claim: the enrolled partition, its shard size, versions and, with
        ``norms`` (training replies), the norm bounds."""
        limits = self.reply_limits if norms else replace(self.reply_limits, max_update_norm=None, norm_factor=None)
        return replace(limits, partition_of=self.holdings.partition_of,
                       max_model_version=self.global_model.history.version, model_version=model_version)

    def _count(self, stats: RoundStats, batch: ReplyBatch) -> None:
        """Note what replying nodes hold and add the batch's failures to the round's counts."""
        self.holdings.note_acks(batch)
        stats.count(batch)

    def _downlink(
        self,
        node: int,
        task_config: dict[str, int | float | str | bool],
        *,
        phase: str | None = None,
        warmup: bool = False,
        with_mask: bool = True,
    ) -> records.RecordDict:
        """One node's message: its sync payloads, the mask if it lacks it, the buffers and the config."""
        held_model, held_mask = self.holdings.held(node)
        mask = self.masks.mask if (with_mask and not warmup and self.rule.trains_under_mask) else None
        sync = self.global_model.node_sync(held_model, held_mask, mask, self.masks.mask_seed if mask else None)
        if phase is None:
            phase = "warmup" if warmup else "train"
        return records.downlink(dict(task_config) | sync.config | {"phase": phase}, dict(sync.payloads))


def _change_norm(decoded: tuple[DecodedUpdate, torch.Tensor | None]) -> float:
    return float(torch.linalg.vector_norm(decoded[0].values.double()))

