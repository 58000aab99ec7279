"""The standby's control socket: `remusdb failover` and `remusdb release` ask, the daemon decides.

Messages are small typed documents, one JSON line each way. The server outlives any request
(a handler's error becomes the reply), serves each client in its own thread with a deadline
(an idle client holds nobody up), and the socket is its owner's only (0600); the decision
itself is the daemon's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from remusdb.errors import RemusError

log = logging.getLogger(__name__)
SOCKET_NAME = "standby.sock"
R = TypeVar("R")
CLIENT_TIMEOUT = 5.0  # to send a request line
MAX_REQUEST = 4096
MAX_CLIENTS = 16


@dataclass
class FailoverRequest:
    """`failover`: run the VM here now; `release`: the committed checkpoint may be replaced
    by any new session (the operator says the primary's VM is the one that counts)."""

    force: bool = False
    cmd: str = "failover"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: object) -> FailoverRequest:
        cmd = d.get("cmd") if isinstance(d, dict) else None
        if not isinstance(d, dict) or cmd not in ("failover", "release"):
            raise ValueError(f"unknown command {cmd!r}")
        return cls(force=d.get("force") is True, cmd=cmd)


@dataclass
class ControlReply:
    ok: bool
    error: str = ""
    already: bool = False  # the VM already ran here
    failover: dict = field(default_factory=dict)  # epoch, timings

    def to_json(self) -> dict:
        return {"ok": self.ok, "error": self.error, "already": self.already, **self.failover}

    @classmethod
    def from_json(cls, d: object) -> ControlReply:
        if not isinstance(d, dict):
            return cls(False, "no reply from the daemon")
        rest = {k: v for k, v in d.items() if k not in ("ok", "error", "already")}
        return cls(bool(d.get("ok")), str(d.get("error", "")), bool(d.get("already")), rest)


class ControlServer(threading.Thread, Generic[R]):
    """One JSON line in (`parse` makes it a request or raises ValueError), one reply out."""

    def __init__(self, path: Path, parse: Callable[[object], R],
                 handle: Callable[[R], ControlReply], stopped: threading.Event):
        super().__init__(name="control", daemon=True)
        self.path, self.parse, self.handle, self.stopped = Path(path), parse, handle, stopped

    def run(self) -> None:
        self.path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # bound 0600: only the owner (root) may ask for a failover
        try:
            srv.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        srv.listen(MAX_CLIENTS)
        slots = threading.BoundedSemaphore(MAX_CLIENTS)
        while not self.stopped.is_set():
            conn, _ = srv.accept()
            if not slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._client, args=(conn, slots), name="control-client",
                             daemon=True).start()

    def _client(self, conn: socket.socket, slots: threading.BoundedSemaphore) -> None:
        try:
            with conn:
                self._serve(conn)
        finally:
            slots.release()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(CLIENT_TIMEOUT)
            line = conn.makefile("rb").readline(MAX_REQUEST)
            conn.settimeout(None)  # the decision (a failover) may take its time
            req = self.parse(json.loads(line or b"{}"))
            reply = self.handle(req)
        except OSError:
            return  # the client went away or said nothing in time
        except Exception as e:  # the control socket must outlive any one request
            reply = ControlReply(False, str(e))
        try:
            conn.sendall(json.dumps(reply.to_json()).encode() + b"\n")
        except OSError:
            pass


def call(path: Path, request: dict, timeout: float = 120.0) -> ControlReply:
    """One request to a daemon's control socket; a clear error if nobody answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        raise RemusError(f"no remusdb daemon answers at {path}") from None
    with s:
        s.sendall(json.dumps(request).encode() + b"\n")
        line = s.makefile().readline()
    try:
        return ControlReply.from_json(json.loads(line or "null"))
    except ValueError:
        return ControlReply(False, "garbled reply from the daemon")


def request_failover(run_dir: Path, force: bool = False, timeout: float = 120.0,
                     cmd: str = "failover") -> ControlReply:
    reply = call(Path(run_dir) / SOCKET_NAME, FailoverRequest(force, cmd).to_json(), timeout)
    if not reply.ok:
        raise RemusError(f"{cmd} {reply.error or 'failed'}")
    return reply
