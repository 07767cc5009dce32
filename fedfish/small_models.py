"""Small image classifiers that train on a CPU: the FedAvg CNN, a CIFAR-style CNN, a ResNet-8.

All are plain ``nn.Module`` compositions. The two CNNs are ``nn.Sequential`` of known layers,
which BackPACK's per-example extensions can walk; the ResNet's residual additions are not,
so its Fisher goes through ``torch.func`` (``fedfish.fisher`` falls back by itself), with
BatchNorm in eval mode.
"""

from __future__ import annotations

from torch import Tensor, nn


class FedAvgCNN(nn.Sequential):
    """The 2-conv CNN of McMahan et al. (FedAvg), used for (Fashion-)MNIST.

    conv5x5(32, pad 2) -> ReLU -> maxpool2 -> conv5x5(64, pad 2) -> ReLU -> maxpool2
    -> flatten -> fc1(512) -> ReLU -> fc2(num_classes). 1,663,370 parameters for
    28x28x1 inputs and 10 classes.

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


class SmallCNN(nn.Sequential):
    """A CIFAR-style CNN: three conv3x3-ReLU-maxpool blocks (32, 64, 128 channels), a global
    average pool and two linear layers (128 -> 128 -> classes). Any input size >= 8 pixels.

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.
    in_channels : int, default 1
        Channels of the input images.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        _check_at_least("num_classes", num_classes, 1)
        _check_at_least("in_channels", in_channels, 1)
        layers: list[nn.Module] = []
        width = in_channels
        for channels in (32, 64, 128):
            layers += [nn.Conv2d(width, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, num_classes)]
        super().__init__(*layers)


class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (projected) input, then ReLU."""

    def __init__(self, inputs: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-8: a conv3x3(16)-BN-ReLU stem, three basic blocks (16, 32, 64 channels; strides
    1, 2, 2), global average pooling and a linear classifier. BatchNorm gives it buffers
    (running statistics), which FedFish averages or keeps local (``buffers``).

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.
    in_channels : int, default 1
        Channels of the input images.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        _check_at_least("num_classes", num_classes, 1)
        _check_at_least("in_channels", in_channels, 1)
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(_BasicBlock(16, 16, 1), _BasicBlock(16, 32, 2), _BasicBlock(32, 64, 2))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


def _check_at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
