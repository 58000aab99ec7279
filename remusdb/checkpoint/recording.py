"""Recorded page streams: each epoch's page records as the sender saw them, for benchmarks.

Compression and read tracking are measured offline on streams recorded from the real guest, so
that every codec and cache size sees the same pages. Format, little-endian, one record per epoch:

    "RDBC" | epoch u64 | pages u32 | zeros u32 | block u16[pages] | index u64[pages]
    | data 4096 × pages | zero block u16[zeros] | zero index u64[zeros]
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remusdb.errors import RemusError

_HEAD = struct.Struct("<4sQII")
PAGE_SIZE = 4096


@dataclass
class RecordedEpoch:
    number: int
    block: np.ndarray
    index: np.ndarray
    data: np.ndarray
    zero_block: np.ndarray
    zero_index: np.ndarray


def write_epoch(f, number: int, block, index, data, zero_block, zero_index) -> int:
    parts = [_HEAD.pack(b"RDBC", number, len(index), len(zero_index)),
             np.asarray(block, "<u2").tobytes(), np.asarray(index, "<u8").tobytes(),
             np.ascontiguousarray(data), np.asarray(zero_block, "<u2").tobytes(),
             np.asarray(zero_index, "<u8").tobytes()]
    for p in parts:
        f.write(p)
    return sum(len(memoryview(p).cast("B")) for p in parts)


def read_epochs(path: Path) -> Iterator[RecordedEpoch]:
    with open(path, "rb") as f:
        while True:
            head = f.read(_HEAD.size)
            if not head:
                return
            if len(head) < _HEAD.size or head[:4] != b"RDBC":
                raise RemusError(f"{path}: not a remusdb page recording (or truncated)")
            _, number, n, z = _HEAD.unpack(head)
            body = f.read(n * (10 + PAGE_SIZE) + z * 10)
            if len(body) < n * (10 + PAGE_SIZE) + z * 10:
                return  # the recording was cut off mid-epoch: what came before is whole
            at = 0

            def take(dtype, count, _body=body):
                nonlocal at
                a = np.frombuffer(_body, dtype, count, at)
                at += a.nbytes
                return a
            yield RecordedEpoch(number, take("<u2", n), take("<u8", n),
                                take(np.uint8, n * PAGE_SIZE).reshape(n, PAGE_SIZE),
                                take("<u2", z), take("<u8", z))
