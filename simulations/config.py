"""The run configuration: one frozen dataclass, parsed once at the edge.

Flower hands the ServerApp ``context.run_config`` (pyproject defaults plus
``--run-config`` overrides); scripted runs build a :class:`RunConfig` directly.
Every key is kebab-case on the outside and validated before any training starts:
unknown keys and out-of-range values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedfish.aggregation import AGGREGATORS
from fedfish.codec import VALUE_DTYPES
from fedfish.dataconfig import DataConfig, DataConfigError
from fedfish.partition import partitioner_names
from strategies.settings import BUFFER_MODES, FISHER_SOURCES, MASK_SCOPES

STRATEGIES = ("fedavg", "fedfish", "random-fixed", "random-per-round", "magnitude", "saliency", "topk-ef")
FISHER_TYPES = ("empirical", "expected", "sampled")
FISHER_UPLOADS = ("fp32", "fp16", "sparse")
OPTIMIZERS = ("sgd", "adam", "adamw")


class ConfigError(ValueError):
    """A run-config key is unknown or its value is out of range."""


def _choice(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a FedFish run; field ``foo_bar`` is run-config key ``foo-bar``."""

    # What to run
    strategy: str = field(default="fedfish", metadata=_choice(*STRATEGIES))
    mask_source: str = ""
    update_rule: str = ""
    density: float = field(default=0.05, metadata=_range(0.0, 1.0, lo_open=True))
    mask_scope: str = field(default="global", metadata=_choice(*MASK_SCOPES))
    fisher_type: str = field(default="empirical", metadata=_choice(*FISHER_TYPES))
    fisher_samples: int = field(default=256, metadata=_range(1))
    fisher_label_samples: int = field(default=1, metadata=_range(1))
    fisher_source: str = field(default="client", metadata=_choice(*FISHER_SOURCES))
    fisher_upload: str = field(default="fp16", metadata=_choice(*FISHER_UPLOADS))
    fisher_upload_density: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))
    warmup_rounds: int = field(default=0, metadata=_range(0))
    mask_refresh: int = field(default=0, metadata=_range(0))
    value_dtype: str = field(default="fp32", metadata=_choice(*VALUE_DTYPES))
    downlink_dtype: str = field(default="fp32", metadata=_choice(*VALUE_DTYPES))
    error_feedback: bool = False
    # Data (fedfish.dataconfig.DataConfig checks these) and model
    dataset: str = "fashion-mnist"
    data_root: str = ""
    data_files: str = ""
    data_dir: str = ""
    feature_column: str = ""
    label_column: str = "label"
    model: str = "cnn"
    buffers: str = field(default="aggregate", metadata=_choice(*BUFFER_MODES))
    partitioner: str = "dirichlet"
    partitioner_args: str = ""
    alpha: float = field(default=0.5, metadata=_range(0.0, lo_open=True))
    classes_per_partition: int = field(default=2, metadata=_range(1))
    num_partitions: int = field(default=10, metadata=_range(1))
    samples_per_client: int = field(default=0, metadata=_range(0))
    server_samples: int = field(default=1000, metadata=_range(1))
    eval_samples: int = field(default=0, metadata=_range(0))
    initial_model: str = ""
    public_initial_model: bool = True
    # Public split no client holds (fedfish.partition.holdout_indices); simulations.pretrain trains on it.
    holdout_fraction: float = field(default=0.0, metadata=_range(0.0, 0.9))
    # Federation
    num_server_rounds: int = field(default=5, metadata=_range(1))
    # Early stop once the accuracy levels off (simulations.early_stop); 0 = run every round
    stop_patience: int = field(default=0, metadata=_range(0))
    stop_min_delta: float = field(default=0.002, metadata=_range(0.0))
    fraction_train: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    fraction_evaluate: float = field(default=0.0, metadata=_range(0.0, 1.0))
    min_replies: int = field(default=1, metadata=_range(1))
    round_timeout: float = field(default=300.0, metadata=_range(0.0, lo_open=True))
    # Reply validation and robust aggregation (strategies.replies, fedfish.aggregation)
    max_update_norm: float = field(default=0.0, metadata=_range(0.0))
    update_norm_factor: float = field(default=10.0, metadata=_range(0.0))
    aggregator: str = field(default="mean", metadata=_choice(*AGGREGATORS))
    trim_fraction: float = field(default=0.1, metadata=_range(0.0, 0.49))
    robust_calibration: bool = True
    # Local training
    local_epochs: int = field(default=1, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(1))
    lr: float = field(default=0.05, metadata=_range(0.0, lo_open=True))
    optimizer: str = field(default="sgd", metadata=_choice(*OPTIMIZERS))
    momentum: float = field(default=0.0, metadata=_range(0.0, 1.0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    # Bookkeeping
    seed: int = field(default=0, metadata=_range(0))
    run_name: str = "fedfish"
    results_dir: str = "results"
    resume: bool = False
    client_state_dir: str = ""
    # Fault injection for reliability tests and drills (0 / "" = off)
    fault_fail_fraction: float = field(default=0.0, metadata=_range(0.0, 1.0))
    fault_forget_state: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if not self.run_name or "/" in self.run_name or self.run_name.startswith("."):
            raise ConfigError(f"run-name: must be a plain folder name, got {self.run_name!r}")
        parse_forget_state(self.fault_forget_state)
        if self.downlink_dtype != "fp32" and (self.strategy == "fedavg" or not self.public_initial_model):
            raise ConfigError(f"downlink-dtype: {self.downlink_dtype!r} sends changes from the public version 0; it "
                              "needs a sparse strategy and public-initial-model=true (FedAvg sends the dense model)")
        if 0.0 < self.update_norm_factor <= 1.0:
            raise ConfigError(f"update-norm-factor: must be > 1 (or 0 = off), got {self.update_norm_factor}")
        try:
            self.data_config()
        except DataConfigError as err:
            raise ConfigError(str(err)) from None
        if self.partitioner not in partitioner_names():
            raise ConfigError(f"partitioner: unknown {self.partitioner!r}; known: {', '.join(partitioner_names())}")
        if not self.model or self.model.count(":") > 1:
            raise ConfigError(f"model: expected a registered name or 'package.module:callable', got {self.model!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from kebab-case keys (``context.run_config``); unknown keys are refused."""
        by_key = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(values) - set(by_key))
        if unknown:
            raise ConfigError(f"unknown run-config keys {unknown}; known keys: {sorted(by_key)}")
        kwargs = {by_key[k].name: _coerce(k, by_key[k], v) for k, v in values.items()}
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case keys and plain values (JSON- and TOML-ready)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def data_config(self) -> DataConfig:
        """The run's data settings (``fedfish.datasource`` loads and partitions with them)."""
        return DataConfig.from_run_config(self.to_mapping())

    def client_state_folder(self) -> str:
        """Absolute parent folder of the clients' on-disk state ("" = memory only); see ``client-state-dir``."""
        if self.client_state_dir == "off":
            return ""
        return str(Path(self.client_state_dir or Path(self.results_dir) / "client-state").resolve())

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

def _coerce(key: str, f: dataclasses.Field[Any], value: Any) -> Any:
    expected = type(f.default)
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif expected is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")


def _check_field(f: dataclasses.Field[Any], value: Any) -> None:
    key = f.name.replace("_", "-")
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {list(meta['choices'])}, got {value!r}")
    if "lo" in meta:
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key}: must be a number, got NaN")
        lo, hi = meta["lo"], meta["hi"]
        low_ok = lo is None or (value > lo if meta["lo_open"] else value >= lo)
        high_ok = hi is None or value <= hi
        if not (low_ok and high_ok):
            left = "(" if meta["lo_open"] else "["
            right = f"{hi}]" if hi is not None else "inf)"
            raise ConfigError(f"{key}: must be in {left}{lo}, {right}, got {value!r}")


def parse_forget_state(spec: str) -> dict[int, int]:
    """``"1@3,2@4"`` -> {1: 3, 2: 4}: partition 1 forgets its state before round 3, ..."""
    out: dict[int, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            partition, server_round = (int(x) for x in item.split("@"))
        except ValueError:
            raise ConfigError(
                f"fault-forget-state: expected 'partition@round[,partition@round]', got {spec!r}"
            ) from None
        out[partition] = server_round
    return out


KEY_HELP: dict[str, str] = {
    "strategy": "what to run: " + ", ".join(STRATEGIES),
    "mask-source": "where the mask comes from, overriding the strategy's: fisher, saliency, magnitude, random-fixed, "
    "random-per-round, or `package.module:attribute` of your own (docs/extending.md); \"\" = the strategy's",
    "update-rule": "what clients send, overriding the strategy's: values (the change under the mask), topk-ef, or "
    "`package.module:attribute`; \"\" = the strategy's",
    "density": "fraction of parameters in the mask (or kept by top-k), in (0, 1]",
    "mask-scope": "`global` top-k over all parameters, or `per-layer` top-k",
    "fisher-type": "`empirical` (true labels), `expected` (exact over classes), `sampled` (y ~ p(y|x))",
    "fisher-samples": "samples per client (or on the server) for the Fisher / saliency estimate",
    "fisher-label-samples": "label draws per sample for `sampled` Fisher",
    "fisher-source": "`client` (sampled clients send scores; counted) or `server` (proxy set; no traffic)",
    "fisher-upload": "client score upload: `fp32`, `fp16` dense, or `sparse` (local top-k' indices + values)",
    "fisher-upload-density": "k'/P kept by a `sparse` score upload",
    "warmup-rounds": "dense FedAvg rounds before the first mask",
    "mask-refresh": "rebuild the mask every this many masked rounds (0 = fixed)",
    "value-dtype": "dtype of uplink changes (trained minus received): fp32, fp16, bf16, or int8 (stochastic rounding, "
    "a scale per 256 values)",
    "downlink-dtype": "dtype of the values clients are sent: fp32 (clients hold the exact model), or fp16, bf16, "
    "int8 changes from the public version 0 (needs `public-initial-model`; a dense model stays fp32)",
    "error-feedback": "clients keep what the uplink dtype dropped and add it to their next change (memory the size "
    "of the mask)",
    "dataset": "fashion-mnist or cifar10 (built in, offline first), a registered name, `npz`, `parquet`/`csv`/"
    "`json`/`imagefolder` (local files through flwr-datasets' FederatedDataset), a Hugging Face hub id, or "
    "`package.module:callable` returning {split: (x, y)}",
    "data-root": "where built-in datasets are looked for first (else $FEDFISH_DATA, ./data, /usr/share/datasets/...); "
    "when given, it must hold them",
    "data-files": "local files: a path/glob (the train split), or a TOML inline table `{train = '...', test = '...'}`",
    "data-dir": "folder of an `imagefolder` dataset (train/ and test/ subfolders, one folder per class)",
    "feature-column": "input column(s), comma-separated; \"\" = the image column, else every column but the label",
    "label-column": "label column",
    "model": "a registered model (cnn: FedAvg CNN, 1.66M params; small-cnn; small-resnet: ResNet-8 with "
    "BatchNorm; resnet18) or `package.module:callable` taking num_classes and input_shape",
    "buffers": "BatchNorm statistics and other buffers: `aggregate` (averaged every round like FedAvg, sent both "
    "ways, counted) or `local` (each client keeps its own, FedBN)",
    "partitioner": "iid, dirichlet, pathological (k classes per client), shard, or any flwr-datasets partitioner "
    "class name (e.g. NaturalIdPartitioner)",
    "partitioner-args": "extra partitioner arguments as a TOML inline table, e.g. `{partition_by = 'writer_id'}`",
    "alpha": "Dirichlet concentration",
    "classes-per-partition": "classes per client for `pathological`",
    "num-partitions": "number of clients (one SuperNode each in simulation)",
    "samples-per-client": "cap on each client's shard (0 = all), for quick runs",
    "server-samples": "size of the server's proxy set for `fisher-source=server`",
    "eval-samples": "test examples for the server's centralized evaluation (0 = all 10k)",
    "initial-model": "path of a saved state_dict to start from (fine-tuning); \"\" = the seeded initial model",
    "public-initial-model": "clients rebuild the initial model themselves (the public checkpoint `initial-model`, or "
    "the seeded init), digest-checked, so no dense model is sent; a client that cannot gets it densely, counted",
    "holdout-fraction": "fraction of the training set held out as a public split no client holds "
    "(`python -m simulations.pretrain` trains the fine-tuning checkpoint on it), in [0, 0.9]",
    "num-server-rounds": "rounds (the cap, with `stop-patience`)",
    "stop-patience": "end the run once the mean accuracy of the last 5 rounds has not risen by `stop-min-delta` "
    "for this many rounds (0 = run every round)",
    "stop-min-delta": "smallest rise of the 5-round mean accuracy that counts as progress for `stop-patience`",
    "fraction-train": "fraction of connected nodes sampled per round, in (0, 1]",
    "fraction-evaluate": "fraction of nodes for client-side evaluation (0 = off; the server always evaluates)",
    "min-replies": "valid replies needed to update the model; fewer skips the round",
    "round-timeout": "seconds to wait for a round's replies (a log line every 30 s while waiting); clients that "
    "have not replied by then count as failed",
    "max-update-norm": "reject a client's change whose L2 norm exceeds this absolute bound (0 = off)",
    "update-norm-factor": "reject a client's change whose L2 norm exceeds this multiple of the round's median "
    "(with 3 replies or more; 0 = off): no tuning, and one client cannot move the median",
    "aggregator": "how accepted changes combine: `mean` (weighted by examples), `median` or `trimmed-mean` "
    "(coordinate-wise, unweighted, like Flower's FedMedian and FedTrimmedAvg)",
    "trim-fraction": "fraction of the largest and of the smallest values `trimmed-mean` (and robust calibration) "
    "drops per coordinate",
    "robust-calibration": "combine clients' mask scores so that no client can choose the mask (each scaled to sum 1, "
    "a trimmed mean); false = the examples-weighted mean",
    "local-epochs": "local epochs per round",
    "batch-size": "local batch size",
    "lr": "local learning rate",
    "optimizer": "sgd, adam, adamw (frozen entries stay bit-exact with any of them)",
    "momentum": "SGD momentum",
    "weight-decay": "weight decay (never moves frozen entries)",
    "seed": "seed of partitions, model init, masks, local shuffling",
    "run-name": "results go to <results-dir>/<run-name>/",
    "results-dir": "parent folder of run folders",
    "resume": "continue the run of the same name from its last complete round",
    "client-state-dir": "where clients keep their state (base, mask, top-k memory) across restarts and resumes, as "
    "`<dir>/<run-name>/partition-<id>.pt`; \"\" = `<results-dir>/client-state`, `off` = memory only; "
    "a SuperNode's `--node-config state-dir=...` wins",
    "fault-fail-fraction": "fault drill: fraction of client train/evaluate/calibration messages that fail on purpose",
    "fault-forget-state": "fault drill: `partition@round,...` nodes that drop their state (a restart)",
}


def markdown_table() -> str:
    """The README's table of run-config keys, defaults and meanings."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default in RunConfig().to_mapping().items():
        shown = f'"{default}"' if isinstance(default, str) else str(default).lower() if isinstance(default, bool) else default
        lines.append(f"| `{key}` | `{shown}` | {KEY_HELP[key]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
