"""A model defined outside FedFish: an MLP for tabular sensor data.

FedFish builds it from the run config's ``model = "examples.custom_model_and_data.model:make_model"``
on the server and on every client, passing the class count and the input shape it reads
from the data. Its classifier is called ``out``, not ``fc*``: FedFish finds the head as the
last ``nn.Linear`` and always keeps it in the mask.
"""

from __future__ import annotations

from torch import Tensor, nn


class ActivityNet(nn.Module):
    """Two hidden layers of 64 units, then the classifier ``out``."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.out = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


def make_model(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """The factory FedFish calls: one example's shape is ``(num_features,)``."""
    return ActivityNet(input_shape[0], num_classes)
