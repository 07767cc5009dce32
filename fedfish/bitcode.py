"""Integer sequence codes behind the wire format's index and mask bodies.

Two codes, both vectorized over entries (loops run over bit or byte positions only):

- **LEB128 varints** of index gaps (:func:`varint_encode`, :func:`decode_gap_indices`): one
  byte per gap below 128, the code of sparse updates and of the ``MASK_DELTA`` form.
- **Run-length Rice** (:func:`encode_runs`, :func:`decode_runs`): a bool vector as alternating
  runs of zeros and ones, each run length Golomb-Rice coded with a parameter chosen per
  block of :data:`RUN_BLOCK` runs. A FISH mask is clustered (whole heads and most of the
  first conv kept, a thin scatter elsewhere), so locally chosen parameters get well below
  the order-0 entropy ``H(k/P) * P`` of a uniform mask: 28.7 KB for a 5% Fisher mask of the
  FedAvg CNN (59.5 KB), where the bitmap takes 208 KB and varint gaps 85 KB.

Run-length body: a LEB128 varint, the number of runs ``R`` (the first, a zero run, may be
empty), then two Rice streams, the zero runs and the one runs (their lengths follow very
different laws: long gaps, short clusters). A stream of ``n`` values is three sections,
each starting on a byte, bit fields LSB-first within bytes:

==========  =====================================================================
section     content
==========  =====================================================================
params      6 bits per block of ``RUN_BLOCK`` values: that block's Rice parameter ``b``
unary       for each value ``v``: ``v >> b`` one-bits, then a zero-bit
remainders  for each value: its low ``b`` bits
==========  =====================================================================

A coded value is its run's length, less one for every run but the first (every run after
the first is at least 1 long). Every decode failure raises :class:`BitcodeError`.
"""

from __future__ import annotations

import numpy as np

RUN_BLOCK = 32
"""Coded values per Rice parameter (6 bits of side information per block)."""

_PARAM_BITS = 6
_MAX_PARAM = 2**_PARAM_BITS - 1
# Indices are < num_params <= 2**63, so a valid varint never needs more than 9 bytes (63 bits).
MAX_VARINT_BYTES = 9


class BitcodeError(ValueError):
    """A code could not be decoded (truncated, non-canonical or out of range)."""


# ----------------------------------------------------------------------------- varints


def gaps(indices: np.ndarray) -> np.ndarray:
    """First index, then differences between consecutive ascending indices (int64)."""
    out = np.empty_like(indices, dtype=np.int64)
    if indices.size:
        out[0] = indices[0]
        np.subtract(indices[1:], indices[:-1], out=out[1:])
    return out


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """LEB128 length in bytes of each non-negative value (1 for 0)."""
    nbytes = np.ones(values.shape, dtype=np.int64)
    for shift in range(7, 7 * MAX_VARINT_BYTES, 7):
        nbytes += values >= (1 << shift)
    return nbytes


def varint_encode(values: np.ndarray, nbytes: np.ndarray | None = None) -> np.ndarray:
    """Unsigned LEB128 encoding (uint8); loops over byte positions (<= 9), never over entries."""
    nbytes = varint_lengths(values) if nbytes is None else nbytes
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    starts = ends - nbytes
    max_len = int(nbytes.max()) if nbytes.size else 0
    for j in range(max_len):
        sel = nbytes > j if j else slice(None)
        chunk = (values[sel] >> (7 * j)) & 0x7F
        more = (nbytes[sel] > j + 1).astype(np.int64) << 7
        out[starts[sel] + j] = chunk | more
    return out


def decode_gap_indices(buf: np.ndarray, count: int, num_params: int) -> np.ndarray:
    """Strictly increasing int64 indices in ``[0, num_params)`` from delta varints in ``buf``."""
    values = _decode_varints(buf, count)
    if count and (values >= num_params).any():
        raise BitcodeError(f"index out of range: a delta is >= num_params={num_params}")
    indices = np.cumsum(values)
    # A zero gap repeats an index; int64 wrap-around (possible only for a huge num_params in the
    # header) makes an index smaller than its predecessor. One strictness check catches both.
    if count > 1 and not (indices[1:] > indices[:-1]).all():
        raise BitcodeError("indices not strictly increasing (a delta after the first is 0 or overflows)")
    if count and indices[-1] >= num_params:
        raise BitcodeError(f"index out of range: expected < {num_params}, got {int(indices[-1])}")
    return indices


def _decode_varints(buf: np.ndarray, count: int) -> np.ndarray:
    """Exactly ``count`` canonical LEB128 varints filling ``buf``."""
    ends = np.flatnonzero(buf < 0x80)
    if buf.size and (ends.size == 0 or ends[-1] != buf.size - 1):
        raise BitcodeError("truncated varint: the last byte has its continuation bit set")
    if ends.size != count:
        raise BitcodeError(f"number of varints mismatch: expected {count}, got {ends.size}")
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.size and int(lengths.max()) > MAX_VARINT_BYTES:
        raise BitcodeError(
            f"varint overflow: expected at most {MAX_VARINT_BYTES} bytes per value, got {int(lengths.max())}"
        )
    if ((lengths > 1) & (buf[ends] == 0)).any():
        raise BitcodeError("non-canonical varint: a multi-byte value ends in a zero byte")
    values = np.zeros(count, dtype=np.int64)
    payload_bits = (buf & 0x7F).astype(np.int64)
    for j in range(int(lengths.max()) if lengths.size else 0):
        sel = lengths > j
        values[sel] |= payload_bits[starts[sel] + j] << (7 * j)
    return values


# ----------------------------------------------------------------------------- run-length Rice


def runs_of(bits: np.ndarray) -> np.ndarray:
    """Alternating run lengths of a bool vector, starting with a (possibly empty) zero run."""
    change = np.flatnonzero(bits[1:] != bits[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [bits.size]))).astype(np.int64)
    return np.concatenate(([0], runs)) if bits.size and bits[0] else runs


def encode_runs(bits: np.ndarray) -> np.ndarray:
    """Run-length Rice body (uint8) of a non-empty bool vector; see the module docstring."""
    runs = runs_of(np.asarray(bits, dtype=bool))
    values = runs.copy()
    values[1:] -= 1
    count = varint_encode(np.array([values.size], dtype=np.int64))
    return np.concatenate([count, _encode_rice(values[0::2]), _encode_rice(values[1::2])])


def decode_runs(body: np.ndarray, num_params: int) -> np.ndarray:
    """Bool vector of ``num_params`` entries from a :func:`encode_runs` body.

    Raises
    ------
    BitcodeError
        If the body is truncated, has trailing or non-zero padding bits, or its runs do not
        add up to ``num_params``.
    """
    ends = np.flatnonzero(body < 0x80)
    if ends.size == 0:
        raise BitcodeError("run-length body: missing run count")
    head_end = int(ends[0]) + 1
    count = int(_decode_varints(body[:head_end], 1)[0])
    if not 1 <= count <= num_params + 1:
        raise BitcodeError(f"run-length body: {count} runs for {num_params} entries")
    zeros, offset = _decode_rice(body, head_end, (count + 1) // 2, num_params)
    ones, offset = _decode_rice(body, offset, count // 2, num_params)
    if offset != body.size:
        raise BitcodeError(f"run-length body: expected {offset} bytes, got {body.size}")
    runs = np.empty(count, dtype=np.int64)
    runs[0::2], runs[1::2] = zeros, ones
    runs[1:] += 1
    if int(runs.sum()) != num_params:
        raise BitcodeError(f"run-length body: runs cover {int(runs.sum())} entries, expected {num_params}")
    return np.repeat(np.arange(count) % 2 == 1, runs)


def _encode_rice(values: np.ndarray) -> np.ndarray:
    """One Rice stream: a parameter per block of RUN_BLOCK values, unary parts, remainders."""
    params = _best_params(values)
    per_value = np.repeat(params, RUN_BLOCK)[: values.size]
    quotients = values >> per_value
    # Unary: each value's quotient in ones, then one zero.
    unary = np.ones(int(quotients.sum()) + values.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0
    return np.concatenate([
        _pack_fixed(params, np.full(params.size, _PARAM_BITS)),
        np.packbits(unary, bitorder="little"),
        _pack_fixed(values & ((np.int64(1) << per_value) - 1), per_value),
    ])


def _decode_rice(body: np.ndarray, offset: int, count: int, bound: int) -> tuple[np.ndarray, int]:
    """``count`` values (each <= ``bound``) of the Rice stream at ``body[offset:]``; returns
    them and the offset just past the stream."""
    num_blocks = -(-count // RUN_BLOCK)
    params_end = offset + -(-num_blocks * _PARAM_BITS // 8)
    if params_end > body.size:
        raise BitcodeError("run-length body: truncated in the Rice parameters")
    params = _unpack_fixed(body[offset:params_end], np.full(num_blocks, _PARAM_BITS))
    per_value = np.repeat(params, RUN_BLOCK)[:count]
    rest = np.unpackbits(body[params_end:], bitorder="little")
    zeros = np.flatnonzero(rest == 0)[:count]
    if zeros.size < count:
        raise BitcodeError("run-length body: truncated in the unary codes")
    unary_end = int(zeros[-1]) + 1 if count else 0
    if rest[unary_end : -(-unary_end // 8) * 8].any():
        raise BitcodeError("run-length body: non-zero padding after the unary codes")
    quotients = np.diff(np.concatenate(([-1], zeros))) - 1
    # A value above the bound cannot be a run; checked before shifting so nothing overflows.
    if (quotients > (bound >> per_value)).any():
        raise BitcodeError("run-length body: a run is longer than the vector")
    remainder_start = params_end + -(-unary_end // 8)
    remainder_end = remainder_start + -(-int(per_value.sum()) // 8)
    if remainder_end > body.size:
        raise BitcodeError("run-length body: truncated in the Rice remainders")
    remainders = _unpack_fixed(body[remainder_start:remainder_end], per_value)
    return (quotients << per_value) | remainders, remainder_end


def _best_params(values: np.ndarray) -> np.ndarray:
    """Per block of RUN_BLOCK values, the Rice parameter b minimising sum((v >> b) + 1 + b)."""
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, values.size, RUN_BLOCK)
    sizes = np.diff(np.append(starts, values.size))
    top = min(int(values.max()).bit_length(), _MAX_PARAM)
    costs = np.stack([np.add.reduceat(values >> b, starts) + sizes * (1 + b) for b in range(top + 1)])
    return np.argmin(costs, axis=0).astype(np.int64)


def _pack_fixed(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate the low ``widths[i]`` bits of each value, LSB first, into bytes."""
    total = int(widths.sum())
    bits = np.zeros(total, dtype=np.uint8)
    offsets = np.cumsum(widths) - widths
    for j in range(int(widths.max()) if widths.size else 0):
        sel = widths > j
        bits[offsets[sel] + j] = (values[sel] >> j) & 1
    return np.packbits(bits, bitorder="little")


def _unpack_fixed(data: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_fixed`; padding bits after the last field must be zero."""
    bits = np.unpackbits(data, bitorder="little")
    total = int(widths.sum())
    if bits.size < total:
        raise BitcodeError(f"bit field section truncated: {bits.size} bits, needs {total}")
    if bits[total:].any():
        raise BitcodeError("non-zero padding bits after the last bit field")
    values = np.zeros(widths.size, dtype=np.int64)
    offsets = np.cumsum(widths) - widths
    for j in range(int(widths.max()) if widths.size else 0):
        sel = widths > j
        values[sel] |= bits[offsets[sel] + j].astype(np.int64) << j
    return values
