"""Tests for fedfish.codec: round trips and exact sizes (rejection: test_codec_rejection.py).

Oracles are independent of the codec: sizes from the documented header layout
(tests/codec_bytes.py), a per-entry Python LEB128 encoder, ``np.packbits`` and torch's own
dtype casts.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import codec
from fedfish.codec import Kind
from fedfish.fisher import diagonal_fisher
from fedfish.layout import ParamLayout
from fedfish.masks import Mask, random_mask, top_k_mask
from fedfish.models import build_model, head_names
from tests.codec_bytes import HEADER, OFF_CRC, leb128, make_mask

FLOAT_DTYPES = ("fp32", "fp16", "bf16")  # decoded values equal torch's cast; int8 is tested on its own
VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROPS = settings(max_examples=60, deadline=None)


# ----------------------------------------------------------------------------- helpers


def delta_bytes(indices: list[int]) -> bytes:
    gaps = [b - a for a, b in zip([0, *indices], indices, strict=False)]
    return leb128(gaps)


def reference_runs_body(bits: list[bool]) -> bytes:
    """The documented run-length Rice body, built one bit and one value at a time."""
    runs, current, length = [], False, 0
    for bit in bits:
        if bit == current:
            length += 1
        else:
            runs.append(length)
            current, length = bit, 1
    runs.append(length)
    values = [runs[0]] + [r - 1 for r in runs[1:]]

    def packed(bit_list: list[int]) -> bytes:
        out = bytearray((len(bit_list) + 7) // 8)
        for i, bit in enumerate(bit_list):
            out[i // 8] |= bit << (i % 8)
        return bytes(out)

    def stream(stream_values: list[int]) -> bytes:
        blocks = [stream_values[i : i + 32] for i in range(0, len(stream_values), 32)]
        params = [min(range(64), key=lambda b: (sum((v >> b) + 1 + b for v in block), b)) for block in blocks]
        param_bits = [(p >> j) & 1 for p in params for j in range(6)]
        unary, remainder = [], []
        for i, v in enumerate(stream_values):
            b = params[i // 32]
            unary += [1] * (v >> b) + [0]
            remainder += [(v >> j) & 1 for j in range(b)]
        return packed(param_bits) + packed(unary) + packed(remainder)

    return leb128([len(values)]) + stream(values[0::2]) + stream(values[1::2])


def torch_cast(values: torch.Tensor, dtype: str) -> torch.Tensor:
    return values.to(TORCH_DTYPE[dtype]).to(torch.float32)


@st.composite
def masks(draw: st.DrawFn, max_params: int = 300) -> Mask:
    num_params = draw(st.integers(1, max_params))
    bits = draw(st.lists(st.booleans(), min_size=num_params, max_size=num_params))
    return make_mask(bits, version=draw(st.integers(0, 2**32 - 1)))


def finite_values(size: int) -> st.SearchStrategy[torch.Tensor]:
    # |x| <= 6e4 stays finite in fp16 (max 65504) and bf16; subnormals included.
    floats = st.floats(-6e4, 6e4, width=32, allow_nan=False, allow_infinity=False)
    return st.lists(floats, min_size=size, max_size=size).map(lambda xs: torch.tensor(xs, dtype=torch.float32))


# ----------------------------------------------------------------------------- round trips and sizes


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@PROPS
@given(data=st.data())
def test_values_round_trip_equals_torch_cast_and_size_is_header_plus_k_values(dtype: str, data: st.DataObject) -> None:
    # Prepare
    mask = data.draw(masks())
    values = data.draw(finite_values(mask.k))
    # Execute
    payload = codec.encode_values(values, mask, dtype)
    decoded = codec.decode_values(payload, mask)
    # Assert
    assert len(payload) == HEADER + mask.k * VALUE_BYTES[dtype]
    assert decoded.dtype == torch.float32 and decoded.shape == (mask.k,)
    assert torch.equal(decoded, torch_cast(values, dtype))


EDGE_VALUES = [
    65504.0, 65519.99, -65519.0,  # fp16 max and the largest values that round down to it
    6e-8, 1e-45, -0.0,  # fp16 subnormal, fp32 subnormal, negative zero
    1.0 + 2**-8, 1.0 + 3 * 2**-8,  # bf16 ties: round to even, down then up
    1.0 + 2**-11, 1.0 + 3 * 2**-11,  # fp16 ties
    3.3e38,  # finite in bf16, not in fp16
]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_rounding_matches_torch_on_edge_values(dtype: str) -> None:
    # Prepare
    values = torch.tensor([v for v in EDGE_VALUES if dtype == "bf16" or abs(v) < 7e4])
    # Execute
    decoded = codec.decode_dense(codec.encode_dense(values, dtype), values.numel())
    # Assert
    assert torch.equal(decoded.view(torch.int32), torch_cast(values, dtype).view(torch.int32))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@PROPS
@given(data=st.data())
def test_dense_round_trip_equals_torch_cast_and_size(dtype: str, data: st.DataObject) -> None:
    # Prepare
    num_params = data.draw(st.integers(1, 300))
    vector = data.draw(finite_values(num_params))
    # Execute
    payload = codec.encode_dense(vector, dtype)
    decoded = codec.decode_dense(payload, num_params)
    # Assert
    assert len(payload) == HEADER + num_params * VALUE_BYTES[dtype]
    assert torch.equal(decoded, torch_cast(vector, dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@PROPS
@given(data=st.data())
def test_sparse_round_trip_and_body_is_values_then_reference_varints(dtype: str, data: st.DataObject) -> None:
    # Prepare
    num_params = data.draw(st.integers(1, 2**40))
    indices = sorted(data.draw(st.sets(st.integers(0, num_params - 1), max_size=50)))
    values = data.draw(finite_values(len(indices)))
    # Execute
    payload = codec.encode_sparse(torch.tensor(indices, dtype=torch.int64), values, num_params, dtype)
    got_indices, got_values = codec.decode_sparse(payload, num_params)
    # Assert
    value_size = len(indices) * VALUE_BYTES[dtype]
    assert payload[HEADER + value_size :] == delta_bytes(indices)
    assert len(payload) == HEADER + value_size + len(delta_bytes(indices))
    assert got_indices.dtype == torch.int64 and got_indices.tolist() == indices
    assert torch.equal(got_values, torch_cast(values, dtype))


@PROPS
@given(mask=masks(), form=st.sampled_from(["bitmap", "delta"]))
def test_mask_round_trips_in_both_forced_forms_with_reference_bodies(mask: Mask, form: str) -> None:
    # Execute
    payload = codec.encode_mask(mask, form)
    decoded = codec.decode_mask(payload)
    # Assert
    indices = mask.indices().tolist()
    if form == "bitmap":
        expected_body = np.packbits(mask.bits.numpy(), bitorder="little").tobytes()
        assert codec.payload_kind(payload) == "mask_bitmap"
        assert len(payload) == HEADER + math.ceil(mask.num_params / 8)
    else:
        expected_body = delta_bytes(indices)
        assert codec.payload_kind(payload) == "mask_delta"
    assert payload[HEADER:] == expected_body
    assert decoded == mask  # bits and version
    assert decoded.digest == mask.digest


@PROPS
@given(mask=masks(max_params=2000))
def test_mask_runs_form_round_trips_with_the_reference_body(mask: Mask) -> None:
    # Execute
    payload = codec.encode_mask(mask, "runs")
    # Assert
    assert codec.payload_kind(payload) == "mask_runs"
    assert payload[HEADER:] == reference_runs_body(mask.bits.tolist())
    assert codec.decode_mask(payload) == mask


@PROPS
@given(mask=masks(max_params=2000))
def test_mask_auto_picks_the_smallest_form(mask: Mask) -> None:
    # Prepare
    sizes = {
        "mask_bitmap": math.ceil(mask.num_params / 8),
        "mask_delta": len(delta_bytes(mask.indices().tolist())),
        "mask_runs": len(reference_runs_body(mask.bits.tolist())),
    }
    # Execute
    payload = codec.encode_mask(mask)
    # Assert: the smallest, the first in that order on a tie
    smallest = min(sizes, key=sizes.__getitem__)
    assert len(payload) == HEADER + sizes[smallest]
    assert codec.payload_kind(payload) == smallest
    assert codec.decode_mask(payload) == mask


def test_runs_form_of_a_fish_mask_is_below_the_order0_entropy() -> None:
    # Prepare: a real FISH mask: Fisher of the FedAvg CNN (seeded) on 64 random inputs, 5%
    torch.manual_seed(0)
    model = build_model("cnn")
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator)
    layout = ParamLayout.of(model)
    mask = top_k_mask(diagonal_fisher(model, inputs, labels), 0.05, always_include=layout.indicator(head_names(model)))
    # Execute
    sizes = {form: len(codec.encode_mask(mask, form)) for form in ("bitmap", "delta", "runs")}
    # Assert: a clustered mask codes below H(k/P) * P / 8 bytes, the bound for a uniform one
    density = mask.k / mask.num_params
    entropy_bytes = -(density * math.log2(density) + (1 - density) * math.log2(1 - density)) * mask.num_params / 8
    assert sizes["runs"] < 0.6 * entropy_bytes < sizes["delta"] < sizes["bitmap"]
    assert len(codec.encode_mask(mask)) == sizes["runs"]
    assert codec.decode_mask(codec.encode_mask(mask)) == mask


@pytest.mark.parametrize(
    ("density", "expected_kind"), [(0.01, "mask_runs"), (0.5, "mask_bitmap")]
)
def test_mask_auto_uses_runs_for_sparse_and_bitmap_for_dense_masks(density: float, expected_kind: str) -> None:
    # Prepare
    mask = random_mask(10_000, density, seed=1, version=7)
    # Execute
    payload = codec.encode_mask(mask)
    # Assert
    assert codec.payload_kind(payload) == expected_kind
    assert codec.decode_mask(payload) == mask


@PROPS
@given(data=st.data())
def test_dense_values_and_sparse_transport_reconstruct_identical_updates(data: st.DataObject) -> None:
    # Prepare: an fp32 update that is zero outside the mask, as after masked training.
    mask = data.draw(masks())
    idx = mask.indices()
    update = torch.zeros(mask.num_params)
    update[idx] = data.draw(finite_values(mask.k))
    # Execute
    dense = codec.decode_dense(codec.encode_dense(update), mask.num_params)
    via_values = torch.zeros(mask.num_params)
    via_values[idx] = codec.decode_values(codec.encode_values(update[idx], mask), mask)
    sparse_idx, sparse_vals = codec.decode_sparse(codec.encode_sparse(idx, update[idx], mask.num_params), mask.num_params)
    via_sparse = torch.zeros(mask.num_params)
    via_sparse[sparse_idx] = sparse_vals
    # Assert (atol=0: bit-identical)
    assert torch.equal(dense, update)
    assert torch.equal(via_values, dense)
    assert torch.equal(via_sparse, dense)


@PROPS
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_int8_round_trip_is_within_one_step_of_its_block_and_sized_as_documented(data: st.DataObject, seed: int) -> None:
    # Prepare
    n = data.draw(st.integers(0, 700))
    values = data.draw(finite_values(n))
    # Execute
    payload = codec.encode_dense(values, "int8", generator=torch.Generator().manual_seed(seed))
    again = codec.encode_dense(values, "int8", generator=torch.Generator().manual_seed(seed))
    decoded = codec.decode_dense(payload, n)
    # Assert: 4 bytes of scale per 256 values, one byte per value; error below one step
    assert len(payload) == HEADER + 4 * math.ceil(n / 256) + n
    assert payload == again
    for start in range(0, n, 256):
        block = values[start : start + 256]
        step = float(block.abs().max()) / 127
        assert (decoded[start : start + 256] - block).abs().max() <= step * (1 + 1e-5) + 1e-30


def test_int8_stochastic_rounding_is_unbiased() -> None:
    # Prepare: values at awkward fractions of a step, where round-to-nearest would be biased
    values = torch.tensor([1.0, 0.3, -0.71, 0.05, -0.999, 0.5, 0.0, 1e-3] * 40)
    step = 1.0 / 127
    generator = torch.Generator().manual_seed(0)
    draws = 2000
    # Execute
    mean = sum(codec.decode_dense(codec.encode_dense(values, "int8", generator=generator), 320)
               for _ in range(draws)) / draws
    # Assert: the rounding error of one draw is at most one step (std <= step / 2), so the
    # mean of 2000 draws lies within 5 standard errors of the value; nearest rounding misses it
    tolerance = 5 * (step / 2) / math.sqrt(draws)
    assert (mean - values).abs().max() < tolerance
    nearest = torch.round(values / step) * step
    assert (nearest - values).abs().max() > 5 * tolerance


def test_uplink_values_payload_is_within_2_percent_of_raw_values_at_83k() -> None:
    # Prepare: FedAvgCNN size at 5% density gives k ~ 83k.
    mask = random_mask(1_663_370, 0.05, seed=0)
    values = torch.randn(mask.k)
    # Execute
    payload = codec.encode_values(values, mask)
    # Assert
    assert 83_000 <= mask.k <= 84_000
    assert len(payload) <= 1.02 * mask.k * 4
    assert len(payload) == HEADER + 4 * mask.k


def test_parse_header_reports_the_fields() -> None:
    # Prepare
    mask = make_mask([True, False, True, True, False], version=9)
    payload = codec.encode_values(torch.tensor([1.0, 2.0, 3.0]), mask, "fp16")
    # Execute
    header = codec.parse_header(payload)
    # Assert
    assert codec.HEADER_SIZE == HEADER
    assert header.kind is Kind.VALUES and codec.payload_kind(payload) == "values"
    assert (header.dtype, header.mask_version, header.count, header.num_params) == ("fp16", 9, 3, 5)
    assert header.digest == mask.digest
    assert header.crc == struct.unpack_from("<I", payload, OFF_CRC)[0]
    assert codec.parse_header(codec.encode_mask(mask)).dtype is None


def test_encoders_accept_an_empty_mask_and_a_non_contiguous_input() -> None:
    # Prepare
    empty = make_mask([False] * 20, version=1)
    strided = torch.arange(10, dtype=torch.float32)[::2]
    # Execute
    mask_back = codec.decode_mask(codec.encode_mask(empty))
    values_back = codec.decode_values(codec.encode_values(torch.zeros(0), empty), empty)
    dense_back = codec.decode_dense(codec.encode_dense(strided), 5)
    # Assert
    assert mask_back == empty
    assert values_back.shape == (0,)
    assert dense_back.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
