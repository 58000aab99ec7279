"""Reprotection on the real guest: kill -9 the primary host's node, the standby fails over
into a protectable VM, the old primary comes back (started as a primary: it must see the VM
runs elsewhere and join as standby), its disk is resynced (only what differs), RAM is copied,
checkpoints resume with RAM and disk equal; and a switchover with a client connection open."""

import signal
import subprocess
import time

from remusdb.lab import dbclient
from remusdb.lab.daemons import Daemon, wait_status, write_config
from remusdb.lab.layout import RunLayout
from remusdb.lab.load import pgbench
from remusdb.lab.net import VM_IP
from tests.vm.test_protect import cli
from tests.vm.workload import stop

VERIFY = ["--verify-every", "5", "--verify-count", "3"]


def qemu_count(vm: str = "pg1") -> int:
    """QEMU processes running this VM on the machine (both lab hosts share it)."""
    r = subprocess.run(["pgrep", "-f", f"qemu-system.*-name {vm}"], capture_output=True,
                       text=True)
    return len(r.stdout.split())


def test_failover_then_the_old_primary_rejoins_and_is_resynced(lab, base):
    run = RunLayout(base)
    cfg = write_config(run.config, lab, interval_ms=100)
    b = Daemon(lab, "standby", ["standby", str(cfg), *VERIFY], run.log("standby"))
    a = a2 = load = None
    try:
        wait_status(run.standby_status, lambda s: True, 60, "standby start", [b])
        a = Daemon(lab, "primary", ["protect", str(cfg)], run.log("primary"))
        wait_status(run.standby_status, lambda s: s["epoch_committed"] >= 1, 300,
                    "first checkpoint", [a, b])
        init = pgbench(lab, "-i", "-s", "1", "-q")
        assert init.wait(300) == 0, init.stdout.read()
        load = pgbench(lab, "-c", "2", "-T", "600", "-n")  # TPC-B: the disk keeps changing
        time.sleep(5)
        a.kill(signal.SIGKILL)  # the primary host's node and its QEMU
        node_b = run.status_at("standby", "node")
        st = wait_status(node_b, lambda s: s["state"] == "primary-unprotected", 60,
                         "failover into a protectable VM", [b])
        assert st["term"] == 2, st  # 1 when the VM started, 2 at the failover
        assert qemu_count() == 1
        with lab.inside("client"):
            assert dbclient.query_one(dbclient.postgres, VM_IP, "SELECT 1", timeout=60) == 1
        time.sleep(3)  # the resumed VM writes, unprotected, for a while

        # The old primary's host comes back with `remusdb protect`, as if nothing happened.
        a2 = Daemon(lab, "primary", ["protect", str(cfg)], run.log("primary-again"))
        st = wait_status(node_b, lambda s: s["state"] == "primary-protected", 180,
                         "protected again", [a2, b])
        node_a = wait_status(run.status_at("primary", "node"), lambda s: True, 10, "node a")
        assert node_a["state"] == "standby" and node_a["term"] == 2, node_a
        assert "joining it as its standby" in a2.text()
        assert qemu_count() == 1  # the VM runs exactly once
        seed = st["sessions"][-1]["seed"]
        assert seed["path"] == "resync", seed
        # Only what differs: bounded by what the new primary wrote since the failover (and the
        # dead primary's unfinished epoch), far from the whole disk.
        assert seed["sent_bytes"] <= 2 * seed["changed_bytes"] + (8 << 20), seed
        a_sb = run.status_at("primary", "standby")
        v = wait_status(a_sb, lambda s: s["verify"].get("disk_checks", 0) >= 2, 240,
                        "RAM and disk verified after the resync", [a2, b])["verify"]
        assert v["differing_groups"] == 0 and v["differing_disk_chunks"] == 0, v
        assert v["disk_chunks_checked"] >= 4096  # the first check covered the whole disk
        assert load.poll() is None  # the database kept serving through it all
        with lab.inside("client"):
            n = dbclient.query_one(dbclient.postgres, VM_IP,
                                   "SELECT count(*) FROM pgbench_accounts", timeout=60)
        assert n == 100_000
        print(f"resync {seed}; verify {v}")
    finally:
        stop(load, a, a2, b)


def test_switchover_keeps_every_commit_and_the_connection(lab, base):
    """CP off: a planned role swap under a client's open connection; every acknowledged commit
    survives, the connection carries on, and the roles end swapped and protected."""
    run = RunLayout(base)
    cfg = write_config(run.config, lab, interval_ms=100)
    b = Daemon(lab, "standby", ["standby", str(cfg)], run.log("standby"))
    a = None
    try:
        wait_status(run.standby_status, lambda s: True, 60, "standby start", [b])
        a = Daemon(lab, "primary", ["protect", str(cfg)], run.log("primary"))
        wait_status(run.status_at("primary", "node"), lambda s: s["state"] ==
                    "primary-protected", 300, "protected", [a, b])
        acked = []
        with lab.inside("client"):
            conn = dbclient.postgres(VM_IP, timeout=30)
            conn.autocommit = True
            cur = conn.cursor()
            cur.execute("CREATE TABLE IF NOT EXISTS so (n int primary key)")
            for i in range(20):
                cur.execute("INSERT INTO so VALUES (%s)", (i,))
                acked.append(i)
            r = cli(lab, "primary", "switchover", str(cfg))
            assert r.returncode == 0, r.stdout + r.stderr
            for i in range(20, 60):  # the same connection, across the handover
                cur.execute("INSERT INTO so VALUES (%s)", (i,))
                acked.append(i)
            st_b = wait_status(run.status_at("standby", "node"),
                               lambda s: s["state"].startswith("primary"), 60, "b runs the VM",
                               [a, b])
            assert st_b["term"] == 2
            cur.execute("SELECT n FROM so ORDER BY n")
            assert [row[0] for row in cur.fetchall()] == acked
            conn.close()
        st = wait_status(run.status_at("standby", "node"),
                         lambda s: s["state"] == "primary-protected", 180,
                         "b protected by a", [a, b])
        assert st["sessions"][-1]["seed"]["path"] == "resync"
        node_a = wait_status(run.status_at("primary", "node"), lambda s: True, 10, "node a")
        assert node_a["state"] == "standby" and node_a["term"] == 2
        assert qemu_count() == 1
    finally:
        stop(a, b)
