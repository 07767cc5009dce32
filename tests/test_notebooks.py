"""The notebooks run headless (nbclient) on a real, small sweep result and produce their figures and tables.

The sweep is the committed quick sweep (fine-tuning points, 4 rounds), run through the
real strategy, ClientApp and recorder over the in-process loopback Grid, so the results
folders are exactly what a Ray sweep writes, in seconds instead of a Ray start per point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from simulations.inprocess import InProcessGrid, task_identity
from simulations.notebooks import execute
from simulations.server_app import run_federation
from simulations.sweep import run_sweep
from simulations.sweep_file import Point, load_sweep

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def loopback_runner(point: Point, on_line) -> None:  # noqa: ANN001
    with task_identity():
        run_federation(InProcessGrid(point.config.num_partitions), point.config)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    small = {"num-server-rounds": 4, "samples-per-client": 32, "eval-samples": 100, "fisher-samples": 8}
    sweep = load_sweep(REPO / "simulations" / "sweeps" / "quick.toml", results, small)
    sweep = dataclasses.replace(sweep, points=[p for p in sweep.points if p.axes["scenario"] == "finetune"])
    report = run_sweep(sweep, loopback_runner, progress=False)
    assert not report.failed, report.failed
    return sweep.folder


def outputs_of(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    return [o["data"][mime] for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if mime in o.get("data", {})]


def test_communication_curves_notebook_draws_the_figures_and_the_savings_table(
    quick_results: Path, tmp_path: Path
) -> None:
    # Execute
    notebook = execute("communication_curves", results=str(quick_results), figures_dir=str(tmp_path))

    # Assert: one group (finetune, alpha 0.5): curves, per-round, bytes to target, main figure, phases
    assert len(outputs_of(notebook, "image/png")) == 5
    for figure in ("accuracy_vs_bytes_finetune_0.5", "per_round_finetune_0.5", "bytes_to_target_finetune_0.5",
                   "main_accuracy_vs_mb", "bytes_by_phase"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:8] == PNG_MAGIC
    assert any("savings" in html for html in outputs_of(notebook, "text/html"))
    table = pd.read_csv(tmp_path / "savings_table.csv").set_index("label")
    assert list(table.index) == ["fedavg", "fedfish 5%", "random-fixed 5%"]
    # Independent oracle from rounds.csv: final = mean of the last 5 rounds, target 1 point
    # below, reached at the first round whose 3-round mean is at or above it.
    fedavg = pd.read_csv(quick_results / "seed0_alpha0.5_finetune_fedavg" / "rounds.csv")
    target = fedavg["accuracy"].tail(5).mean() - 0.01
    reached = fedavg[fedavg["accuracy"].rolling(3).mean() >= target]
    assert table.loc["fedavg", "target"] == pytest.approx(target)
    if len(reached):
        assert table.loc["fedavg", "mb_to_target"] == pytest.approx(reached["cumulative_bytes"].iloc[0] / 1e6)
        assert table.loc["fedavg", "savings"] == pytest.approx(1.0)
    else:
        assert table.loc["fedavg", "reached"] == 0


def test_mask_notebook_draws_layer_density_overlap_and_fisher_vs_random(quick_results: Path, tmp_path: Path) -> None:
    # Execute
    notebook = execute("mask_analysis", results=str(quick_results), figures_dir=str(tmp_path),
                       clients=[0, 1], fisher_samples=8)

    # Assert
    assert len(outputs_of(notebook, "image/png")) == 3
    for figure in ("mask_density_per_layer", "mask_overlap", "fisher_vs_random"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:8] == PNG_MAGIC
    tables = outputs_of(notebook, "text/plain")
    assert any("fc2.bias" in t and "density" in t for t in tables)  # the per-layer table, head included
    assert any("client 0 start" in t and "client 1 end" in t for t in tables)  # the 4 x 4 overlap table
    assert any("seed0_alpha0.5_finetune_random-fixed-5pct" in t for t in tables)  # the Fisher/random pair
