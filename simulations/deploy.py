"""Start and stop a Flower deployment (SuperLink, SuperNodes) as OS processes.

The commands are the ones docs/deploy.md gives for separate machines; this module
builds them with the right flags, writes the ``flwr`` CLI connection entry, and runs
the processes so that a script or test can start a whole federation on one machine
and always stop it again:

    certs = make_certificates(tmp / "certs", ["127.0.0.1"])
    write_connection(tmp / "flwr-home", "fedfish", f"127.0.0.1:{port}", root_certificates=certs.ca_cert)
    link = ManagedProcess.start(superlink_command(port=port, certificates=certs), tmp / "superlink.log", cwd=tmp)
    ...
    link.stop()

TLS is the default everywhere; ``insecure=True`` turns it off and logs a warning.
Stopping a process also stops everything it started (Flower's SuperExec,
``flwr-serverapp``/``flwr-clientapp``), found through ``/proc`` (Linux only).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from simulations.certs import ServerCertificates

logger = logging.getLogger(__name__)

CONNECTION_FILE = "config.toml"  # $FLWR_HOME/config.toml (flwr.cli.constant.FLOWER_CONFIG_FILE)
_INSECURE_WARNING = "TLS is OFF (%s): traffic, including model updates, is unencrypted. Use only on a trusted network."


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def superlink_command(
    *,
    port: int,
    certificates: ServerCertificates | None = None,
    host: str = "127.0.0.1",
    insecure: bool = False,
    node_auth: bool = False,
) -> list[str]:
    """``flower-superlink`` with TLS (or ``--insecure``) and the app's installed dependencies.

    Parameters
    ----------
    port : int
        The one port of the SuperLink's HTTP APIs (Fleet for SuperNodes, Control for
        ``flwr``, Runtime for its own ServerApp).
    certificates : ServerCertificates | None (default: None)
        From :func:`simulations.certs.make_certificates`; required unless ``insecure``.
    host : str (default: "127.0.0.1")
        Address to listen on; ``0.0.0.0`` to accept SuperNodes from other machines.
    insecure : bool (default: False)
        No TLS. Logs a warning; refused together with ``node_auth``.
    node_auth : bool (default: False)
        Accept only SuperNodes registered with ``flwr supernode register``.

    Returns
    -------
    list[str]
        The command line.
    """
    command = [_tool("flower-superlink"), "--host", host, "--port", str(port)]
    # The venv already holds torch & co.; `uv sync` per run would download them again.
    command.append("--disable-runtime-dependency-installation")
    if insecure:
        if node_auth:
            raise ValueError("node_auth: SuperNode authentication needs TLS; drop insecure=True")
        logger.warning(_INSECURE_WARNING, "SuperLink --insecure")
        return [*command, "--insecure"]
    if certificates is None:
        raise ValueError("certificates: required unless insecure=True")
    command += [
        "--ssl-ca-certfile", str(Path(certificates.ca_cert).resolve()),
        "--ssl-certfile", str(Path(certificates.server_cert).resolve()),
        "--ssl-keyfile", str(Path(certificates.server_key).resolve()),
    ]
    if node_auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(
    *,
    superlink: str,
    runtime_port: int,
    root_certificates: str | Path | None = None,
    node_config: Mapping[str, int | float | str] | None = None,
    auth_key: str | Path | None = None,
    insecure: bool = False,
    max_retries: int | None = None,
) -> list[str]:
    """``flower-supernode`` connecting to ``superlink`` over TLS (or ``--insecure``).

    Parameters
    ----------
    superlink : str
        ``host:port`` of the SuperLink.
    runtime_port : int
        Local port of the SuperNode's Runtime API (its ClientApps connect to it on
        127.0.0.1); distinct per SuperNode on one machine.
    root_certificates : str | Path | None (default: None)
        The CA certificate that signed the SuperLink's certificate; required unless
        ``insecure``.
    node_config : Mapping[str, int | float | str] | None (default: None)
        ``--node-config``, e.g. ``{"partition-id": 0, "num-partitions": 3}``.
    auth_key : str | Path | None (default: None)
        Private key (OpenSSH, from :func:`simulations.certs.make_supernode_key`) for
        SuperNode authentication.
    insecure : bool (default: False)
        No TLS. Logs a warning.
    max_retries : int | None (default: None)
        Give up after this many failed connection attempts (None: retry forever).

    Returns
    -------
    list[str]
        The command line.
    """
    command = [_tool("flower-supernode"), "--superlink", superlink, "--port", str(runtime_port)]
    if insecure:
        if root_certificates is not None:
            raise ValueError("root_certificates: must be None with insecure=True")
        logger.warning(_INSECURE_WARNING, "SuperNode --insecure")
        command.append("--insecure")
    elif root_certificates is None:
        raise ValueError("root_certificates: required unless insecure=True")
    else:
        command += ["--root-certificates", str(Path(root_certificates).resolve())]
    if node_config:
        command += ["--node-config", format_node_config(node_config)]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(Path(auth_key).resolve())]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return command


def format_node_config(node_config: Mapping[str, int | float | str]) -> str:
    """``{"partition-id": 0, "data-root": "/d"}`` -> ``'partition-id=0 data-root="/d"'``."""
    items = []
    for key, value in node_config.items():
        if isinstance(value, str):
            if '"' in value or " " in value:
                raise ValueError(f"node_config: {key}={value!r} may not contain spaces or quotes")
            value = f'"{value}"'
        items.append(f"{key}={value}")
    return " ".join(items)


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
    default: bool = True,
) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection ``name``.

    The file is what ``flwr run . <name>`` reads (flwr 1.41: ``[superlink.<name>]``
    with ``address``, ``root-certificates`` as an absolute path, ``insecure``).
    An existing file is replaced.

    Returns
    -------
    Path
        The file written.
    """
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"name: letters, digits, '-' and '_' only, got {name!r}")
    lines = ["[superlink]"]
    if default:
        lines.append(f'default = "{name}"')
    lines += ["", f"[superlink.{name}]", f'address = "{address}"']
    if insecure:
        if root_certificates is not None:
            raise ValueError("root_certificates: must be None with insecure=True")
        logger.warning(_INSECURE_WARNING, f"flwr connection {name!r}")
        lines.append("insecure = true")
    elif root_certificates is None:
        raise ValueError("root_certificates: required unless insecure=True")
    else:
        lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
    path = Path(flwr_home) / CONNECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for_tls(host: str, port: int, ca_cert: str | Path, timeout: float) -> None:
    """Block until a TLS handshake with ``host:port`` verifies against ``ca_cert``.

    Raises
    ------
    TimeoutError
        No verified handshake within ``timeout`` seconds.
    """
    context = ssl.create_default_context(cafile=str(ca_cert))
    last: Exception | None = None

    def handshake() -> bool:
        nonlocal last
        try:
            with socket.create_connection((host, port), timeout=2.0) as raw:
                with context.wrap_socket(raw, server_hostname=host):
                    return True
        except OSError as err:  # ssl.SSLError is an OSError
            last = err
            return False

    wait_until(handshake, timeout, f"TLS handshake with {host}:{port} (last error: {{}})", lambda: last)


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    detail: Callable[[], object] = lambda: "",
    interval: float = 0.3,
) -> None:
    """Poll ``condition`` every ``interval`` s until true; TimeoutError after ``timeout`` s.

    ``what`` describes the wait; a ``{}`` in it is filled with ``detail()`` on timeout.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for " + what.format(detail()))
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """A process started in its own session, with its output in a log file.

    Attributes
    ----------
    popen : subprocess.Popen
        The process.
    log_path : Path
        Where its stdout and stderr go.
    """

    popen: subprocess.Popen
    log_path: Path

    @classmethod
    def start(
        cls,
        command: list[str],
        log_path: str | Path,
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        """Start ``command``; ``env`` entries are added to this process's environment.

        The venv's ``bin`` goes first on ``PATH``: the SuperLink and SuperNodes start
        ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name.
        """
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ) | dict(env or {})
        full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=cwd, env=full_env, start_new_session=True,
            )
        return cls(popen, log_path)

    @property
    def pid(self) -> int:
        """Process id (also its process group and session id)."""
        return self.popen.pid

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything it has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM it, its process group and every process it started; SIGKILL what is
        left after ``grace`` seconds. Safe to call more than once."""
        victims = {self.pid, *descendants(self.pid)}
        _signal_all(self.pid, victims, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # Children that a dying parent starts late are caught on the next pass.
            victims |= {d for v in list(victims) for d in descendants(v)}
            if self.popen.poll() is not None and not any(_alive(v) for v in victims - {self.pid}):
                return
            time.sleep(0.2)
        _signal_all(self.pid, victims, signal.SIGKILL)
        self.popen.wait(timeout=5)


def descendants(pid: int) -> set[int]:
    """Process ids of all living descendants of ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent id; the command name (field 2) may contain spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped


def _signal_all(group: int, pids: set[int], sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _tool(name: str) -> str:
    # The console script next to this interpreter: the venv's, whatever PATH says.
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name
