"""Sparse fixed masks over the flat parameter vector, and the scores that pick them.

A :class:`Mask` marks which entries of the flat vector (``fedfish.layout`` order) a
client trains and sends. Selection is exact and deterministic: ``top_k_mask`` keeps
exactly ``k_for_density(P, density)`` entries, always-included entries (the classifier
head) count inside that budget, and ties are broken by the lower flat index, so every
client and the server derive the same mask from the same scores.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedfish.layout import ParamLayout


@dataclass(frozen=True, eq=False)
class Mask:
    """Boolean selection over the flat parameter vector.

    Parameters
    ----------
    bits : torch.Tensor
        bool, shape ``(P,)``; True marks a trained/communicated entry. Stored on the CPU
        (moved there if needed, not copied otherwise: do not mutate it afterwards).
    version : int, default 0
        Non-negative counter the server bumps whenever it recomputes the mask.

    Raises
    ------
    ValueError
        If ``bits`` is not a non-empty 1-D bool tensor or ``version`` is negative.
    """

    bits: torch.Tensor
    version: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.bits, torch.Tensor) or self.bits.dtype != torch.bool:
            raise ValueError(f"Mask: bits must be a bool torch.Tensor, got {_describe(self.bits)}")
        if self.bits.dim() != 1 or self.bits.numel() == 0:
            raise ValueError(
                "Mask: bits must be 1-D with at least one entry, "
                f"got shape {tuple(self.bits.shape)}"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise ValueError(f"Mask: version must be an int >= 0, got {self.version!r}")
        # Frozen dataclass: __post_init__ is the one place allowed to normalise fields.
        object.__setattr__(self, "bits", self.bits.detach().to("cpu").contiguous())

    @property
    def num_params(self) -> int:
        """Length ``P`` of the flat vector the mask covers."""
        return self.bits.numel()

    @property
    def k(self) -> int:
        """Number of selected entries."""
        return int(self.bits.sum())

    @property
    def density(self) -> float:
        """Fraction of selected entries, ``k / P`` in ``[0, 1]``."""
        return self.k / self.num_params

    def indices(self) -> torch.Tensor:
        """Flat indices of the selected entries, int64 shape ``(k,)``, ascending."""
        return torch.nonzero(self.bits, as_tuple=True)[0]

    @property
    def digest(self) -> str:
        """First 16 hex chars of sha256(packed bits || num_params as 8-byte little endian).

        ``num_params`` is hashed too because packing pads to whole bytes: masks of length
        9 and 16 with the same leading bits would otherwise collide.
        """
        h = hashlib.sha256(np.packbits(self.bits.numpy()).tobytes())
        h.update(self.num_params.to_bytes(8, "little"))
        return h.hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.version == other.version and torch.equal(self.bits, other.bits)

    def __hash__(self) -> int:
        return hash((self.digest, self.version))


def k_for_density(num_params: int, density: float) -> int:
    """Number of entries a mask of ``density`` keeps: ``max(1, round(density * num_params))``.

    Parameters
    ----------
    num_params : int
        Length of the vector, >= 1.
    density : float
        Fraction to keep, in ``(0, 1]``.

    Raises
    ------
    ValueError
        If ``density`` is outside ``(0, 1]`` (NaN included) or ``num_params < 1``.
    """
    if not isinstance(num_params, int) or isinstance(num_params, bool) or num_params < 1:
        raise ValueError(f"num_params must be an int >= 1, got {num_params!r}")
    if not (isinstance(density, (int, float)) and 0.0 < density <= 1.0):
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return max(1, round(density * num_params))


def top_k_mask(
    scores: torch.Tensor,
    density: float,
    *,
    always_include: torch.Tensor | None = None,
    version: int = 0,
) -> Mask:
    """Mask of the ``k = k_for_density(P, density)`` highest-scoring entries.

    Parameters
    ----------
    scores : torch.Tensor
        float, shape ``(P,)``; higher is more important. NaN is rejected.
    density : float
        Fraction of entries to keep, in ``(0, 1]``.
    always_include : torch.Tensor | None, default None
        bool ``(P,)``; entries that are always selected (the classifier head). They count
        inside the budget ``k``; the rest of the budget goes to the largest other scores.
    version : int, default 0
        Version stamped on the returned mask.

    Returns
    -------
    Mask
        Exactly ``k`` entries; among equal scores the lower flat index wins.

    Raises
    ------
    ValueError
        If ``scores`` is not 1-D or contains NaN, ``always_include`` has a different size
        or is not bool, ``density`` is outside ``(0, 1]``, or the always-included entries
        alone exceed ``k``.
    """
    scores = _check_scores(scores, None, "top_k_mask")
    num_params = scores.numel()
    k = k_for_density(num_params, density)
    forced = _check_always_include(always_include, num_params, "top_k_mask")
    return Mask(_select(scores, k, forced, "top_k_mask"), version)


def per_layer_top_k_mask(
    scores: torch.Tensor,
    layout: ParamLayout,
    density: float,
    *,
    always_include: torch.Tensor | None = None,
    version: int = 0,
) -> Mask:
    """Top-k chosen inside each parameter tensor separately.

    Each tensor keeps ``k_for_density(numel, density)`` of its own entries (so every layer
    trains a little), with the same tie-breaking as :func:`top_k_mask`. Always-included
    entries count inside their tensor's budget; where they exceed it (a fully included
    head tensor) the tensor keeps exactly its always-included entries.

    Parameters
    ----------
    scores : torch.Tensor
        float, shape ``(layout.num_params,)``.
    layout : ParamLayout
        Tensor boundaries of the flat vector.
    density : float
        Per-tensor fraction to keep, in ``(0, 1]``.
    always_include : torch.Tensor | None, default None
        bool ``(layout.num_params,)``.
    version : int, default 0
        Version stamped on the returned mask.

    Raises
    ------
    ValueError
        On a size mismatch with ``layout``, NaN scores or ``density`` outside ``(0, 1]``.
    """
    scores = _check_scores(scores, layout.num_params, "per_layer_top_k_mask")
    forced = _check_always_include(always_include, layout.num_params, "per_layer_top_k_mask")
    bits = torch.zeros(layout.num_params, dtype=torch.bool)
    for start, stop in zip(layout.offsets[:-1], layout.offsets[1:], strict=True):
        k = k_for_density(stop - start, density)
        part_forced = None if forced is None else forced[start:stop]
        if part_forced is not None:
            k = max(k, int(part_forced.sum()))
        bits[start:stop] = _select(scores[start:stop], k, part_forced, "per_layer_top_k_mask")
    return Mask(bits, version)


def random_mask(
    num_params: int,
    density: float,
    *,
    seed: int,
    always_include: torch.Tensor | None = None,
    version: int = 0,
) -> Mask:
    """Uniformly random mask with the same budget rules as :func:`top_k_mask`.

    Parameters
    ----------
    num_params : int
        Length ``P`` of the flat vector.
    density : float
        Fraction to keep, in ``(0, 1]``.
    seed : int
        Seed of a private ``torch.Generator``; the same seed gives the same mask.
    always_include : torch.Tensor | None, default None
        bool ``(P,)``, always selected and counted inside the budget.
    version : int, default 0
        Version stamped on the returned mask.
    """
    k = k_for_density(num_params, density)
    forced = _check_always_include(always_include, num_params, "random_mask")
    generator = torch.Generator().manual_seed(seed)
    # Distinct float32 draws are almost surely tie-free; the index tie-break keeps the
    # result deterministic even if two collide.
    scores = torch.rand(num_params, generator=generator)
    return Mask(_select(scores, k, forced, "random_mask"), version)


def magnitude_scores(params: torch.Tensor) -> torch.Tensor:
    """``|w|`` as fp32 CPU ``(P,)`` from a flat parameter vector ``params`` ``(P,)``."""
    _check_flat(params, "params", "magnitude_scores")
    return params.detach().float().abs().cpu()


def saliency_scores(grads: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """SNIP-style saliency ``|g * w|`` as fp32 CPU ``(P,)`` (the SSFL baseline score).

    Parameters
    ----------
    grads, params : torch.Tensor
        Flat gradient and parameter vectors, both shape ``(P,)``.

    Raises
    ------
    ValueError
        If either is not 1-D or their sizes differ.
    """
    _check_flat(grads, "grads", "saliency_scores")
    _check_flat(params, "params", "saliency_scores")
    if grads.numel() != params.numel():
        raise ValueError(
            f"saliency_scores: grads and params must have the same size, "
            f"got {grads.numel()} and {params.numel()}"
        )
    return (grads.detach().float().cpu() * params.detach().float().cpu()).abs()


def model_saliency(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`saliency_scores` of ``model`` with the gradient of its mean cross-entropy on
    ``(inputs, labels)``; fp32 CPU ``(P,)`` in layout order. ``.grad`` fields are not touched."""
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, params)
    return saliency_scores(
        torch.cat([g.reshape(-1) for g in grads]), torch.cat([p.detach().reshape(-1) for p in params])
    )


def _select(scores: torch.Tensor, k: int, forced: torch.Tensor | None, who: str) -> torch.Tensor:
    """bool ``forced`` plus the best ``k - |forced|`` other entries (lower index on ties)."""
    bits = torch.zeros(scores.numel(), dtype=torch.bool)
    if forced is None:
        candidates = torch.arange(scores.numel())
    else:
        num_forced = int(forced.sum())
        if num_forced > k:
            raise ValueError(
                f"{who}: always_include selects {num_forced} entries, more than the budget "
                f"k={k}; raise density"
            )
        bits |= forced
        k -= num_forced
        candidates = torch.nonzero(~forced, as_tuple=True)[0]
    # A stable descending sort keeps equal scores in ascending index order (candidates
    # are ascending); torch.topk makes no such promise.
    order = torch.sort(scores[candidates], descending=True, stable=True).indices
    bits[candidates[order[:k]]] = True
    return bits


def _check_scores(scores: torch.Tensor, expected: int | None, who: str) -> torch.Tensor:
    _check_flat(scores, "scores", who)
    if expected is not None and scores.numel() != expected:
        raise ValueError(f"{who}: scores must have {expected} entries, got {scores.numel()}")
    scores = scores.detach().float().cpu()
    if torch.isnan(scores).any():
        raise ValueError(f"{who}: scores contain NaN")
    return scores


def _check_always_include(
    always_include: torch.Tensor | None, num_params: int, who: str
) -> torch.Tensor | None:
    if always_include is None:
        return None
    if not isinstance(always_include, torch.Tensor) or always_include.dtype != torch.bool:
        raise ValueError(
            f"{who}: always_include must be a bool tensor, got {_describe(always_include)}"
        )
    if always_include.dim() != 1 or always_include.numel() != num_params:
        raise ValueError(
            f"{who}: always_include must have shape ({num_params},), "
            f"got {tuple(always_include.shape)}"
        )
    return always_include.cpu()


def _check_flat(tensor: torch.Tensor, name: str, who: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(f"{who}: {name} must be a non-empty 1-D tensor, got {_describe(tensor)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{who}: {name} must be floating point, got dtype {tensor.dtype}")


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"{obj.dtype} tensor of shape {tuple(obj.shape)}"
    return type(obj).__name__


__all__ = [
    "Mask",
    "k_for_density",
    "magnitude_scores",
    "per_layer_top_k_mask",
    "random_mask",
    "saliency_scores",
    "top_k_mask",
]
