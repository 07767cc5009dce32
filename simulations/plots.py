"""Figures of results: accuracy against bytes with a band over seeds, and where the bytes go.

Every function draws into a given matplotlib Axes (a new figure otherwise) and returns the
figure; frames come from :func:`simulations.analysis.load_results` and
:func:`simulations.savings.savings_table`. MB = 1e6 bytes.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd

from fedfish.accounting import PHASES
from simulations.analysis import DIRECTIONS, MB, ONE_TIME_PHASES, phase_bytes


def plot_accuracy_vs_bytes(
    rounds: pd.DataFrame, ax: Any = None, by: str = "label", direction: str = "", band: bool = True
) -> object:
    """Accuracy against cumulative MB (log x): per ``by`` group the mean over its runs (seeds)
    round by round, and the min-max band of their accuracies.

    Parameters
    ----------
    rounds : pd.DataFrame
        Rounds of the runs to draw.
    ax : matplotlib Axes | None (default: None)
        Draw into it; a new figure otherwise.
    by : str (default: "label")
        Column whose values are the lines (``run`` draws every run on its own).
    direction : str (default: "")
        ``""`` (both directions), ``"_up"`` or ``"_down"``.
    band : bool (default: True)
        Shade the seeds' min-max accuracy.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    fig, ax = _lines_figure(ax)
    column = f"cumulative_bytes{direction}"
    for name, group in rounds[rounds["round"] > 0].groupby(by, sort=False):
        per_round = group.groupby("round").agg(mb=(column, "mean"), acc=("accuracy", "mean"),
                                               low=("accuracy", "min"), high=("accuracy", "max"))
        line = ax.plot(per_round["mb"] / MB, per_round["acc"], lw=1.4, label=str(name))[0]
        if band and group["run"].nunique() > 1:
            ax.fill_between(per_round["mb"] / MB, per_round["low"], per_round["high"], color=line.get_color(),
                            alpha=0.2, lw=0)
    ax.set_xscale("log")
    _finish(ax, f"cumulative MB on the wire ({DIRECTIONS[direction]})", "test accuracy", grid="both")
    return fig


def plot_accuracy_vs_round(rounds: pd.DataFrame, ax: Any = None, by: str = "label") -> object:
    """Mean accuracy per server round over each ``by`` group's runs."""
    fig, ax = _lines_figure(ax)
    for name, group in rounds.groupby(by, sort=False):
        per_round = group.groupby("round")["accuracy"].mean()
        ax.plot(per_round.index, per_round.to_numpy(), lw=1.2, label=str(name))
    _finish(ax, "server round", "test accuracy", grid="major")
    return fig


def plot_bytes_per_round(rounds: pd.DataFrame, ax: Any = None, by: str = "label") -> object:
    """Mean MB on the wire per round (both directions, log y), per ``by`` group."""
    fig, ax = _lines_figure(ax)
    per_round = rounds[rounds["round"] > 0].groupby([by, "round"], sort=False)["bytes_total"].mean().reset_index()
    for name, group in per_round.groupby(by, sort=False):
        ax.plot(group["round"], group["bytes_total"] / MB, lw=1.2, label=str(name))
    ax.set_yscale("log")
    _finish(ax, "server round", "MB per round (up + down)", grid="both")
    return fig


def plot_bytes_to_target(table: pd.DataFrame, ax: Any = None) -> object:
    """Per method of a :func:`simulations.savings.savings_table` group: MB to the target (mean
    over seeds, log x) as two segments, the one-time part (calibration, masks, bases a node
    could not rebuild, enrolment) and the per-round part; methods that never reached it are
    listed with their final accuracy."""
    fig, ax = _figure(ax)
    labels = [str(label) for label in table.index.get_level_values("label")]
    one_time = table["mb_one_time_to_target"].fillna(0.0).to_numpy()
    total = table["mb_to_target"].to_numpy()
    reached = ~np.isnan(total)
    y = np.arange(len(labels))
    ax.barh(y[reached], one_time[reached], color="0.35", label="one-time (mask, calibration, enrolment)")
    ax.barh(y[reached], (total - one_time)[reached], left=one_time[reached], color="tab:blue", label="per round")
    for i in np.flatnonzero(~reached):
        ax.text(0.02, y[i], f"not reached (final {table['final_accuracy'].iloc[i]:.3f})", va="center",
                transform=ax.get_yaxis_transform(), fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"MB to the target accuracy {table['target'].iloc[0]:.4f} (mean over seeds)")
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    return fig


def plot_phase_bytes(clients: pd.DataFrame, ax: Any = None, by: str = "label") -> object:
    """Stacked bars of total MB per phase (hatched: one-time phases), mean per ``by`` group."""
    fig, ax = _figure(ax)
    per_run = phase_bytes(clients)["total"].unstack("phase", fill_value=0)
    groups = clients.groupby("run")[by].first()
    per_group = per_run.groupby(groups.reindex(per_run.index), sort=False).mean() / MB
    bottom = np.zeros(len(per_group))
    for phase in (p for p in PHASES if p in per_group.columns):
        hatch = "//" if phase in ONE_TIME_PHASES else None
        ax.bar(per_group.index.astype(str), per_group[phase], bottom=bottom, label=phase, hatch=hatch)
        bottom += per_group[phase].to_numpy()
    ax.set_yscale("log")
    ax.set_ylabel("MB per run (up + down)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7, title="phase (hatched: one-time)", title_fontsize=7)
    fig.tight_layout()
    return fig


def _figure(ax: Any) -> tuple[Any, Any]:
    """``ax`` and its figure, or a new figure of the notebooks' size."""
    return (ax.figure, ax) if ax is not None else pyplot().subplots(figsize=(7, 4.5))


def _lines_figure(ax: Any) -> tuple[Any, Any]:
    """:func:`_figure`, whose lines stay apart past matplotlib's 10 colours (the crossdevice sweep
    has 11 methods): the 10 colours solid, then dashed, then dotted."""
    from cycler import cycler  # noqa: PLC0415 - matplotlib's own dependency, only plotting needs it

    fig, ax = _figure(ax)
    ax.set_prop_cycle(cycler(linestyle=["-", "--", ":"]) * cycler(color=pyplot().get_cmap("tab10").colors))
    return fig, ax


def _finish(ax: Any, xlabel: str, ylabel: str, grid: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which=grid, alpha=0.3)
    ax.legend(fontsize=7)
    ax.figure.tight_layout()


def pyplot() -> Any:
    """matplotlib.pyplot, on the Agg backend outside notebooks (scripts, tests)."""
    import matplotlib  # noqa: PLC0415 - only plotting needs it

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt
