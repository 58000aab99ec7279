"""The checkpoint link's security: mutual TLS 1.3, each host proving itself with a certificate
of the pair's own CA (`remusdb keys init`), before any frame is read.

The link carries the VM's whole memory and disk, and whoever feeds a standby decides what it
boots at a failover: a peer without a certificate of this pair is refused in the handshake.
The certificate's common name is the host's name in the config ("primary" or "standby"), and
each host accepts only the other one.

OpenSSL's SSL object must never be used by two threads at once, but a session reads ACKs in one
thread while another sends epochs: `TlsSocket` only encrypts and decrypts under a lock, through
memory BIOs, and does the socket I/O outside it, so both directions run at once.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from remusdb.config import Config
from remusdb.errors import PeerError, RemusError

log = logging.getLogger(__name__)
AUTH_TIMEOUT = 3.0  # a peer that has not authenticated by then is dropped
HOSTS = ("primary", "standby")
_CHUNK = 1 << 20  # plaintext per encryption step: bounds the ciphertext held in memory
_RECV = 256 << 10


class AuthError(PeerError):
    """The peer did not prove it is the other host of this pair."""


def key_dir(cfg: Config) -> Path:
    return Path(cfg.link.keys or f"/etc/remusdb/{cfg.vm.name}")


def key_files(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """(CA certificate, host certificate, host key) in a key directory."""
    return directory / "ca.crt", directory / f"{host}.crt", directory / f"{host}.key"


@dataclass
class Link:
    """How this host's end of the link is secured: `tls` None is the explicit insecure mode."""

    host: str
    tls: ssl.SSLContext | None
    server: ssl.SSLContext | None

    @property
    def peer(self) -> str:
        return HOSTS[1] if self.host == HOSTS[0] else HOSTS[0]

    @property
    def mode(self) -> str:
        return "tls1.3" if self.tls else "insecure"

    @classmethod
    def for_host(cls, cfg: Config, host: str) -> Link:
        if cfg.link.insecure:
            log.warning("LINK INSECURE (link.insecure = true): the checkpoint link is plain TCP; "
                        "anyone who reaches %s's port can read the VM's memory and feed it a VM",
                        host)
            return cls(host, None, None)
        ca, cert, key = key_files(key_dir(cfg), host)
        return cls(host, _context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key),
                   _context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key))

    def client(self, sock: socket.socket) -> socket.socket | TlsSocket:
        """Our side of a connection we opened to the peer, authenticated."""
        if self.tls is None:
            return sock
        return _handshake(self.tls, False, sock, self.peer)

    def accept(self, sock: socket.socket) -> socket.socket | TlsSocket:
        """A connection someone opened to us, once it proved it is the peer."""
        if self.server is None:
            return sock
        return _handshake(self.server, True, sock, self.peer)


def _context(protocol: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    for p in (ca, cert, key):
        if not p.is_file():
            raise RemusError(f"link: {p} not found: run 'remusdb keys init' (or set "
                             "link.insecure = true, not for production)")
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # hosts are named by the certificate's CN, not by address
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise RemusError(f"link: cannot load the keys in {ca.parent}: {e}") from None
    if protocol == ssl.PROTOCOL_TLS_SERVER:
        ctx.num_tickets = 0  # no session tickets: nothing arrives after the handshake
    return ctx


def _common_name(cert: dict) -> str:
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return ""


def _handshake(ctx: ssl.SSLContext, server_side: bool, raw: socket.socket, peer: str
               ) -> TlsSocket:
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(bio_in, bio_out, server_side=server_side)
    tls = TlsSocket(raw, obj, bio_in, bio_out)
    timeout = raw.gettimeout()
    raw.settimeout(AUTH_TIMEOUT if timeout is None else min(timeout, AUTH_TIMEOUT))
    try:
        tls.handshake()
    except (ssl.SSLError, OSError, ConnectionError) as e:
        tls.refuse()
        raise AuthError(f"TLS handshake failed: {e}") from None
    finally:
        raw.settimeout(timeout)
    cert = obj.getpeercert()
    name = _common_name(cert) if cert else ""
    if name != peer:
        tls.refuse()
        raise AuthError(f"the peer's certificate names {name!r}, not the {peer}")
    return tls


class TlsSocket:
    """A TLS connection over a blocking socket, safe for one reader and one writer thread."""

    def __init__(self, raw: socket.socket, obj: ssl.SSLObject, bio_in: ssl.MemoryBIO,
                 bio_out: ssl.MemoryBIO):
        self.raw, self._obj = raw, obj
        self._bio_in, self._bio_out = bio_in, bio_out
        self._lock = threading.Lock()  # the SSL object
        self._send = threading.Lock()  # the order of records on the socket
        self._buf = bytearray(_RECV)

    # What wire.Connection and the daemons use of a socket
    @property
    def family(self) -> int:
        return self.raw.family

    def settimeout(self, t: float | None) -> None:
        self.raw.settimeout(t)

    def gettimeout(self) -> float | None:
        return self.raw.gettimeout()

    def setsockopt(self, *a) -> None:
        self.raw.setsockopt(*a)

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()

    def getpeername(self):
        return self.raw.getpeername()

    def __enter__(self) -> TlsSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # TLS
    def handshake(self) -> None:
        while True:
            try:
                with self._lock:
                    self._obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def refuse(self) -> None:
        """Send OpenSSL's alert, if it wrote one, and hang up: a refused peer learns at once."""
        try:
            self._flush()
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _flush(self) -> None:
        with self._lock:
            data = self._bio_out.read()
        if data:
            with self._send:
                self.raw.sendall(data)

    def _fill(self) -> None:
        k = self.raw.recv_into(self._buf)
        if k == 0:
            raise ConnectionError("peer closed the connection")
        with self._lock:
            self._bio_in.write(memoryview(self._buf)[:k])

    def sendmsg(self, parts) -> int:
        total = 0
        with self._send:
            for p in parts:
                mv = memoryview(p).cast("B")
                for i in range(0, len(mv), _CHUNK):
                    with self._lock:
                        self._obj.write(mv[i:i + _CHUNK])
                        data = self._bio_out.read()
                    self.raw.sendall(data)
                total += len(mv)
        return total

    def sendall(self, data) -> None:
        self.sendmsg([data])

    def recv_into(self, view) -> int:
        """Up to len(view) bytes; 0 at the end of the connection."""
        while True:
            n = 0
            with self._lock:  # every record already here, not one (16 KiB) per call
                try:
                    while n < len(view):
                        n += self._obj.read(len(view) - n, view[n:])  # type: ignore[operator]
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    return n
                except ssl.SSLError as e:
                    raise AuthError(f"TLS record refused: {e}") from None
            if n:
                return n
            try:
                self._fill()
            except ConnectionError:
                return 0
