"""Run remusdb daemons as separate processes, each in a lab host's namespace, like real hosts.

Used by the VM tests, the benchmarks and the drills: the daemons are the real command line
(`python -m remusdb.cli protect|standby`), so a kill -9 here is a real crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from remusdb import config as configmod
from remusdb.checkpoint import keys
from remusdb.checkpoint.status import read_status
from remusdb.errors import RemusError
from remusdb.lab.layout import VM_NAME, RunLayout

REMUSDB = [sys.executable, "-m", "remusdb.cli"]


def write_config(path: Path, lab, interval_ms=100, optimizations: dict | None = None,
                 insecure: bool = False, standby: dict | None = None,
                 witness: dict | None = None, primary: dict | None = None,
                 name: str = VM_NAME, **vm) -> Path:
    """The lab's config of VM `name` at `path` (run_dir: its directory): the standby on the
    lab's standby host; `vm`, `optimizations`, `primary`, `standby` and `witness` add or
    override keys of those sections (a second VM of the pair: its own ip, tap and ports).
    Validated here, as the daemons will load it. The link is TLS (the default), with a pair
    of keys made in the run directory (`insecure`: plain TCP, for the TLS cost benchmark)."""
    key_dir = path.parent / "keys"
    if not (key_dir / "ca.crt").exists():
        keys.init(key_dir, name)
    cfg = configmod.from_dict({
        "vm": {"name": name, "gateway": lab.gateway, "run_dir": str(path.parent), **vm},
        "checkpoint": {"interval_ms": interval_ms},
        "optimizations": dict(optimizations or {}),
        "primary": {"address": lab.members["primary"].address.split("/")[0],
                    **(primary or {})},
        "standby": {"address": lab.members["standby"].address.split("/")[0],
                    "heartbeat_timeout_ms": 1000, **(standby or {})},
        "link": {"keys": str(key_dir), "insecure": insecure},
        "witness": dict(witness or {}),
    })
    path.write_text(configmod.dumps(cfg))
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


def wait_status(path: Path, pred, timeout: float, what: str, daemons=(),
                poll: float = 0.2) -> dict:
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
        time.sleep(poll)


class Protected:
    """A protected VM in a lab: standby daemon, then `remusdb protect`, until the first
    checkpoint commits; stopped (both killed) on exit. For tests and benchmarks."""

    def __init__(self, lab, run: Path, interval_ms: int = 100, optimizations: dict | None = None,
                 protect_args: tuple = (), standby_args: tuple = (), vm: dict | None = None,
                 standby: dict | None = None, witness: dict | None = None,
                 primary: dict | None = None, name: str = VM_NAME):
        self.lab, self.run = lab, Path(run)
        self.layout = RunLayout(self.run, name)
        self.run.mkdir(parents=True, exist_ok=True)
        self.cfg = write_config(self.layout.config, lab, interval_ms=interval_ms,
                                optimizations=optimizations, standby=standby, witness=witness,
                                primary=primary, name=name, **(vm or {}))
        self.protect_args, self.standby_args = list(protect_args), list(standby_args)
        self.standby: Daemon | None = None
        self.primary: Daemon | None = None
        self.starts = 1  # of a standby daemon
        self.standby_status = self.layout.standby_status
        self.primary_status = self.layout.primary_status

    def config(self) -> configmod.Config:
        return configmod.load(self.cfg)

    def _start_standby(self, log: str) -> Daemon:
        return Daemon(self.lab, "standby", ["standby", str(self.cfg), *self.standby_args],
                      self.layout.log(log))

    def restart_standby(self) -> None:
        """A new standby daemon on the same store (after a crash of the last one)."""
        self.starts += 1
        self.standby = self._start_standby(f"standby-{self.starts}")

    def __enter__(self) -> Protected:
        self.standby = self._start_standby("standby")
        try:
            wait_status(self.standby_status, lambda s: True, 60, "standby start", [self.standby])
            self.primary = Daemon(self.lab, "primary",
                                  ["protect", str(self.cfg), *self.protect_args],
                                  self.layout.log("primary"))
            wait_status(self.standby_status, lambda s: s["epoch_committed"] >= 1, 300,
                        "first checkpoint", self.daemons)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    @property
    def daemons(self) -> list[Daemon]:
        return [d for d in (self.standby, self.primary) if d is not None]

    def status(self, role: str) -> dict | None:
        return read_status(self.primary_status if role == "primary" else self.standby_status)

    def __exit__(self, *exc) -> None:
        for d in (self.primary, self.standby):
            if d is not None:
                d.kill()
        drop_images(self.run)


def drop_images(run: Path) -> None:
    """Guest RAM and disk images are GiBs in /dev/shm: keep only logs and status files."""
    for pattern in ("**/ram", "**/ram/*.img", "**/disk.raw", "**/disk.qcow2"):
        for f in Path(run).glob(pattern):
            if f.is_file():
                f.unlink()
