"""Communication savings of FedFish over FedAvg at equal accuracy, from a sweep.

    python -m bench.savings [--sweep simulations/sweeps/readme.toml] [--no-run]

Runs the sweep (points already done are skipped), then for each (scenario, alpha) takes
the target accuracy = FedAvg's final accuracy (mean over seeds) - 1 point, and the
wire bytes each method needed to first reach it, everything counted: warm-up,
calibration (Fisher upload), mask and dense base sync. The savings factor is FedAvg's
bytes to target over the method's. The last line is::

    RESULT savings_finetune_alpha0.5=<x> savings_finetune_alpha0.1=<x> savings_scratch_alpha0.5=<x>

each the best FedFish setting of that group (named on the lines above, with its goal);
``nan`` where the group was not run or no FedFish setting reached the target.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd

from simulations.analysis import best_savings, load_results, savings_table
from simulations.run import parse_overrides
from simulations.sweep import load_sweep, run_sweep

# (scenario, alpha) -> savings goal of the issue.
GOALS: dict[tuple[str, float], float] = {("finetune", 0.5): 20.0, ("finetune", 0.1): 10.0, ("scratch", 0.5): 5.0}


def headline(rounds: pd.DataFrame, final_window: int = 1) -> tuple[pd.DataFrame, dict[str, tuple[float, str]]]:
    """The savings table and, per goal, ``(savings, description of the FedFish setting)``."""
    table = savings_table(rounds, baseline="fedavg", by=("scenario", "alpha"), final_window=final_window)
    best = best_savings(table, "fedfish")
    results: dict[str, tuple[float, str]] = {}
    for (scenario, alpha), goal in GOALS.items():
        key = f"savings_{scenario}_alpha{alpha:g}"
        if (scenario, alpha) not in best.index:
            results[key] = (float("nan"), f"not run (goal >= {goal:g})")
            continue
        row = best.loc[(scenario, alpha)]
        value = float(row["savings"])
        if row["mb_to_target"] == 0:
            verdict = "not measurable: the starting model already meets the target (0 bytes for every method)"
        elif math.isnan(value):
            verdict = "not reached by every seed" if row["reached"] else "not reached"
        else:
            verdict = "met" if value >= goal else "missed"
        results[key] = (value, (
            f"{row['label']}: {value:.2f}x, {row['reached']}/{row['seeds']} seeds reached "
            f"{row['target']:.4f}, final {row['final_accuracy']:.4f}; goal >= {goal:g}: {verdict}"
        ))
    return table, results


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="simulations/sweeps/readme.toml")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config keys for every point")
    parser.add_argument("--no-run", action="store_true", help="only analyse the points already done")
    parser.add_argument("--final-window", type=int, default=1,
                        help="final accuracy = mean of the last N rounds (default: 1, the last round)")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep, args.results_dir, parse_overrides(args.set))
    if not args.no_run:
        report = run_sweep(sweep)
        for name, error in report.failed:
            print(f"failed point {name}: {error.splitlines()[0]}")
    rounds, _, _ = load_results(sweep.folder)
    table, results = headline(rounds, args.final_window)
    columns = ["seeds", "final_accuracy", "final_accuracy_std", "mb_total", "reached", "mb_to_target", "savings"]
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
    for key, (_, description) in results.items():
        print(f"{key}: {description}")
    print("RESULT " + " ".join(f"{key}={value:.3g}" for key, (value, _) in results.items()))


if __name__ == "__main__":
    main()
