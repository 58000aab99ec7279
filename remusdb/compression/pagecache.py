"""The primary's page cache: the last version it *sent* of recently dirtied pages, LRU.

Only the primary needs it. The XOR base of a page is the version the standby committed, which is
the version the primary last sent — exactly what this cache holds while the page stays cached.
The standby therefore XORs onto its own RAM image and keeps no mirror, so the two sides cannot
disagree about cache contents: a page that is not cached here is sent whole (its codec says so),
and every page sent — whole, XORed or zero — updates or drops its entry in the same step.

The cache is columnar: one slot array of pages, a slot number per guest page (dense, -1 when not
cached: 4 bytes per guest page) and a use stamp per slot. Lookup, update and eviction of a batch
are a few numpy operations; eviction takes the least recently used slots of earlier batches.
"""

from __future__ import annotations

import numpy as np

PAGE_SIZE = 4096


class PageCache:
    def __init__(self, block_pages: list[int], capacity: int):
        """block_pages: pages of each RAM block; capacity: pages the cache may hold."""
        self.offsets = np.concatenate([[0], np.cumsum(block_pages)]).astype(np.int64)
        self.capacity = max(0, int(capacity))
        self.data = np.zeros((self.capacity, PAGE_SIZE), np.uint8)
        self.slot_of = np.full(int(self.offsets[-1]), -1, np.int32)
        self.key = np.full(self.capacity, -1, np.int64)  # guest page of each slot, -1 free
        self.stamp = np.full(self.capacity, -1, np.int64)  # batch of last use, -1 free
        self.tick = 0
        self.hits = self.misses = self.evictions = 0

    def keys(self, block: np.ndarray, index: np.ndarray) -> np.ndarray:
        return self.offsets[block.astype(np.int64)] + index.astype(np.int64)

    def exchange(self, block: np.ndarray, index: np.ndarray, pages: np.ndarray,
                 base_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Record `pages` as sent; return (hit mask, the previous version of the hit pages).

        Misses take free or least recently used slots; if the batch has more misses than the
        cache can take, the rest stay uncached (they are sent whole next time too). A batch
        must not name a page twice."""
        self.tick += 1
        keys = self.keys(block, index)
        slots = self.slot_of[keys]
        hit = slots >= 0
        hs = slots[hit]
        nh = len(hs)
        base = base_out[:nh] if base_out is not None else np.empty((nh, PAGE_SIZE), np.uint8)
        np.take(self.data, hs, axis=0, out=base)
        self.data[hs] = pages[hit]
        self.stamp[hs] = self.tick
        self.hits += nh
        miss = np.flatnonzero(~hit)
        self.misses += len(miss)
        if len(miss) and self.capacity:
            older = np.flatnonzero(self.stamp < self.tick)  # not used by this batch
            take = min(len(miss), len(older))
            if take < len(older):
                older = older[np.argpartition(self.stamp[older], take - 1)[:take]]
            new_slots = older[:take]
            gone = self.key[new_slots]
            gone = gone[gone >= 0]
            self.slot_of[gone] = -1
            self.evictions += len(gone)
            miss = miss[:take]
            self.slot_of[keys[miss]] = new_slots
            self.key[new_slots] = keys[miss]
            self.stamp[new_slots] = self.tick
            self.data[new_slots] = pages[miss]
        return hit, base

    def drop(self, block: np.ndarray, index: np.ndarray) -> None:
        """Forget pages sent otherwise (zero pages): their cached version is stale."""
        keys = self.keys(block, index)
        slots = self.slot_of[keys]
        s = slots[slots >= 0]
        self.slot_of[keys] = -1
        self.key[s] = -1
        self.stamp[s] = -1

    def clear(self) -> None:
        self.slot_of[:] = -1
        self.key[:] = -1
        self.stamp[:] = -1

    @property
    def used(self) -> int:
        return int(np.count_nonzero(self.key >= 0))

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.slot_of.nbytes + self.key.nbytes + self.stamp.nbytes)

    def summary(self) -> dict:
        looked = self.hits + self.misses
        return {"capacity_pages": self.capacity, "used_pages": self.used,
                "memory_mib": round(self.nbytes / 2**20, 1), "hits": self.hits,
                "misses": self.misses, "evictions": self.evictions,
                "hit_rate": round(self.hits / looked, 3) if looked else None}
