"""Where a mask comes from: a small protocol and a registry of the built-in sources.

A :class:`MaskSource` scores every parameter; the strategy keeps the top-k (the classifier
head always in, :func:`fedfish.masks.top_k_mask`). Sources differ in what the scores need:

- ``kind="data"``: the model and labelled examples. Computed by the sampled clients on
  their shards (a calibration exchange, bytes counted) or by the server on a public
  proxy set (``fisher-source=server``, no traffic). Fisher (FISH) and saliency (SSFL).
- ``kind="model"``: the global parameters alone, on the server (magnitude).
- ``kind="seed"``: no scores; a seeded random mask that clients regenerate from the seed,
  fixed (``random-fixed``) or new every round (``random-per-round``, Mohtashami et al.).

Adding a method is one class with ``name``, ``kind`` and ``scores`` plus
``register_mask_source(MySource())``; ``docs/extending.md`` shows one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from fedfish.fisher import diagonal_fisher
from fedfish.masks import magnitude_scores, model_saliency
from fedfish.plugins import resolve

SourceKind = Literal["data", "model", "seed"]


@dataclass(frozen=True)
class ScoreSettings:
    """Knobs of data-based scores.

    Attributes
    ----------
    fisher_type : str
        ``empirical``, ``expected`` or ``sampled`` (``fedfish.fisher``).
    label_samples : int
        Label draws per example for ``sampled``.
    generator : torch.Generator | None
        Randomness of sampled labels.
    """

    fisher_type: str = "empirical"
    label_samples: int = 1
    generator: torch.Generator | None = None


class MaskSource(Protocol):
    """Scores whose top-k is the mask."""

    name: str
    kind: SourceKind
    per_round: bool

    def scores(
        self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None, settings: ScoreSettings
    ) -> torch.Tensor:
        """Non-negative fp32 ``(P,)`` scores in layout order (higher = keep); ``data`` is
        ``(inputs, labels)`` for ``kind="data"``, None otherwise."""


class FisherSource:
    """Diagonal Fisher information (Sung et al.'s FISH mask)."""

    name, kind, per_round = "fisher", "data", False

    def scores(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None,
               settings: ScoreSettings) -> torch.Tensor:
        """Mean squared per-example gradient of log p(y|x)."""
        inputs, labels = _need_data(data, self.name)
        return diagonal_fisher(model, inputs, labels, settings.fisher_type,
                               num_label_samples=settings.label_samples, generator=settings.generator)


class SaliencySource:
    """|gradient x weight| of the mean loss (SNIP, as in Flower's SSFL baseline)."""

    name, kind, per_round = "saliency", "data", False

    def scores(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None,
               settings: ScoreSettings) -> torch.Tensor:
        """SNIP saliency on ``data``."""
        inputs, labels = _need_data(data, self.name)
        return model_saliency(model, inputs, labels)


class MagnitudeSource:
    """|w| of the global model."""

    name, kind, per_round = "magnitude", "model", False

    def scores(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None,
               settings: ScoreSettings) -> torch.Tensor:
        """Absolute parameter values."""
        return magnitude_scores(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))


@dataclass(frozen=True)
class RandomSource:
    """A seeded random mask: fixed, or drawn anew every round."""

    name: str
    per_round: bool
    kind: SourceKind = "seed"

    def scores(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None,
               settings: ScoreSettings) -> torch.Tensor:
        """Seeded masks need no scores (``fedfish.masks.random_mask``)."""
        raise TypeError(f"mask source {self.name!r} is seeded: it has no scores")


MASK_SOURCES: dict[str, MaskSource] = {
    source.name: source
    for source in (FisherSource(), SaliencySource(), MagnitudeSource(),
                   RandomSource("random-fixed", per_round=False), RandomSource("random-per-round", per_round=True))
}
"""Mask sources by name."""


def register_mask_source(source: MaskSource) -> MaskSource:
    """Add ``source`` under ``source.name`` (ValueError if the name is taken or the kind unknown)."""
    if source.name in MASK_SOURCES:
        raise ValueError(f"register_mask_source: {source.name!r} is already registered")
    if source.kind not in ("data", "model", "seed"):
        raise ValueError(f"register_mask_source: kind must be 'data', 'model' or 'seed', got {source.kind!r}")
    MASK_SOURCES[source.name] = source
    return source


def mask_source(name: str) -> MaskSource:
    """The source registered as ``name``, or the one ``"package.module:attribute"`` names (a
    class is instantiated); ValueError naming what is wrong otherwise."""
    found = resolve(name, MASK_SOURCES, "mask source")
    source = found() if isinstance(found, type) else found
    missing = [a for a in ("name", "kind", "per_round", "scores") if not hasattr(source, a)]
    if missing or source.kind not in ("data", "model", "seed"):  # type: ignore[union-attr]
        raise ValueError(f"mask source {name!r} is not a MaskSource (missing {missing} or bad kind)")
    return source  # type: ignore[return-value]


def _need_data(data: tuple[torch.Tensor, torch.Tensor] | None, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    if data is None:
        raise ValueError(f"mask source {who!r} needs (inputs, labels)")
    return data
