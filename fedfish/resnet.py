"""ResNet-18 for 32x32 inputs (CIFAR-10), from torchvision's implementation."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class CifarResNet18(ResNet):
    """torchvision's ResNet-18 adapted to 32x32 inputs (CIFAR).

    The ImageNet stem (7x7 stride-2 conv + max-pool) would shrink a 32x32 image
    to 8x8 before the first block; the CIFAR variant uses a 3x3 stride-1 conv
    and no max-pool instead. Everything else is ``torchvision.models.resnet18``
    with random weights.

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.
    in_channels : int, default 3
        Channels of the input images.
    """

    head_names: tuple[str, ...] = ("fc.weight", "fc.bias")

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        # Reassigning keeps conv1's place in named_parameters(), hence in ParamLayout.
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        # Same initialisation ResNet.__init__ gave the conv it replaces.
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()
