"""Tests for fedfish.codec: round trips, exact sizes, and rejection of every corruption.

Oracles are independent of the codec: sizes from the documented header layout, a
per-entry Python LEB128 encoder, ``np.packbits``, torch's own dtype casts, and a CRC
recomputed with zlib from the documented layout to forge otherwise-valid payloads.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import codec
from fedfish.codec import CodecError, Kind
from fedfish.fisher import diagonal_fisher
from fedfish.layout import ParamLayout
from fedfish.masks import Mask, random_mask, top_k_mask
from fedfish.models import build_model, head_names

HEADER = 40
FLOAT_DTYPES = ("fp32", "fp16", "bf16")  # decoded values equal torch's cast; int8 is tested on its own
VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROPS = settings(max_examples=60, deadline=None)

# Header byte offsets from the layout table in fedfish.payload_header's docstring.
OFF_KIND, OFF_DTYPE, OFF_RESERVED, OFF_VERSION = 5, 6, 7, 8
OFF_COUNT, OFF_NUM_PARAMS, OFF_DIGEST, OFF_CRC = 12, 20, 28, 36


# ----------------------------------------------------------------------------- helpers


def make_mask(bits: list[bool] | np.ndarray, version: int = 0) -> Mask:
    return Mask(bits=torch.as_tensor(np.asarray(bits, dtype=bool)), version=version)


def reseal(payload: bytes | bytearray) -> bytes:
    """Recompute the CRC (over header bytes [0, 36) and the body) of a hand-edited payload."""
    data = bytearray(payload)
    crc = zlib.crc32(bytes(data[HEADER:]), zlib.crc32(bytes(data[:OFF_CRC])))
    struct.pack_into("<I", data, OFF_CRC, crc)
    return bytes(data)


def patch(payload: bytes, offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(payload)
    struct.pack_into(fmt, data, offset, value)
    return reseal(data)


def leb128(values: list[int]) -> bytes:
    """Reference unsigned LEB128, one entry at a time."""
    out = bytearray()
    for v in values:
        while True:
            byte = v & 0x7F
            v >>= 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


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


# ----------------------------------------------------------------------------- corruption

MASK = make_mask([i % 3 == 0 for i in range(40)], version=5)
SPARSE_MASK = make_mask([i in (3, 200, 1000) for i in range(2000)], version=2)
VALUES = torch.linspace(-1.0, 1.0, MASK.k)


def _samples() -> list[tuple[str, bytes, Callable[[bytes], object]]]:
    """One valid payload of every kind with the decoder that should accept it."""
    dense = torch.linspace(-2.0, 2.0, 40)
    idx = torch.tensor([3, 200, 1000])
    return [
        *[
            (f"values-{d}", codec.encode_values(VALUES, MASK, d), lambda p: codec.decode_values(p, MASK))
            for d in codec.VALUE_DTYPES
        ],
        ("dense-fp32", codec.encode_dense(dense), lambda p: codec.decode_dense(p, 40)),
        ("dense-int8", codec.encode_dense(torch.linspace(-2.0, 2.0, 300), "int8", generator=torch.Generator()),
         lambda p: codec.decode_dense(p, 300)),
        ("dense-bf16", codec.encode_dense(dense, "bf16"), lambda p: codec.decode_dense(p, 40)),
        ("mask-bitmap", codec.encode_mask(MASK, "bitmap"), codec.decode_mask),
        ("mask-delta", codec.encode_mask(SPARSE_MASK, "delta"), codec.decode_mask),
        ("mask-runs", codec.encode_mask(MASK, "runs"), codec.decode_mask),
        ("sparse-fp16", codec.encode_sparse(idx, torch.tensor([1.0, -2.0, 3.0]), 2000, "fp16"),
         lambda p: codec.decode_sparse(p, 2000)),
    ]


SAMPLES = _samples()
SAMPLE_IDS = [name for name, _, _ in SAMPLES]


@pytest.mark.parametrize(("name", "payload", "decode"), SAMPLES, ids=SAMPLE_IDS)
def test_samples_decode_unmodified(name: str, payload: bytes, decode: Callable[[bytes], object]) -> None:
    # Execute / Assert: the corruption tests below start from payloads that are valid.
    decode(payload)


@pytest.mark.parametrize(("name", "payload", "decode"), SAMPLES, ids=SAMPLE_IDS)
def test_flipping_any_bit_of_any_byte_is_rejected(name: str, payload: bytes, decode: Callable[[bytes], object]) -> None:
    for position in range(len(payload)):
        for bit in range(8):
            # Prepare
            corrupt = bytearray(payload)
            corrupt[position] ^= 1 << bit
            # Execute / Assert
            with pytest.raises(CodecError):
                decode(bytes(corrupt))


@pytest.mark.parametrize(("name", "payload", "decode"), SAMPLES, ids=SAMPLE_IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_replacing_any_byte_is_rejected(name: str, payload: bytes, decode: Callable[[bytes], object], data: st.DataObject) -> None:
    # Prepare
    position = data.draw(st.integers(0, len(payload) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != payload[position]))
    corrupt = bytearray(payload)
    corrupt[position] = new_byte
    # Execute / Assert
    with pytest.raises(CodecError):
        decode(bytes(corrupt))


@pytest.mark.parametrize(("name", "payload", "decode"), SAMPLES, ids=SAMPLE_IDS)
def test_every_truncation_is_rejected(name: str, payload: bytes, decode: Callable[[bytes], object]) -> None:
    for length in range(len(payload)):
        with pytest.raises(CodecError):
            decode(payload[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"\x80", b"junk!!!"])
@pytest.mark.parametrize(("name", "payload", "decode"), SAMPLES, ids=SAMPLE_IDS)
def test_appended_bytes_are_rejected_even_with_a_valid_crc(
    name: str, payload: bytes, decode: Callable[[bytes], object], extra: bytes
) -> None:
    for candidate in (payload + extra, reseal(payload + extra)):
        with pytest.raises(CodecError):
            decode(candidate)


def _nan_injected(dtype: str, pattern: int) -> bytes:
    """A values payload with its first value replaced by ``pattern`` and a valid CRC."""
    payload = codec.encode_values(VALUES, MASK, dtype)
    return patch(payload, HEADER, "<I" if dtype == "fp32" else "<H", pattern)


def _body_patched(payload: bytes, body: bytes, count: int | None = None) -> bytes:
    data = bytearray(payload[:HEADER] + body)
    if count is not None:
        struct.pack_into("<Q", data, OFF_COUNT, count)
    return reseal(data)


def _runs_payload(bits: list[bool], body: bytes | None = None, count: int | None = None) -> bytes:
    template = codec.encode_mask(make_mask(bits), "runs")
    return _body_patched(template, template[HEADER:] if body is None else body, count)


RUN_BITS = [False] * 5 + [True] * 3 + [False] * 4  # runs 5, 3, 4: values 5, 2, 3
INT8_TEMPLATE = codec.encode_dense(torch.linspace(-1.0, 1.0, 10), "int8", generator=torch.Generator())


def _delta_payload(body: bytes, count: int, num_params: int = 2000) -> bytes:
    template = codec.encode_mask(SPARSE_MASK, "delta")
    return patch(_body_patched(template, body, count), OFF_NUM_PARAMS, "<Q", num_params)


SPARSE_TEMPLATE = codec.encode_sparse(torch.tensor([3, 200, 1000]), torch.tensor([1.0, 2.0, 3.0]), 2000)
OTHER_SAME_VERSION = Mask(bits=torch.roll(MASK.bits, 1), version=5)  # same k and version, other digest
values_fp32 = codec.encode_values(VALUES, MASK)

FORGED = [
    ("bad-magic", lambda: reseal(b"XXSH" + values_fp32[4:]), lambda p: codec.decode_values(p, MASK), "magic"),
    ("format-version", lambda: patch(values_fp32, 4, "<B", 2), lambda p: codec.decode_values(p, MASK), "format version"),
    ("unknown-kind", lambda: patch(values_fp32, OFF_KIND, "<B", 99), lambda p: codec.decode_values(p, MASK), "kind"),
    ("kind-mismatch", lambda: codec.encode_dense(VALUES), lambda p: codec.decode_values(p, MASK), "expected VALUES, got DENSE"),
    ("mask-kind-for-dense", lambda: codec.encode_mask(MASK), lambda p: codec.decode_dense(p, 40), "expected DENSE"),
    ("unknown-dtype", lambda: patch(values_fp32, OFF_DTYPE, "<B", 7), lambda p: codec.decode_values(p, MASK), "dtype code 7"),
    ("dtype-on-mask", lambda: patch(codec.encode_mask(MASK), OFF_DTYPE, "<B", 1), codec.decode_mask, "dtype code"),
    ("reserved", lambda: patch(values_fp32, OFF_RESERVED, "<B", 1), lambda p: codec.decode_values(p, MASK), "reserved"),
    ("mask-version", lambda: codec.encode_values(VALUES, make_mask(MASK.bits, version=6)),
     lambda p: codec.decode_values(p, MASK), "mask version mismatch: expected 5, got 6"),
    ("mask-digest", lambda: codec.encode_values(VALUES, OTHER_SAME_VERSION),
     lambda p: codec.decode_values(p, MASK), "digest mismatch"),
    ("values-count", lambda: _body_patched(values_fp32, values_fp32[HEADER:-4], MASK.k - 1),
     lambda p: codec.decode_values(p, MASK), "count mismatch"),
    ("values-num-params", lambda: patch(values_fp32, OFF_NUM_PARAMS, "<Q", 41),
     lambda p: codec.decode_values(p, MASK), "num_params mismatch: expected 40, got 41"),
    ("values-body-length", lambda: _body_patched(values_fp32, values_fp32[HEADER:] + b"\0\0"),
     lambda p: codec.decode_values(p, MASK), "body length"),
    ("dense-num-params", lambda: codec.encode_dense(torch.ones(39)), lambda p: codec.decode_dense(p, 40), "num_params"),
    ("fp32-nan", lambda: _nan_injected("fp32", 0x7FC00000), lambda p: codec.decode_values(p, MASK), "finite"),
    ("fp32-inf", lambda: _nan_injected("fp32", 0xFF800000), lambda p: codec.decode_values(p, MASK), "finite"),
    ("fp16-nan", lambda: _nan_injected("fp16", 0x7E00), lambda p: codec.decode_values(p, MASK), "finite"),
    ("fp16-inf", lambda: _nan_injected("fp16", 0x7C00), lambda p: codec.decode_values(p, MASK), "finite"),
    ("bf16-nan", lambda: _nan_injected("bf16", 0x7FC0), lambda p: codec.decode_values(p, MASK), "finite"),
    ("bf16-inf", lambda: _nan_injected("bf16", 0xFF80), lambda p: codec.decode_values(p, MASK), "finite"),
    ("dense-nan", lambda: patch(codec.encode_dense(torch.ones(40)), HEADER + 8, "<I", 0x7FC00001),
     lambda p: codec.decode_dense(p, 40), "finite"),
    ("sparse-inf", lambda: patch(SPARSE_TEMPLATE, HEADER, "<I", 0x7F800000), lambda p: codec.decode_sparse(p, 2000), "finite"),
    ("sparse-num-params", lambda: SPARSE_TEMPLATE, lambda p: codec.decode_sparse(p, 1999), "num_params"),
    ("sparse-short-values", lambda: _body_patched(SPARSE_TEMPLATE, b"\0" * 5),
     lambda p: codec.decode_sparse(p, 2000), "too short"),
    ("sparse-index-count", lambda: _body_patched(SPARSE_TEMPLATE, SPARSE_TEMPLATE[HEADER:] + b"\x01"),
     lambda p: codec.decode_sparse(p, 2000), "number of varints mismatch: expected 3, got 4"),
    ("int8-nan-scale", lambda: patch(INT8_TEMPLATE, HEADER, "<I", 0x7FC00000), lambda p: codec.decode_dense(p, 10), "scales"),
    ("int8-negative-scale", lambda: patch(INT8_TEMPLATE, HEADER, "<f", -0.5), lambda p: codec.decode_dense(p, 10), "scales"),
    ("int8-inf-scale", lambda: patch(INT8_TEMPLATE, HEADER, "<I", 0x7F800000), lambda p: codec.decode_dense(p, 10), "scales"),
    ("int8-overflowing-scale", lambda: patch(INT8_TEMPLATE, HEADER, "<f", 3e38), lambda p: codec.decode_dense(p, 10), "finite"),
    ("int8-code-128", lambda: patch(INT8_TEMPLATE, HEADER + 4, "<B", 0x80), lambda p: codec.decode_dense(p, 10), "-128"),
    ("int8-length", lambda: _body_patched(INT8_TEMPLATE, INT8_TEMPLATE[HEADER:-1]), lambda p: codec.decode_dense(p, 10),
     "body length"),
    ("runs-sum", lambda: patch(_runs_payload(RUN_BITS), OFF_NUM_PARAMS, "<Q", 13), codec.decode_mask, "cover 12 entries"),
    ("runs-count", lambda: _runs_payload(RUN_BITS, count=4), codec.decode_mask, "number of set bits mismatch"),
    ("runs-no-count", lambda: _runs_payload(RUN_BITS, body=b""), codec.decode_mask, "missing run count"),
    ("runs-too-many", lambda: _runs_payload(RUN_BITS, body=leb128([14])), codec.decode_mask, "14 runs for 12 entries"),
    ("runs-truncated-params", lambda: _runs_payload(RUN_BITS, body=leb128([3])), codec.decode_mask, "truncated"),
    ("runs-truncated-unary", lambda: _runs_payload(RUN_BITS, body=leb128([3]) + b"\x00\xff"),
     codec.decode_mask, "truncated in the unary codes"),
    ("runs-trailing", lambda: _runs_payload(RUN_BITS, body=codec.encode_mask(make_mask(RUN_BITS), "runs")[HEADER:] + b"\x00"),
     codec.decode_mask, "expected .* bytes"),
    ("runs-huge-run", lambda: _runs_payload(RUN_BITS, body=leb128([1]) + b"\x00\xff\x1f"),
     codec.decode_mask, "longer than the vector"),
    ("delta-zero-gap", lambda: _delta_payload(leb128([3, 0, 5]), 3), codec.decode_mask, "strictly increasing"),
    ("delta-out-of-range", lambda: _delta_payload(leb128([3, 1000, 1000]), 3), codec.decode_mask, "out of range"),
    ("delta-gap-out-of-range", lambda: _delta_payload(leb128([2000]), 1), codec.decode_mask, "out of range"),
    ("delta-truncated-varint", lambda: _delta_payload(leb128([3]) + b"\x81", 2), codec.decode_mask, "truncated varint"),
    ("delta-varint-overflow", lambda: _delta_payload(b"\x80" * 9 + b"\x01", 1, num_params=2**64 - 1),
     codec.decode_mask, "varint overflow"),
    ("delta-non-canonical", lambda: _delta_payload(b"\x83\x00", 1), codec.decode_mask, "non-canonical"),
    ("delta-wraparound", lambda: _delta_payload(leb128([2**62, 2**62, 2**62]), 3, num_params=2**63 + 1),
     codec.decode_mask, "strictly increasing"),
    ("delta-digest", lambda: patch(codec.encode_mask(SPARSE_MASK, "delta"), OFF_DIGEST, "<Q", 0),
     codec.decode_mask, "digest mismatch"),
    ("bitmap-popcount", lambda: patch(codec.encode_mask(MASK, "bitmap"), OFF_COUNT, "<Q", MASK.k + 1),
     codec.decode_mask, "number of set bits mismatch"),
    ("bitmap-length", lambda: patch(codec.encode_mask(MASK, "bitmap"), OFF_NUM_PARAMS, "<Q", 48),
     codec.decode_mask, "bitmap body length"),
    ("bitmap-padding", lambda: patch(codec.encode_mask(make_mask([True] * 9), "bitmap"), HEADER + 1, "<B", 3),
     codec.decode_mask, "padding"),
    ("mask-zero-params", lambda: patch(_body_patched(codec.encode_mask(MASK, "delta"), b"", 0), OFF_NUM_PARAMS, "<Q", 0),
     codec.decode_mask, "valid mask"),
    ("not-bytes", lambda: "FFSH" * 20, codec.decode_mask, "expected bytes"),
]


@pytest.mark.parametrize(("name", "forge", "decode", "match"), FORGED, ids=[f[0] for f in FORGED])
def test_forged_payloads_with_valid_crc_are_rejected_naming_the_problem(
    name: str, forge: Callable[[], bytes], decode: Callable[[bytes], object], match: str
) -> None:
    # Prepare
    payload = forge()
    # Execute / Assert
    with pytest.raises(CodecError, match=match):
        decode(payload)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


# ----------------------------------------------------------------------------- encoder input validation

ENCODE_ERRORS = [
    ("values-length", lambda: codec.encode_values(torch.ones(MASK.k + 1), MASK), f"expected {MASK.k} entries"),
    ("values-nan", lambda: codec.encode_values(torch.full((MASK.k,), float("nan")), MASK), "finite"),
    ("values-inf", lambda: codec.encode_values(torch.full((MASK.k,), float("inf")), MASK), "finite"),
    ("fp16-overflow", lambda: codec.encode_values(torch.full((MASK.k,), 1e5), MASK, "fp16"), "representable in fp16"),
    ("bf16-overflow", lambda: codec.encode_values(torch.full((MASK.k,), 3.4028e38), MASK, "bf16"), "representable in bf16"),
    ("unknown-dtype", lambda: codec.encode_values(VALUES, MASK, "fp64"), r"dtype: expected one of \('fp32', 'fp16', 'bf16', 'int8'\)"),
    ("int8-nan", lambda: codec.encode_values(torch.full((MASK.k,), float("nan")), MASK, "int8"), "finite"),
    ("values-2d", lambda: codec.encode_values(VALUES.reshape(1, -1), MASK), "1-D floating"),
    ("values-int", lambda: codec.encode_values(torch.ones(MASK.k, dtype=torch.int64), MASK), "1-D floating"),
    ("dense-2d", lambda: codec.encode_dense(torch.ones(2, 2)), "vector: expected a 1-D tensor"),
    ("dense-nan", lambda: codec.encode_dense(torch.tensor([0.0, float("nan")])), "finite"),
    ("sparse-decreasing", lambda: codec.encode_sparse(torch.tensor([5, 3]), torch.ones(2), 10), "strictly increasing"),
    ("sparse-repeated", lambda: codec.encode_sparse(torch.tensor([3, 3]), torch.ones(2), 10), "strictly increasing"),
    ("sparse-out-of-range", lambda: codec.encode_sparse(torch.tensor([3, 10]), torch.ones(2), 10), r"\[0, 10\)"),
    ("sparse-negative", lambda: codec.encode_sparse(torch.tensor([-1, 3]), torch.ones(2), 10), r"\[0, 10\)"),
    ("sparse-float-indices", lambda: codec.encode_sparse(torch.tensor([1.0]), torch.ones(1), 10), "integer tensor"),
    ("sparse-length", lambda: codec.encode_sparse(torch.tensor([1, 2]), torch.ones(3), 10), "expected 2 entries"),
    ("sparse-num-params", lambda: codec.encode_sparse(torch.tensor([1]), torch.ones(1), -1), "num_params"),
    ("mask-form", lambda: codec.encode_mask(MASK, "rle"), "form: expected one of"),
    ("mask-version-u32", lambda: codec.encode_mask(make_mask([True], version=2**32)), "mask.version"),
    ("value-bytes-dtype", lambda: codec.value_bytes("fp64"), "dtype"),
]


@pytest.mark.parametrize(("name", "call", "match"), ENCODE_ERRORS, ids=[e[0] for e in ENCODE_ERRORS])
def test_encoders_reject_bad_input_with_value_error(name: str, call: Callable[[], bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
