"""The epoch write log: every write the disk server applied, in order, until the next cut.

At a checkpoint QEMU stops the VM and drains its I/O before it sends VMSTATE_SEND, so the log
cut while the VM is paused holds exactly the closing epoch's writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

DATA, ZERO = 0, 1


@dataclass
class DiskWrite:
    """One write of an epoch, in the order the server applied it."""

    kind: int  # DATA or ZERO
    offset: int
    length: int
    data: bytes | bytearray = b""  # a large write is received into its own bytearray



class WriteLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._writes: list[DiskWrite] = []
        self.logging = False  # until a protection session starts()
        self.touched: set[int] = set()  # 1 MiB chunks written since start (the disk check)

    def cut(self) -> list[DiskWrite]:
        """The writes applied since the last cut, oldest first."""
        with self._lock:
            writes, self._writes = self._writes, []
        return writes

    def start(self) -> None:
        """A protection session begins: keep every write from now on, until stop()."""
        with self._lock:
            self.logging = True
            self._writes = []

    def stop(self) -> None:
        """Protection ended: nobody cuts the log any more, so stop keeping writes."""
        with self._lock:
            self.logging = False
            self._writes = []

    def record(self, w: DiskWrite) -> None:
        with self._lock:
            if not self.logging:
                return
            self._writes.append(w)
            self.touched.update(range(w.offset >> 20, ((w.offset + w.length - 1) >> 20) + 1))
