"""Tests for fedfish.codec's rejections: every corruption of a valid payload, forged payloads with a
valid CRC, and bad encoder input, each refused with an error naming the problem.

Forged payloads are built from the documented header layout (tests/codec_bytes.py) with a CRC
recomputed by zlib, so the codec's own checks, not its CRC, must catch them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfish import codec
from fedfish.codec import CodecError
from fedfish.masks import Mask
from tests.codec_bytes import (
    HEADER,
    OFF_COUNT,
    OFF_DIGEST,
    OFF_DTYPE,
    OFF_KIND,
    OFF_NUM_PARAMS,
    OFF_RESERVED,
    leb128,
    make_mask,
    patch,
    reseal,
)

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
