"""The primary daemon walks its participants through every phase, in order (no VM: a synthetic
COLO primary plays QEMU on the migration socket, a real standby daemon listens on loopback)."""

import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from remusdb.checkpoint import stream as s
from remusdb.checkpoint.participant import Participant
from remusdb.checkpoint.primary import PrimaryDaemon
from remusdb.checkpoint.standby import StandbyDaemon
from remusdb.checkpoint.state import PrimaryState, StandbyState
from remusdb.config import Config
from remusdb.hypervisor.qemu import RunFiles
from tests.unit import colo_fixtures as fx
from tests.unit.linkpair import secure
from tests.unit.test_standby_control import free_port, start
from tests.unit.test_stream import page

CHECKPOINTS = 5


class Recorder(Participant):
    """A fake device: remembers which hook ran, for which epoch, in which thread."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.acked = {n: threading.Event() for n in range(CHECKPOINTS + 1)}

    def _note(self, *call):
        with self.lock:
            self.calls.append(call)

    def hello(self):
        return {"disk_size": 0}

    def on_seed(self, send):
        self._note("seed")

    def on_pause(self, out):
        self._note("pause", out.number)

    def on_resume(self, out):
        assert out.resumed_at >= out.paused_at > 0
        self._note("resume", out.number)

    def on_send(self, out):
        self._note("send", out.number)

    def on_ack(self, epoch):
        self._note("ack", epoch)
        self.acked[epoch].set()

    def on_stop(self, reason, vm_gone=False):
        self._note("stop", reason)


class FakeQemu:
    """QMP and the COLO primary's side of the migration socket, from the fixtures' streams."""

    def __init__(self, participant: Recorder, vm_status: str = "running"):
        self.p = participant
        self.commands: list[str] = []
        self.thread: threading.Thread | None = None
        self.vm_status = vm_status  # what query-status says once the stream has ended

    def status(self):
        return self.vm_status

    def set_migration_capabilities(self, **caps):
        self.commands.append("caps")

    def execute(self, cmd, **args):
        self.commands.append(cmd)

    def migrate(self, uri):
        path = uri.removeprefix("unix:")
        self.thread = threading.Thread(target=self._colo, args=(path,), daemon=True)
        self.thread.start()

    def _colo(self, path):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        init, last = fx.initial_stream([("ram0", i, page(i)) for i in range(8)])
        sock.sendall(init)
        assert sock.recv(4) == s.message(s.Colo.CHECKPOINT_READY)
        try:
            for n in range(1, CHECKPOINTS + 1):
                body, last = fx.checkpoint_stream([("ram0", n, page(100 + n)), ("ram0", 40, n)],
                                                  last)
                sock.sendall(body)
                reply = b""
                while len(reply) < 12:  # CHECKPOINT_REPLY, VMSTATE_RECEIVED, VMSTATE_LOADED
                    got = sock.recv(12 - len(reply))
                    if not got:
                        return  # the daemon ended the migration
                    reply += got
            self.p.acked[CHECKPOINTS].wait(10)  # the standby has it all: now "QEMU" goes away
        except OSError:
            return
        finally:
            sock.close()


def fake_guest(qemu: FakeQemu, tmp_path, running: bool = True) -> SimpleNamespace:
    """The QemuGuest the primary sees: its process lives (`running`) and QMP is `qemu`."""
    guest = SimpleNamespace(monitor=qemu, files=RunFiles(tmp_path / "vm"), running=running,
                            killed=False)
    guest.kill = lambda: setattr(guest, "killed", True)
    return guest


@pytest.fixture
def pair(tmp_path):
    cfg = secure(Config(), tmp_path)
    cfg.standby.address, cfg.standby.port = "127.0.0.1", free_port()
    cfg.optimizations.compression = "xor-rle"
    standby = StandbyDaemon(cfg, tmp_path / "standby", lambda: None, heartbeat_timeout=5.0)
    start(standby)
    yield cfg, standby
    standby.stopped.set()


def test_participants_see_seed_pause_resume_send_ack_stop_in_order(pair, tmp_path):
    cfg, standby = pair
    fake = Recorder()
    qemu = FakeQemu(fake)
    guest = fake_guest(qemu, tmp_path)
    primary = PrimaryDaemon(cfg, guest, tmp_path, [fake], stall_timeout=10)
    primary.protect()  # returns when "QEMU"'s stream ends
    calls = fake.calls
    assert calls[0] == ("seed",) and calls[-1] == ("stop", primary.failure)
    assert "COLO stream from QEMU ended" in primary.failure
    at = {c: i for i, c in enumerate(calls)}
    assert at[("pause", 0)] < at[("send", 0)] < at[("ack", 0)]
    for n in range(1, CHECKPOINTS + 1):
        assert at[("pause", n)] < at[("resume", n)], n
        assert at[("pause", n)] < at[("send", n)] < at[("ack", n)], n
        assert at[("pause", n - 1)] < at[("pause", n)]
    assert [c for c in calls if c[0] == "stop"] == [calls[-1]]  # once
    assert primary.states.history == [PrimaryState.STARTING, PrimaryState.SEEDING,
                                      PrimaryState.PROTECTED, PrimaryState.UNPROTECTED]
    assert "x-colo-lost-heartbeat" in qemu.commands
    # The standby heard BYE (no failover) and holds the last checkpoint's pages exactly.
    deadline = time.monotonic() + 5
    while standby.state != StandbyState.WAITING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert standby.states.history == [StandbyState.WAITING, StandbyState.RECEIVING,
                                      StandbyState.WAITING]
    assert standby.store.committed == CHECKPOINTS
    ram = np.asarray(standby.store.image(0))
    assert ram[CHECKPOINTS].tobytes() == page(100 + CHECKPOINTS)
    assert ram[0].tobytes() == page(0) and (ram[40] == CHECKPOINTS).all()  # a ZERO record


def test_a_participant_that_fails_to_stop_does_not_keep_the_others_or_bye_from_running(
        pair, tmp_path):
    cfg, standby = pair

    class Broken(Participant):
        def on_stop(self, reason, vm_gone=False):
            raise RuntimeError("stuck")

    fake = Recorder()
    qemu = FakeQemu(fake)
    guest = fake_guest(qemu, tmp_path)
    primary = PrimaryDaemon(cfg, guest, tmp_path, [Broken(), fake])
    primary.protect()
    assert fake.calls[-1][0] == "stop" and primary.state == PrimaryState.UNPROTECTED


def test_a_bug_in_the_sender_ends_protection_in_order_not_by_the_watchdog(pair, tmp_path):
    cfg, standby = pair

    class Buggy(Participant):
        def on_send(self, out):
            if out.number == 2:
                raise TypeError("a bug of the primary's own")

    fake = Recorder()
    qemu = FakeQemu(fake)
    guest = fake_guest(qemu, tmp_path)
    primary = PrimaryDaemon(cfg, guest, tmp_path, [Buggy(), fake], stall_timeout=30)
    t0 = time.monotonic()
    primary.protect()
    assert time.monotonic() - t0 < 20  # well before the 30 s watchdog
    assert primary.failure.startswith("internal error in the primary daemon: TypeError")
    stops = [c for c in fake.calls if c[0] == "stop"]
    assert stops == [("stop", primary.failure)]
    assert ("send", 2) not in fake.calls and ("ack", 2) not in fake.calls
    deadline = time.monotonic() + 5
    while standby.state != StandbyState.WAITING and time.monotonic() < deadline:
        time.sleep(0.02)
    assert standby.states.history[-1] == StandbyState.WAITING  # BYE: no failover
