"""The standby's side of one session's frames: buffer each epoch until its COMMIT, check it
is complete and consistent, and hand it over whole (invariant 3: never part of an epoch).

No sockets here: the daemon reads frames and feeds them in. Everything a lying or corrupt peer
can send is refused as a PeerError before anything is written; the store is touched only for
what is safe at once — epoch 0's disk copy (nothing older to protect), the stream description,
decoding against the committed images (a read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remusdb.checkpoint import wire
from remusdb.checkpoint.epoch import Epoch, EpochError, StreamInfo, add_frame
from remusdb.checkpoint.store import StandbyStore, local_io
from remusdb.checkpoint.stream.format import PAGE_SIZE
from remusdb.checkpoint.wire import Kind, WireError

MIN_DISK_BUFFER = 1 << 30
_BUFFERED = (Kind.PAGES, Kind.ZEROS, Kind.DEVICES, Kind.DISK, Kind.BLOCKREF)


@dataclass
class Complete:
    """An epoch whose COMMIT matched what arrived: ready to journal and acknowledge."""

    epoch: Epoch
    digests: np.ndarray | None = None  # test mode: the primary's RAM fingerprint
    disk_sums: tuple[np.ndarray, np.ndarray] | None = None  # test mode: (chunks, xxh3)


class EpochReceiver:
    def __init__(self, store: StandbyStore):
        self.store = store
        self.ended = False  # BYE: the primary ended protection in order
        self._next(0)

    def _next(self, number: int) -> None:
        self.epoch = Epoch(number)
        self.digests: np.ndarray | None = None
        self.disk_sums: tuple[np.ndarray, np.ndarray] | None = None

    def feed(self, f: wire.Frame) -> Complete | None:
        """One frame in; the epoch it completes, if it is a valid COMMIT."""
        self.epoch.wire_bytes += wire.HEADER_SIZE + len(f.payload)
        if f.kind == Kind.CPAGES:
            f = local_io(self.store.decode, f)
        if f.kind in _BUFFERED:
            self._buffer(f)
        elif f.kind == Kind.STREAM:
            if self.epoch.number != 0:
                raise WireError(f"stream description in epoch {self.epoch.number}")
            local_io(self.store.set_stream, StreamInfo.from_json(f.json()))
        elif f.kind == Kind.VERIFY:
            if len(f.payload) % 8:
                raise WireError(f"VERIFY frame of {len(f.payload)} bytes")
            self.digests = np.frombuffer(f.payload, ">u8").astype(np.uint64)
        elif f.kind == Kind.VERIFY_DISK:
            if len(f.payload) % 16:
                raise WireError(f"VERIFY_DISK frame of {len(f.payload)} bytes")
            pairs = np.frombuffer(f.payload, ">u8").astype(np.uint64)
            self.disk_sums = (pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :])
        elif f.kind == Kind.COMMIT:
            self._check_commit(f)
            done = Complete(self.epoch, self.digests, self.disk_sums)
            self._next(self.epoch.number + 1)
            return done
        elif f.kind == Kind.BYE:
            self.ended = True
        elif f.kind != Kind.HEARTBEAT:
            raise WireError(f"unexpected {f.kind.name} frame")
        return None

    def _buffer(self, f: wire.Frame) -> None:
        epoch = self.epoch
        if f.kind == Kind.DISK:
            epoch.disk_writes += self.store.check_disk(f.payload)
            if f.epoch != epoch.number:
                raise WireError(f"DISK frame of epoch {f.epoch} inside {epoch.number}")
            if epoch.number == 0:  # the full copy: nothing older to protect, no buffering
                local_io(self.store.apply_disk, f.payload, False)
                return
            epoch.disk_bytes += len(f.payload)
            if epoch.disk_bytes > self.max_disk_bytes():
                raise EpochError(f"epoch {epoch.number}: more than {self.max_disk_bytes()} "
                                 "bytes of disk writes buffered before its COMMIT")
        elif f.kind == Kind.DEVICES and epoch.devices is not None:
            raise WireError(f"a second device state in epoch {epoch.number}")
        add_frame(epoch, f)
        if f.kind in (Kind.PAGES, Kind.ZEROS):
            blk, idx = (epoch.pages if f.kind == Kind.PAGES else epoch.zeros)[-1][:2]
            self.store.validate(blk, idx)
        elif f.kind == Kind.BLOCKREF:
            self.store.check_refs(*epoch.refs[-1])
        if f.kind in (Kind.PAGES, Kind.ZEROS, Kind.BLOCKREF):
            # The primary sends each page at most once an epoch (its last record): more than
            # the VM has is a lie that would only cost this host memory.
            pages = epoch.page_count + epoch.zero_count + epoch.ref_count
            if pages > self.store.ram_pages():
                raise EpochError(f"epoch {epoch.number}: {pages} pages before its COMMIT, "
                                 f"the VM has {self.store.ram_pages()}")
        epoch.frames.append([f.header, f.payload])

    def max_disk_bytes(self) -> int:
        """What an epoch's disk writes may buffer: the guest's RAM, at least MIN_DISK_BUFFER.
        Writes of 25-500 ms beyond either are not a guest's but a peer's."""
        return max(MIN_DISK_BUFFER, self.store.ram_pages() * PAGE_SIZE)

    def _check_commit(self, f: wire.Frame) -> None:
        epoch = self.epoch
        if f.epoch != epoch.number:
            raise WireError(f"COMMIT for epoch {f.epoch} while receiving {epoch.number}")
        counts = f.json()
        if not isinstance(counts, dict) or (counts.get("pages"), counts.get("zeros")) != (
                epoch.page_count, epoch.zero_count):
            raise WireError(f"epoch {epoch.number} incomplete: COMMIT says {counts}, "
                            f"got {epoch.page_count} pages, {epoch.zero_count} zeros")
        if epoch.devices is None:
            raise WireError(f"epoch {epoch.number} has no device state")
        if counts.get("refs", 0) != epoch.ref_count:
            raise WireError(f"epoch {epoch.number} incomplete: COMMIT says "
                            f"{counts.get('refs')} page references, got {epoch.ref_count}")
        if counts.get("disk_writes", 0) != epoch.disk_writes:
            raise WireError(f"epoch {epoch.number} incomplete: COMMIT says "
                            f"{counts.get('disk_writes')} disk writes, got "
                            f"{epoch.disk_writes}")
