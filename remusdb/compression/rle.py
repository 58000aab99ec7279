"""Word run-length coding of XOR deltas, vectorized over a whole batch of pages.

A database page that changed in a few places XORs to mostly zero 32-bit words. A page's delta
is coded as its runs of non-zero words — (start word, length) pairs — and the run words
themselves; zero words cost nothing. The spirit is Remus's and QEMU's XBZRLE; the layout is
columnar so that a batch encodes and decodes with a handful of numpy passes, not a loop per page:

    counts  u16[pages]   runs per page
    starts  u16[runs]    first word of each run, increasing within a page
    lengths u16[runs]    words in each run, ≥ 1, run inside the page, runs never overlap
    words   u32[Σ lengths]

All little-endian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remusdb.errors import PeerError

PAGE_SIZE = 4096
WORDS = PAGE_SIZE // 4
WORD = np.dtype("<u4")
U16 = np.dtype("<u2")


class CodecError(PeerError):
    """A compressed batch that cannot be what the primary's encoder wrote."""


@dataclass
class Runs:
    counts: np.ndarray  # u16 per page
    starts: np.ndarray  # u16 per run
    lengths: np.ndarray  # u16 per run
    words: np.ndarray  # u32 literals

    def page_sizes(self) -> np.ndarray:
        """Coded bytes of each page (its count, its runs, its words)."""
        per_page_words = np.zeros(len(self.counts), np.int64)
        if len(self.lengths):
            page = np.repeat(np.arange(len(self.counts)), self.counts)
            per_page_words = np.bincount(page, self.lengths, len(self.counts)).astype(np.int64)
        return 2 + 4 * self.counts.astype(np.int64) + 4 * per_page_words

    def select(self, keep: np.ndarray) -> Runs:
        """The runs of the pages where `keep` is true."""
        if keep.all():
            return self
        counts = self.counts.astype(np.int64)
        run_kept = np.repeat(keep, counts)
        return Runs(self.counts[keep], self.starts[run_kept], self.lengths[run_kept],
                    self.words[np.repeat(run_kept, self.lengths.astype(np.int64))])

    def nbytes(self) -> int:
        return 2 * len(self.counts) + 4 * len(self.starts) + 4 * len(self.words)


def covered_words(delta: np.ndarray) -> np.ndarray:
    """(n, WORDS) mask of the words runs cover: the non-zero ones. (Bridging a one-word zero
    gap would cost a literal word to save a run entry of the same size: nothing gained.)"""
    return delta.view(WORD).reshape(len(delta), WORDS) != 0


def encode(delta: np.ndarray, covered: np.ndarray | None = None) -> Runs:
    """Runs of an (n, 4096) uint8 array of XOR deltas (`covered`: its covered_words, if known)."""
    n = len(delta)
    words = delta.view(WORD).reshape(n, WORDS)
    nz = covered_words(delta) if covered is None else covered
    edge = np.empty((n, WORDS + 1), bool)  # where a run starts, and one past where it ends
    edge[:, 0] = nz[:, 0]
    np.not_equal(nz[:, 1:], nz[:, :-1], out=edge[:, 1:WORDS])
    edge[:, WORDS] = nz[:, -1]
    at = np.flatnonzero(edge)
    first, past = at[0::2], at[1::2]  # edges alternate start, end within each page
    rows, starts = np.divmod(first, WORDS + 1)
    return Runs(np.bincount(rows, minlength=n).astype(U16), starts.astype(U16),
                (past - first).astype(U16), words[nz])


def apply(pages: np.ndarray, runs: Runs) -> None:
    """XOR coded runs onto an (n, 4096) uint8 array of base pages, in place.

    Everything is checked before anything is written: a bad count, a run past the end of its
    page, overlapping runs or a word count that does not add up raise CodecError, so a lying
    peer cannot write outside the pages it named."""
    n = len(pages)
    counts = runs.counts.astype(np.int64)
    starts = runs.starts.astype(np.int64)
    lengths = runs.lengths.astype(np.int64)
    if len(counts) != n:
        raise CodecError(f"run counts for {len(counts)} pages, expected {n}")
    if int(counts.sum()) != len(starts) or len(starts) != len(lengths):
        raise CodecError("run table does not match the run counts")
    if len(lengths) and (int(lengths.min()) < 1 or int((starts + lengths).max()) > WORDS):
        raise CodecError("run outside its page")
    if int(lengths.sum()) != len(runs.words):
        raise CodecError(f"runs cover {int(lengths.sum())} words, {len(runs.words)} sent")
    page = np.repeat(np.arange(n, dtype=np.int64), counts)
    if len(page) > 1:
        same = page[1:] == page[:-1]
        if np.any(same & (starts[1:] < starts[:-1] + lengths[:-1])):
            raise CodecError("overlapping or unordered runs")
    if not len(runs.words):
        return
    first_word = np.cumsum(lengths) - lengths  # of each run, in the literal array
    dest = np.repeat(page * WORDS + starts - first_word, lengths)
    dest += np.arange(len(runs.words), dtype=np.int64)
    flat = pages.view(WORD).reshape(-1)
    flat[dest] ^= runs.words
