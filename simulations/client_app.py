"""FedFish ClientApp: hold the base model and mask, train masked, send only what changed.

The node keeps in ``context.state`` (it survives across rounds in simulation and on a
SuperNode) the dense base model at the model version it last received, the current
mask and, for top-k, its error-feedback memory, and mirrors it to disk
(:mod:`simulations.client_state`) so that it survives a restart of the node or of the
whole run. Every message says which model version it brings the node to and which
version it assumes the node holds; a node that lacks that base (it lost its state)
answers ``need-base`` instead of guessing, and the server sends it the dense base next
time. An ``enrol`` query (the server's first message to a node it does not know) asks
only for the node's partition and the versions it holds.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader, TensorDataset

from fedfish import codec
from fedfish.data import load_partition
from fedfish.fisher import diagonal_fisher
from fedfish.layout import ParamLayout, flatten_params, load_flat_params, params_digest
from fedfish.masks import Mask, k_for_density, model_saliency, random_mask
from fedfish.models import build_model, head_names
from fedfish.training import TrainConfig, evaluate, masked_train
from simulations import client_state
from simulations.client_state import BASE as _BASE
from simulations.client_state import NODE as _NODE
from simulations.config import parse_forget_state
from strategies import records

app = ClientApp()


class NeedBase(Exception):
    """The message assumes a base model or mask this node does not hold."""


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the local shard; reply with the update the server asked for."""
    return _handle(msg, context)


@app.query()
def calibrate(msg: Message, context: Context) -> Message:
    """Compute Fisher or saliency scores of the received model on local samples."""
    return _handle(msg, context)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local shard."""
    return _handle(msg, context)


def _handle(msg: Message, context: Context) -> Message:
    if "FEDFISH_CLIENT_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["FEDFISH_CLIENT_THREADS"]))
    if records.CONFIG not in msg.content.config_records:
        return _handle_fedavg(msg, context)
    cfg = dict(msg.content.config_records[records.CONFIG])
    payloads = {k: v for k, v in msg.content.config_records[records.PAYLOAD].items() if isinstance(v, bytes)}
    partition_id = int(context.node_config["partition-id"])
    if str(cfg["task"]) != "enrol":  # the fault drills concern the protocol's work, not enrolment
        _inject_faults(cfg, partition_id, context)
    client_state.restore(cfg, context)
    node = context.state.config_records.get(_NODE, ConfigRecord())
    if str(cfg["task"]) == "enrol":
        held = (int(node.get("model-version", -1)), int(node.get("mask-version", -1)))
        return Message(records.uplink(records.STATUS_OK, *held, {"num-examples": 0}, {}, partition_id), reply_to=msg)
    try:
        base = _synced_base(cfg, payloads, context)
        mask = _current_mask(cfg, payloads, node, base.numel())
    except NeedBase:
        client_state.forget(cfg, context)
        content = records.uplink(records.STATUS_NEED_BASE, -1, -1, {"num-examples": 0}, {}, partition_id)
        return Message(content, reply_to=msg)

    model = _model(str(cfg["model"]))
    load_flat_params(model, base)
    x, y = _shard(cfg, context)
    seed = _seed(cfg, partition_id)
    task = str(cfg["task"])
    if task == "train":
        metrics, out = _train(cfg, model, base, mask, x, y, seed, context)
    elif task in ("fisher", "saliency"):
        metrics, out = _scores(cfg, model, x, y, seed)
    elif task == "evaluate":
        result = evaluate(model, _loader(x, y, int(cfg["batch-size"]), None))
        metrics = {"num-examples": result.num_examples, "eval-loss": result.loss, "eval-accuracy": result.accuracy}
        out = {}
    else:
        raise ValueError(f"unknown task {task!r}")

    context.state.array_records[_BASE] = _with_array(context.state.array_records.get(_BASE), "params", base)
    node = ConfigRecord(dict(node))
    node["model-version"] = int(cfg["model-version"])
    if mask is not None:
        node["mask-version"] = mask.version
    context.state.config_records[_NODE] = node
    client_state.persist(cfg, context)
    mask_version = int(node.get("mask-version", -1))
    content = records.uplink(records.STATUS_OK, int(cfg["model-version"]), mask_version, metrics, out, partition_id)
    return Message(content, reply_to=msg)


def _handle_fedavg(msg: Message, context: Context) -> Message:
    """Flower's FedAvg messages: the dense model in ``arrays``, settings in ``config``."""
    cfg = dict(msg.content.config_records["config"])
    partition_id = int(context.node_config["partition-id"])
    cfg["task"] = "evaluate" if msg.metadata.message_type == MessageType.EVALUATE else "train"
    _inject_faults(cfg, partition_id, context)
    model = _model(str(cfg["model"]))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    x, y = _shard(cfg, context)
    if cfg["task"] == "evaluate":
        result = evaluate(model, _loader(x, y, int(cfg["batch-size"]), None))
        metrics = {"num-examples": result.num_examples, "eval-loss": result.loss, "eval-accuracy": result.accuracy}
        return Message(RecordDict({"metrics": MetricRecord(metrics), **_fedavg_ack(partition_id)}), reply_to=msg)
    result = masked_train(model, None, _loader(x, y, int(cfg["batch-size"]), _seed(cfg, partition_id)),
                          _train_config(cfg))
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"num-examples": result.num_examples, "train-loss": result.mean_loss}),
        **_fedavg_ack(partition_id),
    })
    return Message(content, reply_to=msg)


def _fedavg_ack(partition_id: int) -> dict[str, ConfigRecord]:
    # FedAvg ignores ConfigRecords; the server sorts replies by this stable id.
    return {records.ACK: ConfigRecord({"partition-id": partition_id})}


def _synced_base(cfg: dict, payloads: dict[str, bytes], context: Context) -> torch.Tensor:
    """The dense global model at ``model-version``, from the stored base plus the payload."""
    sync = str(cfg["sync"])
    if sync == "full":
        return codec.decode_dense(payloads["model-dense"], _num_params(cfg))
    node = context.state.config_records.get(_NODE)
    stored = context.state.array_records.get(_BASE)
    if node is None or stored is None:
        # Nothing held: only the public initial model (version 0) can serve as the base.
        node, held, base = ConfigRecord(), 0, _public_base(cfg, context)
    else:
        held = int(node["model-version"])
        base = torch.from_numpy(stored["params"].numpy().copy())
    # Holding a newer base than assumed is fine: the delta covers a superset of changes.
    if not int(cfg["base-version"]) <= held <= int(cfg["model-version"]):
        raise NeedBase
    if sync == "current":
        if held != int(cfg["model-version"]):
            raise NeedBase
        return base
    if sync == "delta-mask":
        positions = _current_mask(cfg, payloads, node, base.numel())
        if positions is None:
            raise NeedBase
    elif sync == "delta":
        positions = codec.decode_mask(payloads["model-positions"])
    else:
        raise ValueError(f"unknown sync kind {sync!r}")
    base[positions.bits] = codec.decode_values(payloads["model-values"], positions)
    return base


def _public_base(cfg: dict, context: Context) -> torch.Tensor:
    """The public initial checkpoint as model version 0, if the server says nodes hold it.

    Its path may be overridden per machine with ``--node-config initial-model=...``; a
    missing file or a digest that differs from the server's is a NeedBase, never a guess.
    """
    digest = cfg.get("public-base-digest")
    if not digest or int(cfg["base-version"]) != 0:
        raise NeedBase
    path = str(context.node_config.get("initial-model", cfg.get("initial-model", "")))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = _model(str(cfg["model"]))
        model.load_state_dict(state)
    except (OSError, RuntimeError, pickle.UnpicklingError):
        raise NeedBase from None
    flat = flatten_params(model)
    if params_digest(flat) != digest:
        raise NeedBase
    return flat


def _current_mask(cfg: dict, payloads: dict[str, bytes], node: ConfigRecord, num_params: int) -> Mask | None:
    """The mask this round trains under (None for dense and top-k rounds)."""
    if "mask-version" not in cfg:
        return None
    version = int(cfg["mask-version"])
    if "mask-seed" in cfg:
        return _seeded_mask(str(cfg["model"]), num_params, float(cfg["density"]), int(cfg["mask-seed"]), version)
    if "mask" in payloads:
        mask = codec.decode_mask(payloads["mask"])
        node["mask"] = payloads["mask"]
    elif int(node.get("mask-version", -1)) == version and "mask" in node:
        mask = codec.decode_mask(node["mask"])  # type: ignore[arg-type]
    else:
        raise NeedBase
    if mask.version != version or mask.num_params != num_params:
        raise NeedBase
    return mask


def _train(cfg, model, base, mask, x, y, seed, context) -> tuple[dict, dict[str, bytes]]:  # noqa: ANN001
    config = _train_config(cfg)
    update = str(cfg["update"])
    result = masked_train(model, mask if update == "values" else None, _loader(x, y, config.batch_size, seed), config)
    trained = flatten_params(model)
    dtype = str(cfg["value-dtype"])
    if update == "values":
        payload = codec.encode_values(trained[mask.bits], mask, dtype)
    elif update == "dense":
        payload = codec.encode_dense(trained, dtype)
    elif update == "topk-ef":
        payload = _topk_with_error_feedback(trained - base, float(cfg["density"]), dtype, context)
    else:
        raise ValueError(f"unknown update {update!r}")
    return {"num-examples": result.num_examples, "train-loss": result.mean_loss}, {"update": payload}


def _train_config(cfg: dict) -> TrainConfig:
    return TrainConfig(
        epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        lr=float(cfg["lr"]),
        optimizer=str(cfg["optimizer"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight-decay"]),
    )


def _topk_with_error_feedback(delta: torch.Tensor, density: float, dtype: str, context: Context) -> bytes:
    """Send the k largest entries of delta + memory; keep what was not sent (Stich et al.)."""
    stored = context.state.array_records.get(_BASE)
    memory = (
        torch.from_numpy(stored["ef-memory"].numpy().copy())
        if stored is not None and "ef-memory" in stored
        else torch.zeros_like(delta)
    )
    corrected = delta + memory
    k = k_for_density(corrected.numel(), density)
    indices = torch.topk(corrected.abs(), k, sorted=False).indices.sort().values
    payload = codec.encode_sparse(indices, corrected[indices], corrected.numel(), dtype)
    # What the server will decode (after the wire dtype) is what counts as sent.
    _, sent = codec.decode_sparse(payload, corrected.numel())
    corrected[indices] -= sent
    context.state.array_records[_BASE] = _with_array(stored, "ef-memory", corrected)
    return payload


def _scores(cfg, model, x, y, seed) -> tuple[dict, dict[str, bytes]]:  # noqa: ANN001
    n = min(int(cfg["fisher-samples"]), len(x))
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x), generator=generator)[:n]
    xs, ys = x[pick], y[pick]
    if str(cfg["task"]) == "fisher":
        scores = diagonal_fisher(
            model, xs, ys, str(cfg["fisher-type"]),
            num_label_samples=int(cfg["fisher-label-samples"]), generator=generator,
        )
    else:
        scores = model_saliency(model, xs, ys)
    upload = str(cfg["fisher-upload"])
    if upload == "sparse":
        k = k_for_density(scores.numel(), float(cfg["fisher-upload-density"]))
        indices = torch.topk(scores, k, sorted=False).indices.sort().values
        payload = codec.encode_sparse(indices, scores[indices], scores.numel(), "fp32")
    else:
        payload = codec.encode_dense(scores, upload)
    return {"num-examples": n}, {"scores": payload}


def _inject_faults(cfg: dict, partition_id: int, context: Context) -> None:
    """Fault drills from the run config: forget state at a round, fail a fraction of messages."""
    server_round = int(cfg["server-round"])
    forget_at = parse_forget_state(str(cfg.get("fault-forget-state", "")))
    if forget_at.get(partition_id) == server_round and str(cfg["task"]) != "evaluate":
        client_state.forget(cfg, context)
    fraction = float(cfg.get("fault-fail-fraction", 0.0))
    if fraction > 0:
        key = f"{cfg['seed']}/{server_round}/{partition_id}/{cfg['task']}".encode()
        draw = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") / 2**64
        if draw < fraction:
            raise RuntimeError(f"injected failure (fault-fail-fraction={fraction})")


def _seed(cfg: dict, partition_id: int) -> int:
    # Same seed, round and partition -> same shuffling and samples, in any process.
    return int(cfg["seed"]) * 1_000_003 + int(cfg["server-round"]) * 1009 + partition_id


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None) -> DataLoader:
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=seed is not None, generator=generator)


def _shard(cfg: dict, context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's partition. ``--node-config`` (``partition-id``, ``num-partitions``,
    ``data-root``) describes the machine's own data and wins over the server's settings."""
    node = context.node_config
    num_partitions = int(node.get("num-partitions", cfg["num-partitions"]))
    root = str(node.get("data-root", cfg["data-root"])) or None
    x, y = load_partition(
        str(cfg["dataset"]), int(node["partition-id"]), num_partitions, str(cfg["partitioner"]),
        seed=int(cfg["seed"]), root=root, holdout_fraction=float(cfg.get("holdout-fraction", 0.0)),
        alpha=float(cfg["alpha"]), classes_per_partition=int(cfg["classes-per-partition"]),
    )
    limit = int(cfg["samples-per-client"])
    return (x[:limit], y[:limit]) if limit > 0 else (x, y)


@lru_cache(maxsize=4)
def _model(name: str) -> torch.nn.Module:
    # Built once per process; every use loads the synced base into it first.
    return build_model(name)


@lru_cache(maxsize=16)
def _seeded_mask(model_name: str, num_params: int, density: float, seed: int, version: int) -> Mask:
    model = _model(model_name)
    head = ParamLayout.of(model).indicator(head_names(model))
    return random_mask(num_params, density, seed=seed, always_include=head, version=version)


def _num_params(cfg: dict) -> int:
    return ParamLayout.of(_model(str(cfg["model"]))).num_params


def _with_array(record: ArrayRecord | None, key: str, value: torch.Tensor) -> ArrayRecord:
    arrays = dict(record.items()) if record is not None else {}
    arrays[key] = Array(np.ascontiguousarray(value.numpy(), dtype=np.float32))
    return ArrayRecord(arrays)
