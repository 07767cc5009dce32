"""Wire overhead of masked rounds, measured on a real Flower simulation (Ray).

Runs FedFish (client Fisher, density 5% on the FedAvg CNN) for a few rounds and compares,
for the masked rounds after calibration, the wire bytes of each message (as Flower
serializes it, from ``clients.csv``) with the bare values it must carry, ``k x value bytes``.

    python -m bench.wire [--density 0.05] [--rounds 4] [--value-dtype fp32]

Ends with ``RESULT uplink_overhead=<...> downlink_overhead=<...>``; target <= 1.02 for both.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from fedfish.codec import decode_mask, value_bytes
from simulations.config import RunConfig
from simulations.run import run_simulation


def main(argv: list[str] | None = None) -> None:
    """Run the simulation and print per-direction overheads."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--value-dtype", default="fp32")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            strategy="fedfish", density=args.density, value_dtype=args.value_dtype,
            num_partitions=args.clients, samples_per_client=64, batch_size=16, fisher_samples=32,
            eval_samples=500, num_server_rounds=args.rounds, results_dir=tmp, run_name="wire",
        )
        run_dir = run_simulation(cfg)
        clients = pd.read_csv(run_dir / "clients.csv")
        k = decode_mask((Path(run_dir) / "mask.bin").read_bytes()).k
    masked = clients[(clients.phase == "train") & (clients.server_round >= 2)]
    bare_up = k * value_bytes(args.value_dtype)
    bare_down = k * value_bytes("fp32")  # downlinks are fp32: clients hold the exact model
    up = masked[masked.direction == "up"].wire_bytes
    down = masked[masked.direction == "down"].wire_bytes
    print(f"density={args.density} k={k} value dtype={args.value_dtype}; masked rounds 2..{args.rounds}")
    print(f"{'direction':<10}{'messages':>9}{'mean wire B':>14}{'bare values B':>15}{'overhead':>10}")
    for name, wire, bare in (("uplink", up, bare_up), ("downlink", down, bare_down)):
        print(f"{name:<10}{len(wire):>9}{wire.mean():>14.0f}{bare:>15}{wire.mean() / bare:>10.4f}")
    print(f"RESULT uplink_overhead={up.mean() / bare_up:.4f} downlink_overhead={down.mean() / bare_down:.4f}")


if __name__ == "__main__":
    main()
