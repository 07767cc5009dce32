"""One wire format for every strategy: mask values, dense vectors, masks, sparse updates.

Every payload is ``bytes`` = a fixed 40-byte little-endian header followed by a body. The
header (magic, format version, :class:`Kind`, value dtype, mask version, count,
``num_params``, mask digest, CRC-32 over header and body) is laid out in
:mod:`fedfish.payload_header`; this module is where payloads are encoded and decoded, and
it carries the names callers need to inspect one (:func:`parse_header`, :class:`Header`,
:class:`Kind`, :data:`HEADER_SIZE`, :func:`payload_kind`, :class:`CodecError`).

Bodies. A *value section* of ``n`` values is ``n`` little-endian IEEE floats of the
payload's dtype, or for ``int8`` the ``ceil(n / 256)`` fp32 block scales followed by ``n``
int8 codes (:mod:`fedfish.value_section`):

- ``VALUES``: a value section of ``k`` values in mask order (ascending flat index).
- ``DENSE``: a value section of ``P`` values.
- ``MASK_BITMAP``: ``ceil(P / 8)`` bytes, ``np.packbits(bits, bitorder="little")``;
  padding bits are zero.
- ``MASK_DELTA``: ``k`` unsigned LEB128 varints: the first index, then the gaps between
  consecutive indices (each gap >= 1).
- ``MASK_RUNS``: alternating runs of zeros and ones, Rice coded with a parameter per block
  of runs (:func:`fedfish.bitcode.encode_runs`); the smallest form for clustered FISH masks.
- ``SPARSE``: a value section of ``k`` values, then the ``k`` delta-coded indices as for
  ``MASK_DELTA``.

Every decode failure raises :class:`CodecError`; decoders never return partial results.
Encoding and decoding are vectorized (no Python loop over entries).
"""

from __future__ import annotations

import numpy as np
import torch

from fedfish import bitcode
from fedfish.masks import Mask
from fedfish.payload_header import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MASK_KINDS,
    NO_DIGEST,
    CodecError,
    Header,
    Kind,
    check_mask_version,
    expect_equal,
    open_payload,
    parse_header,
    payload_kind,
    seal,
)
from fedfish.value_section import (
    VALUE_DTYPES,
    decode_value_section,
    describe_input,
    encode_value_section,
    value_bytes,
    value_section_size,
)

__all__ = [
    "FORMAT_VERSION", "HEADER_SIZE", "MAGIC", "MASK_FORMS", "VALUE_DTYPES", "CodecError", "Header", "Kind",
    "decode_dense", "decode_mask", "decode_sparse", "decode_values", "encode_dense", "encode_mask",
    "encode_sparse", "encode_values", "parse_header", "payload_kind", "value_bytes",
]


# ----------------------------------------------------------------------------- values


def encode_values(
    values: torch.Tensor, mask: Mask, dtype: str = "fp32", *, generator: torch.Generator | None = None
) -> bytes:
    """Encode the ``mask.k`` masked values of an update.

    Parameters
    ----------
    values : torch.Tensor
        Floating tensor of shape ``(mask.k,)``, in mask order (ascending flat index).
    mask : Mask
        The mask the values belong to; its version and digest go into the header.
    dtype : str, default "fp32"
        Wire dtype, one of :data:`VALUE_DTYPES` (fp16/bf16: round-to-nearest-even as torch
        casts; int8: stochastic rounding, see :mod:`fedfish.quantize`).
    generator : torch.Generator | None, default None
        Rounding noise for ``int8`` (torch's global generator if None); unused otherwise.

    Returns
    -------
    bytes
        ``HEADER_SIZE + mask.k * value_bytes(dtype)`` bytes (int8: plus 4 per 256 values).

    Raises
    ------
    ValueError
        If ``values`` is not 1-D of length ``mask.k``, holds NaN/Inf (also after the cast
        to ``dtype``), or ``dtype`` is unknown.
    """
    check_mask_version(mask.version)
    k = _mask_k(mask)
    body = encode_value_section(values, k, dtype, "values", generator)
    return seal(Kind.VALUES, dtype, mask.version, k, mask.num_params, bytes.fromhex(mask.digest), body)


def decode_values(payload: bytes, mask: Mask) -> torch.Tensor:
    """Decode a :func:`encode_values` payload against ``mask``.

    Returns
    -------
    torch.Tensor
        fp32 tensor of shape ``(mask.k,)`` in mask order.

    Raises
    ------
    CodecError
        If the payload is corrupt or truncated, was encoded for another mask (version,
        digest, ``num_params`` or ``k`` differ), or holds NaN/Inf.
    """
    header, body = open_payload(payload, Kind.VALUES)
    if header.mask_version != mask.version:
        raise CodecError(f"mask version mismatch: expected {mask.version}, got {header.mask_version}")
    if header.digest != mask.digest:
        raise CodecError(f"mask digest mismatch: expected {mask.digest}, got {header.digest}")
    expect_equal("num_params", mask.num_params, header.num_params)
    expect_equal("count", _mask_k(mask), header.count)
    return decode_value_section(body, header.count, header.dtype)


# ----------------------------------------------------------------------------- dense


def encode_dense(vector: torch.Tensor, dtype: str = "fp32", *, generator: torch.Generator | None = None) -> bytes:
    """Encode a full flat vector of shape ``(P,)`` (dense updates, Fisher uploads).

    Returns ``HEADER_SIZE + P * value_bytes(dtype)`` bytes; raises ValueError as
    :func:`encode_values` does.
    """
    if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
        raise ValueError(f"vector: expected a 1-D tensor, got {describe_input(vector)}")
    num_params = vector.numel()
    body = encode_value_section(vector, num_params, dtype, "vector", generator)
    return seal(Kind.DENSE, dtype, 0, num_params, num_params, NO_DIGEST, body)


def decode_dense(payload: bytes, num_params: int) -> torch.Tensor:
    """Decode a :func:`encode_dense` payload into an fp32 tensor of shape ``(num_params,)``.

    Raises
    ------
    CodecError
        If the payload is corrupt, truncated, holds NaN/Inf or has another length.
    """
    header, body = open_payload(payload, Kind.DENSE)
    expect_equal("num_params", num_params, header.num_params)
    expect_equal("count", num_params, header.count)
    return decode_value_section(body, header.count, header.dtype)


# ----------------------------------------------------------------------------- masks

MASK_FORMS: tuple[str, ...] = ("auto", "bitmap", "delta", "runs")
"""Mask encodings accepted by :func:`encode_mask`."""


def encode_mask(mask: Mask, form: str = "auto") -> bytes:
    """Encode a mask as a packed bitmap, delta-coded indices or Rice-coded runs.

    Parameters
    ----------
    mask : Mask
        The mask; its version and digest go into the header.
    form : str, default "auto"
        ``"auto"`` picks whichever body is smallest (on a tie: bitmap, then delta, then
        runs); ``"bitmap"`` / ``"delta"`` / ``"runs"`` force one form.

    Returns
    -------
    bytes
        ``HEADER_SIZE + ceil(P / 8)`` bytes for the bitmap, ``HEADER_SIZE + sum of the
        varint lengths`` for the delta form, ``HEADER_SIZE`` + the run-length code.
    """
    if form not in MASK_FORMS:
        raise ValueError(f"form: expected one of {MASK_FORMS}, got {form!r}")
    check_mask_version(mask.version)
    bits = mask.bits.numpy()
    candidates: list[tuple[Kind, np.ndarray]] = []
    if form in ("auto", "bitmap"):
        candidates.append((Kind.MASK_BITMAP, np.packbits(bits, bitorder="little")))
    if form in ("auto", "delta"):
        candidates.append((Kind.MASK_DELTA, bitcode.varint_encode(bitcode.gaps(np.flatnonzero(bits)))))
    if form in ("auto", "runs"):
        candidates.append((Kind.MASK_RUNS, bitcode.encode_runs(bits)))
    kind, body = min(candidates, key=lambda item: item[1].size)  # min keeps the first on ties
    return seal(kind, None, mask.version, _mask_k(mask), mask.num_params, bytes.fromhex(mask.digest), body)


def decode_mask(payload: bytes) -> Mask:
    """Decode a :func:`encode_mask` payload (any form); the version comes from the header.

    Raises
    ------
    CodecError
        If the payload is corrupt or truncated, the bit count differs from the header,
        padding bits are set, indices are out of range or not strictly increasing, or the
        decoded mask's digest differs from the header's.
    """
    header, body = open_payload(payload, MASK_KINDS)
    num_params = header.num_params
    raw = np.frombuffer(body, dtype=np.uint8)
    if header.kind is Kind.MASK_BITMAP:
        expect_equal("bitmap body length in bytes", (num_params + 7) // 8, len(body))
        unpacked = np.unpackbits(raw, bitorder="little")
        if unpacked[num_params:].any():
            raise CodecError("bitmap padding bits beyond num_params are set")
        bits_np = unpacked[:num_params].view(np.bool_)
    elif header.kind is Kind.MASK_RUNS:
        if num_params < 1:
            raise CodecError("payload does not describe a valid mask: num_params is 0")
        bits_np = _bitcode_call(bitcode.decode_runs, raw, num_params)
    else:
        indices = _bitcode_call(bitcode.decode_gap_indices, raw, header.count, num_params)
        bits_np = np.zeros(num_params, dtype=np.bool_)
        bits_np[indices] = True
    expect_equal("number of set bits", header.count, int(np.count_nonzero(bits_np)))
    bits = torch.from_numpy(bits_np)
    try:
        mask = Mask(bits=bits, version=header.mask_version)
    except ValueError as err:  # e.g. num_params == 0 in the header
        raise CodecError(f"payload does not describe a valid mask: {err}") from err
    if mask.digest != header.digest:
        raise CodecError(f"mask digest mismatch: header says {header.digest}, decoded mask has {mask.digest}")
    return mask


# ----------------------------------------------------------------------------- sparse


def encode_sparse(
    indices: torch.Tensor,
    values: torch.Tensor,
    num_params: int,
    dtype: str = "fp32",
    *,
    generator: torch.Generator | None = None,
) -> bytes:
    """Encode explicit (index, value) pairs, e.g. a per-round top-k update.

    Parameters
    ----------
    indices : torch.Tensor
        Integer tensor of shape ``(k,)``, strictly increasing, in ``[0, num_params)``.
    values : torch.Tensor
        Floating tensor of shape ``(k,)``, finite.
    num_params : int
        Length ``P`` of the flat vector the indices refer to.
    dtype : str, default "fp32"
        Wire dtype for the values, one of :data:`VALUE_DTYPES`.
    generator : torch.Generator | None, default None
        Rounding noise for ``int8``.

    Returns
    -------
    bytes
        ``HEADER_SIZE`` + the value section + the varint lengths of the gaps.
    """
    if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
        raise ValueError(f"num_params: expected a non-negative int, got {num_params!r}")
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1 or indices.is_floating_point():
        raise ValueError(f"indices: expected a 1-D integer tensor, got {describe_input(indices)}")
    idx = indices.detach().cpu().to(torch.int64).numpy()
    if idx.size and (idx[0] < 0 or idx[-1] >= num_params):
        raise ValueError(
            f"indices: expected entries in [0, {num_params}), got range [{idx.min()}, {idx.max()}]"
        )
    if idx.size > 1 and not (np.diff(idx) > 0).all():
        raise ValueError("indices: expected strictly increasing entries")
    value_body = encode_value_section(values, idx.size, dtype, "values", generator)
    index_body = bitcode.varint_encode(bitcode.gaps(idx))
    body = np.concatenate([value_body.view(np.uint8).reshape(-1), index_body])
    return seal(Kind.SPARSE, dtype, 0, idx.size, num_params, NO_DIGEST, body)


def decode_sparse(payload: bytes, num_params: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a :func:`encode_sparse` payload.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        int64 indices ``(k,)`` (strictly increasing) and fp32 values ``(k,)``.

    Raises
    ------
    CodecError
        If the payload is corrupt or truncated, refers to another ``num_params``, holds
        NaN/Inf, or its indices are out of range or not strictly increasing.
    """
    header, body = open_payload(payload, Kind.SPARSE)
    expect_equal("num_params", num_params, header.num_params)
    value_size = value_section_size(header.count, header.dtype)
    if value_size > len(body):
        raise CodecError(
            f"sparse body too short: expected at least {value_size} value bytes, got {len(body)}"
        )
    values = decode_value_section(body[:value_size], header.count, header.dtype)
    raw = np.frombuffer(body[value_size:], dtype=np.uint8)
    indices = _bitcode_call(bitcode.decode_gap_indices, raw, header.count, num_params)
    return torch.from_numpy(indices), values


# ----------------------------------------------------------------------------- helpers


def _mask_k(mask: Mask) -> int:
    """``mask.k`` via numpy: ~50x faster than the torch bool sum behind ``Mask.k`` at P = 11M."""
    return int(np.count_nonzero(mask.bits.numpy()))


def _bitcode_call(decode, *args):  # noqa: ANN001, ANN202 - forwards to a fedfish.bitcode decoder
    """Run a :mod:`fedfish.bitcode` decoder, reporting its failures as CodecError."""
    try:
        return decode(*args)
    except bitcode.BitcodeError as err:
        raise CodecError(str(err)) from None
