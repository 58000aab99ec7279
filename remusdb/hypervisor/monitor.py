"""A small typed API over QMP; the protocol itself is qemu.qmp's."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from remusdb.errors import RemusError


class MonitorError(RemusError):
    pass


class Monitor:
    """One QMP connection to one QEMU process."""

    def __init__(self, socket_path: Path, timeout: float = 30.0):
        self.path = Path(socket_path)
        self._qmp = QEMUMonitorProtocol(str(self.path))
        self._qmp.settimeout(timeout)
        # The daemon's threads and the witness's fence share it; qemu.qmp's sync client
        # serves one command at a time.
        self._lock = threading.Lock()

    def connect(self, deadline: float) -> None:
        """Connect once QEMU has created its socket; QEMU needs a moment after exec."""
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.path.exists():
                try:
                    self._qmp.connect(negotiate=True)
                    return
                except Exception as e:  # qemu.qmp raises ConnectError and OSError subclasses
                    last = e
            time.sleep(0.05)
        raise MonitorError(f"QMP socket {self.path} did not answer: {last or 'not created'}")

    def close(self) -> None:
        try:
            self._qmp.close()
        except Exception:
            pass

    def execute(self, name: str, **args) -> Any:
        """QMP's `return` member: a JSON value whose shape depends on the command."""
        try:
            with self._lock:
                return self._qmp.cmd(name, **args)
        except ExecuteError as e:  # QEMU's text is the ErrorResponse's error.desc
            raise MonitorError(f"QMP {name} failed: {e.error.error.desc}") from None

    # Typed commands used by the drivers.
    def status(self) -> str:
        return self.execute("query-status")["status"]

    def stop(self) -> None:
        self.execute("stop")

    def cont(self) -> None:
        self.execute("cont")

    def quit(self) -> None:
        self.execute("quit")

    def set_migration_capabilities(self, **caps: bool) -> None:
        self.execute("migrate-set-capabilities", capabilities=[
            {"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()
        ])

    def migrate(self, uri: str) -> None:
        self.execute("migrate", uri=uri)

    def migrate_incoming(self, uri: str) -> None:
        self.execute("migrate-incoming", uri=uri)

    def query_migrate(self) -> dict:
        return self.execute("query-migrate")

    def wait_migration(self, timeout: float, poll: float = 0.05) -> dict:
        """Poll until the migration completes; fail with QEMU's own reason otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.query_migrate()
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                why = info.get("error-desc", status)
                raise MonitorError(f"migration {status}: {why}")
            if time.monotonic() > deadline:
                raise MonitorError(f"migration still '{status}' after {timeout:.0f} s")
            time.sleep(poll)

    def wait_status(self, wanted: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st in wanted:
                return st
            if time.monotonic() > deadline:
                raise MonitorError(f"VM status '{st}', expected one of {sorted(wanted)}")
            time.sleep(0.05)
