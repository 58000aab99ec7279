"""Client workloads the VM tests run from the lab's client namespace."""

import os
import subprocess

from remusdb.vm import DB_PASSWORD

VM_IP = "10.213.0.10"


def pgbench(lab, *args):
    """pgbench against the guest's PostgreSQL, as a running process (stdout: its report)."""
    cmd = ["ip", "netns", "exec", lab.ns("client"), "pgbench", "-h", VM_IP, "-U",
           "remusdb", *args, "remusdb"]
    return subprocess.Popen(cmd, env=dict(os.environ, PGPASSWORD=DB_PASSWORD),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(*procs) -> None:
    """Kill what a test started (client processes and daemons), skipping what never started."""
    for p in procs:
        if p is None:
            continue
        p.kill()
        if isinstance(p, subprocess.Popen):
            p.wait()
