"""The COLO secondary's side of the checkpoint protocol, spoken by the primary daemon.

QEMU (the COLO primary) migrates into a unix socket this endpoint listens on. After the initial
precopy stream it runs one transaction per checkpoint interval; the VM stays paused from
VMSTATE_SEND until we send VMSTATE_LOADED, so `ack()` is sent as soon as the epoch is in memory
and everything else happens after the VM has resumed.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from remusdb.checkpoint.stream.format import Colo
from remusdb.checkpoint.stream.pages import PageSet
from remusdb.checkpoint.stream.parse import (
    InitialState,
    RamParser,
    read_initial,
    read_live_state,
    read_message,
)
from remusdb.checkpoint.stream.reader import Reader
from remusdb.checkpoint.stream.write import message
from remusdb.errors import RemusError
from remusdb.hypervisor.monitor import Monitor


def start_migration(mon: Monitor, path: Path, interval_ms: int, timeout: float
                    ) -> socket.socket:
    """QEMU's COLO migration to a unix socket we listen on: its stream, once connected."""
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    mon.set_migration_capabilities(x_colo=True)
    mon.execute("migrate-set-parameters", **{"x-checkpoint-delay": interval_ms})
    mon.migrate(f"unix:{path}")
    srv.settimeout(30)
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        raise RemusError("QEMU did not connect its COLO migration") from None
    finally:
        srv.close()
    conn.settimeout(timeout)
    return conn


@dataclass
class Checkpoint:
    """One epoch as QEMU sent it: the dirty pages and the full device state."""

    seq: int
    pages: PageSet
    devices: bytes
    paused_at: float  # our CHECKPOINT_REPLY left: QEMU stops the VM on it
    stopped_at: float  # VMSTATE_SEND arrived: the VM is stopped, its disk drained and flushed
    received_at: float  # device blob complete
    stream_bytes: int


class ColoEndpoint:
    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.r = Reader(conn, chunk=4 << 20)
        self.initial: InitialState | None = None
        self.ram: RamParser | None = None
        self.seq = 0
        self.paused_since: float | None = None  # the VM is paused waiting for us since then

    def read_initial(self) -> InitialState:
        self.ram = RamParser()
        self.initial = read_initial(self.r, self.ram)
        self.initial.pages.own(self.r.pool, self.r.detach())
        return self.initial

    def ready(self) -> None:
        """Tell QEMU the initial state is in: it starts its checkpoint timer."""
        self.conn.sendall(message(Colo.CHECKPOINT_READY))

    def next_checkpoint(self, pages: PageSet | None = None) -> Checkpoint:
        read_message(self.r, Colo.CHECKPOINT_REQUEST)
        self.conn.sendall(message(Colo.CHECKPOINT_REPLY))
        # From here the VM is stopping (vm_stop: vCPUs out, disk requests drained and
        # flushed): the guest's pause counts from the reply, not from VMSTATE_SEND.
        paused = self.paused_since = time.monotonic()
        read_message(self.r, Colo.VMSTATE_SEND)
        stopped = time.monotonic()
        start = self.r.offset
        pages = pages if pages is not None else PageSet()
        ram, initial = self.ram, self.initial
        assert ram is not None and initial is not None  # read_initial() comes first
        read_live_state(self.r, ram, initial.ram_section.section_id, pages)
        read_message(self.r, Colo.VMSTATE_SIZE)
        size = self.r.u64()
        devices = self.r.bytes(size)
        pages.own(self.r.pool, self.r.detach())
        self.seq += 1
        return Checkpoint(self.seq, pages, devices, paused, stopped,
                          time.monotonic(), self.r.offset - start)

    def ack(self) -> float:
        """Let the VM run again; returns when the acknowledgement left."""
        self.conn.sendall(message(Colo.VMSTATE_RECEIVED) + message(Colo.VMSTATE_LOADED))
        self.paused_since = None
        return time.monotonic()
