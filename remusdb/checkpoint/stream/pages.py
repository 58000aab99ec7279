"""An epoch's RAM records, kept as views while the VM is paused, copied out after."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from remusdb.checkpoint.stream.format import PAGE_SIZE
from remusdb.checkpoint.stream.reader import BufferPool


class PageSet:
    """The RAM records of one epoch: full pages and zero-filled pages.

    While the VM is paused, runs of pages are kept as views into the receive buffers (no copy);
    the first view()/latest() — after the VM has resumed — copies them into one contiguous
    (n, 4096) array and lets the buffers go. Within a checkpoint QEMU sends a page at most once,
    but the initial precopy phase resends pages dirtied meanwhile, possibly as a ZERO record
    after a PAGE or back: `latest()` keeps the last record of each page.
    """

    def __init__(self):
        self.n = 0
        self.seq = 0  # records so far, pages and zeros alike
        self._runs: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # block, idx, data, seq
        self._zeros: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.zero_count = 0
        self._flat: tuple[np.ndarray, ...] | None = None
        self._owned: tuple[BufferPool, list[np.ndarray]] | None = None

    def own(self, pool: BufferPool, buffers: list[np.ndarray]) -> None:
        """The receive buffers its page runs view: back to the pool once copied out."""
        self._owned = (pool, buffers)

    def add_pages(self, block: int, indexes: np.ndarray, pages: np.ndarray) -> None:
        """pages: an (n, 4096) array or view that stays unchanged until view()."""
        if self._flat is not None:
            raise RuntimeError("PageSet already materialized")
        self._runs.append((block, np.asarray(indexes, np.uint64), pages, self.seq))
        self.n += len(indexes)
        self.seq += len(indexes)

    def add_zeros(self, block: int, indexes: np.ndarray | Sequence[int],
                  fills: np.ndarray | Sequence[int]) -> None:
        k = len(indexes)
        self._zeros.append((block, np.array(indexes, np.uint64), np.array(fills, np.uint8),
                            np.arange(self.seq, self.seq + k)))
        self.zero_count += k
        self.seq += k

    def _materialize(self) -> tuple[np.ndarray, ...]:
        if self._flat is None:
            block = np.empty(self.n, np.uint16)
            index = np.empty(self.n, np.uint64)
            order = np.empty(self.n, np.int64)
            data = np.empty((self.n, PAGE_SIZE), np.uint8)
            at = 0
            for b, idx, pages, seq in self._runs:
                k = len(idx)
                block[at : at + k] = b
                index[at : at + k] = idx
                order[at : at + k] = np.arange(seq, seq + k)
                data[at : at + k] = pages
                at += k
            self._flat = (block, index, data, order)
            self._runs = []
            if self._owned is not None:
                pool, buffers = self._owned
                self._owned = None
                pool.put(buffers)
        return self._flat

    @property
    def pages(self) -> int:
        return self.n

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block, page index, data) of every PAGE record, in stream order."""
        block, index, data, _ = self._materialize()
        return block, index, data

    def zeros(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block, page index, fill byte) of every ZERO record, in stream order."""
        b, i, f, _ = self._zero_arrays()
        return b, i, f

    def _zero_arrays(self):
        if not self._zeros:
            e = np.empty(0, np.uint64)
            return e.astype(np.uint16), e, e.astype(np.uint8), e.astype(np.int64)
        return (np.concatenate([np.full(len(i), b, np.uint16) for b, i, _, _ in self._zeros]),
                np.concatenate([z[1] for z in self._zeros]),
                np.concatenate([z[2] for z in self._zeros]),
                np.concatenate([z[3] for z in self._zeros]))

    def latest(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Rows of view() and entries of zeros() that are each page's last record."""
        zb, zi, zf, zo = self._zero_arrays()
        block, index, _, porder = self._materialize()
        keys = np.concatenate([block.astype(np.uint64) << np.uint64(48) | index,
                               zb.astype(np.uint64) << np.uint64(48) | zi])
        order = np.concatenate([porder, zo])
        if len(keys) == len(np.unique(keys)):
            return np.arange(self.n), (zb, zi, zf)
        srt = np.lexsort((-order, keys))
        first = np.ones(len(srt), bool)
        first[1:] = keys[srt][1:] != keys[srt][:-1]
        keep = np.zeros(len(keys), bool)
        keep[srt[first]] = True
        zkeep = keep[self.n :]
        return np.flatnonzero(keep[: self.n]), (zb[zkeep], zi[zkeep], zf[zkeep])

