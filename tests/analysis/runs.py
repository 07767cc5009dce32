"""Results folders written by hand in the exact format the server writes, for the analysis
tests; the curves' expected numbers are worked out in the tests' comments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from simulations import analysis as an
from simulations.config import RunConfig
from simulations.results import CLIENT_COLUMNS, ROUND_COLUMNS


def write_run(
    folder: Path,
    name: str,
    accuracy: list[float],
    cumulative: list[int],
    *,
    axes: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    status: str = "done",
    one_time: int = 0,
    with_log: bool = True,
    **config: object,
) -> Path:
    """A run folder as the server writes it; a sweep point if ``axes`` is given.

    ``cumulative`` are cumulative bytes per round (round 0 first), split 1/4 up, 3/4 down;
    the first ``one_time`` of them are one-time bytes. Without ``with_log``, no clients.csv
    (committed evidence).
    """
    run_dir = folder / name
    run_dir.mkdir(parents=True)
    cfg = RunConfig(run_name=name, **config)  # type: ignore[arg-type]
    (run_dir / "config.json").write_text(json.dumps({"config": cfg.to_mapping(), "num_params": 100, "seed": cfg.seed}))
    rows = pd.DataFrame(0, index=range(len(accuracy)), columns=list(ROUND_COLUMNS))
    rows["round"] = range(len(accuracy))
    rows["phase"] = ["initial"] + ["train"] * (len(accuracy) - 1)
    rows["accuracy"] = accuracy
    rows["cumulative_bytes"] = cumulative
    rows["cumulative_bytes_up"] = [c // 4 for c in cumulative]
    rows["cumulative_bytes_down"] = [c - c // 4 for c in cumulative]
    rows["bytes_total"] = np.diff([0, *cumulative])
    rows["cumulative_one_time_bytes"] = [min(c, one_time) for c in cumulative]
    rows.to_csv(run_dir / "rounds.csv", index=False)
    if with_log:
        pd.DataFrame(columns=list(CLIENT_COLUMNS)).to_csv(run_dir / "clients.csv", index=False)
    if axes is not None:
        (run_dir / an.POINT_FILE).write_text(json.dumps({"status": status, "axes": axes, "tags": tags or {}}))
    return run_dir


FEDAVG = [[0.2, 0.5, 0.7, 0.8, 0.85, 0.9, 0.9, 0.9], [0.2, 0.4, 0.6, 0.8, 0.88, 0.88, 0.9, 0.92]]

FEDFISH = [[0.2, 0.6, 0.8, 0.87, 0.88, 0.88, 0.89, 0.89], [0.2, 0.6, 0.85, 0.88, 0.9, 0.9, 0.9, 0.9]]

