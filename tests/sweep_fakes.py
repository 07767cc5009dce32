"""A small sweep grid and a stand-in for a point's run, shared by the sweep tests."""

from __future__ import annotations

import json

import pandas as pd

from simulations.sweep_file import Point


def small_grid(**extra: object) -> dict:
    """Two seeds x FedAvg and FedFish 2%, 2 rounds on 2 partitions; ``extra`` replaces top-level keys."""
    data = {
        "name": "t",
        "base": {"num-server-rounds": 2, "num-partitions": 2},
        "axes": {
            "seed": [0, 1],
            "method": [
                {"label": "fedavg", "strategy": "fedavg"},
                {"label": "fedfish 2%", "strategy": "fedfish", "density": 0.02, "tags": {"family": "fisher"}},
            ],
        },
    }
    data.update(extra)
    return data


def fake_runner(fail: set[str] = frozenset()):  # noqa: ANN201 - returns a Runner and its call log
    """Writes a results folder in the run format (config.json + rounds.csv), or fails."""
    calls: list[str] = []

    def run(point: Point, on_line) -> str | None:  # noqa: ANN001
        calls.append(point.name)
        on_line("[fedfish] round 1/2 train")
        if point.name in fail:
            raise RuntimeError("boom")
        rows = pd.DataFrame({"round": range(point.config.num_server_rounds + 1)})
        rows.to_csv(point.run_dir / "rounds.csv", index=False)
        (point.run_dir / "config.json").write_text(json.dumps({"config": point.config.to_mapping()}))
        return None

    return run, calls
