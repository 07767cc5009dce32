"""Sweeps: parsing the TOML grid, resuming, reporting failed points, the point subprocess.

The fine-tuning checkpoint a sweep pretrains and records is tested in test_pretrain.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from simulations import point_process
from simulations import sweep as sweep_mod
from simulations.analysis import POINT_FILE, run_dirs
from simulations.config import ConfigError
from simulations.run import usable_cpus
from simulations.sweep import point_status, run_sweep
from simulations.sweep_evidence import export_evidence, import_evidence
from simulations.sweep_file import Point, load_sweep, parse_sweep
from tests.sweep_fakes import fake_runner, small_grid

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "simulations" / "sweeps" / "quick.toml"
DEMO = REPO / "simulations" / "sweeps" / "demo.toml"


# ----------------------------------------------------------------------------- parsing


def test_committed_sweep_files_expand_to_the_documented_grids(tmp_path: Path) -> None:
    # Execute
    quick = load_sweep(QUICK, tmp_path)
    demo = load_sweep(DEMO, tmp_path)

    # Assert
    assert len(quick.points) == 6
    first = quick.points[0]
    assert first.name == "seed0_alpha0.5_finetune_fedavg"
    assert first.axes == {"seed": "seed0", "alpha": "alpha0.5", "scenario": "finetune", "method": "fedavg"}
    assert first.tags == {"scenario": "finetune"}
    assert first.run_dir == tmp_path / "quick" / first.name
    # {results-dir} puts the sweep's checkpoint beside its results.
    assert first.config.initial_model == quick.pretrain["out"] == f"{tmp_path}/pretrained/cnn-fmnist-holdout0.01-quick.pt"
    # The demo: the cross-device regime, FedFish given more (cheap) rounds than FedAvg
    assert [(p.name, p.config.strategy, p.config.num_server_rounds) for p in demo.points] == [
        ("fedavg", "fedavg", 12), ("fedfish-2pct", "fedfish", 20)]
    assert {(p.config.num_partitions, p.config.fraction_train, p.config.samples_per_client) for p in demo.points} == {
        (100, 0.1, 0)}
    assert all(p.config.initial_model == demo.pretrain["out"] for p in demo.points)


def test_the_crossdevice_sweep_runs_the_priority_points_first(tmp_path: Path) -> None:
    # Execute
    sweep = load_sweep(REPO / "simulations" / "sweeps" / "crossdevice.toml", tmp_path)
    # Assert: 2 alphas x 2 scenarios x 3 seeds x 11 methods, alpha 0.5 fine-tune first, seed by seed,
    # the priority methods first in each seed
    points = sweep.points
    assert len(points) == 132
    assert [p.name for p in points[:12]] == [
        "alpha0.5_finetune_seed0_fedavg", "alpha0.5_finetune_seed0_fedfish-0.5pct",
        "alpha0.5_finetune_seed0_fedfish-2pct", "alpha0.5_finetune_seed0_fedfish-2pct-int8",
        "alpha0.5_finetune_seed0_fedfish-2pct-int8-up-down",
        "alpha0.5_finetune_seed0_random-fixed-2pct", "alpha0.5_finetune_seed0_topk-ef-2pct",
        "alpha0.5_finetune_seed0_fedfish-5pct", "alpha0.5_finetune_seed0_magnitude-2pct",
        "alpha0.5_finetune_seed0_saliency-2pct", "alpha0.5_finetune_seed0_random-per-round-2pct",
        "alpha0.5_finetune_seed1_fedavg",
    ]
    assert [p.config.alpha for p in points[:66]] == [0.5] * 66
    assert {p.config.downlink_dtype for p in points if p.name.endswith("up-down")} == {"int8"}
    for point in points:
        cfg = point.config
        assert (cfg.num_partitions, cfg.fraction_train, cfg.samples_per_client, cfg.eval_samples) == (100, 0.1, 0, 0)
        assert cfg.holdout_fraction == 0.02 and cfg.warmup_rounds == 0 and cfg.public_initial_model
        assert cfg.stop_patience > 0 and cfg.fisher_source == "server"
        assert bool(cfg.initial_model) == (point.tags["scenario"] == "finetune")


def test_axes_product_order_labels_and_overrides(tmp_path: Path) -> None:
    # Execute
    sweep = parse_sweep(small_grid(), tmp_path, overrides={"num-server-rounds": 7})

    # Assert
    assert [p.name for p in sweep.points] == [
        "seed0_fedavg", "seed0_fedfish-2pct", "seed1_fedavg", "seed1_fedfish-2pct",
    ]
    assert [p.config.seed for p in sweep.points] == [0, 0, 1, 1]
    assert sweep.points[1].config.density == 0.02 and sweep.points[1].tags == {"family": "fisher"}
    assert all(p.config.num_server_rounds == 7 for p in sweep.points)
    assert all(p.config.run_name == p.name and p.config.results_dir == str(tmp_path / "t") for p in sweep.points)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"colour": "red"}, "unknown top-level keys"),
        ({"name": "a/b"}, "name must be a plain folder name"),
        ({"axes": {"seed": []}}, "axis 'seed' must be a non-empty list"),
        ({"axes": {"m": [{"strategy": "fedavg"}]}}, "needs a label"),
        ({"base": {"run-name": "x"}}, r"base must not set \['run-name'\]"),
        ({"axes": {"a": [{"label": "x", "seed": 1}], "seed": [0]}}, "axes 'a' and 'seed' both set 'seed'"),
        ({"axes": {"m": [{"label": "x y"}, {"label": "x-y"}]}}, "share the folder names"),
        ({"base": {"density": 2.0}}, r"point 'run': density: must be in"),
        ({"base": {"colour": 1}}, "unknown run-config keys"),
    ],
)
def test_invalid_sweep_files_are_refused(change: dict, match: str, tmp_path: Path) -> None:
    # Prepare
    data = {"name": "t", **change}

    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        parse_sweep(data, tmp_path)


def test_an_invalid_point_is_a_config_error_naming_the_point(tmp_path: Path) -> None:
    # Prepare
    data = small_grid(axes={"lr": [0.1, -1.0]})

    # Execute / Assert
    with pytest.raises(ConfigError, match="point 'lr-1.0': lr: must be in"):
        parse_sweep(data, tmp_path)


# ----------------------------------------------------------------------------- running and resuming


def test_failed_point_is_reported_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # Prepare
    sweep = parse_sweep(small_grid(), tmp_path)
    runner, calls = fake_runner(fail={"seed0_fedfish-2pct"})

    # Execute
    report = run_sweep(sweep, runner, progress=False)

    # Assert
    assert calls == [p.name for p in sweep.points]
    assert report.done == ["seed0_fedavg", "seed1_fedavg", "seed1_fedfish-2pct"]
    assert [(name, err) for name, err in report.failed] == [("seed0_fedfish-2pct", "RuntimeError: boom")]
    failed = json.loads((tmp_path / "t" / "seed0_fedfish-2pct" / POINT_FILE).read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom"
    assert [p.name for p in run_dirs(tmp_path / "t")] == report.done  # the failed point is not loaded


def test_rerun_skips_done_points_and_redoes_failed_half_written_and_changed_ones(tmp_path: Path) -> None:
    # Prepare: a first sweep with one failure, then a crash left a point half-written.
    sweep = parse_sweep(small_grid(), tmp_path)
    run_sweep(sweep, fake_runner(fail={"seed0_fedfish-2pct"})[0], progress=False)
    half = tmp_path / "t" / "seed1_fedavg"
    (half / POINT_FILE).write_text(json.dumps({"status": "running"}))
    (half / "leftover.txt").write_text("from the crashed attempt")
    changed = parse_sweep(small_grid(base={"num-server-rounds": 2, "num-partitions": 2, "lr": 0.1}), tmp_path)

    # Execute
    statuses = [point_status(p) for p in sweep.points]
    runner, calls = fake_runner()
    report = run_sweep(sweep, runner, progress=False)
    report_changed = run_sweep(changed, fake_runner()[0], progress=False)

    # Assert
    assert statuses == ["done", "stale", "stale", "done"]
    assert calls == ["seed0_fedfish-2pct", "seed1_fedavg"]
    assert report.skipped == ["seed0_fedavg", "seed1_fedfish-2pct"] and not report.failed
    assert not (half / "leftover.txt").exists()  # redone from scratch
    assert len(report_changed.done) == 4  # another lr: every point is stale


def test_a_point_stopped_after_a_checkpoint_continues_and_one_stopped_before_is_redone(tmp_path: Path) -> None:
    # Prepare: both seeds' fedavg points were killed mid-run ("running", this config); only
    # seed 0's server had checkpointed a round. A changed config makes seed 0 stale again.
    sweep = parse_sweep(small_grid(), tmp_path)
    for point in sweep.points[::2]:  # seed0_fedavg, seed1_fedavg
        point.run_dir.mkdir(parents=True)
        sweep_mod._mark(point, "running")
        (point.run_dir / "rounds.csv").write_text("round\n0\n1\n")
    cut = sweep.points[0].run_dir
    (cut / "checkpoint.pt").write_bytes(b"server state after round 1")
    changed = parse_sweep(small_grid(base={"num-server-rounds": 2, "num-partitions": 2, "lr": 0.1}), tmp_path)
    resumed: dict[str, bool] = {}
    runner, calls = fake_runner()

    def recording(point: Point, on_line) -> str | None:  # noqa: ANN001
        resumed[point.name] = point.config.resume
        return runner(point, on_line)

    # Execute
    statuses = [point_status(p) for p in sweep.points]
    changed_status = point_status(changed.points[0])
    report = run_sweep(sweep, recording, progress=False)

    # Assert
    assert statuses == ["interrupted", "new", "stale", "new"] and changed_status == "stale"
    assert resumed == {"seed0_fedavg": True, "seed0_fedfish-2pct": False,
                       "seed1_fedavg": False, "seed1_fedfish-2pct": False}
    assert (cut / "checkpoint.pt").is_file()  # its folder was kept for the run to continue from
    marker = json.loads((cut / POINT_FILE).read_text())
    assert marker["status"] == "done" and marker["resumed"] is True
    assert "resumed" not in json.loads((sweep.points[2].run_dir / POINT_FILE).read_text())
    assert report.done == [p.name for p in sweep.points]
    assert [point_status(p) for p in sweep.points] == ["done"] * 4  # resume=true does not make it stale


def test_point_recorded_before_a_key_existed_is_done_only_if_the_key_is_at_its_default(tmp_path: Path) -> None:
    # Prepare: a done point whose marker lacks one key (it ran before the key existed)
    sweep = parse_sweep(small_grid(axes={"seed": [0]}), tmp_path)
    run_sweep(sweep, fake_runner()[0], progress=False)
    marker = sweep.points[0].run_dir / POINT_FILE
    info = json.loads(marker.read_text())
    del info["config"]["aggregator"]
    marker.write_text(json.dumps(info))
    robust = parse_sweep(small_grid(axes={"seed": [0]}, base={"num-server-rounds": 2, "num-partitions": 2,
                                                         "aggregator": "median"}), tmp_path)

    # Execute / Assert
    assert point_status(sweep.points[0]) == "done"
    assert point_status(robust.points[0]) == "stale"


def test_keys_that_change_how_a_point_runs_but_not_its_results_keep_it_done(tmp_path: Path) -> None:
    # Prepare
    sweep = parse_sweep(small_grid(axes={"seed": [0]}), tmp_path)
    run_sweep(sweep, fake_runner()[0], progress=False)
    base = {"num-server-rounds": 2, "num-partitions": 2}
    patient = parse_sweep(small_grid(axes={"seed": [0]}, base=base | {"round-timeout": 3600.0}), tmp_path)
    moved = parse_sweep(small_grid(axes={"seed": [0]}, base=base | {"client-state-dir": "elsewhere"}), tmp_path)
    other_seed_data = parse_sweep(small_grid(axes={"seed": [0]}, base=base | {"holdout-fraction": 0.05}), tmp_path)

    # Execute / Assert
    assert [point_status(s.points[0]) for s in (patient, moved, other_seed_data)] == ["done", "done", "stale"]


def test_export_copies_the_evidence_of_finished_points_only(tmp_path: Path) -> None:
    # Prepare: one point failed, one still running, two done; the destination already holds
    # a point from an earlier export
    sweep = parse_sweep(small_grid(), tmp_path / "results")
    run_sweep(sweep, fake_runner(fail={"seed0_fedfish-2pct"})[0], progress=False)
    running = sweep.points[2].run_dir  # seed1_fedavg
    (running / POINT_FILE).write_text(json.dumps({"status": "running"}))
    for point in sweep.points:
        (point.run_dir / "model.pt").write_bytes(b"weights")
    earlier = tmp_path / "evidence" / "t" / "seed9_fedavg"
    earlier.mkdir(parents=True)

    # Execute
    exported = export_evidence(sweep.folder, tmp_path / "evidence" / "t")

    # Assert
    assert exported == ["seed0_fedavg", "seed1_fedfish-2pct"]
    dest = tmp_path / "evidence" / "t"
    assert sorted(p.name for p in dest.iterdir()) == ["seed0_fedavg", "seed1_fedfish-2pct", "seed9_fedavg"]
    assert sorted(p.name for p in (dest / "seed0_fedavg").iterdir()) == ["config.json", "rounds.csv", POINT_FILE]
    source = sweep.points[0].run_dir
    assert (dest / "seed0_fedavg" / "rounds.csv").read_bytes() == (source / "rounds.csv").read_bytes()
    assert [p.name for p in run_dirs(dest)] == ["seed0_fedavg", "seed1_fedfish-2pct"]  # loadable as a sweep


def test_imported_evidence_is_not_run_again_on_another_machine(tmp_path: Path) -> None:
    # Prepare: machine A finishes three points (one fails) and exports them; machine B has
    # a half-written folder of one of them
    sweep_a = parse_sweep(small_grid(), tmp_path / "a")
    run_sweep(sweep_a, fake_runner(fail={"seed1_fedavg"})[0], progress=False)
    export_evidence(sweep_a.folder, tmp_path / "evidence" / "t")
    sweep_b = parse_sweep(small_grid(), tmp_path / "b")
    (sweep_b.folder / "seed1_fedfish-2pct").mkdir(parents=True)

    # Execute
    imported = import_evidence(tmp_path / "evidence" / "t", sweep_b.folder)
    runner, calls = fake_runner()
    report = run_sweep(sweep_b, runner, progress=False)

    # Assert: the finished points are skipped; the failed one and the half-written one run
    assert imported == ["seed0_fedavg", "seed0_fedfish-2pct"]
    assert report.skipped == imported and calls == ["seed1_fedavg", "seed1_fedfish-2pct"]


def test_a_point_that_writes_too_few_rounds_fails(tmp_path: Path) -> None:
    # Prepare
    sweep = parse_sweep(small_grid(axes={"seed": [0]}), tmp_path)

    def short(point: Point, on_line) -> None:  # noqa: ANN001
        pd.DataFrame({"round": [0]}).to_csv(point.run_dir / "rounds.csv", index=False)
        (point.run_dir / "config.json").write_text("{}")

    # Execute
    report = run_sweep(sweep, short, progress=False)

    # Assert
    assert report.failed == [("seed0", "rounds.csv has 1 rows, expected 3")]


def test_a_point_that_levelled_off_early_is_done_only_with_the_rows_it_names(tmp_path: Path) -> None:
    # Prepare: stop-patience on; one run says it stopped after round 1 and wrote 2 rows, one
    # says round 1 but wrote only round 0
    sweep = parse_sweep(small_grid(base={"num-server-rounds": 9, "stop-patience": 3}, axes={"seed": [0, 1]}), tmp_path)

    def stopped(point: Point, on_line) -> None:  # noqa: ANN001
        rows = [0, 1] if point.name == "seed0" else [0]
        pd.DataFrame({"round": rows}).to_csv(point.run_dir / "rounds.csv", index=False)
        (point.run_dir / "config.json").write_text('{"last_round": 1}')

    # Execute
    report = run_sweep(sweep, stopped, progress=False)

    # Assert
    assert report.done == ["seed0"]
    assert report.failed == [("seed1", "rounds.csv has 1 rows, expected 2")]


def test_point_subprocess_streams_round_lines_logs_output_and_reports_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a stand-in for simulations.run that echoes its arguments and fails.
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "fake_point.py").write_text(textwrap.dedent("""
        import sys
        print("starting", " ".join(a for a in sys.argv[1:] if a.startswith(("density=", "run-name="))))
        print("[fedfish] round 1/2 train acc=0.5")
        sys.exit(3)
    """))
    monkeypatch.setattr(point_process, "POINT_MODULE", "fake_point")
    monkeypatch.setenv("PYTHONPATH", str(module_dir))
    point = parse_sweep(small_grid(axes={"seed": [0]}, base={"density": 0.02}), tmp_path).points[0]
    lines: list[str] = []

    # Execute
    error = point_process.run_point_subprocess(point, lines.append)

    # Assert
    assert error is not None and error.startswith("exit status 3")
    assert lines == ['starting density=0.02 run-name="seed0"', "[fedfish] round 1/2 train acc=0.5"]
    assert (point.run_dir / point_process.LOG_FILE).read_text().splitlines() == lines


@pytest.mark.e2e
def test_a_sweep_stopped_mid_point_continues_it_and_skips_finished_points(tmp_path: Path) -> None:
    # Prepare: two points of the committed quick sweep, 5 rounds, in Flower's Ray simulation,
    # side by side on a core each
    command = [
        sys.executable, "-m", "simulations.sweep", str(QUICK), "--results-dir", str(tmp_path),
        "--only", "alpha0.5_scratch_(fedfish|fedavg)", "--set", "num-server-rounds=5", "--no-progress",
        "--workers", str(min(2, usable_cpus())),
    ]
    fedfish = tmp_path / "quick" / "seed0_alpha0.5_scratch_fedfish-5pct"
    sweep = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # Execute: SIGTERM the sweep (as a deadline script does) once the FedFish point has
    # checkpointed round 2, then run the same command twice more
    deadline = time.time() + 300
    while _rounds_written(fedfish) < 3 and sweep.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    sweep.send_signal(signal.SIGTERM)
    stopped_output, _ = sweep.communicate(timeout=60)
    stopped_rounds = _rounds_written(fedfish)
    marker_after_stop = json.loads((fedfish / POINT_FILE).read_text())
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if "run-name=" in " ".join(p.info["cmdline"] or []) and str(tmp_path) in " ".join(p.info["cmdline"])]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    third = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    # Assert: stopped mid-run with nothing left running, then continued, not redone
    assert marker_after_stop["status"] == "running" and 3 <= stopped_rounds < 6, stopped_output[-3000:]
    assert leftovers == []
    assert again.returncode == 0 and "0 failed" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    marker = json.loads((fedfish / POINT_FILE).read_text())
    assert marker["status"] == "done" and marker["resumed"] is True
    rounds = pd.read_csv(fedfish / "rounds.csv")
    assert list(rounds["round"]) == [0, 1, 2, 3, 4, 5]
    assert list(rounds["phase"][:3]) == ["initial", "warmup", "calibration"]
    log = (fedfish / point_process.LOG_FILE).read_text()
    assert "resuming after round" in log and log.index("[fedfish] round 1/5") < log.index("resuming after round")
    fedavg = pd.read_csv(tmp_path / "quick" / "seed0_alpha0.5_scratch_fedavg" / "rounds.csv")
    assert list(fedavg["phase"]) == ["initial"] + ["train"] * 5
    assert "sweep quick: 0 run, 2 already done, 0 failed" in third.stdout


def _rounds_written(run_dir: Path) -> int:
    """Rows in ``rounds.csv`` once the server has checkpointed them, else 0."""
    rounds, checkpoint = run_dir / "rounds.csv", run_dir / "checkpoint.pt"
    if not (rounds.is_file() and checkpoint.is_file()):
        return 0
    return len(rounds.read_text().strip().splitlines()) - 1


def test_exported_evidence_is_not_ignored_by_git() -> None:
    # The evidence is committed: a .gitignore rule for run outputs must not swallow it.
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["docs/results/crossdevice/alpha0.5_finetune_seed0_fedavg/rounds.csv", "results/x/rounds.csv"]

    # Execute
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True).stdout.split()

    # Assert
    assert ignored == ["results/x/rounds.csv"]
