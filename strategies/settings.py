"""Which settings the sparse strategy accepts, checked when it is built.

``simulations.config`` checks a run's config before anything starts; these checks hold
for users who build :class:`strategies.fedfish.FedFish` themselves, in a notebook or their
own ServerApp. Each wrong setting is a ValueError naming it and what it may be.
"""

from __future__ import annotations

import torch

from fedfish import codec
from fedfish.aggregation import AGGREGATORS

# The run config (simulations.config) offers the same choices: these are their one definition.
FISHER_SOURCES = ("client", "server")
MASK_SCOPES = ("global", "per-layer")
BUFFER_MODES = ("aggregate", "local")


def check_settings(  # noqa: PLR0913 - one keyword per FedFish setting it checks
    *,
    num_params: int,
    head: torch.Tensor,
    density: float,
    mask_scope: str,
    value_dtype: str,
    downlink_dtype: str,
    public_base: bool,
    fisher_source: str,
    buffers: str,
    aggregator: str,
    fraction_train: float,
    fraction_evaluate: float,
    warmup_rounds: int,
    mask_refresh: int,
    min_replies: int,
    max_update_norm: float | None,
    update_norm_factor: float | None,
) -> None:
    """Raise ValueError naming the first setting FedFish cannot run with."""
    _check_choice("mask_scope", mask_scope, MASK_SCOPES)
    _check_choice("value_dtype", value_dtype, codec.VALUE_DTYPES)
    _check_choice("downlink_dtype", downlink_dtype, codec.VALUE_DTYPES)
    if downlink_dtype != "fp32" and not public_base:
        raise ValueError(f"FedFish: a {downlink_dtype} downlink sends changes from version 0, which needs "
                         "public_base (every node rebuilds version 0)")
    _check_choice("fisher_source", fisher_source, FISHER_SOURCES)
    _check_choice("buffers", buffers, BUFFER_MODES)
    _check_choice("aggregator", aggregator, AGGREGATORS)
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
    if update_norm_factor is not None and not update_norm_factor > 1:
        raise ValueError(f"FedFish: update_norm_factor must be > 1 or None, got {update_norm_factor}")
    if head.dtype != torch.bool or head.shape != (num_params,):
        raise ValueError(f"FedFish: head must be a bool vector of {num_params} entries")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"FedFish: {name} must be one of {list(allowed)}, got {value!r}")
