"""The standby daemon's fencing rules on its control socket (real daemon, loopback, no VM)."""

import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from remusdb.checkpoint import failover, wire
from remusdb.checkpoint import standby as sbmod
from remusdb.checkpoint.control import request_failover
from remusdb.checkpoint.receive import EpochReceiver
from remusdb.checkpoint.standby import StandbyDaemon
from remusdb.checkpoint.state import StandbyState
from remusdb.checkpoint.status import StandbyStatus
from remusdb.checkpoint.store import StandbyStore
from remusdb.config import Config
from remusdb.errors import RemusError
from tests.unit.linkpair import dial, secure
from tests.unit.test_wire_store import INFO, epoch_with


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def daemon(tmp_path):
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    d = StandbyDaemon(cfg, tmp_path, lambda: no_vm(d), heartbeat_timeout=0.5)
    d.failover_attempts = 0
    yield d, cfg
    d.stopped.set()


def no_vm(d):
    d.failover_attempts += 1
    raise RemusError("no VM in unit tests")


def start(d):
    threading.Thread(target=d.serve, daemon=True).start()
    deadline = time.monotonic() + 5
    while not d.control_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_restarted_standby_recovers_its_store_and_refuses_an_unfenced_failover(daemon, tmp_path):
    d, _ = daemon
    st = StandbyStore(tmp_path / "store")
    st.create(INFO, "s")
    st.apply(epoch_with(0, {(0, 1): 7}))
    st.close()
    start(d)
    assert d.store.committed == 0 and d.state == "recovered"
    with pytest.raises(RemusError, match="refusing: the primary is not known to be down"):
        request_failover(tmp_path)


def test_failover_refused_while_the_primary_sends(daemon, tmp_path, monkeypatch):
    d, cfg = daemon
    monkeypatch.setattr(sbmod, "SEEDING_TIMEOUT", 5.0)
    start(d)
    conn = dial(cfg)
    conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "x"}))
    assert conn.recv().kind == wire.Kind.WELCOME
    conn.send(wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()))
    with pytest.raises(RemusError, match="refusing: the primary is still sending"):
        request_failover(tmp_path)
    with pytest.raises(RemusError, match="no committed checkpoint"):
        time.sleep(0.6)
        conn.send_frame(wire.Kind.HEARTBEAT, 0)
        time.sleep(0.6)  # silent past the heartbeat timeout, but nothing committed yet
        request_failover(tmp_path)
    conn.close()


def test_a_lying_peer_is_cut_off_without_failover(daemon, tmp_path):
    d, cfg = daemon
    start(d)
    conn = dial(cfg)
    conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "x"}))
    assert conn.recv().kind == wire.Kind.WELCOME
    conn.send(wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()))
    bad = wire.pack_pages(np.array([0], np.uint16), np.array([10**6], np.uint64),
                          np.zeros((1, 4096), np.uint8))  # a page far beyond the VM's RAM
    conn.send(wire.encode(wire.Kind.PAGES, 0, bad))
    deadline = time.monotonic() + 5
    while d.state == "receiving" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.state == "waiting" and d.guest is None  # no checkpoint: nothing to fail over to
    with pytest.raises(OSError):
        conn.send_frame(wire.Kind.HEARTBEAT, 0)
        conn.recv()


def seed(cfg):
    """Connect as a primary and commit epoch 0 (a tiny full copy)."""
    conn = dial(cfg)
    conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "x"}))
    assert conn.recv().kind == wire.Kind.WELCOME
    conn.send(wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()))
    e0 = epoch_with(0, {(0, 1): 7})
    for parts in e0.frames:
        conn.send(parts)
    conn.send(wire.encode_json(wire.Kind.COMMIT, 0, {"pages": 1, "zeros": 0}))
    ack = conn.recv()
    assert (ack.kind, ack.epoch) == (wire.Kind.ACK, 0)
    return conn


def wait_state(d, states, timeout=5.0):
    deadline = time.monotonic() + timeout
    while d.state not in states and time.monotonic() < deadline:
        time.sleep(0.02)
    return d.state


def test_bye_ends_protection_without_failover(daemon):
    d, cfg = daemon
    start(d)
    conn = seed(cfg)
    conn.send(wire.encode_json(wire.Kind.BYE, 0, {"reason": "operator"}))
    assert wait_state(d, {"waiting"}) == "waiting"
    assert d.failover_attempts == 0 and d.store.committed == 0
    conn.close()


def test_connection_closed_without_bye_is_a_death_and_fails_over(daemon):
    d, cfg = daemon
    start(d)
    conn = seed(cfg)
    conn.close()
    deadline = time.monotonic() + 5
    while d.failover_attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wait_state(d, {"failover-failed"}) == "failover-failed"
    assert d.failover_attempts == 1  # attempted (no VM here), and the store is still usable
    assert np.asarray(d.store.image(0))[1, 0] == 7
    with pytest.raises(RemusError, match="failover failed: no VM in unit tests"):
        request_failover(d.run_dir)  # an operator's retry runs it again
    assert d.failover_attempts == 2


def test_silence_without_a_fence_waits_for_the_operator(daemon):
    d, cfg = daemon
    start(d)
    conn = seed(cfg)  # then silence past the 0.5 s heartbeat timeout, the link still up
    assert wait_state(d, {"primary-silent"}) == "primary-silent"
    assert d.failover_attempts == 0
    with pytest.raises(RemusError, match="not known to be down"):
        request_failover(d.run_dir)
    with pytest.raises(RemusError, match="failover failed: no VM"):
        request_failover(d.run_dir, force=True)  # after fencing, the operator forces it
    assert d.failover_attempts == 1
    conn.close()


def fenced_daemon(tmp_path, fence_command):
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    resumed = []

    def take_over(store, spec, run_dir, cp):  # the VM's part is tested against QEMU (tests/vm)
        resumed.append(store.committed)
        return failover.TakenOver(SimpleNamespace(pid=4242), {"epoch": store.committed})

    d = StandbyDaemon(cfg, tmp_path, lambda: None, heartbeat_timeout=0.5,
                      fence_command=fence_command, take_over=take_over)
    return d, cfg, resumed


def test_silent_primary_fenced_then_failover_state_sequence(tmp_path):
    d, cfg, resumed = fenced_daemon(tmp_path, "true")
    start(d)
    try:
        conn = seed(cfg)  # then silence past the heartbeat timeout, the link still up
        assert wait_state(d, {StandbyState.ACTIVE}) == StandbyState.ACTIVE
        assert d.states.history == [StandbyState.WAITING, StandbyState.RECEIVING,
                                    StandbyState.FENCING, StandbyState.FAILING_OVER,
                                    StandbyState.ACTIVE]
        assert resumed == [0] and d.taken.report["reason"].endswith("primary fenced")
        assert StandbyStatus.read(d.run_dir / "standby.status.json").qemu_pid == 4242
        conn.close()
    finally:
        d.stopped.set()


def test_a_failed_fence_leaves_the_primary_silent(tmp_path):
    d, cfg, resumed = fenced_daemon(tmp_path, "exit 3")
    start(d)
    try:
        conn = seed(cfg)
        assert wait_state(d, {StandbyState.PRIMARY_SILENT}) == StandbyState.PRIMARY_SILENT
        assert d.states.history[-2:] == [StandbyState.FENCING, StandbyState.PRIMARY_SILENT]
        assert resumed == []
        conn.close()
    finally:
        d.stopped.set()


def test_a_bug_in_the_standby_is_not_bad_data_and_never_fails_over(tmp_path, monkeypatch):
    d, cfg, resumed = fenced_daemon(tmp_path, "true")  # even with a fence that would succeed

    def buggy(self, frame):
        raise TypeError("a bug of the standby's own")

    start(d)
    try:
        conn = seed(cfg)
        monkeypatch.setattr(EpochReceiver, "feed", buggy)
        conn.send_frame(wire.Kind.HEARTBEAT, 0)
        assert wait_state(d, {StandbyState.INTERNAL_ERROR}) == StandbyState.INTERNAL_ERROR
        time.sleep(0.6)  # past the heartbeat timeout: still no failover of its own
        assert resumed == [] and d.state == StandbyState.INTERNAL_ERROR
        with pytest.raises(RemusError, match="not known to be down"):
            request_failover(d.run_dir)
        request_failover(d.run_dir, force=True)  # an operator who fenced the primary may
        assert resumed == [0]
        conn.close()
    finally:
        d.stopped.set()


def test_state_changes_are_logged_once_each(tmp_path, caplog):
    caplog.set_level("INFO", logger="remusdb.checkpoint.standby")
    d, cfg, resumed = fenced_daemon(tmp_path, "exit 1")
    start(d)
    try:
        conn = seed(cfg)
        assert wait_state(d, {StandbyState.PRIMARY_SILENT}) == StandbyState.PRIMARY_SILENT
        changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("state:")]
        assert changes == ["state: waiting -> receiving", "state: receiving -> fencing",
                           "state: fencing -> primary-silent"]
        assert any("fence command exited 1" in r.getMessage() for r in caplog.records)
        conn.close()
    finally:
        d.stopped.set()


def node_daemon(tmp_path, term, committed=False):
    """A standby daemon of a node at `term`; with `committed`, its store holds epoch 0."""
    from remusdb.reprotect.record import NodeRecord
    if committed:
        st = StandbyStore(tmp_path / "store")
        st.create(INFO, "s")
        st.apply(epoch_with(0, {(0, 1): 7}))
        st.close()
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    rec = NodeRecord(tmp_path, "standby")
    rec.adopt(term)
    d = StandbyDaemon(cfg, tmp_path, lambda: no_vm(d), heartbeat_timeout=0.5, node=rec)
    d.failover_attempts = 0
    return d, cfg, rec


def test_a_stale_hello_is_refused_and_the_committed_checkpoint_kept(tmp_path):
    """A primary of an older term (it missed a failover) is told so; the store is untouched."""
    d, cfg, rec = node_daemon(tmp_path, 5, committed=True)
    start(d)
    try:
        conn = dial(cfg)
        conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "x", "term": 4}))
        reply = conn.recv()
        assert reply.kind == wire.Kind.REFUSE
        assert "term 4 is older than this host's term 5" in reply.json()["reason"]
        assert reply.json()["term"] == 5
        conn.close()
        time.sleep(0.3)
        assert d.store.committed == 0 and d.state == "recovered"  # nothing wiped, no failover
        assert d.failover_attempts == 0
        # A query is answered with the role and the committed epoch, and is no session.
        q = dial(cfg)
        q.send(wire.encode_json(wire.Kind.QUERY, 0, {}))
        role = q.recv()
        assert role.kind == wire.Kind.ROLE
        assert role.json() == {"state": "standby", "term": 5, "committed": 0}
        q.close()
        # A newer term is adopted (a failover this host missed) and persisted.
        conn = dial(cfg)
        conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "y", "term": 7}))
        welcome = conn.recv()
        assert welcome.kind == wire.Kind.WELCOME and welcome.json()["term"] == 7
        assert welcome.json()["disk"] == "full"  # no disk here: nothing to resync
        assert rec.term == 7
        conn.close()
    finally:
        d.stopped.set()


def test_a_disk_of_the_same_lineage_is_offered_for_a_resync(tmp_path):
    from remusdb.reprotect import resync
    size = 8 << 20
    st = StandbyStore(tmp_path / "store")
    st.create(INFO, "s", disk_size=size, lineage="L1")
    st.apply(epoch_with(0, {(0, 1): 7}))
    with open(st.disk_path, "r+b") as f:
        f.seek(4096 * 3)
        f.write(b"z" * 4096)
    st.close()
    d, cfg, _ = node_daemon(tmp_path, 1)
    start(d)
    try:
        for lineage, want in (("L2", "full"), ("L1", "resync")):
            conn = dial(cfg)
            conn.send(wire.encode_json(wire.Kind.HELLO, 0, {
                "session": lineage, "term": 1, "disk_size": size, "disk_lineage": lineage}))
            welcome = conn.recv()
            assert welcome.json()["disk"] == want, welcome.json()
            if want == "resync":
                assert welcome.json()["digest_frames"] == 1
                digests = wire.unpack_digests(conn.recv().payload)
                assert len(digests) == size // 4096
                assert np.flatnonzero(digests != resync.ZERO_DIGEST).tolist() == [3]
            else:
                assert "does not descend from the primary's" in welcome.json()["why"]
            conn.send(wire.encode_json(wire.Kind.BYE, 0, {"reason": "test"}))
            conn.close()
            time.sleep(0.3)
            # L2 wiped the disk (a full copy comes); recreate it for the next round
            if want == "full":
                st = StandbyStore(tmp_path / "store")
                st.create(INFO, "s", disk_size=size, lineage="L1")
                with open(st.disk_path, "r+b") as f:
                    f.seek(4096 * 3)
                    f.write(b"z" * 4096)
                st.close()
    finally:
        d.stopped.set()


def test_a_connection_that_never_became_a_session_is_no_death(tmp_path):
    """A port probe, or a primary that gives up in its handshake, closes before HELLO: that
    is nobody's death (it failed over, even from 'recovered', before)."""
    d, cfg, _ = node_daemon(tmp_path, 1, committed=True)
    start(d)
    try:
        socket.create_connection(("127.0.0.1", cfg.standby.port)).close()
        time.sleep(0.5)
        assert d.failover_attempts == 0 and d.state == "recovered"
        # During a take-over no HELLO may touch the store the VM is being resumed from.
        d.taking_over = True
        conn = dial(cfg)
        conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "z", "term": 1}))
        reply = conn.recv()
        assert reply.kind == wire.Kind.REFUSE and "taking over" in reply.json()["reason"]
        conn.close()
        time.sleep(0.3)
        assert d.store.committed == 0 and d.failover_attempts == 0
    finally:
        d.stopped.set()


def test_a_manual_failovers_vm_outlives_the_control_client_that_asked_for_it(tmp_path):
    """QEMU runs with PR_SET_PDEATHSIG, which fires when the *thread* that started it ends:
    a failover asked on the control socket must not start it in that client's thread."""
    import subprocess

    from remusdb.hypervisor.qemu import die_with_parent
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    started = []

    def take_over(store, spec, run_dir, cp):  # a stand-in for QEMU, started the same way
        proc = subprocess.Popen(["sleep", "60"], preexec_fn=die_with_parent)
        started.append(proc)
        return failover.TakenOver(SimpleNamespace(pid=proc.pid), {"epoch": store.committed})

    d = StandbyDaemon(cfg, tmp_path, lambda: None, heartbeat_timeout=0.5, take_over=take_over)
    start(d)
    try:
        conn = seed(cfg)  # then silence, no fence: the operator fails over
        assert wait_state(d, {"primary-silent"}) == "primary-silent"
        request_failover(tmp_path, force=True)
        time.sleep(0.5)  # the control client's thread has ended by now
        assert len(started) == 1 and started[0].poll() is None  # alive
        conn.close()
    finally:
        d.stopped.set()
        for p in started:
            p.kill()
            p.wait()
