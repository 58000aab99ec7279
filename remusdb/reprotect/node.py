"""The node daemon: one per host and VM, moving between the standby and primary roles.

As a standby it runs the standby daemon (sessions, commits, failover). When that takes over,
or when `remusdb protect` starts the VM here, it is the primary: the VM runs through the disk
server and the net relay, and the node keeps trying to protect it — it connects to the peer's
node, resyncs its disk, lets QEMU copy RAM, checkpoints; when the standby goes away it tries
again, with back-off, for as long as the VM runs. Meanwhile it answers the peer's queries and
refuses HELLOs (a primary that comes back stale is told the term it missed). A switchover hands
the VM to the standby and makes this node its standby. What may happen when is `roles.py`'s
decision; this module only does it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from remusdb.checkpoint import handshake, participants, wire
from remusdb.checkpoint.control import ControlReply, ControlServer, FailoverRequest
from remusdb.checkpoint.handshake import Refused
from remusdb.checkpoint.link import Link
from remusdb.checkpoint.participants import SessionAids
from remusdb.checkpoint.primary import PrimaryDaemon
from remusdb.checkpoint.standby import StandbyDaemon, listen
from remusdb.checkpoint.state import PrimaryState
from remusdb.checkpoint.status import (
    NodeStatus,
    PrimaryStatus,
    StandbyStatus,
    StatusFile,
    read_status,
)
from remusdb.config import INTERVAL_BOUNDS, Config, interval_ok
from remusdb.errors import RemusError
from remusdb.hypervisor.clock import ClockKeeper
from remusdb.image.builder import GuestImage
from remusdb.ops.metrics import NodeMetrics
from remusdb.reprotect import served
from remusdb.reprotect.control import COMMANDS, NODE_SOCKET, NodeRequest
from remusdb.reprotect.record import NodeRecord
from remusdb.reprotect.roles import (
    BUSY,
    Event,
    NodeState,
    PeerView,
    Role,
    TransitionError,
    judge_hello,
    judge_start,
    read_role,
)
from remusdb.witness.etcd import EtcdWitness
from remusdb.witness.keeper import LeaseKeeper
from remusdb.witness.rules import WitnessError, fence_kills
from remusdb.witness.watchdog import Watchdog

log = logging.getLogger(__name__)
BACKOFF_S = (1, 2, 4, 8, 10)


def other(host: str) -> str:
    return "standby" if host == "primary" else "primary"


def query_peer(address: str, port: int, link: Link, timeout: float = 3.0) -> PeerView | None:
    """Ask the peer's node who it is. None: nobody there (refused, no route). A node that
    accepts but does not answer in time is alive and busy (maybe failing over): BUSY; so is
    one that fails to authenticate (something is there: never a reason to start the VM)."""
    try:
        s = socket.create_connection((address, port), timeout=timeout)
    except OSError:
        return None
    try:
        with s:
            conn = wire.Connection(link.client(s))
            conn.send(wire.encode_json(wire.Kind.QUERY, 0, {}))
            reply = conn.recv()
            return read_role(reply.json()) if reply.kind == wire.Kind.ROLE else BUSY
    except (OSError, RemusError):
        return BUSY


@dataclass
class NodeOptions:
    """What the command line adds to the config: test and benchmark aids, traces."""

    aids: SessionAids = field(default_factory=SessionAids)
    net_trace: Path | None = None
    standby_trace: Path | None = None


class NodeDaemon:
    def __init__(self, cfg: Config, host: str, run_dir: Path, image: GuestImage,
                 options: NodeOptions | None = None):
        self.cfg, self.host, self.run_dir = cfg, host, Path(run_dir)
        self.image = image
        self.options = options or NodeOptions()
        self.address = cfg.host(host)
        self.peer = cfg.host(other(host))
        self.link = Link.for_host(cfg, host)
        w = cfg.witness
        # A renewal that tries every endpoint still returns within half its period: the
        # fence never waits on a request (each endpoint, on a LAN, answers in milliseconds).
        self.witness = EtcdWitness(w.endpoints, cfg.vm.name, w.prefix, w.ttl_s, timeout=min(
            1.0, (w.ttl_s - w.margin_s) / 6 / max(1, len(w.endpoints)))) if w.enabled else None
        self.keeper: LeaseKeeper | None = None  # while this host runs the VM (witness on)
        self.followed: list[str] = []  # this node's sessions with the peer that got a WELCOME
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.status = StatusFile(self.run_dir / NodeStatus.file_name())
        self.record = NodeRecord(self.run_dir, host, self._publish)
        self.taker = served.TakeOver(cfg, image, self.run_dir, self.options.net_trace,
                                     self.record)
        sb = cfg.standby
        self.standby = StandbyDaemon(
            cfg, self.run_dir, lambda: self.taker.spec(self.standby.store),
            heartbeat_timeout=sb.heartbeat_timeout_ms / 1000, fence_command=sb.fence_command,
            trace=self.options.standby_trace, take_over=self.taker, node=self.record,
            link=self.link, witness=self.witness, make_keeper=self._keeper)
        self.vm: served.ServedVM | None = None
        self.clock: ClockKeeper | None = None
        self.primary: PrimaryDaemon | None = None
        self.stopped = self.standby.stopped  # one stop for both roles
        self._retry = threading.Event()  # `remusdb reprotect`: try the peer now
        self.sessions: list[dict] = []  # per protected session: its seeding (status, drill)
        self._parts: list = []  # the current session's participants
        self._t0 = 0.0
        self._token: object = None
        self.listener = listen(*self.address)
        self.metrics = NodeMetrics(cfg.vm.name, host, self.documents)

    # The loop
    def run(self, start_as: Role) -> None:
        ControlServer(self.run_dir / NODE_SOCKET, NodeRequest.from_json, self._control,
                      self.stopped).start()
        if start_as is Role.PRIMARY:
            peer = query_peer(*self.peer, self.link)
            role, why = judge_start(self.record.node, peer,
                                    self.standby.store.committed_on_disk())
            if role is None:
                raise RemusError(f"not starting the VM: {why}")
            log.info("start: %s", why)
            if role is Role.PRIMARY:
                term = max(self.record.term, peer.term if peer else 0) + 1
                self._claim(term)
                self.vm = served.start_fresh(self.cfg, self.image, self.run_dir,
                                             self.standby.store, self.options.net_trace)
                self._gate_output(self.vm)
                self.record.apply(Event.STARTED_VM, term - 1)
        else:  # a primary without a standby retries when asked: our query is that nudge
            peer = query_peer(*self.peer, self.link)
            log.info("start: the peer is %s", f"a {peer.state.value} (term {peer.term})"
                     if peer and peer.state else "not answering")
        try:
            while not self.stopped.is_set():
                if self.record.node.role is Role.PRIMARY:
                    self._primary_phase()
                else:
                    self._standby_phase()
        finally:
            self.listener.close()
            if self.vm is not None:
                self.vm.close()
            self._drop_keeper()
            self.record.apply(Event.STOP)  # `remusdb status` says so, not a stale role

    # The witness
    def _keeper(self, term: int) -> LeaseKeeper:
        assert self.witness is not None  # asked for only with a witness
        w = self.cfg.witness
        dog = (lambda: Watchdog(w.watchdog, w.watchdog_timeout_s)) if w.watchdog else None
        self.keeper = LeaseKeeper(self.witness, self.host, term, w.margin_s, self._fence,
                                  self._resume, self._stale, self._publish, dog)
        self.taker.speak = self.keeper.may_speak  # a failover resumes its VM only under it
        return self.keeper

    def _claim(self, term: int) -> None:
        """Before the VM starts here: the witness's key, or no VM."""
        if self.witness is None:
            return
        try:
            view = self.witness.view()
            if view.protection is not None:
                term = max(term, view.protection.term + 1)
            keeper = self._keeper(term)
            if not keeper.claim():
                now = self.witness.view().leader
                who = f"{now.host} runs it (term {now.term})" if now else "another host runs it"
                raise RemusError(f"not starting the VM: the witness says {who}")
        except WitnessError as e:
            self.keeper = None
            raise RemusError(f"not starting the VM: {e}") from None
        except RemusError:
            self.keeper = None
            raise
        keeper.start()
        log.info("witness: the key is ours (term %d)", term)

    def _gate_output(self, vm: served.ServedVM) -> None:
        if self.keeper is not None:
            vm.relay.speak = self.keeper.may_speak

    def _fence(self) -> bool:
        """The lease is about to end: this host goes mute (the relay asks the lease itself).
        The VM is killed if the standby holds its current checkpoint, else paused. Returns
        whether it still exists."""
        vm, daemon, keeper = self.vm, self.primary, self.keeper
        if vm is None:
            return False
        if fence_kills(daemon is not None and daemon.state is PrimaryState.PROTECTED,
                       keeper.declared if keeper else None, daemon.session if daemon else None):
            log.error("fenced: killing the VM; the standby holds its current checkpoint and "
                      "resumes it once it holds the witness's key")
            vm.guest.kill()
            return False
        try:
            assert vm.guest.monitor is not None  # a served VM runs with its monitor
            vm.guest.monitor.stop()
            log.error("fenced: the VM is paused here (no standby holds its current state); "
                      "it resumes if the key comes back to this host")
        except Exception as e:  # its output is stopped all the same
            log.error("fenced: the VM could not be paused (%s); its output is stopped", e)
        return True

    def _resume(self) -> None:
        vm = self.vm
        if vm is None or vm.guest.monitor is None:
            return
        try:
            if vm.guest.monitor.status() == "paused":
                vm.guest.monitor.cont()
        except Exception as e:
            log.error("witness: the VM could not be resumed: %s", e)

    def _stale(self) -> None:
        vm = self.vm
        if vm is not None:
            log.error("witness: killing this host's VM (a stale copy)")
            vm.guest.kill()

    def _drop_keeper(self) -> None:
        keeper, self.keeper = self.keeper, None
        self.taker.speak = None
        if keeper is not None:
            keeper.release()

    def stop(self) -> None:
        """Operator stop (SIGTERM: `systemctl stop`, `kill`). The VM stops with the node, so a
        protected primary first hands it to the standby (a switchover: the database goes on
        there, nothing lost); an unprotected one just stops it, and the standby, told BYE,
        does not run it. To stop the database itself, stop the standby's node first."""
        self.stopped.set()
        self._retry.set()
        daemon = self.primary
        if daemon is None:
            return
        if self.record.state is NodeState.PRIMARY_PROTECTED:
            try:
                self.record.apply(Event.SWITCHOVER)
                daemon.hand_over()
                log.info("operator stop: handing the VM to the standby at the next checkpoint "
                         "(switchover)")
                return
            except (RemusError, TransitionError) as e:
                log.warning("operator stop: no switchover (%s); stopping protection", e)
        daemon.stop()

    def _standby_phase(self) -> None:
        self.standby.serve(listener=self.listener)
        taken = self.taker.served
        if self.stopped.is_set() or taken is None:
            return
        self.taker.served = None
        self.vm = taken  # the take-over already moved the record (term + 1)
        self._gate_output(taken)
        self.clock = self.standby.taken.clock if self.standby.taken else None

    def _primary_phase(self) -> None:
        vm = self.vm
        assert vm is not None  # the primary role begins with a running VM
        gate = _Gate(self.listener, self)
        gate.start()
        tries = 0
        try:
            while not self.stopped.is_set() and vm.running:
                outcome = self._session(vm)
                if outcome in ("handed-over", "stale"):
                    break
                tries = 0 if outcome == "protected" else tries + 1
                self._retry.wait(BACKOFF_S[min(tries, len(BACKOFF_S) - 1)])
                self._retry.clear()
        finally:
            gate.stop()
        self.primary = None
        if self.stopped.is_set():
            self._drop_keeper()
            return
        handed = self.record.state is NodeState.HANDING_OVER
        vm.close(stop_vm=True)
        self.vm = None
        self._drop_keeper()
        if self.clock is not None:
            self.clock.stop()
        self.clock = None
        self.record.apply(Event.HANDED_OVER if self.record.state is NodeState.HANDING_OVER
                          else Event.VM_LOST)
        log.info("this host no longer runs the VM (%s): standby from here",
                 "handed over" if handed else "it stopped")
        self.standby.rejoin()

    def _session(self, vm: served.ServedVM) -> str:
        """One attempt to protect the VM; how it ended. A failure of the attempt never stops
        the VM: it runs on unprotected and the next attempt follows."""
        peer = query_peer(*self.peer, self.link)  # cheap: no participants built for nobody
        if peer is None or peer.state is None:
            return "unreachable"
        if peer.state.role is Role.PRIMARY:
            return self._refused(vm, Refused({"reason": f"the peer is a {peer.state.value}",
                                              "state": peer.state.value, "term": peer.term}))
        if self.clock is None or (self.clock.ident is not None and not self.clock.is_alive()):
            self.clock = ClockKeeper(vm.guest.files.agent)  # a thread starts only once
        try:
            daemon = self._attempt(vm)
        except Refused as e:
            return self._refused(vm, e)
        except RemusError as e:
            log.warning("protection session failed: %s", e)
            return "failed"
        except Exception:
            log.exception("protection session: internal error; the VM runs on unprotected")
            return "failed"
        if daemon is None:
            return "stopped"
        if PrimaryState.PROTECTED in daemon.states.history:
            self.sessions[-1]["ended"] = daemon.failure
            self._publish()
        if daemon.vm_stopped:
            return "handed-over"
        if self.record.state is NodeState.HANDING_OVER:  # ended before the VM stopped
            log.warning("switchover did not happen: %s; the VM runs on here", daemon.failure)
            self.record.apply(Event.PEER_LOST)
        return "protected" if PrimaryState.PROTECTED in daemon.states.history else "failed"

    def _attempt(self, vm: served.ServedVM) -> PrimaryDaemon | None:
        parts = participants.build(self.cfg, vm.ram_file, vm.disk, vm.relay, self.options.aids)
        token = object()  # states of an earlier session's threads are not this one's
        daemon = PrimaryDaemon(self.cfg, vm.guest, self.run_dir, parts, term=self.record.term,
                               peer=self.peer, clock=self.clock,
                               on_state=lambda st: self._followed(st, token), link=self.link,
                               resumes=self.followed[::-1], witness=self.keeper,
                               observer=self.metrics)
        # Whatever the standby holds now may be this session's (its epoch 0 may commit even
        # if we never hear the ACK): the next session says it follows it too.
        self.followed = (self.followed + [daemon.session])[-handshake.MAX_RESUMES:]
        self.primary, self._token = daemon, token
        self._parts, self._t0 = parts, time.monotonic()
        if self.stopped.is_set():  # a stop that came before self.primary was this daemon
            return None
        daemon.protect(connect_wait=0)
        return daemon

    def _refused(self, vm: served.ServedVM, e: Refused) -> str:
        peer = read_role(e.fields)
        if peer.state is not None and peer.state.role is Role.PRIMARY and \
                peer.term > self.record.term:
            # The peer runs the VM in a newer term: ours is a stale copy. Never run both.
            log.error("%s; this host's VM is a stale copy (term %d): stopping it", e,
                      self.record.term)
            vm.guest.kill()
            return "stale"
        log.warning("%s", e)
        return "refused"

    def _followed(self, state: PrimaryState, token: object) -> None:
        """The session's states, as node events."""
        if token is not self._token:
            return
        now = self.record.state
        try:
            if state is PrimaryState.SEEDING and now is NodeState.PRIMARY_UNPROTECTED:
                self.record.apply(Event.PEER_JOINED)
            elif state is PrimaryState.PROTECTED and now is NodeState.PRIMARY_SEEDING:
                self._seeded()
                self.record.apply(Event.SEEDED)
            elif state is PrimaryState.UNPROTECTED and now in (NodeState.PRIMARY_SEEDING,
                                                               NodeState.PRIMARY_PROTECTED):
                self.record.apply(Event.PEER_LOST)
        except TransitionError:
            log.exception("node state machine")

    def _seeded(self) -> None:
        """What the seeding of the session that just became protected took (status, drill)."""
        disk = next((p.summary() for p in self._parts if p.status_key == "disk"), None)
        seed = disk.get("seed", {}) if isinstance(disk, dict) else {}
        self.sessions.append({"at": round(time.time(), 3), "term": self.record.term,
                              "to_protected_s": round(time.monotonic() - self._t0, 2),
                              "seed": seed, "ended": None})
        log.info("protected in %.1f s (disk %s: %.1f MiB sent, %.1f MiB written here "
                 "since this host took the VM)", time.monotonic() - self._t0, seed.get("path"),
                 (seed.get("sent_bytes") or 0) / 2**20, (seed.get("changed_bytes") or 0) / 2**20)

    # Control: `remusdb switchover`, `remusdb reprotect`
    def _control(self, req: NodeRequest) -> ControlReply:
        if req.cmd == "reprotect":
            if self.record.node.role is not Role.PRIMARY:
                return ControlReply(False, f"this host is a {self.record.state.value}: "
                                           "reprotect runs where the VM runs")
            self._retry.set()
            return ControlReply(True, failover={"state": self.record.state.value})
        daemon = self.primary
        if self.record.state is not NodeState.PRIMARY_PROTECTED or daemon is None:
            return ControlReply(False, f"{req.cmd} needs a protected primary (this host: "
                                       f"{self.record.state.value})")
        if req.cmd == "interval":
            assert req.interval_ms is not None  # NodeRequest.from_json checked it
            try:
                old = daemon.set_interval(req.interval_ms)
            except RemusError as e:  # the session ended meanwhile
                return ControlReply(False, str(e))
            return ControlReply(True, failover={"interval_ms": req.interval_ms,
                                                "previous_ms": old})
        self.record.apply(Event.SWITCHOVER)
        try:
            daemon.hand_over()
        except RemusError as e:  # the session ended meanwhile: its end moves the record
            return ControlReply(False, str(e))
        return ControlReply(True, failover={"state": self.record.state.value})

    def _publish(self) -> None:
        self.status.write(self._node_doc())

    def _node_doc(self) -> NodeStatus:
        keeper = getattr(self, "keeper", None)  # the record publishes before __init__ ends
        return NodeStatus(
            state=self.record.state.value, vm=self.cfg.vm.name, host=self.host,
            term=self.record.term, peer=f"{self.peer[0]}:{self.peer[1]}",
            sessions=self.sessions[-5:], witness=keeper.summary() if keeper else None)

    # The REST API (ops/api.py)
    def documents(self) -> dict:
        """The node's status documents now: the node's, and the live role's (a primary's
        current or last session; the standby's while this host is one)."""
        docs = {"node": self.status.stamp(self._node_doc()).to_json()}
        role, daemon = self.record.node.role, self.primary
        try:
            if role is Role.PRIMARY and daemon is not None:
                docs["primary"] = daemon.status.stamp(daemon.status_doc()).to_json()
            elif role is Role.STANDBY:
                docs["standby"] = self.standby.status.stamp(self.standby.status_doc()).to_json()
        except Exception:  # a summary read while its thread changes it: the last file
            log.debug("status served from the last file", exc_info=True)
            kind = PrimaryStatus if role is Role.PRIMARY else StandbyStatus
            last = read_status(self.run_dir / kind.file_name())
            if last is not None:
                docs[kind.role] = last
        return docs

    def act(self, action: str, params: dict[str, str]) -> ControlReply:
        """An acting request of the API: the same decisions as the control sockets'."""
        if action == "failover":
            if self.record.node.role is not Role.STANDBY:
                return ControlReply(False, f"refusing: this host is a {self.record.state.value}"
                                           "; a failover runs on the standby")
            force = params.get("force", "false")
            if force not in ("true", "false"):
                raise ValueError(f"force: expected true or false, got {force!r}")
            return self.standby.answer(FailoverRequest(force=force == "true"))
        if action == "interval":
            ms = params.get("ms", "")
            if not ms.isdigit() or not interval_ok(int(ms)):
                raise ValueError(f"ms: expected an integer in {INTERVAL_BOUNDS}, got {ms!r}")
            return self._control(NodeRequest("interval", int(ms)))
        if action not in COMMANDS:  # the control socket's commands, no other
            raise ValueError(f"unknown action {action!r}")
        if params:
            raise ValueError(f"{action} takes no parameters (got {', '.join(params)})")
        return self._control(NodeRequest(action))


class _Gate(threading.Thread):
    """While this host is the primary: answer QUERY, refuse HELLO (nobody feeds a primary)."""

    def __init__(self, listener: socket.socket, node: NodeDaemon):
        super().__init__(name="gate", daemon=True)
        self.listener, self.node = listener, node
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(2)

    def run(self) -> None:
        self.listener.settimeout(0.5)
        while not self._done.is_set():
            try:
                sock, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            with sock:
                self._answer(sock)

    def _answer(self, sock: socket.socket) -> None:
        rec = self.node.record
        role = {"state": rec.state.value, "term": rec.term, "committed": -1}
        try:
            sock.settimeout(2.0)
            conn = wire.Connection(self.node.link.accept(sock))
            first = conn.recv()
            if first.kind == wire.Kind.QUERY:
                conn.send(wire.encode_json(wire.Kind.ROLE, 0, role))
                self.node._retry.set()  # maybe a standby coming up: try it now
            elif first.kind == wire.Kind.HELLO:
                hello = first.json()
                verdict = judge_hello(rec.node, hello.get("term") if isinstance(hello, dict)
                                      else None)
                log.warning("refused a HELLO: %s", verdict.reason)
                conn.send(wire.encode_json(wire.Kind.REFUSE, 0,
                                           {"reason": verdict.reason, **role}))
        except (OSError, RemusError) as e:
            log.debug("gate: %s", e)
