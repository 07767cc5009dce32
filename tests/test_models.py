"""Tests for fedfish.models: the registry and import paths, architectures, parameter counts,
head detection, BackPACK."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from backpack import backpack, extend
from backpack.extensions import SumGradSquared
from torch import nn

from fedfish import models
from fedfish.layout import ParamLayout
from fedfish.models import MODELS, build_model, default_device, head_names, register_model, seeded_model
from fedfish.resnet import CifarResNet18
from fedfish.small_models import FedAvgCNN, SmallCNN, SmallResNet


def _hand_count_cnn(in_channels: int, side: int, num_classes: int) -> int:
    """Parameter count of the FedAvg CNN from its layer sizes (weights + biases)."""
    conv1 = in_channels * 32 * 5 * 5 + 32
    conv2 = 32 * 64 * 5 * 5 + 64
    fc1 = 64 * (side // 4) ** 2 * 512 + 512
    fc2 = 512 * num_classes + num_classes
    return conv1 + conv2 + fc1 + fc2


def test_cnn_has_the_published_parameter_count() -> None:
    # Execute
    layout = ParamLayout.of(FedAvgCNN())

    # Assert
    assert layout.num_params == 1_663_370 == _hand_count_cnn(1, 28, 10)
    assert layout.names == (
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    )
    assert layout.shapes[layout.names.index("fc1.weight")] == (512, 3136)


def test_cifar_resnet18_has_the_cifar_stem_and_parameter_count() -> None:
    # Execute
    model = CifarResNet18()
    layout = ParamLayout.of(model)

    # Assert: 11,173,962 is the CIFAR ResNet-18 figure (3x3 stem, 10-way head).
    assert layout.num_params == 11_173_962
    assert layout.names[0] == "conv1.weight" and layout.names[-2:] == ("fc.weight", "fc.bias")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize(
    ("model", "input_shape", "num_classes"),
    [
        (FedAvgCNN(), (4, 1, 28, 28), 10),
        (FedAvgCNN(num_classes=7, in_channels=3, image_size=32), (2, 3, 32, 32), 7),
        (CifarResNet18(num_classes=5), (2, 3, 32, 32), 5),
    ],
    ids=["cnn-fmnist", "cnn-rgb32", "resnet18"],
)
def test_forward_shapes(model: nn.Module, input_shape, num_classes: int) -> None:
    # Prepare
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))

    # Execute
    with torch.no_grad():
        out = model.eval()(x)

    # Assert
    assert out.shape == (input_shape[0], num_classes) and torch.isfinite(out).all()


def test_cnn_with_other_input_size_counts_fc1_from_it() -> None:
    assert ParamLayout.of(FedAvgCNN(3, 3, 32)).num_params == _hand_count_cnn(3, 32, 3)


@pytest.mark.parametrize(
    ("name", "cls"),
    [("cnn", FedAvgCNN), ("small-cnn", SmallCNN), ("small-resnet", SmallResNet), ("resnet18", CifarResNet18)],
)
@pytest.mark.parametrize("input_shape", [(1, 28, 28), (3, 32, 32)])
def test_every_registered_model_takes_classes_and_shape_from_the_data(name: str, cls: type, input_shape) -> None:
    # Execute
    model = build_model(name, num_classes=100, input_shape=input_shape)
    names = head_names(model)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *input_shape))

    # Assert: the head is the last parameters and produces the 100 logits.
    assert isinstance(model, cls) and out.shape == (2, 100)
    assert names == tuple(ParamLayout.of(model).names[-2:])
    assert dict(model.named_parameters())[names[0]].shape[0] == 100
    assert name in MODELS


class Plain(nn.Module):
    """A user's model: no head_names, the classifier not called fc*."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU())
        self.readout = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.body(x))


def plain_factory(num_classes: int) -> nn.Module:
    """Takes num_classes only: build_model passes what the signature accepts."""
    return Plain(num_classes)


def test_a_model_by_import_path_gets_its_last_linear_as_head() -> None:
    # Execute
    model = build_model("tests.test_models:plain_factory", num_classes=3, input_shape=(4,))

    # Assert
    assert type(model).__name__ == "Plain" and model.readout.out_features == 3  # imported by path, afresh
    assert head_names(model) == ("readout.weight", "readout.bias")


def test_register_model_adds_a_name_once() -> None:
    # Prepare
    name = "plain-for-test"
    if name not in MODELS:
        register_model(name)(plain_factory)

    # Execute / Assert
    assert isinstance(build_model(name, 4), Plain)
    with pytest.raises(ValueError, match="already registered"):
        register_model(name)(plain_factory)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("vgg", r"unknown model 'vgg'; registered: \['cnn', .*package.module:attribute"),
        ("no_such_module_xyz:make", r"cannot import 'no_such_module_xyz'"),
        ("tests.test_models:nothing_here", r"'tests.test_models' has no attribute 'nothing_here'"),
        ("tests.test_models:MODELS", r"model 'tests.test_models:MODELS' is not callable"),
    ],
)
def test_bad_model_names_are_refused_naming_what_is_wrong(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(name)


class _BadHead(nn.Linear):
    head_names = ("fc.weight",)


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3)), "declares no head_names and has no nn.Linear layer"),
        (_BadHead(2, 3), r"lists non-parameters \['fc.weight'\]"),
    ],
)
def test_head_names_rejects_models_without_a_valid_head(model: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        head_names(model)


def test_small_resnet_has_batchnorm_buffers_and_the_cnn_none() -> None:
    assert len(list(SmallResNet().buffers())) == 27 and not list(FedAvgCNN().buffers())
    assert ParamLayout.of(SmallResNet()).num_params < 100_000


def test_seeded_model_is_the_same_in_a_fresh_process() -> None:
    # The seeded initial model is what every client rebuilds instead of receiving it.
    code = ("import sys; from fedfish.layout import flatten_params, params_digest; "
            "from fedfish.models import seeded_model; print(params_digest(flatten_params(seeded_model('cnn', 4))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    from fedfish.layout import flatten_params, params_digest

    assert out == params_digest(flatten_params(seeded_model("cnn", 4)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes must be >= 1, got 0"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"image_size": 3}, "image_size must be >= 4, got 3"),
    ],
)
def test_cnn_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FedAvgCNN(**kwargs)


def test_resnet_rejects_zero_classes() -> None:
    with pytest.raises(ValueError, match="num_classes and in_channels must be >= 1, got 0, 3"):
        CifarResNet18(num_classes=0)


# BackPACK's hooks fire on outputs since the inputs need no gradient; expected.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_backpack_sum_grad_squared_on_cnn_matches_per_sample_loop() -> None:
    # Prepare: a small-input CNN keeps the loop cheap; same module structure.
    torch.manual_seed(0)
    model = FedAvgCNN(num_classes=4, image_size=8).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(3):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for acc, p in zip(expected, model.parameters(), strict=True):
            acc += p.grad**2

    # Execute
    ext_model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    ext_model.zero_grad()
    with backpack(SumGradSquared()):
        loss_fn(ext_model(x), y).backward()

    # Assert
    for (name, p), want in zip(ext_model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(p.sum_grad_squared, want, msg=name)


@pytest.mark.parametrize(("cuda", "device_type"), [(True, "cuda"), (False, "cpu")])
def test_default_device_follows_cuda_availability(monkeypatch, cuda: bool, device_type: str) -> None:
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: cuda)
    assert default_device() == torch.device(device_type)


def test_client_side_imports_do_not_load_torchvision() -> None:
    # Every deployed ClientApp process imports this; torchvision would add seconds to each.
    code = "import sys, simulations.client_app; sys.exit('torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
