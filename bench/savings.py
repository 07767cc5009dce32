"""Communication savings of FedFish over FedAvg at equal accuracy, from the README sweeps.

    python -m bench.savings [--no-run] [--final-window N]

Each goal is measured in its own sweep folder, where FedAvg and FedFish share every
setting (``GOALS`` names the sweep files; points already done are skipped). Per
(scenario, alpha): target accuracy = FedAvg's final accuracy (mean over seeds) - 1 point;
bytes to target = wire bytes until a method first reaches it, everything counted: warm-up,
calibration (Fisher upload), mask and dense base sync. The savings factor is FedAvg's
bytes to target over the method's, and a method that misses the target in any seed has
none. The last line is::

    RESULT savings_finetune_alpha0.5=<x> savings_finetune_alpha0.1=<x> savings_scratch_alpha0.5=<x>

each the best FedFish setting of that group (named on the lines above, with its goal);
``nan`` where the group was not run or no FedFish setting reached the target.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import pandas as pd

from simulations.analysis import best_savings, load_results, savings_table
from simulations.run import parse_overrides
from simulations.sweep import Sweep, load_sweep, run_sweep

SWEEPS = "simulations/sweeps"


@dataclass(frozen=True)
class Goal:
    """A savings goal of the issue and the sweeps (sharing one folder) that measure it."""

    scenario: str
    alpha: float
    at_least: float
    sweeps: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"savings_{self.scenario}_alpha{self.alpha:g}"


GOALS = (
    Goal("finetune", 0.5, 20.0, (f"{SWEEPS}/readme.toml", f"{SWEEPS}/readme_public.toml")),
    Goal("finetune", 0.1, 10.0, (f"{SWEEPS}/readme_finetune_alpha01.toml",)),
    Goal("scratch", 0.5, 5.0, (f"{SWEEPS}/readme_scratch_long.toml",)),
)


def verdict(goal: Goal, table: pd.DataFrame) -> tuple[float, str]:
    """``(savings, description of the best FedFish setting)`` of ``goal`` in ``table``."""
    best = best_savings(table, "fedfish")
    if (goal.scenario, goal.alpha) not in best.index:
        return float("nan"), f"not run (goal >= {goal.at_least:g})"
    row = best.loc[(goal.scenario, goal.alpha)]
    value = float(row["savings"])
    if row["mb_to_target"] == 0:
        outcome = "not measurable: the starting model already meets the target (0 bytes for every method)"
    elif math.isnan(value):
        outcome = "not reached by every seed" if row["reached"] else "not reached"
    else:
        outcome = "met" if value >= goal.at_least else "missed"
    return value, (
        f"{row['label']}: {value:.2f}x, {row['reached']}/{row['seeds']} seeds reached "
        f"{row['target']:.4f}, final {row['final_accuracy']:.4f}; goal >= {goal.at_least:g}: {outcome}"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config keys for every point")
    parser.add_argument("--no-run", action="store_true", help="only analyse the points already done")
    parser.add_argument("--final-window", type=int, default=1,
                        help="final accuracy = mean of the last N rounds (default: 1, the last round)")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    results: dict[str, tuple[float, str]] = {}
    columns = ["seeds", "final_accuracy", "final_accuracy_std", "mb_total", "reached", "mb_to_target", "savings"]
    for goal in GOALS:
        sweeps: list[Sweep] = [load_sweep(path, args.results_dir, overrides) for path in goal.sweeps]
        if not args.no_run:
            for sweep in sweeps:
                for name, error in run_sweep(sweep).failed:
                    print(f"failed point {name}: {error.splitlines()[0]}")
        try:
            rounds, _, _ = load_results(sweeps[0].folder)
        except FileNotFoundError:
            results[goal.key] = (float("nan"), f"not run: no finished points in {sweeps[0].folder} "
                                               f"(goal >= {goal.at_least:g})")
            continue
        table = savings_table(rounds, baseline="fedavg", by=("scenario", "alpha"), final_window=args.final_window)
        print(f"\n{goal.key}: {', '.join(goal.sweeps)} -> {sweeps[0].folder}")
        with pd.option_context("display.width", 200, "display.max_rows", 200):
            print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
        results[goal.key] = verdict(goal, table)
    print()
    for key, (_, description) in results.items():
        print(f"{key}: {description}")
    print("RESULT " + " ".join(f"{key}={value:.3g}" for key, (value, _) in results.items()))


if __name__ == "__main__":
    main()
