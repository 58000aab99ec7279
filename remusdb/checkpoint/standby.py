"""The standby daemon: receive epochs, commit each atomically, and fail over when the primary dies.

Failure detection distinguishes a primary that is gone from one that is merely unheard:
- the connection closes without a BYE (EOF or reset): the primary daemon died, and with it its
  QEMU (it runs with a parent-death signal), so failing over cannot make a second copy;
- silence past the heartbeat timeout: the primary may be alive behind a broken link, so the
  standby fails over only after the configured fence command succeeds (or an operator's
  `remusdb failover --force`); without one it waits and says so;
- bad data (a PeerError) or this host's store failing (a LocalError) is no proof of death
  either: treated like silence; a bug in this daemon ends the session and waits for an
  operator, never fails over by itself.

Whatever a peer sends, the last committed checkpoint survives it: a peer must authenticate
(link.py) within seconds, a HELLO is judged before the store is touched, and a session that
would replace a committed checkpoint fills a second store that takes its place only once the
new epoch 0 is committed (`_promote`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from remusdb.checkpoint import failover, handshake, wire
from remusdb.checkpoint.control import SOCKET_NAME, ControlReply, ControlServer, FailoverRequest
from remusdb.checkpoint.link import AuthError, Link
from remusdb.checkpoint.receive import Complete, EpochReceiver
from remusdb.checkpoint.state import StandbyState, StateHolder
from remusdb.checkpoint.status import StandbyStatus, StatusFile, Window
from remusdb.checkpoint.store import StandbyStore, local_io, private_dir, settle
from remusdb.checkpoint.verify import Comparison
from remusdb.config import Config
from remusdb.errors import LocalError, PeerError, RemusError
from remusdb.hypervisor.qemu import GuestSpec, QemuGuest
from remusdb.reprotect.record import NodeRecord
from remusdb.reprotect.roles import Node, Verdict, judge_hello
from remusdb.witness.etcd import EtcdWitness
from remusdb.witness.keeper import LeaseKeeper
from remusdb.witness.rules import Leader, WitnessError, judge_take_over
from remusdb.witness.rules import TakeOver as TakeOverVerdict

log = logging.getLogger(__name__)
SEEDING_TIMEOUT = 300.0
HELLO_TIMEOUT = 10.0  # a connection that says nothing holds the session slot no longer
TakeOver = Callable[[StandbyStore, GuestSpec, Path, bool], failover.TakenOver]
# States in which the primary is not known to be down: a manual failover needs --force.
UNSURE = (StandbyState.PRIMARY_SILENT, StandbyState.RECOVERED, StandbyState.FENCING,
          StandbyState.INTERNAL_ERROR)


def listen(address: str, port: int) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((address, port))
    except OSError as e:
        srv.close()
        raise RemusError(f"cannot listen on {address}:{port}: {e.strerror}") from None
    srv.listen(4)
    return srv


class _HandedOver(Exception):
    """Switchover: the primary stopped its VM after we committed epoch `epoch`."""

    def __init__(self, epoch: int):
        super().__init__(epoch)
        self.epoch = epoch


class _VmLost(Exception):
    """VM_LOST: the primary's VM died there; the primary tells us to run it."""


class StandbyDaemon:
    def __init__(self, cfg: Config, run_dir: Path, make_spec: Callable[[], GuestSpec],
                 heartbeat_timeout: float = 1.0, fence_command: str = "",
                 trace: Path | None = None, take_over: TakeOver = failover.take_over,
                 node: NodeRecord | None = None, link: Link | None = None,
                 witness: EtcdWitness | None = None,
                 make_keeper: Callable[[int], LeaseKeeper] | None = None):
        self.cfg, self.run_dir = cfg, private_dir(Path(run_dir))
        self.link = link or Link.for_host(cfg, "standby")
        self.make_spec, self.take_over = make_spec, take_over
        self.timeout = heartbeat_timeout
        self.fence_command, self.fence_timeout = fence_command, handshake.FENCE_TIMEOUT
        self.node = node  # the node's term and role (None: a standby alone, term 0)
        # With a witness, every failover waits for its key (witness/rules.py): `pending` is
        # why the primary is thought failed, until the key is ours or the checkpoint moot.
        self.witness = witness if make_keeper is not None else None
        self.make_keeper = make_keeper
        self.pending: str | None = None
        self.keeper: LeaseKeeper | None = None  # the key, once a take-over won it
        self._witness_said = ""
        self.store = StandbyStore(self.run_dir / "store")
        self.incoming = self.store  # the store the current session fills (store.next: staged)
        self.status = StatusFile(self.run_dir / StandbyStatus.file_name())
        self.states = StateHolder(StandbyState.WAITING, log, self._publish)
        self.last_frame = 0.0
        self.committed_at = 0.0  # wall time of the newest commit (the API's lag)
        self.session_open = False
        self.taken: failover.TakenOver | None = None
        self.comparison = Comparison()
        self.apply_ms, self.epoch_bytes = Window(), Window()
        self._lock = threading.Lock()
        # A manual failover's QEMU starts in this long-lived thread, never in a control
        # client's: PR_SET_PDEATHSIG fires when the starting *thread* ends.
        self._vm_starter = ThreadPoolExecutor(1, thread_name_prefix="vm-starter")
        self.taking_over = False  # a failover runs: no HELLO may touch the store now
        self._conn: wire.Connection | None = None
        self.stopped = threading.Event()
        self._started = False
        # Tests: one line per committed epoch (time, epoch), written before its ACK leaves.
        self.trace = open(trace, "a", buffering=1) if trace else None

    @property
    def state(self) -> StandbyState:
        return self.states.current

    @property
    def guest(self) -> QemuGuest | None:
        return self.taken.guest if self.taken else None

    @property
    def control_path(self) -> Path:
        return self.run_dir / SOCKET_NAME

    # Serving
    def serve(self, ready: Callable[[], None] | None = None,
              listener: socket.socket | None = None) -> None:
        """Take sessions until this host runs the VM (a failover) or stop. `listener`: the
        node daemon's socket, which outlives this role; else one of our own."""
        srv = listener or listen(self.cfg.standby.address, self.cfg.standby.port)
        if not self._started:
            self._started = True
            self._recover_store()
            ControlServer(self.control_path, FailoverRequest.from_json, self.answer,
                          self.stopped).start()
        self._publish()
        if ready:
            ready()
        srv.settimeout(0.5)
        while self.guest is None and not self.stopped.is_set():
            try:
                sock, peer = srv.accept()
            except TimeoutError:
                if self.pending is not None:
                    self._try_take_over()
                continue
            try:
                secured = self.link.accept(sock)
            except AuthError as e:
                sock.close()
                log.warning("refused a connection from %s: %s", peer[0], e)
                continue
            log.info("connection from %s (%s)", peer[0], self.link.mode)
            self._session(wire.Connection(secured))
        if listener is None:
            srv.close()

    def rejoin(self) -> None:
        """This host no longer runs the VM (it handed it over, or it died): a standby again."""
        self.taken = None
        self.keeper = None  # the node released it with the VM
        self.states.set(StandbyState.WAITING)

    def _recover_store(self) -> None:
        """A restarted standby keeps what it had: a crash mid-apply is finished from the
        journal, so the store holds exactly its last committed checkpoint."""
        settle(self.store.root)
        if not self.store.meta_path.exists():
            return
        lineage, _ = self.store.disk_history()
        if self.store.committed_on_disk() < 0 and lineage:
            log.info("no committed checkpoint here (this host's disk was a running VM's or a "
                     "session's); the disk is kept and offered for a resync")
            return
        try:
            self.store.open()
        except RemusError as e:
            log.warning("previous store unusable (%s); it is replaced at the next session", e)
            return
        log.info("recovered the store at epoch %d", self.store.committed)
        self.states.set(StandbyState.RECOVERED)
        if self.witness is not None and not self.store.ended:
            # The witness decides: the key is free only if the primary is gone, and the
            # checkpoint current only if it said so. A live primary reconnects meanwhile.
            self.pending = "restarted with a committed checkpoint"

    def _session(self, conn: wire.Connection) -> None:
        self._conn = conn
        # Until epoch 0 (the full copy) commits there is nothing to fail over to, and the
        # primary is busy reading QEMU's initial stream: no heartbeat deadline yet.
        conn.sock.settimeout(HELLO_TIMEOUT)
        reason, closed = None, False
        try:
            self._welcome(conn)
            conn.sock.settimeout(max(self.timeout, SEEDING_TIMEOUT))
            self._receive(conn)
            log.info("primary ended protection (BYE): no failover")
            self._ended_by_bye()
            self._answer_bye(conn, "no failover")
        except handshake.Quiet:
            pass
        except _VmLost as e:  # the primary lives and says its VM does not: run it here
            reason, closed = f"the primary's VM is gone: {e}", True
        except _HandedOver as h:  # its VM stopped at our committed epoch: run it here
            reason, closed = (f"switchover: the primary handed over at epoch {h.epoch} "
                              f"(committed here: {self.store.committed})"), True
        except TimeoutError:
            reason = f"no checkpoint or heartbeat for {self.timeout:.1f} s"
        except (ConnectionError, OSError) as e:
            if self._said_bye(conn):
                log.info("primary ended protection (BYE) as the link closed: no failover")
                self._ended_by_bye()
            else:
                reason, closed = f"connection to the primary lost ({e})", True
        except PeerError as e:  # corrupt frame or a lying peer: no proof of death
            reason = f"bad data from the primary: {e}"
        except LocalError as e:  # our disk, not the primary: never a reason to fail over
            log.error("standby store failure: %s; ending protection (the primary runs on "
                      "unprotected, this store is not failed over to by itself)", e)
            self._answer_bye(conn, f"standby store failure: {e}")
            self.states.set(StandbyState.RECOVERED)
        except Exception:
            log.exception("internal error in the standby; not failing over by itself")
            self.states.set(StandbyState.INTERNAL_ERROR)
        finally:
            opened, self.session_open = self.session_open, False
            conn.close()
            staged = self._drop_staged()
        if reason and staged and self.taken is None:
            # This session never committed: what is here is an older session's checkpoint,
            # which the VM has run past unprotected since. Never failed over to by itself.
            log.warning("session ended before its first checkpoint (%s); epoch %d of the "
                        "previous session is kept: 'remusdb failover --force' only if the "
                        "primary is known to be dead", reason, self.store.committed)
            self.states.set(StandbyState.RECOVERED)
            return
        if reason and not opened and self.taken is None:
            # Nothing was received from this peer yet (a probe, a primary that gave up in its
            # handshake, our own store failing to offer a resync): no sign of anyone's death.
            log.warning("connection ended before a session began: %s", reason)
            return
        if reason:
            self._primary_failed(reason, closed)

    def _ended_by_bye(self) -> None:
        if self.store.committed >= 0:
            local_io(self.store.mark_ended, "bye")
        self.states.set(StandbyState.WAITING)

    def _answer_bye(self, conn: wire.Connection, reason: str) -> None:
        """BYE to the primary: its held output may go out, we will not fail over."""
        try:
            conn.send(wire.encode_json(wire.Kind.BYE, max(self.store.committed, 0),
                                       {"reason": reason}), lock_timeout=2.0)
        except OSError as e:
            log.debug("BYE not sent: %s", e)

    def _drop_staged(self) -> bool:
        """The session's second store, if it never took the committed one's place."""
        staged, self.incoming = self.incoming, self.store
        if staged is self.store:
            return False
        staged.close()
        shutil.rmtree(staged.root, ignore_errors=True)
        return True

    def _said_bye(self, conn: wire.Connection) -> bool:
        """Whether a BYE waits unread: an ACK that failed to go out (the primary shut the link
        right after its BYE) must not turn an orderly end into a "death" and a second copy."""
        try:
            conn.sock.settimeout(0.5)
            while True:
                if conn.recv().kind == wire.Kind.BYE:
                    return True
        except (OSError, RemusError):
            return False

    def _welcome(self, conn: wire.Connection) -> None:
        hello = conn.recv()
        if hello.kind == wire.Kind.QUERY:
            conn.send(wire.encode_json(wire.Kind.ROLE, 0, self._role()))
            raise handshake.Quiet("answered a query")
        if hello.kind != wire.Kind.HELLO:
            raise wire.WireError(f"expected HELLO, got {hello.kind.name}")
        hello_data = hello.json()
        if not isinstance(hello_data, dict) or "session" not in hello_data:
            raise wire.WireError("HELLO without a session")
        disk_size = hello_data.get("disk_size", 0)
        if not isinstance(disk_size, int) or disk_size < 0 or disk_size % 512:
            raise wire.WireError(f"HELLO with a bad disk size {disk_size!r}")
        verdict = judge_hello(self.node.node if self.node else Node(), hello_data.get("term", 0))
        if verdict.accept and (self.taken is not None or self.taking_over):
            # A failover runs (or ran): this store is about to be, or is, a running VM's.
            verdict = Verdict(False, "this host is taking over the VM")
        if verdict.accept:
            why = handshake.judge_replace(self.store, hello_data) or self._no_room(disk_size)
            if why:
                verdict = Verdict(False, why)
        if not verdict.accept:  # judged before the store is touched: nothing is lost
            log.warning("refusing the primary: %s", verdict.reason)
            conn.send(wire.encode_json(wire.Kind.REFUSE, 0, {"reason": verdict.reason,
                                                             **self._role()}))
            raise handshake.Quiet(verdict.reason)
        if self.node is not None:
            self.node.adopt(verdict.term)
        if self.pending is not None:
            log.info("a primary is back (HELLO accepted): no take-over (%s)", self.pending)
            self.pending = None
        lineage = str(hello_data.get("disk_lineage", ""))
        self.incoming, plan = local_io(self._incoming_store, str(hello_data["session"]),
                                       lineage, disk_size, verdict.term)
        # Open before WELCOME leaves: from then on the primary may send, and a manual failover
        # asked meanwhile must see a session that is sending.
        self.last_frame = time.monotonic()
        self.session_open = True
        self.states.set(StandbyState.RECEIVING)
        for f in handshake.welcome_frames(verdict.term, plan):
            conn.send(f)

    def _no_room(self, disk_size: int) -> str:
        limit = self.cfg.standby.max_disk_size
        if disk_size > limit:
            return f"a disk of {disk_size} bytes is more than standby.max_disk_size ({limit})"
        room = shutil.disk_usage(self.run_dir).free
        if self.store.committed < 0:
            room += self.store.disk_size  # replaced in place
        if disk_size > room:
            return f"a disk of {disk_size} bytes does not fit in this host's {room} free bytes"
        return ""

    def _incoming_store(self, session: str, lineage: str, disk_size: int, term: int
                        ) -> tuple[StandbyStore, handshake.DiskPlan]:
        """The store this session fills: this one when it holds no checkpoint, else a second
        one (with a copy of the disk for a resync) that replaces it at epoch 0's commit."""
        plan = handshake.disk_plan(self.store, lineage, disk_size)
        resync = plan.digests is not None
        if self.store.committed < 0:
            self.store.create(None, session, disk_size, lineage, resync, term)
            return self.store, plan
        staged = StandbyStore(self.store.root.with_name(self.store.root.name + ".next"))
        shutil.rmtree(staged.root, ignore_errors=True)
        private_dir(staged.root)
        if resync:
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(self.store.disk_path),
                            str(staged.disk_path)], check=True, capture_output=True)
        log.info("a new session: received beside the committed epoch %d, which it replaces "
                 "once its own first checkpoint is committed", self.store.committed)
        staged.create(None, session, disk_size, lineage, resync, term)
        return staged, plan

    def _promote(self) -> None:
        """The staged store committed epoch 0: it takes the committed store's place."""
        old, new = self.store, self.incoming
        root, retired = old.root, old.root.with_name(old.root.name + ".old")
        old.close()
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(root, retired)
        os.replace(new.root, root)  # a crash before this: settle() puts the old one back
        new.moved(root)
        shutil.rmtree(retired)
        self.store = self.incoming = new
        log.info("the new session's first checkpoint replaced the previous one")

    def _role(self) -> dict:
        node = self.node.node if self.node else Node()
        return {"state": node.state.value, "term": node.term,
                "committed": self.store.committed}

    def _receive(self, conn: wire.Connection) -> None:
        rx = EpochReceiver(self.incoming)
        while not rx.ended:
            f = conn.recv()
            self.last_frame = time.monotonic()
            if f.kind == wire.Kind.HANDOVER:
                raise _HandedOver(f.epoch)
            if f.kind == wire.Kind.VM_LOST:
                raise _VmLost(f.reason())
            done = rx.feed(f)
            if done is not None:
                self._commit(conn, done)

    def _commit(self, conn: wire.Connection, done: Complete) -> None:
        epoch = done.epoch
        t0 = time.monotonic()
        store = self.incoming
        with self._lock:  # a failover waits for a commit in progress, never reads half of one
            local_io(store.journal, epoch)
            if epoch.number > 0:  # journaled: committed
                self._committed(conn, epoch.number)
            local_io(store.apply, epoch)
            if epoch.number == 0:  # no journal for the full copy: committed once applied
                if store is not self.store:
                    local_io(self._promote)
                self._committed(conn, 0)
                conn.sock.settimeout(self.timeout)
        # A long commit is not silence from the primary.
        self.last_frame = time.monotonic()
        self.apply_ms.add((time.monotonic() - t0) * 1000)
        self.epoch_bytes.add(epoch.wire_bytes)
        publish = epoch.number % 10 == 0 or epoch.number < 2
        if done.digests is not None:
            info = self.store.stream()
            shared = [b.name for b in info.blocks].index(info.shared_block)
            self.comparison.ram(epoch.number, self.store.image(shared), done.digests)
            publish = True
        if done.disk_sums is not None:
            self.comparison.disk(epoch.number, self.store.disk_fd, self.store.disk_size,
                                 *done.disk_sums)
            publish = True
        if publish:
            self._publish()

    def _committed(self, conn: wire.Connection, n: int) -> None:
        self.committed_at = time.time()
        if self.trace:
            self.trace.write(f"{time.time():.6f},{n}\n")
        conn.send_frame(wire.Kind.ACK, n)

    # Failure and failover
    def _primary_failed(self, reason: str, closed: bool) -> None:
        log.warning("primary failure detected: %s", reason)
        if self.store.committed < 0:
            log.info("no committed checkpoint yet: nothing to fail over to")
            self.states.set(StandbyState.WAITING)
            return
        if self.witness is not None:
            self.pending = reason
            self.states.set(StandbyState.AWAITING_WITNESS)
            self._try_take_over()
            return
        try:
            if closed:
                self.do_failover(reason)
            elif self.fence_command:
                self.states.set(StandbyState.FENCING)
                if self._fence():
                    self.do_failover(reason + "; primary fenced")
                else:
                    self.states.set(StandbyState.PRIMARY_SILENT)
                    log.warning("fence command failed: not failing over")
            else:
                self.states.set(StandbyState.PRIMARY_SILENT)
                log.warning("not failing over: the primary may still run behind a broken link "
                            "and no fence command is configured (fence it, then 'remusdb "
                            "failover --force')")
        except RemusError:
            # The primary is gone and the store intact: an operator can retry.
            self.states.set(StandbyState.FAILOVER_FAILED)
            log.warning("retry with 'remusdb failover' once the cause is fixed")

    def _try_take_over(self) -> None:
        """One try for the witness's key (serve() tries again every half second): taken, the
        VM runs here in a newer term; held by the primary, we wait; moot, we stop trying."""
        reason = self.pending
        if reason is None:
            return
        try:
            won, verdict = self._take_key(force=False)
        except WitnessError as e:
            self._said(str(e))
            return
        if not won:
            if verdict.final:
                self.pending = None
                log.warning("not failing over: %s", verdict.reason)
                self.states.set(StandbyState.PRIMARY_SILENT)
            else:
                self._said(verdict.reason)
            return
        self.pending = None
        log.warning("witness: the key is ours (term %d): failing over (%s)", verdict.term,
                    reason)
        try:
            if self.fence_command:  # an extra step; the key is the guarantee
                self.states.set(StandbyState.FENCING)
                if not self._fence():
                    log.warning("fence command failed: failing over all the same (the "
                                "primary's lease has ended: it fenced itself)")
            self.do_failover(f"{reason}; the witness's key taken (term {verdict.term})")
        except RemusError:
            self._drop_keeper(failed=True)
            self.states.set(StandbyState.FAILOVER_FAILED)
            log.warning("retry with 'remusdb failover --force' once the cause is fixed")

    def _take_key(self, force: bool) -> tuple[bool, TakeOverVerdict]:
        """Take the witness's key for our checkpoint: whether we hold it now (in the
        verdict's term), and why (not). `force`: see judge_take_over."""
        assert self.witness is not None and self.make_keeper is not None
        view = self.witness.view()
        node_term = self.node.term if self.node else 0
        host = "standby" if self.node is None else self.node.host
        verdict = judge_take_over(view, self.store.session, max(node_term, self.store.term),
                                  host, force)
        if not verdict.may:
            return False, verdict
        sent = time.monotonic()
        if not self.witness.take(Leader(host, verdict.term, self.store.committed),
                                 view.revision, self.store.session):
            return False, TakeOverVerdict(False, False, "the key was taken first, or the "
                                                        "record changed: reading again")
        keeper = self.keeper = self.make_keeper(verdict.term)
        try:
            keeper.taken(sent)  # arms the watchdog, if one is configured
        except RemusError as e:
            self._drop_keeper()
            return False, TakeOverVerdict(False, False, f"the key was ours, but {e}")
        keeper.start()
        if self.node is not None:
            self.node.adopt(verdict.term - 1)  # the take-over's new term is the key's
        return True, verdict

    def _take_key_for_operator(self, force: bool) -> str:
        """A manual failover takes the key too; a key this host held before a restart (its
        lease outlives the daemon by up to a TTL) is waited out. Returns why not, or ""."""
        assert self.witness is not None
        deadline = time.monotonic() + self.witness.ttl + 1
        while True:
            try:
                won, verdict = self._take_key(force)
                if won:
                    return ""
                if (verdict.final and not force) or time.monotonic() > deadline:
                    return verdict.reason
            except WitnessError as e:
                return str(e)
            time.sleep(0.2)

    def _drop_keeper(self, failed: bool = False) -> None:
        """Give the key back. `failed`: the VM never ran here, so this checkpoint is still
        the current one: say so first, or no later take-over (nor this one's retry) may use
        it."""
        keeper, self.keeper = self.keeper, None
        if keeper is None:
            return
        if failed and self.taken is None:
            keeper.declare(self.store.session)
        keeper.release()

    def _said(self, what: str) -> None:
        if what != self._witness_said:
            log.warning("waiting for the witness's key: %s", what)
            self._witness_said = what

    def _fence(self) -> bool:
        try:
            r = subprocess.run(self.fence_command, shell=True, capture_output=True, text=True,
                               timeout=self.fence_timeout)
        except subprocess.TimeoutExpired:
            log.warning("fence command still running after %.0f s: fence failed",
                        self.fence_timeout)
            return False
        except OSError as e:
            log.warning("fence command could not run (%s): fence failed", e)
            return False
        log.info("fence command exited %d", r.returncode)
        return r.returncode == 0

    def do_failover(self, reason: str) -> dict:
        with self._lock:
            if self.taken is not None:
                return self.taken.report
            previous = self.state
            self.states.set(StandbyState.FAILING_OVER)
            t0 = time.monotonic()
            self.taking_over = True
            try:
                # Finish a commit a store error interrupted (its journal), then start the VM.
                self.store.close()
                self.store.open()
                self.taken = self.take_over(self.store, self.make_spec(), self.run_dir / "vm",
                                            self.cfg.optimizations.cp)
            except Exception as e:
                log.error("failover failed: %s", e)
                try:
                    self.store.open()  # mapped again, so a retry can use it
                except RemusError:
                    pass
                self.states.set(previous)
                raise RemusError(f"failover failed: {e}") from None
            finally:
                self.taking_over = False
            self.taken.report["reason"] = reason
            log.info("failed over to epoch %s: VM running %.2f s after the decision",
                     self.taken.report.get("epoch"), time.monotonic() - t0)
            self.states.set(StandbyState.ACTIVE)
            return self.taken.report

    def answer(self, req: FailoverRequest) -> ControlReply:
        """A manual failover: refused while frames arrive, and without --force while the
        primary is not known to be down. Or a release of the committed checkpoint."""
        if req.cmd == "release":
            if self.store.committed < 0:
                return ControlReply(False, "refusing: no committed checkpoint to release")
            with self._lock:
                local_io(self.store.mark_ended, "released by the operator")
            log.warning("the operator released committed epoch %d: a new session may replace "
                        "it, a failover to it needs --force", self.store.committed)
            return ControlReply(True)
        if self.taken is not None:
            return ControlReply(True, already=True, failover=self.taken.report)
        silent_for = time.monotonic() - self.last_frame
        if self.session_open and silent_for < self.timeout:
            return ControlReply(False, "refusing: the primary is still sending (last frame "
                                       f"{silent_for:.2f} s ago)")
        if self.store.committed < 0:
            return ControlReply(False, "refusing: no committed checkpoint")
        if self.state in UNSURE and not req.force:
            return ControlReply(False, "refusing: the primary is not known to be down "
                                       f"(standby state {self.state}); fence it and use "
                                       "--force")
        if self.store.ended and not req.force:
            return ControlReply(False, "refusing: the primary ended protection in order "
                                       f"({self.store.ended}) and its VM ran on; this "
                                       "checkpoint is older than it: use --force only if that "
                                       "VM is gone")
        if self.incoming is not self.store and not req.force:
            return ControlReply(False, "refusing: a new session is seeding; this checkpoint "
                                       "is the previous session's: use --force")
        if self.witness is not None and self.keeper is None:
            refused = self._take_key_for_operator(req.force)
            if refused:
                return ControlReply(False, f"refusing: {refused}")
            self.pending = None
        if self._conn is not None:
            self._conn.close()
        # Not in this client's thread: QEMU dies with the thread that started it.
        try:
            report = self._vm_starter.submit(self.do_failover, "manual failover").result()
        except RemusError:
            self._drop_keeper(failed=True)
            raise
        return ControlReply(True, failover=report)

    def _publish(self) -> None:
        self.status.write(self.status_doc())

    def status_doc(self) -> StandbyStatus:
        """The standby's status now (the file is rewritten every 10 commits)."""
        taken = self.taken
        return StandbyStatus(
            state=self.state.value, vm=self.cfg.vm.name, epoch_committed=self.store.committed,
            verify=self.comparison.counts, apply_ms=self.apply_ms.percentiles(),
            bytes_per_epoch=self.epoch_bytes.percentiles(),
            failover=taken.report if taken else None,
            qemu_pid=taken.guest.pid if taken else None,
            guest_clock=taken.clock.summary() if taken and taken.clock else None,
            link=self.link.mode, checkpoint_ended=self.store.ended,
            committed_at=self.committed_at)
