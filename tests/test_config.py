"""Run config: parsed once, unknown keys and bad values refused with the key named."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from simulations.config import KEY_HELP, ConfigError, RunConfig, markdown_table
from simulations.run import parse_overrides, simulation_backend_config

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_defaults_equal_runconfig_defaults() -> None:
    # Prepare
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # Execute
    declared = pyproject["tool"]["flwr"]["app"]["config"]
    # Assert: `flwr run .` and scripted runs start from the same defaults
    assert declared == RunConfig().to_mapping()
    assert pyproject["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "simulations.server_app:app", "clientapp": "simulations.client_app:app",
    }


def test_every_key_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert set(KEY_HELP) == set(RunConfig().to_mapping())
    for line in markdown_table().splitlines()[2:]:
        assert line in readme, f"README lacks the run-config row {line!r}"


def test_from_mapping_round_trips_and_coerces() -> None:
    cfg = RunConfig.from_mapping({"density": 1, "num-server-rounds": 3.0, "resume": "true", "strategy": "topk-ef"})
    assert cfg.density == 1.0 and isinstance(cfg.density, float)
    assert cfg.num_server_rounds == 3 and isinstance(cfg.num_server_rounds, int)
    assert cfg.resume is True
    assert RunConfig.from_mapping(cfg.to_mapping()) == cfg


def test_cli_overrides_parse_as_toml_scalars() -> None:
    assert parse_overrides(["density=0.02", "strategy=fedfish", "resume=true", 'run-name="a b"']) == {
        "density": 0.02, "strategy": "fedfish", "resume": True, "run-name": "a b",
    }


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"densty": 0.1}, r"unknown run-config keys \['densty'\]"),
        ({"density": 0.0}, r"density: must be in \(0.0, 1.0\]"),
        ({"density": 1.01}, "density"),
        ({"density": float("nan")}, "density: must be a number"),
        ({"density": "high"}, "density: expected float"),
        ({"num-server-rounds": 0}, "num-server-rounds"),
        ({"num-server-rounds": 2.5}, "num-server-rounds: expected int"),
        ({"strategy": "fedprox"}, "strategy: must be one of"),
        ({"value-dtype": "int4"}, "value-dtype"),
        ({"fisher-type": "true"}, "fisher-type"),
        ({"partitioner": "zipf"}, "partitioner"),
        ({"alpha": 0}, "alpha"),
        ({"fraction-train": 0}, "fraction-train"),
        ({"lr": -0.1}, "lr"),
        ({"momentum": 1.5}, "momentum"),
        ({"resume": "yes"}, "resume: expected bool"),
        ({"run-name": "../x"}, "run-name"),
        ({"model": "a:b:c"}, "model: expected a registered name"),
        ({"buffers": "shared"}, "buffers: must be one of"),
        ({"partitioner-args": "{oops"}, "partitioner-args"),
        ({"holdout-fraction": 1.0}, "holdout-fraction"),
        ({"fault-forget-state": "1-3"}, "fault-forget-state"),
        ({"fault-fail-fraction": 2}, "fault-fail-fraction"),
    ],
)
def test_bad_values_are_refused_naming_the_key(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_mapping(values)


@pytest.mark.parametrize(("cpus", "gpus", "override", "share"), [
    (2, 0, None, 0.0),        # no GPU: clients stay on the CPU
    (16, 1, None, 1 / 16),    # one GPU shared by as many clients as there are cores
    (8, 2, None, 2 / 8),
    (16, 1, "0", 0.0),        # the user keeps clients off the GPU
    (16, 1, "0.5", 0.5),
])
def test_simulation_asks_ray_for_a_gpu_share_when_there_is_one(
    monkeypatch: pytest.MonkeyPatch, cpus: int, gpus: int, override: str | None, share: float
) -> None:
    # Prepare
    if override is None:
        monkeypatch.delenv("FEDFISH_CLIENT_GPUS", raising=False)
    else:
        monkeypatch.setenv("FEDFISH_CLIENT_GPUS", override)

    # Execute
    backend = simulation_backend_config(cpus=cpus, gpus=gpus)

    # Assert
    assert backend["client_resources"] == {"num_cpus": 1, "num_gpus": pytest.approx(share)}
    assert backend["init_args"]["num_cpus"] == cpus and backend["init_args"]["num_gpus"] == gpus


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_simulation_counts_the_cores_this_process_may_use_not_the_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a process pinned to 3 cores (taskset, a container's CPU set) of a 64-core machine
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("FEDFISH_CLIENT_GPUS", raising=False)
    monkeypatch.delenv("FEDFISH_CPUS", raising=False)

    # Execute
    backend = simulation_backend_config(gpus=1)

    # Assert: Ray gets the 3 cores, and each client a third of the GPU
    assert backend["init_args"]["num_cpus"] == 3
    assert backend["client_resources"]["num_gpus"] == pytest.approx(1 / 3)
