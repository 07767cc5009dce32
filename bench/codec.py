"""Codec speed next to a plain copy of the dense vector, measured side by side.

For an 11M-parameter fp32 update and random masks of 0.5%, 2% and 10% density, times the
codec round trip of one masked update (``encode_values`` + ``decode_values``) and, in the
same loop, ``dense.clone()`` of the whole vector. ``ratio = copy time / codec time``: 1.0
means the codec processes the update as fast as memory copies the dense vector; above 1
it is faster. Throughput is dense-vector bytes (``4 * P``) per second of codec round trip.

Also reported, for information: fp16 values, the round trip including the gather from
and scatter into the dense vector, and mask encode/decode (bitmap or delta, whichever is
smaller). Run: ``python -m bench.codec``.
"""

from __future__ import annotations


import torch

from bench.timing import interleaved_medians
from fedfish import codec
from fedfish.masks import random_mask

NUM_PARAMS = 11_000_000
DENSITIES = (0.005, 0.02, 0.10)
REPEATS = 9


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(NUM_PARAMS, generator=generator)
    dense_bytes = 4 * NUM_PARAMS
    print(f"P = {NUM_PARAMS:,} fp32 params ({dense_bytes / 1e6:.0f} MB dense), median of {REPEATS} repeats")
    print("ratio = copy time / codec round-trip time (encode_values + decode_values); >= 1: codec as fast as a copy")
    print(
        f"{'density':>8} {'k':>10} {'dtype':>5} {'payload B':>11} {'copy ms':>8} {'codec ms':>9} "
        f"{'ratio':>6} {'codec GB/s':>10} {'+gather/scatter ms':>19} {'ratio':>6}"
    )
    ratios = []
    mask_rows = []
    for density in DENSITIES:
        mask = random_mask(NUM_PARAMS, density, seed=1)
        idx = mask.indices()
        values = dense.index_select(0, idx)
        for dtype in ("fp32", "fp16"):
            payload = codec.encode_values(values, mask, dtype)

            def full_round_trip(dtype: str = dtype) -> torch.Tensor:
                sent = codec.encode_values(dense.index_select(0, idx), mask, dtype)
                return torch.zeros(NUM_PARAMS).index_copy_(0, idx, codec.decode_values(sent, mask))

            med = interleaved_medians(
                {
                    "copy": dense.clone,
                    "codec": lambda dtype=dtype: codec.decode_values(codec.encode_values(values, mask, dtype), mask),
                    "full": full_round_trip,
                },
                REPEATS,
            )
            ratio = med["copy"] / med["codec"]
            full_ratio = med["copy"] / med["full"]
            if dtype == "fp32":
                ratios.append(ratio)
            print(
                f"{density:>8.3f} {mask.k:>10,} {dtype:>5} {len(payload):>11,} {med['copy'] * 1e3:>8.2f} "
                f"{med['codec'] * 1e3:>9.2f} {ratio:>6.2f} {dense_bytes / med['codec'] / 1e9:>10.1f} "
                f"{med['full'] * 1e3:>19.2f} {full_ratio:>6.2f}"
            )
        mask_payload = codec.encode_mask(mask)
        mask_med = interleaved_medians(
            {"encode": lambda: codec.encode_mask(mask), "decode": lambda: codec.decode_mask(mask_payload)}, 3
        )
        mask_rows.append((density, codec.payload_kind(mask_payload), len(mask_payload), mask_med))
    print("\nmask payloads (sent once per mask version)")
    print(f"{'density':>8} {'form':>12} {'bytes':>11} {'encode ms':>10} {'decode ms':>10}")
    for density, kind, size, med in mask_rows:
        print(f"{density:>8.3f} {kind:>12} {size:>11,} {med['encode'] * 1e3:>10.2f} {med['decode'] * 1e3:>10.2f}")
    print("\ncodec_vs_copy = min over densities of fp32 ratio (copy time / codec round-trip time); target >= 0.5")
    print(f"RESULT codec_vs_copy={min(ratios):.2f}")


if __name__ == "__main__":
    main()
