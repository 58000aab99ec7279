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

import mmap

import numpy as np

PAGE_SIZE = 4096


def _page_memory(pages: int) -> np.ndarray:
    """Anonymous memory for the cached pages, on huge pages where the kernel allows: the cache is
    read and written at random, and 4 KiB TLB entries (and first-touch faults) cost more than
    the copying."""
    if not pages:
        return np.zeros((0, PAGE_SIZE), np.uint8)
    m = mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    a = np.frombuffer(m, np.uint8).reshape(pages, PAGE_SIZE)
    a[:, 0] = 0  # fault it in now, at protection start, not during the first epochs
    return a


class PageCache:
    def __init__(self, block_pages: list[int], capacity: int):
        """block_pages: pages of each RAM block; capacity: pages the cache may hold."""
        self.offsets = np.concatenate([[0], np.cumsum(block_pages)]).astype(np.int64)
        self.capacity = max(0, int(capacity))
        self.data = _page_memory(self.capacity)
        self.slot_of = np.full(int(self.offsets[-1]), -1, np.int32)
        self.key = np.full(self.capacity, -1, np.int64)  # guest page of each slot, -1 free
        self.stamp = np.full(self.capacity, -1, np.int64)  # batch of last use, -1 free
        self.tick = 0
        # Eviction order: slots sorted by stamp when last computed; an entry whose stamp has
        # changed since was used again and is skipped. Consumed in order, this is exact LRU,
        # with one sort per `capacity` evictions instead of a selection per batch.
        self._lru = self._lru_stamp = np.empty(0, np.int64)
        self._lru_at = 0
        self.hits = self.misses = self.evictions = 0

    def keys(self, block: np.ndarray, index: np.ndarray) -> np.ndarray:
        return self.offsets[block.astype(np.int64)] + index.astype(np.int64)

    def exchange(self, block: np.ndarray, index: np.ndarray, pages: np.ndarray,
                 delta_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Record `pages` as sent; return (hit mask, XOR of each hit page with its previous
        version, in order) — the deltas land in `delta_out` if given.

        Misses take free or least recently used slots; if the batch has more misses than the
        cache can take, the rest stay uncached (they are sent whole next time too). A batch
        must not name a page twice."""
        self.tick += 1
        keys = self.keys(block, index)
        slots = self.slot_of[keys]
        hit = slots >= 0
        hs = slots[hit]
        nh = len(hs)
        delta = delta_out[:nh] if delta_out is not None else np.empty((nh, PAGE_SIZE), np.uint8)
        np.take(self.data, hs, axis=0, out=delta)
        fresh = pages if nh == len(pages) else pages[hit]  # all hits: no copy
        delta ^= fresh
        self.data[hs] = fresh
        self.stamp[hs] = self.tick
        self.hits += nh
        miss = np.flatnonzero(~hit)
        self.misses += len(miss)
        if len(miss) and self.capacity:
            new_slots = self._oldest(min(len(miss), self.capacity - nh))
            take = len(new_slots)
            gone = self.key[new_slots]
            gone = gone[gone >= 0]
            self.slot_of[gone] = -1
            self.evictions += len(gone)
            miss = miss[:take]
            self.slot_of[keys[miss]] = new_slots
            self.key[new_slots] = keys[miss]
            self.stamp[new_slots] = self.tick
            self.data[new_slots] = pages[miss]
        return hit, delta

    def _oldest(self, k: int) -> np.ndarray:
        """Up to k least recently used slots, none of them used by the current batch; the
        caller fills every slot returned."""
        found, got, sorted_now = [], 0, False
        while got < k:
            if self._lru_at >= len(self._lru):
                if sorted_now:  # every older slot is taken already
                    break
                sorted_now = True
                order = np.argsort(self.stamp, kind="stable")
                order = order[self.stamp[order] < self.tick]
                if not len(order):
                    break
                self._lru, self._lru_stamp, self._lru_at = order, self.stamp[order], 0
            at = self._lru_at
            chunk = self._lru[at : at + k - got]
            chunk = chunk[self.stamp[chunk] == self._lru_stamp[at : at + len(chunk)]]
            self._lru_at += k - got
            self.stamp[chunk] = self.tick  # taken by this batch: a new sort must skip them
            found.append(chunk)
            got += len(chunk)
        return np.concatenate(found) if found else np.empty(0, np.int64)

    def drop(self, block: np.ndarray, index: np.ndarray) -> None:
        """Forget pages sent otherwise (zero pages): their cached version is stale."""
        keys = self.keys(block, index)
        slots = self.slot_of[keys]
        s = slots[slots >= 0]
        self.slot_of[keys] = -1
        self.key[s] = -1
        self.stamp[s] = -1
        if len(s):
            self._lru_at = len(self._lru)  # free slots come first: sort again


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
