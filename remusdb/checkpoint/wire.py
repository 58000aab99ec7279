"""Frames between the primary and standby daemons: versioned, epoch-numbered, checksummed.

    header  magic "RDB1" | version u8 | type u8 | flags u16 | epoch u64 | length u32 | xxh3 u64
    payload length bytes

The checksum (xxh3-64) covers the header fields before it and the payload, so a corrupt length
or epoch is caught too. A length above MAX_PAYLOAD is rejected before anything is allocated: a
peer that lies costs one error line, not memory.
"""

from __future__ import annotations

import enum
import json
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from remusdb.errors import PeerError
from remusdb.sockio import recv_into_all

if TYPE_CHECKING:
    from remusdb.checkpoint.link import TlsSocket

MAGIC = b"RDB1"
VERSION = 1
_HDR = struct.Struct(">4sBBHQI")
_SUM = struct.Struct(">Q")
HEADER_SIZE = _HDR.size + _SUM.size
MAX_PAYLOAD = 64 << 20
PAGES_PER_FRAME = 4096  # 16 MiB of page data


class Kind(enum.IntEnum):
    HELLO = 1  # p->s: JSON: session, VM, disk size
    WELCOME = 2  # s->p: JSON, the standby's committed epoch
    PAGES = 3  # p->s: page records of an epoch
    ZEROS = 4  # p->s: zero-filled pages of an epoch
    DEVICES = 5  # p->s: device state blob of an epoch
    COMMIT = 6  # p->s: JSON counts; the epoch is complete
    ACK = 7  # s->p: epoch committed at the standby
    HEARTBEAT = 8  # both ways, between checkpoints
    BYE = 9  # p->s: orderly end of protection, the VM runs on; s->p: so be it, no failover
    VERIFY = 10  # p->s: test mode, xxh3 of every page of the primary's RAM at this epoch
    CPAGES = 11  # p->s: compressed page records of an epoch (compression/codec.py)
    DISK = 12  # p->s: disk writes of an epoch, in the order the disk server applied them
    VERIFY_DISK = 13  # p->s: test mode, xxh3 of every disk chunk written since protection began
    BLOCKREF = 14  # p->s: RT, pages to fill from the standby's disk at this checkpoint
    STREAM = 15  # p->s: JSON description of the VM's RAM blocks (after the disk copy started)
    DIGESTS = 16  # s->p: disk resync, xxh3 of each 4 KiB block of the standby's disk (u64)
    QUERY = 17  # any->node: who are you (answered by ROLE, then the connection closes)
    ROLE = 18  # node->any: JSON state, term, committed epoch
    REFUSE = 19  # s->p: JSON reason; the HELLO is refused (a stale term, not a standby)
    HANDOVER = 20  # p->s: switchover: this epoch is the last, the primary's VM is gone; run it
    VM_LOST = 21  # p->s: JSON reason; the primary's VM died (a QEMU crash): fail over now


class WireError(PeerError):
    pass


@dataclass
class Frame:
    kind: Kind
    epoch: int
    payload: bytes | bytearray | memoryview = b""
    flags: int = 0
    header: bytes = b""  # as received, so a frame can be journaled verbatim

    def json(self) -> dict:
        """The payload as a JSON object, bounded: a few KiB of nesting or an `Infinity` must
        be this peer's error, not a RecursionError or an OverflowError that ends the daemon."""
        return parse_json(self.payload, f"{self.kind.name} frame of epoch {self.epoch}")

    def reason(self) -> str:
        """The peer's "reason" (BYE, VM_LOST), for a log line: short, whatever it sent."""
        try:
            r = self.json().get("reason")
        except WireError:
            r = None
        return r[:500] if isinstance(r, str) else "no reason given"


MAX_JSON = 1 << 20  # every JSON payload is a handful of fields or a short list


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def parse_json(data, what: str) -> dict:
    if len(data) > MAX_JSON:
        raise WireError(f"{what}: {len(data)} bytes of JSON, at most {MAX_JSON}")
    try:
        obj = json.loads(bytes(data), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise WireError(f"{what}: bad JSON") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what}: JSON {type(obj).__name__}, not an object")
    return obj


def encode(kind: Kind, epoch: int, payload: bytes | memoryview = b"", flags: int = 0) -> list:
    """Header and payload as separate buffers (for sendmsg, no copy of the payload)."""
    if len(payload) > MAX_PAYLOAD:
        raise WireError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    hdr = _HDR.pack(MAGIC, VERSION, kind, flags, epoch, len(payload))
    h = xxhash.xxh3_64(hdr)
    h.update(payload)
    return [hdr + _SUM.pack(h.intdigest()), payload]


def encode_json(kind: Kind, epoch: int, obj: dict) -> list:
    return encode(kind, epoch, json.dumps(obj, separators=(",", ":")).encode())


def decode_header(hdr: bytes) -> tuple[Kind, int, int, int, int]:
    magic, version, kind, flags, epoch, length = _HDR.unpack_from(hdr)
    if magic != MAGIC:
        raise WireError(f"bad frame magic {magic!r}: not a remusdb peer")
    if version != VERSION:
        raise WireError(f"peer speaks wire version {version}, this is {VERSION}")
    if length > MAX_PAYLOAD:
        raise WireError(f"frame announces {length} bytes, more than {MAX_PAYLOAD}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise WireError(f"unknown frame type {kind}") from None
    return kind, flags, epoch, length, _SUM.unpack_from(hdr, _HDR.size)[0]


def verify(hdr: bytes, payload: bytes | bytearray | memoryview, checksum: int) -> None:
    h = xxhash.xxh3_64(hdr[: _HDR.size])
    h.update(payload)
    if h.intdigest() != checksum:
        raise WireError("frame checksum mismatch (corrupt frame)")


class Connection:
    """A framed TCP connection: one receiving thread, any number of sending threads (a lock
    keeps each frame whole)."""

    def __init__(self, sock: socket.socket | TlsSocket):
        self.sock = sock
        self._send_lock = threading.Lock()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, parts: list, lock_timeout: float = -1) -> None:
        if not self._send_lock.acquire(timeout=lock_timeout):
            raise TimeoutError("connection busy sending")
        try:
            total = sum(len(p) for p in parts)
            sent = self.sock.sendmsg(parts)
            if sent < total:
                rest = b"".join(bytes(p) for p in parts)[sent:]
                self.sock.sendall(rest)
        finally:
            self._send_lock.release()

    def send_frame(self, kind: Kind, epoch: int, payload=b"") -> None:
        self.send(encode(kind, epoch, payload))

    def _recv_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        recv_into_all(self.sock, memoryview(buf))
        return buf

    def recv(self) -> Frame:
        hdr = bytes(self._recv_exact(HEADER_SIZE))
        kind, flags, epoch, length, checksum = decode_header(hdr)
        payload = self._recv_exact(length) if length else b""
        verify(hdr, payload, checksum)
        return Frame(kind, epoch, payload, flags, hdr)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# Payload formats for raw page records (CPAGES: compression/codec.py).
_COUNT = struct.Struct(">I")


def pack_pages(block: np.ndarray, index: np.ndarray, data: np.ndarray) -> bytes:
    return b"".join([_COUNT.pack(len(index)), block.astype(">u2").tobytes(),
                     index.astype(">u8").tobytes(), np.ascontiguousarray(data).tobytes()])


def _count(payload, kind: str) -> int:
    if len(payload) < 4:
        raise WireError(f"{kind} frame of {len(payload)} bytes has no record count")
    return _COUNT.unpack_from(payload)[0]


def unpack_pages(payload, page_size: int = 4096):
    n = _count(payload, "PAGES")
    need = 4 + n * (2 + 8 + page_size)
    if len(payload) != need:
        raise WireError(f"PAGES frame of {len(payload)} bytes, {n} pages need {need}")
    mv = memoryview(payload)
    block = np.frombuffer(mv, ">u2", n, 4).astype(np.uint16)
    index = np.frombuffer(mv, ">u8", n, 4 + 2 * n).astype(np.uint64)
    data = np.frombuffer(mv, np.uint8, n * page_size, 4 + 10 * n).reshape(n, page_size)
    return block, index, data


def pack_zeros(block: np.ndarray, index: np.ndarray, fill: np.ndarray) -> bytes:
    return b"".join([_COUNT.pack(len(index)), block.astype(">u2").tobytes(),
                     index.astype(">u8").tobytes(), fill.astype(np.uint8).tobytes()])


def _columns(payload, kind: str, *dtypes: str) -> list[np.ndarray]:
    """count | column of each dtype: the fixed-size record layouts (ZEROS, BLOCKREF)."""
    n = _count(payload, kind)
    sizes = [np.dtype(d).itemsize for d in dtypes]
    if len(payload) != 4 + sum(sizes) * n:
        raise WireError(f"{kind} frame of {len(payload)} bytes does not hold {n} records")
    mv, at, out = memoryview(payload), 4, []
    for d, size in zip(dtypes, sizes, strict=True):
        out.append(np.frombuffer(mv, d, n, at))
        at += size * n
    return out


def unpack_zeros(payload):
    b, i, f = _columns(payload, "ZEROS", ">u2", ">u8", "u1")
    return b.astype(np.uint16), i.astype(np.uint64), f.copy()


def pack_disk(kinds: list[int], offsets: list[int], lengths: list[int],
              data: Sequence[bytes | bytearray]) -> list:
    """DISK payload: count | kind u8[n] | offset u64[n] | length u32[n] | the DATA records'
    bytes, in order (ZERO records carry none). Parts, for sendmsg without a copy."""
    head = b"".join([_COUNT.pack(len(kinds)), bytes(kinds), np.array(offsets, ">u8").tobytes(),
                     np.array(lengths, ">u4").tobytes()])
    return [head, *data]


def unpack_disk(payload, disk_size: int):
    """(kind, offset, length, data) of a DISK payload, checked against the disk's size."""
    n = _count(payload, "DISK")
    if len(payload) < 4 + 13 * n:
        raise WireError(f"DISK frame of {len(payload)} bytes cannot hold {n} records")
    mv = memoryview(payload)
    kinds = np.frombuffer(mv, np.uint8, n, 4)
    offsets = np.frombuffer(mv, ">u8", n, 4 + n).astype(np.uint64)
    lengths = np.frombuffer(mv, ">u4", n, 4 + 9 * n).astype(np.uint64)
    if n and int(kinds.max()) > 1:
        raise WireError(f"DISK record of unknown kind {int(kinds.max())}")
    if np.any(offsets + lengths > disk_size) or np.any(offsets + lengths < offsets):
        raise WireError("DISK record beyond the end of the disk")
    need = 4 + 13 * n + int(lengths[kinds == 0].sum())
    if len(payload) != need:
        raise WireError(f"DISK frame of {len(payload)} bytes, its records need {need}")
    return kinds, offsets, lengths, mv[4 + 13 * n :]


def pack_digests(d: np.ndarray) -> bytes:
    return d.astype(">u8").tobytes()


def unpack_digests(payload) -> np.ndarray:
    if len(payload) % 8:
        raise WireError(f"DIGESTS frame of {len(payload)} bytes is not whole digests")
    return np.frombuffer(memoryview(payload), ">u8").astype(np.uint64)


DIGESTS_PER_FRAME = MAX_PAYLOAD // 8


def pack_refs(block: np.ndarray, index: np.ndarray, disk_block: np.ndarray) -> bytes:
    """BLOCKREF payload: count | RAM block u16[n] | page index u64[n] | disk block u64[n]."""
    return b"".join([_COUNT.pack(len(index)), block.astype(">u2").tobytes(),
                     index.astype(">u8").tobytes(), disk_block.astype(">u8").tobytes()])


REF_SIZE = 18  # bytes per BLOCKREF record


def unpack_refs(payload):
    b, i, d = _columns(payload, "BLOCKREF", ">u2", ">u8", ">u8")
    return b.astype(np.uint16), i.astype(np.uint64), d.astype(np.uint64)
