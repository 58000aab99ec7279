"""How a protection session ends decides by what each side knows: a primary whose VM is gone
says VM_LOST and the standby takes over at once; one whose VM runs says BYE and lets its held
output out only once the standby answered; a standby whose own store fails says BYE and never
fences anyone (real daemons on loopback, a synthetic COLO stream, no VM)."""

import json
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from remusdb.checkpoint import failover, wire
from remusdb.checkpoint.primary import Answer, PrimaryDaemon, silence_wait, vm_runs
from remusdb.checkpoint.standby import StandbyDaemon
from remusdb.checkpoint.state import PrimaryState, StandbyState
from remusdb.checkpoint.store import StandbyStore
from remusdb.config import Config
from remusdb.errors import LocalError
from tests.unit.linkpair import secure
from tests.unit.test_participants import FakeQemu, Recorder, fake_guest
from tests.unit.test_standby_control import fenced_daemon, free_port, seed, start, wait_state
from tests.unit.test_wire_store import epoch_with


def test_only_a_live_process_with_a_running_guest_counts_as_the_vm_running():
    assert vm_runs(True, "running") and vm_runs(True, "paused") and vm_runs(True, "colo")
    assert not vm_runs(False, "running")  # the process is gone, whatever was said last
    assert not vm_runs(True, None)  # QMP did not answer
    for ended in ("shutdown", "guest-panicked", "internal-error"):
        assert not vm_runs(True, ended)


def test_a_silent_standby_is_given_its_heartbeat_timeout_and_fence_command_first():
    assert silence_wait(1.0) > 60.0 + 1.0


# The standby's side, spoken to over the wire
@contextmanager
def seeded(tmp_path, fence_command: str):
    """A standby (its take-over recorded, not run) that committed epoch 0 from us."""
    d, cfg, resumed = fenced_daemon(tmp_path, fence_command)
    start(d)
    try:
        conn = seed(cfg)
        yield d, conn, resumed
        conn.close()
    finally:
        d.stopped.set()


def test_vm_lost_makes_the_standby_fail_over_at_once_without_a_fence(tmp_path):
    with seeded(tmp_path, "exit 3") as (d, conn, resumed):  # a fence would fail: not needed
        conn.send(wire.encode_json(wire.Kind.VM_LOST, 0, {"reason": "QEMU killed"}))
        assert wait_state(d, {StandbyState.ACTIVE}) == StandbyState.ACTIVE
        assert StandbyState.FENCING not in d.states.history
        assert resumed == [0] and "VM is gone: QEMU killed" in d.taken.report["reason"]


def test_bye_is_answered_once_the_store_is_marked_ended(tmp_path):
    with seeded(tmp_path, "true") as (d, conn, resumed):
        conn.send(wire.encode_json(wire.Kind.BYE, 0, {"reason": "operator"}))
        answer = conn.recv()
        assert answer.kind == wire.Kind.BYE
        assert json.loads(StandbyStore(tmp_path / "store").meta_path.read_text())["ended"]
        assert wait_state(d, {StandbyState.WAITING}) == StandbyState.WAITING
        assert resumed == []


def test_the_standbys_own_store_failing_ends_protection_with_bye_and_never_fences(
        tmp_path, monkeypatch):
    with seeded(tmp_path, "true") as (d, conn, resumed):  # a fence that would succeed
        def full(epoch):
            raise LocalError("journal: [Errno 28] No space left on device")
        monkeypatch.setattr(d.store, "journal", full)
        for parts in epoch_with(1, {(0, 2): 9}).frames:
            conn.send(parts)
        conn.send(wire.encode_json(wire.Kind.COMMIT, 1, {"pages": 1, "zeros": 0}))
        answer = conn.recv()
        assert answer.kind == wire.Kind.BYE and b"No space left" in bytes(answer.payload)
        assert wait_state(d, {StandbyState.RECOVERED}) == StandbyState.RECOVERED
        time.sleep(0.3)
        assert resumed == [] and StandbyState.FENCING not in d.states.history


# The primary's side, with a synthetic QEMU
class Stops(Recorder):
    """Also notes, at on_stop, whether held output would be dropped and what the standby had
    answered by then."""

    def __init__(self):
        super().__init__()
        self.primary: PrimaryDaemon | None = None
        self.at_stop: dict = {}

    def on_stop(self, reason, vm_gone=False):
        assert self.primary is not None
        self.at_stop = {"vm_gone": vm_gone, "answer": self.primary.standby_answer}
        super().on_stop(reason, vm_gone)


@pytest.fixture
def standby(tmp_path):
    cfg = secure(Config(), tmp_path)
    cfg.standby.address, cfg.standby.port = "127.0.0.1", free_port()
    cfg.optimizations.compression = "xor-rle"
    resumed: list[int] = []

    def take_over(store, spec, run_dir, cp):
        resumed.append(store.committed)
        return failover.TakenOver(SimpleNamespace(pid=4242), {"epoch": store.committed})

    d = StandbyDaemon(cfg, tmp_path / "standby", lambda: None, heartbeat_timeout=5.0,
                      take_over=take_over)
    start(d)
    yield cfg, d, resumed
    d.stopped.set()


def _protect(cfg, tmp_path, running: bool, vm_status: str = "running"):
    stops = Stops()
    qemu = FakeQemu(stops, vm_status)
    guest = fake_guest(qemu, tmp_path, running)
    primary = stops.primary = PrimaryDaemon(cfg, guest, tmp_path, [stops], stall_timeout=10)
    primary.protect()  # returns when "QEMU"'s stream ends
    return primary, stops, guest, qemu


def test_a_primary_whose_qemu_died_says_vm_lost_drops_held_output_and_the_standby_runs_it(
        standby, tmp_path):
    cfg, d, resumed = standby
    primary, stops, guest, qemu = _protect(cfg, tmp_path, running=False)
    assert "the VM is gone here (its QEMU exited)" in primary.failure
    assert stops.at_stop["vm_gone"] is True  # held output is of epochs the standby may lack
    assert guest.killed and primary.vm_stopped
    assert "x-colo-lost-heartbeat" not in qemu.commands
    assert wait_state(d, {StandbyState.ACTIVE}) == StandbyState.ACTIVE
    assert resumed == [d.store.committed] and resumed[0] >= 1


def test_a_guest_that_ended_is_not_a_running_vm_either(standby, tmp_path):
    cfg, d, resumed = standby
    primary, stops, guest, _ = _protect(cfg, tmp_path, running=True, vm_status="guest-panicked")
    assert "QEMU says 'guest-panicked'" in primary.failure and guest.killed
    assert wait_state(d, {StandbyState.ACTIVE}) == StandbyState.ACTIVE


def test_a_primary_whose_vm_runs_says_bye_and_releases_held_output_only_after_the_answer(
        standby, tmp_path):
    cfg, d, resumed = standby
    primary, stops, guest, qemu = _protect(cfg, tmp_path, running=True)
    assert stops.at_stop == {"vm_gone": False, "answer": Answer.CONFIRMED}
    assert not guest.killed and "x-colo-lost-heartbeat" in qemu.commands
    assert primary.states.history[-1] == PrimaryState.UNPROTECTED
    assert wait_state(d, {StandbyState.WAITING}) == StandbyState.WAITING and resumed == []


def test_held_output_waits_for_a_silent_standby(tmp_path, monkeypatch):
    """A standby that holds the link open and says nothing: the held output stays held for
    `silence_wait` (shortened here), then goes out."""
    import socket

    from remusdb.checkpoint import primary as prmod
    monkeypatch.setattr(prmod, "silence_wait", lambda hb: 1.0)
    cfg = secure(Config(), tmp_path)
    primary = PrimaryDaemon(cfg, fake_guest(FakeQemu(Recorder()), tmp_path), tmp_path,
                            [stops := Stops()], clock=SimpleNamespace(summary=dict))
    stops.primary = primary
    a, b = socket.socketpair()
    primary.conn = wire.Connection(a)
    primary._receiving = True
    threading.Thread(target=primary._receiver, daemon=True).start()
    t0 = time.monotonic()
    primary._fail("checkpoint stalled")
    assert time.monotonic() - t0 >= 1.0
    assert stops.at_stop == {"vm_gone": False, "answer": Answer.SILENT}
    b.close()


def test_a_status_file_on_a_full_disk_is_logged_never_raised(small_fs, caplog):
    """A full disk must not end a daemon in the middle of a state change."""
    from remusdb.checkpoint.status import StandbyStatus, StatusFile
    mnt = small_fs(64 << 10)
    status = StatusFile(mnt / "standby.status.json")
    status.write(StandbyStatus(state="waiting"))
    doc = StandbyStatus(state="recovered", checkpoint_ended="x" * (64 << 10))  # no room
    status.write(doc)
    status.write(doc)
    assert status.failing
    assert sum("not written" in r.message for r in caplog.records) == 1  # once
    assert not (mnt / "standby.status.json.tmp").exists()
    assert json.loads((mnt / "standby.status.json").read_text())["state"] == "waiting"


def test_a_vm_lost_that_cannot_be_sent_still_drops_the_held_output(tmp_path):
    """The link already broken when the VM dies: the held output never goes out, the VM is
    killed, and the standby learns of it as the link closes (no BYE)."""
    import socket
    cfg = secure(Config(), tmp_path)
    guest = fake_guest(FakeQemu(Recorder()), tmp_path, running=False)
    primary = PrimaryDaemon(cfg, guest, tmp_path, [stops := Stops()],
                            clock=SimpleNamespace(summary=dict))
    stops.primary = primary
    a, b = socket.socketpair()
    b.close()
    primary.conn = wire.Connection(a)
    primary._fail("COLO stream from QEMU ended")
    assert stops.at_stop["vm_gone"] is True and guest.killed
    assert "the VM is gone here (its QEMU exited)" in primary.failure
    assert primary.states.current == PrimaryState.UNPROTECTED


def test_a_peers_reason_is_short_and_never_an_error():
    long = wire.encode_json(wire.Kind.BYE, 0, {"reason": "x" * 5000})
    frame = wire.Frame(wire.Kind.BYE, 0, long[1])
    assert frame.reason() == "x" * 500
    assert wire.Frame(wire.Kind.VM_LOST, 0, b"[" * 100_000).reason() == "no reason given"
    assert wire.Frame(wire.Kind.BYE, 0, b'{"reason": 7}').reason() == "no reason given"
