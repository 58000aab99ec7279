"""The primary daemon: capture each epoch from QEMU over COLO, let the VM run, ship the epoch.

Three threads: capture (the COLO transaction; the VM is paused only while the epoch is read into
memory), sender (frames to the standby, heartbeats when idle) and receiver (the standby's
acknowledgements). A bounded queue between capture and sender is the back-pressure: when the
link is slower than the dirty rate, the next checkpoint waits, the VM stays paused a little
longer, and nothing is dropped. Losing the standby ends protection: QEMU is told
x-colo-lost-heartbeat and the VM runs on unprotected.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from remusdb.checkpoint import recording, wire
from remusdb.checkpoint.colo import ColoEndpoint
from remusdb.checkpoint.encode import EpochOut, disk_copy, disk_frames, epoch_frames
from remusdb.checkpoint.status import StatusFile, Window, disk_digests, page_digests
from remusdb.checkpoint.store import StreamInfo
from remusdb.checkpoint.stream.format import PAGE_SIZE, StreamError
from remusdb.commitprotect.relay import NetRelay
from remusdb.compression.compressor import Compressor
from remusdb.config import Config
from remusdb.disk.server import DiskServer
from remusdb.errors import RemusError
from remusdb.hypervisor.clock import ClockKeeper
from remusdb.hypervisor.qemu import RAM_BACKEND, QemuGuest
from remusdb.readtrack.index import BlockIndex
from remusdb.readtrack.tracker import ReadTracker

HEARTBEAT_S = 0.1


class _Copier(threading.Thread):
    """Epoch 0's disk: the whole image (allocated extents), sent while the VM runs."""

    def __init__(self, daemon: PrimaryDaemon):
        super().__init__(name="disk-copy", daemon=True)
        self.d = daemon
        self.records = self.bytes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            disk, conn = self.d.disk, self.d.conn

            def counted():
                for w in disk_copy(disk.fd, disk.size):  # streamed, not held
                    self.records += 1
                    self.bytes += w.length
                    yield w
            for parts in disk_frames(0, counted()):
                conn.send(parts)
        except BaseException as e:
            self.error = e
            return
        self.d.log(f"disk copy: {self.bytes / 2**20:.0f} MiB in {time.monotonic() - t0:.1f} s")

    def finish(self) -> int:
        """Wait for the copy; the DISK records it sent."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.records


class PrimaryDaemon:
    def __init__(self, cfg: Config, guest: QemuGuest, run_dir: Path,
                 disk: DiskServer | None = None, verify_every: int = 0,
                 queue_depth: int = 4, stall_timeout: float = 10.0, log=print,
                 trace: Path | None = None, verify_count: int = 0,
                 record_dir: Path | None = None, record_epochs: int = 100,
                 relay: NetRelay | None = None):
        self.cfg, self.guest, self.run_dir = cfg, guest, Path(run_dir)
        self.disk = disk
        self.relay = relay  # output commit: the VM's frames wait for their epoch's ack
        self.disk_writes_per_epoch = Window()
        self.totals = {"epochs": 0, "dirty_pages": 0, "sent_bytes": 0}  # after epoch 0
        self.tracker: ReadTracker | None = None
        if disk is not None and cfg.optimizations.rt:
            # RT: the disk server indexes what it reads and writes from now on.
            index = BlockIndex(disk.size, cfg.vm.memory // PAGE_SIZE)
            self.tracker = ReadTracker(index, disk.fd)
            disk.index = index
        self.verify_every = verify_every
        self.verify_left = verify_count or -1  # checks to run; -1: no limit
        self.queue: queue.Queue[EpochOut | None] = queue.Queue(queue_depth)
        self.stall_timeout = stall_timeout
        self.log = log
        self.status = StatusFile(self.run_dir / "primary.status.json")
        self.pause_ms, self.pages_per_epoch, self.bytes_per_epoch = Window(), Window(), Window()
        self.state = "starting"
        self.captured = self.sent = self.acked = -1
        self.failure: str | None = None
        self._qmp_lock = threading.RLock()  # _fail may run again inside a signal handler
        self.endpoint: ColoEndpoint | None = None
        self._stop = threading.Event()
        self.conn: wire.Connection | None = None
        self.clock = ClockKeeper(guest.files.agent, log=log)
        # One line per checkpoint (benchmarks): wall time, epoch, pause, pages, stream bytes.
        self.trace = open(trace, "a", buffering=1) if trace else None  # line-buffered
        self.compressor: Compressor | None = None
        # Benchmarks: start_recording() writes the next `record_epochs` epochs, page for page.
        self.record_dir, self.record_epochs = record_dir, record_epochs
        self.recordings = 0
        self._recording: tuple | None = None  # (file, path, epochs left)
        self._record_request = threading.Event()
        self.backpressure = {"waits": 0, "waited_ms": 0.0}  # the VM held for a full queue

    # Setup
    def _connect_standby(self) -> wire.Connection:
        addr = (self.cfg.standby.address, self.cfg.standby.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                s = socket.create_connection(addr, timeout=5)
                s.settimeout(None)
                return wire.Connection(s)
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RemusError(f"cannot reach the standby at {addr[0]}:{addr[1]}: "
                                     f"{e.strerror or e}") from None
                time.sleep(0.5)

    def _start_colo(self) -> socket.socket:
        path = self.run_dir / "colo.sock"
        path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        srv.listen(1)
        mon = self.guest.monitor
        mon.set_migration_capabilities(x_colo=True)
        mon.execute("migrate-set-parameters",
                    **{"x-checkpoint-delay": self.cfg.checkpoint.interval_ms})
        mon.migrate(f"unix:{path}")
        srv.settimeout(30)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            raise RemusError("QEMU did not connect its COLO migration") from None
        finally:
            srv.close()
        conn.settimeout(max(30.0, self.stall_timeout))
        return conn

    def protect(self) -> None:
        """Run until protection ends (standby lost, QEMU gone, or stop())."""
        self.conn = self._connect_standby()
        # Seeding has no watchdog yet and holds the VM paused at its end: a standby that stops
        # reading must end it, not keep the VM waiting until TCP gives up.
        self.conn.sock.settimeout(max(30.0, self.stall_timeout))
        self._update("seeding")
        session = uuid.uuid4().hex
        try:
            self.conn.send(wire.encode_json(wire.Kind.HELLO, 0, {
                "session": session, "vm": self.cfg.vm.name,
                "interval_ms": self.cfg.checkpoint.interval_ms,
                "disk_size": self.disk.size if self.disk else 0}))
            welcome = self.conn.recv()
        except OSError as e:
            self._fail(f"standby link lost before protection started: {e}")
            raise RemusError(f"the standby dropped the connection: {e}") from None
        if welcome.kind != wire.Kind.WELCOME:
            raise RemusError(f"standby answered {welcome.kind.name} to HELLO")
        # The disk's full copy goes out with the VM running (its length must not become a
        # pause: a big disk on a slow link takes minutes); writes from the copy's start on are
        # logged and replayed after QEMU's initial RAM copy, with the VM paused.
        disk_sent = 0
        if self.disk is not None:
            self.disk.cut()
            copier = _Copier(self)
            copier.start()
            try:
                disk_sent = copier.finish()
            except (OSError, RemusError) as e:
                self._fail(f"standby link lost during the disk copy: {e}")
                raise RemusError(f"the standby dropped the connection: {e}") from None
        endpoint = self.endpoint = ColoEndpoint(self._start_colo())
        t0 = time.monotonic()
        init = endpoint.read_initial()  # the VM is paused at its end, until endpoint.ready()
        if not init.colo:
            raise RemusError("QEMU did not enable COLO on the migration stream")
        info = StreamInfo(init.config, init.blocks, init.ram_section.section_id,
                          init.ram_section.version_id, RAM_BACKEND)
        opts = self.cfg.optimizations
        if opts.compression != "off":  # a new cache per session: the standby starts afresh
            ram = next(b.length for b in init.blocks if b.name == RAM_BACKEND) // PAGE_SIZE
            self.compressor = Compressor(opts.compression, [b.length // PAGE_SIZE
                                                            for b in init.blocks],
                                         int(ram * opts.page_cache))
        self.log(f"initial copy: {endpoint.r.offset / 2**20:.0f} MiB from QEMU in "
                 f"{time.monotonic() - t0:.1f} s ({init.pages.pages} pages, "
                 f"{init.pages.zero_count} zero pages)")
        # The rest of epoch 0 goes out before the VM resumes: one seeding pause, instead of
        # the first checkpoints stalling behind it in the queue.
        t1 = time.monotonic()
        if self.relay is not None:  # output from here on waits for the standby's acks
            self.relay.mark(0)
        try:
            replay = self.disk.cut() if self.disk else []
            self.conn.send(wire.encode_json(wire.Kind.STREAM, 0, info.to_json()))
            self._send_epoch(EpochOut(0, init.pages, init.devices, disk=replay,
                                      disk_sent=disk_sent))
        except (OSError, RemusError) as e:
            self._fail(f"standby link lost during the full copy: {e}")
            raise RemusError(f"the standby dropped the connection: {e}") from None
        self.sent = 0
        self.conn.sock.settimeout(None)  # from here the watchdog and heartbeats watch the link
        self.log(f"full copy sent; the VM waited {time.monotonic() - t1:.1f} s for it "
                 f"({len(replay)} disk writes replayed)")
        threads = [threading.Thread(target=self._guard(self._sender), name="sender", daemon=True),
                   threading.Thread(target=self._guard(self._receiver), name="receiver",
                                    daemon=True),
                   threading.Thread(target=self._watchdog, name="watchdog", daemon=True)]
        for t in threads:
            t.start()
        self.clock.start()
        self.captured = 0
        endpoint.ready()
        self._update()  # "seeding" until the standby acknowledges the full copy
        try:
            self._capture_loop(endpoint)
        except (StreamError, OSError) as e:
            if self.failure is None:
                self._fail(f"COLO stream from QEMU ended: {e}")
        finally:
            self._stop.set()
            while True:  # wake the sender; what it has not sent is moot now
                try:
                    self.queue.put_nowait(None)
                    break
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                    except queue.Empty:
                        pass
            endpoint.conn.close()
            if self.trace:
                self.trace.close()

    def _capture_loop(self, endpoint: ColoEndpoint) -> None:
        ram_file = self.guest.files.ram
        while not self._stop.is_set():
            ck = endpoint.next_checkpoint()
            digests = None
            if self.verify_every and ck.seq % self.verify_every == 0 and self.verify_left:
                self.verify_left -= 1
                # Test mode: fingerprint the primary's RAM while the VM is paused.
                ram = np.memmap(ram_file, np.uint8, "r").reshape(-1, PAGE_SIZE)
                digests = page_digests(ram)
                del ram
            # The VM is paused and QEMU has drained its I/O: every write acknowledged so far
            # belongs to this epoch.
            writes = self.disk.cut() if self.disk else []
            if self.relay is not None:  # and what the guest sent so far is this epoch's
                self.relay.mark(ck.seq)
            self.disk_writes_per_epoch.add(len(writes))
            item = EpochOut(ck.seq, ck.pages, ck.devices, digests, writes)
            if self.tracker is not None:
                item.disk_generation = self.tracker.index.generation
            if digests is not None and self.disk is not None:
                chunks = np.array(sorted(self.disk.touched), np.uint64)
                item.disk_digests = (chunks, disk_digests(self.disk.fd, chunks))
            try:
                self.queue.put_nowait(item)
            except queue.Full:  # the link is slower than the dirty rate: the VM waits
                t0 = time.monotonic()
                while not self._stop.is_set():
                    try:
                        self.queue.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                self.backpressure["waits"] += 1
                self.backpressure["waited_ms"] += (time.monotonic() - t0) * 1000
            resumed = endpoint.ack()
            self.captured = ck.seq
            self.pause_ms.add((resumed - ck.paused_at) * 1000)
            self.pages_per_epoch.add(ck.pages.pages)
            self.bytes_per_epoch.add(ck.stream_bytes)
            if self.trace:
                self.trace.write(f"{time.time():.3f},{ck.seq},{(resumed - ck.paused_at) * 1e3:.3f},"
                                 f"{ck.pages.pages},{ck.pages.zero_count},{ck.stream_bytes}\n")
            if ck.seq % 10 == 0:
                self._update()

    # Threads
    def _guard(self, fn):
        def run():
            try:
                fn()
            except (OSError, ConnectionError, RemusError) as e:
                self._fail(f"standby link lost: {e}")
        return run

    def _sender(self) -> None:
        while True:
            try:
                item = self.queue.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                self.conn.send_frame(wire.Kind.HEARTBEAT, max(self.sent, 0))
                continue
            if item is None:
                return
            self._send_epoch(item)
            self.sent = item.number

    def _send_epoch(self, item: EpochOut) -> None:
        if item.number > 0 and (self._recording or self._record_request.is_set()):
            self._record(item)
        sent = 0
        for parts in epoch_frames(item, self.compressor, self.tracker):
            self.conn.send(parts)
            sent += sum(len(p) for p in parts)
        if item.number > 0:  # the full copy is not a checkpoint's worth
            self.totals["sent_bytes"] += sent
            self.totals["dirty_pages"] += item.pages.pages + item.pages.zero_count
            self.totals["epochs"] += 1

    def start_recording(self) -> None:
        """Record the next epochs (signal-safe: the sender thread opens the file)."""
        if self.record_dir is not None:
            self._record_request.set()

    def _record(self, item: EpochOut) -> None:
        if self._recording is None:
            self._record_request.clear()
            self.recordings += 1
            path = self.record_dir / f"recording-{self.recordings}.rdbc"
            self._recording = (open(path, "wb"), path, self.record_epochs)
            self.log(f"recording {self.record_epochs} epochs to {path}")
        f, path, left = self._recording
        rows, (zb, zi, _) = item.pages.latest()
        block, index, data = item.pages.view()
        recording.write_epoch(f, item.number, block[rows], index[rows], data[rows], zb, zi)
        self._recording = (f, path, left - 1)
        if left == 1:
            f.close()
            self._recording = None
            self.log(f"recording complete: {path}")
            self._update()

    def _receiver(self) -> None:
        while not self._stop.is_set():
            f = self.conn.recv()
            if f.kind == wire.Kind.ACK:
                self.acked = f.epoch
                if self.relay is not None:
                    self.relay.release(f.epoch)
                with self._qmp_lock:  # not over a failure _fail has just recorded
                    if self.state == "seeding" and self.failure is None:
                        self._update("protected")
            elif f.kind != wire.Kind.HEARTBEAT:
                raise RemusError(f"unexpected {f.kind.name} from the standby")

    def _watchdog(self) -> None:
        """A checkpoint stuck mid-transaction would leave the VM paused forever."""
        while not self._stop.wait(0.5):
            since = self.endpoint.paused_since if self.endpoint else None
            if since is not None and time.monotonic() - since > self.stall_timeout:
                self._fail(f"checkpoint stalled for {self.stall_timeout:.0f} s")

    def _fail(self, reason: str) -> None:
        """End protection, the VM running on. The standby must hear BYE first: a connection
        that closes without it means "primary dead" and makes the standby fail over, which
        with this VM still running would be a second copy. If BYE cannot be sent, the socket
        stays open: the standby then only sees silence, which it does not act on unfenced."""
        with self._qmp_lock:
            if self.failure is not None:
                return
            self.failure = reason
            self.log(f"protection lost: {reason}; the VM continues unprotected")
            self._stop.set()
            if self.disk is not None:
                self.disk.stop_log()
            if self.relay is not None:  # like Remus: unprotected, the held output goes out
                self.relay.stop_protection()
            try:
                self.guest.monitor.execute("x-colo-lost-heartbeat")
            except Exception:
                pass
        if self.conn is not None:
            try:
                self.conn.send(wire.encode_json(wire.Kind.BYE, max(self.captured, 0),
                                                {"reason": reason}), lock_timeout=5.0)
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                self.log("could not tell the standby (no BYE): it sees silence, not a death")
        self._update("unprotected")

    def stop(self) -> None:
        """Orderly end (operator): the standby is told, the VM runs on unprotected."""
        self._fail("stopped by the operator")

    def _update(self, state: str | None = None) -> None:
        if state:
            self.state = state
        self.status.update(
            role="primary", state=self.state, vm=self.cfg.vm.name,
            interval_ms=self.cfg.checkpoint.interval_ms, epoch_captured=self.captured,
            epoch_sent=self.sent, epoch_acked=self.acked,
            lag_epochs=max(0, self.captured - self.acked), pause_ms=self.pause_ms.percentiles(),
            dirty_pages=self.pages_per_epoch.percentiles(),
            bytes_per_epoch=self.bytes_per_epoch.percentiles(), failure=self.failure,
            queue=self.queue.qsize(), backpressure={
                k: round(v, 1) for k, v in self.backpressure.items()},
            compression=self.compressor.summary() if self.compressor else {"mode": "off"},
            recordings_done=self.recordings - (1 if self._recording else 0),
            disk={"writes_per_epoch": self.disk_writes_per_epoch.percentiles(),
                  **self.disk.stats} if self.disk else None,
            read_tracking=self.tracker.summary() if self.tracker else {"enabled": False},
            net=self.relay.summary() if self.relay else None,
            totals=dict(self.totals),
            guest_clock=self.clock.summary())
