"""Disk replication against the real guest: under pgbench TPC-B the standby's disk and RAM equal
the primary's at checkpoints; kill -9 of the primary mid-load, and the failed-over database is
consistent (the TPC-B balances agree), readable end to end and writable."""

import signal
import time

from remusdb.hypervisor.agent import GuestAgent
from remusdb.lab import dbclient
from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.load import pgbench
from remusdb.lab.net import VM_IP
from tests.vm.workload import stop

CHECKS = 6
BALANCES = ("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
            "(SELECT sum(tbalance) FROM pgbench_tellers), "
            "(SELECT sum(bbalance) FROM pgbench_branches), "
            "(SELECT sum(delta) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)")


def test_disk_follows_checkpoints_and_survives_kill_under_write_load(lab, base):
    load = None
    with Protected(lab, base, protect_args=("--verify-every", "4")) as p:
        try:
            init = pgbench(lab, "-i", "-s", "1", "-q")
            assert init.wait(300) == 0, init.stdout.read()
            load = pgbench(lab, "-c", "4", "-T", "600", "-n")
            # Output commit makes the connections' handshakes wait for checkpoints: be sure
            # the load commits before the checks count down to the kill.
            deadline = time.monotonic() + 120
            while not _history_rows(lab) and time.monotonic() < deadline:
                time.sleep(0.5)
            start = p.status("standby")["verify"]
            st = wait_status(p.standby_status, lambda s: s["verify"]["disk_checks"]
                             >= start["disk_checks"] + CHECKS, 400,
                             f"{CHECKS} disk and RAM checks under write load", p.daemons)
            v = st["verify"]
            assert v["differing_groups"] == 0 and v["differing_disk_chunks"] == 0, v
            assert v["disk_chunks"] > 0, v
            rt = p.status("primary")["read_tracking"]
            time.sleep(2)  # a random point: the kill lands wherever the epoch is
            p.primary.kill(signal.SIGKILL)
            st = wait_status(p.standby_status, lambda s: s["state"] == "active", 60,
                             "failover", [p.standby])
        finally:
            stop(load)  # its open transactions abort with their connections
        failed_over(lab, p.layout)
    print(f"verify {v}; failover {st['failover']}; read tracking {rt}")


def _history_rows(lab) -> int:
    with lab.inside("client"):
        return dbclient.query_one(dbclient.postgres, VM_IP,
                                  "SELECT count(*) FROM pgbench_history", timeout=30)


def failed_over(lab, run):
    """The database on the standby: consistent, writable, readable end to end, clean logs."""
    with lab.inside("client"):
        acc, tel, br, hist, n = dbclient.query_row(dbclient.postgres, VM_IP, BALANCES,
                                                   timeout=60)
    # Each TPC-B transaction adds the same delta to one account, teller, branch and the
    # history: a torn transaction or a disk from another moment breaks the equality.
    assert acc == tel == br == hist and n > 0, (acc, tel, br, hist, n)
    # No manual cleanup: commit protection's recovery has ended the killed clients' sessions
    # that were not committing, so no stale backend holds a row lock now.
    again = pgbench(lab, "-c", "2", "-t", "20", "-n")
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    agent = GuestAgent(run.standby_vm.agent)
    agent.wait_ready(30)
    try:
        r = agent.exec(["su", "postgres", "-c",
                        "psql -d remusdb -Atc 'SELECT count(*) FROM pgbench_accounts'"])
        assert r.exitcode == 0 and int(r.stdout) == 100_000, r
        pglog = agent.exec(["cat", "/var/log/postgresql/postgresql-15-main.log"]).stdout
        for bad in ("PANIC", "invalid page", "could not read block", "checksum",
                    "database system was interrupted"):
            assert bad not in pglog, pglog[-3000:]
        dmesg = agent.exec(["dmesg"]).stdout
        for bad in ("I/O error", "EXT4-fs error", "BUG:", "Call Trace"):
            assert bad not in dmesg, dmesg[-3000:]
    finally:
        agent.close()
    print(f"balances {acc} over {n} transactions")
