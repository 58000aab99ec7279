"""A standby that no peer input can break: the committed checkpoint survives other sessions,
lies and squatters; operator paths stay safe. Real daemon, TLS on loopback, no VM."""

import errno
import json
import os
import socket
import stat
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from remusdb.checkpoint import failover, wire
from remusdb.checkpoint import standby as sbmod
from remusdb.checkpoint.control import request_failover
from remusdb.checkpoint.link import AuthError
from remusdb.checkpoint.primary import PrimaryDaemon
from remusdb.checkpoint.standby import StandbyDaemon
from remusdb.checkpoint.store import StandbyStore, settle
from remusdb.config import Config
from remusdb.errors import RemusError
from tests.unit.linkpair import dial, secure
from tests.unit.test_standby_control import free_port, no_vm, start, wait_state
from tests.unit.test_wire_store import INFO, epoch_with


@pytest.fixture
def daemon(tmp_path):
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    d = StandbyDaemon(cfg, tmp_path / "standby", lambda: no_vm(d), heartbeat_timeout=0.5)
    d.failover_attempts = 0
    start(d)
    yield d, cfg
    d.stopped.set()


def hello(cfg, session, **fields):
    conn = dial(cfg)
    conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": session, **fields}))
    return conn, conn.recv()


def full_copy(conn, value=7):
    conn.send(wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()))
    for parts in epoch_with(0, {(0, 1): value}).frames:
        conn.send(parts)
    conn.send(wire.encode_json(wire.Kind.COMMIT, 0, {"pages": 1, "zeros": 0}))
    ack = conn.recv()
    assert (ack.kind, ack.epoch) == (wire.Kind.ACK, 0)


def committed_session(d, cfg, session="x", value=7):
    """A session that commits epoch 0 and then goes silent (the standby keeps it)."""
    conn, reply = hello(cfg, session)
    assert reply.kind == wire.Kind.WELCOME
    full_copy(conn, value)
    conn.send(wire.encode_json(wire.Kind.BYE, 0, {"reason": "test"}))
    wait_state(d, {"waiting"})
    d.store.ended = ""  # as if it had gone silent instead: a live, unsuperseded checkpoint
    d.store._write_meta()
    conn.close()
    return conn


def page(d):
    return int(d.store.image(0)[1][0])


def test_another_session_cannot_replace_a_committed_store(daemon):
    d, cfg = daemon
    committed_session(d, cfg)
    conn, reply = hello(cfg, "y")
    assert reply.kind == wire.Kind.REFUSE
    assert "may not replace it" in reply.json()["reason"]
    assert (d.store.committed, d.store.session, page(d)) == (0, "x", 7)
    conn.close()


def test_the_same_primary_resumes_and_the_old_checkpoint_stays_until_the_new_one_commits(
        daemon, tmp_path):
    d, cfg = daemon
    committed_session(d, cfg)
    conn, reply = hello(cfg, "z", resumes=["x"])
    assert reply.kind == wire.Kind.WELCOME
    assert (tmp_path / "standby" / "store.next").is_dir()
    assert (d.store.committed, d.store.session, page(d)) == (0, "x", 7)  # untouched so far
    full_copy(conn, value=9)
    assert (d.store.committed, d.store.session, page(d)) == (0, "z", 9)
    assert d.store.root == tmp_path / "standby" / "store"
    assert not (tmp_path / "standby" / "store.next").exists()
    reopened = StandbyStore(tmp_path / "standby" / "store")
    reopened.open()
    assert (reopened.session, int(reopened.image(0)[1][0])) == ("z", 9)
    conn.close()


def test_a_new_session_that_dies_while_seeding_keeps_the_old_one_and_never_fails_over(
        daemon, tmp_path):
    d, cfg = daemon
    committed_session(d, cfg)
    conn, reply = hello(cfg, "z", resumes=["x"])
    assert reply.kind == wire.Kind.WELCOME
    conn.send(wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()))
    conn.close()  # "dead" mid-seeding
    wait_state(d, {"recovered"})
    assert d.state == "recovered" and d.failover_attempts == 0
    assert (d.store.committed, d.store.session, page(d)) == (0, "x", 7)
    assert not (tmp_path / "standby" / "store.next").exists()
    with pytest.raises(RemusError, match="not known to be down"):
        request_failover(d.run_dir)


def test_the_operator_releases_a_checkpoint_for_a_new_session(daemon):
    d, cfg = daemon
    committed_session(d, cfg)
    request_failover(d.run_dir, cmd="release")
    assert d.store.ended == "released by the operator"
    conn, reply = hello(cfg, "y")
    assert reply.kind == wire.Kind.WELCOME
    conn.close()


def test_after_bye_a_plain_failover_is_refused(daemon):
    d, cfg = daemon
    conn, reply = hello(cfg, "x")
    full_copy(conn)
    conn.send(wire.encode_json(wire.Kind.BYE, 0, {"reason": "operator"}))
    wait_state(d, {"waiting"})
    with pytest.raises(RemusError, match="ended protection in order"):
        request_failover(d.run_dir)
    assert d.failover_attempts == 0
    with pytest.raises(RemusError, match="failover failed"):
        request_failover(d.run_dir, force=True)  # the operator knows that VM is gone
    assert d.failover_attempts == 1


@pytest.mark.parametrize("size", [8 << 40, 2 ** 70, 2 ** 63 - 512])
def test_a_huge_disk_is_refused_and_nothing_is_created(daemon, tmp_path, size):
    d, cfg = daemon
    committed_session(d, cfg)
    conn, reply = hello(cfg, "z", resumes=["x"], disk_size=size)
    assert reply.kind == wire.Kind.REFUSE and "disk of" in reply.json()["reason"]
    assert not (tmp_path / "standby" / "store.next").exists()
    assert (d.store.committed, d.store.session) == (0, "x")
    conn.close()


def test_a_hostile_hello_never_ends_the_daemon_nor_touches_the_store(daemon):
    d, cfg = daemon
    committed_session(d, cfg)
    for payload in (b"[" * 200_000 + b"]" * 200_000, b'{"session": "y", "disk_size": 1e999}',
                    b"\xff\xfe", json.dumps({"session": "y", "resumes": ["x"],
                                             "disk_size": float("inf")}).encode()):
        conn = dial(cfg)
        conn.send(wire.encode(wire.Kind.HELLO, 0, payload))
        try:
            assert conn.recv().kind != wire.Kind.WELCOME
        except (OSError, RemusError):
            pass
        conn.close()
    assert (d.store.committed, d.store.session, page(d)) == (0, "x", 7)
    conn, reply = hello(cfg, "q", resumes=["x"])  # still serving
    assert reply.kind == wire.Kind.WELCOME
    conn.close()


def test_a_connection_that_does_not_authenticate_is_dropped_in_seconds(daemon):
    d, cfg = daemon
    squatter = socket.create_connection(("127.0.0.1", cfg.standby.port))
    t0 = time.monotonic()
    while True:  # served once the squatter is dropped (a primary retries, as here)
        try:
            conn, reply = hello(cfg, "x")
            break
        except AuthError:  # our own handshake timed out behind the squatter's
            assert time.monotonic() - t0 < 10
    assert reply.kind == wire.Kind.WELCOME
    assert time.monotonic() - t0 < 10
    squatter.settimeout(1)
    assert squatter.recv(1) == b""  # closed by the standby
    conn.close()


def test_insecure_mode_a_silent_connection_frees_the_session_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(sbmod, "HELLO_TIMEOUT", 1.0)
    cfg = Config()
    cfg.link.insecure = True
    cfg.standby.port = free_port()
    d = StandbyDaemon(cfg, tmp_path, lambda: None, heartbeat_timeout=0.5)
    start(d)
    try:
        squatter = socket.create_connection(("127.0.0.1", cfg.standby.port))
        conn = wire.Connection(socket.create_connection(("127.0.0.1", cfg.standby.port)))
        conn.sock.settimeout(10)
        conn.send(wire.encode_json(wire.Kind.HELLO, 0, {"session": "x"}))
        assert conn.recv().kind == wire.Kind.WELCOME
        squatter.close()
        conn.close()
    finally:
        d.stopped.set()


def test_a_fence_command_that_hangs_is_fence_failed_not_a_crash(tmp_path):
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    d = StandbyDaemon(cfg, tmp_path / "sb", lambda: no_vm(d), heartbeat_timeout=0.5,
                      fence_command="sleep 30")
    d.fence_timeout, d.failover_attempts = 0.5, 0
    start(d)
    try:
        conn, _ = hello(cfg, "x")
        full_copy(conn)
        wait_state(d, {"fencing"}, timeout=5)
        wait_state(d, {"primary-silent"}, timeout=10)
        assert d.state == "primary-silent" and d.failover_attempts == 0
        conn.close()
        conn, reply = hello(cfg, "y", resumes=["x"])  # the daemon lives on
        assert reply.kind == wire.Kind.WELCOME
        conn.close()
    finally:
        d.stopped.set()


def test_an_idle_control_client_does_not_block_a_failover_request(daemon):
    d, _ = daemon
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(d.control_path))  # says nothing
    t0 = time.monotonic()
    with pytest.raises(RemusError, match="no committed checkpoint"):
        request_failover(d.run_dir, timeout=5)
    assert time.monotonic() - t0 < 3
    idle.close()


def test_store_and_sockets_are_their_owners_only(daemon, tmp_path):
    d, cfg = daemon
    committed_session(d, cfg)
    root = tmp_path / "standby"
    for p in [root, root / "store", root / "store" / "ram", root / "store" / "journal"]:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o700, p
    for p in [root / "store" / "meta.json", root / "store" / "ram" / "0.img",
              root / "store" / "devices.bin"]:
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert stat.S_IMODE(os.stat(d.control_path).st_mode) == 0o600


def test_ram_images_are_allocated_when_created(tmp_path):
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "s")
    for i, b in enumerate(INFO.blocks):
        assert os.stat(st.block_path(i)).st_blocks * 512 >= b.length


def test_the_ram_directory_is_fsynced_once_its_images_exist(tmp_path, monkeypatch):
    from remusdb.checkpoint import store as storemod
    synced = []
    real = storemod._fsync_dir

    def record(d):
        synced.append((d, sorted(p.name for p in d.iterdir())))
        real(d)

    monkeypatch.setattr(storemod, "_fsync_dir", record)
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "s")
    names = sorted(f"{i}.img" for i in range(len(INFO.blocks)))
    assert (tmp_path / "s" / "ram", names) in synced


def test_the_default_store_is_on_persistent_storage():
    run_dir = str(Config().vm.run_dir)
    assert not run_dir.startswith(("/run", "/dev/shm", "/tmp")), run_dir


@pytest.mark.parametrize("spare", [False, True])
def test_a_full_disk_while_journaling_leaves_no_part_file(tmp_path, monkeypatch, spare):
    """Whether the journal is a new file or the retired one reused (journal/spare.part)."""
    st = StandbyStore(tmp_path / "s")
    st.create(INFO, "s")
    st.apply(epoch_with(0, {(0, 1): 7}))
    base = 0
    if spare:
        st.journal(e := epoch_with(1, {(0, 2): 9}))
        st.apply(e)
        assert (st.journal_dir / "spare.part").exists()
        base = 1
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        st.journal(epoch_with(base + 1, {(0, 2): 8}))
    monkeypatch.setattr(os, "fsync", real)
    assert list(st.journal_dir.iterdir()) == []
    assert st.committed == base
    st.journal(e := epoch_with(base + 1, {(0, 3): 4}))  # the next attempt journals afresh
    st.apply(e)
    assert st.committed == base + 1 and int(st.image(0)[3][0]) == 4


def test_a_crash_between_the_renames_of_a_promotion_is_settled(tmp_path):
    new = StandbyStore(tmp_path / "store.next")
    new.create(INFO, "new")
    new.apply(epoch_with(0, {(0, 1): 9}))
    new.close()
    old = StandbyStore(tmp_path / "store.old")
    old.create(INFO, "old")
    old.apply(epoch_with(0, {(0, 1): 7}))
    old.close()
    settle(tmp_path / "store")  # crashed after "store" became "store.old": the new one wins
    st = StandbyStore(tmp_path / "store")
    st.open()
    assert st.session == "new" and not (tmp_path / "store.old").exists()
    st.close()
    unfinished = StandbyStore(tmp_path / "store.next")
    unfinished.create(INFO, "half")  # never committed: dropped
    settle(tmp_path / "store")
    assert not (tmp_path / "store.next").exists()


def test_the_store_claims_no_checkpoint_once_the_failed_over_vm_runs(tmp_path, monkeypatch):
    st = StandbyStore(tmp_path / "store")
    st.create(INFO, "s", disk_size=4096, lineage="L")
    st.apply(epoch_with(0, {(0, 1): 7}))
    (tmp_path / "store" / "devices.bin").write_bytes(b"")
    seen = {}

    class Monitor:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def cont(self):
            seen["committed_at_cont"] = StandbyStore(tmp_path / "store").committed_on_disk()

    class Guest:
        def __init__(self, spec, run_dir):
            pass

        def start(self, incoming):
            pass

        def qmp(self):
            return Monitor()

        def kill(self):
            pass

    monkeypatch.setattr(failover, "QemuGuest", Guest)
    monkeypatch.setattr(failover, "incoming_stream", lambda store: b"")
    failover.resume(st, SimpleNamespace(ram_file=None), tmp_path / "vm")
    assert seen["committed_at_cont"] == -1
    assert StandbyStore(tmp_path / "store").disk_history()[0] == "L"


class _Acks:
    def __init__(self, epochs):
        self.frames = [wire.Frame(wire.Kind.ACK, e) for e in epochs]

    def recv(self):
        if not self.frames:
            raise OSError("done")
        return self.frames.pop(0)


def test_an_ack_for_an_epoch_never_sent_is_refused(tmp_path):
    cfg = secure(Config(), tmp_path)
    guest = SimpleNamespace(files=SimpleNamespace(agent=tmp_path / "qga.sock"), monitor=None)
    p = PrimaryDaemon(cfg, guest, tmp_path, [], clock=SimpleNamespace())
    p.sending = 3
    ended: list[str] = []
    p._fail_soon = ended.append  # type: ignore[method-assign]
    p.conn = _Acks([0, 1, 7])
    p._receiver()
    assert p.acked == 1 and "ACK for epoch 7: sent up to 3" in ended[0]
    ended.clear()
    p.conn = _Acks([1])  # again: acknowledged already
    p._receiver()
    assert p.acked == 1 and "ACK for epoch 1" in ended[0]


def test_pages_of_one_epoch_beyond_guest_ram_end_the_session_not_the_daemon(daemon):
    d, cfg = daemon
    conn, reply = hello(cfg, "x")
    conn.send(wire.encode_json(wire.Kind.STREAM, 0, INFO.to_json()))
    pages = np.zeros((1, 4096), np.uint8)
    payload = wire.pack_pages(np.array([0], np.uint16), np.array([1], np.uint64), pages)
    stop = threading.Event()
    try:
        for _ in range(sum(b.length for b in INFO.blocks) // 4096 + 8):
            conn.send(wire.encode(wire.Kind.PAGES, 0, payload))
    except OSError:
        stop.set()  # cut off: good
    wait_state(d, {"waiting"})
    conn.close()
    conn, reply = hello(cfg, "y")
    assert reply.kind == wire.Kind.WELCOME
    conn.close()
