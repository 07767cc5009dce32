"""Results folders -> tidy pandas DataFrames, savings tables and figures.

One loader serves the demo, the notebooks, ``bench.savings`` and the README table:
point :func:`load_results` at a run folder, or at a folder of run folders (a sweep).
Sweep points carry ``sweep-point.json`` (written by :mod:`simulations.sweep`); their
axis labels become columns, and points not marked ``done`` are left out.

Byte columns are wire bytes (serialized Flower messages) as ``rounds.csv`` and
``clients.csv`` record them; MB = 1e6 bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedfish.accounting import PHASES as PHASE_ORDER
from simulations.results import read_run

MB = 1e6
POINT_FILE = "sweep-point.json"
# clients.csv phases whose messages are paid once per node or per mask, not per round.
ONE_TIME_PHASES = ("enrol", "calibration")
DIRECTIONS = {"": "total", "_up": "uplink", "_down": "downlink"}


def run_dirs(folder: str | Path) -> list[Path]:
    """Every finished run under ``folder`` (itself included), sorted by path.

    A run is a folder with ``config.json`` and ``rounds.csv``; a sweep point also needs
    ``sweep-point.json`` with status ``done`` (a point still running, or killed half-way,
    is left out).
    """
    folder = Path(folder)
    found = []
    for rounds_csv in folder.rglob("rounds.csv"):
        run_dir = rounds_csv.parent
        if not (run_dir / "config.json").is_file():
            continue
        point = run_dir / POINT_FILE
        if point.is_file() and json.loads(point.read_text()).get("status") != "done":
            continue
        found.append(run_dir)
    return sorted(found)


def load_results(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tidy frames of all finished runs under ``folder``.

    Returns
    -------
    rounds : pd.DataFrame
        ``rounds.csv`` rows of every run, with ``run`` (folder name relative to ``folder``),
        ``strategy``, ``density``, ``alpha``, ``seed``, ``label`` (the run's method:
        the sweep's ``method`` axis label, else strategy and density) and ``setting``
        (``run`` without its seed: the runs a mean over seeds pools) prepended, and one
        column per sweep axis and tag.
    clients : pd.DataFrame
        ``clients.csv`` rows (one per message) with the same prepended columns.
    configs : pd.DataFrame
        One row per run: ``run``, every run-config key, ``num_params`` and the sweep columns.
    """
    folder = Path(folder)
    rounds, clients, configs = [], [], []
    for run_dir in run_dirs(folder):
        name = str(run_dir.relative_to(folder)) if run_dir != folder else run_dir.name
        info, r, c = read_run(run_dir)
        cfg = info["config"]
        tags = _run_tags(name, cfg, run_dir / POINT_FILE)
        for frame in (r, c):
            for i, (key, value) in enumerate(tags.items()):
                frame.insert(i, key, value)
        rounds.append(r)
        clients.append(c)
        configs.append({**tags, **cfg, "num_params": info["num_params"]})
    if not rounds:
        raise FileNotFoundError(f"no finished run folders (config.json + rounds.csv) under {folder}")
    return pd.concat(rounds, ignore_index=True), pd.concat(clients, ignore_index=True), pd.DataFrame(configs)


def _run_tags(name: str, cfg: dict[str, Any], point_file: Path) -> dict[str, Any]:
    tags: dict[str, Any] = {"run": name}
    tags |= {key: cfg[key] for key in ("strategy", "density", "alpha", "seed")}
    if cfg["strategy"] == "fedavg":
        label = "fedavg"
    else:
        label = f"{cfg['strategy']} {100 * cfg['density']:g}%"
    setting = name
    if point_file.is_file():
        point = json.loads(point_file.read_text())
        axes: dict[str, str] = point["axes"]
        label = axes.get("method", label)
        setting = "_".join(value for axis, value in axes.items() if axis != "seed")
        tags |= {f"axis_{axis}": value for axis, value in axes.items()}
        tags |= point.get("tags", {})
    tags["label"] = label
    tags["setting"] = setting
    return tags


def bytes_to_reach(rounds: pd.DataFrame, target: float, direction: str = "") -> float:
    """Cumulative bytes when one run's accuracy first reaches ``target``; NaN if never.

    ``direction``: ``""`` (both), ``"_up"`` or ``"_down"``. Round 0 (the initial model,
    no traffic) counts: a run that starts above the target needed 0 bytes.
    """
    _check_direction(direction)
    hit = rounds.sort_values("round")
    hit = hit[hit["accuracy"] >= target]
    return float(hit[f"cumulative_bytes{direction}"].iloc[0]) if len(hit) else float("nan")


def accuracy_at_bytes(rounds: pd.DataFrame, budget: float) -> float:
    """Best accuracy one run reached within ``budget`` cumulative bytes (both directions)."""
    within = rounds[rounds["cumulative_bytes"] <= budget]
    return float(within["accuracy"].max()) if len(within) else float("nan")


def summary_table(rounds: pd.DataFrame, baseline: str = "fedavg", target: float | None = None) -> pd.DataFrame:
    """One row per run: final accuracy, MB up/down/total, MB to a target and savings.

    Parameters
    ----------
    rounds : pd.DataFrame
        From :func:`load_results`.
    baseline : str (default: "fedavg")
        Strategy the savings are measured against (the first run of it).
    target : float | None (default: None)
        Accuracy target; defaults to the baseline's final accuracy minus 1 point.
    """
    finals = _finals(rounds)
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


def savings_table(
    rounds: pd.DataFrame,
    baseline: str = "fedavg",
    by: tuple[str, ...] = ("scenario", "alpha"),
    margin: float = 0.01,
    targets: dict[tuple[Any, ...], float] | None = None,
    final_window: int = 1,
) -> pd.DataFrame:
    """Per group (scenario, alpha) and method: mean over seeds of the headline numbers.

    The target of a group is the baseline's final accuracy (mean over its seeds) minus
    ``margin``. Bytes to target count every message of the run (warm-up, calibration,
    mask and base sync included) until the first round at or above the target.

    Parameters
    ----------
    rounds : pd.DataFrame
        From :func:`load_results`.
    baseline : str (default: "fedavg")
        Strategy the savings are measured against; a group without it gets NaN savings.
    by : tuple[str, ...] (default: ("scenario", "alpha"))
        Grouping columns; those missing from ``rounds`` are dropped.
    margin : float (default: 0.01)
        Accuracy below the baseline's final accuracy that counts as reached, in [0, 1).
    targets : dict[tuple, float] | None (default: None)
        Explicit target per group key, overriding the baseline rule.
    final_window : int (default: 1)
        "Final accuracy" of a run = mean accuracy of its last ``final_window`` rounds
        (1 = the last round; more smooths round-to-round noise of non-IID runs), >= 1.

    Returns
    -------
    pd.DataFrame
        Index: ``by`` + ``label``; columns ``strategy``, ``density``, ``seeds``,
        ``final_accuracy``, ``final_accuracy_std`` (over seeds; 0 with one seed),
        ``mb_total``, ``mb_one_time`` (only when ``clients`` were merged, see
        :func:`one_time_bytes`), ``target``, ``reached`` (seeds that reached it),
        ``mb_to_target`` (mean over seeds; NaN unless every seed reached it) and
        ``savings`` (baseline ``mb_to_target`` / this ``mb_to_target``).
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    if final_window < 1:
        raise ValueError(f"final_window must be >= 1, got {final_window}")
    by = tuple(col for col in by if col in rounds.columns)
    finals = _finals(rounds, final_window)
    rows = []
    for key, group in rounds.groupby(list(by), sort=False, dropna=False) if by else [((), rounds)]:
        key = key if isinstance(key, tuple) else (key,)
        group_finals = finals[finals["run"].isin(group["run"].unique())]
        base_finals = group_finals[group_finals["strategy"] == baseline]
        if targets is not None and key in targets:
            target = targets[key]
        elif len(base_finals):
            target = float(base_finals["accuracy"].mean()) - margin
        else:
            target = float("nan")
        for label, runs in group.groupby("label", sort=False):
            per_run = [
                (finals.loc[run], bytes_to_reach(run_rows, target))
                for run, run_rows in runs.sort_values("round").groupby("run", sort=False)
            ]
            accuracies = np.array([last["accuracy"] for last, _ in per_run])
            to_target = np.array([b for _, b in per_run])
            reached = int(np.sum(~np.isnan(to_target)))
            rows.append({
                **dict(zip(by, key, strict=True)),
                "label": label,
                "strategy": per_run[0][0]["strategy"],
                "density": per_run[0][0]["density"],
                "seeds": len(per_run),
                "final_accuracy": float(accuracies.mean()),
                "final_accuracy_std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
                "mb_total": float(np.mean([last["cumulative_bytes"] for last, _ in per_run])) / MB,
                "target": target,
                "reached": reached,
                "mb_to_target": float(to_target.mean()) / MB if reached == len(per_run) else float("nan"),
            })
    table = pd.DataFrame(rows)
    group_of = table[list(by)].apply(tuple, axis=1) if by else pd.Series([()] * len(table))
    base = table[table["strategy"] == baseline]
    base_mb = dict(zip(group_of[base.index], base["mb_to_target"], strict=True))
    table["savings"] = [
        base_mb.get(g, float("nan")) / mb if mb > 0 else float("nan")
        for g, mb in zip(group_of, table["mb_to_target"], strict=True)
    ]
    table = table.set_index([*by, "label"])
    return table


def best_savings(table: pd.DataFrame, strategy: str = "fedfish") -> pd.DataFrame:
    """Per group of :func:`savings_table`, the ``strategy`` method with the largest savings.

    Groups where no method of that strategy reached the target keep their best final
    accuracy row with NaN savings, so a miss stays visible.
    """
    rows = table[table["strategy"] == strategy].reset_index()
    group_cols = [c for c in table.index.names if c != "label"]
    if not group_cols:
        rows["_g"] = 0
        group_cols = ["_g"]
    picked = []
    for _, group in rows.groupby(group_cols, sort=False):
        ranked = group.sort_values(["savings", "final_accuracy"], ascending=False, na_position="last")
        picked.append(ranked.iloc[0])
    out = pd.DataFrame(picked).drop(columns=["_g"], errors="ignore")
    return out.set_index([c for c in group_cols if c != "_g"]) if group_cols != ["_g"] else out


def phase_bytes(clients: pd.DataFrame) -> pd.DataFrame:
    """Wire bytes per run, phase and direction (rows: run, phase; columns: up, down, total).

    Phases in :data:`PHASE_ORDER`; ``enrol`` (a node's first contact) and ``calibration``
    (client scores for a mask) are one-time costs, as are mask and base payloads inside
    training messages (the ``one_time_bytes`` column, :func:`one_time_bytes`).
    """
    table = clients.pivot_table(index=["run", "phase"], columns="direction", values="wire_bytes",
                                aggfunc="sum", fill_value=0)
    for direction in ("up", "down"):
        if direction not in table.columns:
            table[direction] = 0
    table = table[["up", "down"]]
    table["total"] = table["up"] + table["down"]
    table.columns.name = None
    return table


def one_time_bytes(clients: pd.DataFrame) -> pd.Series:
    """Per run, bytes a node needs once (enrolment, calibration, masks, a base it could not
    rebuild; ``clients.csv``'s ``one_time_bytes``), both directions."""
    return clients.groupby("run")["one_time_bytes"].sum().reindex(clients["run"].unique(), fill_value=0)


def mean_curves(rounds: pd.DataFrame, by: tuple[str, ...] = ("setting",)) -> pd.DataFrame:
    """Accuracy and cumulative bytes per round averaged over the runs of each ``by`` group."""
    cols = ["accuracy", "cumulative_bytes", "cumulative_bytes_up", "cumulative_bytes_down", "bytes_total"]
    keep = [c for c in by if c in rounds.columns]
    extra = [c for c in ("label", "strategy") if c not in keep]
    grouped = rounds.groupby([*keep, *extra, "round"], sort=False)[cols].mean()
    return grouped.reset_index()


def plot_accuracy_vs_bytes(
    rounds: pd.DataFrame,
    path: str | Path | None = None,
    direction: str = "",
    ax: Any = None,
    by: str = "run",
) -> object:
    """Accuracy against cumulative MB (log x), one line per ``by`` group; saved to ``path`` if given.

    Parameters
    ----------
    rounds : pd.DataFrame
        From :func:`load_results` (or :func:`mean_curves` with ``by="setting"``).
    path : str | Path | None (default: None)
        PNG to write.
    direction : str (default: "")
        ``""`` (both directions), ``"_up"`` or ``"_down"``.
    ax : matplotlib Axes | None (default: None)
        Draw into it; a new figure otherwise.
    by : str (default: "run")
        Column naming the lines; lines are labelled with ``label`` when present.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_direction(direction)
    fig, ax = _figure(ax)
    column = f"cumulative_bytes{direction}"
    for name, group in rounds.sort_values("round").groupby(by, sort=False):
        group = group[group[column] > 0]
        ax.plot(group[column] / MB, group["accuracy"], marker="o", ms=3, label=_line_label(group, name, by))
    ax.set_xscale("log")
    _finish_lines(ax, f"cumulative MB on the wire ({DIRECTIONS[direction]})", "test accuracy", grid="both")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_accuracy_vs_round(rounds: pd.DataFrame, ax: Any = None, by: str = "run") -> object:
    """Accuracy per server round, one line per ``by`` group."""
    fig, ax = _figure(ax)
    for name, group in rounds.sort_values("round").groupby(by, sort=False):
        ax.plot(group["round"], group["accuracy"], marker="o", ms=3, label=_line_label(group, name, by))
    _finish_lines(ax, "server round", "test accuracy", grid="major")
    return fig


def plot_bytes_per_round(rounds: pd.DataFrame, ax: Any = None, by: str = "label") -> object:
    """MB on the wire per round (both directions, log y), one line per ``by`` group."""
    fig, ax = _figure(ax)
    per_round = rounds[rounds["round"] > 0].groupby([by, "round"], sort=False)["bytes_total"].mean().reset_index()
    for name, group in per_round.groupby(by, sort=False):
        ax.plot(group["round"], group["bytes_total"] / MB, marker="o", ms=3, label=name)
    ax.set_yscale("log")
    _finish_lines(ax, "server round", "MB per round (up + down)", grid="both")
    return fig


def plot_phase_bytes(clients: pd.DataFrame, ax: Any = None, by: str = "label") -> object:
    """Stacked bars of total MB per phase (one-time costs as their own segments), mean per ``by`` group."""
    fig, ax = _figure(ax)
    per_run = phase_bytes(clients)["total"].unstack("phase", fill_value=0)
    groups = clients.groupby("run")[by].first()
    per_group = per_run.groupby(groups.reindex(per_run.index), sort=False).mean() / MB
    phases = [p for p in PHASE_ORDER if p in per_group.columns]
    bottom = np.zeros(len(per_group))
    for phase in phases:
        hatch = "//" if phase in ONE_TIME_PHASES else None
        ax.bar(per_group.index.astype(str), per_group[phase], bottom=bottom, label=phase, hatch=hatch)
        bottom += per_group[phase].to_numpy()
    ax.set_yscale("log")
    ax.set_ylabel("MB per run (up + down)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7, title="phase (hatched: one-time)", title_fontsize=7)
    fig.tight_layout()
    return fig


def config_of(run_dir: str | Path) -> dict[str, object]:
    """The run config of one run folder."""
    return json.loads((Path(run_dir) / "config.json").read_text())["config"]


def layer_density(run_dir: str | Path) -> pd.DataFrame:
    """Per layer of a run's final mask (``mask.bin``): parameters, masked count and density.

    Rows in the model's parameter order; columns ``params``, ``masked``, ``density``.
    """
    from fedfish import codec  # noqa: PLC0415 - torch, only mask analysis needs it
    from fedfish.layout import ParamLayout  # noqa: PLC0415
    from fedfish.models import build_model  # noqa: PLC0415

    run_dir = Path(run_dir)
    mask = codec.decode_mask((run_dir / "mask.bin").read_bytes())
    layout = ParamLayout.of(build_model(str(config_of(run_dir)["model"])))
    rows = []
    for name, part in zip(layout.names, layout.split(mask.bits), strict=True):
        rows.append({"layer": name, "params": part.numel(), "masked": int(part.sum())})
    table = pd.DataFrame(rows).set_index("layer")
    table["density"] = table["masked"] / table["params"]
    return table


def client_fisher_masks(
    run_dir: str | Path,
    clients: list[int],
    *,
    weights: str = "initial",
    fisher_samples: int = 64,
    density: float | None = None,
) -> dict[int, Any]:
    """Each client's own Fisher mask, computed here on its partition of the run's data.

    Parameters
    ----------
    run_dir : str | Path
        A run folder (its ``config.json`` gives data, partitioning, seed and model).
    clients : list[int]
        Partition ids.
    weights : str (default: "initial")
        ``initial`` (the run's starting model: ``initial-model`` or the seeded init, as
        the server builds it) or ``final`` (``model.pt``): masks at the first round and at
        a refresh at the end.
    fisher_samples : int (default: 64)
        Samples per client (the first ones of its shard).
    density : float | None (default: None)
        Mask density; defaults to the run's.

    Returns
    -------
    dict[int, fedfish.masks.Mask]
        Partition id -> top-k mask of its empirical Fisher, classifier head included.
    """
    import torch  # noqa: PLC0415 - only mask analysis needs torch

    from fedfish.data import load_partition  # noqa: PLC0415
    from fedfish.fisher import diagonal_fisher  # noqa: PLC0415
    from fedfish.layout import ParamLayout  # noqa: PLC0415
    from fedfish.masks import top_k_mask  # noqa: PLC0415
    from fedfish.models import build_model, head_names  # noqa: PLC0415

    if weights not in ("initial", "final"):
        raise ValueError(f"weights must be 'initial' or 'final', got {weights!r}")
    run_dir = Path(run_dir)
    cfg = config_of(run_dir)
    torch.manual_seed(int(cfg["seed"]))
    model = build_model(str(cfg["model"]))
    source = run_dir / "model.pt" if weights == "final" else _resolve(str(cfg["initial-model"]))
    if source is not None:
        model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    head = ParamLayout.of(model).indicator(head_names(model))
    masks = {}
    for client in clients:
        x, y = load_partition(
            str(cfg["dataset"]), client, int(cfg["num-partitions"]), str(cfg["partitioner"]),
            seed=int(cfg["seed"]), root=str(cfg["data-root"]) or None,
            holdout_fraction=float(cfg.get("holdout-fraction", 0.0)),
            alpha=float(cfg["alpha"]), classes_per_partition=int(cfg["classes-per-partition"]),
        )
        limit = int(cfg["samples-per-client"]) or len(y)
        n = min(fisher_samples, limit, len(y))
        scores = diagonal_fisher(model, x[:n], y[:n], "empirical")
        masks[client] = top_k_mask(scores, density or float(cfg["density"]), always_include=head)
    return masks


def fisher_vs_random(rounds: pd.DataFrame, fisher: str = "fedfish", random: str = "random-fixed") -> pd.DataFrame:
    """Fisher-mask vs random-mask runs of the same setting and density, at equal bytes.

    Pairs runs whose ``run`` names differ only in the method and that share density and
    seed; the byte budget of a pair is the smaller of their final cumulative bytes.

    Returns
    -------
    pd.DataFrame
        One row per pair: ``fisher_run``, ``random_run``, ``density``, ``mb_budget``,
        ``fisher_accuracy``, ``random_accuracy`` (best accuracy within the budget), ``gain``.
    """
    finals = _finals(rounds)
    rows = []
    keys = [c for c in ("scenario", "alpha", "seed", "density") if c in finals.columns]
    for _, group in finals.groupby(keys, sort=False, dropna=False):
        for fisher_run in group[group["strategy"] == fisher]["run"]:
            for random_run in group[group["strategy"] == random]["run"]:
                budget = min(float(finals.loc[fisher_run, "cumulative_bytes"]),
                             float(finals.loc[random_run, "cumulative_bytes"]))
                acc_f = accuracy_at_bytes(rounds[rounds["run"] == fisher_run], budget)
                acc_r = accuracy_at_bytes(rounds[rounds["run"] == random_run], budget)
                rows.append({"fisher_run": fisher_run, "random_run": random_run,
                             "density": finals.loc[fisher_run, "density"], "mb_budget": budget / MB,
                             "fisher_accuracy": acc_f, "random_accuracy": acc_r, "gain": acc_f - acc_r})
    columns = ["fisher_run", "random_run", "density", "mb_budget", "fisher_accuracy", "random_accuracy", "gain"]
    return pd.DataFrame(rows, columns=columns)


def mask_overlap(bits: list[Any]) -> pd.DataFrame:
    """Pairwise Jaccard overlap |A & B| / |A | B| of boolean masks (list of bool tensors/arrays)."""
    arrays = [np.asarray(b, dtype=bool) for b in bits]
    n = len(arrays)
    out = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            union = np.logical_or(arrays[i], arrays[j]).sum()
            inter = np.logical_and(arrays[i], arrays[j]).sum()
            out[i, j] = out[j, i] = inter / union if union else 1.0
    return pd.DataFrame(out)


def _resolve(path: str) -> Path | None:
    """A run's relative path (``initial-model``) from the working directory or the repo root."""
    if not path:
        return None
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return Path(__file__).resolve().parents[1] / candidate


def _finals(rounds: pd.DataFrame, window: int = 1) -> pd.DataFrame:
    """Last row of each run (index: run), its accuracy the mean of the last ``window`` rounds."""
    ordered = rounds.sort_values("round")
    finals = ordered.groupby("run", sort=False).tail(1).reset_index(drop=True).set_index("run", drop=False)
    if window > 1:
        finals["accuracy"] = ordered.groupby("run", sort=False)["accuracy"].apply(lambda a: a.tail(window).mean())
    return finals


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")


def _figure(ax: Any) -> tuple[Any, Any]:
    """``ax`` and its figure, or a new figure of the notebooks' size."""
    return (ax.figure, ax) if ax is not None else _pyplot().subplots(figsize=(7, 4.5))


def _line_label(group: pd.DataFrame, name: object, by: str) -> object:
    """A line's legend entry: the method's ``label`` when lines are not single runs."""
    return group["label"].iloc[0] if by != "run" and "label" in group and len(group) else name


def _finish_lines(ax: Any, xlabel: str, ylabel: str, grid: str) -> None:
    """Axis labels, grid (``major`` or ``both``), legend and layout shared by the line plots."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which=grid, alpha=0.3)
    ax.legend(fontsize=7)
    ax.figure.tight_layout()


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - only plotting needs it

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # scripts and tests; a notebook has chosen its backend already
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt
