"""A new mask method in one file: keep the parameters with the largest mean gradient.

|E[g]| asks which weights the loss wants to move together across examples; the FISH mask's
E[g^2] also counts gradients that cancel out. Use it with ``mask-source =
"examples.extending.grad_magnitude:GradientMagnitude"`` (any strategy that trains under a
mask); clients compute it on their data (``fisher-source = "client"``) or the server on its
public split (``fisher-source = "server"``).
"""

from __future__ import annotations

import torch
from torch import nn

from fedfish.mask_sources import ScoreSettings


class GradientMagnitude:
    """|mean gradient| of the cross-entropy over the examples, per parameter."""

    name = "gradient-magnitude"
    kind = "data"  # scores need the model and labelled examples
    per_round = False  # one fixed mask (True: a new one every round)

    def scores(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor] | None,
               settings: ScoreSettings) -> torch.Tensor:
        """Non-negative fp32 (P,) scores in the model's parameter order."""
        inputs, labels = data
        loss = nn.functional.cross_entropy(model(inputs), labels)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return torch.cat([g.reshape(-1) for g in grads]).abs().detach()
