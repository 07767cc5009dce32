"""Update rules: what a client sends after local training, and what the server makes of it.

Every rule sends a *change* (trained model minus the model the client started from), never
trained values: a change that is 1e-4 of a weight survives fp16, bf16 or int8 with the
dtype's relative error of the change, where the weight itself would swallow it. The server
adds the weighted mean change to its fp32 model (:mod:`fedfish.aggregation`), so the global
model stays exact whatever the uplink dtype.

A rule is registered by name in :data:`UPDATE_RULES`; the client encodes with
:meth:`UpdateRule.encode`, the server decodes with :meth:`UpdateRule.decode` into a
:class:`DecodedUpdate` (positions + values). Built-ins:

=========  ===========================================================================
``values``  the change at the round's mask positions (optionally with error feedback)
``dense``   the whole change (dense warm-up rounds)
``topk-ef`` the k largest entries of change + memory; the rest is remembered (Stich et al.)
=========  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fedfish import codec
from fedfish.holding import Holding
from fedfish.masks import Mask, k_for_density
from fedfish.plugins import resolve


@dataclass(frozen=True)
class DecodedUpdate:
    """A client's change as the server applies it.

    Attributes
    ----------
    positions : torch.Tensor | None
        bool ``(P,)``: where ``values`` apply; None for a dense change.
    values : torch.Tensor
        fp32 change at ``positions`` (ascending index order), or ``(P,)`` when dense.
    """

    positions: torch.Tensor | None
    values: torch.Tensor

    def dense(self, num_params: int) -> torch.Tensor:
        """The change as a dense fp32 ``(P,)`` vector (zeros outside ``positions``)."""
        if self.positions is None:
            return self.values
        return torch.zeros(num_params).index_put_((self.positions.nonzero().flatten(),), self.values)


@dataclass(frozen=True)
class EncodeSettings:
    """What the server asked of this round's uplink.

    Attributes
    ----------
    dtype : str
        Wire dtype of the change (``fedfish.codec.VALUE_DTYPES``).
    density : float
        Fraction kept by top-k.
    error_feedback : bool
        Keep what quantisation or sparsification dropped and add it to the next change.
    generator : torch.Generator | None
        Rounding noise for int8 (seeded per client and round for reproducible runs).
    """

    dtype: str = "fp32"
    density: float = 1.0
    error_feedback: bool = False
    generator: torch.Generator | None = None


class UpdateRule(Protocol):
    """How a client's change travels: encoded on the client, decoded on the server."""

    name: str
    trains_under_mask: bool

    def encode(self, change: torch.Tensor, mask: Mask | None, holding: Holding, settings: EncodeSettings) -> bytes:
        """Payload of ``change`` (fp32 ``(P,)``); may update ``holding.memory``."""

    def decode(self, payload: bytes, mask: Mask | None, num_params: int) -> DecodedUpdate:
        """The change a payload carries (raises ``fedfish.codec.CodecError`` if it is invalid)."""


class MaskedDelta:
    """The change at the round's mask positions, in mask order."""

    name = "values"
    trains_under_mask = True

    def encode(self, change: torch.Tensor, mask: Mask | None, holding: Holding, settings: EncodeSettings) -> bytes:
        """``change[mask]`` (+ the memory of earlier rounds under the same mask, with error feedback)."""
        mask = _need_mask(mask, self.name)
        values = change[mask.bits]
        if not settings.error_feedback:
            return codec.encode_values(values, mask, settings.dtype, generator=settings.generator)
        if holding.memory is not None and holding.memory_mask_version == mask.version and holding.memory.numel() == mask.k:
            values = values + holding.memory
        payload = codec.encode_values(values, mask, settings.dtype, generator=settings.generator)
        # What the server decodes (after the wire dtype) counts as sent; the rest waits.
        holding.memory = values - codec.decode_values(payload, mask)
        holding.memory_mask_version = mask.version
        return payload

    def decode(self, payload: bytes, mask: Mask | None, num_params: int) -> DecodedUpdate:
        """Values at the mask's positions."""
        mask = _need_mask(mask, self.name)
        return DecodedUpdate(mask.bits, codec.decode_values(payload, mask))


class DenseDelta:
    """The whole change (warm-up rounds train and send every parameter)."""

    name = "dense"
    trains_under_mask = False

    def encode(self, change: torch.Tensor, mask: Mask | None, holding: Holding, settings: EncodeSettings) -> bytes:
        """``change`` as a dense payload."""
        return codec.encode_dense(change, settings.dtype, generator=settings.generator)

    def decode(self, payload: bytes, mask: Mask | None, num_params: int) -> DecodedUpdate:
        """A dense change."""
        return DecodedUpdate(None, codec.decode_dense(payload, num_params))


class TopKErrorFeedback:
    """The k largest entries of change + memory; what was not sent stays in the memory."""

    name = "topk-ef"
    trains_under_mask = False

    def encode(self, change: torch.Tensor, mask: Mask | None, holding: Holding, settings: EncodeSettings) -> bytes:
        """Sparse indices + values; ``holding.memory`` keeps the remainder."""
        memory = holding.memory if holding.memory is not None and holding.memory.numel() == change.numel() else None
        corrected = change + memory if memory is not None else change.clone()
        k = k_for_density(corrected.numel(), settings.density)
        indices = torch.topk(corrected.abs(), k, sorted=False).indices.sort().values
        payload = codec.encode_sparse(indices, corrected[indices], corrected.numel(), settings.dtype,
                                      generator=settings.generator)
        _, sent = codec.decode_sparse(payload, corrected.numel())
        corrected[indices] -= sent
        holding.memory, holding.memory_mask_version = corrected, -1
        return payload

    def decode(self, payload: bytes, mask: Mask | None, num_params: int) -> DecodedUpdate:
        """The sent entries."""
        indices, values = codec.decode_sparse(payload, num_params)
        positions = torch.zeros(num_params, dtype=torch.bool)
        positions[indices] = True
        return DecodedUpdate(positions, values)


UPDATE_RULES: dict[str, UpdateRule] = {rule.name: rule for rule in (MaskedDelta(), DenseDelta(), TopKErrorFeedback())}
"""Update rules by name; register a new one with :func:`register_update_rule`."""


def register_update_rule(rule: UpdateRule) -> UpdateRule:
    """Add ``rule`` to :data:`UPDATE_RULES` under ``rule.name`` (ValueError if taken)."""
    if rule.name in UPDATE_RULES:
        raise ValueError(f"register_update_rule: {rule.name!r} is already registered")
    UPDATE_RULES[rule.name] = rule
    return rule


def update_rule(name: str) -> UpdateRule:
    """The rule registered as ``name``, or the one ``"package.module:attribute"`` names (a class
    is instantiated); ValueError naming what is wrong otherwise."""
    found = resolve(name, UPDATE_RULES, "update rule")
    rule = found() if isinstance(found, type) else found
    missing = [a for a in ("name", "trains_under_mask", "encode", "decode") if not hasattr(rule, a)]
    if missing:
        raise ValueError(f"update rule {name!r} is not an UpdateRule (missing {missing})")
    return rule  # type: ignore[return-value]


def _need_mask(mask: Mask | None, who: str) -> Mask:
    if mask is None:
        raise ValueError(f"update rule {who!r} needs the round's mask")
    return mask
