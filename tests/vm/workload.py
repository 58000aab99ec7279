"""Helpers of the VM tests (the workloads themselves: remusdb/lab/load.py)."""

import subprocess


def stop(*procs) -> None:
    """Kill what a test started (client processes and daemons), skipping what never started."""
    for p in procs:
        if p is None:
            continue
        p.kill()
        if isinstance(p, subprocess.Popen):
            p.wait()
