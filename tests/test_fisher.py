"""Tests for fedfish.fisher: batched diagonal Fisher against a float64 batch-1 loop and a hand oracle."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from fedfish.fisher import (
    BACKENDS,
    KINDS,
    diagonal_fisher,
    diagonal_fisher_loop,
    sample_labels,
)
from fedfish.layout import ParamLayout, flatten_params

NUM_CLASSES = 5
TOL = 1e-5
# fp32 rounding inside the per-sample gradients bounds the elementwise error of an fp32 run
FP32_ELEMENTWISE_TOL = 1e-4
FLOOR = 1e-6  # entries below FLOOR * max are compared only through the max-normalised error


def _small_cnn() -> nn.Sequential:
    """FedAvgCNN in miniature: conv-relu-pool twice, then two linear layers, 8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 16),
        nn.ReLU(),
        nn.Linear(16, NUM_CLASSES),
    )


class _ResidualBN(nn.Module):
    """conv-BN stem and a torchvision-style block (in-place add and ReLU) that BackPACK rejects."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 8 * 8, NUM_CLASSES)
        for bn in (self.bn1, self.bn2):
            # Non-trivial running statistics and affine parameters, so eval mode matters.
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.2, 0.2)

    def forward(self, x: Tensor) -> Tensor:
        identity = self.relu(self.bn1(self.stem(x)))
        out = self.bn2(self.conv(identity))
        out += identity
        return self.head(self.relu(out).flatten(1))


def _layer_norm_net() -> nn.Sequential:
    """A parameterised module (LayerNorm) that BackPACK has no rule for."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 12), nn.LayerNorm(12), nn.Tanh(), nn.Linear(12, NUM_CLASSES)
    )


def _data(n: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, NUM_CLASSES, (n,), generator=gen)


def _loop64(model: nn.Module, x: Tensor, y: Tensor, kind: str, m: int = 2, seed: int = 7) -> Tensor:
    """The batch-1 reference in float64 on a copy of ``model``."""
    gen = torch.Generator().manual_seed(seed)
    ref = diagonal_fisher_loop(
        copy.deepcopy(model).double(), x.double(), y, kind, num_label_samples=m, generator=gen
    )
    return ref.double()


def _assert_close(ours: Tensor, ref: Tensor, elementwise_tol: float = TOL) -> None:
    ours, ref = ours.double(), ref.double()
    assert (ours - ref).abs().max() / ref.abs().max() < TOL
    big = ref > FLOOR * ref.max()
    assert big.sum() > ref.numel() // 2
    assert ((ours - ref).abs() / ref)[big].max() < elementwise_tol


@pytest.fixture(scope="module")
def loop_refs() -> dict[str, Tensor]:
    """float64 batch-1 reference of each kind on ``_small_cnn`` and ``_data(24)``, computed once."""
    x, y = _data(24)
    return {kind: _loop64(_small_cnn(), x, y, kind) for kind in KINDS}


@pytest.mark.parametrize("backend", ["backpack", "func"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_and_backend_matches_float64_loop(
    kind: str, backend: str, loop_refs: dict[str, Tensor]
) -> None:
    # Prepare
    model = _small_cnn()
    x, y = _data(24)
    ref = loop_refs[kind]

    # Execute: the fp32 model as used in training, and a float64 twin for the tight check
    ours32, ours64 = (
        diagonal_fisher(
            net, x.to(dtype), y, kind, num_label_samples=2,
            generator=torch.Generator().manual_seed(7), backend=backend,
        )
        for net, dtype in ((model, torch.float32), (copy.deepcopy(model).double(), torch.float64))
    )

    # Assert
    assert ours32.dtype == ours64.dtype == torch.float32 and ours32.device.type == "cpu"
    assert ours32.shape == (ParamLayout.of(model).num_params,)
    _assert_close(ours64, ref)
    _assert_close(ours32, ref, FP32_ELEMENTWISE_TOL)


@pytest.mark.parametrize("backend", ["backpack", "func"])
@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_unchunked(kind: str, backend: str) -> None:
    # Prepare: float64 so chunking is the only difference that could show
    model = _small_cnn().double()
    x, y = _data(12)
    x = x.double()

    # Execute
    results = [
        diagonal_fisher(
            model, x, y, kind, num_label_samples=3, chunk_size=c,
            generator=torch.Generator().manual_seed(3), backend=backend,
        )
        for c in (7, 1000)
    ]

    # Assert
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=0.0)


def _logistic_oracle(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Expected Fisher of softmax regression by hand: d log p(c|x) / dW = (e_c - p) x^T."""
    f_w, f_b = np.zeros_like(weight), np.zeros_like(bias)
    for xn in x:
        logits = weight @ xn + bias
        p = np.exp(logits - logits.max())
        p /= p.sum()
        for c in range(len(p)):
            r = np.eye(len(p))[c] - p  # (C,)
            f_w += p[c] * np.outer(r, xn) ** 2
            f_b += p[c] * r**2
    return f_w / len(x), f_b / len(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expected_matches_hand_oracle_on_softmax_regression(backend: str) -> None:
    # Prepare
    torch.manual_seed(4)
    model = nn.Linear(6, 4)
    x = torch.randn(16, 6)
    f_w, f_b = _logistic_oracle(
        model.weight.detach().double().numpy(), model.bias.detach().double().numpy(), x.double().numpy()
    )

    # Execute
    ours = diagonal_fisher(model, x, None, "expected", backend=backend)
    loop = diagonal_fisher_loop(model, x, None, "expected")

    # Assert: layout order is weight then bias
    for result in (ours, loop):
        weight, bias = ParamLayout.of(model).split(result)
        np.testing.assert_allclose(weight.numpy(), f_w, rtol=1e-5)
        np.testing.assert_allclose(bias.numpy(), f_b, rtol=1e-5)


def test_sampled_converges_to_expected_with_many_draws() -> None:
    # Prepare: a model with far-from-uniform predictions, so the label distribution matters
    torch.manual_seed(5)
    model = nn.Linear(6, 4)
    x = 2.0 * torch.randn(8, 6)
    expected = diagonal_fisher(model, x, None, "expected")

    # Execute
    sampled = diagonal_fisher(
        model, x, None, "sampled", num_label_samples=2000, generator=torch.Generator().manual_seed(0)
    )

    # Assert: Monte-Carlo error of 16k draws is about 1%; uniform labels would be far off
    assert (sampled - expected).abs().max() / expected.max() < 0.05


def test_sample_labels_follow_generator_and_ignore_chunking() -> None:
    # Prepare
    model = _small_cnn()
    x, _ = _data(30)

    # Execute
    a = sample_labels(model, x, 5, torch.Generator().manual_seed(9))
    b = sample_labels(model, x, 5, torch.Generator().manual_seed(9), chunk_size=4)
    c = sample_labels(model, x, 5, torch.Generator().manual_seed(10))

    # Assert
    assert a.shape == (30, 5) and a.dtype == torch.int64
    assert int(a.min()) >= 0 and int(a.max()) < NUM_CLASSES
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batchnorm_model_uses_running_statistics_and_restores_modes() -> None:
    # Prepare: train mode overall, one BN deliberately left in eval mode by the caller
    model = _ResidualBN().train()
    model.bn2.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    stats = {name: b.clone() for name, b in model.named_buffers()}
    x, y = _data(16)
    ref = _loop64(model, x, y, "empirical")

    # Execute
    ours = diagonal_fisher(model, x, y, "empirical", chunk_size=5)
    ours64 = diagonal_fisher(copy.deepcopy(model).double(), x.double(), y, "empirical", chunk_size=5)

    # Assert: per-sample gradients with running statistics (a batch-statistics value would
    # depend on the chunk and differ from the batch-1 loop), no statistics updated, modes back
    _assert_close(ours64, ref)
    _assert_close(ours, ref, FP32_ELEMENTWISE_TOL)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for name, b in model.named_buffers():
        assert torch.equal(b, stats[name]), name


def test_auto_falls_back_to_func_when_backpack_raises(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: module types BackPACK knows, but an in-place residual add it cannot hook
    model = _ResidualBN().eval()
    x, y = _data(16)
    ref = _loop64(model, x, y, "expected")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedfish.fisher"):
        ours = diagonal_fisher(copy.deepcopy(model).double(), x.double(), y, "expected")

    # Assert
    assert "BackPACK failed" in caplog.text
    _assert_close(ours, ref)
    with pytest.raises(RuntimeError):
        diagonal_fisher(model, x, y, "expected", backend="backpack")


def test_auto_uses_func_for_unsupported_module_type(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    model = _layer_norm_net()
    x, y = _data(16)
    ref = _loop64(model, x, y, "empirical")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedfish.fisher"):
        ours = diagonal_fisher(copy.deepcopy(model).double(), x.double(), y, "empirical")

    # Assert
    assert "BackPACK lacks modules ['LayerNorm']" in caplog.text
    _assert_close(ours, ref)
    with pytest.raises(ValueError, match="backend='backpack' does not support .*LayerNorm"):
        diagonal_fisher(model, x, y, "empirical", backend="backpack")


def _has_backpack_traces(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._backward_hooks or hasattr(m, "input0") or hasattr(m, "_backpack_extend")
        for m in model.modules()
    ) or any(hasattr(p, "sum_grad_squared") or hasattr(p, "diag_ggn_exact") for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_caller_model_untouched_and_trains_normally_afterwards(kind: str) -> None:
    # Prepare: a frozen tensor and an existing .grad the call must keep as they are
    model = _small_cnn()
    model[0].bias.requires_grad_(False)
    model[-1].weight.grad = torch.ones_like(model[-1].weight)
    pristine = copy.deepcopy(model)
    before = flatten_params(model)
    flags = [p.requires_grad for p in model.parameters()]
    x, y = _data(16)

    # Execute
    for backend in ("backpack", "auto"):
        diagonal_fisher(model, x, y, kind, generator=torch.Generator().manual_seed(0), backend=backend)

    # Assert: nothing changed, no hooks left, and an SGD step matches the untouched twin bit for bit
    assert torch.equal(flatten_params(model), before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model[-1].weight.grad, torch.ones_like(model[-1].weight))
    assert model[0].weight.grad is None
    assert not _has_backpack_traces(model)
    for net in (model, pristine):
        net.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1).step()
    assert torch.equal(flatten_params(model), flatten_params(pristine))


_X, _Y = _data(4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "fisher"}, "kind must be one of"),
        ({"backend": "jax"}, "backend must be one of"),
        ({"labels": _Y[:3]}, r"labels must have shape \(4,\)"),
        ({"labels": None}, "labels are required for kind='empirical'"),
        ({"labels": torch.tensor([0, 1, 2, NUM_CLASSES])}, r"labels must lie in \[0, 5\)"),
        ({"labels": torch.tensor([0, -1, 2, 3])}, r"labels must lie in \[0, 5\)"),
        ({"inputs": _X[:0], "labels": _Y[:0]}, "inputs must hold at least one sample"),
        ({"num_label_samples": 0, "kind": "sampled"}, "num_label_samples must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, match: str) -> None:
    # Prepare
    args = {"inputs": _X, "labels": _Y, "kind": "empirical"} | kwargs

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        diagonal_fisher(_small_cnn(), args.pop("inputs"), args.pop("labels"), **args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "fisher"}, "kind must be one of"),
        ({"labels": _Y[:3]}, r"labels must have shape \(4,\)"),
        ({"num_label_samples": 0, "kind": "sampled"}, "num_label_samples must be >= 1"),
    ],
)
def test_loop_invalid_arguments_raise(kwargs: dict, match: str) -> None:
    # Prepare
    args = {"labels": _Y, "kind": "empirical"} | kwargs

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        diagonal_fisher_loop(_small_cnn(), _X, args.pop("labels"), **args)
