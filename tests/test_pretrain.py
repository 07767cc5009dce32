"""The fine-tuning scenario's checkpoint: pretraining on the public holdout, the digest that
names it, and a sweep's refusal to mix points that started from different checkpoints."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfish.dataset_files import SYSTEM_FASHION_MNIST_DIR
from simulations import cpu_identity
from simulations import sweep as sweep_mod
from simulations.config import RunConfig
from simulations.pretrain import REPO_ROOT, CheckpointMismatchError
from simulations.sweep import run_sweep
from simulations.sweep_evidence import export_evidence, export_pretrain_record, import_evidence
from simulations.sweep_file import load_sweep, parse_sweep
from tests.sweep_fakes import fake_runner, small_grid

# ----------------------------------------------------------------------------- the checkpoint's record


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
    sweep = parse_sweep(small_grid(pretrain={"out": str(out), "epochs": 1}), tmp_path / "results")
    _fake_checkpoint(out)
    # The oracle: sha256 of the floating tensors' fp32 bytes in state_dict order
    expected = hashlib.sha256(np.array([1.5, -2.0, 0.25], dtype=np.float32).tobytes()).hexdigest()[:16]

    # Execute
    record_file = export_pretrain_record(sweep, tmp_path / "evidence")
    record = json.loads(record_file.read_text())
    _fake_checkpoint(out, bias=0.5)
    with pytest.raises(CheckpointMismatchError, match=f"started from {expected}"):
        export_pretrain_record(sweep, tmp_path / "evidence")

    # Assert: the committed record is not overwritten by another checkpoint's
    assert record == {"path": "net.pt", "test_accuracy": 0.8, "seed": 0, "weights-digest": expected}
    assert json.loads(record_file.read_text()) == record
    assert export_pretrain_record(parse_sweep(small_grid(), tmp_path), tmp_path / "none") is None


def test_a_sweep_refuses_to_go_on_from_another_checkpoint_than_its_points_started_from(tmp_path: Path) -> None:
    # Prepare: a fine-tuning sweep that ran from one checkpoint, which is then replaced,
    # and one of whose points must be redone
    out = tmp_path / "results" / "pretrained" / "net.pt"
    base = {"num-server-rounds": 2, "num-partitions": 2, "initial-model": str(out)}
    sweep = parse_sweep(small_grid(pretrain={"out": str(out)}, base=base), tmp_path / "results")
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
    sweep = parse_sweep(small_grid(pretrain={"out": str(out)}), tmp_path / "results")
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
    sweep_a = parse_sweep(small_grid(pretrain={"out": str(out)}, axes={"seed": [0]}), tmp_path / "a")
    _fake_checkpoint(out)
    run_sweep(sweep_a, fake_runner()[0], progress=False)
    export_evidence(sweep_a.folder, tmp_path / "evidence")
    export_pretrain_record(sweep_a, tmp_path / "evidence")
    other = tmp_path / "c" / "t"
    other.mkdir(parents=True)
    (other / "pretrained.json").write_text(json.dumps({"path": "net.pt", "weights-digest": "0000000000000000"}))

    # Execute
    imported = import_evidence(tmp_path / "evidence", tmp_path / "b" / "t")
    with pytest.raises(CheckpointMismatchError, match="0000000000000000"):
        import_evidence(tmp_path / "evidence", other)

    # Assert
    assert imported == ["seed0"]
    assert (json.loads((tmp_path / "b" / "t" / "pretrained.json").read_text())
            == json.loads((tmp_path / "evidence" / "pretrained.json").read_text()))
    assert [p.name for p in other.iterdir()] == ["pretrained.json"]


@pytest.mark.parametrize(("machine", "pinned"), [("x86_64", True), ("AMD64", True), ("arm64", False), ("aarch64", False)])
def test_pretraining_pins_the_cpu_kernels_on_x86_only(machine: str, pinned: bool) -> None:
    from simulations.pretrain import PINNED_X86_KERNELS, pinned_kernel_env

    assert pinned_kernel_env(machine) == (PINNED_X86_KERNELS if pinned else {})


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


@pytest.mark.skipif(not SYSTEM_FASHION_MNIST_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
@pytest.mark.skipif(cpu_identity.unavailable_reason() is not None,
                    reason=f"cannot present a CPU identity: {cpu_identity.unavailable_reason()}")
def test_the_sweeps_pretraining_reproduces_the_committed_checkpoint_on_this_cpu(tmp_path: Path) -> None:
    # The independent oracle: the record committed with the crossdevice points (made on another
    # machine), whatever this CPU's vendor and vector width.
    from simulations.pretrain import pretrain_pinned

    committed = json.loads((REPO_ROOT / "docs/results/crossdevice/pretrained.json").read_text())
    sweep = load_sweep(REPO_ROOT / "simulations/sweeps/crossdevice.toml", tmp_path)
    result = pretrain_pinned(**{**sweep.pretrain, "out": tmp_path / "checkpoint.pt"})
    assert sweep_mod.checkpoint_record(tmp_path / "checkpoint.pt")["weights-digest"] == committed["weights-digest"]
    assert result.test_accuracy == committed["test_accuracy"]


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
