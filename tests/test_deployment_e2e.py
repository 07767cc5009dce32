"""A real deployment on 127.0.0.1: SuperLink and SuperNodes as OS processes, with TLS.

One federation is shared by the e2e tests (a Flower run costs minutes here): a SuperLink
with TLS and SuperNode authentication, 3 registered SuperNodes each with its own
Fashion-MNIST partition and its own state folder (``--node-config``), and
``flwr run <app> fedfish`` for 5 rounds of FedFish. Once round 1 is in rounds.csv,
SuperNode 1 is killed (SIGTERM to its process group, ClientApp included) and started
again; it keeps its node id (same key), its ClientApp reloads base, mask and versions
from its state folder, and it trains on with deltas: no dense model is sent to it (nor to anyone:
every node rebuilds the seeded initial model).

Why 5 rounds: a node killed at a round boundary may miss round 2 (offline, or it had
pulled the message), and on a loaded machine the restart itself can take a round longer
(the SuperLink must first notice the missed heartbeats), so the last rounds show it back.

Everything started here runs in its own session and is stopped in the fixture's
``finally``, together with what it spawned (SuperExec, flwr-serverapp, flwr-clientapp).
Certificates and command lines, which start no federation, are tested in
``test_deploy_commands.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedfish import codec
from fedfish.dataset_files import locate_fashion_mnist
from simulations.certs import make_certificates, make_supernode_key
from simulations.deploy import (
    ManagedProcess,
    free_port,
    superlink_command,
    supernode_command,
    wait_for_tls,
    wait_until,
    write_connection,
)
from simulations.results import CLIENT_COLUMNS, ROUND_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
NUM_PARAMS = 1_663_370  # FedAvgCNN
DENSE_BYTES = 4 * NUM_PARAMS
NUM_NODES = 3
ROUNDS = 5
VICTIM = 1  # partition id of the SuperNode killed after round 1
CONNECTION = "fedfish"
# Real Fashion-MNIST, first N images: partitioning and decoding 60,000 images in every
# flwr-clientapp process (one per message) would dominate the run time.
TRAIN_IMAGES, TEST_IMAGES = 3000, 500
START_TIMEOUT_S = 90
RESTART_TIMEOUT_S = 120
RUN_TIMEOUT_S = 420
RUN_CONFIG = {
    "strategy": "fedfish", "density": 0.05, "num-partitions": NUM_NODES, "num-server-rounds": ROUNDS,
    "samples-per-client": 64, "fisher-samples": 16, "eval-samples": 200, "batch-size": 16,
    "seed": 5, "run-name": "deploy-e2e",
    # Bounds a round whose message went to the node while it was being killed.
    "round-timeout": 60.0,
}


@dataclass
class Federation:
    """What the fixture started and learned."""

    tmp: Path
    env: dict[str, str]
    port: int
    ca_cert: Path
    node_ids: dict[int, int]  # partition id -> node id (from `flwr supernode register`)
    spare_key: tuple[Path, int]  # a registered key no SuperNode uses: (private key, node id)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    run_id: int = 0
    restarted_node_id: int | None = None

    @property
    def run_dir(self) -> Path:
        return self.tmp / "results" / str(RUN_CONFIG["run-name"])

    def flwr(self, *args: str, timeout: float = 120) -> dict:
        """Run the ``flwr`` CLI with ``--format json``; its parsed answer."""
        result = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"],
            env=os.environ | self.env, cwd=self.tmp, capture_output=True, text=True, timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return json.loads(result.stdout)

    def serverapp_log(self) -> str:
        """The ServerApp's log (it does not go to the SuperLink's log)."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "log", str(self.run_id), CONNECTION, "--show"],
            env=os.environ | self.env, cwd=self.tmp, capture_output=True, text=True, timeout=120,
        ).stdout

    def run_ended(self) -> bool:
        """Whether the ServerApp has exited; raises if it did so before writing model.pt."""
        superlink = self.processes["superlink"]
        if not superlink.running():
            raise RuntimeError(f"the SuperLink exited:\n{superlink.log()[-3000:]}")
        if "Finished task" not in superlink.log():
            return False
        if not (self.run_dir / "model.pt").exists():
            raise RuntimeError(f"the run ended without finishing; ServerApp log:\n{self.serverapp_log()[-5000:]}")
        return True

    def run_status(self) -> str:
        """The run's status as ``flwr list`` reports it, e.g. ``finished:completed``."""
        return str(self.flwr("list", CONNECTION, "--run-id", str(self.run_id))["runs"][0]["status"])

    def state_dir(self, partition: int) -> Path:
        """The SuperNode's own folder for its ClientApp state (as on a separate machine)."""
        return self.tmp / f"node{partition}-state"

    def start_supernode(self, partition: int, name: str, key: Path, root_cert: Path, **kwargs: object) -> ManagedProcess:
        command = supernode_command(
            superlink=f"127.0.0.1:{self.port}", root_certificates=root_cert, runtime_port=free_port(),
            node_config={"partition-id": partition, "num-partitions": NUM_NODES, "data-root": str(self.tmp / "data"),
                         "state-dir": str(self.state_dir(partition))},
            auth_key=key, **kwargs,  # type: ignore[arg-type]
        )
        process = ManagedProcess.start(command, self.tmp / f"{name}.log", cwd=self.tmp, env=self.env)
        self.processes[name] = process
        return process


def _write_fashion_mnist_subset(out: Path) -> None:
    """The first images of the real Fashion-MNIST, as raw IDX files fedfish.data reads."""
    source = locate_fashion_mnist()
    out.mkdir(parents=True)
    for stem, count in (
        ("train-images-idx3-ubyte", TRAIN_IMAGES), ("train-labels-idx1-ubyte", TRAIN_IMAGES),
        ("t10k-images-idx3-ubyte", TEST_IMAGES), ("t10k-labels-idx1-ubyte", TEST_IMAGES),
    ):
        path = source / stem if (source / stem).exists() else source / f"{stem}.gz"
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        item = int(np.prod(dims[1:], dtype=np.int64)) if ndim > 1 else 1
        header = raw[:4] + count.to_bytes(4, "big") + raw[8: 4 + 4 * ndim]
        body = raw[4 + 4 * ndim: 4 + 4 * ndim + count * item]
        (out / stem).write_bytes(header + body)


def _copy_app(out: Path) -> Path:
    """The Flower app (pyproject.toml and the three packages), without .venv & co.

    ``flwr run .`` in the repository works too (docs/deploy.md), but flwr 1.41 walks
    every file under the app directory, .venv included, before filtering: ~15 s here.
    """
    out.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", out / "pyproject.toml")
    for package in ("fedfish", "strategies", "simulations"):
        shutil.copytree(ROOT / package, out / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def _json_in(text: str) -> dict:
    """The first JSON object in ``text`` (a log with stdout and stderr mixed)."""
    return json.JSONDecoder().raw_decode(text[text.index("{"):])[0]


def _read_clients(run_dir: Path) -> pd.DataFrame:
    """clients.csv with Flower's node ids (uint64; pandas reads ids below 2**63 as int64)."""
    clients = pd.read_csv(run_dir / "clients.csv")
    clients["node_id"] = clients["node_id"].astype("uint64")
    return clients


def _restart_until_connected(fed: Federation, partition: int, key: Path, root_cert: Path) -> ManagedProcess:
    """Start a SuperNode again and again until it connects, as ``Restart=on-failure`` would.

    After an unclean exit the SuperLink counts the node online until it misses two
    heartbeats (up to 60 s); activating it again fails until then (exit code 305).
    """
    deadline = time.monotonic() + RESTART_TIMEOUT_S
    attempt = 0
    while True:
        attempt += 1
        process = fed.start_supernode(partition, f"supernode-{partition}-restart-{attempt}", key, root_cert)
        wait_until(lambda: "SuperNode ID:" in process.log() or not process.running(), START_TIMEOUT_S,
                   "the restarted SuperNode to connect or exit")
        if "SuperNode ID:" in process.log():
            return process
        process.stop()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the restarted SuperNode never connected:\n{process.log()[-2000:]}")
        time.sleep(5)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    try:
        locate_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    tmp = tmp_path_factory.mktemp("deploy")
    _write_fashion_mnist_subset(tmp / "data")
    app = _copy_app(tmp / "app")
    certs = make_certificates(tmp / "certs", ["127.0.0.1"])
    keys = [make_supernode_key(tmp / "keys", f"node-{i}") for i in range(NUM_NODES + 1)]
    port = free_port()
    # No telemetry: with no internet, its send on exit can outlast Flower's 5 s force-exit
    # timer, which then kills the SuperNode before it tells the SuperLink it is offline.
    env = {"FLWR_HOME": str(tmp / "flwr-home"), "FEDFISH_CLIENT_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    write_connection(env["FLWR_HOME"], CONNECTION, f"127.0.0.1:{port}", root_certificates=certs.ca_cert)
    fed = Federation(tmp=tmp, env=env, port=port, ca_cert=certs.ca_cert, node_ids={}, spare_key=(keys[-1][0], 0))
    try:
        fed.processes["superlink"] = ManagedProcess.start(
            superlink_command(port=port, certificates=certs, node_auth=True), tmp / "superlink.log", cwd=tmp, env=env,
        )
        wait_for_tls("127.0.0.1", port, certs.ca_cert, START_TIMEOUT_S)

        # Register all keys at once: each `flwr` call costs seconds of imports.
        flwr = str(Path(sys.executable).parent / "flwr")
        registering = [
            ManagedProcess.start([flwr, "supernode", "register", str(public), CONNECTION, "--format", "json"],
                                 tmp / f"register-{i}.log", cwd=tmp, env=env)
            for i, (_, public) in enumerate(keys)
        ]
        fed.processes |= {f"register-{i}": p for i, p in enumerate(registering)}
        wait_until(lambda: not any(p.running() for p in registering), START_TIMEOUT_S, "flwr supernode register")
        if any(p.popen.returncode != 0 for p in registering):
            raise RuntimeError("flwr supernode register failed:\n" + "\n".join(p.log() for p in registering))
        ids = [int(_json_in(p.log())["node-id"]) for p in registering]
        fed.node_ids = dict(enumerate(ids[:NUM_NODES]))
        fed.spare_key = (keys[-1][0], ids[-1])

        for partition in range(NUM_NODES):
            fed.start_supernode(partition, f"supernode-{partition}", keys[partition][0], certs.ca_cert)
        wait_until(
            lambda: all("SuperNode ID:" in fed.processes[f"supernode-{p}"].log() for p in range(NUM_NODES)),
            START_TIMEOUT_S, "3 SuperNodes to connect",
        )

        run_config = " ".join(f"{k}={json.dumps(v)}" for k, v in RUN_CONFIG.items())
        run_config += f" results-dir={json.dumps(str(tmp / 'results'))} data-root={json.dumps(str(tmp / 'data'))}"
        answer = fed.flwr("run", str(app), CONNECTION, "--run-config", run_config)
        fed.run_id = int(answer["run-id"])

        rounds_csv = fed.run_dir / "rounds.csv"
        wait_until(
            lambda: not fed.run_ended() and rounds_csv.exists() and 1 in set(pd.read_csv(rounds_csv)["round"]),
            RUN_TIMEOUT_S, "round 1 in rounds.csv",
        )
        fed.processes[f"supernode-{VICTIM}"].stop()
        restarted = _restart_until_connected(fed, VICTIM, keys[VICTIM][0], certs.ca_cert)
        fed.restarted_node_id = int(restarted.log().split("SuperNode ID:")[1].split()[0])

        wait_until(fed.run_ended, RUN_TIMEOUT_S, "the run to finish")
        yield fed
    finally:
        for process in reversed(list(fed.processes.values())):
            process.stop()


# ---------------------------------------------------------------- e2e: the run
@pytest.mark.e2e
def test_run_completes_and_writes_the_results_folder(federation: Federation) -> None:
    # Prepare
    run_dir = federation.run_dir

    # Execute
    rounds = pd.read_csv(run_dir / "rounds.csv")
    info = json.loads((run_dir / "config.json").read_text())
    mask = codec.decode_mask((run_dir / "mask.bin").read_bytes())
    state = torch.load(run_dir / "model.pt", weights_only=True)
    status = federation.run_status()

    # Assert
    assert list(rounds["round"]) == list(range(ROUNDS + 1))
    assert rounds.loc[rounds["round"] == 1, "phase"].item() == "calibration"
    assert not rounds["skipped"].any()
    assert rounds["cumulative_bytes"].is_monotonic_increasing
    assert info["config"]["num-server-rounds"] == ROUNDS and info["config"]["run-name"] == RUN_CONFIG["run-name"]
    assert mask.num_params == NUM_PARAMS and info["mask_digest"] == mask.digest
    assert sum(t.numel() for t in state.values()) == NUM_PARAMS
    assert status == "finished:completed"


@pytest.mark.e2e
def test_byte_log_has_the_simulation_columns_and_adds_up(federation: Federation) -> None:
    # Prepare
    rounds = pd.read_csv(federation.run_dir / "rounds.csv").set_index("round")
    clients = _read_clients(federation.run_dir)

    # Execute
    per_round = clients.pivot_table(index="server_round", columns="direction", values="wire_bytes", aggfunc="sum")

    # Assert
    assert tuple(rounds.reset_index().columns) == ROUND_COLUMNS
    assert tuple(clients.columns) == CLIENT_COLUMNS
    assert set(clients[clients.direction == "down"]["node_id"]) == set(federation.node_ids.values())
    for server_round in range(1, ROUNDS + 1):
        assert per_round.loc[server_round, "down"] == rounds.loc[server_round, "bytes_down"]
        assert per_round.loc[server_round, "up"] == rounds.loc[server_round, "bytes_up"]


@pytest.mark.e2e
def test_nodes_keep_base_and_mask_across_rounds(federation: Federation) -> None:
    # Prepare
    clients = _read_clients(federation.run_dir)
    steady = [node for partition, node in federation.node_ids.items() if partition != VICTIM]

    # Execute
    later = clients[(clients.server_round >= 2) & clients.node_id.isin(steady)]

    # Assert: no SuperNode was ever sent the dense model (each rebuilt the seeded initial
    # model), and after round 1 those that ran throughout only ever got mask values.
    assert (clients[clients.direction == "down"].payload_bytes < DENSE_BYTES / 10).all()
    assert len(later[later.direction == "down"]) == len(steady) * (ROUNDS - 1)
    assert (later[later.direction == "down"].payload_bytes < DENSE_BYTES / 10).all()
    assert (later[later.direction == "up"].dense_equivalent_bytes == DENSE_BYTES).all()  # no error replies


@pytest.mark.e2e
def test_restarted_node_resumes_from_its_state_folder(federation: Federation) -> None:
    # Prepare
    victim = federation.node_ids[VICTIM]
    rounds = pd.read_csv(federation.run_dir / "rounds.csv").set_index("round")
    clients = _read_clients(federation.run_dir)
    state_files = {p: federation.state_dir(p) / str(RUN_CONFIG["run-name"]) / f"partition-{p}.state"
                   for p in range(NUM_NODES)}

    # Execute
    to_victim = clients[(clients.node_id == victim) & (clients.direction == "down") & (clients.server_round >= 2)]

    # Assert: same key, same node id; its state survived on its own disk, so it never
    # needed the base again, and it trains in the last round with everyone else
    assert federation.restarted_node_id == victim
    assert all(path.is_file() for path in state_files.values())
    assert len(to_victim) >= 1 and (to_victim.payload_bytes < DENSE_BYTES / 10).all()
    assert rounds.loc[2:, "clients_resynced"].sum() == 0
    assert rounds.loc[ROUNDS, "clients_ok"] == NUM_NODES


@pytest.mark.e2e
def test_supernode_with_a_foreign_root_certificate_cannot_join(federation: Federation) -> None:
    # Prepare: a registered key, so the certificate is the only thing wrong.
    foreign = make_certificates(federation.tmp / "foreign-ca", ["127.0.0.1"])
    key, node_id = federation.spare_key

    # Execute
    intruder = federation.start_supernode(0, "intruder", key, foreign.ca_cert, max_retries=0)
    try:
        intruder.popen.wait(timeout=START_TIMEOUT_S)
    finally:
        intruder.stop()
    nodes = {int(n["node-id"]): n for n in federation.flwr("supernode", "list", CONNECTION)["nodes"]}

    # Assert
    assert intruder.popen.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in intruder.log()
    assert "SuperNode ID:" not in intruder.log()
    assert nodes[node_id]["status"] == "registered"  # never came online
    assert nodes[federation.node_ids[0]]["status"] == "online"
