"""`remusdb interval`: a live change of the checkpoint interval, asked of the node's control
socket, carried out by the primary daemon over QMP; and the within-VM A/B arithmetic that
benchmarks/checkpoint_cost.py --ab builds on it."""

import argparse
import socket
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from benchmarks import _ab
from remusdb import cli
from remusdb.checkpoint import wire
from remusdb.checkpoint.control import ControlReply, ControlServer
from remusdb.checkpoint.participant import Participant
from remusdb.checkpoint.primary import PrimaryDaemon
from remusdb.checkpoint.state import PrimaryState
from remusdb.checkpoint.status import PrimaryStatus, read_status
from remusdb.config import Config
from remusdb.errors import RemusError
from remusdb.reprotect import control
from remusdb.reprotect.control import NODE_SOCKET, NodeRequest
from tests.unit.linkpair import secure
from tests.unit.test_participants import fake_guest


# The request
def test_an_interval_request_carries_a_bounded_whole_number_of_milliseconds():
    assert NodeRequest.from_json({"cmd": "interval", "interval_ms": 250}) == \
        NodeRequest("interval", 250)
    for bad in (None, 9, 10_001, "100", 100.0, True):
        with pytest.raises(ValueError, match="interval_ms"):
            NodeRequest.from_json({"cmd": "interval", "interval_ms": bad})
    with pytest.raises(ValueError, match="takes no interval_ms"):
        NodeRequest.from_json({"cmd": "switchover", "interval_ms": 100})
    assert NodeRequest.from_json({"cmd": "reprotect"}) == NodeRequest("reprotect")


def test_the_cli_refuses_an_interval_outside_the_configs_bounds_before_asking_anyone():
    for bad in ("9", "10001", "ten", "-5"):
        with pytest.raises(argparse.ArgumentTypeError, match="10..10000"):
            cli._interval_ms(bad)
    assert cli._interval_ms("10") == 10 and cli._interval_ms("10000") == 10_000


def test_the_node_socket_carries_the_request_and_the_refusal(tmp_path):
    seen = []

    def handle(req: NodeRequest) -> ControlReply:
        seen.append(req)
        if req.interval_ms == 20:
            return ControlReply(False, "interval needs a protected primary")
        return ControlReply(True, failover={"interval_ms": req.interval_ms, "previous_ms": 100})

    with node_socket(tmp_path, handle):
        reply = control.request(tmp_path, "interval", interval_ms=250)
        assert reply.failover == {"interval_ms": 250, "previous_ms": 100}
        with pytest.raises(RemusError, match="interval refused: interval needs a protected"):
            control.request(tmp_path, "interval", interval_ms=20)
        assert [r.interval_ms for r in seen] == [250, 20]


@contextmanager
def node_socket(d, handle):
    """A real control server on d/node.sock with `handle` as the node's decision."""
    stopped = threading.Event()
    ControlServer(d / NODE_SOCKET, NodeRequest.from_json, handle, stopped).start()
    try:
        for _ in range(250):  # bound is not listening yet: wait until a connection is taken
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(d / NODE_SOCKET))
                break
            except OSError:
                threading.Event().wait(0.02)
            finally:
                probe.close()
        yield
    finally:
        stopped.set()


def test_the_ab_switcher_alternates_and_leaves_the_modes_own_interval(tmp_path):
    from benchmarks.checkpoint_cost import IntervalSwitcher
    asked = []

    def handle(req: NodeRequest) -> ControlReply:
        asked.append(req.interval_ms)
        if len(asked) == 4:
            return ControlReply(False, "interval needs a protected primary")  # session over
        return ControlReply(True)

    with node_socket(tmp_path, handle):
        sw = IntervalSwitcher(tmp_path, 100, 10_000, period=0.05)
        sw.start()
        sw.join(10)
        sw.finish()
    # 10 s, 100 ms, 10 s taken; the fourth refused: switching stops, the error kept; then
    # finish asks for the mode's own 100 ms again (the last taken was 10 s)
    assert asked == [10_000, 100, 10_000, 100, 100]
    assert [ms for _, ms in sw.switches] == [100, 10_000, 100, 10_000]
    assert sw.error == "interval refused: interval needs a protected primary"


# The primary daemon's side
class Qmp:
    def __init__(self, error: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.error = error

    def execute(self, cmd, **args):
        if self.error is not None:
            raise self.error
        self.calls.append((cmd, args))


def primary_with(tmp_path, qmp: Qmp) -> PrimaryDaemon:
    guest = fake_guest(SimpleNamespace(), tmp_path)
    guest.monitor = qmp
    return PrimaryDaemon(secure(Config(), tmp_path), guest, tmp_path, [],
                         clock=SimpleNamespace(summary=dict))


def test_a_protected_primary_tells_qemu_and_publishes_the_new_interval(tmp_path):
    qmp = Qmp()
    p = primary_with(tmp_path, qmp)
    p.states.set(PrimaryState.SEEDING)
    p.states.set(PrimaryState.PROTECTED)
    assert p.set_interval(250) == 100
    assert qmp.calls == [("migrate-set-parameters", {"x-checkpoint-delay": 250})]
    assert read_status(tmp_path / PrimaryStatus.file_name())["interval_ms"] == 250
    assert p.set_interval(100) == 250


def test_no_interval_change_out_of_bounds_or_outside_protection(tmp_path):
    qmp = Qmp()
    p = primary_with(tmp_path, qmp)
    with pytest.raises(RemusError, match="on a protected VM"):
        p.set_interval(250)  # still starting: there is no COLO migration to tune
    p.states.set(PrimaryState.SEEDING)
    p.states.set(PrimaryState.PROTECTED)
    with pytest.raises(RemusError, match="outside 10..10000"):
        p.set_interval(5)
    assert qmp.calls == [] and p.interval_ms == 100


def test_no_interval_change_once_the_session_is_ending_or_qemu_fails(tmp_path):
    qmp = Qmp()
    p = primary_with(tmp_path, qmp)
    p.states.set(PrimaryState.SEEDING)
    p.states.set(PrimaryState.PROTECTED)
    p.failure = "checkpoint stalled"  # _fail recorded it; the state changes later
    with pytest.raises(RemusError, match="this session: checkpoint stalled"):
        p.set_interval(250)
    p.failure, p._handing_over = None, True
    with pytest.raises(RemusError, match="a switchover is ending this session"):
        p.set_interval(250)
    p._handing_over = False
    p.guest.monitor = Qmp(TimeoutError("no answer in 30 s"))
    with pytest.raises(RemusError, match="QEMU did not take the interval: TimeoutError: no "):
        p.set_interval(250)
    assert qmp.calls == [] and p.interval_ms == 100


def test_acks_release_output_while_a_qmp_call_holds_the_monitor(tmp_path):
    """A slow QEMU answering `remusdb interval` (or a switchover's QMP) must not hold up the
    standby's ACKs, which release held output: the reader never waits for the QMP lock once
    the session is protected."""
    released = []

    class Output(Participant):
        def on_ack(self, epoch: int) -> None:
            released.append(epoch)

    p = PrimaryDaemon(secure(Config(), tmp_path), fake_guest(None, tmp_path), tmp_path,
                      [Output()], clock=SimpleNamespace(summary=dict))
    p.states.set(PrimaryState.SEEDING)
    p.states.set(PrimaryState.PROTECTED)
    p.sending, p.acked = 5, 0
    with p._qmp_lock:  # as set_interval holds it while QEMU takes its time
        reader = threading.Thread(target=p._on_frame, args=(wire.Frame(wire.Kind.ACK, 1),))
        reader.start()
        reader.join(2.0)
        assert not reader.is_alive() and released == [1]


# The A/B arithmetic
REPORT = """starting vacuum...end.
progress: 1001.000 s, 50.0 tps, lat 80.0 ms stddev 10.0, 0 failed
progress: 1002.000 s, 60.0 tps, lat 70.0 ms stddev 10.0, 0 failed
progress: 1003.000 s, 90.0 tps, lat 40.0 ms stddev 10.0, 0 failed
progress: 1004.000 s, 100.0 tps, lat 40.0 ms stddev 10.0, 0 failed
progress: 1005.000 s, 40.0 tps, lat 90.0 ms stddev 10.0, 0 failed
transaction type: <builtin: TPC-B (sort of)>
tps = 68.0 (without initial connection time)
"""


def test_each_second_counts_for_the_interval_in_force_all_through_it():
    per_second = _ab.seconds(REPORT)
    assert per_second[0] == (1001.0, 50.0) and len(per_second) == 5
    # 100 ms from 999.8; 10 s from 1001.9 (the second ending 1002 straddles it); back at 1004.2
    switches = [(999.8, 100), (1001.9, 10_000), (1004.2, 100)]
    by = _ab.phases(per_second, switches)
    # 1000-1001: 100 ms since 0.2 s only (settling); 1001-1002 straddles; 1002-1003 and
    # 1003-1004 are 10 s seconds, though 1002-1003 began 0.1 s after its switch: settling.
    assert by == {10_000: [100.0]}
    by = _ab.phases(per_second, switches, settle=0.0)
    assert by == {100: [50.0], 10_000: [90.0, 100.0]}
    s = _ab.summary(by, 100, 10_000)
    assert s["100 ms"] == {"seconds": 1, "tps_mean": 50.0, "tps_median": 50.0}
    assert s["10000 ms"]["tps_mean"] == 95.0 and s["ratio"] == round(50 / 95, 3)


def test_an_interval_that_never_ran_a_whole_second_has_no_ratio():
    s = _ab.summary({100: [50.0]}, 100, 10_000)
    assert s["10000 ms"] == {"seconds": 0, "tps_mean": None, "tps_median": None}
    assert s["ratio"] is None
    assert _ab.phases([(5.0, 10.0)], [(6.0, 100)]) == {}  # before the first switch
