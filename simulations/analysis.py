"""Results folders -> tidy pandas DataFrames, summary tables and figures.

One loader serves the demo, the notebooks and the README table: point
:func:`load_results` at a run folder, or at a folder of run folders (a sweep).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from simulations.results import read_run

MB = 1e6


def run_dirs(folder: str | Path) -> list[Path]:
    """Every complete run under ``folder`` (itself included), sorted by path."""
    folder = Path(folder)
    found = [p.parent for p in folder.rglob("rounds.csv") if (p.parent / "config.json").is_file()]
    return sorted(found)


def load_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tidy frames of all runs under ``folder``.

    Returns
    -------
    rounds : pd.DataFrame
        ``rounds.csv`` rows of every run, with columns ``run`` (folder name relative to
        ``folder``), ``strategy``, ``density``, ``alpha``, ``seed`` prepended.
    clients : pd.DataFrame
        ``clients.csv`` rows with ``run`` prepended.
    configs : pd.DataFrame
        One row per run: ``run`` and every run-config key, plus ``num_params``.
    """
    folder = Path(folder)
    rounds, clients, configs = [], [], []
    for run_dir in run_dirs(folder):
        name = str(run_dir.relative_to(folder)) if run_dir != folder else run_dir.name
        info, r, c = read_run(run_dir)
        cfg = info["config"]
        r.insert(0, "run", name)
        for i, key in enumerate(("strategy", "density", "alpha", "seed"), start=1):
            r.insert(i, key, cfg[key])
        c.insert(0, "run", name)
        rounds.append(r)
        clients.append(c)
        configs.append({"run": name, **cfg, "num_params": info["num_params"]})
    if not rounds:
        raise FileNotFoundError(f"no run folders (config.json + rounds.csv) under {folder}")
    return pd.concat(rounds, ignore_index=True), pd.concat(clients, ignore_index=True), pd.DataFrame(configs)


def bytes_to_reach(rounds: pd.DataFrame, target: float) -> float:
    """Cumulative bytes (both directions) when one run's accuracy first reaches ``target``;
    NaN if it never does."""
    hit = rounds[rounds["accuracy"] >= target]
    return float(hit["cumulative_bytes"].iloc[0]) if len(hit) else float("nan")


def summary_table(rounds: pd.DataFrame, baseline: str = "fedavg", target: float | None = None) -> pd.DataFrame:
    """One row per run: final accuracy, MB up/down/total, bytes to a target and savings.

    Parameters
    ----------
    rounds : pd.DataFrame
        From :func:`load_results`.
    baseline : str (default: "fedavg")
        Strategy the savings are measured against (the first run of it).
    target : float | None (default: None)
        Accuracy target; defaults to the baseline's final accuracy minus 1 point.
    """
    finals = rounds.sort_values("round").groupby("run", sort=False).tail(1).set_index("run")
    base_runs = finals[finals["strategy"] == baseline]
    if target is None and len(base_runs):
        target = float(base_runs["accuracy"].iloc[0]) - 0.01
    rows = []
    for run, group in rounds.sort_values("round").groupby("run", sort=False):
        last = group.iloc[-1]
        rows.append({
            "run": run,
            "strategy": last["strategy"],
            "density": last["density"],
            "final_accuracy": last["accuracy"],
            "mb_up": last["cumulative_bytes_up"] / MB,
            "mb_down": last["cumulative_bytes_down"] / MB,
            "mb_total": last["cumulative_bytes"] / MB,
            "mb_to_target": bytes_to_reach(group, target) / MB if target is not None else float("nan"),
        })
    table = pd.DataFrame(rows).set_index("run")
    if len(base_runs):
        base = table.loc[base_runs.index[0]]
        table["savings_total"] = base["mb_total"] / table["mb_total"]
        table["savings_to_target"] = base["mb_to_target"] / table["mb_to_target"]
    table.attrs["target"] = target
    return table


def plot_accuracy_vs_bytes(rounds: pd.DataFrame, path: str | Path | None = None, direction: str = "") -> object:
    """Accuracy against cumulative MB (log x), one line per run; saved to ``path`` if given.

    ``direction``: ``""`` (both), ``"_up"`` or ``"_down"``.
    """
    import matplotlib  # noqa: PLC0415 - only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    column = f"cumulative_bytes{direction}"
    for run, group in rounds.sort_values("round").groupby("run", sort=False):
        group = group[group[column] > 0]
        ax.plot(group[column] / MB, group["accuracy"], marker="o", ms=3, label=run)
    ax.set_xscale("log")
    ax.set_xlabel(f"cumulative MB on the wire{' (' + direction[1:] + 'link)' if direction else ''}")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def config_of(run_dir: str | Path) -> dict[str, object]:
    """The run config of one run folder."""
    return json.loads((Path(run_dir) / "config.json").read_text())["config"]
