"""The primary's checkpoint participants, and the one place that builds them for a session.

Each wraps one device of the protected VM (participant.py says when each hook runs): the disk
server's write log, the net relay's output buffer (output commit), read tracking, and the test
and benchmark aids (verification, recording, the per-checkpoint trace).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from remusdb.checkpoint.encode import EpochOut, disk_copy, disk_frames
from remusdb.checkpoint.participant import Participant, Send, Welcome
from remusdb.checkpoint.recording import Recorder
from remusdb.checkpoint.status import Window
from remusdb.checkpoint.stream.format import PAGE_SIZE
from remusdb.checkpoint.verify import Verifier
from remusdb.checkpoint.wire import WireError
from remusdb.commitprotect.relay import NetRelay
from remusdb.config import Config
from remusdb.disk.image import allocated_bytes
from remusdb.disk.server import DiskServer
from remusdb.disk.writelog import DiskWrite
from remusdb.readtrack.index import BlockIndex
from remusdb.readtrack.tracker import ReadTracker
from remusdb.reprotect import resync

log = logging.getLogger(__name__)


class DiskLog(Participant):
    """The disk: a full copy (or, for a standby whose disk shares our history, only the blocks
    that differ) before QEMU's copy, the VM running; then each epoch's writes, cut while the VM
    is paused (QEMU has drained its I/O: every write acknowledged belongs to it)."""

    status_key = "disk"

    def __init__(self, server: DiskServer):
        self.server = server
        self.copied = 0  # DISK records of the full copy
        self.writes_per_epoch = Window()
        self.welcome = Welcome()
        self.seed: dict = {}  # which path the seeding took, and what it sent

    def hello(self) -> dict:
        return {"disk_size": self.server.size, "disk_lineage": self.server.lineage}

    def on_welcome(self, welcome: Welcome) -> None:
        self.welcome = welcome

    def on_seed(self, send: Send) -> None:
        # Writes from the copy's start on are logged and replayed with epoch 0, so the copy
        # need not be a pause: a big disk on a slow link takes minutes.
        self.server.writes.start()
        copier = _Copier(self.server, send, self._source, lambda: self.seed.get("total_bytes", 0))
        copier.start()
        self.copied = copier.finish()
        self.seed.update(records=copier.records, sent_bytes=copier.bytes,
                         seconds=round(copier.seconds, 2))

    def _source(self) -> Iterable[DiskWrite]:
        """What epoch 0 sends of the disk: the differing blocks, or all of it."""
        fd, size = self.server.fd, self.server.size
        changed = int(self.server.changed.sum()) * resync.BLOCK
        theirs = self.welcome.digests
        if theirs is None:
            why = self.welcome.fields.get("why", "the standby asked for a full copy")
            self.seed = {"path": "full", "why": why, "changed_bytes": changed,
                         "total_bytes": allocated_bytes(fd, size)}
            log.info("disk: full copy (%s)", why)
            return disk_copy(fd, size)
        t0 = time.monotonic()
        try:
            blocks = resync.differing(resync.digests(fd, size), theirs)
        except ValueError as e:
            raise WireError(f"disk resync: {e}") from None
        self.seed = {"path": "resync", "why": "the standby's disk shares this disk's history",
                     "changed_bytes": changed, "differing_blocks": len(blocks),
                     "total_bytes": len(blocks) * resync.BLOCK,
                     "digest_s": round(time.monotonic() - t0, 2)}
        log.info("disk resync: %d blocks (%.1f MiB) differ; %.1f MiB written here since the "
                 "disk server started", len(blocks), len(blocks) * resync.BLOCK / 2**20,
                 changed / 2**20)
        return resync.writes(fd, blocks)

    def on_pause(self, out: EpochOut) -> None:
        out.disk = self.server.writes.cut()
        if out.number == 0:
            out.disk_sent = self.copied
        else:
            self.writes_per_epoch.add(len(out.disk))

    def on_stop(self, reason: str, vm_gone: bool = False) -> None:
        self.server.writes.stop()  # nobody cuts the log any more

    def summary(self) -> dict:
        return {"writes_per_epoch": self.writes_per_epoch.percentiles(), "seed": self.seed,
                **self.server.stats}


class _Copier(threading.Thread):
    """Epoch 0's disk records, streamed, in their own thread (a signal handler that ends
    protection meanwhile can still get the link for its BYE), with progress in the log."""

    def __init__(self, server: DiskServer, send: Send,
                 source: Callable[[], Iterable[DiskWrite]], total: Callable[[], int]):
        super().__init__(name="disk-copy", daemon=True)
        self.server, self.send, self.source, self.total = server, send, source, total
        self.records = self.bytes = 0
        self.seconds = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            for parts in disk_frames(0, self._counted(self.source(), t0)):
                self.send(parts)
        except BaseException as e:
            self.error = e
            return
        self.seconds = time.monotonic() - t0
        log.info("disk copy: %.0f MiB in %.1f s", self.bytes / 2**20, self.seconds)

    def _counted(self, writes: Iterable[DiskWrite], t0: float) -> Iterator[DiskWrite]:
        shown = t0
        for w in writes:  # streamed, not held
            self.records += 1
            self.bytes += w.length
            now = time.monotonic()
            if now - shown > 2:
                shown = now
                rate, total = self.bytes / (now - t0), self.total()
                log.info("disk copy: %.0f of %.0f MiB sent, %.0f MiB/s, about %.0f s left",
                         self.bytes / 2**20, total / 2**20, rate / 2**20,
                         max(0, total - self.bytes) / max(rate, 1))
            yield w

    def finish(self) -> int:
        """Wait for the copy; the DISK records it sent."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.records


class ReadTracking(Participant):
    """RT: dirty pages equal to unchanged disk blocks go as references (found after the VM
    resumed, in the sender thread, against the write generation of the epoch's cut)."""

    status_key = "read_tracking"

    def __init__(self, tracker: ReadTracker):
        self.tracker = tracker

    def on_pause(self, out: EpochOut) -> None:
        out.disk_generation = self.tracker.index.generation

    def on_send(self, out: EpochOut) -> None:
        if out.number == 0:
            return
        rows, _ = out.latest()
        _, _, data = out.pages.view()
        disk_block = self.tracker.references(data, rows, out.disk_generation)
        found = disk_block >= 0
        out.refs, out.ref_blocks, out.rows = rows[found], disk_block[found], rows[~found]

    def summary(self) -> dict:
        return self.tracker.summary()


class OutputCommit(Participant):
    """The VM's network output of epoch N waits for the standby's ACK N."""

    status_key = "net"

    def __init__(self, relay: NetRelay):
        self.relay = relay
        relay.new_session()

    def on_pause(self, out: EpochOut) -> None:
        self.relay.mark(out.number)  # what the guest sent so far belongs to this epoch

    def on_ack(self, epoch: int) -> None:
        self.relay.release(epoch)

    def on_stop(self, reason: str, vm_gone: bool = False) -> None:
        if vm_gone:  # held output is of epochs the standby may lack: it must never go out
            self.relay.drop_held()
        else:
            self.relay.stop_protection()  # like Remus: unprotected, the held output goes out

    def summary(self) -> dict:
        return self.relay.summary()


class EpochTrace(Participant):
    """Benchmarks and drills: one line per checkpoint — wall time of the resume, epoch, pause
    ms, dirty pages, zero pages, stream bytes, and the parts of the pause: ms QEMU took to stop
    the VM, ms from then until the epoch was read whole. Beside it, `<path>.acks`: the wall
    time of each ACK and its epoch."""

    def __init__(self, path: Path):
        self.file: TextIO | None = open(path, "a", buffering=1)  # line-buffered
        self.acks: TextIO | None = open(acks_path(path), "a", buffering=1)
        self.lock = threading.Lock()

    def on_ack(self, epoch: int) -> None:
        with self.lock:
            if self.acks is not None:
                self.acks.write(f"{time.time():.6f},{epoch}\n")

    def on_resume(self, out: EpochOut) -> None:
        with self.lock:
            if self.file is not None:
                self.file.write(f"{time.time():.6f},{out.number},{out.pause_ms:.3f},"
                                f"{out.pages.pages},{out.pages.zero_count},"
                                f"{out.stream_bytes},"
                                f"{(out.stopped_at - out.paused_at) * 1000:.3f},"
                                f"{(out.received_at - out.stopped_at) * 1000:.3f}\n")

    def on_stop(self, reason: str, vm_gone: bool = False) -> None:
        with self.lock:
            for f in (self.file, self.acks):
                if f is not None:
                    f.close()
            self.file = self.acks = None


def acks_path(trace: Path) -> Path:
    return trace.with_name(trace.name + ".acks")


@dataclass
class SessionAids:
    """Test and benchmark switches of `remusdb protect` (none changes what is protected)."""

    verify_every: int = 0
    verify_count: int = 0
    trace: Path | None = None
    record_dir: Path | None = None
    record_epochs: int = 100
    output_commit: bool = True  # False: benchmarks only, nothing is held


def build(cfg: Config, ram_file: Path, disk: DiskServer | None, relay: NetRelay | None,
          aids: SessionAids) -> list[Participant]:
    """The participants of one session, in the order their hooks run."""
    parts: list[Participant] = []
    if aids.verify_every:  # first: RAM is fingerprinted before anything else runs
        parts.append(Verifier(ram_file, aids.verify_every, aids.verify_count,
                              (disk.fd, disk.writes) if disk else None))
    if disk is not None:
        parts.append(DiskLog(disk))
        if cfg.optimizations.rt:  # the disk server indexes what it reads and writes from now
            index = BlockIndex(disk.size, cfg.vm.memory // PAGE_SIZE)
            disk.index = index
            parts.append(ReadTracking(ReadTracker(index, disk.fd)))
    if relay is not None and aids.output_commit:
        parts.append(OutputCommit(relay))
    if aids.record_dir is not None:
        parts.append(Recorder(aids.record_dir, aids.record_epochs))
    if aids.trace is not None:
        parts.append(EpochTrace(aids.trace))
    return parts
