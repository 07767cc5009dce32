"""Tests for fedfish.training: exact masked updates, dense parity, evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedfish.layout import ParamLayout, flatten_params
from fedfish.masks import Mask
from fedfish.training import EvalResult, TrainConfig, evaluate, masked_train

NUM_EXAMPLES, BATCH = 48, 8


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    # Tanh, not ReLU: no dead units, so every masked entry gets a nonzero gradient.
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(NUM_EXAMPLES, 6, generator=g)
    y = torch.randint(0, 3, (NUM_EXAMPLES,), generator=g)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, NUM_EXAMPLES, BATCH)]


def _mixed_mask(model: nn.Module) -> Mask:
    """0.weight partially in (every other entry), 0.bias not at all, 2.* fully in."""
    layout = ParamLayout.of(model)
    bits = layout.indicator(["2.weight", "2.bias"])
    part = layout.slice_of("0.weight")
    bits[part] = torch.arange(part.stop - part.start) % 2 == 0
    return Mask(bits)


# --- TrainConfig ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 1.0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum must be 0"),
        ({"weight_decay": -1e-3}, "weight_decay"),
        ({"nesterov": True}, "nesterov"),
        ({"optimizer": "adamw", "nesterov": True}, "nesterov"),
    ],
)
def test_train_config_rejects_invalid(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


# --- masked_train --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=3, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-3),
        TrainConfig(epochs=3, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
        TrainConfig(epochs=3, lr=0.01, optimizer="adam", weight_decay=1e-2),
        TrainConfig(epochs=3, lr=0.01, optimizer="adamw", weight_decay=1e-2),
    ],
    ids=["sgd-momentum-wd", "sgd-nesterov", "adam-wd", "adamw"],
)
def test_masked_train_leaves_unmasked_entries_bit_exact(config: TrainConfig) -> None:
    # Prepare
    model = _model()
    mask = _mixed_mask(model)
    before = flatten_params(model)

    # Execute
    result = masked_train(model, mask, _batches(), config)

    # Assert
    after = flatten_params(model)
    assert result.steps == 3 * NUM_EXAMPLES // BATCH
    assert torch.equal(after[~mask.bits], before[~mask.bits])
    assert bool((after[mask.bits] != before[mask.bits]).all())


def test_unmasked_tensor_gets_no_gradient_and_requires_grad_is_restored() -> None:
    # Prepare
    model = _model()
    frozen, trained = model[0].bias, model[0].weight
    calls = {"frozen": 0, "trained": 0}
    frozen.register_hook(lambda g: calls.__setitem__("frozen", calls["frozen"] + 1))
    trained.register_hook(lambda g: calls.__setitem__("trained", calls["trained"] + 1))

    # Execute
    result = masked_train(model, _mixed_mask(model), _batches(), TrainConfig(momentum=0.9))

    # Assert
    assert calls == {"frozen": 0, "trained": result.steps}
    assert frozen.grad is None
    assert all(p.requires_grad for p in model.parameters())


def test_requires_grad_and_mode_restored_when_loader_fails() -> None:
    # Prepare
    model = _model().eval()

    def failing() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield _batches()[0]
        raise RuntimeError("disk gone")

    # Execute
    with pytest.raises(RuntimeError, match="disk gone"):
        masked_train(model, _mixed_mask(model), failing(), TrainConfig())

    # Assert
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_masked_train_uses_train_mode_and_restores_it() -> None:
    # Prepare
    model = _model().eval()
    seen: list[bool] = []
    model.register_forward_hook(lambda m, i, o: seen.append(m.training))

    # Execute
    masked_train(model, None, _batches(), TrainConfig())

    # Assert
    assert seen and all(seen)
    assert not model.training


def test_user_frozen_parameter_stays_frozen_and_untouched() -> None:
    # Prepare
    model = _model()
    model[2].bias.requires_grad_(False)
    before = model[2].bias.detach().clone()

    # Execute
    masked_train(model, None, _batches(), TrainConfig(momentum=0.9, weight_decay=1e-2))

    # Assert
    assert torch.equal(model[2].bias, before)
    assert not model[2].bias.requires_grad


def test_dense_training_matches_hand_written_loop() -> None:
    # Prepare
    config = TrainConfig(epochs=2, lr=0.1, momentum=0.9, weight_decay=1e-3)
    model, reference = _model(seed=3), _model(seed=3)
    # fused=True: the kernel masked_train uses on CPU, so the comparison can be bit-exact.
    optimizer = torch.optim.SGD(
        reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, fused=True
    )
    losses = []
    for _ in range(config.epochs):
        for x, y in _batches():
            optimizer.zero_grad()
            loss = F.cross_entropy(reference(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())

    # Execute
    result = masked_train(model, None, _batches(), config)

    # Assert
    assert torch.equal(flatten_params(model), flatten_params(reference))
    assert result.num_examples == NUM_EXAMPLES
    assert result.steps == len(losses)
    assert result.mean_loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_full_mask_is_bit_identical_to_dense() -> None:
    # Prepare
    config = TrainConfig(epochs=2, optimizer="adamw", lr=0.01, weight_decay=1e-2)
    dense, masked = _model(seed=5), _model(seed=5)
    full = Mask(torch.ones(ParamLayout.of(masked).num_params, dtype=torch.bool))

    # Execute
    dense_result = masked_train(dense, None, _batches(), config)
    masked_result = masked_train(masked, full, _batches(), config)

    # Assert
    assert torch.equal(flatten_params(dense), flatten_params(masked))
    assert dense_result == masked_result


@pytest.mark.parametrize(
    ("mask_size", "batches", "match"),
    [
        (ParamLayout.of(_model()).num_params + 1, _batches(), "mask covers 84 entries.*83"),
        (ParamLayout.of(_model()).num_params, [], "no batches"),
    ],
)
def test_masked_train_rejects_invalid(mask_size: int, batches: list, match: str) -> None:
    # Prepare
    model = _model()
    mask = Mask(torch.ones(mask_size, dtype=torch.bool))

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        masked_train(model, mask, batches, TrainConfig())


def test_masked_train_rejects_mask_with_nothing_trainable() -> None:
    model = _model()
    empty = Mask(torch.zeros(ParamLayout.of(model).num_params, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no trainable"):
        masked_train(model, empty, _batches(), TrainConfig())
    assert all(p.requires_grad for p in model.parameters())


# --- evaluate --------------------------------------------------------------------------------


def test_evaluate_matches_oracle_and_restores_mode() -> None:
    # Prepare: a fixed linear classifier; logits are computed by hand below.
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(p=0.9))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model[0].bias.zero_()
    model.train()
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0], [1.0, 0.5], [0.2, 0.1]])
    y = torch.tensor([0, 1, 2, 1, 2])  # predictions are 0, 1, 2, 0, 0: 3 of 5 right
    loader = [(x[:2], y[:2]), (x[2:], y[2:])]
    expected_loss = 0.0
    for row, label in zip(x.tolist(), y.tolist(), strict=True):
        logits = [row[0], row[1], -row[0] - row[1]]
        expected_loss += math.log(sum(math.exp(v) for v in logits)) - logits[label]
    expected_loss /= 5

    # Execute
    result = evaluate(model, loader)

    # Assert: Dropout(0.9) in train mode would scramble the logits, so this also checks
    # eval mode was used.
    assert result.num_examples == 5
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert isinstance(result, EvalResult)
    assert model.training and model[1].training


def test_evaluate_rejects_empty_loader() -> None:
    with pytest.raises(ValueError, match="no batches"):
        evaluate(_model(), [])
