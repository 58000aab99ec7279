"""Keep the daemons' large buffers in the heap.

Every epoch allocates and frees buffers of a few MiB (an epoch's pages gathered after the
resume, encoded frames, decoded pages, journal payloads). glibc serves each allocation above
its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB) with a fresh mmap and
returns it to the kernel on free, and shrinks the heap's top past its trim threshold, so each
epoch can fault its buffers in again page by page: allocating and filling three 4 MiB buffers
took 9.8 ms on this machine against 0.6 ms once they stay mapped (tests/unit/test_heap.py
counts the faults). The standby daemon took ~1,100 minor faults a second under TPC-B at 100 ms
before, none after; the primary's receive buffers were pooled already.
Fixed thresholds keep them: buffers up to 32 MiB come from the heap, and a heap's free top is
given back only past 128 MiB (freed space below live allocations stays mapped in any case), so
a daemon holds on to a few epochs' worth of buffers per arena. Larger buffers (the initial full
copy) still come and go with their own mappings.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc refuses more on 64-bit hosts
TRIM_THRESHOLD = 128 << 20


def keep_large_buffers() -> bool:
    """Set the thresholds once, early in the process; False where the C library has no
    mallopt (not glibc): nothing breaks, the buffers are just faulted in again."""
    try:  # the process's own symbols: no library search (find_library runs ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: large buffers stay glibc-default")
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.debug("mallopt refused the thresholds: large buffers stay glibc-default")
    return ok
