"""Test mode (`protect --verify-every N`): the primary fingerprints its RAM and written disk
chunks while the VM is paused, the standby compares them with its committed copy.

Both sides of the RAM-equality and disk-equality checks live here, so the fingerprints agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xxhash

from remusdb.checkpoint.encode import EpochOut
from remusdb.checkpoint.participant import Participant
from remusdb.checkpoint.stream.format import PAGE_SIZE
from remusdb.checkpoint.wire import WireError
from remusdb.disk.writelog import WriteLog

VERIFY_GROUP = 16  # pages per digest: 64 KiB, so hashing 1 GiB keeps the pause near 0.1 s
DISK_CHUNK = 1 << 20  # the disk-equality check compares 1 MiB chunks


def page_digests(pages: np.ndarray, group: int = VERIFY_GROUP) -> np.ndarray:
    """xxh3-64 of every `group` consecutive pages of an (n, 4096) array: the RAM-equality
    check's fingerprint. A differing digest means 1 to `group` differing pages."""
    # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
    mv = memoryview(np.ascontiguousarray(pages)).cast("B")  # type: ignore[arg-type]
    size = pages.shape[1] * group
    count = -(-len(pages) // group)
    f = xxhash.xxh3_64_intdigest
    return np.fromiter((f(mv[i * size : (i + 1) * size]) for i in range(count)), np.uint64,
                       count)


def disk_digests(fd: int, chunks: np.ndarray, chunk: int = DISK_CHUNK) -> np.ndarray:
    """xxh3-64 of the given chunks of a disk image (the disk-equality check's fingerprint)."""
    f = xxhash.xxh3_64_intdigest
    return np.fromiter((f(os.pread(fd, chunk, int(c) * chunk)) for c in chunks), np.uint64,
                       len(chunks))


class Verifier(Participant):
    """The primary's side: at every Nth checkpoint, up to `count` times (0: no limit)."""

    def __init__(self, ram_file: Path, every: int, count: int = 0,
                 disk: tuple[int, WriteLog] | None = None):
        self.ram_file, self.every = ram_file, every
        self.left = count or -1
        self.disk = disk  # (image fd, write log): which chunks were written
        self.whole_disk = True  # the first check of a session covers every chunk (a resync)

    def on_pause(self, out: EpochOut) -> None:
        if out.number == 0 or out.number % self.every or not self.left:
            return
        self.left -= 1
        ram = np.memmap(self.ram_file, np.uint8, "r").reshape(-1, PAGE_SIZE)
        out.digests = page_digests(ram)
        del ram
        if self.disk is not None:
            fd, writes = self.disk
            if self.whole_disk:
                self.whole_disk = False
                chunks = np.arange(-(-os.fstat(fd).st_size // DISK_CHUNK), dtype=np.uint64)
            else:
                chunks = np.array(sorted(writes.touched), np.uint64)
            out.disk_digests = (chunks, disk_digests(fd, chunks))


class Comparison:
    """The standby's side: counts of what differed, for its status."""

    def __init__(self):
        self.counts: dict = {"checks": 0, "differing_groups": 0, "group_pages": VERIFY_GROUP,
                             "disk_checks": 0, "disk_chunks": 0, "differing_disk_chunks": 0}

    def ram(self, n: int, image: np.ndarray, digests: np.ndarray) -> None:
        mine = page_digests(image)
        diff = int(np.count_nonzero(mine != digests)) if len(mine) == len(digests) else -1
        self.counts["checks"] += 1
        self.counts["differing_groups"] += max(diff, 0) if diff >= 0 else len(mine)
        self.counts["last"] = {"epoch": n, "differing_groups": diff}

    def disk(self, n: int, fd: int | None, disk_size: int, chunks: np.ndarray,
             sums: np.ndarray) -> None:
        if len(chunks) and int(chunks.max()) >= -(-disk_size // DISK_CHUNK):
            raise WireError("VERIFY_DISK names a chunk beyond the disk")
        # no fd: a store without a disk (size 0), where the check above lets no chunk through
        mine = disk_digests(fd, chunks) if fd is not None else np.empty(0, np.uint64)
        diff = int(np.count_nonzero(mine != sums))
        self.counts["disk_checks"] += 1
        self.counts["disk_chunks"] = len(chunks)
        self.counts["disk_chunks_checked"] = self.counts.get("disk_chunks_checked", 0) + len(
            chunks)
        self.counts["differing_disk_chunks"] += diff
        self.counts["last_disk"] = {"epoch": n, "chunks": len(chunks), "differing": diff}
