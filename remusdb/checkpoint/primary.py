"""The primary daemon: capture each epoch from QEMU over COLO, let the VM run, ship the epoch.

Three threads: capture (the COLO transaction; the VM is paused only while the epoch is read into
memory), sender (frames to the standby, heartbeats when idle) and receiver (the standby's
acknowledgements). A bounded queue between capture and sender is the back-pressure: when the
link is slower than the dirty rate, the next checkpoint waits, the VM stays paused a little
longer, and nothing is dropped. Losing the standby ends the session: QEMU is told
x-colo-lost-heartbeat and the VM runs on unprotected (the node daemon starts the next session).
What each device does at each phase is its participants' business; the daemon only walks them.
"""

from __future__ import annotations

import enum
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

from remusdb.checkpoint import handshake, wire
from remusdb.checkpoint.colo import ColoEndpoint, start_migration
from remusdb.checkpoint.encode import EpochOut, epoch_frames
from remusdb.checkpoint.epoch import StreamInfo
from remusdb.checkpoint.link import Link
from remusdb.checkpoint.participant import Participant
from remusdb.checkpoint.state import PrimaryState, StateHolder
from remusdb.checkpoint.status import EpochMetrics, EpochObserver, PrimaryStatus, StatusFile
from remusdb.checkpoint.stream.format import PAGE_SIZE, RamBlock, StreamError
from remusdb.compression.compressor import Compressor
from remusdb.config import INTERVAL_BOUNDS, Config, interval_ok
from remusdb.errors import RemusError
from remusdb.hypervisor.clock import ClockKeeper
from remusdb.hypervisor.qemu import RAM_BACKEND, QemuGuest
from remusdb.witness.keeper import LeaseKeeper

log = logging.getLogger(__name__)
HEARTBEAT_S = 0.1
GUEST_ENDED = frozenset({"shutdown", "guest-panicked", "internal-error"})
STALL_TIMEOUT_S = 10.0  # a checkpoint stuck this long ends protection (the watchdog)
WITNESSED_BYE_WAIT = 2.0  # with the witness told, the standby's answer is only a courtesy


class Answer(enum.StrEnum):
    """What became of the standby after our BYE."""

    CONFIRMED = "confirmed"  # BYE back: its store is marked ended, it will not fail over
    CLOSED = "closed"  # it hung up: gone, and a restarted standby waits for an operator
    SILENT = "silent"  # nothing for `silence_wait`: it has fenced us or waits for an operator


def vm_runs(process_alive: bool, status: str | None) -> bool:
    """Whether this host's VM still runs: only then may the standby be told not to fail over."""
    return process_alive and status is not None and status not in GUEST_ENDED


def silence_wait(heartbeat_timeout_s: float) -> float:
    """How long held output waits for a silent standby: its heartbeat timeout and fence
    command run their course first, so a fenced-over standby never contradicts what went out."""
    return heartbeat_timeout_s + handshake.FENCE_TIMEOUT + 2.0


class PrimaryDaemon:
    def __init__(self, cfg: Config, guest: QemuGuest, run_dir: Path,
                 participants: Iterable[Participant] = (), stall_timeout: float = STALL_TIMEOUT_S,
                 queue_depth: int = 4, term: int = 0,
                 peer: tuple[str, int] | None = None, clock: ClockKeeper | None = None,
                 on_state: Callable[[PrimaryState], None] | None = None,
                 link: Link | None = None, resumes: Iterable[str] = (),
                 witness: LeaseKeeper | None = None, observer: EpochObserver | None = None):
        self.cfg, self.guest, self.run_dir = cfg, guest, Path(run_dir)
        self.term = term  # carried in HELLO: a standby of a newer term refuses us
        self.peer = peer or (cfg.standby.address, cfg.standby.port)
        self.link = link or Link.for_host(cfg, "primary")
        self.session = uuid.uuid4().hex
        self.resumes = list(resumes)  # sessions this one follows: the standby may replace them
        self.participants = list(participants)
        self.queue: queue.Queue[EpochOut | None] = queue.Queue(queue_depth)
        self.stall_timeout = stall_timeout
        self.status = StatusFile(self.run_dir / PrimaryStatus.file_name())
        self.on_state = on_state  # the node daemon follows the session's states
        self.states = StateHolder(PrimaryState.STARTING, log, self._changed)
        self.metrics = EpochMetrics(observer)
        self.interval_ms = cfg.checkpoint.interval_ms  # `remusdb interval` changes it live
        self.captured = self.sent = self.acked = -1
        self.sending = -1  # the newest epoch whose frames started to leave: ACKs stop there
        self.failure: str | None = None
        self._qmp_lock = threading.RLock()  # _fail may run again inside a signal handler
        self.endpoint: ColoEndpoint | None = None
        self._stop = threading.Event()
        self.conn: wire.Connection | None = None
        # One keeper per VM, whatever the sessions: qemu-ga serves one client at a time.
        self.clock = clock or ClockKeeper(guest.files.agent)
        self.compressor: Compressor | None = None
        self._handover = threading.Event()
        self._handing_over = False  # _finish_handover owns the end of the session
        self._trouble: str | None = None  # what went wrong meanwhile
        self.vm_stopped = False  # switchover or VM_LOST: our VM is gone
        self.standby_answer: Answer | None = None  # to our BYE: confirmed, closed or silent
        self._answered = threading.Event()
        self._receiving = False  # the receiver runs: it will see the standby's answer
        self._ended = threading.Event()  # the end of protection is settled (_fail, handover)
        # The witness's lease: the VM resumes from a checkpoint and its output goes out only
        # while it lives; the standby's checkpoint is declared current once it is.
        self.witness = witness

    @property
    def state(self) -> PrimaryState:
        return self.states.current

    # Protection, phase by phase
    def protect(self, connect_wait: float = 30.0) -> None:
        """Run until protection ends (standby lost, QEMU gone, or stop())."""
        self.conn = handshake.connect(self.peer, self.link, connect_wait)
        # Seeding has no watchdog yet and holds the VM paused at its end: a standby that stops
        # reading must end it, not keep the VM waiting until TCP gives up.
        self.conn.sock.settimeout(max(30.0, self.stall_timeout))
        self.states.set(PrimaryState.SEEDING)
        try:
            self._handshake(self.conn)
            endpoint = self._seed(self.conn)
            self._start_threads()
        except BaseException as e:  # end it in order: the write log, the relay, the link
            self._fail(f"protection did not start: {e}")
            if self.endpoint is not None:
                self.endpoint.conn.close()
            raise
        self.captured = 0
        endpoint.ready()
        self._publish()  # "seeding" until the standby acknowledges the full copy
        try:
            self._capture_loop(endpoint)
        except (StreamError, OSError) as e:
            if self.failure is None:
                self._fail(f"COLO stream from QEMU ended: {e}")
        finally:
            self._end_capture(endpoint)
        # Ended by another thread: it may still wait for the standby's answer, and the next
        # session must not begin before this one's held output is settled.
        self._ended.wait(silence_wait(self.cfg.standby.heartbeat_timeout_ms / 1000) + 30)

    def _handshake(self, conn: wire.Connection) -> None:
        hello: dict = {"session": self.session, "resumes": self.resumes,
                       "vm": self.cfg.vm.name, "term": self.term,
                       "interval_ms": self.interval_ms, "disk_size": 0}
        for p in self.participants:
            hello.update(p.hello())
        try:
            conn.send(wire.encode_json(wire.Kind.HELLO, 0, hello))
            welcome = handshake.read_welcome(conn, hello["disk_size"])
        except OSError as e:
            self._link_lost("before protection started", e)
        for p in self.participants:
            p.on_welcome(welcome)

    def _seed(self, conn: wire.Connection) -> ColoEndpoint:
        """Epoch 0, the full copy: what participants send first (the disk, the VM running),
        QEMU's initial RAM copy, then — the VM paused — the rest of epoch 0 goes out before
        the VM resumes: one seeding pause, instead of the first checkpoints stalling behind
        it in the queue."""
        try:
            for p in self.participants:
                p.on_seed(conn.send)
        except (OSError, RemusError) as e:
            self._link_lost("during the disk copy", e)
        mon = self.guest.monitor
        assert mon is not None  # the guest runs (QemuGuest.start) before protection starts
        sock = start_migration(mon, self.run_dir / "colo.sock", self.interval_ms,
                               max(30.0, self.stall_timeout))
        endpoint = self.endpoint = ColoEndpoint(sock)
        t0 = time.monotonic()
        init = endpoint.read_initial()  # the VM is paused at its end, until endpoint.ready()
        if not init.colo:
            raise RemusError("QEMU did not enable COLO on the migration stream")
        self.compressor = self._new_compressor(init.blocks)
        log.info("initial copy: %.0f MiB from QEMU in %.1f s (%d pages, %d zero pages)",
                 endpoint.r.offset / 2**20, time.monotonic() - t0, init.pages.pages,
                 init.pages.zero_count)
        t1 = time.monotonic()
        out = EpochOut(0, init.pages, init.devices)
        for p in self.participants:
            p.on_pause(out)  # output from here on waits for the acks
        info = StreamInfo(init.config, init.blocks, init.ram_section.section_id,
                          init.ram_section.version_id, RAM_BACKEND)
        try:
            conn.send(wire.encode_json(wire.Kind.STREAM, 0, info.to_json()))
            self.sending = 0
            sent = self._send_epoch(out)
        except (OSError, RemusError) as e:
            self._link_lost("during the full copy", e)
        self.sent = 0
        conn.sock.settimeout(None)  # from here the watchdog and heartbeats watch the link
        log.info("full copy sent (%.1f MiB on the link); the VM waited %.2f s for it (%d disk "
                 "writes replayed)", sent / 2**20, time.monotonic() - t1, len(out.disk))
        return endpoint

    def _new_compressor(self, blocks: list[RamBlock]) -> Compressor | None:
        """A new cache per session: the standby starts afresh."""
        opts = self.cfg.optimizations
        if opts.compression == "off":
            return None
        ram = next(b.length for b in blocks if b.name == RAM_BACKEND) // PAGE_SIZE
        return Compressor(opts.compression, [b.length // PAGE_SIZE for b in blocks],
                          int(ram * opts.page_cache))

    def _start_threads(self) -> None:
        self._receiving = True
        for target, name in ((self._guard(self._sender), "sender"),
                             (self._guard(self._receiver), "receiver"),
                             (self._watchdog, "watchdog")):
            threading.Thread(target=target, name=name, daemon=True).start()
        if not self.clock.is_alive():
            self.clock.start()

    def _capture_loop(self, endpoint: ColoEndpoint) -> None:
        while not self._stop.is_set():
            ck = endpoint.next_checkpoint()
            out = EpochOut(ck.seq, ck.pages, ck.devices, paused_at=ck.paused_at,
                           stopped_at=ck.stopped_at, received_at=ck.received_at,
                           stream_bytes=ck.stream_bytes)
            for p in self.participants:
                p.on_pause(out)
            self._enqueue(out)
            if self._handover.is_set():
                self._finish_handover(ck.seq)
                return
            if not self._may_resume(ck.seq):
                return
            out.resumed_at = endpoint.ack()
            self.captured = ck.seq
            self.metrics.captured(out.pause_ms, ck.pages.pages, ck.stream_bytes, ck.seq,
                                  out.resumed_at)
            for p in self.participants:
                p.on_resume(out)
            if ck.seq % 10 == 0:
                self._publish()

    def _may_resume(self, seq: int) -> bool:
        """A fenced host keeps its VM paused at this checkpoint until the key is its own
        again (or the VM is killed: then the session ends)."""
        w = self.witness
        if w is None or w.may_speak():
            return True
        log.warning("fenced by the witness: the VM stays paused at checkpoint %d", seq)
        while not w.may_speak():
            if self._stop.wait(0.02):
                return False
            if not self.guest.running:  # the fence killed it: the standby's checkpoint is it
                raise StreamError("QEMU exited while the VM was held paused (fenced)")
        log.info("the witness's key is ours again: the VM resumes")
        return True

    def _enqueue(self, out: EpochOut) -> None:
        try:
            self.queue.put_nowait(out)
        except queue.Full:  # the link is slower than the dirty rate: the VM waits
            t0 = time.monotonic()
            while not self._stop.is_set():
                try:
                    self.queue.put(out, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self.metrics.waited(time.monotonic() - t0)

    def _end_capture(self, endpoint: ColoEndpoint) -> None:
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

    def set_interval(self, ms: int) -> int:
        """A new checkpoint interval for this session, at once (QEMU checkpoints now and then
        every `ms`); the previous one. The config's value returns with the next session."""
        if not interval_ok(ms):
            raise RemusError(f"checkpoint interval {ms!r} ms is outside {INTERVAL_BOUNDS}")
        with self._qmp_lock:  # not over a failure or a handover _fail/hand_over just began
            if self._handing_over:
                raise RemusError("a switchover is ending this session")
            if self.states.current != PrimaryState.PROTECTED or self.failure is not None:
                raise RemusError(f"the interval changes on a protected VM (this session: "
                                 f"{self.failure or self.state.value})")
            mon = self.guest.monitor
            assert mon is not None  # protected: the guest runs
            try:
                mon.execute("migrate-set-parameters", **{"x-checkpoint-delay": ms})
            except Exception as e:  # qemu.qmp's errors, a timeout: one line for the operator
                raise RemusError(f"QEMU did not take the interval: {type(e).__name__}: {e}"
                                 ) from None
            old, self.interval_ms = self.interval_ms, ms
        log.info("checkpoint interval: %d -> %d ms", old, ms)
        self._publish()
        return old

    # Switchover
    def hand_over(self) -> None:
        """Planned role swap: the VM stays paused after the next checkpoint, its last here."""
        if self.states.current != PrimaryState.PROTECTED:
            raise RemusError(f"switchover needs a protected VM (primary state {self.state})")
        self._handover.set()

    def _finish_handover(self, last: int, timeout: float = 5.0) -> None:
        """Paused at checkpoint `last`: once the standby committed it our VM dies and HANDOVER
        says "run it". Without that ack it dies all the same and the link closes without BYE,
        so the standby fails over from what it has: the VM runs once either way. Only this
        ends the session from here (`_fail` only notes why)."""
        with self._qmp_lock:
            if self.failure is not None:  # ended in order already (BYE; the VM runs on)
                return
            self._handing_over = True
        deadline = time.monotonic() + min(timeout, self.stall_timeout / 2)
        while self.acked < last and time.monotonic() < deadline and self._trouble is None:
            time.sleep(0.005)
        ok = self.acked >= last
        with self._qmp_lock:
            self.failure = "handed over" if ok else (
                f"switchover: no ack for the last epoch ({self._trouble or 'timed out'})")
            self._stop.set()
        failure = self.failure
        self.guest.kill()
        self.vm_stopped = True
        if self.witness is not None:  # the standby takes the key as soon as it may
            self.witness.release()
        assert self.conn is not None
        try:
            if ok:
                self.conn.send(wire.encode_json(wire.Kind.HANDOVER, last, {"term": self.term}),
                               lock_timeout=5.0)
        except OSError as e:
            ok = False
            log.warning("switchover: HANDOVER not sent (%s)", e)
        log.info("switchover: the VM stopped here at epoch %d; the standby %s", last,
                 "takes over" if ok else "fails over from its last checkpoint")
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._stop_participants(failure, vm_gone=True)
        self.clock.stop()
        self.states.set(PrimaryState.UNPROTECTED)
        self._ended.set()

    # Threads
    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except (OSError, ConnectionError, RemusError) as e:
                self._fail(f"standby link lost: {e}")
            except Exception as e:  # a bug: end protection in order, not by the watchdog
                log.exception("internal error in the %s thread", threading.current_thread().name)
                self._fail(f"internal error in the primary daemon: {type(e).__name__}: {e}")
        return run

    def _sender(self) -> None:
        assert self.conn is not None
        while True:
            try:
                item = self.queue.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                self.conn.send_frame(wire.Kind.HEARTBEAT, max(self.sent, 0))
                continue
            if item is None:
                return
            self.sending = item.number
            self._send_epoch(item)
            self.sent = item.number

    def _send_epoch(self, out: EpochOut) -> int:
        """Bytes sent."""
        assert self.conn is not None
        for p in self.participants:
            p.on_send(out)
        sent = 0
        for parts in epoch_frames(out, self.compressor):
            self.conn.send(parts)
            sent += sum(len(p) for p in parts)
        if out.number > 0:  # the full copy is not a checkpoint's worth
            self.metrics.sent(out.pages.pages + out.pages.zero_count, sent)
        return sent

    def _receiver(self) -> None:
        """The only reader of the link. After the end of protection it still reads, for the
        standby's answer to our BYE (or its hang-up): held output waits for that."""
        assert self.conn is not None
        while True:
            try:
                f = self.conn.recv()
            except (OSError, ConnectionError, RemusError) as e:
                self._answer(Answer.CLOSED)
                if not self._stop.is_set():
                    self._fail_soon(f"standby link lost: {e}")
                return
            if f.kind == wire.Kind.BYE:  # an answer, or the standby ending it (its store)
                self._answer(Answer.CONFIRMED)
                if not self._stop.is_set():
                    self._fail_soon(f"the standby ended protection: {f.reason()}")
                return
            if self._stop.is_set():
                continue
            try:
                self._on_frame(f)
            except RemusError as e:
                self._fail_soon(f"standby link lost: {e}")

    def _on_frame(self, f: wire.Frame) -> None:
        if f.kind == wire.Kind.ACK:
            if not self.acked < f.epoch <= self.sending:
                # Releasing output for an epoch the standby cannot hold breaks invariant 1.
                raise wire.WireError(f"ACK for epoch {f.epoch}: sent up to {self.sending}, "
                                     f"acknowledged up to {self.acked}")
            self.acked = f.epoch
            self.metrics.acked(f.epoch, time.monotonic())
            if self.witness is not None:
                self.witness.epoch = f.epoch
            for p in self.participants:
                p.on_ack(f.epoch)
            # Only the first ACK of a session may change its state. The lock, which a QMP call
            # (a switchover, `remusdb interval`) holds for as long as QEMU takes, is never
            # taken for the others: the ACKs after it release output without waiting for QEMU.
            if self.states.current != PrimaryState.SEEDING:
                return
            with self._qmp_lock:  # not over a failure _fail has just recorded
                if self.states.current == PrimaryState.SEEDING and self.failure is None:
                    self.states.set(PrimaryState.PROTECTED)
                    if self.witness is not None:  # not on the reader: etcd may be slow
                        threading.Thread(target=self._declare_protected, name="declare",
                                         daemon=True).start()
        elif f.kind != wire.Kind.HEARTBEAT:
            raise RemusError(f"unexpected {f.kind.name} from the standby")

    def _declare_protected(self) -> None:
        """The standby's checkpoint is current: the witness may let it take over. Not once
        protection has ended (`_end` declares the opposite, under the same lock)."""
        with self._qmp_lock:
            if self.failure is None and self.witness is not None:
                self.witness.declare(self.session)

    def _answer(self, answer: Answer) -> None:
        if self.standby_answer is None:
            self.standby_answer = answer
        self._answered.set()

    def _watchdog(self) -> None:
        """A checkpoint stuck mid-transaction would leave the VM paused forever."""
        while not self._stop.wait(0.5):
            since = self.endpoint.paused_since if self.endpoint else None
            if self.witness is not None and not self.witness.may_speak():
                continue  # fenced: the pause is ours, on purpose
            if since is not None and time.monotonic() - since > self.stall_timeout:
                self._fail(f"checkpoint stalled for {self.stall_timeout:.0f} s")

    # The end of protection
    def _link_lost(self, when: str, e: BaseException) -> NoReturn:
        self._fail(f"standby link lost {when}: {e}")
        raise RemusError(f"the standby dropped the connection: {e}") from None

    def _fail_soon(self, reason: str) -> None:
        """_fail from the receiver: it must go on reading, for the standby's answer."""
        threading.Thread(target=self._fail, args=(reason,), name="fail", daemon=True).start()

    def _fail(self, reason: str) -> None:
        """End protection, deciding by what this host knows of its VM.

        The VM runs (its process lives, QMP answers): the standby must hear BYE, since a link
        that closes without it means "primary dead" and makes it fail over — a second copy.
        The held output goes out only once the standby answered (BYE back: it will not fail
        over), hung up (gone: restarted, it waits for an operator), or stayed silent long
        enough to have fenced us (`silence_wait`). Until then it is held, so no client sees
        what a failover could take back.

        The VM is gone (a QEMU crash, the OOM killer, a signal to the host's processes), or
        not known to run (then it is killed, to make it so): VM_LOST tells the standby to fail
        over now, and the held output is dropped, never sent."""
        with self._qmp_lock:
            if self._handing_over:  # the switchover ends it (no BYE, no held output out)
                self._trouble = self._trouble or reason
                return
            if self.failure is not None:
                return
            self.failure = reason
            self._stop.set()
        try:
            self._end(reason)
        finally:
            self._ended.set()

    def _end(self, reason: str) -> None:
        with self._qmp_lock:
            runs, why = self._vm_runs()
            if runs and self.witness is not None and not self.witness.declare(None):
                # Unprotected, the VM would run past the standby's checkpoint while the
                # witness still calls that one current: a standby that takes the key then
                # would lose what our clients were told. The checkpoint is the VM now.
                runs, why = False, ("the witness could not be told it runs unprotected "
                                    "(fenced, or etcd unreachable): killed")
            if runs:
                try:
                    mon = self.guest.monitor
                    assert mon is not None  # see _seed()
                    mon.execute("x-colo-lost-heartbeat")
                except Exception:
                    pass
            else:
                self.guest.kill()
                self.vm_stopped = True
                if self.witness is not None:  # the VM is gone: the standby may take the key
                    self.witness.release()
        if not runs:
            self._vm_lost(reason, why)
        else:
            self._bye(reason)
        self.states.set(PrimaryState.UNPROTECTED)

    def _vm_runs(self) -> tuple[bool, str]:
        if not self.guest.running:
            return False, "its QEMU exited"
        try:
            mon = self.guest.monitor
            assert mon is not None  # see _seed()
            status = mon.status()
        except Exception as e:
            return False, f"QMP does not answer ({type(e).__name__}: {e})"
        return vm_runs(True, status), f"QEMU says {status!r}"

    def _vm_lost(self, reason: str, why: str) -> None:
        log.error("protection lost: %s; the VM is not running here (%s): telling the standby "
                  "to take over from its last checkpoint (epoch %d acknowledged)", reason, why,
                  self.acked)
        self.failure = f"{reason}; the VM is gone here ({why})"
        self._stop_participants(reason, vm_gone=True)  # held output never goes out
        if self.conn is None:
            return
        try:
            self.conn.send(wire.encode_json(wire.Kind.VM_LOST, max(self.acked, 0),
                                            {"reason": self.failure}), lock_timeout=5.0)
        except OSError as e:
            log.warning("VM_LOST not sent (%s): the standby learns it as the link closes", e)
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _bye(self, reason: str) -> None:
        log.warning("protection lost: %s; the VM continues unprotected (its held output once "
                    "the standby answers)", reason)
        answer, said = Answer.CLOSED, False
        if self.conn is not None:
            try:
                self.conn.send(wire.encode_json(wire.Kind.BYE, max(self.captured, 0),
                                                {"reason": reason}),
                               lock_timeout=WITNESSED_BYE_WAIT if self.witness else 5.0)
                said = True
            except TimeoutError:  # the sender is stuck: the standby is not reading
                log.warning("could not send BYE (the link is stuck)")
            except OSError as e:
                log.warning("could not send BYE (%s)", e)
            if self._receiving:  # else epoch 0 never committed: nothing to fail over to
                wait = silence_wait(self.cfg.standby.heartbeat_timeout_ms / 1000)
                if self.witness is not None:  # declared unprotected: it cannot take the key
                    wait = min(wait, WITNESSED_BYE_WAIT)
                if not self._answered.wait(wait):
                    log.warning("the standby said nothing in %.0f s after BYE: it has fenced "
                                "this host by now or waits for an operator", wait)
                answer = self.standby_answer or Answer.SILENT
        self.standby_answer = answer
        if said:  # else the link stays open: a standby that reads again sees silence, not
            try:  # an end without BYE (a death) while this VM runs
                self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
            except OSError:
                pass
        self._stop_participants(reason)  # like Remus: unprotected, the held output goes out
        log.info("held output released (standby: %s)", answer.value)

    def _stop_participants(self, reason: str, vm_gone: bool = False) -> None:
        for p in self.participants:
            try:
                p.on_stop(reason, vm_gone)
            except Exception:  # the others and the BYE must still happen
                log.exception("%s could not stop", type(p).__name__)

    def stop(self) -> None:
        """Orderly end (operator): the standby is told, the VM runs on unprotected."""
        self._fail("stopped by the operator")

    def _changed(self) -> None:
        if self.on_state is not None:
            self.on_state(self.states.current)
        self._publish()

    def _publish(self) -> None:
        self.status.write(self.status_doc())

    def status_doc(self) -> PrimaryStatus:
        """The session's status now (the file is rewritten every 10 epochs; the node's API
        asks at any time)."""
        doc = PrimaryStatus(
            state=self.states.current.value,
            vm=self.cfg.vm.name, interval_ms=self.interval_ms,
            epoch_captured=self.captured, epoch_sent=self.sent, epoch_acked=self.acked,
            lag_epochs=max(0, self.captured - self.acked), failure=self.failure,
            queue=self.queue.qsize(), guest_clock=self.clock.summary(),
            compression=self.compressor.summary() if self.compressor else {"mode": "off"},
            link=self.link.mode)
        self.metrics.fill(doc)
        for p in self.participants:
            if p.status_key:
                setattr(doc, p.status_key, p.summary())
        return doc
