"""Buffered reads of a byte stream (a socket or bytes), with views that stay valid.

Pages are parsed straight out of the receive buffers: a full buffer is replaced, never
compacted in place, so views of an epoch's page runs survive until the epoch is copied out.
"""

from __future__ import annotations

import collections
import fcntl
import struct
import sys
import termios

import numpy as np

from remusdb.checkpoint.stream.format import StreamError, Truncated

MAX_RECORD = 256 << 20  # the longest record one read may wait for (a device state blob)


class BufferPool:
    """Receive buffers for reuse: fresh memory is slow to fault in, reused memory is not."""

    def __init__(self, chunk: int, keep: int = 32):
        self.chunk, self.keep = chunk, keep
        self.free: collections.deque[np.ndarray] = collections.deque()

    def get(self, size: int) -> np.ndarray:
        if size <= self.chunk:
            try:
                return self.free.pop()  # LIFO: the most recently used is still hot
            except IndexError:
                size = self.chunk
        return np.empty(size, np.uint8)

    def put(self, buffers: list[np.ndarray]) -> None:
        """Return buffers nobody views any more (thread-safe: deque appends are atomic)."""
        for b in buffers:
            if len(b) == self.chunk and len(self.free) < self.keep:
                self.free.append(b)


class Reader:
    """Buffered reads from a socket-like source (anything with recv_into) or from bytes."""

    def __init__(self, source=None, data: bytes = b"", chunk: int = 1 << 20,
                 pool: BufferPool | None = None):
        self.src = source
        self.pool = pool or BufferPool(chunk)
        self.arr = self.pool.get(max(chunk, len(data)))
        self.used = [self.arr]  # buffers handed out since the last detach()
        # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
        self.buf = memoryview(self.arr)  # type: ignore[arg-type]
        self.buf[: len(data)] = data
        self.start, self.end = 0, len(data)
        self.consumed = 0  # stream offset of self.start, for error messages
        self.chunk = chunk
        self.limit = MAX_RECORD

    @property
    def offset(self) -> int:
        return self.consumed

    def available(self) -> int:
        return self.end - self.start

    def fill(self, n: int) -> None:
        """Make at least n bytes available, reading more from the source as needed.

        Views handed out by take() stay valid: a full buffer is replaced, never reused.
        """
        if n > self.limit:
            raise StreamError(f"a record of {n} bytes at offset {self.offset}: more than "
                              f"{self.limit}, not what QEMU sends")
        while self.end - self.start < n:
            if self.src is None:
                raise Truncated(f"truncated stream at offset {self.offset + self.available()}: "
                                f"needed {n - self.available()} more bytes")
            self._room(n - (self.end - self.start))
            try:
                got = self.src.recv_into(self.buf[self.end :])
            except TimeoutError:
                raise StreamError(f"no data for {self.src.gettimeout():.0f} s at offset "
                                  f"{self.offset + self.available()}") from None
            if not got:
                raise Truncated(f"stream closed at offset {self.offset + self.available()}: "
                                f"needed {n - self.available()} more bytes")
            self.end += got

    def _room(self, want: int) -> None:
        """Free space for `want` more bytes (at least a chunk's worth of reading).

        A full buffer is never compacted in place: page runs of the current epoch are still
        views into it (PageSet copies them out after the VM has resumed); the next one comes
        from the pool, already faulted in (a page fault costs ~16 µs on these VMs)."""
        avail = self.end - self.start
        if len(self.buf) - self.end >= max(want, self.chunk // 4):
            return
        self.arr = self.pool.get(max(self.chunk, avail + want))
        self.used.append(self.arr)
        # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
        new = memoryview(self.arr)  # type: ignore[arg-type]
        new[:avail] = self.buf[self.start : self.end]
        self.buf = new
        self.start, self.end = 0, avail

    def fill_greedy(self, target: int) -> None:
        """Take what the socket already holds, up to `target` bytes available, never blocking:
        bulk parsing then works on long runs instead of whatever one recv() returned."""
        fileno = getattr(self.src, "fileno", None)
        if fileno is None:
            return
        while self.end - self.start < target:
            pending = bytearray(4)
            fcntl.ioctl(fileno(), termios.FIONREAD, pending)
            k = min(int.from_bytes(pending, sys.byteorder), target - (self.end - self.start))
            if k <= 0:
                return
            self._room(k)
            got = self.src.recv_into(self.buf[self.end : self.end + k])
            if not got:
                return
            self.end += got

    def detach(self) -> list[np.ndarray]:
        """Hand over the buffers used so far (an epoch's pages are views into them); reading
        goes on in a fresh buffer. Call at an epoch boundary, when little or nothing is left
        unread."""
        used = self.used
        self.arr = self.pool.get(max(self.chunk, self.available()))
        # numpy's stubs declare ndarray.__buffer__ for Python 3.12+ only (3.11 has the protocol)
        new = memoryview(self.arr)  # type: ignore[arg-type]
        n = self.available()
        new[:n] = self.buf[self.start : self.end]
        self.buf, self.start, self.end, self.used = new, 0, n, [self.arr]
        return used

    def fill_some(self) -> int:
        """Read whatever the source has (at least one byte) without a minimum; returns count."""
        before = self.available()
        self.fill(before + 1)
        return self.available() - before

    def take(self, n: int) -> memoryview:
        """A view of the next n bytes (the buffer is never reused, so it stays valid)."""
        self.fill(n)
        v = self.buf[self.start : self.start + n]
        self.start += n
        self.consumed += n
        return v

    def skip(self, n: int) -> None:
        """Consume n bytes that are already available (after peek_array)."""
        if n > self.available():
            raise ValueError(f"skip({n}) with {self.available()} bytes available")
        self.start += n
        self.consumed += n

    def unread(self, n: int) -> None:
        """Give back the last n bytes consumed (they are still in the buffer)."""
        if n > self.start:
            raise ValueError(f"unread({n}): only {self.start} bytes are still buffered")
        self.start -= n
        self.consumed -= n

    def peek_array(self, n: int) -> np.ndarray:
        """The next n available bytes as a uint8 array view, not consumed."""
        if n > self.available():
            raise ValueError(f"peek_array({n}) with {self.available()} bytes available")
        return self.arr[self.start : self.start + n]

    def bytes(self, n: int) -> bytes:
        return bytes(self.take(n))

    def u8(self) -> int:
        self.fill(1)
        v = self.buf[self.start]
        self.start += 1
        self.consumed += 1
        return v

    def peek_u8(self) -> int:
        self.fill(1)
        return self.buf[self.start]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def idstr(self) -> str:
        n = self.u8()
        raw = self.bytes(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise StreamError(f"non-ASCII id string {raw!r} at offset {self.offset - n}") from None

