"""`make demo` end to end on a small grid: the demo sweep file, its self-trained checkpoint,
two real Ray simulations, the table and the figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.demo import main as demo_main


def test_demo_trains_its_checkpoint_runs_both_methods_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the demo's settings on 3 clients of 64 samples, 2 rounds
    small = ["num-partitions=3", "fraction-train=0.67", "samples-per-client=64", "num-server-rounds=2",
             "eval-samples=200", "server-samples=64"]

    # Execute
    status = demo_main(["--results-dir", str(tmp_path), "--set", *small])

    # Assert
    out = capsys.readouterr().out
    assert status == 0
    checkpoint = tmp_path / "pretrained" / "cnn-fmnist-holdout0.02.pt"
    assert checkpoint.is_file()
    table = out[out.index("Target:"):].splitlines()
    assert table[1].split()[:3] == ["rounds", "final", "acc"]
    fedavg, fedfish = (next(line.split() for line in table if line.startswith(label)) for label in ("fedavg", "fedfish"))
    assert fedavg[1] == "2" and fedfish[2] == "2"  # "fedfish 2%" is two words
    assert float(fedfish[4]) < float(fedavg[3]) / 10  # MB total: FedFish sends a fraction of FedAvg's
    for point in ("fedavg", "fedfish-2pct"):
        config = json.loads((tmp_path / "demo" / point / "config.json").read_text())["config"]
        assert config["initial-model"] == str(checkpoint) and config["num-partitions"] == 3
    assert (tmp_path / "demo" / "accuracy_vs_mb.png").stat().st_size > 10_000
    # A rerun finds both points done and only prints the table again
    assert demo_main(["--results-dir", str(tmp_path), "--set", *small]) == 0
    assert "--- fedavg" not in capsys.readouterr().out
