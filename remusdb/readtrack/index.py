"""The block index: which disk block holds a given 4 KiB content, for blocks recently read or
written through the disk server.

Content-based, so it finds the pages the guest DMA'd from disk *and* the copies the database
made of them in its buffer pool, and the page-cache copies of blocks the guest wrote. Every
write first bumps the written blocks' generation and drops their entries (the paper's
backpointers: block → hash); only then is the data written, and its new content indexed. A
reference taken for checkpoint N is valid only if its block's generation is not newer than the
generation recorded at N's cut, checked *after* the block was read and compared with the page:
so the content compared is the block's content at the checkpoint, whatever the guest writes
meanwhile.

Bounded: at most `capacity` contents, oldest forgotten first; the per-block arrays cost 17 bytes
per 4 KiB of disk.
"""

from __future__ import annotations

import threading

import numpy as np
import xxhash

BLOCK = 4096


def page_hash(page) -> int:
    return xxhash.xxh3_64_intdigest(page)


class BlockIndex:
    def __init__(self, disk_size: int, capacity: int):
        blocks = disk_size // BLOCK
        self.capacity = max(1, capacity)
        self.by_hash: dict[int, int] = {}  # content hash -> block
        self.hash_of = np.zeros(blocks, np.uint64)  # backpointers
        self.indexed = np.zeros(blocks, bool)
        self.gen = np.zeros(blocks, np.uint64)  # write generation of each block
        self.generation = 0
        self.lock = threading.Lock()
        self.stats = {"indexed": 0, "invalidated": 0, "evicted": 0}

    def saw(self, offset: int, data) -> None:
        """Content that is on disk at `offset` now (just read or just written)."""
        first = -(-offset // BLOCK)
        last = (offset + len(data)) // BLOCK
        if last <= first:
            return
        mv = memoryview(data)
        base = first * BLOCK - offset
        hashes = [page_hash(mv[base + k * BLOCK : base + (k + 1) * BLOCK])
                  for k in range(last - first)]
        with self.lock:
            by_hash = self.by_hash
            for k, h in enumerate(hashes):
                b = first + k
                if self.indexed[b]:
                    old = int(self.hash_of[b])
                    if by_hash.get(old) == b:
                        del by_hash[old]
                by_hash.pop(h, None)  # re-insert: the newest block for a content, newest last
                by_hash[h] = b
                self.hash_of[b] = h
                self.indexed[b] = True
            self.stats["indexed"] += len(hashes)
            while len(by_hash) > self.capacity:
                h = next(iter(by_hash))
                b = by_hash.pop(h)
                if int(self.hash_of[b]) == h:
                    self.indexed[b] = False
                self.stats["evicted"] += 1

    def written(self, offset: int, length: int) -> None:
        """Blocks about to change (write, trim, zeroes): newer generation, no entry."""
        first, last = offset // BLOCK, -(-(offset + length) // BLOCK)
        with self.lock:
            self.generation += 1
            self.gen[first:last] = self.generation
            for b in np.flatnonzero(self.indexed[first:last]).tolist():
                b += first
                h = int(self.hash_of[b])
                if self.by_hash.get(h) == b:
                    del self.by_hash[h]
                self.indexed[b] = False
                self.stats["invalidated"] += 1

    def lookup(self, hashes: list[int]) -> np.ndarray:
        """Candidate block of each hash, -1 for none (to be verified by the caller)."""
        with self.lock:
            get = self.by_hash.get
            return np.array([get(h, -1) for h in hashes], np.int64)

    def unchanged_since(self, blocks: np.ndarray, generation: int) -> np.ndarray:
        with self.lock:
            return self.gen[blocks] <= generation

    def summary(self) -> dict:
        entries = len(self.by_hash)
        return {"entries": entries, "capacity": self.capacity,
                "memory_mib": round((entries * 100 + self.gen.nbytes * 2 + self.indexed.nbytes)
                                    / 2**20, 1), **self.stats}
