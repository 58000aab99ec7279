"""The node's role state machine and term rules (pure), and its record on disk."""

import json

import pytest

from remusdb.errors import LocalError
from remusdb.reprotect.record import NodeRecord
from remusdb.reprotect.roles import (
    Event,
    Node,
    NodeState,
    PeerView,
    Role,
    TransitionError,
    judge_hello,
    judge_start,
)

S, E = NodeState, Event
ALLOWED = {
    (S.STANDBY, E.TOOK_OVER): S.PRIMARY_UNPROTECTED,
    (S.STANDBY, E.STARTED_VM): S.PRIMARY_UNPROTECTED,
    (S.PRIMARY_UNPROTECTED, E.PEER_JOINED): S.PRIMARY_SEEDING,
    (S.PRIMARY_SEEDING, E.SEEDED): S.PRIMARY_PROTECTED,
    (S.PRIMARY_SEEDING, E.PEER_LOST): S.PRIMARY_UNPROTECTED,
    (S.PRIMARY_PROTECTED, E.PEER_LOST): S.PRIMARY_UNPROTECTED,
    (S.PRIMARY_PROTECTED, E.SWITCHOVER): S.HANDING_OVER,
    (S.HANDING_OVER, E.HANDED_OVER): S.STANDBY,
    (S.HANDING_OVER, E.PEER_LOST): S.PRIMARY_UNPROTECTED,
    **{(s, E.VM_LOST): S.STANDBY for s in (S.PRIMARY_UNPROTECTED, S.PRIMARY_SEEDING,
                                          S.PRIMARY_PROTECTED, S.HANDING_OVER)},
    **{(s, E.STOP): S.STOPPED for s in S},
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("event", list(E))
def test_every_transition_and_every_refused_one(state, event):
    node = Node(state, 3)
    want = ALLOWED.get((state, event))
    if want is None:
        with pytest.raises(TransitionError, match=event.value):
            node.after(event)
        return
    after = node.after(event, peer_term=1)
    assert after.state is want
    # Only running the VM from a checkpoint (or starting it) opens a new term.
    assert after.term == (4 if event in (E.TOOK_OVER, E.STARTED_VM) else 3)


def test_a_new_term_is_above_any_term_seen():
    assert Node(S.STANDBY, 2).after(E.TOOK_OVER, peer_term=7).term == 8
    assert Node(S.STANDBY, 9).adopt(4).term == 9
    assert Node(S.STANDBY, 2).adopt(4).term == 4


def test_a_full_cycle_of_roles():
    """standby -> failover -> unprotected -> a standby joins -> seeding -> protected ->
    switchover -> standby again, terms growing at each take-over."""
    n = Node()
    for event, state in [(E.TOOK_OVER, S.PRIMARY_UNPROTECTED), (E.PEER_JOINED, S.PRIMARY_SEEDING),
                         (E.SEEDED, S.PRIMARY_PROTECTED), (E.PEER_LOST, S.PRIMARY_UNPROTECTED),
                         (E.PEER_JOINED, S.PRIMARY_SEEDING), (E.SEEDED, S.PRIMARY_PROTECTED),
                         (E.SWITCHOVER, S.HANDING_OVER), (E.HANDED_OVER, S.STANDBY),
                         (E.TOOK_OVER, S.PRIMARY_UNPROTECTED)]:
        n = n.after(event)
        assert n.state is state
    assert n.term == 2 and n.role is Role.PRIMARY


def test_hello_rules():
    standby = Node(S.STANDBY, 5)
    assert judge_hello(standby, 5).accept and judge_hello(standby, 5).term == 5
    newer = judge_hello(standby, 8)
    assert newer.accept and newer.term == 8  # a failover this host missed: adopt it
    stale = judge_hello(standby, 4)
    assert not stale.accept and "term 4 is older than this host's term 5" in stale.reason
    for bad in (None, "5", -1, True, 2.5):
        v = judge_hello(standby, bad)
        assert not v.accept and "valid term" in v.reason
    for primary in (S.PRIMARY_UNPROTECTED, S.PRIMARY_SEEDING, S.PRIMARY_PROTECTED,
                    S.HANDING_OVER):
        v = judge_hello(Node(primary, 5), 9)  # even a newer term: a primary takes no HELLO
        assert not v.accept and "runs the VM as primary in term 5" in v.reason
    assert not judge_hello(Node(S.STOPPED, 5), 5).accept


def test_start_rules():
    me = Node(S.STANDBY, 3)
    assert judge_start(me, None)[0] is Role.PRIMARY
    assert judge_start(me, PeerView(S.STANDBY, 3))[0] is Role.PRIMARY
    role, why = judge_start(me, PeerView(S.PRIMARY_PROTECTED, 4))
    assert role is Role.STANDBY and "joining it as its standby" in why
    assert judge_start(me, PeerView(S.PRIMARY_UNPROTECTED, 1))[0] is Role.STANDBY
    # The peer holds a committed checkpoint: starting from the image would lose its commits.
    role, why = judge_start(me, PeerView(S.STANDBY, 4, committed=120))
    assert role is None and "remusdb failover --force" in why


def test_record_keeps_the_term_across_restarts_and_starts_as_standby(tmp_path):
    rec = NodeRecord(tmp_path, "a")
    assert (rec.state, rec.term) == (S.STANDBY, 0)
    rec.apply(E.TOOK_OVER)
    rec.apply(E.PEER_JOINED)
    assert rec.history == [S.STANDBY, S.PRIMARY_UNPROTECTED, S.PRIMARY_SEEDING]
    saved = json.loads((tmp_path / "node.json").read_text())
    assert saved == {"host": "a", "term": 1, "state": "primary-seeding"}
    again = NodeRecord(tmp_path, "a")  # a restarted node: its QEMU died with it
    assert (again.state, again.term) == (S.STANDBY, 1)
    again.adopt(6)
    assert NodeRecord(tmp_path, "a").term == 6
    with pytest.raises(TransitionError):
        again.apply(E.SEEDED)
    assert NodeRecord(tmp_path, "a").term == 6  # a refused event changes nothing


def test_a_corrupt_record_is_a_clear_local_error(tmp_path):
    (tmp_path / "node.json").write_text("{not json")
    with pytest.raises(LocalError, match="node record .* unreadable"):
        NodeRecord(tmp_path, "a")
    (tmp_path / "node.json").write_text('{"term": -3}')
    with pytest.raises(LocalError, match="bad term -3"):
        NodeRecord(tmp_path, "a")


def test_a_role_answer_that_does_not_read_is_busy_never_nobody():
    from remusdb.reprotect.roles import BUSY, read_role
    assert read_role({"state": "standby", "term": 3, "committed": 9}) == PeerView(S.STANDBY, 3,
                                                                                   9)
    for bad in (None, [], {"state": "standby"}, {"state": "king", "term": 1},
                {"state": "standby", "term": float("inf")}, {"state": "standby", "term": True},
                {"state": 3, "term": 1}, {"state": "standby", "term": 1, "committed": "x"}):
        assert read_role(bad) is BUSY, bad
    role, why = judge_start(Node(), BUSY)  # alive but silent: maybe failing over right now
    assert role is None and "did not answer" in why
    role, why = judge_start(Node(), None, committed_here=42)
    assert role is None and "this host holds a committed checkpoint (epoch 42)" in why
