"""Unbiased 8-bit quantisation of updates: a scale per block, stochastic rounding.

A block of :data:`INT8_BLOCK` values ``x`` gets the scale ``s = max|x| / 127`` and each value
becomes ``q = floor(x / s + u)`` with ``u ~ U[0, 1)`` drawn from the caller's generator, so
``q`` is in ``[-127, 127]`` and ``E[q * s] = x``: averaged over clients (or rounds, with error
feedback) the quantisation error vanishes instead of biasing the model. A block of zeros
gets scale 0. The wire carries the fp32 scales, then the int8 codes (``fedfish.codec``).
"""

from __future__ import annotations

import numpy as np
import torch

INT8_BLOCK = 256
"""Values per fp32 scale: 1.6% of side information on top of one byte per value."""

INT8_MAX = 127


def int8_body_size(count: int) -> int:
    """Bytes of the int8 body for ``count`` values: the scales, then one byte per value."""
    return 4 * num_blocks(count) + count


def num_blocks(count: int) -> int:
    """Number of scales for ``count`` values."""
    return -(-count // INT8_BLOCK)


def quantize_int8(values: torch.Tensor, generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stochastically rounded int8 codes of a 1-D fp32 tensor.

    Parameters
    ----------
    values : torch.Tensor
        fp32 ``(n,)``, finite.
    generator : torch.Generator | None (default: None)
        Source of the rounding noise (torch's global generator if None); seed it for
        reproducible runs.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        Little-endian fp32 scales ``(ceil(n / INT8_BLOCK),)`` and int8 codes ``(n,)``.
    """
    x = values.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    n = x.numel()
    padded = torch.zeros(num_blocks(n) * INT8_BLOCK)
    padded[:n] = x
    blocks = padded.view(-1, INT8_BLOCK)
    scales = blocks.abs().amax(dim=1) / INT8_MAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    noise = torch.rand(blocks.shape, generator=generator)
    codes = torch.floor(blocks / safe[:, None] + noise).clamp_(-INT8_MAX, INT8_MAX)
    codes[scales == 0] = 0
    return scales.numpy().astype("<f4"), codes.reshape(-1)[:n].to(torch.int8).numpy()


def dequantize_int8(scales: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """fp32 values ``codes * scale`` of their block (the inverse of :func:`quantize_int8` on average)."""
    per_value = np.repeat(scales.astype(np.float32), INT8_BLOCK)[: codes.size]
    with np.errstate(over="ignore"):  # a forged scale near the fp32 limit: the caller rejects Inf
        return codes.astype(np.float32) * per_value
