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
from typing import Any

STRATEGIES = ("fedavg", "fedfish", "random-fixed", "random-per-round", "magnitude", "saliency", "topk-ef")
FISHER_TYPES = ("empirical", "expected", "sampled")
FISHER_SOURCES = ("client", "server")
FISHER_UPLOADS = ("fp32", "fp16", "sparse")
MASK_SCOPES = ("global", "per-layer")
VALUE_DTYPES = ("fp32", "fp16", "bf16")
DATASETS = ("fashion-mnist", "cifar10")
MODELS = ("cnn", "resnet18")
PARTITIONERS = ("iid", "dirichlet", "pathological", "shard")
OPTIMIZERS = ("sgd", "adam", "adamw")
MODEL_FOR_DATASET = {"fashion-mnist": "cnn", "cifar10": "resnet18"}


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
    # Data and model
    dataset: str = field(default="fashion-mnist", metadata=_choice(*DATASETS))
    data_root: str = ""
    model: str = field(default="cnn", metadata=_choice(*MODELS))
    partitioner: str = field(default="dirichlet", metadata=_choice(*PARTITIONERS))
    alpha: float = field(default=0.5, metadata=_range(0.0, lo_open=True))
    classes_per_partition: int = field(default=2, metadata=_range(1))
    num_partitions: int = field(default=10, metadata=_range(1))
    samples_per_client: int = field(default=0, metadata=_range(0))
    server_samples: int = field(default=1000, metadata=_range(1))
    eval_samples: int = field(default=0, metadata=_range(0))
    initial_model: str = ""
    # Federation
    num_server_rounds: int = field(default=5, metadata=_range(1))
    fraction_train: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    fraction_evaluate: float = field(default=0.0, metadata=_range(0.0, 1.0))
    min_replies: int = field(default=1, metadata=_range(1))
    round_timeout: float = field(default=3600.0, metadata=_range(0.0, lo_open=True))
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
    # Fault injection for reliability tests and drills (0 / "" = off)
    fault_fail_fraction: float = field(default=0.0, metadata=_range(0.0, 1.0))
    fault_forget_state: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if not self.run_name or "/" in self.run_name or self.run_name.startswith("."):
            raise ConfigError(f"run-name: must be a plain folder name, got {self.run_name!r}")
        _parse_forget_state(self.fault_forget_state)
        if MODEL_FOR_DATASET[self.dataset] != self.model:
            raise ConfigError(
                f"model: {self.model!r} does not fit dataset {self.dataset!r}; use {MODEL_FOR_DATASET[self.dataset]!r}"
            )

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

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def forget_state(self) -> dict[int, int]:
        """``fault-forget-state`` parsed: partition id -> round at which it drops its state."""
        return _parse_forget_state(self.fault_forget_state)


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


def _parse_forget_state(spec: str) -> dict[int, int]:
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
