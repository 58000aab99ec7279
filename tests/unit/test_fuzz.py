"""Property tests of every parser a peer or QEMU feeds.

Valid inputs, mutated (frames re-checksummed, so the mutation reaches the parser behind the
checksum), must end in the project's own error or in success: never another exception, never a
write outside the VM's RAM and disk, never an allocation beyond the parser's bounds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remusdb.checkpoint import handshake, wire
from remusdb.checkpoint import stream as s
from remusdb.checkpoint.colo import ColoEndpoint
from remusdb.checkpoint.epoch import EpochError, StreamInfo
from remusdb.checkpoint.receive import EpochReceiver
from remusdb.checkpoint.store import StandbyStore, StoreError
from remusdb.checkpoint.stream import reader as stream_reader
from remusdb.commitprotect import frames
from remusdb.compression import codec
from remusdb.compression.rle import CodecError
from remusdb.disk import nbd
from remusdb.disk.server import DiskServer
from remusdb.errors import PeerError
from remusdb.reprotect.roles import read_role
from tests.unit import colo_fixtures as fx

P = s.PAGE_SIZE
CASES = settings(max_examples=2000, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**40,
            2**63 - 1, 2**63, 2**64 - 1)
INFO = StreamInfo(s.Configuration("pc-i440fx-7.2"), [s.RamBlock("ram0", 64 * P),
                                                     s.RamBlock("pc.bios", 4 * P)], 2, 4, "ram0")
DISK = 16 * P


class BytesSock:
    """A socket that reads from bytes and swallows what is sent: the parsers' only source."""

    family = socket.AF_UNIX

    def __init__(self, data: bytes):
        self.data, self.at = memoryview(data), 0

    def recv_into(self, view, n: int = 0) -> int:
        k = min(len(view), len(self.data) - self.at)
        view[:k] = self.data[self.at : self.at + k]
        self.at += k
        return k

    def sendall(self, data) -> None:
        pass

    def gettimeout(self):
        return None


def mutate(data, buf: bytes, focus: int | list[int] = 64) -> bytes:
    """1-4 edits of buf: a flipped bit, a byte, an extreme integer in either byte order, a cut,
    an insertion, a truncation. Half of them land in `focus`: the first bytes (headers,
    counts) or a list of offsets (a stream's structure, not its page data)."""
    b = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        if data.draw(st.booleans(), label="anywhere") or not b:
            pos = data.draw(st.integers(0, max(len(b) - 1, 0)), label="at")
        elif isinstance(focus, int):
            pos = data.draw(st.integers(0, max(min(len(b), focus) - 1, 0)), label="at")
        else:
            pos = min(data.draw(st.sampled_from(focus), label="at"), len(b) - 1)
        op = data.draw(st.sampled_from(("flip", "byte", "int", "cut", "insert", "truncate")))
        if op == "flip" and b:
            b[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "byte" and b:
            b[pos] = data.draw(st.integers(0, 255))
        elif op == "int":
            width = data.draw(st.sampled_from((1, 2, 4, 8)))
            v = data.draw(st.sampled_from(EXTREMES)) % (1 << 8 * width)
            b[pos : pos + width] = v.to_bytes(width, data.draw(st.sampled_from(("big", "little"))))
        elif op == "cut":
            del b[pos : pos + data.draw(st.integers(1, 64))]
        elif op == "insert":
            b[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del b[pos:]
    return bytes(b)


def rechecksum(frame: list) -> bytes:
    """A frame whose header and payload were edited, with the checksum made right again."""
    raw = b"".join(bytes(p) for p in frame)
    return _sealed(raw[:20], raw[wire.HEADER_SIZE :])


def _sealed(hdr: bytes, payload: bytes) -> bytes:
    hdr = hdr.ljust(20, b"\0")
    h = xxhash.xxh3_64(hdr)
    h.update(payload)
    return hdr + struct.pack(">Q", h.intdigest()) + payload


def mutate_frames(data, frames_: list[list]) -> bytes:
    """The frames, some edited (header fields and payload) and re-sealed."""
    out = []
    for f in frames_:
        if data.draw(st.integers(0, 3), label="edit frame") == 0:
            raw = b"".join(bytes(p) for p in f)
            edited = mutate(data, raw[:20] + raw[wire.HEADER_SIZE :], focus=40)
            out.append(_sealed(edited[:20], edited[20:]))
        else:
            out.append(b"".join(bytes(p) for p in f))
    return b"".join(out)


# A session as the primary sends it: epoch 0 (the full copy), then CPAGES, BLOCKREF, DISK.
def _session() -> list[list]:
    rng = np.random.default_rng(7)
    ram = rng.integers(0, 256, (8, P), np.uint8)
    u16, u64 = np.uint16, np.uint64
    out = [wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()),
           wire.encode(wire.Kind.PAGES, 0, wire.pack_pages(np.zeros(8, u16),
                                                            np.arange(8, dtype=u64), ram)),
           wire.encode(wire.Kind.ZEROS, 0, wire.pack_zeros(np.array([0, 1], u16),
                                                            np.array([9, 0], u64),
                                                            np.array([0, 3], np.uint8))),
           wire.pack_disk([0, 1], [0, 2 * P], [2 * P, P], [rng.bytes(2 * P)]),
           wire.encode(wire.Kind.DEVICES, 0, b"devices-0"),
           wire.encode_json(wire.Kind.COMMIT, 0, {"pages": 8, "zeros": 2, "disk_writes": 2})]
    out[3] = wire.encode(wire.Kind.DISK, 0, b"".join(out[3]))
    new = ram[:4].copy()
    new[:, 100:140] ^= 0x5A
    batch = codec.encode(np.zeros(4, u16), np.arange(4, dtype=u64), new, np.ones(4, bool),
                         new ^ ram[:4], "xor-rle")
    lz = codec.encode(np.zeros(2, u16), np.array([20, 21], u64),
                      rng.integers(0, 4, (2, P), np.uint8), np.zeros(2, bool),
                      np.empty((0, P), np.uint8), "xor-lz4")
    out += [wire.encode(wire.Kind.CPAGES, 1, batch), wire.encode(wire.Kind.CPAGES, 1, lz),
            wire.encode(wire.Kind.BLOCKREF, 1, wire.pack_refs(np.array([0], u16),
                                                             np.array([30], u64),
                                                             np.array([1], u64))),
            wire.encode(wire.Kind.DISK, 1, b"".join(wire.pack_disk([0], [P], [P],
                                                                     [rng.bytes(P)]))),
            wire.encode(wire.Kind.DEVICES, 1, b"devices-1"),
            wire.encode(wire.Kind.HEARTBEAT, 1),
            wire.encode_json(wire.Kind.COMMIT, 1, {"pages": 6, "zeros": 0, "refs": 1,
                                                   "disk_writes": 1}),
            wire.encode(wire.Kind.BYE, 2)]
    return out


SESSION = _session()
FILES = {"meta.json", "devices.bin", "disk.raw", "ram", "journal", "ram/0.img", "ram/1.img"}


def _receive(stream: bytes) -> tuple[object, int]:
    """Feed a byte stream through the standby's frame path into a fresh store, as the daemon
    does; (how it ended, the committed epoch). Checks what must hold whatever the input."""
    root = Path(tempfile.mkdtemp(dir=SCRATCH)) / "store"
    store = StandbyStore(root)
    store.create(None, "s", disk_size=DISK, lineage="L")
    rx = EpochReceiver(store)
    conn = wire.Connection(BytesSock(stream))  # type: ignore[arg-type]
    outcome: object = "end"
    try:
        while True:
            done = rx.feed(conn.recv())
            if done is not None:
                store.journal(done.epoch)
                store.apply(done.epoch)
    except ConnectionError:
        pass
    except PeerError as e:
        outcome = e
    try:
        e = rx.epoch  # what was buffered of an epoch never committed: within its bounds
        # (the frame that broke a bound is still in the epoch the session drops)
        assert e.page_count + e.zero_count + e.ref_count <= store.ram_pages() + 64
        assert e.disk_bytes <= rx.max_disk_bytes() + wire.MAX_PAYLOAD
        assert os.path.getsize(store.disk_path) == DISK
        if store.info is not None:
            for i, b in enumerate(store.info.blocks):
                assert os.path.getsize(store.block_path(i)) == b.length
        files = {str(p.relative_to(root)) for p in root.rglob("*")}
        assert files <= FILES | {f"journal/{n}.commit" for n in range(4)} | {
            "journal/spare.part"}, files
        return outcome, store.committed
    finally:
        store.close()
        shutil.rmtree(root.parent)


def test_the_valid_session_commits_both_epochs():
    outcome, committed = _receive(b"".join(b"".join(bytes(p) for p in f) for f in SESSION))
    assert (outcome, committed) == ("end", 1)


@CASES
@given(st.data())
def test_frames_from_a_lying_primary(data):
    _receive(mutate_frames(data, SESSION))


@CASES
@given(st.data())
def test_frames_reordered_dropped_or_repeated(data):
    runs = data.draw(st.lists(st.tuples(st.integers(0, len(SESSION) - 1), st.integers(1, 20)),
                              max_size=12))
    picks = [0] * data.draw(st.integers(0, 1)) + [i for i, times in runs for _ in range(times)]
    _receive(b"".join(b"".join(bytes(p) for p in SESSION[i]) for i in picks))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                       max_size=4), max_leaves=12)
NASTY = (b"[" * 100_000, b'{"a":' * 50_000, b"Infinity", b'{"x": NaN}', b"1" * 5000,
         b'{"blocks": [["ram0", 1e999]]}', b"\xff\xfe\x00", b"")


@CASES
@given(st.data())
def test_json_payloads(data):
    base = json.dumps(data.draw(st.sampled_from([INFO.to_json(),
                                                 {"session": "s", "disk_size": DISK, "term": 1,
                                                  "resumes": ["a"], "disk_lineage": "L"},
                                                 {"pages": 1, "zeros": 0, "refs": 0}])))
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        payload = mutate(data, base.encode(), focus=len(base))
    elif choice == 1:
        payload = json.dumps(data.draw(JSON)).encode()
    else:
        payload = data.draw(st.sampled_from(NASTY))
    try:
        d = wire.Frame(wire.Kind.HELLO, 0, payload).json()
    except wire.WireError:
        return
    assert isinstance(d, dict)
    try:
        info = StreamInfo.from_json(d)
        assert sum(b.length for b in info.blocks) <= 4 << 40
    except EpochError:
        pass
    store = StandbyStore(Path("/nonexistent"))
    store.committed, store.session = 3, "a"
    assert isinstance(handshake.judge_replace(store, d), str)
    read_role(d)


@CASES
@given(st.data())
def test_record_payloads(data):
    kind = data.draw(st.sampled_from((wire.Kind.PAGES, wire.Kind.ZEROS, wire.Kind.DISK,
                                      wire.Kind.BLOCKREF)))
    f = next(f for f in SESSION if f[0][5] == kind)
    payload = mutate(data, bytes(f[1]))
    try:
        if kind == wire.Kind.PAGES:
            b, i, d = wire.unpack_pages(payload)
            assert len(b) == len(i) == len(d)
        elif kind == wire.Kind.ZEROS:
            b, i, z = wire.unpack_zeros(payload)
            assert len(b) == len(i) == len(z)
        elif kind == wire.Kind.BLOCKREF:
            b, i, d = wire.unpack_refs(payload)
            assert len(b) == len(i) == len(d)
        else:
            kinds, off, n, rest = wire.unpack_disk(payload, DISK)
            assert np.all(off + n <= DISK) and int(n[kinds == 0].sum()) == len(rest)
    except wire.WireError:
        pass


@CASES
@given(st.data())
def test_compressed_batches(data):
    f = data.draw(st.sampled_from([f for f in SESSION if f[0][5] == wire.Kind.CPAGES]))
    payload = mutate(data, bytes(f[1]), focus=codec.codes_offset(4) + 4)
    asked = []

    def base(rows):
        asked.append(rows)
        return np.zeros((len(rows), P), np.uint8)

    try:
        b, i, pages = codec.decode(payload, base)
    except CodecError:
        return
    assert pages.shape == (len(b), P) and len(i) == len(b)
    assert all(len(r) == 0 or int(r.max()) < len(b) for r in asked)


def _journaled_store(root: Path) -> Path:
    """A store with epoch 0 applied and epoch 1 committed in its journal, not applied."""
    store = StandbyStore(root)
    store.create(None, "s", disk_size=DISK, lineage="L")
    rx = EpochReceiver(store)
    for f in SESSION:
        done = rx.feed(wire.Frame(wire.Kind(f[0][5]), struct.unpack_from(">Q", f[0], 8)[0],
                                  b"".join(bytes(p) for p in f[1:]), 0, bytes(f[0])))
        if done is not None:
            store.journal(done.epoch)
            if done.epoch.number == 0:
                store.apply(done.epoch)
    store.close()
    return root / "journal" / "1.commit"


JOURNAL_DIR = Path(tempfile.mkdtemp(prefix="remusdb-fuzz-"))
JOURNAL = _journaled_store(JOURNAL_DIR / "store")


@CASES
@given(st.data())
def test_journal_replay(data):
    frames_, raw, at = [], JOURNAL.read_bytes(), 0
    while at < len(raw):
        n = struct.unpack_from(">I", raw, at + 16)[0]
        frames_.append([raw[at : at + wire.HEADER_SIZE], raw[at + wire.HEADER_SIZE :
                                                              at + wire.HEADER_SIZE + n]])
        at += wire.HEADER_SIZE + n
    root = Path(tempfile.mkdtemp(dir=SCRATCH)) / "store"
    try:
        shutil.copytree(JOURNAL_DIR / "store", root)
        (root / "journal" / "1.commit").write_bytes(mutate_frames(data, frames_))
        store = StandbyStore(root)
        try:
            store.open()
            assert store.committed == 1
        except StoreError:
            pass
        store.close()
        for i, b in enumerate(INFO.blocks):
            assert os.path.getsize(store.block_path(i)) == b.length
        assert os.path.getsize(store.disk_path) == DISK
    finally:
        shutil.rmtree(root.parent)


def _nbd_client() -> bytes:
    name = b"disk"
    go = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    out = [struct.pack(">I", nbd.FLAG_C_FIXED_NEWSTYLE | nbd.FLAG_C_NO_ZEROES),
           nbd.OPTION.pack(nbd.IHAVEOPT, nbd.OPT_GO, len(go)), go]
    for typ, off, n, payload in ((nbd.CMD_WRITE, 4096, 512, b"w" * 512),
                                 (nbd.CMD_READ, 0, 8192, b""), (nbd.CMD_WRITE_ZEROES, 0, 4096, b""),
                                 (nbd.CMD_FLUSH, 0, 0, b""), (nbd.CMD_DISC, 0, 0, b"")):
        out += [nbd.REQUEST.pack(nbd.REQUEST_MAGIC, 0, typ, 7, off, n), payload]
    return b"".join(out)


NBD_CLIENT = _nbd_client()
NBD_DIR = Path(tempfile.mkdtemp(prefix="remusdb-fuzz-nbd-"))
(NBD_DIR / "disk.raw").write_bytes(bytes(DISK))
NBD_SERVER = DiskServer(NBD_DIR / "disk.raw", NBD_DIR / "unused.sock")


@settings(CASES, max_examples=1000)
@given(st.data())
def test_nbd_requests(data):
    stream = mutate(data, NBD_CLIENT, focus=len(NBD_CLIENT))
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=NBD_SERVER._serve, args=(ours,), daemon=True)
    server.start()
    drain = threading.Thread(target=lambda: [None for _ in iter(lambda: theirs.recv(1 << 20),
                                                                b"")], daemon=True)
    drain.start()
    try:
        theirs.sendall(stream)
        theirs.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the server hung up first: allowed
    server.join(10)
    assert not server.is_alive()  # no request makes it hang or wait for more than was sent
    drain.join(10)  # the server closed its end
    theirs.close()
    assert os.path.getsize(NBD_DIR / "disk.raw") == DISK


def test_nbd_requests_never_reach_an_unknown_exception(caplog):
    """The server re-raises bugs (after logging 'internal error'); none may show here."""
    assert "internal error" not in caplog.text


@CASES
@given(st.data())
def test_relay_framing(data):
    eth = bytes(12) + b"\x08\x00" + bytes([0x45, 0xB8]) + bytes(7) + bytes([6]) + bytes(16)
    stream = b"".join(frames.LENGTH.pack(len(f)) + f for f in (eth, eth + bytes(20), b"\x86\xdd"))
    buf = mutate(data, stream, focus=len(stream))
    try:
        got, rest = frames.split(buf, 0, len(buf))
    except frames.FramingError:
        return
    assert rest <= len(buf)
    for off, n in got:
        assert off + n <= len(buf) and n <= frames.MAX_FRAME
        assert -1 <= frames.dscp(buf, off, n) < 64
        frames.flow(buf, off, n)


def _checkpoint_stream() -> tuple[bytes, bytes]:
    records = [("ram0", 0, bytes(range(256)) * 16), ("ram0", 1, 0), ("pc.bios", 2, 5)]
    initial, last = fx.initial_stream(records)
    ck, _ = fx.checkpoint_stream([("ram0", 3, b"\x01" * P), ("ram0", 4, 0)], last)
    return initial, ck


COLO_INITIAL, COLO_CHECKPOINT = _checkpoint_stream()


def _structure(stream: bytes) -> list[int]:
    """Offsets of a stream that are not page data: where its lengths, flags and names are."""
    data = {stream.find(bytes(range(256)) * 16), stream.find(b"\x01" * P)} - {-1}
    return [i for i in range(len(stream)) if not any(d <= i < d + P for d in data)]


COLO_HOT = _structure(COLO_INITIAL), _structure(COLO_CHECKPOINT)


class _BoundedPool(stream_reader.BufferPool):
    def get(self, size: int) -> np.ndarray:
        assert size <= stream_reader.MAX_RECORD + (4 << 20), f"{size}-byte buffer"
        return super().get(size)


@CASES
@given(st.data())
def test_colo_stream(data):
    mutated_initial = data.draw(st.booleans())
    initial = mutate(data, COLO_INITIAL, COLO_HOT[0]) if mutated_initial else COLO_INITIAL
    ck = COLO_CHECKPOINT if mutated_initial else mutate(data, COLO_CHECKPOINT, COLO_HOT[1])
    ram = s.RamParser()
    try:
        init = s.read_initial(s.Reader(data=initial, pool=_BoundedPool(1 << 20)), ram,
                              max_idle_reads=0)
    except s.StreamError:
        assert mutated_initial
        return
    ep = ColoEndpoint(BytesSock(ck + ck))  # type: ignore[arg-type]
    ep.r.pool = _BoundedPool(ep.r.chunk)
    ep.ram, ep.initial = ram, init
    try:
        for _ in range(2):
            c = ep.next_checkpoint()
            assert len(c.devices) <= stream_reader.MAX_RECORD
    except s.StreamError:
        pass
