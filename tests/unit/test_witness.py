"""The witness's rules without etcd: the lease, the fence, the standby's take-over verdict;
and the ARP probe's frames."""

import pytest

from remusdb.witness import arp
from remusdb.witness.rules import (
    Action,
    Hold,
    Leader,
    Lease,
    Protection,
    View,
    WitnessError,
    fence_kills,
    judge_take_over,
    parse_endpoint,
)


def lease(now=100.0, ttl=3.0, margin=1.0, term=4, host="primary") -> Lease:
    le = Lease(ttl, margin, term, host)
    le.claimed(now)
    return le


def test_a_claimed_lease_speaks_until_its_deadline_only():
    le = lease(100.0)
    assert le.hold is Hold.HOLDING and le.deadline() == 102.0
    assert le.may_speak(101.99) and not le.may_speak(102.0)
    assert le.renew_every == pytest.approx(2 / 3)


def test_the_deadline_counts_from_when_the_renewal_was_sent_not_answered():
    le = lease(100.0)
    assert le.renewed(sent_at=101.0, now=101.9) is Action.NONE
    assert le.deadline() == 103.0  # 101.0 + 3 - 1, though the answer came at 101.9


def test_renew_fails_just_before_expiry_fences_at_the_deadline():
    le = lease(100.0)
    assert le.tick(101.999) is Action.NONE and le.hold is Hold.HOLDING
    assert le.tick(102.0) is Action.FENCE
    assert le.hold is Hold.FENCED and not le.may_speak(102.0)
    assert le.tick(102.5) is Action.NONE  # fenced once


def test_a_renewal_that_succeeds_too_late_still_fences():
    le = lease(100.0)
    assert le.renewed(sent_at=101.5, now=102.2) is Action.FENCE  # silent past the deadline?
    assert le.hold is Hold.FENCED


def test_a_frozen_host_wakes_mute_before_any_thread_runs():
    le = lease(100.0)
    # No tick ran during the freeze: the relay's own question answers.
    assert not le.may_speak(130.0) and le.hold is Hold.HOLDING


def test_etcd_saying_the_lease_expired_fences_whatever_our_clock_says():
    le = lease(100.0)
    assert le.expired() is Action.FENCE and le.hold is Hold.FENCED


def test_an_old_primary_that_returns_finds_a_newer_term_and_is_stale():
    le = lease(100.0)
    le.tick(102.0)
    view = View(Leader("standby", 5), 2.0, Protection(5, "standby", None), 9)
    assert le.seen(view) is Action.STALE and le.hold is Hold.LOST
    assert le.reclaimed(111.0) is Action.NONE and not le.may_speak(111.0)  # never again


def test_standby_wins_the_key_while_the_old_primary_is_paused_then_it_expires():
    le = lease(100.0)
    le.tick(102.0)
    # The standby's key expired meanwhile (it failed); its protection record remains.
    view = View(None, None, Protection(5, "standby", None), 9)
    assert le.seen(view) is Action.STALE


def test_a_paused_primary_reclaims_a_key_nobody_took():
    le = lease(100.0)
    le.tick(102.0)
    assert le.seen(View(None, None, Protection(4, "primary", None), 3)) is Action.NONE
    assert le.reclaimed(103.5) is Action.RESUME
    assert le.may_speak(104.0) and le.deadline() == 105.5


def test_our_own_key_seen_while_fenced_is_not_stale():
    le = lease(100.0)
    le.tick(102.0)
    assert le.seen(View(Leader("primary", 4), 0.5, None, 0)) is Action.NONE


def test_a_released_lease_never_acts():
    le = lease(100.0)
    le.release()
    assert le.hold is Hold.RELEASED and not le.may_speak(100.5)
    assert le.tick(200.0) is Action.NONE and le.reclaimed(200.0) is Action.NONE
    assert le.seen(View(Leader("standby", 9), 1.0, None)) is Action.NONE


OTHER = View(Leader("standby", 5), 2.0, Protection(5, "standby", None), 9)
NOBODY = View(None, None, Protection(4, "primary", None), 3)


@pytest.mark.parametrize("start, event, end, action", [
    (Hold.HOLDING, lambda le: le.renewed(101.0, 101.1), Hold.HOLDING, Action.NONE),
    (Hold.HOLDING, lambda le: le.renewed(101.0, 102.5), Hold.FENCED, Action.FENCE),
    (Hold.HOLDING, lambda le: le.tick(101.0), Hold.HOLDING, Action.NONE),
    (Hold.HOLDING, lambda le: le.tick(102.0), Hold.FENCED, Action.FENCE),
    (Hold.HOLDING, lambda le: le.expired(), Hold.FENCED, Action.FENCE),
    (Hold.HOLDING, lambda le: le.seen(OTHER), Hold.LOST, Action.STALE),
    (Hold.HOLDING, lambda le: le.release(), Hold.RELEASED, None),
    (Hold.FENCED, lambda le: le.renewed(103.0, 103.1), Hold.FENCED, Action.NONE),
    (Hold.FENCED, lambda le: le.tick(110.0), Hold.FENCED, Action.NONE),
    (Hold.FENCED, lambda le: le.expired(), Hold.FENCED, Action.NONE),
    (Hold.FENCED, lambda le: le.seen(NOBODY), Hold.FENCED, Action.NONE),
    (Hold.FENCED, lambda le: le.seen(OTHER), Hold.LOST, Action.STALE),
    (Hold.FENCED, lambda le: le.reclaimed(103.0), Hold.HOLDING, Action.RESUME),
    (Hold.FENCED, lambda le: le.release(), Hold.RELEASED, None),
    (Hold.LOST, lambda le: le.reclaimed(103.0), Hold.LOST, Action.NONE),
    (Hold.LOST, lambda le: le.seen(NOBODY), Hold.LOST, Action.NONE),
    (Hold.LOST, lambda le: le.release(), Hold.LOST, None),
    (Hold.HOLDING, lambda le: le.reclaimed(101.0), Hold.HOLDING, Action.NONE),
])
def test_every_transition_of_the_lease(start, event, end, action):
    le = lease(100.0)
    if start is Hold.FENCED:
        le.tick(102.0)
    elif start is Hold.LOST:
        le.tick(102.0)
        le.seen(OTHER)
    assert le.hold is start
    assert event(le) is action
    assert le.hold is end
    assert le.may_speak(le.deadline() - 0.01) == (end is Hold.HOLDING)


def test_the_margin_lies_inside_the_ttl():
    with pytest.raises(ValueError):
        Lease(3.0, 3.0, 1, "primary")


def test_fence_kills_only_when_the_standby_holds_the_current_state():
    assert fence_kills(True, "s1", "s1")
    assert not fence_kills(False, "s1", "s1")  # seeding, or the session has ended
    assert not fence_kills(True, None, "s1")  # protected, but the witness was never told
    assert not fence_kills(True, "s0", "s1")  # told of an earlier session's checkpoint
    assert not fence_kills(True, None, None)


def test_an_operator_forces_only_a_free_key():
    moot = View(None, None, Protection(4, "primary", None), 7)
    assert judge_take_over(moot, S, my_term=4).final
    forced = judge_take_over(moot, S, my_term=4, force=True)
    assert forced.may and forced.term == 5
    held = View(Leader("primary", 4), 2.0, Protection(4, "primary", None), 7)
    assert not judge_take_over(held, S, my_term=4, force=True).may  # never over a holder


S = "a" * 32


@pytest.mark.parametrize("view, may, final, term", [
    (View(None, None, Protection(4, "primary", S), 7), True, False, 5),
    (View(Leader("primary", 4), 2.0, Protection(4, "primary", S), 7), False, False, 5),
    (View(None, None, Protection(4, "primary", None), 7), False, True, 0),
    (View(None, None, Protection(4, "primary", "b" * 32), 7), False, True, 0),
    (View(None, None, None, 0), False, True, 0),
])
def test_the_standby_takes_the_key_only_for_the_current_checkpoint(view, may, final, term):
    v = judge_take_over(view, S, my_term=4)
    assert (v.may, v.final) == (may, final), v.reason
    if term:
        assert v.term == term


def test_our_own_interrupted_take_over_leaves_the_checkpoint_current():
    # This standby took the key (term 5), then died before its VM ran; restarted, it finds
    # the record its take wrote, and its checkpoint intact.
    view = View(None, None, Protection(5, "standby", None, resumed=S), 8)
    assert judge_take_over(view, S, my_term=5, me="standby").may
    assert judge_take_over(view, S, my_term=5, me="primary").final  # someone else's: moot
    assert judge_take_over(view, S, my_term=5).final
    # A claim of ours (a VM started here) or a take from another checkpoint: moot.
    assert judge_take_over(View(None, None, Protection(5, "standby"), 8), S, 5, "standby").final
    other = View(None, None, Protection(5, "standby", None, resumed="c" * 32), 8)
    assert judge_take_over(other, S, 5, "standby").final


def test_the_take_over_term_is_above_every_term_seen():
    v = judge_take_over(View(None, None, Protection(9, "primary", S), 1), S, my_term=3)
    assert v.term == 10
    v = judge_take_over(View(None, None, Protection(2, "primary", S), 1), S, my_term=6)
    assert v.term == 7


@pytest.mark.parametrize("text", ['{"host": 1, "term": 2}', '{"host": "a", "term": true}',
                                  '{"host": "a", "term": 2e9999}', "[]", "x", '{"host": "a"}',
                                  '{"host": "a", "term": -5}',
                                  '{"host": "a", "term": 4611686018427387904}'])
def test_a_malformed_leader_key_is_a_witness_error(text):
    with pytest.raises(WitnessError):
        Leader.decode(text)


def test_records_round_trip():
    assert Leader.decode(Leader("standby", 3, 17).encode()) == Leader("standby", 3, 17)
    p = Protection(3, "standby", S)
    assert Protection.decode(p.encode()) == p
    t = Protection(3, "standby", None, resumed=S)
    assert Protection.decode(t.encode()) == t
    with pytest.raises(WitnessError):
        Protection.decode('{"term": 1, "host": "a", "resumed": 5}')
    with pytest.raises(WitnessError):
        Protection.decode('{"term": 1, "host": "a", "session": 5}')


@pytest.mark.parametrize("url, ok", [("http://10.0.0.5:2379", ("http", "10.0.0.5", 2379)),
                                     ("https://etcd.example:2380", ("https", "etcd.example", 2380)),
                                     ("http://h", ("http", "h", 2379)), ("ftp://h:1", None),
                                     ("http://:2379", None), ("http://h:99999", None),
                                     ("http://h:2379/v3", None), ("h:2379", None)])
def test_endpoints(url, ok):
    if ok is None:
        with pytest.raises(ValueError):
            parse_endpoint(url)
    else:
        assert parse_endpoint(url) == ok


MAC = bytes.fromhex("5e8daa49eb20")
VM = bytes.fromhex("525400d24c18")


def test_the_probe_is_an_rfc5227_probe():
    f = arp.probe_frame(MAC, "10.213.0.10")
    assert f[:6] == b"\xff" * 6 and f[6:12] == MAC and f[12:14] == b"\x08\x06"
    assert f[28:32] == b"\0\0\0\0" and f[38:42] == bytes([10, 213, 0, 10])  # from 0.0.0.0
    assert arp.reply_from(f, "10.213.0.10") is None  # our own probe claims nothing


def test_a_reply_or_an_announcement_from_the_address_is_seen_and_nothing_else():
    # What a live copy of the VM answered in the drill (captured on the standby's bridge).
    reply = bytes.fromhex("5e8daa49eb20525400d24c1808060001080006040002525400d24c180ad5000a"
                          "5e8daa49eb2000000000")
    assert arp.reply_from(reply, "10.213.0.10") == "52:54:00:d2:4c:18"
    assert arp.reply_from(reply, "10.213.0.11") is None
    announce = (b"\xff" * 6 + VM + b"\x08\x06" + bytes.fromhex("0001080006040001") + VM
                + bytes([10, 213, 0, 10]) + b"\0" * 6 + bytes([10, 213, 0, 10]))
    assert arp.reply_from(announce, "10.213.0.10") == "52:54:00:d2:4c:18"
    assert arp.reply_from(reply[:30], "10.213.0.10") is None
    assert arp.reply_from(reply[:12] + b"\x08\x00" + reply[14:], "10.213.0.10") is None
