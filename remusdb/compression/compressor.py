"""One protection session's compression: the page cache, the codec mode and what it saved."""

from __future__ import annotations

import time

import numpy as np

from remusdb.compression import codec
from remusdb.compression.pagecache import PAGE_SIZE, PageCache


class Compressor:
    def __init__(self, mode: str, block_pages: list[int], cache_pages: int):
        """block_pages: pages of each RAM block; cache_pages: the page cache's capacity."""
        if mode not in codec.MODES:
            raise ValueError(f"unknown compression mode {mode!r}")
        self.mode = mode
        self.cache = PageCache(block_pages, cache_pages)
        self.delta = np.empty((codec.MAX_PAGES, PAGE_SIZE), np.uint8)  # reused: no page faults
        self.pages_in = self.bytes_out = 0
        self.seconds = self.cache_seconds = 0.0
        self.by_codec = np.zeros(len(codec.Codec), np.int64)

    def batch(self, block: np.ndarray, index: np.ndarray, pages: np.ndarray,
              cache: bool = True) -> bytes:
        """Encode one batch (≤ codec.MAX_PAGES) and record it as sent. cache=False for the
        initial full copy: those pages are not known to change, and must not crowd out the
        ones that do."""
        t0 = time.perf_counter()
        if cache:
            hit, delta = self.cache.exchange(block, index, pages, self.delta)
        else:
            hit, delta = np.zeros(len(pages), bool), self.delta[:0]
        t1 = time.perf_counter()
        out = codec.encode(block, index, pages, hit, delta, self.mode)
        self.seconds += time.perf_counter() - t0
        self.cache_seconds += t1 - t0
        self.pages_in += len(pages)
        self.bytes_out += len(out)
        n = len(pages)
        self.by_codec += np.bincount(np.frombuffer(out, np.uint8, n, codec.codes_offset(n)),
                                     minlength=len(codec.Codec))
        return out

    def sent_otherwise(self, block: np.ndarray, index: np.ndarray, pages: np.ndarray) -> None:
        """Pages the standby gets another way (RT references): they are its copies now, so they
        are the cache's, and next epoch's changes to them XOR against them."""
        for k in range(0, len(index), codec.MAX_PAGES):
            self.cache.exchange(block[k : k + codec.MAX_PAGES], index[k : k + codec.MAX_PAGES],
                                pages[k : k + codec.MAX_PAGES], self.delta)

    def forget(self, block: np.ndarray, index: np.ndarray) -> None:
        """Pages sent otherwise (zero pages, RT references): the standby no longer holds the
        cached version."""
        self.cache.drop(block, index)

    def summary(self) -> dict:
        raw = self.pages_in * PAGE_SIZE
        return {"mode": self.mode, "pages": self.pages_in, "raw_mib": round(raw / 2**20, 1),
                "sent_mib": round(self.bytes_out / 2**20, 1),
                "ratio": round(self.bytes_out / raw, 4) if raw else None,
                "encode_mb_s": round(raw / self.seconds / 1e6, 1) if self.seconds else None,
                "cache_share": round(self.cache_seconds / self.seconds, 3) if self.seconds
                else None,
                "pages_by_codec": {c.name.lower(): int(self.by_codec[c]) for c in codec.Codec},
                "cache": self.cache.summary()}
