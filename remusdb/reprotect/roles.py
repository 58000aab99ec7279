"""Pure: a node's role and its transitions, and the term rules that keep a stale primary out.

One node daemon runs per host and VM. Whether it is the primary is state, not the command that
started it: a failover turns the standby into an unprotected primary, a standby that joins
makes it seeding then protected, losing the standby makes it unprotected again, and a
switchover hands the VM over and makes it a standby. The **term** grows at every failover and
handover and travels in HELLO: a peer from an older term is refused, so a primary that was
cut off and comes back can never feed a standby or run the VM again. No I/O here (Patroni's
`ha.py` keeps its decisions apart from the DCS the same way); `node.py` does what it says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    PRIMARY = "primary"
    STANDBY = "standby"


class NodeState(enum.StrEnum):
    STANDBY = "standby"  # waiting for a primary, or receiving its checkpoints
    PRIMARY_UNPROTECTED = "primary-unprotected"  # the VM runs here; no standby (yet)
    PRIMARY_SEEDING = "primary-seeding"  # a standby joined: disk resync and RAM copy
    PRIMARY_PROTECTED = "primary-protected"
    HANDING_OVER = "handing-over"  # switchover: the last checkpoint is the standby's
    STOPPED = "stopped"

    @property
    def role(self) -> Role | None:
        if self in (NodeState.STANDBY,):
            return Role.STANDBY
        if self is NodeState.STOPPED:
            return None
        return Role.PRIMARY


class Event(enum.StrEnum):
    TOOK_OVER = "took-over"  # failover or handover: this host's VM runs from the checkpoint
    STARTED_VM = "started-vm"  # `remusdb protect`: the VM was started here
    PEER_JOINED = "peer-joined"  # a standby accepted our HELLO
    SEEDED = "seeded"  # the standby committed the full copy (epoch 0)
    PEER_LOST = "peer-lost"  # protection ended; the VM runs on
    SWITCHOVER = "switchover"  # an operator asked for a planned role swap
    HANDED_OVER = "handed-over"  # the peer runs the VM; ours is gone
    VM_LOST = "vm-lost"  # this host's VM died: nothing to run any more
    STOP = "stop"


class TransitionError(Exception):
    """An event that cannot happen in this state: a bug or a lying peer, never ignored."""


_NEXT: dict[tuple[NodeState, Event], NodeState] = {
    (NodeState.STANDBY, Event.TOOK_OVER): NodeState.PRIMARY_UNPROTECTED,
    (NodeState.STANDBY, Event.STARTED_VM): NodeState.PRIMARY_UNPROTECTED,
    (NodeState.PRIMARY_UNPROTECTED, Event.PEER_JOINED): NodeState.PRIMARY_SEEDING,
    (NodeState.PRIMARY_SEEDING, Event.SEEDED): NodeState.PRIMARY_PROTECTED,
    (NodeState.PRIMARY_SEEDING, Event.PEER_LOST): NodeState.PRIMARY_UNPROTECTED,
    (NodeState.PRIMARY_PROTECTED, Event.PEER_LOST): NodeState.PRIMARY_UNPROTECTED,
    (NodeState.PRIMARY_PROTECTED, Event.SWITCHOVER): NodeState.HANDING_OVER,
    (NodeState.HANDING_OVER, Event.HANDED_OVER): NodeState.STANDBY,
    # The handover failed before the standby took the VM: ours still runs, unprotected.
    (NodeState.HANDING_OVER, Event.PEER_LOST): NodeState.PRIMARY_UNPROTECTED,
}
for _s in (NodeState.PRIMARY_UNPROTECTED, NodeState.PRIMARY_SEEDING,
           NodeState.PRIMARY_PROTECTED, NodeState.HANDING_OVER):
    _NEXT[(_s, Event.VM_LOST)] = NodeState.STANDBY
for _s in NodeState:
    _NEXT[(_s, Event.STOP)] = NodeState.STOPPED
_NEXT_TERM = {Event.TOOK_OVER, Event.STARTED_VM}


@dataclass(frozen=True)
class Node:
    """What a node knows of itself; persisted by `record.py` whenever the term changes."""

    state: NodeState = NodeState.STANDBY
    term: int = 0

    @property
    def role(self) -> Role | None:
        return self.state.role

    def after(self, event: Event, peer_term: int = 0) -> Node:
        """The node after `event`; TransitionError if it cannot happen now. Running the VM
        from a checkpoint (or starting it) opens a new term, above any term seen."""
        nxt = _NEXT.get((self.state, event))
        if nxt is None:
            raise TransitionError(f"{event.value} cannot happen in state {self.state.value}")
        term = max(self.term, peer_term) + 1 if event in _NEXT_TERM else self.term
        return Node(nxt, term)

    def adopt(self, term: int) -> Node:
        """A newer term learnt from the peer (a HELLO this standby accepted)."""
        return Node(self.state, max(self.term, term))


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str = ""
    term: int = 0  # the term to adopt when accepted


def judge_hello(me: Node, peer_term: object) -> Verdict:
    """A primary's HELLO arrives: only a standby takes it, and only from this term or a newer
    one (a newer term means a failover happened that this host missed: adopt it)."""
    if not isinstance(peer_term, int) or isinstance(peer_term, bool) or peer_term < 0:
        return Verdict(False, f"HELLO without a valid term ({peer_term!r})")
    if me.role is Role.PRIMARY:
        return Verdict(False, f"this host runs the VM as primary in term {me.term}: a primary "
                              f"of term {peer_term} is stale and must rejoin as a standby")
    if me.state is NodeState.STOPPED:
        return Verdict(False, "this node is stopping")
    if peer_term < me.term:
        return Verdict(False, f"term {peer_term} is older than this host's term {me.term}: "
                              "the sender is a stale primary (a failover happened since)")
    return Verdict(True, term=peer_term)


@dataclass(frozen=True)
class PeerView:
    """What the peer said when asked (QUERY): its state and term."""

    state: NodeState | None  # None: its node is alive but gave no answer that reads
    term: int = 0
    committed: int = -1  # a standby's committed epoch


BUSY = PeerView(None)  # accepted the connection, answered nothing usable (maybe failing over)


def read_role(d: object) -> PeerView:
    """A ROLE answer; anything malformed is BUSY (never "nobody there")."""
    if not isinstance(d, dict):
        return BUSY
    term, committed, state = d.get("term"), d.get("committed", -1), d.get("state")
    if not (isinstance(term, int) and isinstance(committed, int) and isinstance(state, str)) \
            or isinstance(term, bool) or isinstance(committed, bool):
        return BUSY
    try:
        return PeerView(NodeState(state), term, committed)
    except ValueError:
        return BUSY


def judge_start(me: Node, peer: PeerView | None, committed_here: int = -1
                ) -> tuple[Role | None, str]:
    """`remusdb protect` on this host: start the VM here (from its image), join the peer that
    runs it, or refuse (None) when a committed checkpoint exists (here or there: starting
    afresh would throw away every commit since the image; fail over from it instead) or the
    peer is alive but busy. Nobody there cannot say more; the operator's request stands (the
    witness issue closes that gap under partitions)."""
    if committed_here >= 0:
        return None, (f"this host holds a committed checkpoint (epoch {committed_here}): run "
                      "'remusdb failover --force' here instead of starting the VM from its "
                      "image")
    if peer is None:
        return Role.PRIMARY, "the peer did not answer: starting the VM here"
    if peer.state is None:
        return None, ("the peer's node is up but did not answer (busy, perhaps failing over): "
                      "not starting a second copy; try again")
    if peer.state.role is Role.PRIMARY:
        return Role.STANDBY, (f"the peer runs the VM as primary (term {peer.term}): joining "
                              "it as its standby instead of starting a second copy")
    if peer.committed >= 0:
        return None, (f"the peer holds a committed checkpoint (epoch {peer.committed}, term "
                      f"{peer.term}): run 'remusdb failover --force' there instead of starting "
                      "the VM from its image here")
    return Role.PRIMARY, f"the peer is a {peer.state.value} (term {peer.term})"
