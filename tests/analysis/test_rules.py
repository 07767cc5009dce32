"""The results loader, the savings rules, the mask analysis and the figures' lines, on results
folders written by hand (runs.py); the expected numbers are worked out by hand in the comments."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulations import analysis as an
from simulations import mask_analysis as ma
from simulations import plots
from simulations import savings as sv
from tests.analysis.runs import FEDAVG, FEDFISH, write_run


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

def test_committed_evidence_without_a_message_log_loads(tmp_path: Path) -> None:
    # Prepare: config.json and rounds.csv only, as docs/results keeps them
    write_run(tmp_path, "a", [0.1, 0.5], [0, 10], strategy="fedavg", with_log=False)
    write_run(tmp_path, "b", [0.1, 0.4], [0, 2], strategy="topk-ef", density=0.005, with_log=False)

    # Execute
    rounds, clients, _ = an.load_results(tmp_path)

    # Assert
    assert rounds.groupby("run")["label"].first().to_dict() == {"a": "fedavg", "b": "topk-ef 0.5%"}
    assert set(rounds["setting"]) == {"a", "b"} and clients.empty

def test_the_rules_on_one_run() -> None:
    # Prepare: 3-round means from round 2 on: 0.4667, 0.6667, 0.7833, 0.85, 0.8833, 0.9
    run = pd.DataFrame({"round": range(8), "accuracy": FEDAVG[0], "cumulative_bytes": [100 * r for r in range(8)]})

    # Execute / Assert
    assert sv.final_accuracy(run) == pytest.approx(0.87)  # rounds 3..7
    assert sv.bytes_to_target(run, 0.86) == 600  # round 6 is the first 3-round mean >= 0.86
    assert sv.bytes_to_target(run, 0.85) == 500  # one lucky round (round 5: 0.9) would not do it alone
    assert math.isnan(sv.bytes_to_target(run, 0.95))
    assert sv.accuracy_at_budget(run, 450) == pytest.approx(0.7833333)  # round 4 is the last within 450
    assert math.isnan(sv.accuracy_at_budget(run, 150))  # no 3 rounds yet

def test_savings_table_matches_hand_computed_numbers(sweep_folder: Path) -> None:
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)

    # Execute
    table = sv.savings_table(rounds, by=("scenario",))

    # Assert: FedAvg finals 0.87 and 0.876 -> target 0.873 - 0.01 = 0.863; FedAvg's 3-round means
    # reach it at round 6 in both seeds (600 bytes); FedFish's at round 5 (seed 0: 0.8767) and
    # round 4 (seed 1: 0.8767): 50 and 40 bytes, 5 of them one-time; savings 12x and 15x
    fedavg, fedfish, rand = (table.loc[("finetune", label)] for label in ("fedavg", "fedfish 2%", "random-fixed 2%"))
    assert fedavg["target"] == pytest.approx(0.863)
    assert fedavg["mb_to_target"] == pytest.approx(600 / 1e6) and fedavg["savings"] == pytest.approx(1.0)
    assert fedfish["mb_to_target"] == pytest.approx(45 / 1e6)
    assert (fedfish["mb_to_target_min"], fedfish["mb_to_target_max"]) == (pytest.approx(40 / 1e6), pytest.approx(50 / 1e6))
    assert fedfish["mb_one_time_to_target"] == pytest.approx(5 / 1e6)
    assert (fedfish["savings"], fedfish["savings_min"], fedfish["savings_max"]) == (
        pytest.approx(13.5), pytest.approx(12.0), pytest.approx(15.0))
    assert fedfish["final_accuracy"] == pytest.approx((0.882 + 0.896) / 2)  # means of rounds 3..7
    assert (fedfish["seeds"], fedfish["reached"], fedfish["rounds"]) == (2, 2, 7)
    assert rand["reached"] == 0 and math.isnan(rand["mb_to_target"]) and math.isnan(rand["savings"])
    # Accuracy at 10% of FedAvg's 700 bytes (all of FedFish's 70): the last 3-round means
    assert fedfish["acc_at_10pct"] == pytest.approx(((0.88 + 0.89 + 0.89) / 3 + 0.9) / 2)
    assert fedavg["acc_at_10pct"] != fedavg["acc_at_10pct"]  # NaN: 70 bytes is round 0 for FedAvg

def test_savings_are_nan_unless_every_seed_reached_the_target(sweep_folder: Path) -> None:
    # Prepare: FedFish seed 1 stops at round 3, below the target
    rounds, _, _ = an.load_results(sweep_folder)
    rounds = rounds[~((rounds["run"] == "seed1_finetune_fedfish") & (rounds["round"] > 3))]

    # Execute
    row = sv.savings_table(rounds, by=("scenario",)).loc[("finetune", "fedfish 2%")]

    # Assert: reached in 1 of 2 seeds: no headline savings, the seed that did is still shown
    assert row["reached"] == 1 and math.isnan(row["savings"]) and row["savings_max"] == pytest.approx(12.0)

def test_best_of_picks_the_best_fedfish_and_keeps_misses_visible(sweep_folder: Path) -> None:
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)
    table = sv.savings_table(rounds, by=("scenario",))

    # Execute
    best = sv.best_of(table, "fedfish")
    missing = sv.best_of(table, "random-fixed")

    # Assert
    assert best.loc["finetune", "label"] == "fedfish 2%" and best.loc["finetune", "savings"] == pytest.approx(13.5)
    assert math.isnan(missing.loc["finetune", "savings"])

def test_best_of_a_strategy_not_run_yet_is_an_empty_table(sweep_folder: Path) -> None:
    # Prepare: only FedAvg has finished (the first point of a sweep)
    rounds, _, _ = an.load_results(sweep_folder)
    table = sv.savings_table(rounds[rounds["strategy"] == "fedavg"], by=("scenario",))

    # Execute
    best = sv.best_of(table, "fedfish")

    # Assert: no rows, and the group is looked up, not a KeyError
    assert best.empty and "finetune" not in best.index

def test_ratio_of_bytes_between_two_methods(sweep_folder: Path) -> None:
    # Prepare
    rounds, _, _ = an.load_results(sweep_folder)
    table = sv.savings_table(rounds, by=("scenario",))

    # Execute / Assert: FedAvg 600 bytes over FedFish 45; the random mask never got there (inf)
    assert sv.ratio_of_bytes(table, "fedavg", "fedfish 2%")["finetune"] == pytest.approx(600 / 45)
    assert sv.ratio_of_bytes(table, "random-fixed 2%", "fedfish 2%")["finetune"] == math.inf
    assert sv.ratio_of_bytes(table, "fedfish 2%", "random-fixed 2%")["finetune"] == 0.0
    assert math.isnan(sv.ratio_of_bytes(table, "random-fixed 2%", "random-fixed 2%")["finetune"])
    assert sv.ratio_of_bytes(table, "nothing", "fedfish 2%").empty

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
    # Prepare: the random mask's run is shorter (50 bytes); FedFish's 3-round mean at round 5
    # (50 bytes) is (0.7 + 0.75 + 0.8) / 3, the random mask's at its round 5 (0.4 + 0.5 + 0.5) / 3
    write_run(tmp_path, "fish", [0.1, 0.6, 0.65, 0.7, 0.75, 0.8, 0.8], [10 * r for r in range(7)],
              strategy="fedfish", density=0.02)
    write_run(tmp_path, "rand", [0.1, 0.2, 0.3, 0.4, 0.5, 0.5], [10 * r for r in range(6)],
              strategy="random-fixed", density=0.02)
    rounds, _, _ = an.load_results(tmp_path)

    # Execute
    pairs = ma.fisher_vs_random(rounds)

    # Assert
    assert len(pairs) == 1
    row = pairs.iloc[0]
    assert (row["fisher_run"], row["random_run"]) == ("fish", "rand")
    assert row["mb_budget"] == pytest.approx(50 / 1e6)
    assert row["fisher_accuracy"] == pytest.approx(0.75) and row["random_accuracy"] == pytest.approx(1.4 / 3)

def test_mask_overlap_is_jaccard() -> None:
    # Prepare
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 0], dtype=bool)

    # Execute
    overlap = ma.mask_overlap([a, b, a])

    # Assert
    assert overlap.to_numpy().tolist() == [[1.0, 1 / 3, 1.0], [1 / 3, 1.0, 1 / 3], [1.0, 1 / 3, 1.0]]

@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: sv.savings_table(r, margin=1.0), r"margin must be in \[0, 1\)"),
        (lambda r: sv.savings_table(r, margin=-0.1), r"margin must be in \[0, 1\)"),
        (lambda r: ma.client_fisher_masks("nowhere", [0], weights="middle"), "weights must be 'initial' or 'final'"),
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

def test_best_of_ranks_a_setting_with_fewer_seeds_below_a_complete_one(sweep_folder: Path) -> None:
    # Prepare: a FedFish 0.5% that saves far more (1 byte a round), but in seed 0 only
    write_run(sweep_folder, "seed0_finetune_fedfish0.5", FEDFISH[0], list(range(8)),
              axes={"seed": "seed0", "scenario": "finetune", "method": "fedfish 0.5%"},
              tags={"scenario": "finetune"}, strategy="fedfish", density=0.005, seed=0)
    rounds, _, _ = an.load_results(sweep_folder)
    table = sv.savings_table(rounds, by=("scenario",))
    assert table.loc[("finetune", "fedfish 0.5%"), "savings"] > table.loc[("finetune", "fedfish 2%"), "savings"]

    # Execute
    best = sv.best_of(table, "fedfish")

    # Assert: the two-seed setting is the headline
    assert best.loc["finetune", "label"] == "fedfish 2%"

@pytest.mark.parametrize("draw", [plots.plot_accuracy_vs_bytes, plots.plot_accuracy_vs_round,
                                  plots.plot_bytes_per_round])
def test_eleven_methods_get_eleven_distinct_lines(draw) -> None:  # noqa: ANN001 - a plotting function
    # Prepare: 11 methods (the crossdevice sweep's count), two rounds each
    rounds = pd.DataFrame([
        {"label": f"method {i}", "run": f"run {i}", "round": r, "accuracy": 0.5 + r / 10 + i / 100,
         "cumulative_bytes": 1000 * r, "bytes_total": 1000}
        for i in range(11) for r in (1, 2)])

    # Execute
    fig = draw(rounds)

    # Assert: matplotlib's cycle alone repeats its first colour at the 11th line; here the first
    # 10 keep the default colours, solid, and the 11th is the first colour dashed
    lines = fig.axes[0].get_lines()
    styles = [(line.get_color(), line.get_linestyle()) for line in lines]
    assert len(lines) == 11 and len(set(styles)) == 11
    assert [style for _, style in styles] == ["-"] * 10 + ["--"]
    assert styles[10][0] == styles[0][0] == plots.pyplot().get_cmap("tab10").colors[0]
    plots.pyplot().close(fig)
