"""Communication savings of FedFish over FedAvg in the cross-device benchmark, with their spread.

    python -m bench.savings            # run (or resume) the sweep into results/, then analyse it
    python -m bench.savings --no-run   # analyse the committed evidence in docs/results/ only
    python -m bench.savings --no-run --markdown   # ... and print the tables docs/results.md shows

The sweep is ``simulations/sweeps/crossdevice.toml`` (100 clients, 10 per round, full
Fashion-MNIST less a 2% public split, 3 seeds, every run until it levels off); the rules
are :mod:`simulations.savings`' (target = FedAvg's final accuracy, mean of its last 5
rounds and of its seeds, minus 1 point; reached at the first round whose 3-round mean gets
there; savings = FedAvg's bytes to target over the method's, per seed, every byte counted).
Per (scenario, alpha) the best FedFish setting is named with its savings' mean and min-max
over seeds; a goal missed is said so. The last line is::

    RESULT savings_finetune_alpha0.5=<x> savings_finetune_alpha0.1=<x> savings_scratch_alpha0.5=<x>
           fish_vs_random_finetune=<bytes to target, random-fixed 2% / FedFish 2%, alpha 0.5>

``nan`` where a group has not run yet or no FedFish setting reached the target in every seed.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from simulations.analysis import load_results
from simulations.run import parse_overrides
from simulations.savings import best_of, ratio_of_bytes, savings_table
from simulations.sweep import export_evidence, load_sweep, run_sweep

SWEEP = "simulations/sweeps/crossdevice.toml"
EVIDENCE = "docs/results"


@dataclass(frozen=True)
class Goal:
    """A savings goal of the issue: a (scenario, alpha) group and the least savings wanted."""

    scenario: str
    alpha: float
    at_least: float

    @property
    def key(self) -> str:
        return f"savings_{self.scenario}_alpha{self.alpha:g}"


GOALS = (Goal("finetune", 0.5, 50.0), Goal("finetune", 0.1, 20.0), Goal("scratch", 0.5, 10.0))
FISH_VS_RANDOM = ("finetune", 0.5, "random-fixed 2%", "fedfish 2%")


def verdict(goal: Goal, table: pd.DataFrame) -> tuple[float, str]:
    """``(savings, a line on the best FedFish setting)`` of ``goal`` in ``table``."""
    best = best_of(table, "fedfish")
    if (goal.scenario, goal.alpha) not in best.index:
        return float("nan"), f"not run yet (goal >= {goal.at_least:g})"
    row = best.loc[(goal.scenario, goal.alpha)]
    value = float(row["savings"])
    fedavg_seeds = int(table.loc[(goal.scenario, goal.alpha, "fedavg"), "seeds"]) \
        if (goal.scenario, goal.alpha, "fedavg") in table.index else 0
    if math.isnan(value):
        outcome = f"missed: reached in {row['reached']} of {row['seeds']} seeds"
    else:
        outcome = "met" if value >= goal.at_least else "missed"
    seeds = f"FedAvg seeds {fedavg_seeds}, FedFish seeds {row['seeds']}; goal >= {goal.at_least:g}: {outcome}"
    if math.isnan(value):
        return value, (f"{row['label']} (the closest FedFish setting): target {row['target']:.4f} not reached, "
                       f"final {row['final_accuracy']:.4f} after {row['mb_total']:.1f} MB; {seeds}")
    spread = f"{row['savings_min']:.1f}-{row['savings_max']:.1f}x"
    return value, (f"{row['label']}: {value:.1f}x (seeds {spread}), {row['mb_to_target']:.1f} MB to "
                   f"{row['target']:.4f}, final {row['final_accuracy']:.4f}; {seeds}")


def equal_bytes(table: pd.DataFrame, scenario: str, alpha: float, first: str, second: str) -> str:
    """The two methods' final accuracies and total MB, for a comparison at (about) equal bytes."""
    rows = [(label, table.loc[(scenario, alpha, label)]) for label in (first, second)
            if (scenario, alpha, label) in table.index]
    if len(rows) < 2:
        return ""
    return "; final accuracy " + ", ".join(
        f"{label} {row['final_accuracy']:.4f} after {row['mb_total']:.0f} MB ({row['seeds']} seeds)" for label, row in rows)


def _spread_text(value: float, low: float, high: float, fmt: str, unit: str = "") -> str:
    """``value`` and, where the seeds differ, its min-max: ``31.1x (28.0-33.9)``."""
    if math.isnan(value):
        return "-"
    text = f"{value:{fmt}}{unit}"
    if not (math.isnan(low) or math.isnan(high)) and f"{low:{fmt}}" != f"{high:{fmt}}":
        text += f" ({low:{fmt}}-{high:{fmt}})"
    return text


def markdown_tables(table: pd.DataFrame) -> str:
    """One markdown table per (scenario, alpha): mean over seeds, min-max in brackets."""
    out = []
    for (scenario, alpha), group in table.groupby(level=["scenario", "alpha"], sort=False):
        target = float(group["target"].iloc[0])
        out += [f"**{scenario}, alpha {alpha:g}** (target {target:.4f})", "",
                "| method | seeds | rounds | final accuracy | MB total | reached | MB to target | savings "
                "| acc @1% / 5% of FedAvg's MB |", "|---|---|---|---|---|---|---|---|---|"]
        for (_, _, label), row in group.iterrows():
            budgets = " / ".join("-" if math.isnan(row[c]) else f"{row[c]:.4f}" for c in ("acc_at_1pct", "acc_at_5pct"))
            mb_total = f"{row['mb_total']:,.0f}" if row["mb_total"] >= 1000 else f"{row['mb_total']:.1f}"
            out.append(
                f"| {label} | {row['seeds']} | {row['rounds']:.0f} "
                f"| {_spread_text(row['final_accuracy'], row['final_min'], row['final_max'], '.4f')} "
                f"| {mb_total} | {row['reached']}/{row['seeds']} "
                f"| {_spread_text(row['mb_to_target'], row['mb_to_target_min'], row['mb_to_target_max'], ',.1f')} "
                f"| {_spread_text(row['savings'], row['savings_min'], row['savings_max'], '.1f', 'x')} | {budgets} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results", help="where the sweep runs (without --no-run)")
    parser.add_argument("--evidence", default=EVIDENCE, help="committed config.json + rounds.csv (with --no-run)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config keys for every point")
    parser.add_argument("--no-run", action="store_true", help="only analyse the committed evidence")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table per group")
    args = parser.parse_args(argv)
    sweep = load_sweep(SWEEP, args.results_dir, parse_overrides(args.set))
    if args.no_run:
        folder = Path(args.evidence) / sweep.name
    else:
        for name, error in run_sweep(sweep).failed:
            print(f"failed point {name}: {error.splitlines()[0]}")
        export_evidence(sweep.folder, Path(args.evidence) / sweep.name)
        folder = sweep.folder
    rounds, _, _ = load_results(folder)
    table = savings_table(rounds)
    columns = ["seeds", "rounds", "final_accuracy", "mb_total", "reached", "mb_to_target", "savings",
               "savings_min", "savings_max", "acc_at_1pct", "acc_at_5pct", "acc_at_10pct"]
    with pd.option_context("display.width", 250, "display.max_rows", 200, "display.max_columns", 20):
        print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
    print()
    if args.markdown:
        print(markdown_tables(table))
    results: dict[str, float] = {}
    for goal in GOALS:
        results[goal.key], line = verdict(goal, table)
        print(f"{goal.key}: {line}")
    scenario, alpha, numerator, denominator = FISH_VS_RANDOM
    ratio = ratio_of_bytes(table, numerator, denominator)
    results["fish_vs_random_finetune"] = float(ratio.get((scenario, alpha), float("nan")))
    print(f"fish_vs_random_finetune: bytes to target of {numerator} / {denominator} at alpha {alpha:g}: "
          f"{results['fish_vs_random_finetune']:.3g} (> 1: the Fisher mask needs fewer bytes; inf: "
          f"{numerator} never reached it){equal_bytes(table, scenario, alpha, numerator, denominator)}")
    print("RESULT " + " ".join(f"{key}={value:.3g}" for key, value in results.items()))


if __name__ == "__main__":
    main()
