"""The primary's disk server: the guest's disk as an NBD export over a unix socket.

QEMU's virtio-blk reads and writes the raw image through this server, so every write passes
here: it is applied to the local image, then logged for the epoch it belongs to, and only then
acknowledged. At a checkpoint QEMU stops the VM and drains its I/O before it sends
VMSTATE_SEND, so every write acknowledged before then is in the log when the daemon cuts it:
`cut()` returns exactly the closing epoch's writes. Reads are served here too (read tracking
watches them).

One thread per client connection; requests are read in bulk from a reusable buffer and the
replies to a run of pipelined requests go out in one sendmsg.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from remusdb.checkpoint import nbd
from remusdb.checkpoint.wire import recv_into_all
from remusdb.errors import RemusError

EXPORT = "disk"
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

DATA, ZERO = 0, 1


@dataclass
class DiskWrite:
    """One write of an epoch, in the order the server applied it."""

    kind: int  # DATA or ZERO
    offset: int
    length: int
    data: bytes = b""


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


class DiskServer:
    def __init__(self, image: Path, socket_path: Path, log=print):
        self.image, self.socket_path, self.log = Path(image), Path(socket_path), log
        try:
            self.fd = os.open(self.image, os.O_RDWR)
        except OSError as e:
            raise RemusError(f"cannot open disk image {self.image}: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._writes: list[DiskWrite] = []
        self.logging = True
        self.touched: set[int] = set()  # 1 MiB chunks written since start (the disk check)
        self.stats = {"reads": 0, "writes": 0, "read_bytes": 0, "written_bytes": 0,
                      "flushes": 0, "zeroes": 0, "errors": 0}
        self._srv: socket.socket | None = None
        self._closed = threading.Event()
        self.index = None  # RT's BlockIndex, when read tracking is on

    # The epoch log
    def cut(self) -> list[DiskWrite]:
        """The writes applied since the last cut, oldest first."""
        with self._lock:
            writes, self._writes = self._writes, []
        return writes

    def stop_log(self) -> None:
        """Protection ended: nobody cuts the log any more, so stop keeping writes."""
        with self._lock:
            self.logging = False
            self._writes = []

    def _record(self, w: DiskWrite) -> None:
        with self._lock:
            if not self.logging:
                return
            self._writes.append(w)
            self.touched.update(range(w.offset >> 20, ((w.offset + w.length - 1) >> 20) + 1))

    # Serving
    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.socket_path))
        srv.listen(4)
        self._srv = srv
        threading.Thread(target=self._accept, name="nbd-accept", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        if self._srv is not None:
            self._srv.close()
        self.socket_path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="nbd-conn",
                             daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = _Conn(sock)
        try:
            if self._handshake(conn):
                self._transmit(conn)
        except (nbd.ProtocolError, ValueError, ConnectionError) as e:
            self.log(f"disk server: client dropped: {e}")
        except OSError as e:
            self.log(f"disk server: {e}")
        except Exception as e:  # a bug here must not pass silently: the guest's disk is gone
            self.log(f"disk server: internal error, connection closed: {type(e).__name__}: {e}")
            raise
        finally:
            sock.close()

    def _handshake(self, conn: _Conn) -> bool:
        """Option haggling until GO (or EXPORT_NAME); False if the client aborts."""
        conn.sock.sendall(nbd.server_hello())
        cflags = int.from_bytes(conn.take(4), "big")
        if not cflags & nbd.FLAG_C_FIXED_NEWSTYLE:
            raise nbd.ProtocolError("client does not speak fixed newstyle")
        while True:
            magic, option, length = nbd.OPTION.unpack(conn.take(nbd.OPTION.size))
            if magic != nbd.IHAVEOPT:
                raise nbd.ProtocolError("bad option magic")
            if length > 1 << 16:
                raise nbd.ProtocolError(f"option of {length} bytes")
            data = conn.take(length)
            if option == nbd.OPT_EXPORT_NAME:
                tail = b"" if cflags & nbd.FLAG_C_NO_ZEROES else bytes(124)
                conn.sock.sendall(self.size.to_bytes(8, "big")
                                  + nbd.TRANSMISSION_FLAGS.to_bytes(2, "big") + tail)
                return True
            if option == nbd.OPT_ABORT:
                conn.sock.sendall(nbd.option_reply(option, nbd.REP_ACK))
                return False
            if option in (nbd.OPT_GO, nbd.OPT_INFO):
                try:
                    name = nbd.parse_go(data)
                except ValueError:
                    conn.sock.sendall(nbd.option_reply(option, nbd.REP_ERR_INVALID))
                    continue
                if name not in ("", EXPORT):
                    conn.sock.sendall(nbd.option_reply(option, nbd.REP_ERR_UNKNOWN))
                    continue
                out = [nbd.option_reply(option, nbd.REP_INFO, i) for i in nbd.export_info(
                    self.size)]
                conn.sock.sendall(b"".join(out + [nbd.option_reply(option, nbd.REP_ACK)]))
                if option == nbd.OPT_GO:
                    return True
            elif option == nbd.OPT_LIST:
                name = EXPORT.encode()
                conn.sock.sendall(nbd.option_reply(option, nbd.REP_SERVER,
                                                   len(name).to_bytes(4, "big") + name)
                                  + nbd.option_reply(option, nbd.REP_ACK))
            else:  # structured replies, meta contexts, TLS: not offered
                conn.sock.sendall(nbd.option_reply(option, nbd.REP_ERR_UNSUP))

    def _transmit(self, conn: _Conn) -> None:
        fd, size, stats = self.fd, self.size, self.stats
        while True:
            if not conn.ready(nbd.REQUEST.size):
                conn.flush()  # nothing more buffered: answer what has been done, then wait
            req = nbd.parse_request(conn.take(nbd.REQUEST.size))
            err = nbd.check(req, size)
            if req.type == nbd.CMD_WRITE:
                if not conn.ready(req.length):
                    conn.flush()
                if req.length > nbd.MAX_REQUEST:  # would have to be read to stay in step
                    raise nbd.ProtocolError(f"write of {req.length} bytes")
                data = conn.take(req.length)  # read even when refused: stay in step
                index = self.index
                with self._write_lock:  # image and log in the same order, whatever the client
                    if not err and index is not None:
                        index.written(req.offset, req.length)  # before the data changes
                    if not err:
                        err = self._io(pwrite_all, fd, data, req.offset)
                    if not err:
                        if index is not None:
                            index.saw(req.offset, data)
                        self._record(DiskWrite(DATA, req.offset, len(data), data))
                    stats["writes"] += 1
                    stats["written_bytes"] += len(data)
                    if req.flags & nbd.CMD_FLAG_FUA:
                        err = self._io(os.fdatasync, fd)
                conn.reply(req.handle, err)
            elif req.type == nbd.CMD_READ:
                if err:
                    conn.reply(req.handle, err)
                    continue
                try:
                    if req.length >= 1 << 16:  # large: into a reused buffer, sent at once
                        view = conn.read_buffer(req.length)
                        n = os.preadv(fd, [view], req.offset)
                        data = view[:n]
                    else:
                        data = os.pread(fd, req.length, req.offset)
                except OSError as e:
                    conn.reply(req.handle, e.errno or errno.EIO)
                    continue
                if len(data) < req.length:  # past the end of a file that shrank
                    conn.reply(req.handle, errno.EIO)
                    continue
                stats["reads"] += 1
                stats["read_bytes"] += len(data)
                if self.index is not None:
                    self.index.saw(req.offset, data)
                conn.reply(req.handle, 0, data)
                if isinstance(data, memoryview):
                    conn.flush()  # before the buffer is reused
            elif req.type == nbd.CMD_FLUSH:
                stats["flushes"] += 1
                conn.reply(req.handle, err or self._io(os.fdatasync, fd))
            elif req.type in (nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES):
                if not err and req.length:
                    with self._write_lock:
                        if self.index is not None:
                            self.index.written(req.offset, req.length)
                        err = self._io(zero_range, fd, req.offset, req.length)
                        if not err:
                            self._record(DiskWrite(ZERO, req.offset, req.length))
                        stats["zeroes"] += 1
                        if req.flags & nbd.CMD_FLAG_FUA:
                            err = self._io(os.fdatasync, fd)
                conn.reply(req.handle, err)
            elif req.type == nbd.CMD_DISC:
                conn.flush()
                return
            else:
                conn.reply(req.handle, err or errno.EINVAL)

    def _io(self, fn, *args) -> int:
        try:
            fn(*args)
            return 0
        except OSError as e:
            self.stats["errors"] += 1
            return e.errno or errno.EIO


class _Conn:
    """A client socket with a reusable receive buffer and a batch of pending replies."""

    def __init__(self, sock: socket.socket, size: int = 4 << 20):
        self.sock = sock
        self.buf = bytearray(size)
        self.start = self.end = 0
        self.out: list[bytes] = []
        self._rbuf = bytearray(0)

    def read_buffer(self, n: int) -> memoryview:
        if len(self._rbuf) < n:
            self._rbuf = bytearray(n)
        return memoryview(self._rbuf)[:n]

    def ready(self, n: int) -> bool:
        return self.end - self.start >= n

    def take(self, n: int) -> bytes | bytearray:
        """The next n bytes (blocking for them). A large payload is received straight into its
        own buffer: no compaction of the receive buffer, one copy fewer."""
        have = self.end - self.start
        if have < n and n > len(self.buf) // 4:
            out = bytearray(n)
            out[:have] = memoryview(self.buf)[self.start : self.end]
            self.start = self.end = 0
            recv_into_all(self.sock, memoryview(out), have)
            return out
        if have < n:
            self._fill(n)
        b = bytes(memoryview(self.buf)[self.start : self.start + n])
        self.start += n
        return b

    def _fill(self, n: int) -> None:
        have = self.end - self.start
        self.buf[:have] = self.buf[self.start : self.end]
        self.start, self.end = 0, have
        view = memoryview(self.buf)
        while self.end < n:  # at least n, as much as is there
            k = self.sock.recv_into(view[self.end :])
            if k == 0:
                raise ConnectionError("peer closed the connection")
            self.end += k

    def reply(self, handle: int, error: int, data: bytes = b"") -> None:
        self.out.append(nbd.simple_reply(handle, error))
        if data:
            self.out.append(data)
        if len(self.out) > 64:
            self.flush()

    def flush(self) -> None:
        """Send the pending replies with one sendmsg (no joining copy of read data)."""
        parts, self.out = self.out, []
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = memoryview(parts[0])[sent:]
