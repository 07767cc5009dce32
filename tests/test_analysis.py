"""The results loader and savings tables, on results folders written by hand in the exact format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

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
    **config: object,
) -> Path:
    """A run folder as the server writes it; a sweep point if ``axes`` is given.

    ``cumulative`` are cumulative bytes per round (round 0 first), split 1/4 up, 3/4 down.
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
    rows.to_csv(run_dir / "rounds.csv", index=False)
    pd.DataFrame(columns=list(CLIENT_COLUMNS)).to_csv(run_dir / "clients.csv", index=False)
    if axes is not None:
        (run_dir / an.POINT_FILE).write_text(json.dumps({"status": status, "axes": axes, "tags": tags or {}}))
    return run_dir


@pytest.fixture
def sweep_folder(tmp_path: Path) -> Path:
    """Two seeds of FedAvg, FedFish 2% and a never-good random mask, as sweep points."""
    folder = tmp_path / "sweep"
    curves = {
        "fedavg": ([[0.2, 0.6, 0.8, 0.9], [0.2, 0.5, 0.85, 0.88]], [[0, 100, 200, 300]] * 2),
        "fedfish 2%": ([[0.2, 0.7, 0.88, 0.89], [0.2, 0.7, 0.85, 0.9]], [[0, 50, 55, 60]] * 2),
        "random-fixed 2%": ([[0.2, 0.3, 0.4, 0.5]] * 2, [[0, 50, 55, 60]] * 2),
    }
    strategy = {"fedavg": "fedavg", "fedfish 2%": "fedfish", "random-fixed 2%": "random-fixed"}
    for label, (accuracies, cumulatives) in curves.items():
        for seed in (0, 1):
            point = f"seed{seed}_finetune_{label.split()[0]}"
            axes = {"seed": f"seed{seed}", "scenario": "finetune", "method": label}
            write_run(folder, point, accuracies[seed], cumulatives[seed], axes=axes, tags={"scenario": "finetune"},
                      strategy=strategy[label], density=0.02, seed=seed)
    return folder


def test_load_results_adds_sweep_columns_and_skips_unfinished_points(sweep_folder: Path) -> None:
    # Prepare
    write_run(sweep_folder, "seed2_finetune_fedavg", [0.1, 0.2], [0, 5], axes={"seed": "seed2"}, status="running")

    # Execute
    rounds, clients, configs = an.load_results(sweep_folder)

    # Assert
    assert rounds["run"].nunique() == 6 and "seed2_finetune_fedavg" not in set(configs["run"])
    first = rounds[rounds["run"] == "seed0_finetune_fedfish"].iloc[0]
    assert (first["label"], first["setting"], first["scenario"], first["axis_method"]) == (
        "fedfish 2%", "finetune_fedfish 2%", "finetune", "fedfish 2%")
    assert set(configs.columns) >= {"run", "label", "setting", "num_params", "density", "initial-model"}
    assert list(clients.columns[:2]) == ["run", "strategy"]


def test_load_results_labels_plain_runs_by_strategy_and_density(tmp_path: Path) -> None:
    # Prepare
    write_run(tmp_path, "a", [0.1, 0.5], [0, 10], strategy="fedavg")
    write_run(tmp_path, "b", [0.1, 0.4], [0, 2], strategy="topk-ef", density=0.005)

    # Execute
    rounds, _, _ = an.load_results(tmp_path)

    # Assert
    labels = rounds.groupby("run")["label"].first().to_dict()
    assert labels == {"a": "fedavg", "b": "topk-ef 0.5%"}
    assert set(rounds["setting"]) == {"a", "b"}


def test_savings_table_matches_hand_computed_numbers(sweep_folder: Path) -> None:
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)

    # Execute
    table = an.savings_table(rounds, by=("scenario",))

    # Assert: target = mean FedAvg final (0.9, 0.88) - 0.01 = 0.88
    fedavg, fedfish, rand = (table.loc[("finetune", label)] for label in ("fedavg", "fedfish 2%", "random-fixed 2%"))
    assert fedavg["target"] == pytest.approx(0.88)
    assert fedavg["mb_to_target"] == pytest.approx(300 / 1e6)  # both seeds first reach 0.88 at round 3
    assert fedfish["mb_to_target"] == pytest.approx((55 + 60) / 2 / 1e6)
    assert fedfish["savings"] == pytest.approx(300 / 57.5)
    assert fedfish["final_accuracy"] == pytest.approx(0.895)
    assert fedfish["final_accuracy_std"] == pytest.approx(np.std([0.89, 0.9], ddof=1))
    assert (fedfish["seeds"], fedfish["reached"], fedfish["mb_total"]) == (2, 2, pytest.approx(60 / 1e6))
    assert rand["reached"] == 0 and math.isnan(rand["mb_to_target"]) and math.isnan(rand["savings"])
    assert fedavg["savings"] == pytest.approx(1.0)


def test_final_window_averages_the_last_rounds(sweep_folder: Path) -> None:
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)

    # Execute
    table = an.savings_table(rounds, by=("scenario",), final_window=2)

    # Assert: FedAvg finals (0.8 + 0.9) / 2 and (0.85 + 0.88) / 2 -> target 0.8575 - 0.01
    assert table.loc[("finetune", "fedavg"), "target"] == pytest.approx(0.8475)
    assert table.loc[("finetune", "fedavg"), "mb_to_target"] == pytest.approx((300 + 200) / 2 / 1e6)


def test_best_savings_picks_the_best_fedfish_and_keeps_misses_visible(sweep_folder: Path) -> None:
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)
    table = an.savings_table(rounds, by=("scenario",))

    # Execute
    best = an.best_savings(table, "fedfish")
    missing = an.best_savings(table, "random-fixed")

    # Assert
    assert best.loc["finetune", "label"] == "fedfish 2%"
    assert best.loc["finetune", "savings"] == pytest.approx(300 / 57.5)
    assert math.isnan(missing.loc["finetune", "savings"])


def test_bytes_to_reach_counts_round_zero_and_is_nan_when_never_reached(tmp_path: Path) -> None:
    # Prepare
    run = pd.DataFrame({"round": [0, 1, 2], "accuracy": [0.5, 0.4, 0.7], "cumulative_bytes": [0, 10, 20],
                        "cumulative_bytes_up": [0, 3, 6], "cumulative_bytes_down": [0, 7, 14]})

    # Execute / Assert
    assert an.bytes_to_reach(run, 0.5) == 0.0
    assert an.bytes_to_reach(run, 0.6) == 20.0
    assert an.bytes_to_reach(run, 0.6, "_up") == 6.0
    assert math.isnan(an.bytes_to_reach(run, 0.8))
    assert an.accuracy_at_bytes(run, 15) == 0.5


def test_phase_bytes_and_one_time_bytes_sum_the_message_log() -> None:
    # Prepare
    clients = pd.DataFrame({
        "run": ["r"] * 5 + ["s"],
        "phase": ["calibration", "calibration", "train", "train", "train", "train"],
        "direction": ["down", "up", "down", "down", "up", "up"],
        "wire_bytes": [1000, 500, 70, 7, 3, 11],
        "one_time_bytes": [1000, 500, 60, 0, 0, 0],
    })

    # Execute
    phases = an.phase_bytes(clients)
    once = an.one_time_bytes(clients)

    # Assert
    assert phases.loc[("r", "calibration")].to_dict() == {"up": 500, "down": 1000, "total": 1500}
    assert phases.loc[("r", "train"), "total"] == 80 and phases.loc[("s", "train"), "down"] == 0
    assert once.to_dict() == {"r": 1560, "s": 0}


def test_fisher_vs_random_compares_at_the_smaller_byte_budget(tmp_path: Path) -> None:
    # Prepare
    write_run(tmp_path, "fish", [0.1, 0.6, 0.7, 0.8], [0, 40, 50, 60], strategy="fedfish", density=0.02)
    write_run(tmp_path, "rand", [0.1, 0.3, 0.5], [0, 20, 45], strategy="random-fixed", density=0.02)
    rounds, _, _ = an.load_results(tmp_path)

    # Execute
    pairs = an.fisher_vs_random(rounds)

    # Assert: budget 45 bytes; FedFish had reached 0.6 by then, the random mask 0.5
    assert len(pairs) == 1
    row = pairs.iloc[0]
    assert (row["fisher_run"], row["random_run"]) == ("fish", "rand")
    assert row["mb_budget"] == pytest.approx(45 / 1e6)
    assert (row["fisher_accuracy"], row["random_accuracy"]) == (0.6, 0.5)


def test_mask_overlap_is_jaccard() -> None:
    # Prepare
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 0], dtype=bool)

    # Execute
    overlap = an.mask_overlap([a, b, a])

    # Assert
    assert overlap.to_numpy().tolist() == [[1.0, 1 / 3, 1.0], [1 / 3, 1.0, 1 / 3], [1.0, 1 / 3, 1.0]]


def test_summary_table_keeps_the_demo_columns(tmp_path: Path) -> None:
    # Prepare
    write_run(tmp_path, "fedavg", [0.1, 0.8], [0, 100], strategy="fedavg")
    write_run(tmp_path, "fedfish", [0.1, 0.79], [0, 10], strategy="fedfish")
    rounds, _, _ = an.load_results(tmp_path)

    # Execute
    table = an.summary_table(rounds)

    # Assert
    assert table.attrs["target"] == pytest.approx(0.79)
    assert table.loc["fedfish", "savings_to_target"] == pytest.approx(10.0)
    assert table.loc["fedfish", "savings_total"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: an.savings_table(r, margin=1.0), r"margin must be in \[0, 1\)"),
        (lambda r: an.savings_table(r, margin=-0.1), r"margin must be in \[0, 1\)"),
        (lambda r: an.savings_table(r, final_window=0), "final_window must be >= 1"),
        (lambda r: an.bytes_to_reach(r, 0.5, "_sideways"), "direction must be one of"),
        (lambda r: an.client_fisher_masks("nowhere", [0], weights="middle"), "weights must be 'initial' or 'final'"),
    ],
)
def test_invalid_arguments_are_refused(call, match: str, sweep_folder: Path) -> None:  # noqa: ANN001
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        call(rounds)


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no finished run folders"):
        an.load_results(tmp_path)
