"""The pair's own CA and both hosts' keys (`remusdb keys init`): what the link's TLS trusts.

A CA per protected pair, not a public one: a certificate is only good for this VM's two hosts.
Keys are EC P-256, written 0600; the CA's key stays with the operator (copy `ca.crt` and a
host's `.crt`/`.key` to that host only).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from remusdb.checkpoint.link import HOSTS, key_files
from remusdb.errors import RemusError
from remusdb.ops.api import TOKEN_NAME, write_token

VALID_DAYS = 3650


def _name(vm: str, cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"remusdb {vm}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init(directory: Path, vm: str, force: bool = False) -> list[Path]:
    """A new CA, a certificate for each host and the API's token in `directory`; refuses to
    overwrite keys (the running peer would no longer be trusted) unless `force`. Keys made
    before the API get its token alone."""
    directory = Path(directory)
    existing = [p for p in directory.glob("*") if p.suffix in (".crt", ".key", ".token")] \
        if directory.exists() else []
    if existing and not force and not (directory / TOKEN_NAME).exists():
        # keys from before the REST API: add its token alone, the pair keeps its keys
        return [write_token(directory / TOKEN_NAME)]
    if existing and not force:
        raise RemusError(f"keys already exist in {directory} ({existing[0].name}, ...): "
                         "use --force to replace them (both hosts need the new ones)")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(vm, f"remusdb {vm} CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    written = []
    ca_path = key_files(directory, HOSTS[0])[0]
    _write(ca_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / "ca.key", _pem_key(ca_key), 0o600)
    written += [ca_path, directory / "ca.key"]
    for host in HOSTS:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(vm, host)).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                      x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        _, crt_path, key_path = key_files(directory, host)
        _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(key_path, _pem_key(key), 0o600)
        written += [crt_path, key_path]
    # The REST API's token (ops/api.py): acting requests to either host are signed with it.
    written.append(write_token(directory / TOKEN_NAME))
    return written
