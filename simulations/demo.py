"""`make demo`: FedAvg vs FedFish in the cross-device regime, side by side.

Runs ``simulations/sweeps/demo.toml``: 100 clients over the full Fashion-MNIST training
split (Dirichlet alpha = 0.5), 10 sampled per round, all fine-tuning a CNN (1.66M
parameters) that the demo first trains on a 2% public split; FedAvg for 12 rounds,
FedFish with a 2% Fisher mask (computed on the server from the public split) for 20.
Prints a line per round, then the table of :func:`simulations.savings.savings_table`
(target = FedAvg's final accuracy, the mean of its last 5 rounds, minus 1 point), and
writes ``<results-dir>/demo/accuracy_vs_mb.png``. Finished points are kept: a rerun
only redoes what is missing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from simulations.analysis import load_results
from simulations.plots import plot_accuracy_vs_bytes, pyplot
from simulations.run import parse_overrides
from simulations.savings import savings_table
from simulations.sweep import load_sweep, run_sweep

SWEEP = Path(__file__).with_name("sweeps") / "demo.toml"
COLUMNS = {
    "rounds": "rounds", "final_accuracy": "final acc", "mb_total": "MB total", "mb_to_target": "MB to target",
    "savings": "savings", "acc_at_1pct": "acc @1% MB", "acc_at_5pct": "acc @5% MB",
}


def main(argv: list[str] | None = None) -> int:
    """Run the demo sweep and print the comparison; returns 1 if a run failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config keys for both runs")
    args = parser.parse_args(argv)
    started = time.time()
    sweep = load_sweep(SWEEP, args.results_dir, parse_overrides(args.set))
    report = run_sweep(sweep)
    for name, error in report.failed:
        print(f"FAILED {name}: {error}")
    if report.failed:
        return 1
    rounds, _, _ = load_results(sweep.folder)
    table = savings_table(rounds, by=())
    target = float(table["target"].iloc[0])
    print(f"\nTarget: FedAvg's final accuracy (mean of its last 5 rounds) - 1 point = {target:.4f}; "
          "'MB to target': first round whose 3-round mean reaches it; 'acc @p% MB': accuracy "
          "after p% of FedAvg's total bytes")
    with pd.option_context("display.width", 200):
        print(table[list(COLUMNS)].rename(columns=COLUMNS).to_string(float_format=lambda v: f"{v:.4g}"))
    figure = sweep.folder / "accuracy_vs_mb.png"
    fig = plot_accuracy_vs_bytes(rounds)
    fig.savefig(figure, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    print(f"\nfigure: {figure}\nwall time: {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
