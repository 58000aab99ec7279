"""The checkpoint engine against the real DB guest: RAM equality at checkpoints under load, kill -9
of the primary, failover on the standby with PostgreSQL answering and clean logs."""

import signal
import subprocess
import time
from pathlib import Path

from remusdb.checkpoint.status import read_status
from remusdb.hypervisor.agent import GuestAgent
from remusdb.lab import dbclient
from remusdb.lab.daemons import REMUSDB, Daemon, wait_status, write_config
from remusdb.lab.layout import RunLayout
from remusdb.lab.load import pgbench
from remusdb.lab.net import VM_IP
from tests.vm.workload import stop

SCALE = 2


def process_alive(pid: int, wait: float) -> bool:
    """False once the process is gone or a zombie (it runs no guest code any more)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, IndexError):
            return False
        if state == "Z":
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def guest_clock_offset(agent_socket: Path) -> float:
    agent = GuestAgent(agent_socket)
    agent.wait_ready(30)
    try:
        return time.time() - agent.call("guest-get-time") / 1e9
    finally:
        agent.close()


def cli(lab, host, *args):
    return subprocess.run(["ip", "netns", "exec", lab.ns(host), *REMUSDB, *args],
                          capture_output=True, text=True, timeout=120)


def test_protect_verify_kill_primary_and_fail_over(lab, base):
    run = RunLayout(base)
    cfg = write_config(run.config, lab, interval_ms=100)
    standby = Daemon(lab, "standby", ["standby", str(cfg)], run.log("standby"))
    primary = load = None
    try:
        wait_status(run.standby_status, lambda s: True, 60, "standby start", [standby])
        primary = Daemon(lab, "primary", ["protect", str(cfg), "--verify-every", "5",
                                          "--verify-count", "22", "--trace",
                                          str(run.primary_trace)], run.log("primary"))
        sb_status = run.standby_status
        wait_status(sb_status, lambda s: s["epoch_committed"] >= 1, 300, "first checkpoint",
                    [standby, primary])
        init = pgbench(lab, "-i", "-s", str(SCALE), "-q")
        assert init.wait(300) == 0, init.stdout.read()
        load = pgbench(lab, "-S", "-c", "4", "-T", "600", "-n")
        st = wait_status(sb_status, lambda s: s["verify"]["checks"] >= 22, 400,
                         "22 RAM equality checks", [standby, primary])
        assert st["verify"]["differing_groups"] == 0, st["verify"]  # so 0 differing pages
        pst = read_status(run.primary_status)
        assert pst["state"] == "protected" and pst["dirty_pages"]["p50"] > 0
        # the standby's ACKs, timed from each epoch's resume, in the real status
        assert 0 < pst["ack_ms"]["p50"] <= pst["ack_ms"]["max"] < 10_000, pst["ack_ms"]
        # Verification is over (its 0.2 s hashing pauses cost the guest clock more than the
        # checkpoints do): after normal checkpoints under load, the guest keeps host time.
        time.sleep(3)
        off = guest_clock_offset(run.primary_vm.agent)
        pst = read_status(run.primary_status)
        assert abs(off) < 1.0, (off, pst["guest_clock"])
        # The guest's clock runs on through the checkpoints' pauses (qemu-patches/0003), so
        # the keeper has nothing to step (it stepped every ~0.7 s: a pause stopped the clock).
        before = pst["guest_clock"]
        time.sleep(8)
        after = read_status(run.primary_status)["guest_clock"]
        assert after["steps"] == before["steps"] and abs(after["offset_s"]) < 0.1, (
            before, after)
        # A live change of the interval reaches QEMU: 10 s, then 50 ms (the trace has a line
        # per checkpoint).
        def epochs_in(seconds: float) -> int:
            n0 = len(run.primary_trace.read_text().splitlines())
            time.sleep(seconds)
            return len(run.primary_trace.read_text().splitlines()) - n0

        r = cli(lab, "primary", "interval", str(cfg), "10000")
        assert r.returncode == 0 and "every 10000 ms now (was 100 ms)" in r.stdout, r.stderr
        assert read_status(run.primary_status)["interval_ms"] == 10_000  # published at once
        time.sleep(1)  # the switch itself checkpoints at once
        assert epochs_in(4) == 0
        r = cli(lab, "primary", "interval", str(cfg), "50")
        assert r.returncode == 0 and "(was 10000 ms)" in r.stdout, r.stderr
        assert epochs_in(4) >= 10
        # Fenced manual failover: refused while the primary is still sending.
        r = cli(lab, "standby", "failover", str(cfg))
        assert r.returncode == 1 and "refusing: the primary is still sending" in r.stderr
        r = cli(lab, "standby", "status", str(cfg))
        assert r.returncode == 0 and "primary: protected" in r.stdout, r.stdout + r.stderr

        qemu_pid = int(run.primary_vm.pid.read_text())
        primary.kill(signal.SIGKILL)
        killed = time.monotonic()
        st = wait_status(sb_status, lambda s: s["state"] == "active", 60, "failover", [standby])
        fo = st["failover"]
        assert fo["running_s"] < 1.0, fo
        assert "connection to the primary lost" in fo["reason"]
        # Fencing: the primary's QEMU died with its daemon, so only one VM runs.
        assert qemu_pid and not process_alive(qemu_pid, wait=5.0)
        with lab.inside("client"):
            n = dbclient.query_one(dbclient.postgres, VM_IP,
                                   "SELECT count(*) FROM pgbench_accounts", timeout=60)
        answered = time.monotonic() - killed
        assert n == SCALE * 100_000

        assert abs(guest_clock_offset(run.standby_vm.agent)) < 1.0
        agent = GuestAgent(run.standby_vm.agent)
        agent.wait_ready(30)
        dmesg = agent.exec(["dmesg"]).stdout
        for bad in ("BUG:", "Oops", "general protection", "Call Trace", "segfault"):
            assert bad not in dmesg, dmesg[-3000:]
        pglog = agent.exec(["cat", "/var/log/postgresql/postgresql-15-main.log"]).stdout
        for bad in ("PANIC", "database system was interrupted", "invalid page",
                    "could not read block", "was not properly shut down"):
            assert bad not in pglog, pglog[-3000:]
        print(f"failover: {fo}; PostgreSQL answered {answered:.2f} s after kill -9; "
              f"primary guest clock {pst['guest_clock']}, verify {st['verify']}")
    finally:
        stop(load, primary, standby)


def test_standby_lost_the_vm_runs_on_unprotected(lab, base):
    """kill -9 the standby: the primary ends COLO (x-colo-lost-heartbeat), so the VM is not left
    paused, and keeps serving; the standby restarts and the VM is protected again; SIGTERM then
    stops the primary daemon and its QEMU, handing the VM to the standby first (an operator
    stop of a protected primary is a switchover: the database goes on there)."""
    run = RunLayout(base)
    cfg = write_config(run.config, lab, interval_ms=100)
    standby = Daemon(lab, "standby", ["standby", str(cfg)], run.log("standby"))
    primary = None
    try:
        wait_status(run.standby_status, lambda s: True, 60, "standby start", [standby])
        primary = Daemon(lab, "primary", ["protect", str(cfg)], run.log("primary"))
        pstatus = run.primary_status
        wait_status(pstatus, lambda s: s["epoch_acked"] >= 5, 300, "protection",
                    [standby, primary])
        qemu_pid = int(run.primary_vm.pid.read_text())
        standby.kill(signal.SIGKILL)
        st = wait_status(pstatus, lambda s: s["state"] == "unprotected", 30, "unprotected",
                         [primary])
        assert "standby link lost" in st["failure"]
        with lab.inside("client"):
            assert dbclient.query_one(dbclient.postgres, VM_IP, "SELECT 1", timeout=30) == 1
        assert process_alive(qemu_pid, wait=0)
        # The standby host comes back: its node rejoins by itself, its store's disk resynced
        # (it shares the primary's history), the same VM protected again, no restart of it.
        standby = Daemon(lab, "standby", ["standby", str(cfg)], run.log("standby-again"))
        node = wait_status(run.status_at("primary", "node"), lambda s: s["state"] ==
                           "primary-protected" and len(s["sessions"]) == 2, 120,
                           "protected again", [standby, primary])
        assert node["sessions"][-1]["seed"]["path"] == "resync", node["sessions"]
        assert node["term"] == 1  # no failover happened
        assert int(run.primary_vm.pid.read_text()) == qemu_pid
        primary.kill(signal.SIGTERM)
        assert primary.proc.returncode == 0, primary.text()[-2000:]
        assert not process_alive(qemu_pid, wait=5.0)
        assert read_status(run.status_at("primary", "node"))["state"] == "stopped"
        st = wait_status(run.standby_status, lambda s: s["state"] == "active", 60,
                         "the switchover", [standby])
        assert st["failover"]["reason"].startswith("switchover"), st["failover"]
        assert "operator stop: handing the VM to the standby" in primary.text()
        with lab.inside("client"):
            assert dbclient.query_one(dbclient.postgres, VM_IP, "SELECT 1", timeout=60) == 1
    finally:
        if primary:
            primary.kill()
        standby.kill()
