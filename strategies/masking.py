"""The round's mask on the server: when to (re)build it, and from what.

:class:`MaskState` holds the current mask (versioned; a seeded random mask also keeps its
seed, so nodes regenerate it from 8 bytes), decides when a new one is due (first masked
round, every ``refresh`` masked rounds, or every round for per-round sources) and turns a
source's scores into the top-k mask, the classifier head always in. Where the scores come
from is the source's ``kind`` (:mod:`fedfish.mask_sources`): the sampled clients' data
(a calibration exchange the strategy runs), the server's proxy data or the global model
(``server_scores``), or a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

import torch
from flwr.supercore import log

from fedfish.layout import ParamLayout
from fedfish.mask_sources import MaskSource
from fedfish.masks import Mask, per_layer_top_k_mask, random_mask, top_k_mask


class MaskState:
    """The current mask and how the next one is made.

    Parameters
    ----------
    source : MaskSource
        Where scores come from.
    layout : ParamLayout
        Flat parameter order (for per-layer top-k).
    head : torch.Tensor
        bool ``(P,)``: the classifier head, always in the mask.
    density : float
        Fraction of parameters kept, in (0, 1].
    scope : str
        ``global`` or ``per-layer`` top-k.
    refresh : int
        Rebuild every this many masked rounds (0 = fixed; per-round sources: every round).
    seed : int
        Base of seeded masks' seeds.
    """

    def __init__(  # noqa: PLR0913 - one argument per knob
        self, *, source: MaskSource, layout: ParamLayout, head: torch.Tensor, density: float, scope: str,
        refresh: int, seed: int,
    ) -> None:
        self.source = source
        self.layout = layout
        self.head = head
        self.density = density
        self.scope = scope
        self.refresh = refresh
        self.seed = seed
        self.mask: Mask | None = None
        self.mask_seed: int | None = None  # set when the mask is a seeded random one
        self.built_round = 0

    @property
    def next_version(self) -> int:
        """Version the next mask will carry."""
        return 1 if self.mask is None else self.mask.version + 1

    def due(self, server_round: int) -> bool:
        """Whether round ``server_round`` needs a new mask."""
        if self.mask is None or self.source.per_round:
            return True
        if self.refresh == 0:
            return False
        return server_round - self.built_round >= self.refresh

    def build(self, server_round: int, scores: torch.Tensor | None) -> Mask:
        """Make and keep the next mask: top-k of ``scores``, or seeded for seed sources."""
        version = self.next_version
        if self.source.kind == "seed":
            self.mask_seed = self.seed * 1_000_003 + version
            mask = random_mask(self.layout.num_params, self.density, seed=self.mask_seed,
                               always_include=self.head, version=version)
        else:
            if scores is None:
                raise ValueError(f"MaskState.build: source {self.source.name!r} needs scores")
            self.mask_seed = None
            if self.scope == "per-layer":
                mask = per_layer_top_k_mask(scores, self.layout, self.density, always_include=self.head,
                                            version=version)
            else:
                mask = top_k_mask(scores, self.density, always_include=self.head, version=version)
        self.mask, self.built_round = mask, server_round
        log(INFO, "Round %d: mask v%d from %s, k=%d (density %.4f)",
            server_round, version, self.source.name, mask.k, mask.density)
        return mask

    def state_dict(self) -> dict[str, object]:
        """Mask, seed and build round, for checkpoints."""
        return {
            "mask": None if self.mask is None else (self.mask.bits.clone(), self.mask.version),
            "mask_seed": self.mask_seed,
            "mask_built_round": self.built_round,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Inverse of :meth:`state_dict`."""
        mask = state["mask"]
        self.mask = None if mask is None else Mask(bits=mask[0], version=mask[1])  # type: ignore[index]
        self.mask_seed = state["mask_seed"]  # type: ignore[assignment]
        self.built_round = int(state["mask_built_round"])  # type: ignore[arg-type]


ServerScores = Callable[[torch.Tensor], torch.Tensor]
"""Scores (P,) of a flat global model computed on the server (proxy data or the model alone)."""
