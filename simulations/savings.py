"""Savings a reviewer can check: bytes to a target and accuracy at a byte budget, over seeds.

The rules (issue 12), applied to the rounds of :func:`simulations.analysis.load_results`:

- a run's **final accuracy** is the mean of its last :data:`FINAL_WINDOW` rounds;
- a group's (scenario, alpha) **target** is the baseline's (FedAvg's) final accuracy, mean
  over its seeds, minus :data:`MARGIN`;
- a run **reaches** the target at the first round whose mean accuracy over that round and
  the :data:`CROSSING_WINDOW` - 1 before it is at or above it: one lucky round does not count;
- **bytes to target** are the cumulative wire bytes at that round, every phase counted;
- the **savings** of a method in a seed are the baseline's bytes to target in that seed over
  the method's (runs of one seed sample the same clients in every round: a paired
  comparison); tables give their mean and min-max over the seeds that reached it;
- **accuracy at a budget** of p% of the baseline's total bytes (its mean over seeds) is the
  smoothed accuracy of the last round within the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

FINAL_WINDOW = 5
CROSSING_WINDOW = 3
MARGIN = 0.01
BUDGETS = (0.01, 0.05, 0.10)
MB = 1e6


def final_accuracy(run: pd.DataFrame, window: int = FINAL_WINDOW) -> float:
    """Mean accuracy of one run's last ``window`` rounds."""
    return float(run.sort_values("round")["accuracy"].tail(window).mean())


def smoothed(run: pd.DataFrame, window: int = CROSSING_WINDOW) -> pd.Series:
    """Each round's mean accuracy over it and the ``window - 1`` rounds before (NaN before that)."""
    return run.sort_values("round")["accuracy"].rolling(window, min_periods=window).mean()


def bytes_to_target(run: pd.DataFrame, target: float, window: int = CROSSING_WINDOW,
                    column: str = "cumulative_bytes") -> float:
    """``column`` (cumulative bytes) at the first round whose smoothed accuracy reaches ``target``;
    NaN if none does."""
    ordered = run.sort_values("round")
    hit = ordered[smoothed(ordered, window).to_numpy() >= target]
    return float(hit[column].iloc[0]) if len(hit) and column in hit else float("nan")


def accuracy_at_budget(run: pd.DataFrame, budget: float, window: int = CROSSING_WINDOW) -> float:
    """Smoothed accuracy of the last round whose cumulative bytes fit ``budget``; NaN if none does."""
    ordered = run.sort_values("round").reset_index(drop=True)
    accuracy = smoothed(ordered, window)
    within = ordered.index[(ordered["cumulative_bytes"] <= budget) & accuracy.notna()]
    return float(accuracy[within[-1]]) if len(within) else float("nan")


def savings_table(
    rounds: pd.DataFrame,
    baseline: str = "fedavg",
    by: Sequence[str] = ("scenario", "alpha"),
    margin: float = MARGIN,
    budgets: Sequence[float] = BUDGETS,
) -> pd.DataFrame:
    """Per group and method (``label``): the headline numbers over seeds.

    Returns
    -------
    pd.DataFrame
        Index ``by`` + ``label``. Columns: ``strategy``, ``density``, ``seeds``,
        ``final_accuracy`` (mean) with ``final_min``/``final_max``, ``rounds`` (mean rounds
        run), ``mb_total``, ``mb_one_time`` (means), ``target``, ``reached`` (seeds),
        ``mb_to_target`` (mean over the seeds that reached it) with ``mb_to_target_min``/
        ``_max`` and ``mb_one_time_to_target`` (its one-time part), ``savings`` (mean of the per-seed ratios; NaN unless every seed reached)
        with ``savings_min``/``_max``, and ``acc_at_<p>pct`` per budget.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"savings_table: margin must be in [0, 1), got {margin}")
    by = [column for column in by if column in rounds.columns]
    rows = []
    for key, group in rounds.groupby(by, sort=False, dropna=False) if by else [((), rounds)]:
        key = key if isinstance(key, tuple) else (key,)
        runs = {run: frame for run, frame in group.groupby("run", sort=False)}
        base_runs = {run: frame for run, frame in runs.items() if frame["strategy"].iloc[0] == baseline}
        target = float(np.mean([final_accuracy(f) for f in base_runs.values()])) - margin if base_runs else np.nan
        base_total = float(np.mean([f["cumulative_bytes"].max() for f in base_runs.values()])) if base_runs else np.nan
        base_by_seed = {int(f["seed"].iloc[0]): bytes_to_target(f, target) for f in base_runs.values()}
        for label, method in group.groupby("label", sort=False):
            per_run = [frame for _, frame in method.groupby("run", sort=False)]
            to_target = np.array([bytes_to_target(f, target) for f in per_run])
            ratios = np.array([base_by_seed.get(int(f["seed"].iloc[0]), np.nan) / b if b > 0 else np.nan
                               for f, b in zip(per_run, to_target, strict=True)])
            finals = np.array([final_accuracy(f) for f in per_run])
            reached = int(np.sum(~np.isnan(to_target)))
            row = {
                **dict(zip(by, key, strict=True)), "label": label,
                "strategy": per_run[0]["strategy"].iloc[0], "density": per_run[0]["density"].iloc[0],
                "seeds": len(per_run), "final_accuracy": finals.mean(), "final_min": finals.min(),
                "final_max": finals.max(), "rounds": float(np.mean([f["round"].max() for f in per_run])),
                "mb_total": float(np.mean([f["cumulative_bytes"].max() for f in per_run])) / MB,
                "mb_one_time": float(np.mean([_last(f, "cumulative_one_time_bytes") for f in per_run])) / MB,
                "target": target, "reached": reached,
                **_spread("mb_to_target", to_target / MB),
                "mb_one_time_to_target": _mean_or_nan(
                    [bytes_to_target(f, target, column="cumulative_one_time_bytes") for f in per_run]) / MB,
                **_spread("savings", ratios),
            }
            if reached < len(per_run):
                row["savings"] = np.nan
            for budget in budgets:
                accuracies = [accuracy_at_budget(f, budget * base_total) for f in per_run]
                row[f"acc_at_{100 * budget:g}pct"] = float(np.nanmean(accuracies)) if any(
                    not np.isnan(a) for a in accuracies) else np.nan
            rows.append(row)
    return pd.DataFrame(rows).set_index([*by, "label"])


def best_of(table: pd.DataFrame, strategy: str = "fedfish") -> pd.DataFrame:
    """Per group, the ``strategy`` method with the largest savings among those run with the most
    seeds (a setting with one lucky seed does not outrank one measured over three; a group where
    none reached the target keeps its most accurate method, with NaN savings, so a miss stays
    visible)."""
    rows = table[table["strategy"] == strategy].reset_index()
    groups = [name for name in table.index.names if name != "label"]
    picked = [frame.sort_values(["seeds", "savings", "final_accuracy"], ascending=False, na_position="last").iloc[0]
              for _, frame in (rows.groupby(groups, sort=False) if groups else [((), rows)])]
    out = pd.DataFrame(picked, columns=rows.columns)  # the columns even when no group has the strategy
    return out.set_index(groups) if groups else out


def ratio_of_bytes(table: pd.DataFrame, numerator: str, denominator: str) -> pd.Series:
    """Per group, mean bytes to target of method ``numerator`` over method ``denominator``
    (e.g. random-fixed 2% over FedFish 2%: > 1 when the Fisher mask needs fewer bytes);
    ``inf`` where ``numerator`` never reached the target and ``denominator`` did (each run
    went on until it levelled off, so never is never), 0 the other way round, NaN where
    neither did."""
    frame = table.reset_index()
    groups = [name for name in table.index.names if name != "label"]
    wide = frame.pivot_table(index=groups, columns="label", values="mb_to_target", aggfunc="first",
                              dropna=False)
    if numerator not in wide or denominator not in wide:
        return pd.Series(dtype=float)
    top, bottom = wide[numerator], wide[denominator]
    ratio = (top / bottom).mask(top.isna() & bottom.notna(), np.inf)
    return ratio.mask(top.notna() & bottom.isna(), 0.0)


def _spread(name: str, values: np.ndarray) -> dict[str, float]:
    finite = values[~np.isnan(values)]
    if not len(finite):
        return {name: np.nan, f"{name}_min": np.nan, f"{name}_max": np.nan}
    return {name: float(finite.mean()), f"{name}_min": float(finite.min()), f"{name}_max": float(finite.max())}


def _mean_or_nan(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _last(run: pd.DataFrame, column: str) -> float:
    return float(run.sort_values("round")[column].iloc[-1]) if column in run else 0.0
