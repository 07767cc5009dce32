"""FedFish: federated training of a fixed sparse (FISH) mask, and its sparse baselines.

One strategy class serves every sparse method so they share sampling, the sync
protocol, validation and accounting; what differs is where the mask comes from
(``mask_source``) and what clients send back (``update``):

============================  ===============  =====================================
run-config ``strategy``        mask_source      update
============================  ===============  =====================================
fedfish                        fisher           values under the mask
saliency                       saliency         values under the mask
magnitude                      magnitude        values under the mask
random-fixed                   random-fixed     values under the mask
random-per-round               random-per-round values under a new random mask/round
topk-ef                        (none)           top-k delta with error feedback
============================  ===============  =====================================

Phases: ``warmup`` (dense rounds), ``calibration`` (clients compute Fisher/saliency
scores; server-side sources need no traffic), then masked rounds; the mask is rebuilt
every ``mask_refresh`` rounds (0 = fixed). Downlinks send a node only what it lacks
(:class:`fedfish.sync.ChangeHistory`): the dense base once, then only the values that
changed since the model version it acknowledged.

What a client holds is keyed by its ``partition-id``, not by its node id: node ids are
random per run (and per SuperNode registration), partition ids name the data and stay.
Before sampling, every connected node the server does not know yet is sent a small
``enrol`` query (phase ``enrol`` in the byte log) that returns its partition and the
model and mask versions it holds (clients keep those on disk, so after a restart or a
resumed run a node needs deltas, not the dense model). Replies are summed in partition
order and nodes are sampled with the strategy's own seeded RNG over partition-ordered
nodes, so two runs with the same seed aggregate bit-identically.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedfish import codec
from fedfish.layout import ParamLayout
from fedfish.masks import Mask, per_layer_top_k_mask, random_mask, top_k_mask
from fedfish.sync import ChangeHistory
from strategies import records
from strategies.downlink import DownlinkEncoder
from strategies.replies import ReplyBatch, check_replies

MASK_SOURCES = ("fisher", "saliency", "magnitude", "random-fixed", "random-per-round")
UPDATES = ("values", "topk-ef")
# What an enrolling node needs to find its on-disk state (simulations.client_state).
ENROL_KEYS = ("run-name", "run-token", "client-state-dir")


@dataclass
class RoundStats:
    """What happened in one round, for ``rounds.csv``."""

    phase: str = "train"
    mask_density: float = 1.0
    clients_ok: int = 0
    clients_failed: int = 0
    clients_rejected: int = 0
    clients_resynced: int = 0
    skipped: bool = False
    rejections: list[tuple[int, str]] = field(default_factory=list)


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
        One of ``MASK_SOURCES``; ignored for ``update="topk-ef"``.
    update : str (default: "values")
        ``values`` (masked parameter values) or ``topk-ef`` (top-k deltas, error feedback).
    density : float (default: 0.05)
        Fraction of parameters in the mask, or kept by top-k, in (0, 1].
    mask_scope : str (default: "global")
        ``global`` top-k over all parameters or ``per-layer`` top-k.
    warmup_rounds : int (default: 0)
        Dense rounds before the first mask.
    mask_refresh : int (default: 0)
        Rebuild the mask every this many masked rounds; 0 keeps it fixed.
    value_dtype : str (default: "fp32")
        Dtype of uplink values; downlinks are always fp32 so clients hold the exact global model.
    fisher_source : str (default: "client")
        ``client`` (sampled clients send scores; bytes counted) or ``server`` (``server_scores_fn``).
    server_scores_fn : Callable[[torch.Tensor], torch.Tensor] | None (default: None)
        Scores (P,) of a flat global model on the server's proxy data, for ``fisher_source="server"``.
    fraction_train, fraction_evaluate : float (default: 1.0, 0.0)
        Fraction of connected nodes sampled per round.
    min_replies : int (default: 1)
        Valid replies needed to update the model; with fewer the round is skipped.
    min_available_nodes : int (default: 1)
        Wait for this many connected nodes before sampling.
    max_examples : int | None (default: None)
        Largest credible ``num-examples`` in a reply.
    round_timeout : float (default: 3600)
        Seconds to wait for calibration replies.
    max_update_norm : float | None (default: None)
        Reject a training reply whose update (decoded values minus the current global
        values at the same positions) has a larger L2 norm; None = no bound.
    seed : int (default: 0)
        Seed of random masks and of node sampling.
    public_base : bool (default: False)
        Every node can load the initial model itself (a public checkpoint; clients check its
        digest): a node never heard from is taken to hold model version 0, so it gets
        deltas from the checkpoint instead of the dense model.
    run_token : str | None (default: None)
        Names this run in the clients' on-disk state, so a node never builds on another
        run's base; None draws a fresh one (a resumed run restores it from the checkpoint).
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
        fisher_source: str = "client",
        server_scores_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 0.0,
        min_replies: int = 1,
        min_available_nodes: int = 1,
        max_examples: int | None = None,
        round_timeout: float = 3600.0,
        max_update_norm: float | None = None,
        seed: int = 0,
        public_base: bool = False,
        run_token: str | None = None,
    ) -> None:
        _check_choice("mask_source", mask_source, MASK_SOURCES)
        _check_choice("update", update, UPDATES)
        _check_choice("mask_scope", mask_scope, ("global", "per-layer"))
        _check_choice("value_dtype", value_dtype, codec.VALUE_DTYPES)
        _check_choice("fisher_source", fisher_source, ("client", "server"))
        if not 0.0 < density <= 1.0:
            raise ValueError(f"FedFish: density must be in (0, 1], got {density}")
        if not 0.0 < fraction_train <= 1.0:
            raise ValueError(f"FedFish: fraction_train must be in (0, 1], got {fraction_train}")
        if not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError(f"FedFish: fraction_evaluate must be in [0, 1], got {fraction_evaluate}")
        if warmup_rounds < 0 or mask_refresh < 0 or min_replies < 1:
            raise ValueError(
                "FedFish: warmup_rounds and mask_refresh must be >= 0 and min_replies >= 1, got "
                f"{warmup_rounds}, {mask_refresh}, {min_replies}"
            )
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"FedFish: max_update_norm must be > 0 or None, got {max_update_norm}")
        if head.dtype != torch.bool or head.shape != (layout.num_params,):
            raise ValueError(f"FedFish: head must be a bool vector of {layout.num_params} entries")
        needs_server_fn = fisher_source == "server" and mask_source in ("fisher", "saliency")
        if needs_server_fn and server_scores_fn is None and update == "values":
            raise ValueError("FedFish: fisher_source='server' needs server_scores_fn")
        self.layout = layout
        self.head = head
        self.client_config = dict(client_config) | {"run-token": run_token or secrets.token_hex(16)}
        self.mask_source = mask_source
        self.update = update
        self.density = density
        self.mask_scope = mask_scope
        self.warmup_rounds = warmup_rounds
        self.mask_refresh = mask_refresh
        self.value_dtype = value_dtype
        self.fisher_source = fisher_source
        self.server_scores_fn = server_scores_fn
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_replies = min_replies
        self.min_available_nodes = min_available_nodes
        self.max_examples = max_examples
        self.round_timeout = round_timeout
        self.max_update_norm = max_update_norm
        self.seed = seed
        self.public_base = public_base
        # Partitions that could not load the public base: they get the dense model.
        self.no_public_base: set[int] = set()
        self.rng = random.Random(seed)  # node sampling; checkpointed with the state

        self.history = ChangeHistory(layout.num_params)
        self.mask: Mask | None = None
        self.mask_seed: int | None = None  # set when the mask is a seeded random one
        self.mask_built_round = 0
        self.held_model: dict[int, int] = {}  # partition -> model version it acknowledged
        self.held_mask: dict[int, int] = {}  # partition -> mask version it acknowledged
        self.partition_of: dict[int, int] = {}  # node id -> partition id, from enrolment and acks
        self.round_stats: dict[int, RoundStats] = {}
        self._global: torch.Tensor | None = None
        self._arrays: ArrayRecord | None = None
        self._train_nodes: list[int] = []
        self.downlink = DownlinkEncoder(layout.num_params)

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        """Log the configuration."""
        log(INFO, "\t├──> FedFish: update=%s mask_source=%s density=%.4f scope=%s",
            self.update, self.mask_source, self.density, self.mask_scope)
        log(INFO, "\t├──> warm-up rounds=%d, mask refresh=%d, value dtype=%s, fisher source=%s",
            self.warmup_rounds, self.mask_refresh, self.value_dtype, self.fisher_source)
        log(INFO, "\t└──> fraction train=%.2f evaluate=%.2f, min replies=%d",
            self.fraction_train, self.fraction_evaluate, self.min_replies)

    # ------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes, (re)build the mask if due, and send each node what it lacks."""
        self._set_global(arrays)
        stats = self.round_stats.setdefault(server_round, RoundStats())
        nodes = self._sample(server_round, grid, self.fraction_train)
        self._train_nodes = nodes
        phase = "warmup" if self._is_dense_round(server_round) else "train"
        stats.phase = phase
        if phase == "train" and self.update == "values" and self._mask_due(server_round):
            stats.phase = "calibration"
            if not self._build_mask(server_round, nodes, grid):
                log(WARNING, "Round %d: calibration failed; no training this round", server_round)
                stats.skipped = True
                return []
        stats.mask_density = self._round_density(phase)
        task_config = dict(config) | self.client_config | {
            "server-round": server_round,
            "task": "train",
            "update": "dense" if phase == "warmup" else self._client_update(),
            "value-dtype": self.value_dtype,
            "density": self.density,
        }
        return [
            Message(
                content=self._downlink(node, task_config, warmup=phase == "warmup"),
                message_type=MessageType.TRAIN,
                dst_node_id=node,
            )
            for node in nodes
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, average the valid ones and rebuild the dense model."""
        stats = self.round_stats.setdefault(server_round, RoundStats())
        dense = self._is_dense_round(server_round)
        batch = check_replies(
            replies,
            decode=self._decoder(dense),
            max_examples=self.max_examples,
            max_model_version=self.history.version,
            update_norm=self._update_norm(dense),
            max_update_norm=self.max_update_norm,
        )
        self._note_acks(batch)
        stats.clients_ok = len(batch.accepted)
        # Failures and rejections add up over the round's exchanges (calibration, then training).
        stats.clients_failed += batch.failed
        stats.clients_rejected += len(batch.rejected)
        stats.clients_resynced += batch.need_base
        stats.rejections.extend(batch.rejected)
        if len(batch.accepted) < self.min_replies:
            log(WARNING, "Round %d skipped: %d valid replies, %d needed; global model unchanged",
                server_round, len(batch.accepted), self.min_replies)
            stats.skipped = True
            return None, batch.metrics()
        new_global, changed = self._apply(batch, dense)
        self.history.record(changed)
        self._global = new_global
        self._arrays = self._to_arrays(new_global)
        return self._arrays, batch.metrics()

    # ------------------------------------------------------------------ evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Client-side evaluation of the current model (off when fraction_evaluate is 0)."""
        if self.fraction_evaluate == 0.0:
            return []
        self._set_global(arrays)
        nodes = self._sample(server_round, grid, self.fraction_evaluate)
        task_config = dict(config) | self.client_config | {"server-round": server_round, "task": "evaluate"}
        return [
            Message(
                content=self._downlink(node, task_config, phase="evaluate"),
                message_type=MessageType.EVALUATE,
                dst_node_id=node,
            )
            for node in nodes
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Sample-weighted evaluation metrics of the valid replies."""
        batch = check_replies(
            replies, decode=None, max_examples=self.max_examples, max_model_version=self.history.version
        )
        self._note_acks(batch)
        return batch.metrics() if batch.accepted else None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, object]:
        """Server-side strategy state, for checkpoints.

        Holdings are keyed by partition id. The node id -> partition map is kept too: it
        still holds where the SuperLink and SuperNodes outlived the ServerApp; nodes with
        new ids are enrolled again.
        """
        return {
            "run_token": self.client_config["run-token"],
            "partition_of": dict(self.partition_of),
            "history": self.history.state_dict(),
            "mask": None if self.mask is None else (self.mask.bits.clone(), self.mask.version),
            "mask_seed": self.mask_seed,
            "mask_built_round": self.mask_built_round,
            "held_model": dict(self.held_model),
            "held_mask": dict(self.held_mask),
            "no_public_base": sorted(self.no_public_base),
            "rng": self.rng.getstate(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.history = ChangeHistory.from_state_dict(state["history"])  # type: ignore[arg-type]
        mask = state["mask"]
        self.mask = None if mask is None else Mask(bits=mask[0], version=mask[1])  # type: ignore[index]
        self.mask_seed = state["mask_seed"]  # type: ignore[assignment]
        self.mask_built_round = int(state["mask_built_round"])  # type: ignore[arg-type]
        self.held_model = dict(state["held_model"])  # type: ignore[arg-type]
        self.held_mask = dict(state["held_mask"])  # type: ignore[arg-type]
        self.no_public_base = set(state["no_public_base"])  # type: ignore[arg-type]
        self.rng.setstate(state["rng"])  # type: ignore[arg-type]
        self.client_config["run-token"] = str(state["run_token"])
        self.partition_of = dict(state["partition_of"])  # type: ignore[arg-type]
        self.downlink.clear()

    # ------------------------------------------------------------------ helpers
    def _is_dense_round(self, server_round: int) -> bool:
        return server_round <= self.warmup_rounds

    def _client_update(self) -> str:
        return "topk-ef" if self.update == "topk-ef" else "values"

    def _round_density(self, phase: str) -> float:
        if phase == "warmup":
            return 1.0
        if self.update == "topk-ef":
            return self.density
        return self.mask.density if self.mask is not None else 1.0

    def _mask_due(self, server_round: int) -> bool:
        if self.mask is None or self.mask_source == "random-per-round":
            return True
        if self.mask_refresh == 0:
            return False
        return server_round - self.mask_built_round >= self.mask_refresh

    def _set_global(self, arrays: ArrayRecord) -> None:
        if arrays is self._arrays and self._global is not None:
            return
        state = arrays.to_torch_state_dict()
        missing = [n for n in self.layout.names if n not in state]
        if missing:
            raise ValueError(f"FedFish: the global ArrayRecord lacks parameters {missing}")
        self._global = torch.cat([state[n].reshape(-1).float() for n in self.layout.names])
        self._arrays = arrays
        self.downlink.clear()

    def _to_arrays(self, flat: torch.Tensor) -> ArrayRecord:
        state = self._arrays.to_torch_state_dict() if self._arrays is not None else {}
        for name, tensor in zip(self.layout.names, self.layout.split(flat), strict=True):
            state[name] = tensor.clone()
        self.downlink.clear()
        return ArrayRecord(state)

    def _sample(self, server_round: int, grid: Grid, fraction: float) -> list[int]:
        """Enrol unknown nodes, then sample with ``self.rng`` over nodes in partition order
        (nodes that failed to enrol last, by node id): the same seed picks the same
        partitions in every run."""
        nodes = list(grid.get_node_ids())
        while len(nodes) < self.min_available_nodes:
            log(INFO, "Waiting for nodes to connect: %d connected, %d needed", len(nodes), self.min_available_nodes)
            time.sleep(1.0)
            nodes = list(grid.get_node_ids())
        self._enrol(server_round, [node for node in nodes if node not in self.partition_of], grid)
        ordered = sorted(nodes, key=self._node_order)
        size = max(int(len(ordered) * fraction), 1)
        return sorted(self.rng.sample(ordered, size), key=self._node_order)

    def _enrol(self, server_round: int, nodes: list[int], grid: Grid) -> None:
        """Ask nodes the server has not heard from for their partition and holdings.

        A node's claim only ever lowers what the server assumes it holds: a node that
        got the next version in a round the server did not checkpoint is sent that
        round's delta again (harmless, and the resumed run's traffic equals an
        uninterrupted one's), and a claimed mask newer than the server's (rebuilt in such a
        round) counts as no mask.
        """
        if not nodes:
            return
        config = {key: self.client_config[key] for key in ENROL_KEYS if key in self.client_config}
        config |= {"server-round": server_round, "task": "enrol", "phase": "enrol"}
        messages = [
            Message(content=records.downlink(config, {}), message_type=MessageType.QUERY, dst_node_id=node)
            for node in nodes
        ]
        replies = grid.send_and_receive(messages, timeout=self.round_timeout)
        batch = check_replies(replies, decode=None, max_examples=self.max_examples, min_examples=0,
                              max_model_version=self.history.version)
        current_mask = self.mask.version if self.mask is not None else -1
        for reply, _ in batch.accepted:
            self.partition_of[reply.node_id] = reply.partition_id
            held = ((self.held_model, reply.model_version, self.history.version),
                    (self.held_mask, reply.mask_version, current_mask))
            for holdings, version, newest in held:
                if 0 <= version <= newest:
                    holdings[reply.partition_id] = min(holdings.get(reply.partition_id, version), version)
                else:
                    holdings.pop(reply.partition_id, None)
        log(INFO, "Round %d: enrolled %d of %d new node(s)", server_round, len(batch.accepted), len(nodes))

    def _node_order(self, node: int) -> tuple[int, int]:
        partition = self.partition_of.get(node)
        return (0, partition) if partition is not None else (1, node)

    def _held(self, node: int) -> tuple[int | None, int | None]:
        """(model version, mask version) the node acknowledged; None where unknown."""
        partition = self.partition_of.get(node)
        held_model = None if partition is None else self.held_model.get(partition)
        held_mask = None if partition is None else self.held_mask.get(partition)
        if held_model is None and self.public_base and partition not in self.no_public_base:
            held_model = 0
        return held_model, held_mask

    def _next_mask_version(self) -> int:
        return 1 if self.mask is None else self.mask.version + 1

    def _build_mask(self, server_round: int, nodes: list[int], grid: Grid) -> bool:
        """Make the next mask; returns False when calibration got no usable scores."""
        version = self._next_mask_version()
        global_params = self._current()
        if self.mask_source in ("random-fixed", "random-per-round"):
            self.mask_seed = self.seed * 1_000_003 + version
            self.mask = random_mask(
                self.layout.num_params, self.density, seed=self.mask_seed,
                always_include=self.head, version=version,
            )
        else:
            if self.mask_source == "magnitude":
                scores = global_params.abs()
            elif self.fisher_source == "server":
                scores = self.server_scores_fn(global_params)  # type: ignore[misc]
            else:
                scores = self._client_scores(server_round, nodes, grid)
                if scores is None:
                    return False
            self.mask_seed = None
            self.mask = self._mask_from_scores(scores, version)
        self.mask_built_round = server_round
        log(INFO, "Round %d: mask v%d from %s, k=%d (density %.4f)",
            server_round, version, self.mask_source, self.mask.k, self.mask.density)
        return True

    def _mask_from_scores(self, scores: torch.Tensor, version: int) -> Mask:
        if self.mask_scope == "per-layer":
            return per_layer_top_k_mask(scores, self.layout, self.density, always_include=self.head, version=version)
        return top_k_mask(scores, self.density, always_include=self.head, version=version)

    def _client_scores(self, server_round: int, nodes: list[int], grid: Grid) -> torch.Tensor | None:
        """Calibration exchange: sampled clients send Fisher (or saliency) scores."""
        task_config = self.client_config | {
            "server-round": server_round,
            "task": "saliency" if self.mask_source == "saliency" else "fisher",
        }
        messages = [
            Message(
                content=self._downlink(node, task_config, phase="calibration", with_mask=False),
                message_type=MessageType.QUERY,
                dst_node_id=node,
            )
            for node in nodes
        ]
        replies = grid.send_and_receive(messages, timeout=self.round_timeout)
        batch = check_replies(replies, decode=self._decode_scores, max_examples=self.max_examples,
                              required_payloads=("scores",), max_model_version=self.history.version)
        self._note_acks(batch)
        stats = self.round_stats[server_round]
        stats.clients_failed += batch.failed
        stats.clients_rejected += len(batch.rejected)
        stats.clients_resynced += batch.need_base
        stats.rejections.extend(batch.rejected)
        if not batch.accepted:
            return None
        total = sum(r.num_examples for r, _ in batch.accepted)
        # Each client's scores are a mean over its samples: weight by sample count.
        return sum(scores * (r.num_examples / total) for r, scores in batch.accepted)  # type: ignore[return-value]

    def _decode_scores(self, reply: records.Reply) -> torch.Tensor:
        payload = reply.payloads["scores"]
        if codec.parse_header(payload).kind == codec.Kind.SPARSE:
            indices, values = codec.decode_sparse(payload, self.layout.num_params)
            if (values < 0).any():
                raise codec.CodecError("scores must be non-negative")
            return torch.zeros(self.layout.num_params).index_put_((indices,), values)
        scores = codec.decode_dense(payload, self.layout.num_params)
        if (scores < 0).any():
            raise codec.CodecError("scores must be non-negative")
        return scores

    def _decoder(self, dense: bool) -> Callable[[records.Reply], torch.Tensor]:
        num_params = self.layout.num_params

        def decode(reply: records.Reply) -> torch.Tensor:
            payload = reply.payloads["update"]
            if dense:
                return codec.decode_dense(payload, num_params)
            if self.update == "topk-ef":
                indices, values = codec.decode_sparse(payload, num_params)
                return torch.zeros(num_params).index_put_((indices,), values)
            return codec.decode_values(payload, self._current_mask())

        return decode

    def _update_norm(self, dense: bool) -> Callable[[torch.Tensor], float]:
        """L2 norm of the change a decoded training payload asks for."""

        def norm(decoded: torch.Tensor) -> float:
            if self.update == "topk-ef" and not dense:
                change = decoded  # already a delta
            elif dense:
                change = decoded - self._current()
            else:
                change = decoded - self._current()[self._current_mask().bits]
            return float(torch.linalg.vector_norm(change.double()))

        return norm

    def _apply(self, batch: ReplyBatch, dense: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New global model and the positions it changed (None = all)."""
        total = sum(r.num_examples for r, _ in batch.accepted)
        average = sum(update * (r.num_examples / total) for r, update in batch.accepted)
        old = self._current()
        if dense:
            return average.clone(), None  # type: ignore[union-attr]
        if self.update == "topk-ef":
            changed = torch.zeros(self.layout.num_params, dtype=torch.bool)
            for _, update in batch.accepted:
                changed |= update != 0
            return old + average, changed  # type: ignore[operator]
        mask = self._current_mask()
        new = old.clone()
        new[mask.bits] = average  # type: ignore[index]
        return new, mask.bits

    def _note_acks(self, batch: ReplyBatch) -> None:
        for reply in batch.lost_state:
            self.partition_of[reply.node_id] = reply.partition_id
            if reply.partition_id not in self.held_model:
                # It was assumed to hold the public base and could not load it.
                self.no_public_base.add(reply.partition_id)
            self.held_model.pop(reply.partition_id, None)
            self.held_mask.pop(reply.partition_id, None)
        for reply, _ in batch.accepted:
            self.partition_of[reply.node_id] = reply.partition_id
            self.held_model[reply.partition_id] = reply.model_version
            if reply.mask_version >= 0:
                self.held_mask[reply.partition_id] = reply.mask_version

    def _current(self) -> torch.Tensor:
        if self._global is None:
            raise RuntimeError("FedFish: no global model yet (configure_train not called)")
        return self._global

    def _current_mask(self) -> Mask:
        if self.mask is None:
            raise RuntimeError("FedFish: no mask yet")
        return self.mask

    def _downlink(
        self,
        node: int,
        task_config: dict[str, int | float | str | bool],
        *,
        phase: str | None = None,
        warmup: bool = False,
        with_mask: bool = True,
    ) -> records.RecordDict:
        """One node's message: its sync payloads, the mask if it lacks it, and the config."""
        held_model, held_mask = self._held(node)
        mask = self.mask if (with_mask and not warmup and self.update == "values") else None
        sync = self.downlink.node_sync(
            self.history, self._current(), held_model, held_mask, mask, self.mask_seed if mask else None
        )
        if phase is None:
            phase = "warmup" if warmup else ("mask" if sync.one_time else "train")
        return records.downlink(dict(task_config) | sync.config | {"phase": phase}, sync.payloads)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"FedFish: {name} must be one of {list(allowed)}, got {value!r}")
