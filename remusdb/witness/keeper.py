"""The running host's hold on the witness's key: claim, renew, fence on time, resume or give up.

One thread per host that runs the VM. It renews the lease every third of the time it may speak;
when renewals fail until the deadline (rules.Lease), it fences at once — `on_fence` stops the
VM's output for good and kills the VM (a standby holds its current checkpoint) or pauses it —
and from then on only reads the witness: the key ours again (claimed anew in our term, the VM
only paused) resumes the VM, another host's key or a newer term makes this VM a stale copy.
The relay and the capture loop ask `may_speak()` themselves, so a host that wakes from a freeze
past its deadline says nothing before this thread has even run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from remusdb.witness.etcd import EtcdWitness
from remusdb.witness.rules import Action, Hold, Leader, Lease, Protection, WitnessError
from remusdb.witness.watchdog import Watchdog

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, witness: EtcdWitness, host: str, term: int, margin: float,
                 on_fence: Callable[[], bool], on_resume: Callable[[], None],
                 on_stale: Callable[[], None], on_change: Callable[[], None] | None = None,
                 watchdog: Callable[[], Watchdog] | None = None):
        self.witness = witness
        self.lease = Lease(float(witness.ttl), margin, term, host)
        self.on_fence, self.on_resume, self.on_stale = on_fence, on_resume, on_stale
        self.on_change = on_change  # the node's status: the hold and the last renewal
        self.open_watchdog = watchdog  # armed once the key is ours, petted at each renewal
        self.watchdog: Watchdog | None = None
        self.renewals = 0
        self.renewed_wall: float | None = None
        self.declared: str | None = None  # the session the protection record names
        self.wanted: str | None = None  # what it should name: retried at each renewal
        self.epoch = -1  # the epoch last acknowledged by the standby (the primary sets it)
        self._epoch_written = -1
        self.paused = False  # fenced with the VM only paused: it may resume
        self.fences = 0
        self._declaring = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error_logged = False

    @property
    def hold(self) -> Hold:
        return self.lease.hold

    def may_speak(self) -> bool:
        return self.lease.may_speak(time.monotonic())

    # Becoming the leader
    def claim(self) -> bool:
        """Before the VM starts here: the key, if nobody holds it (protection: none current)."""
        sent = time.monotonic()
        leader = Leader(self.lease.host, self.lease.term)
        if not self.witness.claim(leader, Protection(self.lease.term, self.lease.host)):
            return False
        self.lease.claimed(sent)
        self._arm()
        return True

    def taken(self, sent_at: float) -> None:
        """The standby's take-over transaction made the key ours (sent at `sent_at`)."""
        self.lease.claimed(sent_at)
        self._arm()

    def _arm(self) -> None:
        if self.open_watchdog is not None and self.watchdog is None:
            self.watchdog = self.open_watchdog()

    def _disarm(self) -> None:
        dog, self.watchdog = self.watchdog, None
        if dog is not None:
            dog.disarm()

    def start(self) -> LeaseKeeper:
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()
        return self

    # What the primary tells the witness
    def declare(self, session: str | None) -> bool:
        """Name the session whose checkpoint is current (None: the VM runs past it). Only
        while this host may speak; False: not recorded, so the caller must not act on it.
        Declarations are written in the order they are made (a late "protected" never
        overwrites the "unprotected" that followed it); one that failed is retried at each
        renewal."""
        with self._declaring:
            self.wanted = session
            return self._write_wanted()

    def _write_wanted(self) -> bool:
        session = self.wanted
        if not self.may_speak():
            return False
        try:
            ok = self.witness.declare(Protection(self.lease.term, self.lease.host, session),
                                      Leader(self.lease.host, self.lease.term, self.epoch))
        except WitnessError as e:
            log.warning("could not tell the witness (%s): %s",
                        "protected" if session else "unprotected", e)
            return False
        if ok and self.may_speak():
            self.declared, self._epoch_written = session, self.epoch
            log.info("witness: %s", f"session {session[:8]} is the current checkpoint"
                     if session else "no checkpoint is current (the VM runs unprotected)")
            return True
        return False

    def release(self) -> None:
        """This host no longer runs the VM: stop renewing, give the key up if etcd answers."""
        self._stop.set()
        self.lease.release()
        self._disarm()
        try:
            self.witness.release()
        except WitnessError as e:
            log.info("witness: lease not revoked (%s); it expires by itself", e)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def summary(self) -> dict:
        return {"hold": self.lease.hold.value, "term": self.lease.term,
                "renewed_at": self.renewed_wall, "renewals": self.renewals,
                "declared": self.declared, "fences": self.fences,
                "requests": self.witness.requests}

    # The thread
    def _run(self) -> None:
        lease = self.lease
        while not self._stop.is_set():
            if lease.hold is Hold.HOLDING:
                self._act(self._renew())
                with self._declaring:
                    # one etcd missed, or (every tenth renewal) the epoch the leader key
                    # carries: a few seconds stale, one transaction rather than one per epoch
                    if self.wanted != self.declared or (
                            self.renewals % 10 == 1 and self.epoch != self._epoch_written):
                        self._write_wanted()
                now = time.monotonic()
                wait = min(lease.renew_every, max(0.01, lease.deadline() - now))
            elif lease.hold is Hold.FENCED:
                self._act(self._look())
                wait = lease.renew_every
            else:
                return
            self._stop.wait(wait)

    def _renew(self) -> Action:
        sent = time.monotonic()
        try:
            ok = self.witness.renew()
        except WitnessError as e:
            if not self._error_logged:
                log.warning("witness: renewal failed (%s); fencing in %.1f s unless one "
                            "succeeds", e, self.lease.left(time.monotonic()))
                self._error_logged = True
            return self.lease.tick(time.monotonic())
        now = time.monotonic()
        if not ok:
            log.error("witness: etcd says our lease has expired")
            return self.lease.expired()
        if self._error_logged:
            log.info("witness: renewed again")
            self._error_logged = False
        act = self.lease.renewed(sent, now)
        if act is Action.NONE and self.watchdog is not None:
            self.watchdog.pet()
        self.renewals += 1
        self.renewed_wall = time.time()
        if self.renewals % 10 == 1 and self.on_change is not None:
            self.on_change()
        return act

    def _look(self) -> Action:
        try:
            view = self.witness.view()
            act = self.lease.seen(view)
            if act is Action.NONE and self.paused and view.leader is None:
                sent = time.monotonic()
                if self.witness.claim(Leader(self.lease.host, self.lease.term, self.epoch)):
                    return self.lease.reclaimed(sent)
            return act
        except WitnessError:
            return Action.NONE

    def _act(self, act: Action) -> None:
        try:
            self._act_on(act)
        finally:
            if act is not Action.NONE and self.on_change is not None:
                self.on_change()  # the node's status shows the new hold

    def _act_on(self, act: Action) -> None:
        if act is Action.FENCE:
            self.fences += 1
            log.error("witness: the lease could not be renewed in time: fencing this host "
                      "(output stopped)")
            self.paused = self.on_fence()
            self._disarm()  # mute now: no reset needed (a paused VM may resume later)
            if not self.paused:
                self.release()
        elif act is Action.RESUME:
            log.warning("witness: the key is ours again (term %d): resuming the VM",
                        self.lease.term)
            self.paused = False
            self._arm()
            self.on_resume()
        elif act is Action.STALE:
            log.error("witness: another host runs the VM in a newer term: this copy is stale")
            self.on_stale()
            self._stop.set()
