"""Deployment without a federation: TLS certificates, SuperNode keys, the SuperLink and
SuperNode command lines, the connection entry ``flwr`` reads, and stopping what a process
started. Nothing here starts Flower; the real deployment on 127.0.0.1 is in
``test_deployment_e2e.py``."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from simulations.certs import make_certificates, make_supernode_key
from simulations.deploy import (
    ManagedProcess,
    descendants,
    format_node_config,
    superlink_command,
    supernode_command,
    wait_until,
    write_connection,
)

ROOT = Path(__file__).resolve().parents[1]


def test_server_certificate_names_every_host_and_chains_to_the_ca(tmp_path: Path) -> None:
    # Execute
    paths = make_certificates(tmp_path, ["10.1.2.3", "superlink.example.org"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    # Assert
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(paths.server_key.stat().st_mode & 0o777) == "0o600"
    assert oct(paths.ca_key.stat().st_mode & 0o777) == "0o600"


def test_supernode_key_is_an_openssh_p384_pair(tmp_path: Path) -> None:
    # Execute
    private, public = make_supernode_key(tmp_path, "node-0")

    # Assert
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize(
    ("hosts", "days", "match"),
    [
        (["bad host"], 365, "hosts"),
        ([""], 365, "hosts"),
        (["127.0.0.1"], 0, "days"),
    ],
)
def test_make_certificates_rejects_invalid_input(tmp_path: Path, hosts: list[str], days: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_certificates(tmp_path, hosts, days=days)


def test_certs_cli_writes_all_files(tmp_path: Path) -> None:
    # Execute
    subprocess.run(
        [sys.executable, "-m", "simulations.certs", "--out", str(tmp_path), "--host", "127.0.0.1",
         "--host", "myserver.example", "--supernode-key", "node-0"],
        cwd=ROOT, check=True, capture_output=True,
    )

    # Assert
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.crt", "ca.key", "node-0", "node-0.pub", "server.crt", "server.key",
    ]


def test_commands_use_tls_unless_insecure_is_asked_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    certs = make_certificates(tmp_path, ["127.0.0.1"])

    # Execute
    link = superlink_command(port=9093, certificates=certs, node_auth=True)
    node = supernode_command(superlink="10.0.0.5:9093", root_certificates=certs.ca_cert, runtime_port=9094,
                             node_config={"partition-id": 2, "num-partitions": 3})
    with caplog.at_level("WARNING"):
        plain = supernode_command(superlink="10.0.0.5:9093", root_certificates=None, runtime_port=9094, insecure=True)

    # Assert
    assert link[link.index("--ssl-certfile") + 1] == str(certs.server_cert.resolve())
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    assert node[node.index("--root-certificates") + 1] == str(certs.ca_cert.resolve())
    assert node[node.index("--node-config") + 1] == "partition-id=2 num-partitions=3"
    assert "--insecure" in plain and "TLS is OFF" in caplog.text


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda c: superlink_command(port=1, certificates=None), "certificates"),
        (lambda c: superlink_command(port=1, certificates=c, insecure=True, node_auth=True), "node_auth"),
        (lambda c: supernode_command(superlink="h:1", root_certificates=None, runtime_port=2), "root_certificates"),
        (lambda c: supernode_command(superlink="h:1", root_certificates=c.ca_cert, runtime_port=2, insecure=True),
         "root_certificates"),
        (lambda c: format_node_config({"data-root": "/a b"}), "node_config"),
    ],
)
def test_commands_reject_invalid_settings(tmp_path: Path, build, match: str) -> None:  # noqa: ANN001
    certs = make_certificates(tmp_path, ["127.0.0.1"])
    with pytest.raises(ValueError, match=match):
        build(certs)


def test_connection_entry_is_what_flwr_reads(tmp_path: Path) -> None:
    # Prepare
    ca = tmp_path / "ca.crt"
    ca.write_text("x")

    # Execute
    path = write_connection(tmp_path / "home", "fedfish", "10.0.0.5:9093", root_certificates=ca)
    config = tomllib.loads(path.read_text())

    # Assert
    assert path == tmp_path / "home" / "config.toml"
    assert config == {
        "superlink": {
            "default": "fedfish",
            "fedfish": {"address": "10.0.0.5:9093", "root-certificates": str(ca.resolve())},
        }
    }


def test_stop_ends_the_process_and_what_it_started_in_other_sessions(tmp_path: Path) -> None:
    # Prepare: like the SuperLink's SuperExec, the grandchild runs in a session of its own.
    process = ManagedProcess.start(["bash", "-c", "setsid sleep 300 & sleep 300"], tmp_path / "p.log")
    wait_until(lambda: len(descendants(process.pid)) == 2, 10, "the children to start")
    children = descendants(process.pid)

    # Execute
    process.stop(grace=5)

    # Assert
    assert not process.running()
    assert not any(_alive(pid) for pid in children)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
