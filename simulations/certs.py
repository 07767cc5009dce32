"""TLS certificates and SuperNode keys for a Flower deployment.

    python -m simulations.certs --out certs --host 10.0.0.5 --host superlink.example.org
    python -m simulations.certs --out certs --host 10.0.0.5 --supernode-key node-0 --supernode-key node-1

writes into ``--out``:

- ``ca.crt``, ``ca.key``: a self-signed root CA. ``ca.crt`` goes to every SuperNode
  (``--root-certificates``) and to the ``flwr`` CLI connection (``root-certificates``);
  ``ca.key`` stays with whoever signs certificates and is never deployed;
- ``server.crt``, ``server.key``: the SuperLink's certificate, signed by the CA, with one
  subject alternative name per ``--host`` (IP addresses as IP SANs, names as DNS SANs)
  plus ``127.0.0.1`` and ``localhost``, because the SuperLink launches its ServerApp
  through a SuperExec that connects back to it over loopback;
- ``<name>`` and ``<name>.pub`` per ``--supernode-key``: an ECDSA P-384 key pair in
  OpenSSH format for SuperNode authentication (``flower-supernode
  --auth-supernode-private-key <name>``, ``flwr supernode register <name>.pub``).

Private keys are written with mode 0600. Existing files are overwritten.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCertificates:
    """Paths of the files :func:`make_certificates` wrote.

    Attributes
    ----------
    ca_cert : Path
        Root CA certificate (PEM): ``--ssl-ca-certfile`` of the SuperLink,
        ``--root-certificates`` of SuperNodes and of the ``flwr`` connection.
    ca_key : Path
        Root CA private key (PEM); keep it off the deployed machines.
    server_cert : Path
        SuperLink certificate (PEM): ``--ssl-certfile``.
    server_key : Path
        SuperLink private key (PEM): ``--ssl-keyfile``.
    hosts : tuple[str, ...]
        The subject alternative names of ``server_cert``, in order.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    hosts: tuple[str, ...]


def make_certificates(out: str | Path, hosts: list[str] | tuple[str, ...], *, days: int = 365) -> ServerCertificates:
    """Create a root CA and a SuperLink certificate signed by it.

    Parameters
    ----------
    out : str | Path
        Directory for the files (created if missing).
    hosts : list[str] | tuple[str, ...]
        Host names and IP addresses the SuperLink is reached at; each becomes a
        subject alternative name. Loopback (``127.0.0.1``, ``localhost``) is always added.
    days : int (default: 365)
        Validity of both certificates, in days from now.

    Returns
    -------
    ServerCertificates
        The paths written and the SANs of the server certificate.

    Raises
    ------
    ValueError
        ``days`` < 1, or a host that is empty or contains whitespace or ``/``.
    """
    if days < 1:
        raise ValueError(f"days: must be >= 1, got {days}")
    for host in hosts:
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise ValueError(f"hosts: {host!r} is not a host name or IP address")
    all_hosts = tuple(dict.fromkeys([*hosts, *LOOPBACK_HOSTS]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    # Back-date by a minute: a peer whose clock runs slightly behind still accepts it.
    not_before, not_after = now - datetime.timedelta(minutes=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FedFish deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, all_hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in all_hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = ServerCertificates(
        ca_cert=out / "ca.crt", ca_key=out / "ca.key",
        server_cert=out / "server.crt", server_key=out / "server.key", hosts=all_hosts,
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.ca_key, _pem_private(ca_key))
    _write_private(paths.server_key, _pem_private(server_key))
    return paths


def make_supernode_key(out: str | Path, name: str) -> tuple[Path, Path]:
    """Create an ECDSA P-384 key pair for SuperNode authentication (OpenSSH format).

    Parameters
    ----------
    out : str | Path
        Directory for the files (created if missing).
    name : str
        File name of the private key; the public key is ``<name>.pub``.

    Returns
    -------
    tuple[Path, Path]
        ``(private_key, public_key)`` paths.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name: must be a plain file name, got {name!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / name, out / f"{name}.pub"
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    # Created with 0600 from the start: the key is never readable by others, not even briefly.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m simulations.certs --out DIR --host HOST [--host ...]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="directory for the files")
    parser.add_argument(
        "--host", action="append", default=[], required=True,
        help="host name or IP address of the SuperLink (repeat for several)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    parser.add_argument(
        "--supernode-key", action="append", default=[], metavar="NAME",
        help="also write a SuperNode authentication key pair NAME, NAME.pub (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        paths = make_certificates(args.out, args.host, days=args.days)
        keys = [make_supernode_key(args.out, name) for name in args.supernode_key]
    except ValueError as err:
        parser.error(str(err))
    print(f"CA certificate:     {paths.ca_cert}  (give to SuperNodes and the flwr CLI)")
    print(f"server certificate: {paths.server_cert}  (SANs: {', '.join(paths.hosts)})")
    print(f"server key:         {paths.server_key}")
    print(f"CA key:             {paths.ca_key}  (keep private; not needed at run time)")
    for private, public in keys:
        print(f"SuperNode key:      {private}  (register {public} with `flwr supernode register`)")


if __name__ == "__main__":
    main()
