"""Value sections: how a run of floats sits in a :mod:`fedfish.codec` payload body.

A value section of ``n`` values is ``n`` little-endian IEEE floats of the payload's dtype,
or for ``int8`` the ``ceil(n / 256)`` fp32 block scales followed by ``n`` int8 codes in
``[-127, 127]`` (stochastic rounding, :mod:`fedfish.quantize`). Values go in as any
floating tensor and come out as fp32; NaN and Inf are refused both ways (also after the
cast to a 16-bit dtype, where finite fp32 values can overflow). Vectorized: no Python loop
over entries.
"""

from __future__ import annotations

import numpy as np
import torch

from fedfish.payload_header import CodecError, expect_equal
from fedfish.quantize import dequantize_int8, int8_body_size, num_blocks, quantize_int8

VALUE_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
"""Wire dtypes for values; every decoder returns fp32. ``int8`` is unbiased stochastic
rounding with a scale per block (:mod:`fedfish.quantize`): meant for updates (deltas)."""

_VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def value_bytes(dtype: str) -> int:
    """Bytes per value on the wire for ``dtype`` (one of :data:`VALUE_DTYPES`); int8 adds one
    fp32 scale per 256 values on top."""
    _check_dtype(dtype)
    return _VALUE_BYTES[dtype]


def value_section_size(count: int, dtype: str) -> int:
    """Bytes of a value section of ``count`` values in ``dtype``."""
    return int8_body_size(count) if dtype == "int8" else count * _VALUE_BYTES[dtype]


def encode_value_section(
    values: torch.Tensor, length: int, dtype: str, name: str, generator: torch.Generator | None = None
) -> np.ndarray:
    """Little-endian wire array of ``values`` cast to fp32, then to ``dtype`` (a view for fp32).

    Raises ValueError, naming the argument ``name``, if ``values`` is not a 1-D floating
    tensor of ``length`` entries, holds NaN/Inf (also after the cast), or ``dtype`` is unknown.
    """
    _check_dtype(dtype)
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or not values.is_floating_point():
        raise ValueError(f"{name}: expected a 1-D floating tensor, got {describe_input(values)}")
    if values.numel() != length:
        raise ValueError(f"{name}: expected {length} entries, got {values.numel()}")
    fp32 = values.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if dtype == "int8":
        if not bool(np.isfinite(fp32.numpy()).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or Inf")
        scales, codes = quantize_int8(fp32, generator)
        return np.concatenate([scales.view(np.uint8), codes.view(np.uint8)])
    if dtype == "bf16":
        # numpy has no bfloat16: torch rounds, and the raw bit patterns go on the wire.
        wire = fp32.to(torch.bfloat16).view(torch.int16).numpy()
    elif dtype == "fp16":
        # numpy's IEEE round-to-nearest-even cast equals torch's and is ~2x faster here;
        # overflow to Inf is reported just below, so numpy's warning would only be noise.
        with np.errstate(over="ignore"):
            wire = fp32.numpy().astype(np.float16)
    else:
        wire = fp32.numpy()
    # Checked after the cast: finite fp32 inputs can still overflow to Inf in fp16/bf16.
    if not _all_finite(wire, dtype):
        raise ValueError(f"{name}: expected finite values representable in {dtype}, got NaN or Inf")
    return wire


def decode_value_section(body: memoryview, count: int, dtype: str) -> torch.Tensor:
    """fp32 tensor from a value section of ``count`` values; always a fresh, writable array.

    Raises :class:`CodecError` if the section has another length, holds NaN/Inf, or (int8)
    a scale that is not a finite number >= 0 or the code -128.
    """
    expect_equal(f"body length in bytes for {count} {dtype} values", value_section_size(count, dtype), len(body))
    if dtype == "int8":
        scale_bytes = 4 * num_blocks(count)
        scales = np.frombuffer(body[:scale_bytes], dtype="<f4")
        codes = np.frombuffer(body[scale_bytes:], dtype=np.int8)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise CodecError("int8 scales: expected finite numbers >= 0, got NaN, Inf or a negative scale")
        if (codes == -128).any():
            raise CodecError("int8 codes: -128 is outside the code range [-127, 127]")
        out = dequantize_int8(scales, codes)
    elif dtype == "fp32":
        out = np.frombuffer(body, dtype="<f4").copy()
    elif dtype == "fp16":
        out = np.frombuffer(body, dtype="<f2").astype(np.float32)
    else:
        # bf16 is the upper half of an fp32: widen the bit pattern and shift it into place.
        out = (np.frombuffer(body, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if not _all_finite(out, "fp32"):
        raise CodecError("values: expected finite numbers, got NaN or Inf")
    return torch.from_numpy(out)


def describe_input(obj: object) -> str:
    """A tensor's dtype and shape, else the type's name: what an argument error says it got."""
    if isinstance(obj, torch.Tensor):
        return f"tensor of dtype {obj.dtype} and shape {tuple(obj.shape)}"
    return type(obj).__name__


def _check_dtype(dtype: str) -> None:
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"dtype: expected one of {VALUE_DTYPES}, got {dtype!r}")


def _all_finite(wire: np.ndarray, dtype: str) -> bool:
    """Whether no entry of a wire array is NaN/Inf (exponent bits all ones for 16-bit types).

    numpy rather than ``torch.isfinite``, which is ~100x slower on a 1M-entry CPU tensor here.
    """
    if dtype == "fp32":
        return bool(np.isfinite(wire).all())
    exponent = 0x7C00 if dtype == "fp16" else 0x7F80
    return not bool(((wire.view(np.uint16) & exponent) == exponent).any())
