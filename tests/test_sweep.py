"""Sweeps: parsing the TOML grid, resuming, reporting failed points, the point subprocess."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from simulations import point_process
from simulations import sweep as sweep_mod
from simulations.analysis import POINT_FILE, run_dirs
from simulations.config import ConfigError, RunConfig
from simulations.pretrain import CheckpointMismatchError
from simulations.run import usable_cpus
from simulations.sweep import export_evidence, point_status, run_sweep
from simulations.sweep_file import Point, load_sweep, parse_sweep

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "simulations" / "sweeps" / "quick.toml"
DEMO = REPO / "simulations" / "sweeps" / "demo.toml"


def _grid(**extra: object) -> dict:
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
    sweep = parse_sweep(_grid(), tmp_path, overrides={"num-server-rounds": 7})

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
    data = _grid(axes={"lr": [0.1, -1.0]})

    # Execute / Assert
    with pytest.raises(ConfigError, match="point 'lr-1.0': lr: must be in"):
        parse_sweep(data, tmp_path)


# ----------------------------------------------------------------------------- running and resuming


def test_failed_point_is_reported_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # Prepare
    sweep = parse_sweep(_grid(), tmp_path)
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
    sweep = parse_sweep(_grid(), tmp_path)
    run_sweep(sweep, fake_runner(fail={"seed0_fedfish-2pct"})[0], progress=False)
    half = tmp_path / "t" / "seed1_fedavg"
    (half / POINT_FILE).write_text(json.dumps({"status": "running"}))
    (half / "leftover.txt").write_text("from the crashed attempt")
    changed = parse_sweep(_grid(base={"num-server-rounds": 2, "num-partitions": 2, "lr": 0.1}), tmp_path)

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
    sweep = parse_sweep(_grid(), tmp_path)
    for point in sweep.points[::2]:  # seed0_fedavg, seed1_fedavg
        point.run_dir.mkdir(parents=True)
        sweep_mod._mark(point, "running")
        (point.run_dir / "rounds.csv").write_text("round\n0\n1\n")
    cut = sweep.points[0].run_dir
    (cut / "checkpoint.pt").write_bytes(b"server state after round 1")
    changed = parse_sweep(_grid(base={"num-server-rounds": 2, "num-partitions": 2, "lr": 0.1}), tmp_path)
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
    sweep = parse_sweep(_grid(axes={"seed": [0]}), tmp_path)
    run_sweep(sweep, fake_runner()[0], progress=False)
    marker = sweep.points[0].run_dir / POINT_FILE
    info = json.loads(marker.read_text())
    del info["config"]["aggregator"]
    marker.write_text(json.dumps(info))
    robust = parse_sweep(_grid(axes={"seed": [0]}, base={"num-server-rounds": 2, "num-partitions": 2,
                                                         "aggregator": "median"}), tmp_path)

    # Execute / Assert
    assert point_status(sweep.points[0]) == "done"
    assert point_status(robust.points[0]) == "stale"


def test_keys_that_change_how_a_point_runs_but_not_its_results_keep_it_done(tmp_path: Path) -> None:
    # Prepare
    sweep = parse_sweep(_grid(axes={"seed": [0]}), tmp_path)
    run_sweep(sweep, fake_runner()[0], progress=False)
    base = {"num-server-rounds": 2, "num-partitions": 2}
    patient = parse_sweep(_grid(axes={"seed": [0]}, base=base | {"round-timeout": 3600.0}), tmp_path)
    moved = parse_sweep(_grid(axes={"seed": [0]}, base=base | {"client-state-dir": "elsewhere"}), tmp_path)
    other_seed_data = parse_sweep(_grid(axes={"seed": [0]}, base=base | {"holdout-fraction": 0.05}), tmp_path)

    # Execute / Assert
    assert [point_status(s.points[0]) for s in (patient, moved, other_seed_data)] == ["done", "done", "stale"]


def test_export_copies_the_evidence_of_finished_points_only(tmp_path: Path) -> None:
    # Prepare: one point failed, one still running, two done; the destination already holds
    # a point from an earlier export
    sweep = parse_sweep(_grid(), tmp_path / "results")
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
    sweep_a = parse_sweep(_grid(), tmp_path / "a")
    run_sweep(sweep_a, fake_runner(fail={"seed1_fedavg"})[0], progress=False)
    export_evidence(sweep_a.folder, tmp_path / "evidence" / "t")
    sweep_b = parse_sweep(_grid(), tmp_path / "b")
    (sweep_b.folder / "seed1_fedfish-2pct").mkdir(parents=True)

    # Execute
    imported = sweep_mod.import_evidence(tmp_path / "evidence" / "t", sweep_b.folder)
    runner, calls = fake_runner()
    report = run_sweep(sweep_b, runner, progress=False)

    # Assert: the finished points are skipped; the failed one and the half-written one run
    assert imported == ["seed0_fedavg", "seed0_fedfish-2pct"]
    assert report.skipped == imported and calls == ["seed1_fedavg", "seed1_fedfish-2pct"]


def _fake_checkpoint(out: Path, bias: float = 0.25) -> dict[str, torch.Tensor]:
    """A saved state_dict with the sidecar pretrain writes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = {"w": torch.tensor([[1.5, -2.0]]), "b": torch.tensor([bias]), "steps": torch.tensor(7)}
    torch.save(weights, out)
    (out.parent / f"{out.name}.json").write_text(json.dumps({"path": str(out), "test_accuracy": 0.8, "seed": 0}))
    return weights


def test_export_records_the_pretrained_checkpoint_by_a_digest_of_its_weights(tmp_path: Path) -> None:
    # Prepare: a sweep whose fine-tuning checkpoint exists, with the metadata pretrain writes
    out = tmp_path / "results" / "pretrained" / "net.pt"
    sweep = parse_sweep(_grid(pretrain={"out": str(out), "epochs": 1}), tmp_path / "results")
    _fake_checkpoint(out)
    # The oracle: sha256 of the floating tensors' fp32 bytes in state_dict order
    expected = hashlib.sha256(np.array([1.5, -2.0, 0.25], dtype=np.float32).tobytes()).hexdigest()[:16]

    # Execute
    record_file = sweep_mod.export_pretrain_record(sweep, tmp_path / "evidence")
    record = json.loads(record_file.read_text())
    _fake_checkpoint(out, bias=0.5)
    with pytest.raises(CheckpointMismatchError, match=f"started from {expected}"):
        sweep_mod.export_pretrain_record(sweep, tmp_path / "evidence")

    # Assert: the committed record is not overwritten by another checkpoint's
    assert record == {"path": "net.pt", "test_accuracy": 0.8, "seed": 0, "weights-digest": expected}
    assert json.loads(record_file.read_text()) == record
    assert sweep_mod.export_pretrain_record(parse_sweep(_grid(), tmp_path), tmp_path / "none") is None


def test_a_sweep_refuses_to_go_on_from_another_checkpoint_than_its_points_started_from(tmp_path: Path) -> None:
    # Prepare: a fine-tuning sweep that ran from one checkpoint, which is then replaced,
    # and one of whose points must be redone
    out = tmp_path / "results" / "pretrained" / "net.pt"
    base = {"num-server-rounds": 2, "num-partitions": 2, "initial-model": str(out)}
    sweep = parse_sweep(_grid(pretrain={"out": str(out)}, base=base), tmp_path / "results")
    _fake_checkpoint(out)
    runner, calls = fake_runner()
    first = run_sweep(sweep, runner, progress=False).done
    recorded = json.loads((sweep.folder / "pretrained.json").read_text())
    _fake_checkpoint(out, bias=0.5)
    shutil.rmtree(sweep.points[0].run_dir)

    # Execute
    with pytest.raises(CheckpointMismatchError, match="has weights digest .* but the points recorded in") as err:
        run_sweep(sweep, runner, progress=False)

    # Assert: nothing more ran, the record still names the first checkpoint, the error says what to do
    assert calls == first and len(first) == 4
    assert recorded["weights-digest"] in str(err.value) and "ATEN_CPU_CAPABILITY=avx2" in str(err.value)
    assert json.loads((sweep.folder / "pretrained.json").read_text()) == recorded
    _fake_checkpoint(out)
    assert run_sweep(sweep, runner, progress=False).done == [sweep.points[0].name]


def test_points_that_do_not_start_from_the_checkpoint_run_without_it(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    # Prepare: a sweep folder recording one checkpoint, another checkpoint on disk (as a
    # machine with other CPU kernels pretrains), and points that start from the seeded model
    out = tmp_path / "results" / "pretrained" / "net.pt"
    sweep = parse_sweep(_grid(pretrain={"out": str(out)}), tmp_path / "results")
    sweep.folder.mkdir(parents=True)
    (sweep.folder / "pretrained.json").write_text(json.dumps({"path": "net.pt", "weights-digest": "0000000000000000"}))
    monkeypatch.setattr(sweep_mod, "pretrain_pinned", lambda **_: pytest.fail("pretrained for no point"))

    # Execute
    report = run_sweep(sweep, fake_runner()[0], progress=False)
    _fake_checkpoint(out)
    report_with_other_checkpoint = run_sweep(sweep, fake_runner()[0], progress=False)

    # Assert: every point ran once; neither the missing nor the other checkpoint stopped them
    assert len(report.done) == 4 and report_with_other_checkpoint.skipped == report.done
    assert json.loads((sweep.folder / "pretrained.json").read_text())["weights-digest"] == "0000000000000000"


def test_import_brings_the_checkpoint_record_and_refuses_a_folder_recording_another(tmp_path: Path) -> None:
    # Prepare: evidence exported from a sweep that ran from one checkpoint
    out = tmp_path / "a" / "pretrained" / "net.pt"
    sweep_a = parse_sweep(_grid(pretrain={"out": str(out)}, axes={"seed": [0]}), tmp_path / "a")
    _fake_checkpoint(out)
    run_sweep(sweep_a, fake_runner()[0], progress=False)
    export_evidence(sweep_a.folder, tmp_path / "evidence")
    sweep_mod.export_pretrain_record(sweep_a, tmp_path / "evidence")
    other = tmp_path / "c" / "t"
    other.mkdir(parents=True)
    (other / "pretrained.json").write_text(json.dumps({"path": "net.pt", "weights-digest": "0000000000000000"}))

    # Execute
    imported = sweep_mod.import_evidence(tmp_path / "evidence", tmp_path / "b" / "t")
    with pytest.raises(CheckpointMismatchError, match="0000000000000000"):
        sweep_mod.import_evidence(tmp_path / "evidence", other)

    # Assert
    assert imported == ["seed0"]
    assert (json.loads((tmp_path / "b" / "t" / "pretrained.json").read_text())
            == json.loads((tmp_path / "evidence" / "pretrained.json").read_text()))
    assert [p.name for p in other.iterdir()] == ["pretrained.json"]


@pytest.mark.parametrize(("machine", "pinned"), [("x86_64", True), ("AMD64", True), ("arm64", False), ("aarch64", False)])
def test_pretraining_pins_the_cpu_kernels_on_x86_only(machine: str, pinned: bool) -> None:
    from simulations.pretrain import PINNED_X86_KERNELS, pinned_kernel_env

    assert pinned_kernel_env(machine) == (PINNED_X86_KERNELS if pinned else {})


def test_a_point_that_writes_too_few_rounds_fails(tmp_path: Path) -> None:
    # Prepare
    sweep = parse_sweep(_grid(axes={"seed": [0]}), tmp_path)

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
    sweep = parse_sweep(_grid(base={"num-server-rounds": 9, "stop-patience": 3}, axes={"seed": [0, 1]}), tmp_path)

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
    point = parse_sweep(_grid(axes={"seed": [0]}, base={"density": 0.02}), tmp_path).points[0]
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


# ----------------------------------------------------------------------------- the fine-tuning scenario's data


def test_holdout_is_left_out_of_every_partition_whatever_the_seed(tiny_fmnist_dir) -> None:  # noqa: ANN001
    # Prepare
    from fedfish.data import load_partition
    from fedfish.partition import holdout_indices

    root = tiny_fmnist_dir.root
    images, _ = tiny_fmnist_dir.arrays["train"]
    held = holdout_indices(100, 0.2)

    # Execute
    parts = {
        seed: [load_partition("fashion-mnist", i, 4, "iid", seed=seed, root=root, holdout_fraction=0.2)[0]
               for i in range(4)]
        for seed in (0, 1)
    }

    # Assert
    assert len(held) == 20 and list(held) == sorted(held)
    assert list(held) == list(holdout_indices(100, 0.2))  # no seed involved: the same split for every run
    # Recover which training images each partition got by matching pixels (the tiny images are random).
    flat = images.reshape(100, -1).astype(np.float32)
    for seed, tensors in parts.items():
        got = []
        for x in tensors:
            raw = np.rint(x.numpy().reshape(len(x), -1) * 0.3530 * 255 + 0.2860 * 255)
            got += [int(np.argmin(np.abs(flat - row).sum(axis=1))) for row in raw]
        assert sorted(got) == sorted(set(range(100)) - set(held)), seed


@pytest.mark.parametrize(
    ("num_samples", "fraction", "match"),
    [(100, 1.0, r"fraction must be in \[0, 1\)"), (100, -0.1, r"fraction must be in \[0, 1\)"),
     (-1, 0.1, "num_samples must be >= 0")],
)
def test_invalid_holdout_is_refused(num_samples: int, fraction: float, match: str) -> None:
    from fedfish.partition import holdout_indices

    with pytest.raises(ValueError, match=match):
        holdout_indices(num_samples, fraction)


def test_pretrain_is_reproducible_and_trains_on_the_holdout_only(tiny_fmnist_dir, tmp_path: Path) -> None:  # noqa: ANN001
    # Prepare
    import torch

    from simulations.pretrain import pretrain

    kwargs = {"holdout_fraction": 0.3, "epochs": 1, "batch_size": 10, "data_root": str(tiny_fmnist_dir.root)}

    # Execute
    first = pretrain(tmp_path / "a.pt", **kwargs)
    second = pretrain(tmp_path / "b.pt", **kwargs)
    other_seed = pretrain(tmp_path / "c.pt", seed=1, **kwargs)

    # Assert
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc2.weight"], c["fc2.weight"])
    assert first.holdout_samples == 30 and 0.0 <= first.test_accuracy <= 1.0
    assert first.test_accuracy == second.test_accuracy
    sidecar = json.loads((tmp_path / "a.pt.json").read_text())
    assert sidecar["holdout_fraction"] == 0.3 and sidecar["holdout_samples"] == 30
    assert RunConfig(initial_model=str(tmp_path / "a.pt"), holdout_fraction=0.3).holdout_fraction == 0.3
    assert other_seed.path.endswith("c.pt")


def test_pretrain_pinned_trains_in_a_fresh_process_and_reports_its_failure(tiny_fmnist_dir, tmp_path: Path) -> None:  # noqa: ANN001
    # Prepare
    from simulations.pretrain import pretrain_pinned

    kwargs = {"holdout_fraction": 0.3, "epochs": 1, "batch_size": 10, "data_root": str(tiny_fmnist_dir.root)}

    # Execute
    result = pretrain_pinned(tmp_path / "a.pt", **kwargs)
    again = pretrain_pinned(tmp_path / "b.pt", **kwargs)

    # Assert: the child got every argument and wrote the checkpoint; a failing child's error reaches the caller
    assert result.holdout_samples == 30 and result.test_accuracy == again.test_accuracy
    assert sweep_mod.checkpoint_record(tmp_path / "a.pt")["weights-digest"] == sweep_mod.checkpoint_record(
        tmp_path / "b.pt")["weights-digest"]
    with pytest.raises(RuntimeError, match=r"holdout_fraction must be in \(0, 0.9\]"):
        pretrain_pinned(tmp_path / "c.pt", **{**kwargs, "holdout_fraction": 0.95})


def test_pretrain_with_zero_epochs_saves_the_seeded_initial_model(tiny_fmnist_dir, tmp_path: Path) -> None:  # noqa: ANN001
    # Prepare
    import torch

    from fedfish.models import build_model
    from simulations.pretrain import pretrain

    # Execute
    pretrain(tmp_path / "init.pt", holdout_fraction=0.3, epochs=0, seed=4, data_root=str(tiny_fmnist_dir.root))

    # Assert: exactly what a run with seed 4 builds as its initial model
    torch.manual_seed(4)
    expected = build_model("cnn").state_dict()
    saved = torch.load(tmp_path / "init.pt", weights_only=True)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        pretrain(tmp_path / "x.pt", holdout_fraction=0.3, epochs=-1, data_root=str(tiny_fmnist_dir.root))


@pytest.mark.parametrize(("fraction", "match"), [(0.0, r"holdout_fraction must be in \(0, 0.9\]"),
                                                 (0.95, r"holdout_fraction must be in \(0, 0.9\]")])
def test_pretrain_refuses_an_empty_or_oversized_holdout(fraction: float, match: str, tmp_path: Path) -> None:
    from simulations.pretrain import pretrain

    with pytest.raises(ValueError, match=match):
        pretrain(tmp_path / "x.pt", holdout_fraction=fraction)


def test_exported_evidence_is_not_ignored_by_git() -> None:
    # The evidence is committed: a .gitignore rule for run outputs must not swallow it.
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["docs/results/crossdevice/alpha0.5_finetune_seed0_fedavg/rounds.csv", "results/x/rounds.csv"]

    # Execute
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True).stdout.split()

    # Assert
    assert ignored == ["results/x/rounds.csv"]
