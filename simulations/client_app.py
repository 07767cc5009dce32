"""FedFish ClientApp: one function per kind of work, routed by Flower's message type.

=====================  ===================================================================
message type           work
=====================  ===================================================================
``query.enrol``        say which partition this node serves and which versions it holds
``query.scores``       mask scores (Fisher, saliency, ...) of the synced model on local data
``train.fedfish``      sync, train under the round's mask, send the change (update rule)
``evaluate.fedfish``   sync, evaluate on the local shard
``train``/``evaluate`` Flower's own FedAvg messages (the dense baseline)
=====================  ===================================================================

A node keeps its :class:`fedfish.holding.Holding` (the model version it holds as values
over version 0, its mask, error-feedback memory) in ``context.state`` and on disk
(:mod:`simulations.client_state`). Every message names the model version it brings the
node to and the version it assumes the node holds (:mod:`simulations.client_sync`); a node
that lacks that base answers ``need-base`` instead of guessing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, TensorDataset

from fedfish import codec
from fedfish.dataconfig import DataConfig
from fedfish.datasource import load_partition
from fedfish.holding import Holding
from fedfish.layout import flatten_buffers, flatten_params, load_flat_buffers, load_flat_params
from fedfish.mask_sources import ScoreSettings, mask_source
from fedfish.masks import Mask, k_for_density
from fedfish.models import default_device
from fedfish.training import TrainConfig, evaluate, masked_train
from fedfish.updates import EncodeSettings, update_rule
from simulations import client_state
from simulations.client_sync import (
    NeedBase,
    model_buffers,
    model_for,
    model_size,
    round_mask,
    sync_model,
    version0,
)
from simulations.config import parse_forget_state
from strategies import records

app = ClientApp()
_FEDAVG_BUFFERS = "fedavg-buffers"  # ConfigRecord {"buffers": bytes}: FedBN with Flower's FedAvg


@app.query("enrol")
def enrol(msg: Message, context: Context) -> Message:
    """Report the partition served and the model and mask versions held (nothing else)."""
    node = _Node.open(msg, context, task="enrol")
    return node.reply({"num-examples": 0}, {})


@app.query("scores")
def scores(msg: Message, context: Context) -> Message:
    """Scores of the named mask source for the synced model, on local samples."""
    node = _Node.open(msg, context, task="scores")
    try:
        model, _, _ = node.synced_model()
    except NeedBase:
        return node.need_base()
    cfg = node.cfg
    x, y = _shard(cfg, context)
    n = min(int(cfg["fisher-samples"]), len(x))
    generator = torch.Generator().manual_seed(_seed(cfg, node.partition_id))
    pick = torch.randperm(len(x), generator=generator)[:n]
    settings = ScoreSettings(str(cfg["fisher-type"]), int(cfg["fisher-label-samples"]), generator)
    values = mask_source(str(cfg["mask-source"])).scores(model, (x[pick], y[pick]), settings)
    return node.reply({"num-examples": n}, {"scores": _score_payload(values, cfg)})


@app.train("fedfish")
def train(msg: Message, context: Context) -> Message:
    """Sync, train under the round's mask, and send the change as the update rule says."""
    node = _Node.open(msg, context, task="train")
    try:
        model, base, mask = node.synced_model()
    except NeedBase:
        return node.need_base()
    cfg = node.cfg
    config = _train_config(cfg)
    rule = update_rule(str(cfg["update"]))
    seed = _seed(cfg, node.partition_id)
    loader = _loader(*_shard(cfg, context), config.batch_size, seed)
    result = masked_train(model, mask if rule.trains_under_mask else None, loader, config, default_device())
    settings = EncodeSettings(
        dtype=str(cfg["value-dtype"]), density=float(cfg["density"]),
        error_feedback=bool(cfg.get("error-feedback", False)),
        generator=torch.Generator().manual_seed(seed + 1),  # int8 rounding noise, reproducible
    )
    payloads = {"update": rule.encode(flatten_params(model) - base, mask, node.holding, settings)}
    if str(cfg.get("buffers", "aggregate")) == "local":
        node.holding.buffers = flatten_buffers(model)  # FedBN: the statistics stay on the node
    elif "buffers" in node.payloads:
        payloads["buffers"] = codec.encode_dense(flatten_buffers(model))
    return node.reply({"num-examples": result.num_examples, "train-loss": result.mean_loss}, payloads)


@app.evaluate("fedfish")
def evaluate_fedfish(msg: Message, context: Context) -> Message:
    """Sync and evaluate on the local shard."""
    node = _Node.open(msg, context, task="evaluate")
    try:
        model, _, _ = node.synced_model()
    except NeedBase:
        return node.need_base()
    return node.reply(_evaluate(model, node.cfg, context), {})


@app.train()
def train_fedavg(msg: Message, context: Context) -> Message:
    """Flower's FedAvg: the dense model in ``arrays``, settings in ``config``; dense training."""
    cfg, model = _fedavg_model(msg, context, task="train")
    config = _train_config(cfg)
    partition_id = int(context.node_config["partition-id"])
    loader = _loader(*_shard(cfg, context), config.batch_size, _seed(cfg, partition_id))
    result = masked_train(model, None, loader, config, default_device())
    if str(cfg.get("buffers", "aggregate")) == "local":
        context.state.config_records[_FEDAVG_BUFFERS] = ConfigRecord(
            {"buffers": codec.encode_dense(flatten_buffers(model))})
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"num-examples": result.num_examples, "train-loss": result.mean_loss}),
        **_fedavg_ack(partition_id),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_fedavg(msg: Message, context: Context) -> Message:
    """Flower's FedAvg evaluation on the local shard."""
    cfg, model = _fedavg_model(msg, context, task="evaluate")
    metrics = _evaluate(model, cfg, context)
    partition_id = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord(metrics), **_fedavg_ack(partition_id)}), reply_to=msg)


@dataclass
class _Node:
    """One FedFish message's view of this node: config, payloads, partition and holding."""

    msg: Message
    context: Context
    cfg: dict
    payloads: dict[str, bytes]
    partition_id: int
    holding: Holding

    @classmethod
    def open(cls, msg: Message, context: Context, task: str) -> _Node:
        _set_threads()
        cfg = dict(msg.content.config_records[records.CONFIG])
        payloads = {k: v for k, v in msg.content.config_records[records.PAYLOAD].items() if isinstance(v, bytes)}
        partition_id = int(context.node_config["partition-id"])
        if task != "enrol":  # the fault drills concern the protocol's work, not enrolment
            _inject_faults(cfg, partition_id, context, task)
        return cls(msg, context, cfg, payloads, partition_id, client_state.load(cfg, context))

    def synced_model(self) -> tuple[torch.nn.Module, torch.Tensor, Mask | None]:
        """The run's model loaded with the synced global model, that vector, and the round's mask.

        Raises NeedBase (after dropping the state) when the message assumes what the node lacks.
        """
        base0 = version0(self.cfg, self.context.node_config)
        try:
            mask = round_mask(self.cfg, self.payloads, self.holding, model_size(self.cfg))
            base = sync_model(self.cfg, self.payloads, self.holding, base0.params if base0 else None, mask)
        except NeedBase:
            client_state.forget(self.cfg, self.context)
            self.holding.forget()
            raise
        model = model_for(self.cfg)
        load_flat_params(model, base)
        load_flat_buffers(model, model_buffers(self.cfg, self.payloads, self.holding, base0))
        return model, base, mask

    def reply(self, metrics: dict[str, int | float], payloads: dict[str, bytes]) -> Message:
        if self.holding.holds_model or self.holding.mask_version >= 0:
            client_state.save(self.cfg, self.context, self.holding)
        content = records.uplink(records.STATUS_OK, self.holding.model_version, self.holding.mask_version,
                                 metrics, payloads, self.partition_id)
        return Message(content, reply_to=self.msg)

    def need_base(self) -> Message:
        content = records.uplink(records.STATUS_NEED_BASE, -1, -1, {"num-examples": 0}, {}, self.partition_id)
        return Message(content, reply_to=self.msg)


def _fedavg_model(msg: Message, context: Context, task: str) -> tuple[dict, torch.nn.Module]:
    _set_threads()
    cfg = dict(msg.content.config_records["config"])
    _inject_faults(cfg, int(context.node_config["partition-id"]), context, task)
    model = model_for(cfg)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    own = context.state.config_records.get(_FEDAVG_BUFFERS)
    if str(cfg.get("buffers", "aggregate")) == "local" and own is not None:
        # FedBN: this node's statistics replace the averaged ones the server sent.
        load_flat_buffers(model, codec.decode_dense(own["buffers"], flatten_buffers(model).numel()))
    return cfg, model


def _fedavg_ack(partition_id: int) -> dict[str, ConfigRecord]:
    # FedAvg ignores ConfigRecords; the server sorts replies by this stable id.
    return {records.ACK: ConfigRecord({"partition-id": partition_id})}


def _evaluate(model: torch.nn.Module, cfg: dict, context: Context) -> dict[str, int | float]:
    x, y = _shard(cfg, context)
    result = evaluate(model, _loader(x, y, int(cfg["batch-size"]), None), default_device())
    return {"num-examples": result.num_examples, "eval-loss": result.loss, "eval-accuracy": result.accuracy}


def _score_payload(scores: torch.Tensor, cfg: dict) -> bytes:
    upload = str(cfg["fisher-upload"])
    if upload == "sparse":
        k = k_for_density(scores.numel(), float(cfg["fisher-upload-density"]))
        indices = torch.topk(scores, k, sorted=False).indices.sort().values
        return codec.encode_sparse(indices, scores[indices], scores.numel(), "fp32")
    return codec.encode_dense(scores, upload)


def _train_config(cfg: dict) -> TrainConfig:
    return TrainConfig(
        epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]),
        optimizer=str(cfg["optimizer"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight-decay"]),
    )


def _inject_faults(cfg: dict, partition_id: int, context: Context, task: str) -> None:
    """Fault drills from the run config: forget state at a round, fail a fraction of messages."""
    server_round = int(cfg["server-round"])
    forget_at = parse_forget_state(str(cfg.get("fault-forget-state", "")))
    if forget_at.get(partition_id) == server_round and task != "evaluate" and "run-token" in cfg:
        client_state.forget(cfg, context)
    fraction = float(cfg.get("fault-fail-fraction", 0.0))
    if fraction > 0:
        key = f"{cfg['seed']}/{server_round}/{partition_id}/{task}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") / 2**64
        if draw < fraction:
            raise RuntimeError(f"injected failure (fault-fail-fraction={fraction})")


def _set_threads() -> None:
    if "FEDFISH_CLIENT_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["FEDFISH_CLIENT_THREADS"]))


def _seed(cfg: dict, partition_id: int) -> int:
    # Same seed, round and partition -> same shuffling and samples, in any process.
    return int(cfg["seed"]) * 1_000_003 + int(cfg["server-round"]) * 1009 + partition_id


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None) -> DataLoader:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=seed is not None, generator=generator)


def _shard(cfg: dict, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's partition. ``--node-config`` (``num-partitions``, ``data-root``,
    ``data-files``, ``data-dir``) describes the machine's own data and wins over the
    server's settings; ``partition-id`` always comes from the node."""
    node = context.node_config
    overrides = {key: node[key] for key in ("num-partitions", "data-root", "data-files", "data-dir") if key in node}
    data = DataConfig.from_run_config(cfg | overrides)
    x, y = load_partition(data, int(node["partition-id"]))
    limit = int(cfg["samples-per-client"])
    return (x[:limit], y[:limit]) if limit > 0 else (x, y)
