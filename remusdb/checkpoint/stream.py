"""QEMU 7.2 migration stream and COLO messages, as pure code: bytes in, records out (and back).

Formats follow QEMU's migration/savevm.c, ram.c and colo.c (v7.2). Only what a COLO primary sends
with the capabilities remusdb enables is accepted; anything else (XBZRLE, compressed pages,
unknown sections) is a StreamError naming the offset, never a silently wrong image.

Pages are copied out of the receive buffer into one contiguous (n, 4096) array per epoch, in bulk
where records run back to back (`PAGE|CONTINUE` every 4104 bytes), so the receiver costs well
under a microsecond per page and later stages (compression, hashing) get a vectorizable array.
"""

from __future__ import annotations

import collections
import enum
import fcntl
import json
import struct
import sys
import termios
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from remusdb.errors import RemusError

PAGE_SIZE = 4096
MAGIC, VERSION = 0x5145564D, 3

VM_EOF, SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL = 0x00, 0x01, 0x02, 0x03, 0x04
SUBSECTION, VMDESCRIPTION, CONFIGURATION, COMMAND, FOOTER = 0x05, 0x06, 0x07, 0x08, 0x7E
MIG_CMD_ENABLE_COLO = 8

F_ZERO, F_MEM_SIZE, F_PAGE, F_EOS, F_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
F_XBZRLE, F_COMPRESS = 0x40, 0x100
_FLAG_MASK = PAGE_SIZE - 1
_PAGE_SHIFT = np.uint64(PAGE_SIZE.bit_length() - 1)
_PAGE_RECORD = 8 + PAGE_SIZE
_BULK_MIN, _BULK_TARGET = 64 * _PAGE_RECORD, 1024 * _PAGE_RECORD


class Colo(enum.IntEnum):
    CHECKPOINT_READY = 0
    CHECKPOINT_REQUEST = 1
    CHECKPOINT_REPLY = 2
    VMSTATE_SEND = 3
    VMSTATE_SIZE = 4
    VMSTATE_RECEIVED = 5
    VMSTATE_LOADED = 6


class StreamError(RemusError):
    pass


class Truncated(StreamError):
    pass


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
        self.buf = memoryview(self.arr)
        self.buf[: len(data)] = data
        self.start, self.end = 0, len(data)
        self.consumed = 0  # stream offset of self.start, for error messages
        self.chunk = chunk

    @property
    def offset(self) -> int:
        return self.consumed

    def available(self) -> int:
        return self.end - self.start

    def fill(self, n: int) -> None:
        """Make at least n bytes available, reading more from the source as needed.

        Views handed out by take() stay valid: a full buffer is replaced, never reused.
        """
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
        new = memoryview(self.arr)
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
        new = memoryview(self.arr)
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


@dataclass
class RamBlock:
    name: str
    length: int

    @property
    def pages(self) -> int:
        return self.length // PAGE_SIZE


class PageSet:
    """The RAM records of one epoch: full pages and zero-filled pages.

    While the VM is paused, runs of pages are kept as views into the receive buffers (no copy);
    the first view()/latest() — after the VM has resumed — copies them into one contiguous
    (n, 4096) array and lets the buffers go. Within a checkpoint QEMU sends a page at most once,
    but the initial precopy phase resends pages dirtied meanwhile, possibly as a ZERO record
    after a PAGE or back: `latest()` keeps the last record of each page.
    """

    def __init__(self):
        self.n = 0
        self.seq = 0  # records so far, pages and zeros alike
        self._runs: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # block, idx, data, seq
        self._zeros: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        self.zero_count = 0
        self._flat: tuple[np.ndarray, ...] | None = None
        self._owned: tuple[BufferPool, list[np.ndarray]] | None = None

    def own(self, pool: BufferPool, buffers: list[np.ndarray]) -> None:
        """The receive buffers its page runs view: back to the pool once copied out."""
        self._owned = (pool, buffers)

    def add_pages(self, block: int, indexes: np.ndarray, pages: np.ndarray) -> None:
        """pages: an (n, 4096) array or view that stays unchanged until view()."""
        if self._flat is not None:
            raise RuntimeError("PageSet already materialized")
        self._runs.append((block, np.asarray(indexes, np.uint64), pages, self.seq))
        self.n += len(indexes)
        self.seq += len(indexes)

    def add_zeros(self, block: int, indexes: np.ndarray, fills: np.ndarray) -> None:
        k = len(indexes)
        self._zeros.append((block, np.array(indexes, np.uint64), np.array(fills, np.uint8),
                            np.arange(self.seq, self.seq + k)))
        self.zero_count += k
        self.seq += k

    def _materialize(self) -> tuple[np.ndarray, ...]:
        if self._flat is None:
            block = np.empty(self.n, np.uint16)
            index = np.empty(self.n, np.uint64)
            order = np.empty(self.n, np.int64)
            data = np.empty((self.n, PAGE_SIZE), np.uint8)
            at = 0
            for b, idx, pages, seq in self._runs:
                k = len(idx)
                block[at : at + k] = b
                index[at : at + k] = idx
                order[at : at + k] = np.arange(seq, seq + k)
                data[at : at + k] = pages
                at += k
            self._flat = (block, index, data, order)
            self._runs = []
            if self._owned is not None:
                pool, buffers = self._owned
                self._owned = None
                pool.put(buffers)
        return self._flat

    @property
    def pages(self) -> int:
        return self.n

    def view(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block, page index, data) of every PAGE record, in stream order."""
        block, index, data, _ = self._materialize()
        return block, index, data

    def zeros(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block, page index, fill byte) of every ZERO record, in stream order."""
        b, i, f, _ = self._zero_arrays()
        return b, i, f

    def _zero_arrays(self):
        if not self._zeros:
            e = np.empty(0, np.uint64)
            return e.astype(np.uint16), e, e.astype(np.uint8), e.astype(np.int64)
        return (np.concatenate([np.full(len(i), b, np.uint16) for b, i, _, _ in self._zeros]),
                np.concatenate([z[1] for z in self._zeros]),
                np.concatenate([z[2] for z in self._zeros]),
                np.concatenate([z[3] for z in self._zeros]))

    def latest(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Rows of view() and entries of zeros() that are each page's last record."""
        zb, zi, zf, zo = self._zero_arrays()
        block, index, _, porder = self._materialize()
        keys = np.concatenate([block.astype(np.uint64) << np.uint64(48) | index,
                               zb.astype(np.uint64) << np.uint64(48) | zi])
        order = np.concatenate([porder, zo])
        if len(keys) == len(np.unique(keys)):
            return np.arange(self.n), (zb, zi, zf)
        srt = np.lexsort((-order, keys))
        first = np.ones(len(srt), bool)
        first[1:] = keys[srt][1:] != keys[srt][:-1]
        keep = np.zeros(len(keys), bool)
        keep[srt[first]] = True
        zkeep = keep[self.n :]
        return np.flatnonzero(keep[: self.n]), (zb[zkeep], zi[zkeep], zf[zkeep])


@dataclass
class Section:
    kind: int
    section_id: int
    idstr: str = ""
    instance_id: int = 0
    version_id: int = 0


def read_section_header(r: Reader, kind: int) -> Section:
    sid = r.u32()
    if kind in (SECTION_START, SECTION_FULL):
        name = r.idstr()
        return Section(kind, sid, name, r.u32(), r.u32())
    return Section(kind, sid)


def read_footer(r: Reader, sid: int) -> None:
    at = r.offset
    if r.u8() != FOOTER or r.u32() != sid:
        raise StreamError(f"bad section footer for section {sid} at offset {at}")


class RamParser:
    """RAM section bodies: MEM_SIZE (block list), PAGE/ZERO records, EOS."""

    def __init__(self, blocks: list[RamBlock] | None = None, ignore_shared: bool = False):
        self.blocks: list[RamBlock] = blocks or []
        self.by_name = {b.name: i for i, b in enumerate(self.blocks)}
        self.ignore_shared = ignore_shared
        self.gpa: dict[str, int] = {}
        self.current: int | None = None

    def _block(self, r: Reader, flags: int, at: int) -> int:
        if flags & F_CONTINUE:
            if self.current is None:
                raise StreamError(f"RAM record at offset {at} continues no block")
            return self.current
        name = r.idstr()
        if name not in self.by_name:
            raise StreamError(f"RAM record at offset {at} names unknown block {name!r}")
        self.current = self.by_name[name]
        return self.current

    def read_body(self, r: Reader, pages: PageSet) -> None:
        while True:
            at = r.offset
            if self.current is not None:
                if r.available() < _BULK_MIN:
                    r.fill_greedy(_BULK_TARGET)
                if self._page_run(r, pages) or self._zero_run(r, pages):
                    continue
            word = r.u64()
            flags, addr = word & _FLAG_MASK, word & ~_FLAG_MASK
            kind = flags & ~F_CONTINUE
            if kind == F_EOS:
                return
            if kind == F_MEM_SIZE:
                self._read_mem_size(r, addr)
            elif kind == F_ZERO:
                b = self._block(r, flags, at)
                self._check_range(np.array([addr // PAGE_SIZE], np.uint64), at)
                pages.add_zeros(b, [addr // PAGE_SIZE], [r.u8()])
            elif kind == F_PAGE:
                b = self._block(r, flags, at)
                self._check_range(np.array([addr // PAGE_SIZE], np.uint64), at)
                data = np.frombuffer(r.take(PAGE_SIZE), np.uint8).reshape(1, PAGE_SIZE)
                pages.add_pages(b, np.array([addr // PAGE_SIZE], np.uint64), data)
            elif kind & (F_XBZRLE | F_COMPRESS):
                raise StreamError(f"RAM record at offset {at}: XBZRLE/compressed pages are not "
                                  "supported (disable those migration capabilities)")
            else:
                raise StreamError(f"RAM record at offset {at}: unknown flags {flags:#x}")

    def _run(self, r: Reader, size: int, want: int) -> tuple[int, np.ndarray, np.ndarray]:
        """How many records of `size` bytes with flags `want` follow back to back in the buffer,
        their page indexes, and a (run, size) view of the records. Plain reshapes and slices:
        this runs once per socket read, so its fixed cost is spread over only the few dozen
        pages one read brings."""
        k = r.available() // size
        if k == 0:
            return 0, None, None
        recs = r.arr[r.start : r.start + k * size].reshape(k, size)
        ok = (recs[:, 7] == (want & 0xFF)) & ((recs[:, 6] & 0x0F) == (want >> 8))
        run = k if ok.all() else int(ok.argmin())
        if run == 0:
            return 0, None, None
        recs = recs[:run]
        idx = np.ascontiguousarray(recs[:, :8]).view(">u8").ravel() >> _PAGE_SHIFT
        self._check_range(idx, r.offset)
        return run, idx, recs

    def _advance(self, r: Reader, n: int) -> None:
        r.start += n
        r.consumed += n

    def _page_run(self, r: Reader, pages: PageSet) -> bool:
        run, idx, recs = self._run(r, _PAGE_RECORD, F_PAGE | F_CONTINUE)
        if run:
            pages.add_pages(self.current, idx, recs[:, 8:])
            self._advance(r, run * _PAGE_RECORD)
        return bool(run)

    def _zero_run(self, r: Reader, pages: PageSet) -> bool:
        run, idx, recs = self._run(r, 9, F_ZERO | F_CONTINUE)
        if run:
            pages.add_zeros(self.current, idx, recs[:, 8])
            self._advance(r, run * 9)
        return bool(run)

    def _check_range(self, idx: np.ndarray, at: int) -> None:
        limit = self.blocks[self.current].pages if self.current is not None else 0
        if len(idx) and idx.max() >= limit:
            raise StreamError(f"RAM record at offset {at}: page beyond the end of block "
                              f"{self.blocks[self.current].name!r}")

    def _read_mem_size(self, r: Reader, total: int) -> None:
        blocks, seen = [], 0
        while seen < total:
            name = r.idstr()
            length = r.u64()
            if self.ignore_shared:
                self.gpa[name] = r.u64()
            if length % PAGE_SIZE or length == 0:
                raise StreamError(f"RAM block {name!r} has bad length {length}")
            blocks.append(RamBlock(name, length))
            seen += length
        if seen != total:
            raise StreamError(f"RAM block lengths add up to {seen}, MEM_SIZE says {total}")
        self.blocks = blocks
        self.by_name = {b.name: i for i, b in enumerate(blocks)}


@dataclass
class Configuration:
    machine: str
    capabilities: list[str] = field(default_factory=list)
    target_page_bits: int | None = None


def read_configuration(r: Reader) -> Configuration:
    n = r.u32()
    cfg = Configuration(r.bytes(n).decode("ascii", "replace"))
    while r.peek_u8() == SUBSECTION:
        r.u8()
        name = r.idstr()
        r.u32()  # version
        if name == "configuration/capabilities":
            cfg.capabilities = [r.idstr() for _ in range(r.u32())]
        elif name == "configuration/target-page-bits":
            cfg.target_page_bits = r.u32()
        elif name == "configuration/uuid":
            r.bytes(16)
        else:
            raise StreamError(f"unknown configuration subsection {name!r}")
    return cfg


@dataclass
class InitialState:
    """Everything a COLO primary sends before its first checkpoint."""

    config: Configuration
    ram_section: Section
    blocks: list[RamBlock]
    pages: PageSet
    devices: bytes  # FULL device sections + EOF, the same format as a checkpoint's device blob
    vmdesc: dict
    colo: bool


def _vmdesc_trailer(buf: bytes | bytearray) -> tuple[int, dict] | None:
    """If buf ends with EOF + VMDESCRIPTION, return (offset of the EOF byte, vmdesc)."""
    tail = bytes(buf[-256 * 1024 :]) if len(buf) > 256 * 1024 else bytes(buf)
    base = len(buf) - len(tail)
    pos = tail.rfind(b'{"page_size"')
    if pos < 6:
        return None
    n = struct.unpack(">I", tail[pos - 4 : pos])[0]
    if tail[pos - 5] != VMDESCRIPTION or tail[pos - 6] != VM_EOF or pos + n != len(tail):
        return None
    try:
        desc = json.loads(tail[pos:])
    except ValueError:
        return None
    if not isinstance(desc, dict) or not isinstance(desc.get("devices"), list):
        return None
    return base + pos - 6, desc


def _check_device_headers(devices: bytes, desc: dict) -> None:
    """Every device the description lists must appear, in order, as a FULL section header."""
    pos = 0
    for dev in desc["devices"]:
        name = dev["name"].encode()
        pat = struct.pack(">B", len(name)) + name + struct.pack(">I", dev["instance_id"])
        hit = devices.find(pat, pos)
        if hit < 5 or devices[hit - 5] != SECTION_FULL:
            raise StreamError(f"device section {dev['name']!r} of the VM description is missing "
                              "from the initial stream")
        pos = hit + len(pat)
    if devices[:1] != bytes([SECTION_FULL]):
        raise StreamError("initial device state does not start with a device section")


def read_initial(r: Reader, ram: RamParser | None = None, max_idle_reads: int = 1 << 30
                 ) -> InitialState:
    """Parse the precopy phase up to the VM description that ends it.

    Device sections carry no length, so their end is found by the rule that the VM description
    (EOF, 0x06, u32 length, JSON) is the last thing the primary sends before it waits for
    CHECKPOINT_READY: the buffer must end with a well-formed trailer whose device list matches the
    section headers in order. A stream that never satisfies it fails at its close or timeout.
    """
    if r.u32() != MAGIC:
        raise StreamError("not a QEMU migration stream (bad magic)")
    if (v := r.u32()) != VERSION:
        raise StreamError(f"unsupported migration stream version {v}")
    config, colo = None, False
    ram = ram if ram is not None else RamParser()  # the caller's: it remembers the last block
    pages = PageSet()
    ram_section: Section | None = None
    while True:
        at = r.offset
        kind = r.u8()
        if kind == CONFIGURATION:
            config = read_configuration(r)
        elif kind == COMMAND:
            cmd, n = r.u16(), r.u16()
            r.bytes(n)
            if cmd == MIG_CMD_ENABLE_COLO:
                colo = True
            else:
                raise StreamError(f"unexpected migration command {cmd} at offset {at}")
        elif kind in (SECTION_START, SECTION_PART, SECTION_END):
            sec = read_section_header(r, kind)
            if kind == SECTION_START:
                if sec.idstr != "ram" or ram_section is not None:
                    raise StreamError(f"unexpected iterative section {sec.idstr!r} at {at}")
                ram_section = sec
            elif ram_section is None or sec.section_id != ram_section.section_id:
                raise StreamError(f"section {sec.section_id} at offset {at} is not RAM")
            ram.read_body(r, pages)
            read_footer(r, sec.section_id)
        elif kind == SECTION_FULL:
            if ram_section is None or config is None:
                raise StreamError(f"device state at offset {at} before RAM/configuration")
            headers_from = at
            break
        else:
            raise StreamError(f"unexpected section type {kind:#x} at offset {at}")
    # Device sections, EOF and the VM description: collect until the trailer rule holds.
    r.start -= 1
    r.consumed -= 1
    collected = bytearray()
    reads = 0
    while True:
        collected += r.take(r.available())
        found = _vmdesc_trailer(collected)
        if found is not None:
            eof_at, desc = found
            devices = bytes(collected[: eof_at + 1])
            _check_device_headers(devices, desc)
            break
        reads += 1
        if reads > max_idle_reads:
            raise StreamError(f"initial stream from offset {headers_from} never ended with a VM "
                              "description")
        r.fill_some()
    return InitialState(config, ram_section, ram.blocks, pages, devices, desc, colo)


def read_live_state(r: Reader, ram: RamParser, ram_sid: int, pages: PageSet) -> None:
    """After VMSTATE_SEND: the RAM END section with the dirty pages, then EOF."""
    at = r.offset
    kind = r.u8()
    if kind != SECTION_END:
        raise StreamError(f"expected the RAM end section at offset {at}, got type {kind:#x}")
    sec = read_section_header(r, kind)
    if sec.section_id != ram_sid:
        raise StreamError(f"section {sec.section_id} at offset {at} is not RAM ({ram_sid})")
    ram.read_body(r, pages)
    read_footer(r, ram_sid)
    if (b := r.u8()) != VM_EOF:
        raise StreamError(f"expected EOF after the RAM section at offset {r.offset - 1}, "
                          f"got {b:#x}")


def read_message(r: Reader, expect: Colo | None = None) -> Colo:
    at = r.offset
    v = r.u32()
    try:
        msg = Colo(v)
    except ValueError:
        raise StreamError(f"unknown COLO message {v} at offset {at}") from None
    if expect is not None and msg != expect:
        raise StreamError(f"expected COLO {expect.name} at offset {at}, got {msg.name}")
    return msg


def message(msg: Colo, value: int | None = None) -> bytes:
    return struct.pack(">I", msg) + (struct.pack(">Q", value) if value is not None else b"")


# Writer: the incoming stream a new QEMU loads at failover.
def _idstr(s: str) -> bytes:
    b = s.encode("ascii")
    return struct.pack(">B", len(b)) + b


def write_configuration(cfg: Configuration) -> bytes:
    name = cfg.machine.encode("ascii")
    out = [bytes([CONFIGURATION]), struct.pack(">I", len(name)), name]
    if cfg.capabilities:
        out += [bytes([SUBSECTION]), _idstr("configuration/capabilities"), struct.pack(">I", 1),
                struct.pack(">I", len(cfg.capabilities)), *(_idstr(c) for c in cfg.capabilities)]
    return b"".join(out)


def write_incoming(config: Configuration, ram_sid: int, ram_version: int,
                   blocks: list[RamBlock], gpa: dict[str, int],
                   pages: Iterable[tuple[int, int, bytes]], devices: bytes) -> bytes:
    """Header, configuration, a RAM start section (MEM_SIZE + given pages + EOS), devices, and an
    empty VM description. With x-ignore-shared the shared-file RAM blocks are not in `pages`:
    QEMU maps them from the standby's RAM image."""
    out = [struct.pack(">II", MAGIC, VERSION), write_configuration(config)]
    out += [bytes([SECTION_START]), struct.pack(">I", ram_sid), _idstr("ram"),
            struct.pack(">II", 0, ram_version)]
    total = sum(b.length for b in blocks)
    out.append(struct.pack(">Q", total | F_MEM_SIZE))
    ignore = "x-ignore-shared" in config.capabilities
    for b in blocks:
        out += [_idstr(b.name), struct.pack(">Q", b.length)]
        if ignore:
            out.append(struct.pack(">Q", gpa.get(b.name, 0)))
    for block, index, data in pages:
        out += [struct.pack(">Q", index * PAGE_SIZE | F_PAGE), _idstr(blocks[block].name), data]
    out += [struct.pack(">Q", F_EOS), bytes([FOOTER]), struct.pack(">I", ram_sid)]
    if devices[-1:] != bytes([VM_EOF]):
        raise StreamError("device state must end with EOF")
    out.append(devices)
    desc = json.dumps({"page_size": PAGE_SIZE, "devices": []}).encode()
    out += [bytes([VMDESCRIPTION]), struct.pack(">I", len(desc)), desc]
    return b"".join(out)
