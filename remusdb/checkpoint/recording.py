"""Recorded page streams: each epoch's page records as the sender saw them, for benchmarks.

Compression and read tracking are measured offline on streams recorded from the real guest, so
that every codec and cache size sees the same pages. Format, little-endian, one record per epoch:

    "RDBC" | epoch u64 | pages u32 | zeros u32 | block u16[pages] | index u64[pages]
    | data 4096 × pages | zero block u16[zeros] | zero index u64[zeros]
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from remusdb.checkpoint.encode import EpochOut
from remusdb.checkpoint.participant import Participant
from remusdb.errors import RemusError

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<4sQII")
PAGE_SIZE = 4096


@dataclass
class RecordedEpoch:
    number: int
    block: np.ndarray
    index: np.ndarray
    data: np.ndarray
    zero_block: np.ndarray
    zero_index: np.ndarray


def write_epoch(f, number: int, block, index, data, zero_block, zero_index) -> int:
    parts: list[bytes | np.ndarray] = [
        _HEAD.pack(b"RDBC", number, len(index), len(zero_index)),
        np.asarray(block, "<u2").tobytes(), np.asarray(index, "<u8").tobytes(),
        np.ascontiguousarray(data), np.asarray(zero_block, "<u2").tobytes(),
        np.asarray(zero_index, "<u8").tobytes()]
    size = 0
    for p in parts:
        f.write(p)
        # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
        size += len(memoryview(p).cast("B"))  # type: ignore[arg-type]
    return size


def read_epochs(path: Path) -> Iterator[RecordedEpoch]:
    with open(path, "rb") as f:
        while True:
            head = f.read(_HEAD.size)
            if not head:
                return
            if len(head) < _HEAD.size or head[:4] != b"RDBC":
                raise RemusError(f"{path}: not a remusdb page recording (or truncated)")
            _, number, n, z = _HEAD.unpack(head)
            body = f.read(n * (10 + PAGE_SIZE) + z * 10)
            if len(body) < n * (10 + PAGE_SIZE) + z * 10:
                return  # the recording was cut off mid-epoch: what came before is whole
            at = 0

            def take(dtype, count, _body=body):
                nonlocal at
                a = np.frombuffer(_body, dtype, count, at)
                at += a.nbytes
                return a
            yield RecordedEpoch(number, take("<u2", n), take("<u8", n),
                                take(np.uint8, n * PAGE_SIZE).reshape(n, PAGE_SIZE),
                                take("<u2", z), take("<u8", z))


class Recorder(Participant):
    """Benchmarks (`protect --record DIR`): on request, the next `epochs` epochs' pages as the
    sender sees them, to `DIR/recording-K.rdbc`."""

    status_key = "recordings_done"

    def __init__(self, directory: Path, epochs: int = 100):
        self.dir, self.epochs = Path(directory), epochs
        self.done = 0
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._left = 0
        self._request = threading.Event()

    def start(self) -> None:
        """Record the next epochs (signal-safe: the sender thread opens the file)."""
        self._request.set()

    def on_send(self, out: EpochOut) -> None:
        if out.number == 0 or (self._file is None and not self._request.is_set()):
            return
        if self._file is None:
            self._request.clear()
            self._path = self.dir / f"recording-{self.done + 1}.rdbc"
            self._file, self._left = open(self._path, "wb"), self.epochs
            log.info("recording %d epochs to %s", self.epochs, self._path)
        rows, (zb, zi, _) = out.pages.latest()
        block, index, data = out.pages.view()
        write_epoch(self._file, out.number, block[rows], index[rows], data[rows], zb, zi)
        self._left -= 1
        if self._left == 0:
            self._file.close()
            self._file = None
            self.done += 1
            log.info("recording complete: %s", self._path)

    def summary(self) -> int:
        return self.done
