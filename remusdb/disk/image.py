"""Raw, sparse disk images: writes that never stop short, holes, allocated extents.

Used by the primary's disk server and by the standby's store, which applies the same writes.
"""

from __future__ import annotations

import ctypes
import errno
import os

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def pwrite_all(fd: int, data, offset: int) -> None:
    """pwrite that either writes every byte or raises (a short write is ENOSPC in the making)."""
    mv = memoryview(data)
    done = 0
    while done < len(mv):
        n = os.pwrite(fd, mv[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, "short write")
        done += n


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make a range read as zeros: punch a hole (the image stays sparse), else write zeros."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    chunk = bytes(min(length, 1 << 20))
    done = 0
    while done < length:
        n = min(len(chunk), length - done)
        pwrite_all(fd, chunk[:n], offset + done)
        done += n


def data_extents(fd: int, size: int, chunk: int = 4 << 20):
    """(offset, length) pieces of at most `chunk` bytes covering the allocated data of a
    sparse file (SEEK_DATA / SEEK_HOLE): what a full copy must send."""
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        for off in range(start, end, chunk):
            yield off, min(chunk, end - off)
        at = end



def allocated_bytes(fd: int, size: int) -> int:
    """Bytes of allocated data in a sparse image (what a full copy sends)."""
    return sum(n for _, n in data_extents(fd, size, 1 << 62))
