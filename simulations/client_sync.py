"""How a ClientApp brings its holding to the model version a message names.

Every FedFish message says which model version it brings the node to (``model-version``),
which version it assumes the node holds (``base-version``), and how (``sync``): ``full``
(a dense model), ``current`` (nothing to send), ``delta-mask`` (the values under the round's
mask) or ``delta`` (values at explicit positions). A node that holds nothing starts from
version 0, which it rebuilds itself: the public checkpoint (``initial-model``) or the
seeded initial model, either checked against the server's ``public-base-digest``. A node
that cannot (another torch build, a missing file) or lacks the assumed base answers
``need-base`` rather than guess, and is sent the dense model. Values may come as changes
from version 0 (``values-from: version0``, a downlink dtype other than fp32): the node then
holds the model within a rounding step, not exactly.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache

import torch

from fedfish import codec
from fedfish.holding import Holding
from fedfish.layout import ParamLayout, flatten_buffers, flatten_params, params_digest
from fedfish.masks import Mask, random_mask
from fedfish.models import build_model, head_names, seeded_model


class NeedBase(Exception):
    """The message assumes a base model or mask this node does not hold."""


@dataclass(frozen=True)
class Version0:
    """The run's version-0 model, rebuilt on this node: flat parameters and buffers (fp32)."""

    params: torch.Tensor
    buffers: torch.Tensor


def version0(cfg: dict, node_config: dict) -> Version0 | None:
    """The run's version-0 model, or None if this node cannot rebuild it.

    The public checkpoint is ``--node-config initial-model=...`` if given, else the run's
    ``initial-model``; without one, the seeded initial model. Its parameters must match the
    server's ``public-base-digest``; the result is cached per process and must not be modified.
    """
    digest = str(cfg.get("public-base-digest", ""))
    if not digest:
        return None
    path = str(node_config.get("initial-model", cfg.get("initial-model", "")))
    return _version0(str(cfg["model"]), int(cfg["num-classes"]), _input_shape(cfg), int(cfg["seed"]), path, digest)


@lru_cache(maxsize=4)
def _version0(model_name: str, num_classes: int, input_shape: tuple[int, ...], seed: int, path: str,
              digest: str) -> Version0 | None:
    if path:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = build_model(model_name, num_classes, input_shape)
            model.load_state_dict(state)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            return None
    else:
        model = seeded_model(model_name, seed, num_classes, input_shape)
    flat = flatten_params(model)
    return Version0(flat, flatten_buffers(model)) if params_digest(flat) == digest else None


def model_buffers(cfg: dict, payloads: dict[str, bytes], holding: Holding, base0: Version0 | None) -> torch.Tensor:
    """The buffers (BatchNorm statistics) to train and evaluate with: the global ones the
    message carries, else the node's own (``buffers=local``), else version 0's, else the
    untrained model's. Never another partition's left in the process's shared model."""
    if "buffers" in payloads:
        return codec.decode_dense(payloads["buffers"], _default_buffers(cfg).numel())
    if holding.buffers is not None:
        return holding.buffers
    return base0.buffers if base0 is not None else _default_buffers(cfg)


def sync_model(
    cfg: dict, payloads: dict[str, bytes], holding: Holding, base0: torch.Tensor | None, mask: Mask | None
) -> torch.Tensor:
    """The global model at ``model-version`` as a fresh vector; ``holding`` then holds it.

    ``mask`` is the round's mask (:func:`round_mask`, called first): ``delta-mask`` values
    sit at its positions.

    Raises
    ------
    NeedBase
        The node lacks the base (or mask) the message assumes.
    """
    sync, target = str(cfg["sync"]), int(cfg["model-version"])
    digest = str(cfg.get("public-base-digest", ""))
    if sync == "full":
        model = codec.decode_dense(payloads["model-dense"], model_size(cfg))
        holding.set_model(model, target, base0, digest)
        return model
    if holding.holds_model and holding.base_digest in ("", digest) and (base0 is not None or holding.is_dense):
        held, model = holding.model_version, holding.model_vector(base0)
    elif base0 is not None:
        held, model = 0, base0.clone()  # nothing held: version 0, rebuilt locally
    else:
        raise NeedBase
    # Holding a newer base than assumed is fine: the delta covers a superset of changes.
    if not int(cfg["base-version"]) <= held <= target:
        raise NeedBase
    if sync == "current":
        if held != target:
            raise NeedBase
    elif sync == "delta-mask":
        if mask is None:
            raise NeedBase
        model[mask.bits] = _received_values(cfg, payloads, mask, base0)
    elif sync == "delta":
        positions = codec.decode_mask(payloads["model-positions"])
        model[positions.bits] = _received_values(cfg, payloads, positions, base0)
    else:
        raise ValueError(f"unknown sync kind {sync!r}")
    holding.set_model(model, target, base0, digest)
    return model


def _received_values(cfg: dict, payloads: dict[str, bytes], positions: Mask, base0: torch.Tensor | None
                     ) -> torch.Tensor:
    """The global values at ``positions``: as sent, or version 0's plus the changes sent
    (``values-from: version0``, a downlink dtype other than fp32)."""
    values = codec.decode_values(payloads["model-values"], positions)
    if cfg.get("values-from", "") == "":
        return values
    if cfg["values-from"] != "version0":
        raise ValueError(f"unknown values-from {cfg['values-from']!r}")
    if base0 is None:
        raise NeedBase
    return base0[positions.bits] + values


def round_mask(cfg: dict, payloads: dict[str, bytes], holding: Holding, num_params: int) -> Mask | None:
    """The mask this round trains under (None for dense and top-k rounds); ``holding`` keeps it."""
    if "mask-version" not in cfg:
        return None
    version = int(cfg["mask-version"])
    if "mask-seed" in cfg:
        holding.set_mask(b"", version)
        return seeded_mask(cfg, num_params, version)
    if "mask" in payloads:
        mask = _checked(codec.decode_mask(payloads["mask"]), version, num_params)
        holding.set_mask(payloads["mask"], version, mask)
        return mask
    if holding.mask_version == version and holding.mask:
        return _checked(holding.held_mask(), version, num_params)  # type: ignore[arg-type]
    raise NeedBase


def seeded_mask(cfg: dict, num_params: int, version: int) -> Mask:
    """A seeded random mask (the server sends only its seed), head included."""
    return _seeded_mask(str(cfg["model"]), int(cfg["num-classes"]), _input_shape(cfg), num_params,
                        float(cfg["density"]), int(cfg["mask-seed"]), version)


@lru_cache(maxsize=16)
def _seeded_mask(model_name: str, num_classes: int, input_shape: tuple[int, ...], num_params: int, density: float,
                 seed: int, version: int) -> Mask:
    model = build_model(model_name, num_classes, input_shape)
    head = ParamLayout.of(model).indicator(head_names(model))
    return random_mask(num_params, density, seed=seed, always_include=head, version=version)


def _checked(mask: Mask, version: int, num_params: int) -> Mask:
    if mask.version != version or mask.num_params != num_params:
        raise NeedBase
    return mask


def model_size(cfg: dict) -> int:
    """P of the run's model."""
    return ParamLayout.of(model_for(cfg)).num_params


def model_for(cfg: dict) -> torch.nn.Module:
    """This process's model of the run's architecture (built once; callers load weights and
    buffers into it before every use)."""
    return _model(str(cfg["model"]), int(cfg["num-classes"]), _input_shape(cfg))


@lru_cache(maxsize=4)
def _model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    return build_model(name, num_classes, input_shape)


def _default_buffers(cfg: dict) -> torch.Tensor:
    return _untrained_buffers(str(cfg["model"]), int(cfg["num-classes"]), _input_shape(cfg))


@lru_cache(maxsize=4)
def _untrained_buffers(name: str, num_classes: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    return flatten_buffers(build_model(name, num_classes, input_shape))


def _input_shape(cfg: dict) -> tuple[int, ...]:
    return tuple(int(d) for d in cfg["input-shape"])
