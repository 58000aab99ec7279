"""Daemon status: a JSON file each daemon rewrites atomically, read by `remusdb status`."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import xxhash


class StatusFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.data: dict = {"pid": os.getpid(), "started_at": time.time()}

    def update(self, **kw) -> None:
        with self.lock:
            self.data.update(kw)
            self.data["updated_at"] = time.time()
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            os.replace(tmp, self.path)


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


class Window:
    """The last N samples of a measurement, for p50/p99 without unbounded memory."""

    def __init__(self, n: int = 1000):
        self.values = np.zeros(n)
        self.count = 0

    def add(self, v: float) -> None:
        self.values[self.count % len(self.values)] = v
        self.count += 1

    def percentiles(self) -> dict:
        vals = self.values[: min(self.count, len(self.values))]
        if not len(vals):
            return {}
        return {"p50": round(float(np.percentile(vals, 50)), 3),
                "p99": round(float(np.percentile(vals, 99)), 3),
                "max": round(float(vals.max()), 3)}


VERIFY_GROUP = 16  # pages per digest: 64 KiB, so hashing 1 GiB keeps the pause near 0.1 s


def page_digests(pages: np.ndarray, group: int = VERIFY_GROUP) -> np.ndarray:
    """xxh3-64 of every `group` consecutive pages of an (n, 4096) array: the RAM-equality
    check's fingerprint. A differing digest means 1 to `group` differing pages."""
    mv = memoryview(np.ascontiguousarray(pages)).cast("B")
    size = pages.shape[1] * group
    count = -(-len(pages) // group)
    f = xxhash.xxh3_64_intdigest
    return np.fromiter((f(mv[i * size : (i + 1) * size]) for i in range(count)), np.uint64,
                       count)


DISK_CHUNK = 1 << 20  # the disk-equality check compares 1 MiB chunks


def disk_digests(fd: int, chunks: np.ndarray, chunk: int = DISK_CHUNK) -> np.ndarray:
    """xxh3-64 of the given chunks of a disk image (the disk-equality check's fingerprint)."""
    import os
    f = xxhash.xxh3_64_intdigest
    return np.fromiter((f(os.pread(fd, chunk, int(c) * chunk)) for c in chunks), np.uint64,
                       len(chunks))
