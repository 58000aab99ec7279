"""Client for the QEMU guest agent (qemu-ga) over its virtio-serial channel.

QGA is not QMP: no greeting, and a reconnecting client may read a previous client's leftovers,
so every session starts with guest-sync-delimited (the 0xFF marker resynchronizes the stream).
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remusdb.errors import RemusError


class AgentError(RemusError):
    pass


@dataclass
class ExecResult:
    exitcode: int
    stdout: str
    stderr: str


class GuestAgent:
    def __init__(self, socket_path: Path):
        self.path = Path(socket_path)
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self, timeout: float) -> socket.socket:
        self.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(self.path))
        self._sock = s
        return s

    def _connected(self) -> socket.socket:
        sock = self._sock
        assert sock is not None  # opened by sync() before any read or call; close() clears it
        return sock

    def _read_json(self, deadline: float) -> dict:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                line = line.lstrip(b"\xff").strip()
                if line:
                    return json.loads(line)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("guest agent did not answer")
            sock = self._connected()
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("guest agent channel closed")
            self._buf += chunk

    def _call(self, name: str, args: dict | None, timeout: float) -> Any:
        msg: dict[str, object] = {"execute": name}
        if args:
            msg["arguments"] = args
        self._connected().sendall(json.dumps(msg).encode() + b"\n")
        reply = self._read_json(time.monotonic() + timeout)
        if "error" in reply:
            raise AgentError(f"guest agent {name} failed: {reply['error'].get('desc')}")
        return reply.get("return")

    def sync(self, timeout: float = 5.0) -> None:
        token = random.randint(1, 2**31 - 1)
        sock = self._connect(timeout)
        sock.sendall(b"\xff")
        sock.sendall(json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_json(deadline)
            if reply.get("return") == token:
                return

    def wait_ready(self, timeout: float) -> None:
        """Ping until the agent answers (also stops qemu-ga's busy loop before a first client)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self.sync(timeout=min(3.0, max(0.1, deadline - time.monotonic())))
                self._call("guest-ping", None, 3.0)
                return
            except (OSError, TimeoutError, ValueError) as e:
                last = e
                self.close()
                time.sleep(0.2)
        raise AgentError(f"guest agent at {self.path} did not answer in {timeout:.0f} s: {last}")

    def call(self, name: str, args: dict | None = None, timeout: float = 10.0) -> Any:
        """The command's `return` member: a JSON value whose shape depends on the command."""
        if self._sock is None:
            self.sync()
        try:
            return self._call(name, args, timeout)
        except (OSError, TimeoutError, ValueError):
            self.close()
            raise

    def ping(self) -> None:
        self.call("guest-ping")

    def exec(self, argv: list[str], timeout: float = 60.0, input: bytes | None = None
             ) -> ExecResult:
        """Run a command in the guest and collect its exit code and output."""
        args: dict = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        pid = self.call("guest-exec", args)["pid"]
        deadline = time.monotonic() + timeout
        while True:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                dec = lambda k: base64.b64decode(st.get(k, "")).decode(errors="replace")  # noqa
                return ExecResult(st.get("exitcode", -1), dec("out-data"), dec("err-data"))
            if time.monotonic() > deadline:
                raise AgentError(f"guest command {argv} still running after {timeout:.0f} s")
            time.sleep(0.1)
