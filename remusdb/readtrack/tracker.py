"""RT on the primary: which of an epoch's dirty pages go as references to disk blocks.

A page becomes a reference only if (1) the index names a block for its content hash, (2) that
block, read from the primary's disk now, equals the page byte for byte, and (3) the block has
not been written since the epoch's cut (checked after the read, see index.py). Then the
standby's disk at that checkpoint holds the same 4 KiB, and it fills the page from there: no
hash argument is needed, a collision only costs a failed comparison.
"""

from __future__ import annotations

import os

import numpy as np

from remusdb.readtrack.index import BLOCK, BlockIndex, page_hash


class ReadTracker:
    def __init__(self, index: BlockIndex, disk_fd: int):
        self.index, self.fd = index, disk_fd
        self.stats = {"pages": 0, "candidates": 0, "references": 0, "mismatched": 0,
                      "rewritten": 0}

    def references(self, data: np.ndarray, rows: np.ndarray, generation: int) -> np.ndarray:
        """For each of `rows` of `data`, the disk block it may be sent as, or -1."""
        out = np.full(len(rows), -1, np.int64)
        if not len(rows):
            return out
        cand = self.index.lookup([page_hash(data[r]) for r in rows.tolist()])
        self.stats["pages"] += len(rows)
        hits = np.flatnonzero(cand >= 0)
        self.stats["candidates"] += len(hits)
        same = np.array([os.pread(self.fd, BLOCK, int(cand[k]) * BLOCK)
                         == data[rows[k]].tobytes() for k in hits.tolist()], bool)
        self.stats["mismatched"] += int((~same).sum())
        hits = hits[same]
        if len(hits):
            fresh = self.index.unchanged_since(cand[hits], generation)
            self.stats["rewritten"] += int((~fresh).sum())
            hits = hits[fresh]
        out[hits] = cand[hits]
        self.stats["references"] += len(hits)
        return out

    def summary(self) -> dict:
        return {**self.stats, "saved_mib": round(self.stats["references"] * BLOCK / 2**20, 1),
                "index": self.index.summary()}
