"""Disk resync when a host rejoins as standby: send only the blocks that differ.

SecondSite's rule: what must go is what the new primary wrote since the failover, plus what
the old primary wrote after the last epoch its standby had committed (its unfinished last
checkpoint). Nobody remembers the second set after a crash, so both sets are found the same
way: the joining standby sends an xxh3 digest of each 4 KiB block of its disk, and the primary
sends the blocks whose digest differs from its own. Both disks must descend from the same
first copy (the same *lineage*, carried in HELLO); otherwise a full copy is the only way.
Reading runs with the VM live: the disk server logs every write from the resync's start and
replays them at the end of epoch 0, like the full copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import xxhash

from remusdb.disk.image import data_extents
from remusdb.disk.writelog import DATA, DiskWrite

BLOCK = 4096
ZERO_DIGEST = xxhash.xxh3_64_intdigest(bytes(BLOCK))
MAX_RUN = 4 << 20  # bytes per DATA record of the resync


def digests(fd: int, size: int) -> np.ndarray:
    """xxh3 of every 4 KiB block of a sparse image (holes: the zero block's digest, unread)."""
    out = np.full(size // BLOCK, ZERO_DIGEST, np.uint64)
    h = xxhash.xxh3_64_intdigest
    for off, n in data_extents(fd, size, 16 << 20):
        # A file system with smaller blocks than 4 KiB reports extents off our grid: widen
        # each to whole 4 KiB blocks (a block hashed twice is hashed the same).
        first, end = off // BLOCK, min(-(-(off + n) // BLOCK), len(out))
        mv = memoryview(os.pread(fd, (end - first) * BLOCK, first * BLOCK))
        out[first:end] = [h(mv[i:i + BLOCK]) for i in range(0, len(mv), BLOCK)]
    return out


def differing(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """The blocks to send: indexes where the standby's digest is not the primary's."""
    if mine.shape != theirs.shape:
        raise ValueError(f"digests of {len(theirs)} blocks for a disk of {len(mine)}")
    return np.flatnonzero(mine != theirs)


def runs(blocks: np.ndarray, max_blocks: int = MAX_RUN // BLOCK) -> Iterator[tuple[int, int]]:
    """(first block, count) of each run of consecutive blocks, cut at `max_blocks`."""
    if not len(blocks):
        return
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    for run in np.split(blocks, breaks):
        start, n = int(run[0]), len(run)
        for k in range(0, n, max_blocks):
            yield start + k, min(max_blocks, n - k)


def writes(fd: int, blocks: np.ndarray) -> Iterator[DiskWrite]:
    """The differing blocks as DATA records, read now (the write log covers what follows)."""
    for first, n in runs(blocks):
        yield DiskWrite(DATA, first * BLOCK, n * BLOCK, os.pread(fd, n * BLOCK, first * BLOCK))
