"""Local training restricted to a mask, and evaluation.

The FISH reference code masked gradients only, so weight decay and momentum still
moved "frozen" weights. Here entries outside the mask are never written at all:

* a tensor with no masked entry gets ``requires_grad=False`` for the call, so autograd
  skips its weight gradient and the optimizer never sees it;
* a fully masked tensor is optimised in place, like dense training;
* a partially masked tensor is optimised through a compact copy of its masked entries
  (shape ``(k_t,)``): each step gathers the gradient at those entries, runs the optimizer
  on the compact copy (momentum/Adam state and weight decay live there only) and
  scatters the values back. The other entries are bit-for-bit untouched for every
  optimizer, and the optimizer works on ``k`` values instead of ``P`` (on CPU the
  random-access gather/scatter costs about what that saves; see bench/masked_step.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedfish.layout import ParamLayout
from fedfish.masks import Mask

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one client's local training.

    Parameters
    ----------
    epochs : int, default 1
        Passes over the loader, >= 1.
    batch_size : int, default 32
        Examples per batch, >= 1; used by whoever builds the loader (``masked_train``
        takes batches as the loader yields them).
    lr : float, default 0.05
        Learning rate, finite and > 0.
    optimizer : str, default "sgd"
        One of ``OPTIMIZERS``: ``"sgd"``, ``"adam"``, ``"adamw"`` (torch defaults
        otherwise, e.g. Adam betas (0.9, 0.999)).
    momentum : float, default 0.0
        SGD momentum in ``[0, 1)``; must be 0 for Adam/AdamW (they have betas).
    weight_decay : float, default 0.0
        L2 penalty (SGD, Adam) or decoupled decay (AdamW), finite and >= 0.
    nesterov : bool, default False
        Nesterov momentum; SGD with ``momentum > 0`` only.

    Raises
    ------
    ValueError
        Naming the first field outside its allowed range.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be an int >= 1, got {value!r}")
        if not _is_real(self.lr) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig: lr must be finite and > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainConfig: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        if not _is_real(self.momentum) or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"TrainConfig: momentum must be in [0, 1), got {self.momentum!r}")
        if self.optimizer != "sgd" and self.momentum != 0.0:
            raise ValueError(
                f"TrainConfig: momentum must be 0 for optimizer={self.optimizer!r} "
                f"(Adam uses betas), got {self.momentum!r}"
            )
        if not _is_real(self.weight_decay) or not (
            math.isfinite(self.weight_decay) and self.weight_decay >= 0
        ):
            raise ValueError(
                f"TrainConfig: weight_decay must be finite and >= 0, got {self.weight_decay!r}"
            )
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"TrainConfig: nesterov must be a bool, got {self.nesterov!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError("TrainConfig: nesterov=True needs optimizer='sgd' and momentum > 0")


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`masked_train`.

    Parameters
    ----------
    num_examples : int
        Examples in one epoch (the first), the weight FedAvg-style aggregation uses.
    mean_loss : float
        Cross-entropy averaged over every example of every epoch (nats).
    steps : int
        Optimizer steps taken (batches over all epochs).
    """

    num_examples: int
    mean_loss: float
    steps: int


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Parameters
    ----------
    num_examples : int
        Examples evaluated.
    loss : float
        Mean cross-entropy per example (nats).
    accuracy : float
        Fraction of correct top-1 predictions, in ``[0, 1]``.
    """

    num_examples: int
    loss: float
    accuracy: float


class _PartialTensor:
    """Compact optimizer view of a partially masked parameter tensor."""

    def __init__(self, param: nn.Parameter, flat_index: torch.Tensor) -> None:
        self.param = param
        self.index = flat_index  # int64 (k_t,), on the parameter's device
        # Writable alias of the parameter's storage in flat (row-major) order.
        self.flat = param.detach().view(-1)
        self.compact = self.flat.index_select(0, flat_index).requires_grad_(True)
        # Preallocated once: every step overwrites it instead of allocating a new grad.
        self.compact.grad = torch.empty_like(self.compact)

    def gather_grad(self) -> None:
        grad = self.param.grad
        if grad is None:
            # Autograd produced no gradient this step (the tensor did not touch the loss).
            self.compact.grad.zero_()
        else:
            torch.index_select(grad.reshape(-1), 0, self.index, out=self.compact.grad)

    def scatter_values(self) -> None:
        self.flat.index_copy_(0, self.index, self.compact.detach())


class _MaskPlan:
    """How each parameter is trained under a mask; see the module docstring."""

    def __init__(self, model: nn.Module, mask: Mask | None, device: torch.device) -> None:
        params = list(model.parameters())
        self.params = params
        self.saved_requires_grad = [p.requires_grad for p in params]
        self.frozen: list[nn.Parameter] = []
        self.full: list[nn.Parameter] = []
        self.partial: list[_PartialTensor] = []
        if mask is None:
            self.full = [p for p in params if p.requires_grad]
            return
        layout = ParamLayout.of(model)
        if mask.num_params != layout.num_params:
            raise ValueError(
                f"masked_train: mask covers {mask.num_params} entries but the model has "
                f"{layout.num_params} parameters"
            )
        chunks = torch.split(mask.bits, layout.numels)
        for name, p, chunk in zip(layout.names, params, chunks, strict=True):
            count = int(chunk.sum())
            if not p.requires_grad or count == 0:
                self.frozen.append(p)
            elif count == chunk.numel():
                self.full.append(p)
            else:
                if not p.is_contiguous():
                    raise ValueError(
                        f"masked_train: partially masked parameter {name!r} must be contiguous"
                    )
                index = torch.nonzero(chunk, as_tuple=True)[0].to(device)
                self.partial.append(_PartialTensor(p, index))

    def optimized_tensors(self) -> list[torch.Tensor]:
        return self.full + [part.compact for part in self.partial]

    def graph_params(self) -> list[nn.Parameter]:
        """Parameters autograd computes gradients for."""
        return self.full + [part.param for part in self.partial]

    def freeze(self) -> None:
        for p in self.frozen:
            p.requires_grad_(False)

    def restore(self) -> None:
        for p, requires_grad in zip(self.params, self.saved_requires_grad, strict=True):
            p.requires_grad_(requires_grad)
            # Partial tensors' grads include unmasked entries; drop every grad so no
            # caller mistakes them for the update.
            p.grad = None


def masked_train(
    model: nn.Module,
    mask: Mask | None,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: TrainConfig,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy, updating only the masked entries.

    Parameters
    ----------
    model : nn.Module
        Classifier producing logits ``(B, C)``. Parameters whose ``requires_grad`` is
        False are left alone; every ``.grad`` is None on return.
    mask : Mask | None
        Entries (flat layout order) that may change; every other entry is bit-for-bit
        unchanged for any optimizer. None trains densely.
    loader : Iterable[tuple[torch.Tensor, torch.Tensor]]
        Yields ``(x, y)`` batches: inputs and int64 labels ``(B,)``. Re-iterated once per
        epoch (a ``DataLoader`` is fine; a one-shot generator only for ``epochs=1``).
    config : TrainConfig
        Epochs and optimizer; a fresh optimizer (no carried state) is built per call.
    device : torch.device | str | None, default None
        Where to train; None means the model's device. A different device moves the
        model there (in place) for good.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If the mask size differs from the model's parameter count, it selects no entry of
        a trainable parameter, or the loader yields no batch.
    """
    device = _resolve_device(model, device)
    plan = _MaskPlan(model, mask, device)
    saved_modes = _training_modes(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    num_seen = 0
    first_epoch_examples = 0
    steps = 0
    try:
        plan.freeze()
        for p in plan.params:
            p.grad = None
        tensors = plan.optimized_tensors()
        if not tensors:
            raise ValueError("masked_train: the mask selects no trainable parameter entry")
        optimizer = _make_optimizer(tensors, config, device)
        graph_params = plan.graph_params()
        model.train()
        for epoch in range(config.epochs):
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                for p in graph_params:
                    p.grad = None
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                for part in plan.partial:
                    part.gather_grad()
                optimizer.step()
                with torch.no_grad():
                    for part in plan.partial:
                        part.scatter_values()
                # Accumulated on the device: no host sync per step.
                loss_sum += loss.detach() * y.shape[0]
                num_seen += y.shape[0]
                steps += 1
            if epoch == 0:
                first_epoch_examples = num_seen
    finally:
        plan.restore()
        _restore_modes(saved_modes)
    if num_seen == 0:
        raise ValueError("masked_train: loader yielded no batches")
    return TrainResult(first_epoch_examples, float(loss_sum.item()) / num_seen, steps)


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str | None = None,
) -> EvalResult:
    """Mean cross-entropy and top-1 accuracy of ``model`` over ``loader``.

    The model is in eval mode during the call (BatchNorm uses running statistics,
    dropout is off) and every module's mode is restored afterwards.

    Parameters
    ----------
    model : nn.Module
        Classifier producing logits ``(B, C)``.
    loader : Iterable[tuple[torch.Tensor, torch.Tensor]]
        Yields ``(x, y)`` batches with int64 labels ``(B,)``.
    device : torch.device | str | None, default None
        None means the model's device; another device moves the model there for good.

    Raises
    ------
    ValueError
        If the loader yields no batch.
    """
    device = _resolve_device(model, device)
    saved_modes = _training_modes(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    num_seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for x, y in loader:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                logits = model(x)
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(dim=1) == y).sum()
                num_seen += y.shape[0]
    finally:
        _restore_modes(saved_modes)
    if num_seen == 0:
        raise ValueError("evaluate: loader yielded no batches")
    return EvalResult(num_seen, float(loss_sum.item()) / num_seen, int(correct.item()) / num_seen)


def _make_optimizer(
    tensors: list[torch.Tensor], config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    # The fused kernels (CPU and CUDA) do one pass over each tensor instead of the
    # several of the per-tensor loop; both dense and masked training use them.
    fused = device.type in ("cpu", "cuda")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            tensors,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
            fused=fused,
        )
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(tensors, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        device = torch.device(device)
        model.to(device)
        return device
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("model has no parameters, so it has no device to default to") from None


def _training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(saved: list[tuple[nn.Module, bool]]) -> None:
    for module, training in saved:
        module.training = training


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = [
    "OPTIMIZERS",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "masked_train",
]
