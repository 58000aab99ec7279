"""The primary's disk server: the guest's disk as an NBD export over a unix socket.

QEMU's virtio-blk reads and writes the raw image through this server, so every write passes
here: it is applied to the local image, then logged for the epoch it belongs to (`writes`), and
only then acknowledged. Reads are served here too (read tracking watches them).

One thread per client connection; requests are read in bulk from a reusable buffer and the
replies to a run of pipelined requests go out in one sendmsg.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from remusdb.disk import nbd
from remusdb.disk.image import pwrite_all, zero_range
from remusdb.disk.writelog import DATA, ZERO, DiskWrite, WriteLog
from remusdb.errors import RemusError
from remusdb.sockio import recv_into_all

if TYPE_CHECKING:
    from remusdb.readtrack.index import BlockIndex

log = logging.getLogger(__name__)
EXPORT = "disk"


class DiskServer:
    def __init__(self, image: Path, socket_path: Path, lineage: str = ""):
        self.image, self.socket_path = Path(image), Path(socket_path)
        try:
            self.fd = os.open(self.image, os.O_RDWR)
        except OSError as e:
            raise RemusError(f"cannot open disk image {self.image}: {e.strerror}") from None
        self.size = os.fstat(self.fd).st_size
        self._write_lock = threading.Lock()
        self.writes = WriteLog()
        self.stats = {"reads": 0, "writes": 0, "read_bytes": 0, "written_bytes": 0,
                      "flushes": 0, "zeroes": 0, "errors": 0}
        self._srv: socket.socket | None = None
        self._closed = threading.Event()
        self.index: BlockIndex | None = None  # when read tracking is on
        self.lineage = lineage  # which first copy this disk descends from (resync)
        # 4 KiB blocks written since the server started (a failover): what a resync must at
        # least send; the report compares it with what the resync did send.
        self.changed = np.zeros(-(-self.size // 4096), bool)

    # Serving
    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.socket_path))
        srv.listen(4)
        self._srv = srv
        threading.Thread(target=self._accept, name="nbd-accept", daemon=True).start()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._srv is not None:
            self._srv.close()
        self.socket_path.unlink(missing_ok=True)
        # The image's fd stays open: a connection thread may still be answering with it, and
        # a reused fd number would take its writes to another file.

    def _accept(self) -> None:
        srv = self._srv
        assert srv is not None  # start() sets it before it starts this thread
        while not self._closed.is_set():
            try:
                conn, _ = srv.accept()
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
            log.warning("disk server: client dropped: %s", e)
        except OSError as e:
            log.warning("disk server: %s", e)
        except Exception:  # a bug here must not pass silently: the guest's disk is gone
            log.exception("disk server: internal error, connection closed")
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
                export = EXPORT.encode()
                conn.sock.sendall(nbd.option_reply(option, nbd.REP_SERVER,
                                                   len(export).to_bytes(4, "big") + export)
                                  + nbd.option_reply(option, nbd.REP_ACK))
            else:  # structured replies, meta contexts, TLS: not offered
                conn.sock.sendall(nbd.option_reply(option, nbd.REP_ERR_UNSUP))

    def _transmit(self, conn: _Conn) -> None:
        while True:
            if not conn.ready(nbd.REQUEST.size):
                conn.flush()  # nothing more buffered: answer what has been done, then wait
            req = nbd.parse_request(conn.take(nbd.REQUEST.size))
            err = nbd.check(req, self.size)
            if req.type == nbd.CMD_WRITE:
                conn.reply(req.handle, self._write(conn, req, err))
            elif req.type == nbd.CMD_READ:
                self._read(conn, req, err)
            elif req.type == nbd.CMD_FLUSH:
                self.stats["flushes"] += 1
                conn.reply(req.handle, err or self._io(os.fdatasync, self.fd))
            elif req.type in (nbd.CMD_TRIM, nbd.CMD_WRITE_ZEROES):
                conn.reply(req.handle, self._zero(req, err))
            elif req.type == nbd.CMD_DISC:
                conn.flush()
                return
            else:
                conn.reply(req.handle, err or errno.EINVAL)

    def _write(self, conn: _Conn, req: nbd.Request, err: int) -> int:
        if not conn.ready(req.length):
            conn.flush()
        if req.length > nbd.MAX_REQUEST:  # would have to be read to stay in step
            raise nbd.ProtocolError(f"write of {req.length} bytes")
        data = conn.take(req.length)  # read even when refused: stay in step
        index, fd, stats = self.index, self.fd, self.stats
        with self._write_lock:  # image and log in the same order, whatever the client
            if not err and index is not None:
                index.written(req.offset, req.length)  # before the data changes
            if not err:
                err = self._io(pwrite_all, fd, data, req.offset)
            if not err:
                if index is not None:
                    index.saw(req.offset, data)
                self.writes.record(DiskWrite(DATA, req.offset, len(data), data))
                self.changed[req.offset >> 12 : (req.offset + len(data) + 4095) >> 12] = True
            stats["writes"] += 1
            stats["written_bytes"] += len(data)
            if req.flags & nbd.CMD_FLAG_FUA:
                err = self._io(os.fdatasync, fd)
        return err

    def _read(self, conn: _Conn, req: nbd.Request, err: int) -> None:
        if err:
            conn.reply(req.handle, err)
            return
        try:
            if req.length >= 1 << 16:  # large: into a reused buffer, sent at once
                view = conn.read_buffer(req.length)
                n = os.preadv(self.fd, [view], req.offset)
                data: bytes | memoryview = view[:n]
            else:
                data = os.pread(self.fd, req.length, req.offset)
        except OSError as e:
            conn.reply(req.handle, e.errno or errno.EIO)
            return
        if len(data) < req.length:  # past the end of a file that shrank
            conn.reply(req.handle, errno.EIO)
            return
        self.stats["reads"] += 1
        self.stats["read_bytes"] += len(data)
        if self.index is not None:
            self.index.saw(req.offset, data)
        conn.reply(req.handle, 0, data)
        if isinstance(data, memoryview):
            conn.flush()  # before the buffer is reused

    def _zero(self, req: nbd.Request, err: int) -> int:
        if err or not req.length:
            return err
        with self._write_lock:
            if self.index is not None:
                self.index.written(req.offset, req.length)
            err = self._io(zero_range, self.fd, req.offset, req.length)
            if not err:
                self.writes.record(DiskWrite(ZERO, req.offset, req.length))
                self.changed[req.offset >> 12 : (req.offset + req.length + 4095) >> 12] = True
            self.stats["zeroes"] += 1
            if req.flags & nbd.CMD_FLAG_FUA:
                err = self._io(os.fdatasync, self.fd)
        return err

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
        self.out: list[bytes | memoryview] = []
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

    def reply(self, handle: int, error: int, data: bytes | memoryview = b"") -> None:
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
