"""Pure: the lease rules that keep two copies of the VM from ever running at once.

Two keys per VM in the witness (etcd):
- `leader`, under a lease the running host renews: who may run the VM and speak for it
  (host, term, the epoch last acknowledged);
- `protection`, without a lease: the session whose checkpoint on the standby is current, or
  none once the VM ran past it unprotected. It outlives the leader's lease, which is the point:
  a standby may take the key only for the checkpoint the primary last declared current.

The primary speaks (releases output, resumes its VM) only while its lease surely lives: the
last renewal it *sent* plus the TTL, less a margin — etcd started the TTL no earlier than our
request left. Past that it fences itself (output stopped, the VM killed or paused) before the
lease can expire, and it never resumes without the key. The standby runs the VM only after a
transaction that finds the leader key gone and `protection` naming its own checkpoint, and
that writes a newer term: on a partition only one side can ever win it. No I/O here (Patroni's
`ha.py` keeps its decisions apart from the DCS the same way); `etcd.py` talks, `keeper.py` acts.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit


class WitnessError(Exception):
    """The witness cannot be reached or answered nonsense: never proof of anything."""


def parse_endpoint(url: str) -> tuple[str, str, int]:
    """'http://10.0.0.5:2379' → (protocol, host, port); ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://HOST:PORT or https://HOST:PORT, got {url!r}")
    try:
        port = parts.port or 2379
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if parts.path not in ("", "/"):
        raise ValueError(f"no path expected in {url!r}")
    return parts.scheme, parts.hostname, port


@dataclass(frozen=True)
class Leader:
    """The leader key's value."""

    host: str
    term: int
    epoch: int = -1

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: bytes | str) -> Leader:
        d = _decode(text, "leader")
        host, term, epoch = d.get("host"), d.get("term"), d.get("epoch", -1)
        if not isinstance(host, str) or not _is_int(term) or not _is_int(epoch):
            raise WitnessError(f"the witness's leader key is malformed: {d!r:.200}")
        return cls(host, int(term), int(epoch))  # type: ignore[arg-type]  # checked above


@dataclass(frozen=True)
class Protection:
    """Which checkpoint a failover may resume: `session` of `term` (None: none is current)."""

    term: int
    host: str
    session: str | None = None
    resumed: str | None = None  # a take-over: the session whose checkpoint `host` resumes

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: bytes | str) -> Protection:
        d = _decode(text, "protection")
        term, host, session = d.get("term"), d.get("host"), d.get("session")
        resumed = d.get("resumed")
        if not _is_int(term) or not isinstance(host, str) or not all(
                v is None or isinstance(v, str) for v in (session, resumed)):
            raise WitnessError(f"the witness's protection key is malformed: {d!r:.200}")
        return cls(int(term), host, session, resumed)  # type: ignore[arg-type]  # checked


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -1 <= v < 2**62


def _decode(text: bytes | str, what: str) -> dict:
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise WitnessError(f"the witness's {what} key is not JSON") from None
    if not isinstance(d, dict):
        raise WitnessError(f"the witness's {what} key is not an object")
    return d


@dataclass(frozen=True)
class View:
    """What the witness says now: the leader (None: nobody holds the key) and the lease's
    seconds left as etcd counts them; the protection record (None: never written)."""

    leader: Leader | None
    lease_left: float | None
    protection: Protection | None
    revision: int = 0  # of the protection key, for a transaction that expects it unchanged


class Hold(enum.StrEnum):
    """The primary's hold on the key."""

    HOLDING = "holding"  # renewed in time: the VM may run here and speak
    FENCED = "fenced"  # a renewal is late: output stopped, the VM killed or paused
    LOST = "lost"  # another host holds the key: this VM is a stale copy, never resumed
    RELEASED = "released"  # given up in order (the VM stopped here)


class Action(enum.StrEnum):
    NONE = "none"
    FENCE = "fence"  # stop output now, then kill (protected) or pause (unprotected) the VM
    RESUME = "resume"  # the key is ours again and nobody ran the VM meanwhile
    STALE = "stale"  # someone else runs the VM: kill ours, become a standby


@dataclass
class Lease:
    """The primary's lease, as this host knows it (monotonic seconds).

    `margin`: how long before the lease could expire the primary fences itself; it covers the
    time to stop output and the VM and the clocks' drift between the hosts and etcd."""

    ttl: float
    margin: float
    term: int
    host: str
    renewed_at: float | None = None  # when the last successful renewal was sent
    hold: Hold = Hold.FENCED  # until the key is first claimed

    def __post_init__(self) -> None:
        if not 0 < self.margin < self.ttl:
            raise ValueError(f"margin {self.margin} must lie between 0 and the TTL {self.ttl}")

    @property
    def renew_every(self) -> float:
        """Three tries before the fence: a lost request or two is not an outage."""
        return (self.ttl - self.margin) / 3

    def deadline(self) -> float:
        """Until when this host may speak for the VM."""
        if self.renewed_at is None:
            return float("-inf")
        return self.renewed_at + self.ttl - self.margin

    def may_speak(self, now: float) -> bool:
        """Output may leave and the VM may run: checked by the relay before every write, so a
        host that wakes from a freeze past its deadline stays silent before anything else."""
        return self.hold is Hold.HOLDING and now < self.deadline()

    def left(self, now: float) -> float:
        return max(0.0, self.deadline() - now)

    def claimed(self, sent_at: float) -> None:
        self.renewed_at, self.hold = sent_at, Hold.HOLDING

    def renewed(self, sent_at: float, now: float) -> Action:
        """A renewal sent at `sent_at` succeeded (etcd kept our lease alive)."""
        if self.hold is not Hold.HOLDING:
            return Action.NONE  # a fenced host resumes only by claiming the key anew
        if now >= self.deadline():
            # It succeeded, but too late to know: we may have been silent past the deadline.
            return self.expired()
        self.renewed_at = max(self.renewed_at or sent_at, sent_at)
        return Action.NONE

    def tick(self, now: float) -> Action:
        """Called whenever a renewal failed or is late: fence at the deadline."""
        return self.expired() if now >= self.deadline() else Action.NONE

    def expired(self) -> Action:
        """etcd says our lease is gone: fence now, whatever our own clock thought."""
        if self.hold is not Hold.HOLDING:
            return Action.NONE
        self.hold = Hold.FENCED
        return Action.FENCE

    def seen(self, view: View) -> Action:
        """What the witness says, read while fenced: ours again, someone else's, or nobody's."""
        if self.hold in (Hold.LOST, Hold.RELEASED):
            return Action.NONE
        leader = view.leader
        if leader is not None and (leader.host != self.host or leader.term > self.term):
            self.hold = Hold.LOST
            return Action.STALE
        if view.protection is not None and view.protection.term > self.term:
            self.hold = Hold.LOST  # a failover happened (its leader has expired since)
            return Action.STALE
        return Action.NONE

    def reclaimed(self, sent_at: float) -> Action:
        """A fenced host created the key again in its own term (nobody took it meanwhile)."""
        if self.hold is not Hold.FENCED:
            return Action.NONE
        self.claimed(sent_at)
        return Action.RESUME

    def release(self) -> None:
        """Given up (the VM stopped here): never speaks again, whatever comes."""
        if self.hold in (Hold.HOLDING, Hold.FENCED):
            self.hold = Hold.RELEASED


def fence_kills(protected: bool, declared: str | None, session: str | None) -> bool:
    """A fenced primary kills its VM when the standby holds its current checkpoint — the
    session is protected *and* the witness was told so (else no standby may take the key for
    it): every output the clients saw is in that checkpoint, resumed with nothing lost once
    the standby holds the key. Otherwise nobody else has the VM's state: it is only paused,
    resumed if the key comes back, never lost to a blip of the witness."""
    return protected and session is not None and declared == session


@dataclass(frozen=True)
class TakeOver:
    """The standby's verdict on taking the key now."""

    may: bool  # try the transaction now
    final: bool  # stop trying: this checkpoint will never be the one to run
    reason: str
    term: int = 0  # the term to write when it wins


def judge_take_over(view: View, session: str, my_term: int, me: str = "",
                    force: bool = False) -> TakeOver:
    """Whether the standby that holds `session`'s checkpoint may try to take the key. The
    record of `me` taking over from this very checkpoint, while it still exists, is our own
    failover interrupted before its VM ran (a store is consumed before `cont`): the
    checkpoint is still the current one. `force` (the operator's word): even a checkpoint
    the witness does not call current — never while another host holds the key."""
    verdict = _judge(view, session, my_term, me)
    if force and verdict.final and view.leader is None:
        return TakeOver(True, False, "forced by the operator", _next_term(view, my_term))
    return verdict


def _next_term(view: View, my_term: int) -> int:
    return max(my_term, view.protection.term if view.protection else 0,
               view.leader.term if view.leader else 0) + 1


def _judge(view: View, session: str, my_term: int, me: str) -> TakeOver:
    p = view.protection
    if p is None:
        return TakeOver(False, True, "the witness has no protection record: no primary ever "
                                     "declared this checkpoint current")
    ours = bool(me) and p.session is None and p.host == me and p.resumed == session
    if p.session != session and not ours:
        why = ("the VM ran on unprotected after this checkpoint" if p.session is None
               else f"the current checkpoint is session {p.session[:8]}'s, not this one")
        return TakeOver(False, True, f"{why} (witness, term {p.term}, host {p.host}): "
                                     "failing over to it would lose what clients were told")
    term = _next_term(view, my_term)
    if view.leader is not None:
        left = f", lease {view.lease_left:.1f} s left" if view.lease_left is not None else ""
        return TakeOver(False, False, f"the witness says {view.leader.host} holds the VM "
                                      f"(term {view.leader.term}{left})", term)
    return TakeOver(True, False, "the key is free and this checkpoint is current", term)
