"""Run remusdb daemons as separate processes, each in a lab host's namespace, like real hosts.

Used by the VM tests, the benchmarks and the drills: the daemons are the real command line
(`python -m remusdb.cli protect|standby`), so a kill -9 here is a real crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from remusdb.checkpoint.status import read_status
from remusdb.errors import RemusError

REMUSDB = [sys.executable, "-m", "remusdb.cli"]


def write_config(path: Path, lab, interval_ms=100, optimizations: dict | None = None,
                 **vm) -> Path:
    standby_ip = lab.members["standby"].address.split("/")[0]
    extra = "".join(f'{k} = {json.dumps(v)}\n' for k, v in vm.items())
    opts = "".join(f'{k} = {json.dumps(v)}\n' for k, v in (optimizations or {}).items())
    path.write_text(f"""[vm]
name = "pg1"
gateway = "{lab.gateway}"
run_dir = "{path.parent}"
{extra}
[checkpoint]
interval_ms = {interval_ms}

[optimizations]
{opts}
[standby]
address = "{standby_ip}"
heartbeat_timeout_ms = 1000
""")
    return path


class Daemon:
    def __init__(self, lab, host: str, args: list[str], log: Path):
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{lab.ns(host)}", "--", *REMUSDB, *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_status(path: Path, pred, timeout: float, what: str, daemons=()) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = read_status(path)
        if st and pred(st):
            return st
        for d in daemons:
            if d.proc.poll() is not None:
                raise RemusError(f"daemon exited while waiting for {what}:\n{d.text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(d.text()[-2000:] for d in daemons)
            raise RemusError(f"timed out waiting for {what}; last status {st}\n{logs}")
        time.sleep(0.2)
