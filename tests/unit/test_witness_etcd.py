"""The witness against a real etcd (Debian's etcd-server, one member on loopback): the
transactions that decide who runs the VM, and the keeper's fence when etcd goes away."""

import json
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from remusdb.witness.etcd import EtcdWitness
from remusdb.witness.keeper import LeaseKeeper
from remusdb.witness.rules import Hold, Leader, Protection, WitnessError

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def etcd(tmp_path):
    client, peer = _port(), _port()
    url, purl = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
         "--initial-cluster", f"t={purl}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w = EtcdWitness([url], "probe")
    deadline = time.monotonic() + 20
    while True:
        try:
            w.view()
            break
        except WitnessError:
            assert time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.1)
    yield proc, url
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()


def pair(url, ttl=2):
    return (EtcdWitness([url], "vm1", ttl=ttl, timeout=0.3),
            EtcdWitness([url], "vm1", ttl=ttl, timeout=0.3))


def test_only_one_host_claims_the_key(etcd):
    a, b = pair(etcd[1])
    assert a.claim(Leader("primary", 1), Protection(1, "primary"))
    assert not b.claim(Leader("standby", 1))
    v = b.view()
    assert v.leader == Leader("primary", 1) and v.protection == Protection(1, "primary")
    assert 0 < v.lease_left <= 2


def test_the_standby_takes_the_key_only_once_the_lease_ends_and_for_the_declared_checkpoint(etcd):
    a, b = pair(etcd[1])
    a.claim(Leader("primary", 1), Protection(1, "primary"))
    assert a.declare(Protection(1, "primary", "s1"))
    v = b.view()
    assert not b.take(Leader("standby", 2), v.revision)  # the primary still holds it
    deadline = time.monotonic() + 6
    while b.view().leader is not None:  # not renewed: etcd ends it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not a.renew()
    assert not a.declare(Protection(1, "primary", None))  # too late to go unprotected
    assert not b.take(Leader("standby", 2), v.revision - 1)  # a stale read of the record
    assert b.take(Leader("standby", 2), v.revision, "s1")
    after = b.view()
    assert after.leader == Leader("standby", 2, -1)
    assert after.protection == Protection(2, "standby", None, "s1")  # unprotected now


def test_the_lease_left_reads_zero_not_gone_in_its_last_second(etcd):
    """The gateway leaves TTL out when it is 0: under a second left, the key still there.
    Read as -1 ("gone") it let a standby think a live lease had ended."""
    a, b = pair(etcd[1], ttl=2)
    a.claim(Leader("primary", 1))
    deadline = time.monotonic() + 6
    seen = set()
    while (v := b.view()).leader is not None:
        seen.add(v.lease_left)
        assert v.lease_left is not None and v.lease_left >= 0, v
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 0.0 in seen  # the last second was seen, as 0


def test_a_primary_that_declared_itself_unprotected_cannot_be_replaced_by_the_old_checkpoint(etcd):
    a, b = pair(etcd[1])
    a.claim(Leader("primary", 1), Protection(1, "primary"))
    a.declare(Protection(1, "primary", "s1"))
    seen = b.view()  # the standby read "s1 is current" ...
    assert a.declare(Protection(1, "primary", None))  # ... then the primary went unprotected
    a.release()
    assert b.view().leader is None
    assert not b.take(Leader("standby", 2), seen.revision)  # the record changed: refused


def test_a_take_whose_answer_was_lost_is_recognised_as_ours(etcd):
    a, b = pair(etcd[1])
    assert a.claim(Leader("primary", 1))
    lease = a.lease_id
    a.lease_id = None
    assert a.claim(Leader("primary", 1))  # the retry of a claim that had succeeded
    assert a.lease_id == lease and a.renew()


def test_every_endpoint_down_is_one_witness_error():
    w = EtcdWitness(["http://127.0.0.1:9", "http://127.0.0.1:10"], "vm1", timeout=0.2)
    with pytest.raises(WitnessError, match="127.0.0.1:9.*127.0.0.1:10"):
        w.view()


def test_a_second_endpoint_answers_when_the_first_is_down(etcd):
    w = EtcdWitness(["http://127.0.0.1:9", etcd[1]], "vm1", timeout=0.2)
    assert w.claim(Leader("primary", 1)) and w.renew()


def _keeper(w, events, term=1):
    return LeaseKeeper(w, "primary", term, 1.0,
                       on_fence=lambda: events.append(("fence", time.monotonic())) or False,
                       on_resume=lambda: events.append(("resume", time.monotonic())),
                       on_stale=lambda: events.append(("stale", time.monotonic())))


def test_the_keeper_renews_and_fences_before_etcd_could_end_the_lease(etcd):
    proc, url = etcd
    w = EtcdWitness([url], "vm1", ttl=3, timeout=0.3)
    events: list = []
    k = _keeper(w, events)
    assert k.claim()
    k.epoch = 42  # what the primary last had acknowledged
    k.start()
    time.sleep(4)  # past the TTL: renewals keep it
    assert k.hold is Hold.HOLDING and k.may_speak() and not events
    assert w.view().leader == Leader("primary", 1, 42)  # the key carries the epoch
    proc.send_signal(signal.SIGSTOP)  # etcd hangs
    stopped = time.monotonic()
    deadline = stopped + 5
    while not events and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events and events[0][0] == "fence"
    # Fenced within TTL - margin of the last renewal that was sent: before etcd could end it.
    assert events[0][1] - stopped < 3 - 1.0 + 0.05
    assert not k.may_speak()
    deadline = time.monotonic() + 3
    while k.hold is not Hold.RELEASED:  # the VM was killed: nothing to resume, ever
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGCONT)


def test_a_paused_primary_resumes_when_the_key_comes_back_and_is_stale_once_taken(etcd):
    proc, url = etcd
    w = EtcdWitness([url], "vm1", ttl=2, timeout=0.3)
    events: list = []
    paused = threading.Event()
    k = LeaseKeeper(w, "primary", 1, 0.7, on_fence=lambda: paused.set() or True,
                    on_resume=lambda: events.append("resume"),
                    on_stale=lambda: events.append("stale"))
    assert k.claim()
    k.start()
    proc.send_signal(signal.SIGSTOP)
    assert paused.wait(4) and not k.may_speak()
    proc.send_signal(signal.SIGCONT)  # etcd back: nobody took the key
    deadline = time.monotonic() + 8
    while "resume" not in events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events == ["resume"] and k.may_speak()
    # Now a failover elsewhere: the key taken in a newer term while we are cut off again.
    proc.send_signal(signal.SIGSTOP)
    paused.clear()
    assert paused.wait(4)
    proc.send_signal(signal.SIGCONT)
    other = EtcdWitness([url], "vm1", ttl=2, timeout=0.3)
    deadline = time.monotonic() + 6
    while not other.claim(Leader("standby", 2), Protection(2, "standby")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deadline = time.monotonic() + 6
    while "stale" not in events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events[-1] == "stale" and k.hold is Hold.LOST and not k.may_speak()


# The standby daemon with a witness (real daemon, TLS on loopback, real etcd, no VM).
def _standby(tmp_path, url):
    from remusdb.checkpoint.standby import StandbyDaemon
    from remusdb.config import Config
    from tests.unit.linkpair import secure
    from tests.unit.test_standby_control import free_port, no_vm, start
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    w = EtcdWitness([url], cfg.vm.name, ttl=2, timeout=0.3)
    d = StandbyDaemon(cfg, tmp_path / "standby", lambda: no_vm(d), heartbeat_timeout=0.5,
                      witness=w, make_keeper=lambda term: LeaseKeeper(
                          w, "standby", term, 0.7, lambda: False, lambda: None, lambda: None))
    d.failover_attempts = 0
    start(d)
    return d, cfg


def _primary_holds(url, vm, session):
    p = EtcdWitness([url], vm, ttl=2, timeout=0.3)
    k = LeaseKeeper(p, "primary", 1, 0.7, lambda: False, lambda: None, lambda: None)
    assert k.claim()
    k.start()
    assert k.declare(session)
    return k


def _session_then_reset(cfg):
    """A session commits its full copy, then its connection ends without BYE (a reset)."""
    from remusdb.checkpoint import wire
    from tests.unit.test_hostile_standby import full_copy, hello
    conn, reply = hello(cfg, "x")
    assert reply.kind == wire.Kind.WELCOME
    full_copy(conn)
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    conn.close()  # RST


def _after_a_reset(url, tmp_path):
    """A standby with a witness whose primary holds the key, after a reset of their link."""
    from tests.unit.test_standby_control import wait_state
    d, cfg = _standby(tmp_path, url)
    k = _primary_holds(url, cfg.vm.name, "x")
    _session_then_reset(cfg)
    assert wait_state(d, {"awaiting-witness"}) == "awaiting-witness"
    return d, cfg, k


def test_with_a_witness_a_reset_link_is_no_death_while_the_primary_holds_the_key(etcd, tmp_path):
    from tests.unit.test_standby_control import wait_state
    d, cfg, k = _after_a_reset(etcd[1], tmp_path)
    time.sleep(3)  # past the TTL: the primary renews, the standby must not fail over
    assert d.failover_attempts == 0 and d.state == "awaiting-witness"
    assert k.declare(None)  # the primary runs on unprotected: this checkpoint is moot now
    assert wait_state(d, {"primary-silent"}, 3) == "primary-silent"
    k.release()
    time.sleep(1.5)
    assert d.failover_attempts == 0  # not even once the key is free
    d.stopped.set()


def test_with_a_witness_the_standby_fails_over_once_the_primary_lease_ends(etcd, tmp_path):
    from tests.unit.test_standby_control import wait_state
    url = etcd[1]
    d, cfg, k = _after_a_reset(url, tmp_path)
    k._stop.set()  # the primary dies: nobody renews, nobody revokes
    deadline = time.monotonic() + 6
    while d.failover_attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.failover_attempts == 1  # it took the key, then tried (no VM here)
    assert wait_state(d, {"failover-failed"}) == "failover-failed"
    view = EtcdWitness([url], cfg.vm.name).view()
    # the newer term; then, the failover failed, the VM never ran: the checkpoint is current
    assert view.protection == Protection(2, "standby", "x")
    d.stopped.set()


class _Dog:
    """Stands in for /dev/watchdog (this kernel has no softdog): counts pets, sees the disarm."""

    def __init__(self):
        self.pets, self.disarmed = 0, False

    def pet(self):
        self.pets += 1

    def disarm(self):
        self.disarmed = True


def test_the_watchdog_is_petted_while_renewing_and_disarmed_once_fenced(etcd):
    proc, url = etcd
    w = EtcdWitness([url], "vm1", ttl=3, timeout=0.3)
    dog = _Dog()
    fenced = threading.Event()
    k = LeaseKeeper(w, "primary", 1, 1.0, on_fence=lambda: fenced.set() or False,
                    on_resume=lambda: None, on_stale=lambda: None, watchdog=lambda: dog)
    assert k.claim() and k.watchdog is dog
    k.start()
    time.sleep(2.5)
    assert dog.pets >= 2 and not dog.disarmed
    proc.send_signal(signal.SIGSTOP)
    assert fenced.wait(4)
    deadline = time.monotonic() + 2
    while not dog.disarmed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dog.disarmed and k.watchdog is None
    proc.send_signal(signal.SIGCONT)


def test_a_watchdog_path_that_is_no_watchdog_is_one_clear_error(tmp_path):
    from remusdb.errors import RemusError
    from remusdb.witness.watchdog import Watchdog
    f = tmp_path / "watchdog"
    f.write_bytes(b"")
    with pytest.raises(RemusError, match="cannot set its timeout .*not a watchdog device"):
        Watchdog(str(f), 2)
    with pytest.raises(RemusError, match="watchdog /nonexistent: No such file"):
        Watchdog("/nonexistent", 2)


def test_status_says_who_holds_the_key_and_which_checkpoint_is_current(etcd, tmp_path, capsys):
    from remusdb import cli
    from remusdb import config as configmod
    cfg = configmod.from_dict({"witness": {"endpoints": [etcd[1]]}})
    path = tmp_path / "vm.toml"
    path.write_text(configmod.dumps(cfg))
    w = EtcdWitness([etcd[1]], cfg.vm.name)
    assert w.claim(Leader("primary", 4, 17), Protection(4, "primary", "ab" * 16))
    assert cli.main(["status", str(path), "--run-dir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "witness: key held by primary (term 4, epoch 17 acknowledged), lease" in out
    assert "current checkpoint: session abababab" in out
    w.release()
    cli.main(["status", str(path), "--run-dir", str(tmp_path / "none"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["witness"]["leader"] is None and doc["witness"]["protection"]["term"] == 4


# How a primary with a witness ends a session (the real keeper and etcd; a synthetic COLO
# stream from a fake QEMU, real daemons on loopback: tests/unit/test_ending.py's rig).
from tests.unit.test_ending import Stops  # noqa: E402
from tests.unit.test_ending import standby as standby_fixture  # noqa: E402

standby = pytest.fixture(standby_fixture.__wrapped__, name="standby")


def _primary_with_witness(cfg, tmp_path, url, qemu_status="running"):
    from remusdb.checkpoint.primary import PrimaryDaemon
    from tests.unit.test_participants import FakeQemu, fake_guest
    w = EtcdWitness([url], cfg.vm.name, ttl=3, timeout=0.3)
    k = LeaseKeeper(w, "primary", 1, 1.0, lambda: False, lambda: None, lambda: None)
    assert k.claim()
    k.start()
    stops = Stops()
    qemu = FakeQemu(stops, qemu_status)
    guest = fake_guest(qemu, tmp_path, True)
    primary = stops.primary = PrimaryDaemon(cfg, guest, tmp_path, [stops], stall_timeout=10,
                                            witness=k)
    return primary, stops, guest, qemu, w


def test_a_primary_that_cannot_tell_the_witness_it_runs_unprotected_kills_its_vm(
        etcd, standby, tmp_path):
    """The session ends with the VM running, but etcd does not answer: running on unprotected
    would leave the standby's checkpoint 'current' behind the VM's back. The VM is killed
    (VM_LOST), its held output dropped; the standby's checkpoint is the VM now."""
    from tests.unit.test_standby_control import wait_state
    proc, url = etcd
    cfg, d, resumed = standby
    primary, stops, guest, qemu, _ = _primary_with_witness(cfg, tmp_path, url)
    original = primary._end

    def etcd_gone_then_end(reason):
        proc.send_signal(signal.SIGSTOP)
        try:
            original(reason)
        finally:
            proc.send_signal(signal.SIGCONT)
    primary._end = etcd_gone_then_end
    primary.protect()  # returns when "QEMU"'s stream ends, the VM still running
    assert "the witness could not be told it runs unprotected" in primary.failure
    assert guest.killed and stops.at_stop["vm_gone"] is True
    assert "x-colo-lost-heartbeat" not in qemu.commands
    assert wait_state(d, {"active"}) == "active"


def test_with_the_witness_told_held_output_does_not_wait_for_a_silent_standby(etcd, tmp_path):
    """Declared unprotected, no standby can take the key for its checkpoint: the held output
    goes out after the BYE's short wait, not after `silence_wait` (over a minute)."""
    from remusdb.checkpoint import wire
    from remusdb.checkpoint.primary import WITNESSED_BYE_WAIT, Answer, silence_wait
    from remusdb.config import Config
    from tests.unit.linkpair import secure
    cfg = secure(Config(), tmp_path)
    primary, stops, guest, qemu, w = _primary_with_witness(cfg, tmp_path, etcd[1])
    primary.session = "s1"
    assert primary.witness.declare("s1")
    a, b = socket.socketpair()
    primary.conn = wire.Connection(a)
    primary._receiving = True
    threading.Thread(target=primary._receiver, daemon=True).start()
    t0 = time.monotonic()
    primary._fail("checkpoint stalled")
    took = time.monotonic() - t0
    assert took < WITNESSED_BYE_WAIT + 2 < silence_wait(1.0), took
    assert stops.at_stop == {"vm_gone": False, "answer": Answer.SILENT}
    assert not guest.killed and "x-colo-lost-heartbeat" in qemu.commands
    assert w.view().protection == Protection(1, "primary", None)  # no checkpoint current
    b.close()
