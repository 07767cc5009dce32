"""Tests for fedfish.masks: mask container, budgets, selection rules and scores."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedfish.layout import ParamLayout
from fedfish.masks import (
    Mask,
    k_for_density,
    magnitude_scores,
    model_saliency,
    per_layer_top_k_mask,
    random_mask,
    saliency_scores,
    top_k_mask,
)


def _bits(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def _oracle_selection(scores: list[float], head: list[bool], k: int) -> set[int]:
    """Head entries plus the best others by (score descending, index ascending)."""
    chosen = {i for i, h in enumerate(head) if h}
    others = sorted((i for i, h in enumerate(head) if not h), key=lambda i: (-scores[i], i))
    return chosen | set(others[: k - len(chosen)])


# --- Mask -----------------------------------------------------------------------------


def test_mask_properties() -> None:
    # Prepare
    mask = Mask(_bits(0, 1, 1, 0, 0, 0, 0, 1), version=3)

    # Execute / Assert
    assert mask.num_params == 8
    assert mask.k == 3
    assert mask.density == 3 / 8
    assert mask.version == 3
    assert mask.indices().dtype == torch.int64
    assert mask.indices().tolist() == [1, 2, 7]


@pytest.mark.parametrize(
    ("bits", "version", "match"),
    [
        (torch.tensor([0, 1]), 0, "bool"),
        ([True, False], 0, "bool"),
        (torch.ones(2, 2, dtype=torch.bool), 0, "1-D"),
        (torch.ones(0, dtype=torch.bool), 0, "1-D"),
        (torch.ones(3, dtype=torch.bool), -1, "version"),
        (torch.ones(3, dtype=torch.bool), 1.0, "version"),
        (torch.ones(3, dtype=torch.bool), True, "version"),
    ],
)
def test_mask_rejects_invalid(bits: object, version: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mask(bits, version)  # type: ignore[arg-type]


def test_mask_digest_matches_independent_hash() -> None:
    # Prepare
    bits = _bits(1, 0, 1, 1, 0, 0, 0, 0, 1, 1)
    expected = hashlib.sha256(
        np.packbits(np.array(bits.tolist(), dtype=bool)).tobytes() + (10).to_bytes(8, "little")
    ).hexdigest()[:16]

    # Execute
    digest = Mask(bits).digest

    # Assert
    assert digest == expected
    assert len(digest) == 16


def test_mask_digest_distinguishes_lengths_with_same_packed_bytes() -> None:
    # Prepare: 9 and 16 bits pack to the same bytes when the tail is zero.
    short = Mask(_bits(1, 0, 0, 0, 0, 0, 0, 0, 1))
    long = Mask(torch.cat([_bits(1, 0, 0, 0, 0, 0, 0, 0, 1), torch.zeros(7, dtype=torch.bool)]))

    # Execute / Assert
    assert np.packbits(short.bits.numpy()).tobytes() == np.packbits(long.bits.numpy()).tobytes()
    assert short.digest != long.digest


def test_mask_equality_compares_contents_not_identity() -> None:
    # Prepare
    a = Mask(_bits(1, 0, 1), version=2)
    same = Mask(_bits(1, 0, 1), version=2)
    other_bits = Mask(_bits(1, 1, 0), version=2)
    other_version = Mask(_bits(1, 0, 1), version=3)

    # Execute / Assert
    assert a == same and hash(a) == hash(same)
    assert a != other_bits
    assert a != other_version
    assert a != "not a mask"


# --- k_for_density ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_params", "density", "expected"),
    [(1000, 0.05, 50), (10, 0.01, 1), (10, 0.25, 2), (7, 1.0, 7), (3, 0.5, 2)],
)
def test_k_for_density(num_params: int, density: float, expected: int) -> None:
    assert k_for_density(num_params, density) == expected


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01, math.nan, math.inf, "0.5"])
def test_k_for_density_rejects_density_outside_range(density: object) -> None:
    with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
        k_for_density(100, density)  # type: ignore[arg-type]


def test_k_for_density_rejects_empty_vector() -> None:
    with pytest.raises(ValueError, match="num_params"):
        k_for_density(0, 0.5)


# --- top_k_mask ---------------------------------------------------------------------------


def test_top_k_mask_small_example_with_head_and_ties() -> None:
    # Prepare: k = 4; entry 5 is the head; entries 1, 2 and 4 tie at 3.0.
    scores = torch.tensor([0.0, 3.0, 3.0, 9.0, 3.0, -1.0, 1.0, 2.0])
    head = _bits(0, 0, 0, 0, 0, 1, 0, 0)

    # Execute
    mask = top_k_mask(scores, 0.5, always_include=head, version=4)

    # Assert: head, the 9.0 and the two lowest-index 3.0s.
    assert mask.indices().tolist() == [1, 2, 3, 5]
    assert mask.version == 4


@pytest.mark.parametrize(
    ("scores", "kwargs", "match"),
    [
        (torch.tensor([1.0, math.nan, 2.0]), {}, "NaN"),
        (torch.ones(2, 2), {}, "1-D"),
        (torch.ones(3, dtype=torch.int64), {}, "floating"),
        (torch.ones(4), {"always_include": torch.ones(3, dtype=torch.bool)}, r"\(4,\).*\(3,\)"),
        (torch.ones(3), {"always_include": torch.ones(3)}, "bool"),
        (torch.ones(10), {"always_include": torch.ones(10, dtype=torch.bool)}, "10 entries.*k=5"),
    ],
)
def test_top_k_mask_rejects_invalid(scores: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        top_k_mask(scores, 0.5, **kwargs)


_sizes = st.integers(min_value=1, max_value=60)


@st.composite
def _selection_case(draw: st.DrawFn) -> tuple[list[float], list[bool], float]:
    n = draw(_sizes)
    # Small integer scores make ties common, which exercises the tie-break.
    scores = draw(st.lists(st.integers(-3, 3).map(float), min_size=n, max_size=n))
    head = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    density = draw(st.floats(min_value=0.01, max_value=1.0))
    # Keep cases where the head fits in the budget.
    if sum(head) > k_for_density(n, density):
        head = [False] * n
    return scores, head, density


@settings(max_examples=150, deadline=None)
@given(_selection_case())
def test_top_k_mask_properties(case: tuple[list[float], list[bool], float]) -> None:
    # Prepare
    scores, head, density = case
    k = k_for_density(len(scores), density)
    scores_t, head_t = torch.tensor(scores), torch.tensor(head)

    # Execute
    mask = top_k_mask(scores_t, density, always_include=head_t)
    again = top_k_mask(scores_t.clone(), density, always_include=head_t.clone())

    # Assert
    assert mask.k == k
    assert bool(mask.bits[head_t].all())
    picked = mask.bits & ~head_t
    left_out = ~mask.bits
    if picked.any() and left_out.any():
        assert scores_t[picked].min() >= scores_t[left_out].max()
    assert mask == again
    assert set(mask.indices().tolist()) == _oracle_selection(scores, head, k)


# --- per_layer_top_k_mask -------------------------------------------------------------------


def _layout() -> ParamLayout:
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 3))
    return ParamLayout.of(model)  # sizes 200, 20, 60, 3


def test_per_layer_top_k_mask_budget_per_tensor_and_head() -> None:
    # Prepare
    layout = _layout()
    scores = torch.arange(layout.num_params, dtype=torch.float32).flip(0)
    head = layout.indicator(["1.weight", "1.bias"])

    # Execute
    mask = per_layer_top_k_mask(scores, layout, 0.1, always_include=head)

    # Assert: each non-head tensor keeps its own top 10% (its lowest indices, as scores
    # decrease with the index); the head tensors are fully in.
    for name, numel in zip(layout.names, layout.numels, strict=True):
        part = mask.bits[layout.slice_of(name)]
        if name.startswith("1."):
            assert bool(part.all())
        else:
            keep = k_for_density(numel, 0.1)
            assert part.nonzero().flatten().tolist() == list(range(keep))


def test_per_layer_top_k_mask_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="283 entries, got 282"):
        per_layer_top_k_mask(torch.ones(282), _layout(), 0.1)


# --- random_mask ---------------------------------------------------------------------------


def test_random_mask_is_seeded_and_keeps_budget_and_head() -> None:
    # Prepare
    head = torch.zeros(1000, dtype=torch.bool)
    head[-10:] = True

    # Execute
    a = random_mask(1000, 0.05, seed=7, always_include=head, version=2)
    b = random_mask(1000, 0.05, seed=7, always_include=head, version=2)
    c = random_mask(1000, 0.05, seed=8, always_include=head, version=2)

    # Assert
    assert a.k == 50 and c.k == 50
    assert bool(a.bits[head].all())
    assert a == b
    assert a != c
    assert a.version == 2


# --- scores --------------------------------------------------------------------------------


def test_magnitude_and_saliency_scores() -> None:
    # Prepare
    w = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    g = torch.tensor([1.0, -4.0, 0.0], dtype=torch.float64)

    # Execute
    mag = magnitude_scores(w)
    sal = saliency_scores(g, w)

    # Assert
    assert mag.dtype == torch.float32 and mag.tolist() == [2.0, 0.5, 3.0]
    assert sal.dtype == torch.float32 and sal.tolist() == [2.0, 2.0, 0.0]


@pytest.mark.parametrize(
    ("grads", "params", "match"),
    [
        (torch.ones(3), torch.ones(4), "same size, got 3 and 4"),
        (torch.ones(3, 1), torch.ones(3), "grads must be a non-empty 1-D"),
        (torch.ones(3), torch.ones(0), "params must be a non-empty 1-D"),
    ],
)
def test_saliency_scores_rejects_invalid(
    grads: torch.Tensor, params: torch.Tensor, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        saliency_scores(grads, params)


def test_magnitude_scores_rejects_non_flat() -> None:
    with pytest.raises(ValueError, match="params must be a non-empty 1-D"):
        magnitude_scores(torch.ones(2, 2))


def test_model_saliency_is_abs_gradient_times_weight() -> None:
    # Prepare: a linear softmax model, whose mean cross-entropy gradient is known in closed form
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    p = torch.softmax(model(x), dim=1).detach()
    d = (p - torch.nn.functional.one_hot(y, 3).float()) / len(x)  # dL/dlogits
    expected = torch.cat([(d.T @ x).reshape(-1) * model.weight.detach().reshape(-1),
                          d.sum(0) * model.bias.detach()]).abs()
    # Execute
    got = model_saliency(model, x, y)
    # Assert
    torch.testing.assert_close(got, expected)
    assert model.weight.grad is None and model.bias.grad is None
