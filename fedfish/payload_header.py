"""The fixed header of every :mod:`fedfish.codec` payload, and the CRC that seals it.

Every payload is ``bytes`` = a fixed 40-byte little-endian header followed by a body.

Header layout (``struct`` format ``"<4sBBBBIQQ8sI"``, :data:`HEADER_SIZE` = 40 bytes):

======  =====  ============================================================================
offset  bytes  field
======  =====  ============================================================================
0       4      magic ``b"FFSH"``
4       1      format version (:data:`FORMAT_VERSION`)
5       1      kind (:class:`Kind`)
6       1      value dtype code (1 fp32, 2 fp16, 3 bf16, 4 int8; 0 for mask payloads)
7       1      reserved, always 0
8       4      mask version (``Mask.version``; 0 for dense and sparse payloads)
12      8      count: number of entries in the body (values, set mask bits or indices)
20      8      num_params: length ``P`` of the flat parameter vector the payload refers to
28      8      mask digest, the 8 raw bytes of ``Mask.digest`` (values and mask payloads;
               zero otherwise), so values cannot be decoded against another mask that
               carries the same version
36      4      CRC-32 (``zlib.crc32``) of header bytes ``[0, 36)`` followed by the body
======  =====  ============================================================================

The CRC also covers the header fields (not just the body) so that a corrupted mask
version, which no other check could notice in :func:`fedfish.codec.decode_mask`, is still
rejected. :func:`seal` writes a header and its CRC in front of a body; :func:`open_payload`
checks both and hands back the body. Every failure raises :class:`CodecError`.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"FFSH"
FORMAT_VERSION = 1
HEADER_SIZE = 40
"""Size of the fixed header in bytes."""
NO_DIGEST = bytes(8)
"""The digest field of payloads that belong to no mask (dense and sparse)."""

_HEADER = struct.Struct("<4sBBBBIQQ8sI")
_CRC_OFFSET = 36
_DTYPE_CODES = {"fp32": 1, "fp16": 2, "bf16": 3, "int8": 4}
_DTYPE_NAMES = {code: name for name, code in _DTYPE_CODES.items()}
_MAX_U32 = 2**32 - 1


class CodecError(ValueError):
    """A payload could not be decoded (corrupt, truncated, or meant for another mask)."""


class Kind(enum.IntEnum):
    """Payload kinds (the header's kind byte)."""

    VALUES = 1
    DENSE = 2
    MASK_BITMAP = 3
    MASK_DELTA = 4
    SPARSE = 5
    MASK_RUNS = 6


MASK_KINDS = (Kind.MASK_BITMAP, Kind.MASK_DELTA, Kind.MASK_RUNS)


@dataclass(frozen=True)
class Header:
    """Parsed payload header; see the module docstring for the byte layout.

    Parameters
    ----------
    kind : Kind
        Payload kind.
    dtype : str | None
        Value dtype (one of ``fedfish.codec.VALUE_DTYPES``), ``None`` for mask payloads.
    mask_version : int
        Mask version the payload was encoded for (0 for dense and sparse payloads).
    count : int
        Number of entries in the body (values, set bits or indices).
    num_params : int
        Length of the flat parameter vector the payload refers to.
    digest : str
        Mask digest as 16 hex chars (``"0" * 16`` for dense and sparse payloads).
    crc : int
        CRC-32 stored in the header (not verified by :func:`parse_header`).
    """

    kind: Kind
    dtype: str | None
    mask_version: int
    count: int
    num_params: int
    digest: str
    crc: int


def parse_header(payload: bytes) -> Header:
    """Parse and validate the fixed header of ``payload`` (the body and CRC are not checked).

    Strategies use this to inspect a payload, e.g. its kind or mask version, before decoding.

    Raises
    ------
    CodecError
        If the payload is shorter than the header, or the magic, format version, kind,
        dtype code or reserved byte is wrong.
    """
    if len(payload) < HEADER_SIZE:
        raise CodecError(
            f"payload too short: expected at least {HEADER_SIZE} header bytes, got {len(payload)}"
        )
    fields = _HEADER.unpack_from(payload)
    magic, fmt, kind, dtype_code, reserved, version, count, num_params, digest, crc = fields
    if magic != MAGIC:
        raise CodecError(f"bad magic: expected {MAGIC!r}, got {magic!r}")
    if fmt != FORMAT_VERSION:
        raise CodecError(f"unsupported format version: expected {FORMAT_VERSION}, got {fmt}")
    try:
        kind = Kind(kind)
    except ValueError:
        known = [int(k) for k in Kind]
        raise CodecError(f"unknown payload kind code {kind}, expected one of {known}") from None
    if reserved != 0:
        raise CodecError(f"reserved header byte: expected 0, got {reserved}")
    if kind in MASK_KINDS:
        if dtype_code != 0:
            raise CodecError(f"dtype code for a {kind.name} payload: expected 0, got {dtype_code}")
        dtype = None
    else:
        if dtype_code not in _DTYPE_NAMES:
            raise CodecError(f"unknown dtype code {dtype_code}, expected one of {sorted(_DTYPE_NAMES)}")
        dtype = _DTYPE_NAMES[dtype_code]
    return Header(kind, dtype, version, count, num_params, digest.hex(), crc)


def payload_kind(payload: bytes) -> str:
    """Kind of ``payload`` as a lowercase name (``"values"``, ``"dense"``, ``"mask_bitmap"``, ...)."""
    return parse_header(payload).kind.name.lower()


def check_mask_version(version: int) -> None:
    """Raise ValueError unless ``version`` fits the header's 4-byte mask version field."""
    if not 0 <= version <= _MAX_U32:
        raise ValueError(f"mask.version: expected an int in [0, {_MAX_U32}], got {version}")


def seal(
    kind: Kind,
    dtype: str | None,
    version: int,
    count: int,
    num_params: int,
    digest: bytes,
    body: np.ndarray,
) -> bytes:
    """Header + body as one bytes object; the body is copied exactly once."""
    dtype_code = 0 if dtype is None else _DTYPE_CODES[dtype]
    header = bytearray(
        _HEADER.pack(MAGIC, FORMAT_VERSION, kind, dtype_code, 0, version, count, num_params, digest, 0)
    )
    body_view = memoryview(body).cast("B")
    crc = zlib.crc32(body_view, zlib.crc32(memoryview(header)[:_CRC_OFFSET]))
    struct.pack_into("<I", header, _CRC_OFFSET, crc)
    return b"".join((header, body_view))


def open_payload(payload: bytes, kinds: Kind | tuple[Kind, ...]) -> tuple[Header, memoryview]:
    """Validate header, kind and CRC; return the header and a zero-copy view of the body."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload: expected bytes, got {type(payload).__name__}")
    header = parse_header(payload)
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if header.kind not in allowed:
        expected = " or ".join(k.name for k in allowed)
        raise CodecError(f"payload kind: expected {expected}, got {header.kind.name}")
    view = memoryview(payload).cast("B")
    body = view[HEADER_SIZE:]
    crc = zlib.crc32(body, zlib.crc32(view[:_CRC_OFFSET]))
    if crc != header.crc:
        raise CodecError(f"crc32 mismatch: header says {header.crc:#010x}, payload has {crc:#010x}")
    return header, body


def expect_equal(what: str, expected: int, got: int) -> None:
    """Raise :class:`CodecError` ``"<what> mismatch: ..."`` unless ``got == expected``."""
    if expected != got:
        raise CodecError(f"{what} mismatch: expected {expected}, got {got}")
