"""Byte-level helpers for the codec tests, built from the documented payload layout.

The offsets come from the layout table in ``fedfish.payload_header``'s docstring, not from the
codec, so a test that forges a payload with them checks the codec against its documentation.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import torch

from fedfish.masks import Mask

HEADER = 40
# Header byte offsets from the layout table in fedfish.payload_header's docstring.
OFF_KIND, OFF_DTYPE, OFF_RESERVED, OFF_VERSION = 5, 6, 7, 8
OFF_COUNT, OFF_NUM_PARAMS, OFF_DIGEST, OFF_CRC = 12, 20, 28, 36


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
