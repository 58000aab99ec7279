"""Compressed page batches: what a CPAGES frame carries, and its decoder.

Each page names its codec, so the standby never has to guess what the primary's cache held:

    RAW        the page, whole                      (cache miss, incompressible)
    LZ4        the page, in the batch's LZ4 block   (cache miss)
    UNCHANGED  nothing: it equals the standby's copy (XOR all zero)
    XOR_RLE    word runs of the XOR with the standby's copy (rle.py)
    XOR_LZ4    the XOR with the standby's copy, in the batch's XOR LZ4 block

Layout (little-endian), sections in this order, each page's data in page order:

    header   n u32 | runs u32 | words u32 | lz4 bytes u32 | xor-lz4 bytes u32 | xxh3 u64
    block    u16[n] | index u64[n] | codec u8[n]
    RAW      4096 × (RAW pages)
    LZ4      one LZ4 block of the LZ4 pages
    XOR_RLE  counts u16[XOR_RLE pages] | starts u16[runs] | lengths u16[runs] | words u32[words]
    XOR_LZ4  one LZ4 block of the XORs of the XOR_LZ4 pages

xxh3 is over the decoded pages in page order: if the standby's copy of a page were ever not the
primary's base, the batch is refused instead of silently applied.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable

import lz4.block
import numpy as np
import xxhash

from remusdb.compression import rle
from remusdb.compression.rle import PAGE_SIZE, CodecError

MAX_PAGES = 4096  # per batch: bounds what a decoder allocates
_HEAD = struct.Struct("<IIIIIQ")
MODES = ("xor-rle", "xor-lz4")
LZ4_WORTH = 0.9  # misses are LZ4-compressed when that saves at least 10%


class Codec(enum.IntEnum):
    RAW = 0
    LZ4 = 1
    UNCHANGED = 2
    XOR_RLE = 3
    XOR_LZ4 = 4


def _lz4(data) -> bytes:
    return lz4.block.compress(data, mode="default", store_size=False)


def encode(block: np.ndarray, index: np.ndarray, pages: np.ndarray, hit: np.ndarray,
           delta: np.ndarray, mode: str) -> bytes:
    """One batch. pages: (n, 4096) uint8; hit: which pages the standby has the base of;
    delta: the XORs of the hit pages with their bases, in order (PageCache.exchange)."""
    n = len(pages)
    if n > MAX_PAGES:
        raise ValueError(f"batch of {n} pages, at most {MAX_PAGES}")
    if mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}")
    codes = np.full(n, Codec.RAW, np.uint8)
    hits = np.flatnonzero(hit)
    runs, xlz4 = rle.Runs(*(np.empty(0, t) for t in (rle.U16, rle.U16, rle.U16, rle.WORD))), b""
    if len(hits) and mode == "xor-rle":
        covered = rle.covered_words(delta)
        changed = covered.any(axis=1)
        codes[hits[~changed]] = Codec.UNCHANGED
        runs = rle.encode(delta, covered)
        # A page rewritten all over codes larger than itself: it goes whole instead.
        small = (runs.page_sizes() < PAGE_SIZE) & changed
        codes[hits[small]] = Codec.XOR_RLE
        runs = runs.select(small)
    elif len(hits):
        changed = delta.view(np.uint64).reshape(len(hits), -1).any(axis=1)
        codes[hits] = np.where(changed, Codec.XOR_LZ4, Codec.UNCHANGED)
        if changed.any():
            xlz4 = _lz4(delta if changed.all() else np.ascontiguousarray(delta[changed]))
    misses = np.flatnonzero(codes == Codec.RAW)
    raw = pages[misses] if len(misses) < n else pages
    lz = b""
    if len(misses):
        lz = _lz4(raw)
        if len(lz) <= LZ4_WORTH * raw.nbytes:
            codes[misses] = Codec.LZ4
            raw = raw[:0]
        else:
            lz = b""
    # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
    head = _HEAD.pack(n, len(runs.starts), len(runs.words), len(lz), len(xlz4),
                      xxhash.xxh3_64_intdigest(np.ascontiguousarray(pages)))  # type: ignore[arg-type]
    return b"".join([head, block.astype("<u2").tobytes(), index.astype("<u8").tobytes(),
                     codes.tobytes(), raw.tobytes(), lz, runs.counts.tobytes(),
                     runs.starts.tobytes(), runs.lengths.tobytes(), runs.words.tobytes(),
                     xlz4])


def codes_offset(n: int) -> int:
    """Where the per-page codec bytes of an n-page batch start."""
    return _HEAD.size + 10 * n


def page_keys(payload) -> tuple[np.ndarray, np.ndarray]:
    """(block, index) of a batch, to validate before any base is read."""
    n = _header(payload)[0]
    if len(payload) < codes_offset(n) + n:
        raise CodecError(f"compressed batch of {len(payload)} bytes cannot name {n} pages")
    mv = memoryview(payload)
    return (np.frombuffer(mv, "<u2", n, _HEAD.size).astype(np.uint16),
            np.frombuffer(mv, "<u8", n, _HEAD.size + 2 * n).astype(np.uint64))


def _header(payload) -> tuple[int, ...]:
    if len(payload) < _HEAD.size:
        raise CodecError(f"compressed batch of {len(payload)} bytes has no header")
    h = _HEAD.unpack_from(payload)
    if h[0] > MAX_PAGES:
        raise CodecError(f"compressed batch of {h[0]} pages, at most {MAX_PAGES}")
    if h[1] > MAX_PAGES * rle.WORDS or h[2] > MAX_PAGES * rle.WORDS:
        raise CodecError("compressed batch announces more runs than its pages can hold")
    return h


def _unlz4(data, pages: int, what: str) -> np.ndarray:
    if not pages:
        if len(data):
            raise CodecError(f"{what} block without pages")
        return np.empty((0, PAGE_SIZE), np.uint8)
    try:
        out = lz4.block.decompress(data, uncompressed_size=pages * PAGE_SIZE)
    except lz4.block.LZ4BlockError:
        raise CodecError(f"corrupt {what} block") from None
    if len(out) != pages * PAGE_SIZE:
        raise CodecError(f"{what} block holds {len(out)} bytes, not {pages} pages")
    return np.frombuffer(out, np.uint8).reshape(pages, PAGE_SIZE)


def decode(payload, base: Callable[[np.ndarray], np.ndarray]):
    """(block, index, pages) of a batch. base(rows) returns the standby's current copies of the
    pages at those rows; it is called once lengths, codec ids and LZ4 blocks have been checked,
    and the runs are checked before they are applied. Nothing outside the returned array is
    written, so a refused batch changes nothing."""
    n, nruns, nwords, nlz, nxlz, digest = _header(payload)
    mv = memoryview(payload)
    block, index = page_keys(payload)
    at = codes_offset(n)
    codes = np.frombuffer(mv, np.uint8, n, at)
    at += n
    if n and int(codes.max()) > max(Codec):
        raise CodecError(f"unknown page codec {int(codes.max())}")
    count = np.bincount(codes, minlength=len(Codec))
    sizes = [count[Codec.RAW] * PAGE_SIZE, nlz,
             2 * (count[Codec.XOR_RLE] + 2 * nruns) + 4 * nwords, nxlz]
    if len(payload) != at + sum(sizes):
        raise CodecError(f"compressed batch of {len(payload)} bytes, its header and codecs "
                         f"say {at + sum(sizes)}")
    raw = np.frombuffer(mv, np.uint8, sizes[0], at).reshape(-1, PAGE_SIZE)
    at += sizes[0]
    lz = _unlz4(mv[at : at + nlz], int(count[Codec.LZ4]), "LZ4")
    at += nlz
    k = int(count[Codec.XOR_RLE])
    runs = rle.Runs(np.frombuffer(mv, rle.U16, k, at),
                    np.frombuffer(mv, rle.U16, nruns, at + 2 * k),
                    np.frombuffer(mv, rle.U16, nruns, at + 2 * k + 2 * nruns),
                    np.frombuffer(mv, rle.WORD, nwords, at + 2 * k + 4 * nruns))
    at += sizes[2]
    xlz = _unlz4(mv[at : at + nxlz], int(count[Codec.XOR_LZ4]), "XOR LZ4")
    out = np.empty((n, PAGE_SIZE), np.uint8)
    xor_rows = np.flatnonzero(codes >= Codec.UNCHANGED)
    if len(xor_rows):
        out[xor_rows] = base(xor_rows)
    out[codes == Codec.RAW] = raw
    out[codes == Codec.LZ4] = lz
    xl = codes == Codec.XOR_LZ4
    out[xl] ^= xlz
    if k:
        rows = codes == Codec.XOR_RLE
        part = out[rows]
        rle.apply(part, runs)  # checks every run before it writes
        out[rows] = part
    # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
    if xxhash.xxh3_64_intdigest(out) != digest:  # type: ignore[arg-type]
        raise CodecError("decoded pages do not match the primary's checksum")
    return block, index, out
