"""The net relay: the guest NIC's stream socket on one side, the host's tap on the other.

QEMU is the stream server (`-netdev stream,server=on`), so the relay can reconnect without
touching the VM. World→guest frames pass at once, batched into one send; guest→world frames go
through the OutputBuffer. `mark()` is called by the capture thread while the VM is paused: it
first drains what the guest sent before the pause, so those frames belong to the closing epoch
(a frame read later only waits for a later ack: safe). `release()` is called on each ack.

One thread, one epoll; the lock is held while a batch is handled, so mark and release (other
threads) see the buffer between batches. The buffer and socket are reused: no per-frame
allocation except a held frame's copy.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from xxhash import xxh3_64_hexdigest

from remusdb.commitprotect.frames import LENGTH, MAX_FRAME, FramingError, split
from remusdb.commitprotect.outbuf import OutputBuffer
from remusdb.errors import RemusError

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
RX_BATCH = 64  # tap frames gathered into one send to QEMU
TO_GUEST_MAX = 4 << 20  # queued towards a guest that is not reading (paused): beyond, drop

log = logging.getLogger(__name__)


class RelayError(RemusError):
    pass


def open_tap(name: str) -> int:
    """The tap's fd (a persistent tap: hypervisor/tap.py), frames without extra header."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        # No offloads: a QEMU that used this tap before may have left checksum offload on,
        # and without a virtio-net header the guest would get packets with partial checksums.
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as e:
        os.close(fd)
        raise RelayError(f"cannot attach to tap {name}: {e.strerror}") from None
    return fd


def connect_stream(path: Path, timeout: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            s.setblocking(False)
            return s
        except OSError as e:
            s.close()
            if time.monotonic() > deadline:
                raise RelayError(f"cannot connect to the guest NIC's stream {path}: "
                                 f"{e.strerror or e}") from None
            time.sleep(0.05)


class NetRelay:
    def __init__(self, stream: socket.socket, tap_fd: int, buffer: OutputBuffer,
                 trace: Path | None = None):
        self.sock, self.tap, self.buffer = stream, tap_fd, buffer
        # Tests: a line per guest frame (time, p|u|h|r, epoch, xxh3): matched with what a
        # client captured and when the standby committed that epoch.
        self.trace = open(trace, "a", buffering=1 << 16) if trace else None
        # Re-entrant: a signal handler ending protection may interrupt a mark on its thread.
        self.lock = threading.RLock()
        self.rx = bytearray(1 << 20)  # from the guest
        self.rx_view = memoryview(self.rx)
        self.rx_end = 0
        self.to_guest = bytearray()  # not yet accepted by QEMU
        self.tap_buf = bytearray(MAX_FRAME)
        self.tap_view = memoryview(self.tap_buf)
        self.stats = {"to_world": 0, "to_guest": 0, "dropped_to_guest": 0,
                      "dropped_to_world": 0, "fenced_to_world": 0}
        # The witness's lease (witness/keeper.py): False once this host may no longer speak
        # for the VM. Asked before every write, not told by a thread that may run late.
        self.speak: Callable[[], bool] | None = None
        self.error: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="net-relay", daemon=True)

    @classmethod
    def open(cls, stream_path: Path, tap: str, buffer: OutputBuffer, **kw) -> NetRelay:
        fd = open_tap(tap)
        try:
            return cls(connect_stream(stream_path), fd, buffer, **kw)
        except BaseException:
            os.close(fd)
            raise

    def start(self) -> NetRelay:
        self.thread.start()
        return self

    # Called from other threads
    def new_session(self) -> None:
        """A new protection session (epochs count from 0 again): a fresh output buffer. The
        last one was stopped, so nothing is held in it."""
        with self.lock:
            old = self.buffer
            self._to_world(old.stop())
            self.buffer = OutputBuffer(old.cp, old.codepoint)

    def mark(self, epoch: int) -> None:
        with self.lock:
            if self.error is None:  # a dead relay reads nothing more; the epochs still turn
                try:
                    self._from_guest(drain=True)
                except (RelayError, OSError) as e:
                    self.error = e
                    log.error("net relay stopped: %s", e)
            self.buffer.mark(epoch)

    def release(self, acked: int) -> None:
        with self.lock:
            frames = self.buffer.release(acked)
            if self.trace:
                self._trace("r", acked, frames)
            self._to_world(frames)

    def stop_protection(self) -> None:
        with self.lock:
            frames = self.buffer.stop()
            if self.trace:
                self._trace("r", -1, frames)
            self._to_world(frames)

    def drop_held(self) -> None:
        """The VM was stopped for good at a checkpoint (switchover): what it sent after the
        last acknowledged epoch is dropped, never released."""
        with self.lock:
            frames = self.buffer.stop()
            self.stats["dropped_to_world"] += len(frames)
            if self.trace:
                self._trace("d", -1, frames)

    def summary(self) -> dict:
        with self.lock:
            return {**self.buffer.summary(), **self.stats,
                    "error": None if self.error is None else str(self.error)}

    def close(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"x")
        if self.thread.is_alive():
            self.thread.join(5)
        for fd in (self._wake_r, self._wake_w, self.tap):
            os.close(fd)
        self.sock.close()
        if self.trace:
            self.trace.close()

    def _trace(self, how: str, epoch: int, frames) -> None:
        trace = self.trace
        assert trace is not None  # every caller checks self.trace first
        t = f"{time.time():.6f},{how},{epoch},"
        trace.writelines(f"{t}{xxh3_64_hexdigest(f)}\n" for f in frames)
        trace.flush()

    # The relay thread
    def _run(self) -> None:
        ep = select.epoll()
        sock_fd = self.sock.fileno()
        ep.register(sock_fd, select.EPOLLIN)
        ep.register(self.tap, select.EPOLLIN)
        ep.register(self._wake_r, select.EPOLLIN)
        want_out = False
        try:
            while not self._stop:
                for fd, ev in ep.poll():
                    with self.lock:
                        if fd == sock_fd:
                            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                                if not self._from_guest():
                                    raise RelayError("QEMU closed the guest NIC's stream")
                            if ev & select.EPOLLOUT:
                                self._flush_to_guest()
                        elif fd == self.tap:
                            self._from_tap()
                    if (self.to_guest != b"") != want_out:
                        want_out = not want_out
                        ep.modify(sock_fd, select.EPOLLIN | (select.EPOLLOUT if want_out else 0))
        except BaseException as e:  # the daemon reads it: the VM's network is down
            if not self._stop:
                self.error = e
                log.error("net relay stopped: %s", e)
        finally:
            ep.close()

    def _from_guest(self, drain: bool = False) -> bool:
        """Read what the guest sent (all of it when draining); False when QEMU hung up."""
        while True:
            try:
                got = self.sock.recv_into(self.rx_view[self.rx_end:])
            except BlockingIOError:
                return True
            if got == 0:
                return False
            end = self.rx_end + got
            try:
                frames, rest = split(self.rx, 0, end)
            except FramingError as e:
                raise RelayError(str(e)) from None
            buffer, view = self.buffer, self.rx_view
            out = []
            for off, n in frames:
                if buffer.add(view, off, n):
                    out.append(view[off:off + n])
                elif self.trace:
                    self._trace("h", buffer.last_epoch, (view[off:off + n],))
            if self.trace and out:
                self._trace("u" if buffer.protecting else "p", buffer.open.number
                            if buffer.open else -1, out)
            self._to_world(out)
            if rest < end:  # an incomplete frame: keep it at the front
                self.rx[:end - rest] = self.rx[rest:end]
            self.rx_end = end - rest
            if not drain and got < len(self.rx) // 2:
                return True  # let the other side have a turn

    def _to_world(self, frames) -> None:
        if frames and self.speak is not None and not self.speak():
            self.stats["fenced_to_world"] += len(frames)  # never sent: a fenced host is mute
            return
        tap = self.tap
        for f in frames:
            try:
                os.write(tap, f)
            except OSError as e:  # the tap's queue is full or it is down: a lost frame
                if e.errno not in (errno.EAGAIN, errno.EIO, errno.ENOBUFS):
                    raise
                self.stats["dropped_to_world"] += 1
        self.stats["to_world"] += len(frames)

    def _from_tap(self) -> None:
        out = self.to_guest
        for _ in range(RX_BATCH):
            try:
                n = os.readv(self.tap, [self.tap_view])
            except BlockingIOError:
                break
            if len(out) > TO_GUEST_MAX:  # the guest is paused and the queue is long
                self.stats["dropped_to_guest"] += 1
                continue
            out += LENGTH.pack(n)
            out += self.tap_view[:n]
            self.stats["to_guest"] += 1
        self._flush_to_guest()

    def _flush_to_guest(self) -> None:
        if not self.to_guest:
            return
        try:
            sent = self.sock.send(self.to_guest)
        except BlockingIOError:
            return
        del self.to_guest[:sent]
