"""Client workloads against the lab's database VM, run from the client namespace: shared by the
VM tests and the benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from remusdb.hypervisor.agent import GuestAgent
from remusdb.lab.net import VM_IP
from remusdb.vm import db_password

SCAN_SQL = "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE filler <> 'x';\n"
TPS_RE = re.compile(r"tps = ([\d.]+)")


def pgbench(lab, *args, vm_ip: str = VM_IP) -> subprocess.Popen:
    """pgbench against the guest's PostgreSQL, as a running process (stdout: its report)."""
    cmd = ["ip", "netns", "exec", lab.ns("client"), "pgbench", "-h", vm_ip, "-U",
           "remusdb", *args, "remusdb"]
    return subprocess.Popen(cmd, env=dict(os.environ, PGPASSWORD=db_password()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def pgbench_run(lab, *args, timeout: float = 600) -> str:
    """Run pgbench to its end: its report, or RuntimeError with its last words (killed, and
    TimeoutExpired, past `timeout`)."""
    p = pgbench(lab, *args)
    try:
        out = p.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise
    if p.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.strip()[-500:]}")
    return out


def pgbench_tps(lab, *args, timeout: float = 600) -> float | None:
    """pgbench's throughput (its "tps = "), None where the report has none (pgbench -i)."""
    m = TPS_RE.search(pgbench_run(lab, *args, timeout=timeout))
    return float(m.group(1)) if m else None


def pgbench_sql(lab, sql: str, *args, timeout: float = 600) -> str:
    """Run a pgbench script once (statements outside a transaction: VACUUM, CHECKPOINT work)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql)
    try:
        p = pgbench(lab, "-n", "-t", "1", *args, "-f", f.name)
        out = p.communicate(timeout=timeout)[0]
    finally:
        os.unlink(f.name)
    if p.returncode != 0:
        raise RuntimeError(f"pgbench script failed: {out.strip()[-500:]}")
    return out


def load_pgbench(lab, scale: int) -> None:
    p = pgbench(lab, "-i", "-s", str(scale), "-q")
    out = p.communicate(timeout=900)[0]
    if p.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {out.strip()[-500:]}")
    # Hint bits set and on disk: a later scan leaves its buffer copies equal to the blocks.
    pgbench_sql(lab, "VACUUM FREEZE pgbench_accounts;\nCHECKPOINT;\n")


def cold_scans(lab, agent_socket: Path, rounds: int = 3) -> None:
    """TPC-H-like: full scans of pgbench_accounts, each from disk (the guest's page cache is
    dropped first), through PostgreSQL's ring buffer."""
    agent = GuestAgent(agent_socket)
    agent.wait_ready(30)
    try:
        for _ in range(rounds):
            r = agent.exec(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
            if r.exitcode != 0:
                raise RuntimeError(f"drop_caches in the guest failed: {r.stderr}")
            pgbench_sql(lab, SCAN_SQL)
    finally:
        agent.close()
    time.sleep(1)  # the last epochs reach the standby
