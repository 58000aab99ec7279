"""Disk resync: which blocks a rejoining standby gets, on real sparse images and through the
disk server, including the old primary's writes of its last, unfinished epoch."""

import os
import subprocess

import numpy as np
import pytest

from remusdb.checkpoint import wire
from remusdb.checkpoint.participant import Welcome
from remusdb.checkpoint.participants import DiskLog
from remusdb.checkpoint.wire import WireError
from remusdb.disk.image import pwrite_all
from remusdb.disk.server import DiskServer
from remusdb.disk.writelog import DATA
from remusdb.reprotect import resync

SIZE = 64 << 20


def image(path, size=SIZE):
    with open(path, "wb") as f:
        f.truncate(size)
    return os.open(path, os.O_RDWR)


def test_digests_of_holes_and_data(tmp_path):
    fd = image(tmp_path / "a.raw")
    pwrite_all(fd, b"x" * 8192, 4096 * 10)
    d = resync.digests(fd, SIZE)
    assert len(d) == SIZE // 4096
    assert np.count_nonzero(d != resync.ZERO_DIGEST) == 2
    assert set(np.flatnonzero(d != resync.ZERO_DIGEST)) == {10, 11}


def test_runs_coalesce_and_cut():
    blocks = np.array([1, 2, 3, 7, 9, 10], np.int64)
    assert list(resync.runs(blocks)) == [(1, 3), (7, 1), (9, 2)]
    assert list(resync.runs(np.arange(5), max_blocks=2)) == [(0, 2), (2, 2), (4, 1)]
    assert list(resync.runs(np.empty(0, np.int64))) == []


def test_digests_of_another_size_are_refused():
    with pytest.raises(ValueError, match="digests of 3 blocks for a disk of 4"):
        resync.differing(np.zeros(4, np.uint64), np.zeros(3, np.uint64))


def qemu_io(server, *cmds):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    r = subprocess.run(args + [f"nbd+unix:///disk?socket={server.socket_path}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_resync_sends_what_either_side_wrote_since_they_parted(tmp_path):
    """Both disks equal at the last committed checkpoint. Then the old primary wrote its
    unfinished epoch (blocks the standby never got) and died; the standby failed over and its
    VM wrote more through the disk server. The resync must send both sets, and no more."""
    base = os.urandom(2 << 20)
    new_primary, old_primary = tmp_path / "b.raw", tmp_path / "a.raw"
    for p in (new_primary, old_primary):
        fd = image(p)
        pwrite_all(fd, base, 8 << 20)
        os.close(fd)
    fd_a = os.open(old_primary, os.O_RDWR)
    pwrite_all(fd_a, b"u" * 4096 * 3, 30 << 20)  # the old primary's last, unfinished epoch
    server = DiskServer(new_primary, tmp_path / "disk.sock", "lin")
    server.start()
    try:
        qemu_io(server, "write -P 0x5a 4096 8192", f"write -P 0x11 {9 << 20} 4096",
                f"write -z {40 << 20} 4096")
        changed = int(server.changed.sum())
        assert changed == 4  # blocks the new primary wrote since it started serving
        log = DiskLog(server)
        log.on_welcome(Welcome({"disk": "resync"}, resync.digests(fd_a, SIZE)))
        frames = []
        log.on_seed(frames.append)
        seed = log.seed
        assert seed["path"] == "resync" and seed["changed_bytes"] == 4 * 4096
        # The zeroed block was a hole on both: equal, not sent. The other 3 + the old
        # primary's 3.
        assert seed["differing_blocks"] == 6
        assert seed["sent_bytes"] == 6 * 4096 <= 2 * (changed + 3) * 4096
        # Applying what was sent makes the old primary's disk the new primary's.
        for parts in frames:
            payload = b"".join(bytes(p) for p in parts[1:])
            kinds, offsets, lengths, data = wire.unpack_disk(payload, SIZE)
            at = 0
            for k, off, n in zip(kinds.tolist(), offsets.tolist(), lengths.tolist(),
                                 strict=True):
                assert k == DATA
                pwrite_all(fd_a, data[at:at + n], off)
                at += n
        assert np.array_equal(resync.digests(fd_a, SIZE), resync.digests(server.fd, SIZE))
    finally:
        server.close()
        os.close(fd_a)


def test_without_digests_the_whole_disk_goes_and_says_why(tmp_path):
    os.close(image(tmp_path / "b.raw"))
    server = DiskServer(tmp_path / "b.raw", tmp_path / "disk.sock")
    pwrite_all(server.fd, b"d" * 8192, 0)
    log = DiskLog(server)
    log.on_welcome(Welcome({"disk": "full", "why": "this host has no disk of this VM"}))
    frames = []
    log.on_seed(frames.append)
    assert log.seed["path"] == "full" and log.seed["why"] == "this host has no disk of this VM"
    assert log.seed["sent_bytes"] == 8192


def test_lying_digests_end_the_session_as_the_peers_fault(tmp_path):
    image(tmp_path / "b.raw")
    server = DiskServer(tmp_path / "b.raw", tmp_path / "disk.sock")
    log = DiskLog(server)
    log.on_welcome(Welcome({"disk": "resync"}, np.zeros(5, np.uint64)))
    with pytest.raises(WireError, match="disk resync: digests of 5 blocks"):
        log.on_seed(lambda parts: None)


def test_digests_of_extents_off_the_4k_grid(tmp_path, monkeypatch):
    """A file system with 1 KiB blocks reports extents that do not start on 4 KiB: every
    4 KiB block they touch is hashed whole (it raised, or hashed misaligned windows)."""
    fd = image(tmp_path / "a.raw")
    pwrite_all(fd, b"q" * 1024, 4096 * 5 + 2048)
    monkeypatch.setattr(resync, "data_extents", lambda fd, size, chunk: [(4096 * 5 + 2048,
                                                                         1024)])
    d = resync.digests(fd, SIZE)
    import xxhash
    assert d[5] == xxhash.xxh3_64_intdigest(os.pread(fd, 4096, 4096 * 5))
    assert np.count_nonzero(d != resync.ZERO_DIGEST) == 1


def test_a_standby_cannot_make_the_primary_hold_more_digests_than_blocks():
    import socket as sk

    from remusdb.checkpoint import handshake
    a, b = sk.socketpair()
    ca, cb = wire.Connection(a), wire.Connection(b)
    try:
        cb.send(wire.encode_json(wire.Kind.WELCOME, 0, {"disk": "resync",
                                                         "digest_frames": 1024}))
        with pytest.raises(WireError, match="announces 1024 digest frames for 2048 blocks"):
            handshake.read_welcome(ca, 8 << 20)
        cb.send(wire.encode_json(wire.Kind.WELCOME, 0, {"disk": "resync", "digest_frames": 1}))
        cb.send(wire.encode(wire.Kind.DIGESTS, 0, wire.pack_digests(np.zeros(4096, np.uint64))))
        with pytest.raises(WireError, match="more than 2048 block digests"):
            handshake.read_welcome(ca, 8 << 20)
    finally:
        a.close()
        b.close()
