"""Models by name: a registry of built-in factories, and any factory by import path.

``build_model(name, num_classes, input_shape)`` takes a registered short name (``cnn``,
``small-cnn``, ``small-resnet``, ``resnet18``) or ``"package.module:callable"`` (Flower's own
convention for its app components) and calls the factory with the keyword arguments its
signature accepts among ``num_classes`` and ``input_shape`` (one example's shape, e.g.
``(1, 28, 28)``), so the class count and input shape come from the data on server and
clients alike. A user adds a model in one file and one line: ``@register_model("mine")``.

The classifier head (always inside every mask) is what the model declares in a
``head_names`` attribute, or else its last ``nn.Linear`` layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from fedfish.plugins import resolve
from fedfish.small_models import FedAvgCNN, SmallCNN, SmallResNet

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}
"""Registered model factories by short name."""

DEFAULT_INPUT_SHAPE: tuple[int, ...] = (1, 28, 28)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a factory ``(num_classes=..., input_shape=...) -> nn.Module`` under ``name``."""

    def add(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"register_model: {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return add


@register_model("cnn")
def cnn(num_classes: int = 10, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """The 2-conv FedAvg CNN (McMahan et al.): 1,663,370 parameters on 1x28x28 inputs."""
    return FedAvgCNN(num_classes=num_classes, in_channels=input_shape[0], image_size=input_shape[-1])


@register_model("small-cnn")
def small_cnn(num_classes: int = 10, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """A CIFAR-style 3-conv CNN (about 0.12M parameters)."""
    return SmallCNN(num_classes=num_classes, in_channels=input_shape[0])


@register_model("small-resnet")
def small_resnet(num_classes: int = 10, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """A ResNet-8 with BatchNorm (about 78k parameters; trains in minutes on a CPU)."""
    return SmallResNet(num_classes=num_classes, in_channels=input_shape[0])


@register_model("resnet18")
def resnet18(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (11M parameters)."""
    # Imported here: torchvision costs seconds at start-up, and every deployed ClientApp
    # process that only needs another model would pay them.
    from fedfish.resnet import CifarResNet18  # noqa: PLC0415

    return CifarResNet18(num_classes=num_classes, in_channels=input_shape[0])


def resolve_model(name: str) -> ModelFactory:
    """The factory of a registered name or of a ``"package.module:callable"`` path.

    Raises
    ------
    ValueError
        Naming the unknown model, the module that does not import or the missing attribute.
    """
    factory = resolve(name, MODELS, "model")
    if not callable(factory):
        raise ValueError(f"model {name!r} is not callable")
    return factory  # type: ignore[return-value]


def build_model(name: str, num_classes: int = 10, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A freshly initialised model (from torch's global RNG).

    Parameters
    ----------
    name : str
        A registered name (:data:`MODELS`) or ``"package.module:callable"``.
    num_classes : int, default 10
        Number of output logits.
    input_shape : tuple[int, ...] | None, default None
        One example's shape; None leaves the factory's default.
    """
    factory = resolve_model(name)
    offered = {"num_classes": num_classes} | ({} if input_shape is None else {"input_shape": tuple(input_shape)})
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    model = factory(**{k: v for k, v in offered.items() if takes_any or k in parameters})
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model


def seeded_model(
    name: str, seed: int, num_classes: int = 10, input_shape: tuple[int, ...] | None = None
) -> nn.Module:
    """The initial model every node can rebuild: ``build_model`` under ``torch.manual_seed(seed)``.

    Initialisation draws from torch's CPU generator only, so the same torch build gives the
    same parameters in any process; nodes check that with the server's digest
    (``fedfish.layout.params_digest``). The caller's global RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, num_classes, input_shape)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier head's parameter names: declared (``head_names``) or the last Linear's.

    Raises
    ------
    ValueError
        If the declared names are not parameters of the model, or it declares none and
        has no ``nn.Linear`` layer.
    """
    parameters = {n for n, _ in model.named_parameters()}
    declared = tuple(getattr(model, "head_names", ()))
    if declared:
        unknown = sorted(set(declared) - parameters)
        if unknown:
            raise ValueError(f"head_names: {type(model).__name__}.head_names lists non-parameters {unknown}")
        return declared
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"head_names: {type(model).__name__} declares no head_names and has no nn.Linear layer")
    prefix = f"{linears[-1]}." if linears[-1] else ""
    return tuple(n for n in (f"{prefix}weight", f"{prefix}bias") if n in parameters)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
