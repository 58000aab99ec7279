"""The disk server with QEMU's own NBD client (qemu-io), the NBD rules, and DISK frames through
the standby store (journal, replay, lies)."""

import errno
import os
import socket
import struct
import subprocess

import numpy as np
import pytest

from remusdb.checkpoint import wire
from remusdb.checkpoint.encode import disk_frames
from remusdb.checkpoint.epoch import Epoch, EpochError, StreamInfo, add_frame
from remusdb.checkpoint.store import StandbyStore
from remusdb.checkpoint.stream import PAGE_SIZE, Configuration, RamBlock
from remusdb.disk import nbd
from remusdb.disk.image import data_extents
from remusdb.disk.server import DiskServer
from remusdb.disk.writelog import DATA, ZERO, DiskWrite

SIZE = 64 << 20


@pytest.fixture
def server(tmp_path):
    img = tmp_path / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(SIZE)
    s = DiskServer(img, tmp_path / "disk.sock")
    s.start()
    s.writes.start()
    yield s
    s.close()


def qemu_io(server, *cmds):
    url = f"nbd+unix:///disk?socket={server.socket_path}"
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_qemu_writes_reads_zeroes_and_the_epoch_log(server):
    out = qemu_io(server, "write -P 0xab 4096 65536", "read -P 0xab 4096 65536",
                  "write -P 0xcd 1048576 8192", "write -z 1048576 4096", "flush",
                  "read -P 0 1048576 4096", "read -P 0xcd 1052672 4096")
    assert "Pattern verification failed" not in out
    writes = server.writes.cut()
    assert [(w.kind, w.offset, w.length) for w in writes] == [
        (DATA, 4096, 65536), (DATA, 1048576, 8192), (ZERO, 1048576, 4096)]
    assert writes[0].data == b"\xab" * 65536
    assert server.writes.cut() == []  # the next epoch starts empty
    assert server.writes.touched == {0, 1}
    with open(server.image, "rb") as f:
        f.seek(4096)
        assert f.read(65536) == b"\xab" * 65536
    assert server.stats["flushes"] >= 1 and server.stats["reads"] == 3


def test_requests_past_the_end_are_refused_and_logged_nowhere(server):
    r = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 1 {SIZE - 4096} 8192",
                        f"nbd+unix:///disk?socket={server.socket_path}"],
                       capture_output=True, text=True, timeout=60)
    assert "write failed" in r.stdout + r.stderr or r.returncode != 0
    assert server.writes.cut() == []


def raw_client(server):
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(server.socket_path))
    assert s.recv(18, socket.MSG_WAITALL) == nbd.server_hello()
    s.sendall(struct.pack(">I", nbd.FLAG_C_FIXED_NEWSTYLE | nbd.FLAG_C_NO_ZEROES))
    name = b"disk"
    s.sendall(nbd.OPTION.pack(nbd.IHAVEOPT, nbd.OPT_EXPORT_NAME, len(name)) + name)
    size, flags = struct.unpack(">QH", s.recv(10, socket.MSG_WAITALL))
    assert size == SIZE and flags & nbd.TF_SEND_FLUSH
    return s


def test_a_bad_request_gets_an_errno_and_a_broken_one_ends_the_connection(server):
    s = raw_client(server)
    s.sendall(nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, nbd.CMD_READ, 7, SIZE, 4096))
    magic, err, handle = nbd.REPLY.unpack(s.recv(16, socket.MSG_WAITALL))
    assert (magic, err, handle) == (nbd.SIMPLE_REPLY_MAGIC, errno.EINVAL, 7)
    # A refused write's payload is still read: the next request is understood.
    s.sendall(nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, 8, SIZE - 512, 4096)
              + b"w" * 4096 + nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, nbd.CMD_FLUSH, 9, 0, 0))
    assert nbd.REPLY.unpack(s.recv(16, socket.MSG_WAITALL))[1:] == (errno.ENOSPC, 8)
    assert nbd.REPLY.unpack(s.recv(16, socket.MSG_WAITALL))[1:] == (0, 9)
    assert server.writes.cut() == []
    s.sendall(b"\x00" * 28)  # not a request
    assert s.recv(16) == b""  # the server hangs up: NBD cannot resynchronize
    s.close()


def test_nbd_rules():
    assert nbd.parse_go(struct.pack(">I", 4) + b"disk" + struct.pack(">HH", 1, 0)) == "disk"
    with pytest.raises(ValueError):
        nbd.parse_go(struct.pack(">I", 40) + b"disk")
    req = nbd.Request(0, nbd.CMD_WRITE, 1, 0, nbd.MAX_REQUEST + 1)
    assert nbd.check(req, 1 << 40) == errno.EOVERFLOW
    assert nbd.check(nbd.Request(0, nbd.CMD_FLUSH, 1, 0, 0), 10) == 0
    assert nbd.check(nbd.Request(0, 99, 1, 0, 0), 10) == errno.EINVAL


def test_data_extents_skip_holes(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.truncate(32 << 20)
        f.seek(8 << 20)
        f.write(b"x" * 4096)
    fd = os.open(p, os.O_RDONLY)
    try:
        ext = list(data_extents(fd, 32 << 20))
    finally:
        os.close(fd)
    assert sum(n for _, n in ext) < 1 << 20 and any(o <= 8 << 20 < o + n for o, n in ext)


INFO = StreamInfo(Configuration("pc-i440fx-7.2"), [RamBlock("ram0", 16 * PAGE_SIZE)], 2, 4,
                  "ram0")


def disk_epoch(n, writes):
    e = Epoch(n)
    for hdr, payload in disk_frames(n, writes):
        f = wire.Frame(wire.Kind.DISK, n, payload, 0, hdr)
        add_frame(e, f)
        e.frames.append([hdr, payload])
    hdr, payload = wire.encode(wire.Kind.DEVICES, n, b"dev")
    add_frame(e, wire.Frame(wire.Kind.DEVICES, n, payload, 0, hdr))
    e.frames.append([hdr, payload])
    return e


def test_store_applies_disk_writes_with_the_epoch_and_replays_them(tmp_path):
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "sess", disk_size=SIZE)
    st.apply(disk_epoch(0, [DiskWrite(DATA, 0, 8192, b"a" * 8192)]))
    e1 = disk_epoch(1, [DiskWrite(DATA, 4096, 4096, b"b" * 4096), DiskWrite(ZERO, 0, 4096),
                        DiskWrite(DATA, 4096, 512, b"c" * 512)])
    st.journal(e1)
    st.close()  # killed before applying: the journal is committed
    again = StandbyStore(tmp_path / "s")
    again.open()
    assert again.committed == 1
    data = os.pread(again.disk_fd, 8192, 0)
    assert data == b"\0" * 4096 + b"c" * 512 + b"b" * 3584  # in order, zero included


def test_disk_records_that_lie_are_refused(tmp_path):
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "sess", disk_size=SIZE)
    beyond = b"".join(wire.pack_disk([DATA], [SIZE - 512], [4096], [b"x" * 4096]))
    with pytest.raises(wire.WireError, match="beyond the end of the disk"):
        st.check_disk(beyond)
    short = b"".join(wire.pack_disk([DATA], [0], [4096], [b"x" * 100]))
    with pytest.raises(wire.WireError, match="records need"):
        st.check_disk(short)
    odd = b"".join(wire.pack_disk([7], [0], [0], []))
    with pytest.raises(wire.WireError, match="unknown kind"):
        st.check_disk(odd)
    nodisk = StandbyStore(tmp_path / "n")
    nodisk.create(INFO, "sess")
    with pytest.raises(EpochError, match="announced no disk"):
        nodisk.check_disk(beyond)
    assert np.all(np.frombuffer(os.pread(st.disk_fd, 4096, SIZE - 4096), np.uint8) == 0)


def test_page_references_resolve_against_the_disk_of_the_same_checkpoint(tmp_path):
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "sess", disk_size=SIZE)
    st.apply(disk_epoch(0, [DiskWrite(DATA, 3 * PAGE_SIZE, PAGE_SIZE, b"o" * PAGE_SIZE)]))
    e1 = disk_epoch(1, [DiskWrite(DATA, 3 * PAGE_SIZE, PAGE_SIZE, b"n" * PAGE_SIZE)])
    hdr, payload = wire.encode(wire.Kind.BLOCKREF, 1, wire.pack_refs(
        np.array([0], np.uint16), np.array([5], np.uint64), np.array([3], np.uint64)))
    add_frame(e1, wire.Frame(wire.Kind.BLOCKREF, 1, payload, 0, hdr))
    e1.frames.append([hdr, payload])
    st.journal(e1)
    st.apply(e1)
    assert bytes(st.image(0)[5]) == b"n" * PAGE_SIZE  # the block as of epoch 1, not epoch 0
    with pytest.raises(EpochError, match="beyond the end of the disk"):
        st.check_refs(np.array([0], np.uint16), np.array([1], np.uint64),
                      np.array([SIZE // PAGE_SIZE], np.uint64))


def test_after_protection_ends_writes_are_not_kept(server):
    server.writes.stop()
    qemu_io(server, "write -P 0x11 0 65536")
    assert server.writes.cut() == [] and server.stats["writes"] == 1
