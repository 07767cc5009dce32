"""Communication savings of FedFish over FedAvg in the cross-device benchmark, with their spread.

    python -m bench.savings            # run (or resume) the sweep into results/, then analyse it
    python -m bench.savings --no-run   # analyse the committed evidence in docs/results/ only
    python -m bench.savings --no-run --markdown   # ... and print the tables docs/results.md shows
    python -m bench.savings --no-run --update-docs README.md docs/results.md   # ... and write them there

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
The second architecture (``simulations/sweeps/crossdevice_resnet.toml``, FedAvg vs FedFish 2% and 10%)
gets its own table and verdict line when its evidence is there; it is not part of RESULT.

``--update-docs`` replaces what stands between ``<!-- savings:begin -->`` and
``<!-- savings:end -->`` in each file named (the status line, the verdict lines and the tables),
so the numbers in the docs are the evidence's and nobody pastes them by hand; the prose
around the block is left alone.
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
from simulations.sweep import run_sweep
from simulations.sweep_evidence import done_markers, export_evidence
from simulations.sweep_file import Sweep, load_sweep

SWEEP = "simulations/sweeps/crossdevice.toml"
SECOND_ARCHITECTURE = "simulations/sweeps/crossdevice_resnet.toml"
EVIDENCE = "docs/results"
BLOCK_BEGIN, BLOCK_END = "<!-- savings:begin -->", "<!-- savings:end -->"


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


def status_line(sweeps: list[Sweep], evidence: Path) -> str:
    """How many points of each sweep have committed evidence, per (scenario, alpha) group."""
    parts = []
    for sweep in sweeps:
        done = {marker.parent.name for marker in done_markers(evidence / sweep.name)}
        groups: dict[str, list[int]] = {}
        for point in sweep.points:
            group = f"{point.tags.get('scenario', 'all')}, alpha {point.config.alpha:g}"
            counts = groups.setdefault(group, [0, 0])
            counts[0] += point.name in done
            counts[1] += 1
        finished = sum(finished for finished, _ in groups.values())
        detail = "; ".join(f"{group}: {finished} of {total}" for group, (finished, total) in groups.items())
        parts.append(f"`{sweep.name}` {finished} of {len(sweep.points)} points ({detail})")
    return "**Finished and committed: " + ", ".join(parts) + ".**"


def result_lines(table: pd.DataFrame) -> list[str]:
    """The verdict of each goal, the Fisher-vs-random comparison and the RESULT line."""
    lines, results = [], {}
    for goal in GOALS:
        results[goal.key], line = verdict(goal, table)
        lines.append(f"{goal.key}: {line}")
    scenario, alpha, numerator, denominator = FISH_VS_RANDOM
    ratio = ratio_of_bytes(table, numerator, denominator)
    results["fish_vs_random_finetune"] = float(ratio.get((scenario, alpha), float("nan")))
    lines.append(f"fish_vs_random_finetune: bytes to target of {numerator} / {denominator} at alpha {alpha:g}: "
                 f"{results['fish_vs_random_finetune']:.3g} (> 1: the Fisher mask needs fewer bytes; inf: "
                 f"{numerator} never reached it){equal_bytes(table, scenario, alpha, numerator, denominator)}")
    lines.append("RESULT " + " ".join(f"{key}={value:.3g}" for key, value in results.items()))
    return lines


def second_architecture_line(table: pd.DataFrame, model: str) -> str:
    """FedFish's savings on the second architecture, with the same rules (no goal of its own)."""
    best = best_of(table, "fedfish")
    if best.empty:
        return f"{model}: no FedFish point finished yet"
    group, row = next(best.iterrows())
    if math.isnan(float(row["savings"])):
        return (f"{model}, {group[0]} alpha {group[1]:g}: {row['label']} reached the target {row['target']:.4f} "
                f"in {row['reached']} of {row['seeds']} seeds, final {row['final_accuracy']:.4f}")
    return (f"{model}, {group[0]} alpha {group[1]:g}: {row['label']}: {row['savings']:.1f}x "
            f"(seeds {row['savings_min']:.1f}-{row['savings_max']:.1f}x), {row['mb_to_target']:.1f} MB to "
            f"{row['target']:.4f}, final {row['final_accuracy']:.4f}, {row['seeds']} seeds")


def docs_block(status: str, lines: list[str], tables: str) -> str:
    """What ``--update-docs`` puts between the markers."""
    return "\n".join([BLOCK_BEGIN, status, "", "```text", *lines, "```", "", tables.rstrip(), BLOCK_END])


def update_docs(path: str | Path, block: str) -> None:
    """Replace the marked block of ``path`` by ``block`` (which carries the markers).

    Raises
    ------
    ValueError
        ``path`` does not hold each marker exactly once, begin before end; the file is left as it was.
    """
    text = Path(path).read_text()
    if text.count(BLOCK_BEGIN) != 1 or text.count(BLOCK_END) != 1 or text.index(BLOCK_BEGIN) > text.index(BLOCK_END):
        raise ValueError(f"{path}: needs one '{BLOCK_BEGIN}' line and, after it, one '{BLOCK_END}' line "
                         "around the generated results")
    before, rest = text.split(BLOCK_BEGIN)
    after = rest.split(BLOCK_END)[1]
    Path(path).write_text(before + block + after)


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="results", help="where the sweep runs (without --no-run)")
    parser.add_argument("--evidence", default=EVIDENCE, help="committed config.json + rounds.csv (with --no-run)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config keys for every point")
    parser.add_argument("--no-run", action="store_true", help="only analyse the committed evidence")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table per group")
    parser.add_argument("--update-docs", nargs="+", default=[], metavar="FILE",
                        help=f"write the status, verdicts and tables between the {BLOCK_BEGIN} markers of FILE")
    args = parser.parse_args(argv)
    sweep = load_sweep(SWEEP, args.results_dir, parse_overrides(args.set))
    second = load_sweep(SECOND_ARCHITECTURE, args.results_dir, parse_overrides(args.set))
    if args.no_run:
        folder = Path(args.evidence) / sweep.name
    else:
        for name, error in run_sweep(sweep).failed:
            print(f"failed point {name}: {error.splitlines()[0]}")
        export_evidence(sweep.folder, Path(args.evidence) / sweep.name)
        folder = sweep.folder
    rounds, _, _ = load_results(folder)
    # Groups in the sweep's order (alpha 0.5 first, fine-tune before scratch), methods as run.
    table = savings_table(rounds).sort_index(level=["alpha", "scenario"], ascending=[False, True],
                                             sort_remaining=False)
    columns = ["seeds", "rounds", "final_accuracy", "mb_total", "reached", "mb_to_target", "savings",
               "savings_min", "savings_max", "acc_at_1pct", "acc_at_5pct", "acc_at_10pct"]
    with pd.option_context("display.width", 250, "display.max_rows", 200, "display.max_columns", 20):
        print(table[columns].to_string(float_format=lambda v: f"{v:.4g}"))
    print()
    tables = markdown_tables(table)
    lines = result_lines(table)
    second_evidence = Path(args.evidence) / second.name
    if done_markers(second_evidence):
        second_table = savings_table(load_results(second_evidence)[0])
        model = second.points[0].config.model
        tables += f"\nSecond architecture, `{model}` (`{SECOND_ARCHITECTURE}`):\n\n" + markdown_tables(second_table)
        lines.insert(len(GOALS) + 1, f"second_architecture: {second_architecture_line(second_table, model)}")
    if args.markdown:
        print(tables)
    if args.update_docs:
        block = docs_block(status_line([sweep, second], Path(args.evidence)), lines, tables)
        for path in args.update_docs:
            update_docs(path, block)
            print(f"updated the results block of {path}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
