"""The standby daemon: receive epochs, commit each atomically, and fail over when the primary dies.

Failure detection distinguishes a primary that is gone from one that is merely unheard:
- the connection closes without a BYE (EOF or reset): the primary daemon died, and with it its
  QEMU (it runs with a parent-death signal), so failing over cannot make a second copy;
- silence past the heartbeat timeout: the primary may be alive behind a broken link, so the
  standby fails over only after the configured fence command succeeds (or an operator's
  `remusdb failover --force`); without one it waits and says so.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from remusdb.checkpoint import failover, wire
from remusdb.checkpoint.status import (
    DISK_CHUNK,
    VERIFY_GROUP,
    StatusFile,
    Window,
    disk_digests,
    page_digests,
)
from remusdb.checkpoint.store import Epoch, StandbyStore, StoreError, StreamInfo, add_frame
from remusdb.commitprotect import recovery
from remusdb.config import Config
from remusdb.errors import RemusError
from remusdb.hypervisor.clock import ClockKeeper
from remusdb.hypervisor.qemu import GuestSpec, QemuGuest

SEEDING_TIMEOUT = 300.0


class StandbyDaemon:
    def __init__(self, cfg: Config, run_dir: Path, make_spec: Callable[[], GuestSpec],
                 heartbeat_timeout: float = 1.0, fence_command: str = "", log=print,
                 trace: Path | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.make_spec = make_spec
        self.timeout = heartbeat_timeout
        self.fence_command = fence_command
        self.log = log
        self.store = StandbyStore(self.run_dir / "store")
        self.status = StatusFile(self.run_dir / "standby.status.json")
        self.state = "waiting"
        self.last_frame = 0.0
        self.session_open = False
        self.guest: QemuGuest | None = None
        self.verify = {"checks": 0, "differing_groups": 0, "group_pages": VERIFY_GROUP,
                       "disk_checks": 0, "disk_chunks": 0, "differing_disk_chunks": 0}
        self.apply_ms, self.epoch_bytes = Window(), Window()
        self._lock = threading.Lock()
        self._conn: wire.Connection | None = None
        self.failover_times: dict | None = None
        self.clock: ClockKeeper | None = None
        self.stopped = threading.Event()
        # Tests: one line per committed epoch (time, epoch), written before its ACK leaves.
        self.trace = open(trace, "a", buffering=1) if trace else None

    # Serving
    def serve(self, ready: Callable[[], None] | None = None) -> None:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            srv.bind((self.cfg.standby.address, self.cfg.standby.port))
        except OSError as e:
            raise RemusError(f"cannot listen on {self.cfg.standby.address}:"
                             f"{self.cfg.standby.port}: {e.strerror}") from None
        srv.listen(1)
        state = "waiting"
        if self.store.meta_path.exists():
            # A restarted standby keeps what it had: a crash mid-apply is finished from the
            # journal, so the store holds exactly its last committed checkpoint.
            try:
                self.store.open()
                self.log(f"recovered the store at epoch {self.store.committed}")
                state = "recovered"
            except RemusError as e:
                self.log(f"previous store unusable ({e}); it is replaced at the next session")
        threading.Thread(target=self._control, daemon=True, name="control").start()
        self._update(state)
        if ready:
            ready()
        srv.settimeout(0.5)
        while self.guest is None and not self.stopped.is_set():
            try:
                sock, peer = srv.accept()
            except TimeoutError:
                continue
            self.log(f"primary connected from {peer[0]}")
            self._session(wire.Connection(sock))
        srv.close()

    def _session(self, conn: wire.Connection) -> None:
        self._conn = conn
        # Until epoch 0 (the full copy) commits there is nothing to fail over to, and the
        # primary is busy reading QEMU's initial stream: no heartbeat deadline yet.
        conn.sock.settimeout(max(self.timeout, SEEDING_TIMEOUT))
        reason, closed = None, False
        try:
            hello = conn.recv()
            if hello.kind != wire.Kind.HELLO:
                raise wire.WireError(f"expected HELLO, got {hello.kind.name}")
            hello_data = hello.json()
            if not isinstance(hello_data, dict) or "session" not in hello_data:
                raise wire.WireError("HELLO without a session")
            disk_size = hello_data.get("disk_size", 0)
            if not isinstance(disk_size, int) or disk_size < 0 or disk_size % 512:
                raise wire.WireError(f"HELLO with a bad disk size {disk_size!r}")
            self._store_op(self.store.create, None, str(hello_data["session"]), disk_size)
            conn.send(wire.encode_json(wire.Kind.WELCOME, 0, {"committed": -1}))
            self.session_open = True
            self.last_frame = time.monotonic()
            self._update("receiving")
            self._receive(conn)
            self.log("primary ended protection (BYE): no failover")
            self._update("waiting")
        except TimeoutError:
            reason = f"no checkpoint or heartbeat for {self.timeout:.1f} s"
        except (ConnectionError, OSError) as e:
            reason, closed = f"connection to the primary lost ({e})", True
        except RemusError as e:  # corrupt frame, a lying peer or a failing store: no death proof
            reason = f"bad data from the primary or store failure: {e}"
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            reason = f"bad data from the primary: {type(e).__name__}: {e}"
        finally:
            self.session_open = False
            conn.close()
        if reason:
            self._primary_failed(reason, closed)

    def _receive(self, conn: wire.Connection) -> None:
        epoch, digests, disk_sums = Epoch(0), None, None
        while True:
            f = conn.recv()
            self.last_frame = time.monotonic()
            epoch.wire_bytes += wire.HEADER_SIZE + len(f.payload)
            if f.kind == wire.Kind.CPAGES:
                f = self.store.decode(f)
            if f.kind == wire.Kind.DISK:
                epoch.disk_writes += self.store.check_disk(f.payload)
                if f.epoch != epoch.number:
                    raise wire.WireError(f"DISK frame of epoch {f.epoch} inside {epoch.number}")
                if epoch.number == 0:  # the full copy: nothing older to protect, no buffering
                    self._store_op(self.store.apply_disk, f.payload, False)
                    continue
            if f.kind in (wire.Kind.PAGES, wire.Kind.ZEROS, wire.Kind.DEVICES, wire.Kind.DISK,
                          wire.Kind.BLOCKREF):
                add_frame(epoch, f)
                if f.kind in (wire.Kind.PAGES, wire.Kind.ZEROS):
                    blk, idx = (epoch.pages if f.kind == wire.Kind.PAGES else epoch.zeros)[-1][:2]
                    self.store.validate(blk, idx)
                elif f.kind == wire.Kind.BLOCKREF:
                    self.store.check_refs(*epoch.refs[-1])
                epoch.frames.append([f.header, f.payload])
            elif f.kind == wire.Kind.STREAM:
                if epoch.number != 0:
                    raise wire.WireError(f"stream description in epoch {epoch.number}")
                self._store_op(self.store.set_stream, StreamInfo.from_json(f.json()))
            elif f.kind == wire.Kind.VERIFY:
                if len(f.payload) % 8:
                    raise wire.WireError(f"VERIFY frame of {len(f.payload)} bytes")
                digests = np.frombuffer(f.payload, ">u8").astype(np.uint64)
            elif f.kind == wire.Kind.VERIFY_DISK:
                if len(f.payload) % 16:
                    raise wire.WireError(f"VERIFY_DISK frame of {len(f.payload)} bytes")
                pairs = np.frombuffer(f.payload, ">u8").astype(np.uint64)
                disk_sums = (pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :])
            elif f.kind == wire.Kind.COMMIT:
                self._commit(conn, epoch, f, digests)
                if disk_sums is not None:
                    self._verify_disk(epoch.number, *disk_sums)
                epoch, digests, disk_sums = Epoch(epoch.number + 1), None, None
            elif f.kind == wire.Kind.BYE:
                return
            elif f.kind != wire.Kind.HEARTBEAT:
                raise wire.WireError(f"unexpected {f.kind.name} frame")

    def _commit(self, conn, epoch: Epoch, f: wire.Frame, digests) -> None:
        if f.epoch != epoch.number:
            raise wire.WireError(f"COMMIT for epoch {f.epoch} while receiving {epoch.number}")
        counts = f.json()
        if not isinstance(counts, dict) or (counts.get("pages"), counts.get("zeros")) != (
                epoch.page_count, epoch.zero_count):
            raise wire.WireError(f"epoch {epoch.number} incomplete: COMMIT says {counts}, "
                                 f"got {epoch.page_count} pages, {epoch.zero_count} zeros")
        if epoch.devices is None:
            raise wire.WireError(f"epoch {epoch.number} has no device state")
        if counts.get("refs", 0) != epoch.ref_count:
            raise wire.WireError(f"epoch {epoch.number} incomplete: COMMIT says "
                                 f"{counts.get('refs')} page references, got {epoch.ref_count}")
        if counts.get("disk_writes", 0) != epoch.disk_writes:
            raise wire.WireError(f"epoch {epoch.number} incomplete: COMMIT says "
                                 f"{counts.get('disk_writes')} disk writes, got "
                                 f"{epoch.disk_writes}")
        t0 = time.monotonic()
        with self._lock:  # a failover waits for a commit in progress, never reads half of one
            self._store_op(self.store.journal, epoch)
            if epoch.number > 0:  # journaled: committed
                self._committed(conn, epoch.number)
            self._store_op(self.store.apply, epoch)
            if epoch.number == 0:  # no journal for the full copy: committed once applied
                self._committed(conn, 0)
                conn.sock.settimeout(self.timeout)
        # A long commit is not silence from the primary.
        self.last_frame = time.monotonic()
        self.apply_ms.add((time.monotonic() - t0) * 1000)
        self.epoch_bytes.add(epoch.wire_bytes)
        if digests is not None:
            self._verify(epoch.number, digests)
        if epoch.number % 10 == 0 or epoch.number < 2:
            self._update()

    def _committed(self, conn, n: int) -> None:
        if self.trace:
            self.trace.write(f"{time.time():.6f},{n}\n")
        conn.send_frame(wire.Kind.ACK, n)

    def _verify(self, n: int, digests: np.ndarray) -> None:
        names = [b.name for b in self.store.info.blocks]
        mine = page_digests(self.store.image(names.index(self.store.info.shared_block)))
        diff = int(np.count_nonzero(mine != digests)) if len(mine) == len(digests) else -1
        self.verify["checks"] += 1
        self.verify["differing_groups"] += max(diff, 0) if diff >= 0 else len(mine)
        self.verify["last"] = {"epoch": n, "differing_groups": diff}
        self._update()

    def _verify_disk(self, n: int, chunks: np.ndarray, sums: np.ndarray) -> None:
        if len(chunks) and int(chunks.max()) >= -(-self.store.disk_size // DISK_CHUNK):
            raise wire.WireError("VERIFY_DISK names a chunk beyond the disk")
        mine = disk_digests(self.store.disk_fd, chunks)
        diff = int(np.count_nonzero(mine != sums))
        self.verify["disk_checks"] += 1
        self.verify["disk_chunks"] = len(chunks)
        self.verify["differing_disk_chunks"] += diff
        self.verify["last_disk"] = {"epoch": n, "chunks": len(chunks), "differing": diff}
        self._update()

    def _store_op(self, fn, *args):
        """Store I/O errors (no space, EIO) are the standby's problem, not a sign that the
        primary died: they must not look like a lost connection."""
        try:
            return fn(*args)
        except OSError as e:
            raise StoreError(f"standby store: {e.strerror or e}") from None

    # Failure and failover
    def _primary_failed(self, reason: str, closed: bool) -> None:
        self.log(f"primary failure detected: {reason}")
        if self.store.committed < 0:
            self.log("no committed checkpoint yet: nothing to fail over to")
            self._update("waiting")
            return
        try:
            if closed:
                self.do_failover(reason)
            elif self.fence_command:
                self._update("fencing")
                if self._fence():
                    self.do_failover(reason + "; primary fenced")
                else:
                    self._update("primary-silent")
                    self.log("fence command failed: not failing over")
            else:
                self._update("primary-silent")
                self.log("not failing over: the primary may still run behind a broken link and "
                         "no fence command is configured (fence it, then 'remusdb failover "
                         "--force')")
        except RemusError:
            # The primary is gone and the store intact: an operator can retry.
            self._update("failover-failed")
            self.log("retry with 'remusdb failover' once the cause is fixed")

    def _fence(self) -> bool:
        r = subprocess.run(self.fence_command, shell=True, capture_output=True, text=True,
                           timeout=60)
        self.log(f"fence command exited {r.returncode}")
        return r.returncode == 0

    def do_failover(self, reason: str) -> dict:
        with self._lock:
            if self.guest is not None:
                return self.failover_times
            previous = self.state
            self._update("failing-over")
            t0 = time.monotonic()
            try:
                # Finish a commit a store error interrupted (its journal), then start the VM.
                self.store.close()
                self.store.open()
                spec = self.make_spec()
                guest, times = failover.resume(self.store, spec, self.run_dir / "vm")
            except Exception as e:
                self.log(f"failover failed: {e}")
                try:
                    self.store.open()  # mapped again, so a retry can use it
                except RemusError:
                    pass
                self._update(previous)
                raise RemusError(f"failover failed: {e}") from None
            self.guest = guest
            self.failover_times = {"reason": reason, "epoch": self.store.committed,
                                   "stream_built_s": round(times.stream_built, 3),
                                   "loaded_s": round(times.loaded, 3),
                                   "running_s": round(times.running, 3)}
            self.log(f"failed over to epoch {self.store.committed}: VM running "
                     f"{time.monotonic() - t0:.2f} s after the decision")
            if self.cfg.optimizations.cp:
                self._abort_uncommitted()
            self._sync_clock()
            self._update("active")
            return self.failover_times

    def _abort_uncommitted(self) -> None:
        try:
            done = recovery.abort_uncommitted(self.guest.files.agent)
        except RemusError as e:
            self.failover_times["cp_recovery"] = {"error": str(e)}
            self.log(f"{e}; sessions that were mid-transaction wait for their TCP timeout")
            return
        self.failover_times["cp_recovery"] = done
        self.log(f"commit protection: {done['terminated']} session(s) that were not committing "
                 f"aborted and closed in {done['ms']:.0f} ms")

    def _sync_clock(self) -> None:
        """The failover gap is missing from the guest's clock: step it now, then keep it."""
        self.clock = ClockKeeper(self.guest.files.agent, log=self.log)
        deadline = time.monotonic() + 10
        while self.clock.check() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        self.clock.start()

    # Control socket: manual failover and liveness
    @property
    def control_path(self) -> Path:
        return self.run_dir / "standby.sock"

    def _control(self) -> None:
        self.control_path.unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.control_path))
        srv.listen(4)
        while not self.stopped.is_set():
            conn, _ = srv.accept()
            with conn:
                try:
                    req = json.loads(conn.makefile().readline() or "{}")
                    reply = self._handle(req if isinstance(req, dict) else {})
                except Exception as e:  # the control socket must outlive any one request
                    reply = {"ok": False, "error": str(e)}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    def _handle(self, req: dict) -> dict:
        if req.get("cmd") != "failover":
            return {"ok": False, "error": f"unknown command {req.get('cmd')!r}"}
        if self.guest is not None:
            return {"ok": True, "already": True, **(self.failover_times or {})}
        silent_for = time.monotonic() - self.last_frame
        if self.session_open and silent_for < self.timeout:
            return {"ok": False, "error": f"refusing: the primary is still sending (last frame "
                                          f"{silent_for:.2f} s ago)"}
        if self.store.committed < 0:
            return {"ok": False, "error": "refusing: no committed checkpoint"}
        if self.state in ("primary-silent", "recovered", "fencing") and not req.get("force"):
            return {"ok": False, "error": "refusing: the primary is not known to be down "
                                          f"(standby state {self.state}); fence it and use "
                                          "--force"}
        if self._conn is not None:
            self._conn.close()
        return {"ok": True, **self.do_failover("manual failover")}

    def _update(self, state: str | None = None) -> None:
        if state:
            self.state = state
        self.status.update(
            role="standby", state=self.state, vm=self.cfg.vm.name,
            epoch_committed=self.store.committed, verify=self.verify,
            apply_ms=self.apply_ms.percentiles(), bytes_per_epoch=self.epoch_bytes.percentiles(),
            failover=self.failover_times, qemu_pid=self.guest.pid if self.guest else None,
            guest_clock=self.clock.summary() if self.clock else None)


def request_failover(run_dir: Path, force: bool = False, timeout: float = 120.0) -> dict:
    path = Path(run_dir) / "standby.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except OSError:
        raise RemusError(f"no standby daemon answers at {path}") from None
    with s:
        s.sendall(json.dumps({"cmd": "failover", "force": force}).encode() + b"\n")
        reply = json.loads(s.makefile().readline() or "{}")
    if not reply.get("ok"):
        raise RemusError(f"failover {reply.get('error', 'failed')}")
    return reply
