"""Client holdings: exact round trips, a size the mask's, and no silent use of a damaged blob."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import codec
from fedfish.fisher import diagonal_fisher
from fedfish.holding import Holding, HoldingError
from fedfish.layout import ParamLayout, flatten_params, params_digest
from fedfish.masks import Mask, random_mask, top_k_mask
from fedfish.models import build_model, head_names, seeded_model

P = 5_000


def _base0() -> torch.Tensor:
    return torch.randn(P, generator=torch.Generator().manual_seed(0))


def _held_under_mask(mask: Mask, base0: torch.Tensor, version: int = 3, *, dense: bool = False) -> Holding:
    """A node that got the mask and the values under it (or, ``dense``, could not rebuild base0)."""
    holding = Holding(run_token="t")
    holding.set_mask(codec.encode_mask(mask), mask.version)
    model = base0.clone()
    model[mask.bits] += 0.5
    holding.set_model(model, version, None if dense else base0, "d")
    return holding


@settings(max_examples=40, deadline=None)
@given(density=st.floats(0.001, 0.9), seed=st.integers(0, 1000), dense=st.booleans(), memory=st.booleans())
def test_round_trip_is_exact(density: float, seed: int, dense: bool, memory: bool) -> None:
    # Prepare
    base0 = _base0()
    mask = random_mask(P, density, seed=seed, version=2)
    holding = _held_under_mask(mask, base0, dense=dense)
    if memory:
        holding.memory, holding.memory_mask_version = torch.randn(mask.k), 2
    # Execute
    back = Holding.from_bytes(holding.to_bytes())
    # Assert
    assert torch.equal(back.model_vector(base0), holding.model_vector(base0))
    assert (back.model_version, back.mask_version, back.base_digest, back.run_token) == (3, 2, holding.base_digest, "t")
    assert back.held_mask() == mask
    assert back.is_dense == dense
    assert (back.memory is None) == (not memory)
    if memory:
        assert torch.equal(back.memory, holding.memory)


def test_overrides_that_are_not_the_mask_are_stored_as_their_own_positions() -> None:
    # Prepare: a mask refresh: the node holds changes under the old mask and the new one
    base0 = _base0()
    old, new = random_mask(P, 0.05, seed=1, version=1), random_mask(P, 0.05, seed=2, version=2)
    holding = _held_under_mask(new, base0)
    model = holding.model_vector(base0)
    model[old.bits] -= 1.0
    # Execute
    holding.set_model(model, 4, base0, "d")
    back = Holding.from_bytes(holding.to_bytes())
    # Assert
    assert torch.equal(back.positions, old.bits | new.bits)
    assert torch.equal(back.model_vector(base0), model)


def test_negative_zero_is_kept_bit_for_bit() -> None:
    base0 = torch.zeros(P)
    holding = Holding()
    model = base0.clone()
    model[7] = -0.0
    holding.set_model(model, 1, base0, "d")
    assert torch.equal(Holding.from_bytes(holding.to_bytes()).model_vector(base0).view(torch.int32),
                       model.view(torch.int32))


def test_a_fish_mask_holding_is_within_10_percent_of_its_values() -> None:
    # Prepare: the CNN's seeded init, a 5% Fisher mask, the model moved under the mask
    model = seeded_model("cnn", 0)
    layout = ParamLayout.of(model)
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    mask = top_k_mask(diagonal_fisher(model, inputs, labels), 0.05, always_include=layout.indicator(head_names(model)))
    base0 = flatten_params(model)
    # Execute
    holding = _held_under_mask(mask, base0)
    size = len(holding.to_bytes())
    # Assert: client state is the mask's values plus a few percent (the mask itself, headers)
    assert 4 * mask.k < size <= 1.1 * 4 * mask.k
    assert size < 4 * layout.num_params / 15


def test_every_flipped_bit_and_truncation_is_detected() -> None:
    # Prepare
    blob = _held_under_mask(random_mask(P, 0.02, seed=0, version=1), _base0()).to_bytes()
    # Execute / Assert
    for position in range(0, len(blob), 97):
        corrupt = bytearray(blob)
        corrupt[position] ^= 0x04
        with pytest.raises(HoldingError):
            Holding.from_bytes(bytes(corrupt))
    for length in (0, 5, len(blob) // 2, len(blob) - 1):
        with pytest.raises(HoldingError):
            Holding.from_bytes(blob[:length])
    with pytest.raises(HoldingError, match="format"):
        Holding.from_bytes(blob[:4] + b"\x09" + blob[5:])


def test_model_vector_needs_its_base() -> None:
    holding = _held_under_mask(random_mask(P, 0.02, seed=0, version=1), _base0())
    with pytest.raises(ValueError, match="version-0 base"):
        holding.model_vector(None)
    with pytest.raises(ValueError, match="no model held"):
        Holding().model_vector(_base0())


def test_seeded_model_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = flatten_params(seeded_model("cnn", 5))
    after = torch.rand(3)
    assert torch.equal(before, after)
    assert params_digest(first) == params_digest(flatten_params(seeded_model("cnn", 5)))
    assert params_digest(first) != params_digest(flatten_params(seeded_model("cnn", 6)))
    assert flatten_params(build_model("cnn")).numel() == first.numel()
