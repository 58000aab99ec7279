"""The stage boundary of the epoch pipeline: raw pages in, encoded frames out.

Runs in the sender thread, after the VM has resumed: compression (ASC) and read tracking (RT)
cost the guest no pause time. RT first turns pages that equal unchanged disk blocks into
BLOCKREF records (the page cache still learns their content); the rest go out raw (PAGES) or,
with a compressor, as CPAGES batches XORed against the page cache. (RT's references are found
by its participant, `participants.ReadTracking`, just before.) The standby's counterparts:
`store.add_frame`, `StandbyStore.decode`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from remusdb.checkpoint import wire
from remusdb.checkpoint.stream.pages import PageSet
from remusdb.compression import codec
from remusdb.compression.compressor import Compressor
from remusdb.disk.image import data_extents
from remusdb.disk.writelog import DATA, DiskWrite


def _chunks(rows: np.ndarray, size: int) -> Iterator[slice | np.ndarray]:
    """Row selections of at most `size`: slices (views, no copy) when every row is kept."""
    whole = len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(rows) - 1)
    for k in range(0, len(rows), size):
        yield slice(k, min(k + size, len(rows))) if whole else rows[k : k + size]


def disk_frames(number: int, writes: Iterable[DiskWrite]) -> Iterator[list]:
    """DISK frames of an epoch's writes, in order, each within MAX_PAYLOAD."""
    part: list[DiskWrite] = []
    size = 4
    for w in writes:
        need = 13 + (w.length if w.kind == DATA else 0)
        if part and size + need > wire.MAX_PAYLOAD:
            yield _disk_frame(number, part)
            part, size = [], 4
        part.append(w)
        size += need
    if part:
        yield _disk_frame(number, part)


def _disk_frame(number: int, part: list[DiskWrite]) -> list:
    return wire.encode(wire.Kind.DISK, number, b"".join(wire.pack_disk(
        [w.kind for w in part], [w.offset for w in part], [w.length for w in part],
        [w.data for w in part if w.kind == DATA])))


def disk_copy(fd: int, size: int, chunk: int = 4 << 20) -> Iterator[DiskWrite]:
    """The whole disk as DATA records of at most `chunk` bytes (allocated extents only)."""
    for off, n in data_extents(fd, size, chunk):
        yield DiskWrite(DATA, off, n, os.pread(fd, n, off))


@dataclass
class EpochOut:
    """One captured epoch, as the capture thread hands it to the sender thread. Participants
    add their parts: disk writes while the VM is paused, read-tracking references before it
    is encoded, test-mode fingerprints."""

    number: int
    pages: PageSet
    devices: bytes
    digests: np.ndarray | None = None  # test mode: the primary's RAM fingerprint
    disk: list[DiskWrite] = field(default_factory=list)
    disk_sent: int = 0  # DISK records of this epoch already sent (epoch 0's full copy)
    disk_digests: tuple | None = None  # test mode: (chunks, xxh3) of the disk at this epoch
    disk_generation: int = 0  # the block index's write generation at the cut (RT)
    paused_at: float = 0.0  # monotonic: the VM stopped for this checkpoint
    stopped_at: float = 0.0  # monotonic: QEMU said it had stopped (VMSTATE_SEND)
    received_at: float = 0.0  # monotonic: the epoch was read whole (pages, device state)
    resumed_at: float = 0.0  # monotonic: the VM runs again
    stream_bytes: int = 0  # what QEMU sent for it
    rows: np.ndarray | None = None  # page rows sent as data (default: every page's last record)
    refs: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # rows sent as RT
    ref_blocks: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # their blocks
    _latest: tuple | None = field(default=None, repr=False)

    @property
    def pause_ms(self) -> float:
        return (self.resumed_at - self.paused_at) * 1000

    def latest(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Rows to send as data, and the zero pages (each page's last record); worked out once
        (read tracking and the encoder both ask)."""
        if self._latest is None:
            self._latest = self.pages.latest()
        rows, zeros = self._latest
        return (rows if self.rows is None else self.rows), zeros


def epoch_frames(e: EpochOut, compressor: Compressor | None = None) -> Iterator[list]:
    """Frames of one epoch: PAGES or CPAGES, ZEROS, DISK, BLOCKREF, DEVICES, [VERIFY,
    VERIFY_DISK], COMMIT."""
    number = e.number
    rows, (zb, zi, zf) = e.latest()
    block, index, data = e.pages.view()
    refs, ref_blocks = e.refs, e.ref_blocks
    if compressor is None:
        for r in _chunks(rows, wire.PAGES_PER_FRAME):
            yield wire.encode(wire.Kind.PAGES, number,
                              wire.pack_pages(block[r], index[r], data[r]))
    else:
        for r in _chunks(rows, codec.MAX_PAGES):
            yield wire.encode(wire.Kind.CPAGES, number, compressor.batch(
                block[r], index[r], data[r], cache=number > 0))
        compressor.forget(zb, zi)
        if len(refs):
            compressor.sent_otherwise(block[refs], index[refs], data[refs])
    step = wire.MAX_PAYLOAD // 16
    for k in range(0, len(zi), step):
        yield wire.encode(wire.Kind.ZEROS, number, wire.pack_zeros(
            zb[k : k + step], zi[k : k + step], zf[k : k + step]))
    yield from disk_frames(number, e.disk)
    ref_step = (wire.MAX_PAYLOAD - 4) // wire.REF_SIZE
    for k in range(0, len(refs), ref_step):
        r = refs[k : k + ref_step]
        yield wire.encode(wire.Kind.BLOCKREF, number, wire.pack_refs(
            block[r], index[r], ref_blocks[k : k + ref_step]))
    yield wire.encode(wire.Kind.DEVICES, number, e.devices)
    if e.digests is not None:
        yield wire.encode(wire.Kind.VERIFY, number, e.digests.astype(">u8").tobytes())
    if e.disk_digests is not None:
        chunks, sums = e.disk_digests
        yield wire.encode(wire.Kind.VERIFY_DISK, number, np.asarray(chunks, ">u8").tobytes()
                          + np.asarray(sums, ">u8").tobytes())
    yield wire.encode_json(wire.Kind.COMMIT, number, {
        "pages": int(len(rows)), "zeros": int(len(zi)), "devices": len(e.devices),
        "disk_writes": e.disk_sent + len(e.disk), "refs": int(len(refs))})
