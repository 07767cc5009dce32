"""Cross-device regime: 1,000 clients, 10 per round, each seen rarely. FedAvg vs FedFish.

    python -m bench.crossdevice [--clients 1000] [--per-round 10] [--rounds 10]

Four real Ray simulations in turn, each its own ``python -m simulations.run`` process on
the full Fashion-MNIST training split (Dirichlet alpha=0.5), no warm-up, every node
rebuilding the seeded initial model: FedAvg, FedFish 5% fp32, FedFish 5% int8 and FedFish
0.5% fp32 (client Fisher, sent in round 1). Almost every sampled client is new, so a
FedFish downlink is the mask plus the values under it; the dense model never moves.

Printed per run, over rounds 2..N (round 1 carries the one-time calibration): MB down, up
and total per round, the median seconds per round, the peak resident memory of the
whole process tree (Ray's workers included, sampled every 0.2 s), and the client state
on disk per client that took part. The last line is::

    RESULT bytes_ratio_5pct=<FedAvg MB/round / FedFish 5% MB/round> bytes_ratio_5pct_int8=...
           bytes_ratio_0.5pct=... round_time_ratio=<FedFish 5% s/round / FedAvg s/round>
           state_over_mask=<client state bytes per client / (4 k), 5% fp32>

Targets: >= 15, >= 25, >= 100, <= 1.2, <= 1.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil

from fedfish.codec import decode_mask

MB = 1e6


@dataclass(frozen=True)
class Setting:
    """One run of the bench."""

    name: str
    overrides: tuple[str, ...]


SETTINGS = (
    Setting("fedavg", ("strategy=fedavg",)),
    Setting("fedfish 5% fp32", ("strategy=fedfish", "density=0.05", "value-dtype=fp32")),
    Setting("fedfish 5% int8", ("strategy=fedfish", "density=0.05", "value-dtype=int8")),
    Setting("fedfish 0.5% fp32", ("strategy=fedfish", "density=0.005", "value-dtype=fp32")),
)


@dataclass(frozen=True)
class Measured:
    """What one run cost."""

    mb_down: float
    mb_up: float
    mb_total: float
    seconds: float
    peak_mb: float
    state_bytes_per_client: float
    mask_k: int


def run(setting: Setting, args: argparse.Namespace, results: Path) -> Measured:
    """One simulation process; its process tree's memory is sampled while it runs."""
    run_name = setting.name.replace(" ", "-").replace("%", "pct")
    command = [
        sys.executable, "-m", "simulations.run", *setting.overrides,
        f"num-partitions={args.clients}", f"fraction-train={args.per_round / args.clients}",
        f"num-server-rounds={args.rounds}", f"alpha={args.alpha}", "partitioner=dirichlet", "warmup-rounds=0",
        "momentum=0.9", f"seed={args.seed}", f"results-dir={results}", f"run-name={run_name}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(_rss(p) for p in tree))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith("[fedfish]"):
            print(f"    {line.rstrip()}", flush=True)
    returncode = process.wait()
    stop.set()
    sampler.join()
    if returncode != 0:
        raise SystemExit(f"{setting.name}: simulation failed with exit status {returncode}")
    run_dir = results / run_name
    rounds = pd.read_csv(run_dir / "rounds.csv").set_index("round").loc[2:]
    states = list((results / "client-state" / run_name).glob("*.state"))
    mask_file = run_dir / "mask.bin"
    return Measured(
        mb_down=rounds["bytes_down"].mean() / MB,
        mb_up=rounds["bytes_up"].mean() / MB,
        mb_total=rounds["bytes_total"].mean() / MB,
        seconds=float(rounds["seconds"].median()),
        peak_mb=peak[0] / MB,
        state_bytes_per_client=sum(p.stat().st_size for p in states) / len(states) if states else 0.0,
        mask_k=decode_mask(mask_file.read_bytes()).k if mask_file.is_file() else 0,
    )


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def main(argv: list[str] | None = None) -> None:
    """Run the four settings and print the table and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    measured: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            print(f"--- {setting.name}: {args.clients} clients, {args.per_round} per round, {args.rounds} rounds",
                  flush=True)
            measured[setting.name] = run(setting, args, Path(tmp))
    table = pd.DataFrame({name: vars(m) for name, m in measured.items()}).T
    table["bytes_ratio"] = table.loc["fedavg", "mb_total"] / table["mb_total"]
    table["time_ratio"] = table["seconds"] / table.loc["fedavg", "seconds"]
    print(f"\nPer round, rounds 2..{args.rounds} (round 1 carries the one-time calibration):")
    with pd.option_context("display.width", 200):
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    fish = measured["fedfish 5% fp32"]
    print("RESULT "
          f"bytes_ratio_5pct={table.loc['fedfish 5% fp32', 'bytes_ratio']:.2f} "
          f"bytes_ratio_5pct_int8={table.loc['fedfish 5% int8', 'bytes_ratio']:.2f} "
          f"bytes_ratio_0.5pct={table.loc['fedfish 0.5% fp32', 'bytes_ratio']:.2f} "
          f"round_time_ratio={table.loc['fedfish 5% fp32', 'time_ratio']:.3f} "
          f"state_over_mask={fish.state_bytes_per_client / (4 * fish.mask_k):.3f}")


if __name__ == "__main__":
    main()
