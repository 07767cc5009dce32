"""Fixtures of the analysis tests: a hand-made sweep of two seeds (runs.py), as a results
folder and as committed evidence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis.runs import FEDAVG, FEDFISH, write_run


@pytest.fixture
def sweep_folder(tmp_path: Path) -> Path:
    """Two seeds of FedAvg (100 bytes a round), FedFish 2% (10 a round, 5 of them one-time in
    round 1) and a random mask that never gets there, as sweep points of 7 rounds."""
    folder = tmp_path / "sweep"
    curves = {
        "fedavg": (FEDAVG, [100 * r for r in range(8)], 0),
        "fedfish 2%": (FEDFISH, [10 * r for r in range(8)], 5),
        "random-fixed 2%": ([[0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]] * 2, [10 * r for r in range(8)], 5),
    }
    strategy = {"fedavg": "fedavg", "fedfish 2%": "fedfish", "random-fixed 2%": "random-fixed"}
    for label, (accuracies, cumulative, one_time) in curves.items():
        for seed in (0, 1):
            point = f"seed{seed}_finetune_{label.split()[0]}"
            axes = {"seed": f"seed{seed}", "scenario": "finetune", "method": label}
            write_run(folder, point, accuracies[seed], cumulative, axes=axes, tags={"scenario": "finetune"},
                      strategy=strategy[label], density=0.02, seed=seed, one_time=one_time)
    return folder


@pytest.fixture
def evidence(sweep_folder: Path, tmp_path: Path) -> Path:
    """The hand-made sweep as committed evidence of the crossdevice sweep (``--evidence``)."""
    folder = tmp_path / "evidence"
    folder.mkdir()
    sweep_folder.rename(folder / "crossdevice")
    return folder
