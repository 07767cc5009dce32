"""Update rules and aggregation: changes survive low-precision uplinks; the server applies them exactly.

Oracles: the true change (fp64), dtype rounding bounds from IEEE (fp16: 2**-11, bf16: 2**-8
relative) and the int8 step (block max / 127), np.average for the weighted mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedfish import codec
from fedfish.aggregation import apply_change, weighted_mean
from fedfish.holding import Holding
from fedfish.masks import Mask, random_mask
from fedfish.updates import DecodedUpdate, EncodeSettings, MaskedDelta, TopKErrorFeedback, update_rule

P = 20_000
MASK = random_mask(P, 0.1, seed=3, version=4)
RELATIVE = {"fp16": 2.0**-11, "bf16": 2.0**-8}


def _weights_and_change(scale: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(P, generator=generator)
    # A change 1e-4 times each weight's size, with random signs.
    signs = torch.where(torch.rand(P, generator=generator) < 0.5, -1.0, 1.0)
    return weights, scale * weights.abs() * signs


def _server_applies(payload: bytes, weights: torch.Tensor) -> torch.Tensor:
    update = MaskedDelta().decode(payload, MASK, P)
    new, changed = apply_change(weights, weighted_mean([update], [1.0], P))
    assert torch.equal(changed, MASK.bits)
    return (new.double() - weights.double())[MASK.bits]


def _bound(dtype: str, change: torch.Tensor) -> torch.Tensor:
    """Largest error the dtype allows on each entry of ``change`` (plus fp32 rounding of w + delta)."""
    fp32_rounding = 2.0**-23 * 2 * change.abs().max() * 1e4  # |w| <= 1e4 |change|: one ulp of w
    if dtype == "int8":
        blocks = torch.nn.functional.pad(change.abs(), (0, -len(change) % 256)).view(-1, 256).amax(dim=1)
        return blocks.repeat_interleave(256)[: len(change)].double() / 127 + fp32_rounding
    return RELATIVE[dtype] * change.abs().double() + fp32_rounding


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_a_tiny_update_survives_a_low_precision_uplink_as_a_change(dtype: str) -> None:
    # Prepare
    weights, change = _weights_and_change()
    trained = weights + change
    settings = EncodeSettings(dtype=dtype, generator=torch.Generator().manual_seed(1))
    # Execute: the client sends trained - received; the server adds it to its fp32 weights
    payload = MaskedDelta().encode(trained - weights, MASK, Holding(), settings)
    recovered = _server_applies(payload, weights)
    # Assert: within the dtype's error of the *change* (relative to the change, not the weight)
    truth = (trained.double() - weights.double())[MASK.bits]
    error = (recovered - truth).abs()
    bound = _bound(dtype, truth.float())
    assert bool((error <= bound).all()), float((error / bound).max())
    assert float(error.norm() / truth.norm()) < (RELATIVE.get(dtype, 1 / 127) * 2)
    # ... where sending the trained values in the same dtype loses the change entirely
    values_payload = codec.encode_values(trained[MASK.bits], MASK, dtype, generator=torch.Generator())
    via_values = codec.decode_values(values_payload, MASK).double() - weights.double()[MASK.bits]
    assert bool(((via_values - truth).abs() > bound).any())
    assert float((via_values - truth).norm() / truth.norm()) > 0.25


def test_error_feedback_sends_everything_eventually() -> None:
    # Prepare: five rounds of changes under one mask, int8 uplinks with error feedback
    generator = torch.Generator().manual_seed(2)
    holding = Holding()
    rule = MaskedDelta()
    settings = EncodeSettings(dtype="int8", error_feedback=True, generator=generator)
    changes = [torch.randn(P, generator=generator) * 1e-3 for _ in range(5)]
    # Execute
    sent = sum(rule.decode(rule.encode(c, MASK, holding, settings), MASK, P).values for c in changes)
    # Assert: what was sent plus what is remembered is exactly what was meant to be sent
    total = sum(c[MASK.bits] for c in changes)
    torch.testing.assert_close(sent + holding.memory, total, rtol=0, atol=1e-6)
    assert holding.memory_mask_version == MASK.version
    assert float(holding.memory.abs().max()) <= float(total.abs().max())
    # A new mask version starts a fresh memory (old entries belong to other positions)
    other = random_mask(P, 0.1, seed=4, version=5)
    payload = rule.encode(changes[0], other, holding, settings)
    torch.testing.assert_close(rule.decode(payload, other, P).values + holding.memory, changes[0][other.bits],
                               rtol=0, atol=1e-6)


def test_topk_with_error_feedback_keeps_the_remainder() -> None:
    # Prepare
    holding = Holding()
    change = torch.randn(P, generator=torch.Generator().manual_seed(5))
    # Execute
    rule = update_rule("topk-ef")
    decoded = rule.decode(rule.encode(change, None, holding, EncodeSettings(density=0.01)), None, P)
    # Assert: the 1% largest entries are sent exactly (fp32) and the rest is remembered
    assert isinstance(rule, TopKErrorFeedback)
    assert int(decoded.positions.sum()) == 200
    assert float(change.abs()[decoded.positions].min()) >= float(change.abs()[~decoded.positions].max())
    torch.testing.assert_close(decoded.dense(P) + holding.memory, change, rtol=0, atol=0)


def test_weighted_mean_matches_np_average_for_every_shape_of_update() -> None:
    # Prepare: two masked updates, then two sparse updates at different positions, then one dense
    generator = torch.Generator().manual_seed(6)
    a, b = (torch.randn(MASK.k, generator=generator) for _ in range(2))
    masked = [DecodedUpdate(MASK.bits, a), DecodedUpdate(MASK.bits.clone(), b)]
    pos1, pos2 = torch.zeros(P, dtype=torch.bool), torch.zeros(P, dtype=torch.bool)
    pos1[:5], pos2[3:9] = True, True
    sparse = [DecodedUpdate(pos1, torch.ones(5)), DecodedUpdate(pos2, torch.full((6,), 3.0))]
    # Execute
    mean_masked = weighted_mean(masked, [30, 10], P)
    mean_sparse = weighted_mean(sparse, [1, 3], P)
    mean_dense = weighted_mean([*sparse, DecodedUpdate(None, torch.ones(P))], [1, 1, 2], P)
    # Assert
    np.testing.assert_allclose(mean_masked.values, np.average(np.stack([a, b]), axis=0, weights=[30, 10]),
                               rtol=1e-6, atol=1e-7)
    assert torch.equal(mean_masked.positions, MASK.bits)
    expected = np.zeros(P)
    expected[:5] += 0.25
    expected[3:9] += 0.75 * 3
    assert torch.equal(mean_sparse.positions, pos1 | pos2)
    np.testing.assert_allclose(mean_sparse.values, expected[:9], rtol=1e-6)
    assert mean_dense.positions is None and float(mean_dense.values[100]) == pytest.approx(0.5)


def test_weighted_mean_refuses_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="as many weights"):
        weighted_mean([], [], P)
    with pytest.raises(ValueError, match="sum to > 0"):
        weighted_mean([DecodedUpdate(None, torch.ones(P))], [0.0], P)


def test_masked_rule_needs_a_mask_and_unknown_rules_are_named() -> None:
    with pytest.raises(ValueError, match="needs the round's mask"):
        MaskedDelta().encode(torch.zeros(P), None, Holding(), EncodeSettings())
    with pytest.raises(ValueError, match="unknown update rule 'gzip'"):
        update_rule("gzip")
    assert Mask(MASK.bits).k == MASK.k
