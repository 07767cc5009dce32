"""The two model families of the FISH experiments and a name-based factory.

Every model declares ``head_names``: the parameters of its classifier head, which
mask builders always keep trainable (they are tiny and task specific).
"""

from __future__ import annotations

import torch
from torch import nn

MODEL_NAMES: tuple[str, ...] = ("cnn", "resnet18")


class FedAvgCNN(nn.Sequential):
    """The 2-conv CNN of McMahan et al. (FedAvg), used for (Fashion-)MNIST.

    conv5x5(32, pad 2) -> ReLU -> maxpool2 -> conv5x5(64, pad 2) -> ReLU -> maxpool2
    -> flatten -> fc1(512) -> ReLU -> fc2(num_classes). 1,663,370 parameters for
    28x28x1 inputs and 10 classes.

    It is an ``nn.Sequential`` of plain modules because BackPACK's per-sample
    extensions only walk sequential containers of known layers.

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.
    in_channels : int, default 1
        Channels of the input images.
    image_size : int, default 28
        Height and width of the (square) input images in pixels; sets fc1's
        input width, ``64 * (image_size // 4) ** 2`` (3136 for 28).

    Raises
    ------
    ValueError
        If an argument is below 1 (``image_size`` below 4).
    """

    head_names: tuple[str, ...] = ("fc2.weight", "fc2.bias")

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        _check_at_least("num_classes", num_classes, 1)
        _check_at_least("in_channels", in_channels, 1)
        # Two 2x2 poolings: anything below 4 pixels leaves no feature map.
        _check_at_least("image_size", image_size, 4)
        side = image_size // 4
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * side * side, 512)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(512, num_classes)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Fresh randomly initialised model by name.

    Parameters
    ----------
    name : str
        One of ``MODEL_NAMES``: ``"cnn"`` (FedAvgCNN, 1x28x28 inputs) or
        ``"resnet18"`` (``fedfish.resnet.CifarResNet18``, 3x32x32 inputs).
    num_classes : int, default 10
        Number of output logits.

    Raises
    ------
    ValueError
        If ``name`` is not in ``MODEL_NAMES``.
    """
    if name == "cnn":
        return FedAvgCNN(num_classes=num_classes)
    if name == "resnet18":
        # Imported here: torchvision costs seconds at start-up, and every deployed
        # ClientApp process that only needs the CNN would pay them.
        from fedfish.resnet import CifarResNet18  # noqa: PLC0415

        return CifarResNet18(num_classes=num_classes)
    raise ValueError(f"build_model: name must be one of {MODEL_NAMES}, got {name!r}")


def seeded_model(name: str, seed: int, num_classes: int = 10) -> nn.Module:
    """The initial model every node can rebuild: ``build_model`` under ``torch.manual_seed(seed)``.

    Initialisation draws from torch's CPU generator only, so the same torch build gives the
    same parameters in any process; nodes check that with the server's digest
    (``fedfish.layout.params_digest``). The caller's global RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, num_classes)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the classifier-head parameters ``model`` declares.

    Raises
    ------
    ValueError
        If ``model`` declares no ``head_names`` or names a tensor that is not
        one of its parameters.
    """
    names = tuple(getattr(model, "head_names", ()))
    if not names:
        raise ValueError(f"head_names: {type(model).__name__} declares no head_names attribute")
    unknown = sorted(set(names) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise ValueError(
            f"head_names: {type(model).__name__}.head_names lists non-parameters {unknown}"
        )
    return names


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
