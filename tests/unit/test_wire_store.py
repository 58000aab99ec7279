"""Wire frames and the standby store, without a VM; the crash tests kill -9 a real process."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from remusdb.checkpoint import wire
from remusdb.checkpoint.epoch import Epoch, EpochError, StreamInfo, add_frame
from remusdb.checkpoint.store import StandbyStore
from remusdb.checkpoint.stream import PAGE_SIZE, Configuration, RamBlock

INFO = StreamInfo(Configuration("pc-i440fx-7.2"), [RamBlock("ram0", 256 * PAGE_SIZE),
                                                   RamBlock("pc.bios", 4 * PAGE_SIZE)], 2, 4,
                  "ram0")


def roundtrip(parts):
    a, b = socket.socketpair()
    wa, wb = wire.Connection(a), wire.Connection(b)
    wa.send(parts)
    return wb.recv()


def test_frames_round_trip_and_pages_codec():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, PAGE_SIZE), np.uint8)
    f = roundtrip(wire.encode(wire.Kind.PAGES, 7, wire.pack_pages(
        np.array([0, 0, 1], np.uint16), np.array([5, 9, 3], np.uint64), data)))
    assert (f.kind, f.epoch) == (wire.Kind.PAGES, 7)
    block, index, got = wire.unpack_pages(f.payload)
    assert list(block) == [0, 0, 1] and list(index) == [5, 9, 3]
    assert np.array_equal(got, data)
    z = wire.unpack_zeros(wire.pack_zeros(np.array([1], np.uint16), np.array([2], np.uint64),
                                          np.array([0], np.uint8)))
    assert [list(x) for x in z] == [[1], [2], [0]]


@pytest.mark.parametrize("offset,match", [(0, "bad frame magic"), (4, "wire version"),
                                          (5, "unknown frame type"), (30, "checksum mismatch"),
                                          (10, "checksum mismatch")])
def test_corrupt_frames_are_rejected(offset, match):
    hdr, payload = wire.encode(wire.Kind.DEVICES, 3, b"device state" * 10)
    raw = bytearray(hdr + payload)
    raw[offset] ^= 0xFF
    a, b = socket.socketpair()
    a.sendall(raw)
    with pytest.raises(wire.WireError, match=match):
        wire.Connection(b).recv()


def test_a_lying_length_is_rejected_before_allocation():
    hdr = wire._HDR.pack(wire.MAGIC, wire.VERSION, wire.Kind.PAGES, 0, 1, 2**31) + bytes(8)
    with pytest.raises(wire.WireError, match="announces 2147483648 bytes"):
        wire.decode_header(hdr)
    with pytest.raises(wire.WireError, match="3 pages need"):
        wire.unpack_pages((3).to_bytes(4, "big") + bytes(10))


def epoch_with(n, pages: dict, devices=b"dev"):
    """pages: {(block, index): fill byte}"""
    e = Epoch(n)
    keys = sorted(pages)
    blocks = np.array([k[0] for k in keys], np.uint16)
    idx = np.array([k[1] for k in keys], np.uint64)
    data = np.stack([np.full(PAGE_SIZE, pages[k], np.uint8) for k in keys])
    for kind, payload in ((wire.Kind.PAGES, wire.pack_pages(blocks, idx, data)),
                          (wire.Kind.DEVICES, devices)):
        hdr, body = wire.encode(kind, n, payload)
        add_frame(e, wire.Frame(kind, n, body))
        e.frames.append([hdr, body])
    return e


def expected(*epochs):
    img = np.zeros((256, PAGE_SIZE), np.uint8)
    for pages in epochs:
        for (b, i), v in pages.items():
            if b == 0:
                img[i] = v
    return img


def test_store_commits_and_rejects_lies(tmp_path):
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "sess")
    p0 = {(0, i): 1 for i in range(256)}
    st.apply(epoch_with(0, p0))
    p1 = {(0, 3): 9, (1, 2): 5}
    e1 = epoch_with(1, p1, b"dev1")
    st.journal(e1)
    st.apply(e1)
    assert st.committed == 1 and st.devices() == b"dev1"
    assert np.array_equal(np.asarray(st.image(0)), expected(p0, p1))
    with pytest.raises(EpochError, match="beyond the end of its RAM block"):
        st.validate(np.array([1], np.uint16), np.array([4], np.uint64))
    with pytest.raises(EpochError, match="page for block 7"):
        st.validate(np.array([7], np.uint16), np.array([0], np.uint64))
    with pytest.raises(EpochError, match="epoch 5 after committed 1"):
        st.journal(epoch_with(5, p1))
    st.close()
    again = StandbyStore(tmp_path / "s")
    again.open()
    assert again.committed == 1
    assert np.array_equal(np.asarray(again.image(0)), expected(p0, p1))


def test_a_retired_journal_is_reused_whole_and_never_replays_an_older_epochs_frames(tmp_path):
    """The next journal overwrites the spare's blocks and cuts it to its own length: a long
    epoch's frames must not survive behind a shorter one's, or a replay would apply them."""
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "s")
    st.apply(epoch_with(0, {(0, i): 1 for i in range(256)}))
    long = {(0, i): 2 for i in range(200)}
    e1 = epoch_with(1, long)
    st.journal(e1)
    st.apply(e1)
    spare = st.journal_dir / "spare.part"
    assert [p.name for p in st.journal_dir.iterdir()] == ["spare.part"]
    inode, size1 = spare.stat().st_ino, spare.stat().st_size
    e2 = epoch_with(2, {(0, 7): 3})
    st.journal(e2)  # committed, not applied: as if killed right after the ACK
    commit = st.journal_dir / "2.commit"
    assert commit.stat().st_ino == inode and not spare.exists()  # the same file, reused
    assert commit.stat().st_size == sum(len(p) for parts in e2.frames for p in parts) < size1
    st.close()
    again = StandbyStore(tmp_path / "s")
    again.open()  # replays 2.commit: page 7 only; pages 0..199 stay at epoch 1's 2
    assert again.committed == 2
    assert np.array_equal(np.asarray(again.image(0)),
                          expected({(0, i): 1 for i in range(256)}, long, {(0, 7): 3}))
    assert [p.name for p in again.journal_dir.iterdir()] == ["spare.part"]


CHILD = r"""
import sys, numpy as np
sys.path.insert(0, {root!r})
from tests.unit.test_wire_store import INFO, epoch_with
from remusdb.checkpoint.store import StandbyStore
st = StandbyStore({path!r})
st.create(INFO, "s")
st.apply(epoch_with(0, {{(0, i): 1 for i in range(256)}}))
e1 = epoch_with(1, {{(0, i): 2 for i in range(256)}}, b"dev1")
{stage}
"""


@pytest.mark.parametrize("stage,committed", [
    # killed while applying a committed epoch: replayed on restart -> epoch 1 exactly
    ("st.journal(e1); print('applying', flush=True); st.stall_apply = 60; st.apply(e1)", 1),
    # killed before the journal was complete: epoch 0 exactly, nothing of epoch 1
    ("import os, time; part = st.journal_dir / '1.part'; part.write_bytes(b'x' * 100);"
     "print('applying', flush=True); time.sleep(60)", 0),
])
def test_standby_killed_mid_apply_keeps_a_whole_checkpoint(tmp_path, stage, committed):
    path = tmp_path / "store"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = CHILD.format(root=root, path=str(path), stage=stage)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "applying"
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    st = StandbyStore(path)
    st.open()
    assert st.committed == committed
    want = np.full((256, PAGE_SIZE), committed + 1, np.uint8)
    assert np.array_equal(np.asarray(st.image(0)), want)
    assert {p.name for p in st.journal_dir.iterdir()} <= {"spare.part"}  # no journal left


def test_compressed_epochs_journal_whole_pages_and_replay_after_a_partial_apply(tmp_path):
    """CPAGES decode against the committed image; the journal holds the decoded pages, so a
    crash halfway through applying them replays to the right image (XOR twice would not)."""
    from remusdb.checkpoint.encode import EpochOut, epoch_frames
    from remusdb.checkpoint.stream import PageSet
    from remusdb.compression.compressor import Compressor

    rng = np.random.default_rng(5)
    ram = rng.integers(0, 256, (256, PAGE_SIZE), np.uint8)
    comp = Compressor("xor-rle", [256, 4], 64)
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "sess")

    def ship(n, idx):
        ps = PageSet()
        ps.add_pages(0, np.array(idx, np.uint64), ram[idx].copy())
        epoch = Epoch(n)
        for hdr, payload in epoch_frames(EpochOut(n, ps, b"dev"), compressor=comp):
            f = wire.Frame(*wire.decode_header(hdr)[:1], n, payload, 0, hdr)
            if f.kind == wire.Kind.CPAGES:
                f = st.decode(f)
            if f.kind != wire.Kind.COMMIT:
                add_frame(epoch, f)
                epoch.frames.append([f.header, f.payload])
        return epoch

    st.apply(ship(0, list(range(256))))
    hot = list(range(0, 256, 4))
    for n in (1, 2):
        for i in hot:
            ram[i, rng.integers(0, PAGE_SIZE, 5)] ^= 0x5A
        e = ship(n, hot)
        st.journal(e)
        if n == 1:
            st.apply(e)
    assert comp.cache.hits == len(hot) and comp.by_codec[3] > 0  # XOR_RLE was used
    journal = (st.journal_dir / "2.commit").read_bytes()
    assert wire.decode_header(journal[: wire.HEADER_SIZE])[0] == wire.Kind.PAGES
    img = st.image(0)
    img[hot[: len(hot) // 2]] = ram[hot[: len(hot) // 2]]  # killed halfway through the apply
    st.close()
    again = StandbyStore(tmp_path / "s")
    again.open()
    assert again.committed == 2
    assert np.array_equal(np.asarray(again.image(0)), ram)


def test_compressed_batch_naming_a_page_outside_ram_is_refused(tmp_path):
    from remusdb.compression import codec

    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "sess")
    payload = codec.encode(np.array([0], np.uint16), np.array([256], np.uint64),
                           np.ones((1, PAGE_SIZE), np.uint8), np.zeros(1, bool),
                           np.empty((0, PAGE_SIZE), np.uint8), "xor-rle")
    hdr, body = wire.encode(wire.Kind.CPAGES, 1, payload)
    with pytest.raises(EpochError, match="beyond the end"):
        st.decode(wire.Frame(wire.Kind.CPAGES, 1, body, 0, hdr))
