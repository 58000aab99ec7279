"""The drill's fault table and expected outcomes, the matrix's totals, and the second-copy
detector (pure parts with synthetic samples; the detector against real QEMU processes)."""

import shutil
import subprocess
import time

import pytest

from remusdb.drill import command, faults
from remusdb.drill.copies import Copies, CopyWatch, Sample
from remusdb.drill.faults import FAULTS, Outcome
from remusdb.errors import RemusError
from remusdb.hypervisor.qemu import QEMU_BINARY


def test_each_fault_expects_what_an_ha_pair_must_do():
    expected = {"daemon-kill": Outcome.FAILOVER, "qemu-crash": Outcome.FAILOVER,
                "operator-stop": Outcome.FAILOVER, "host-freeze": Outcome.PRIMARY_STAYS,
                "host-freeze-fenced": Outcome.FAILOVER, "standby-crash": Outcome.PRIMARY_STAYS,
                "failover-crash": Outcome.FAILOVER, "standby-disk-full": Outcome.PRIMARY_STAYS,
                # partitions, the witness on: only the side that can hold the key runs the VM
                "link-cut": Outcome.PRIMARY_STAYS, "primary-isolated": Outcome.FAILOVER,
                "witness-cut-primary": Outcome.FAILOVER,
                "witness-cut-standby": Outcome.PRIMARY_STAYS,
                "witness-cut-both": Outcome.FAILOVER}
    assert {n: f.expect for n, f in FAULTS.items()} == expected
    # With the witness, a frozen primary's lease ends: the standby takes over, no fence needed.
    assert {n: f.expected(True) for n, f in FAULTS.items() if f.expected(True) != f.expect} == {
        "host-freeze": Outcome.FAILOVER}
    assert faults.PARTITIONS == ("link-cut", "primary-isolated", "witness-cut-primary",
                                 "witness-cut-standby", "witness-cut-both")
    assert [n for n, f in FAULTS.items() if not f.reprotects] == ["witness-cut-standby"]
    assert [n for n, f in FAULTS.items() if f.fenced] == ["host-freeze-fenced"]
    assert [n for n, f in FAULTS.items() if f.standby_restarts] == [
        "standby-crash", "failover-crash", "standby-disk-full"]
    assert [n for n, f in FAULTS.items() if f.own_store_fs] == ["standby-disk-full"]


def test_an_outcome_other_than_the_faults_fails_the_drill():
    assert faults.as_expected(FAULTS["qemu-crash"], failed_over=True)
    assert not faults.as_expected(FAULTS["qemu-crash"], failed_over=False)  # the DB is gone
    assert not faults.as_expected(FAULTS["host-freeze"], failed_over=True)  # unfenced: no
    assert faults.as_expected(FAULTS["standby-crash"], failed_over=False)
    assert faults.as_expected(FAULTS["host-freeze"], failed_over=True, witness=True)
    assert not faults.as_expected(FAULTS["host-freeze"], failed_over=False, witness=True)


def test_partitions_last_past_the_lease_and_a_freeze_too():
    assert faults.freeze_seconds(1.0, None) == 3.0
    assert faults.freeze_seconds(1.0, 3) == 7.0  # past the lease: the standby takes the key
    assert faults.cut_seconds(FAULTS["primary-isolated"], 3, 10.0) == 9.0
    assert faults.cut_seconds(FAULTS["link-cut"], 3, 10.0) == 16.0  # past the stall timeout


def test_fault_lists_parse_or_fail_with_one_line():
    assert faults.parse("all", witness=True) == list(FAULTS.values())
    assert [f.name for f in faults.parse("all")] == [n for n, f in FAULTS.items()
                                                     if not f.needs_witness]
    assert [f.name for f in faults.parse("partitions,link-cut", witness=True)] == list(
        faults.PARTITIONS)
    with pytest.raises(RemusError, match="link-cut: a partition drill needs --witness"):
        faults.parse("daemon-kill,link-cut")
    assert [f.name for f in faults.parse("qemu-crash, daemon-kill,qemu-crash")] == [
        "qemu-crash", "daemon-kill"]
    with pytest.raises(RemusError, match="unknown fault power-cut .*known: daemon-kill"):
        faults.parse("daemon-kill,power-cut")
    with pytest.raises(RemusError, match="unknown fault"):
        faults.parse(" , ")
    with pytest.raises(RemusError, match="--fault: unknown fault 'nope'"):
        command.failover("postgres", 100, "asc", "random", 1, False, fault="nope")
    with pytest.raises(RemusError, match="--points: unknown kill point later"):
        command.matrix("postgres", 100, "asc", "all", "random,later", 1, ".", False)


def test_descendants_walk_one_hosts_process_tree(tmp_path):
    def proc(pid, ppid, comm="x"):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1\n")
    proc(10, 1, "python")
    proc(11, 10, "qemu (a) b")  # a name with spaces and parentheses
    proc(12, 11)
    proc(20, 1)
    (tmp_path / "self").mkdir()
    assert sorted(faults.descendants(10, tmp_path)) == [10, 11, 12]


def test_the_fence_command_kills_the_listed_processes(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    pids = tmp_path / "pids"
    pids.write_text(f"{sleeper.pid}\n")
    subprocess.run(faults.fence_command(pids), shell=True, check=True)
    assert sleeper.wait(5) == -9


def _sample(**states):
    return Sample(time.monotonic(), states)


def test_two_copies_are_counted_only_when_running_in_the_same_sample():
    c = Copies()
    c.add(_sample(a="running", b="unanswered"))
    c.add(_sample(a="paused", b="running"))  # COLO pauses the primary: not two copies
    c.add(_sample(a="postmigrate"))
    assert c.report()["second_copies"] == 0 and c.report()["qemus_seen"] == 2
    c.add(_sample(a="running", b="running", c="inmigrate"))
    r = c.report()
    assert r["second_copies"] == 1 and r["first_second_copy"] == {"running": ["a", "b"]}


def test_summaries_count_a_drill_that_did_not_complete_as_failed():
    ok = {"ledger": {"ok": True, "acknowledged": 5, "lost": 0, "total_ok": True,
                     "partial_accounts": []}, "downtime_s": 1.0, "ok": True, "drill_s": 30.0,
          "connections": {"survived": 2, "broken": 0}, "copies": {"second_copies": 0},
          "as_expected": True}
    s = command.summarize([ok, {"fault": "qemu-crash", "error": "boom", "ok": False,
                                "drill_s": 10.0}])
    assert (s["drills"], s["passed"], s["incomplete"], s["acknowledged"]) == (2, 1, 1, 5)
    assert s["drill_s_mean"] == 20.0
    bad = dict(ok, ok=False, as_expected=False, copies={"second_copies": 3})
    s = command.summarize([bad])
    assert (s["passed"], s["second_copies"], s["unexpected_outcomes"]) == (0, 3, 1)
    doc = {"faults": {"qemu-crash": s}, "total": s}
    lines = command.matrix_table(doc)
    assert lines[0].split()[:3] == ["fault", "runs", "passed"]
    assert lines[1].split()[:7] == ["qemu-crash", "1", "0", "5", "0", "0", "3"]


@pytest.mark.skipif(shutil.which(QEMU_BINARY) is None, reason="no QEMU binary")
def test_the_detector_sees_two_real_qemus_running_at_once(tmp_path):
    def qemu(name):
        d = tmp_path / name
        d.mkdir()
        return subprocess.Popen([QEMU_BINARY, "-M", "none", "-nodefaults", "-display", "none",
                                 "-S", "-qmp", f"unix:{d / 'observe.sock'},server=on,wait=off",
                                 "-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off"])

    def cont(name):
        from remusdb.hypervisor.monitor import Monitor
        m = Monitor(tmp_path / name / "qmp.sock")
        m.connect(time.monotonic() + 10)
        m.cont()
        m.close()

    procs = [qemu("primary"), qemu("standby")]
    watch = CopyWatch(tmp_path)
    try:
        cont("primary")
        watch.start()
        time.sleep(1.0)
        assert watch.copies.samples >= 5 and not watch.copies.second_copies
        assert len(watch.copies.qemus) == 2
        cont("standby")  # the second copy
        time.sleep(0.6)
        procs[0].kill()  # and a QEMU that dies is no longer counted
        procs[0].wait()
        time.sleep(0.5)
        report = watch.stop()
        assert report["second_copies"] >= 2, report
        assert report["first_second_copy"]["running"] == sorted(
            str(tmp_path / h / "observe.sock") for h in ("primary", "standby"))
        last = watch.copies.second_copies[-1].at
        assert time.monotonic() - last > 0.3  # none after the kill
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_failovers_vm_is_timed_from_its_first_running_sample():
    c = Copies()
    c.add(Sample(10.0, {"p": "running"}))
    c.add(Sample(10.1, {"p": "unanswered", "s": "inmigrate"}))
    c.add(Sample(10.6, {"s": "running"}))
    c.add(Sample(10.7, {"s": "running"}))
    assert c.running_since(10.05, besides="p") == 0.55
    assert c.running_since(10.05, besides="s") is None  # the primary's ran before, not after


def test_fill_leaves_the_filesystem_full(small_fs, monkeypatch):
    """Even when the free space shrinks between a look at it and the fill (the store writes
    meanwhile; here statvfs over-reports it by 1 MiB)."""
    import os
    from types import SimpleNamespace
    real = os.statvfs
    monkeypatch.setattr(faults.os, "statvfs", lambda p: SimpleNamespace(
        f_bavail=real(p).f_bavail + 256, f_frsize=real(p).f_frsize))
    mnt = small_fs(8 << 20)
    (mnt / "store").write_bytes(b"x" * (1 << 20))
    ballast = faults.fill(mnt)
    st = real(mnt)
    assert st.f_bavail * st.f_frsize < 4096 and ballast.stat().st_size > (6 << 20)
    with pytest.raises(OSError):
        with open(mnt / "next-journal", "wb") as f:
            f.write(b"y" * 8192)
            f.flush()
            os.fsync(f.fileno())
