"""The ways a host fails, as the drill injects them, and what must happen after each.

Each fault names what it does and its expected outcome: the standby fails over (the primary's
VM is gone, or fenced), or the primary keeps the VM (no second copy may run, whatever the
standby thinks). The table is pure, so the expectations are tested without a VM; `inject`
does it to the lab's processes (one PID namespace for all lab hosts, as one root can reach).
"""

from __future__ import annotations

import enum
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from remusdb.errors import RemusError


class Outcome(enum.StrEnum):
    FAILOVER = "failover"  # the standby runs the VM
    PRIMARY_STAYS = "primary-stays"  # the primary runs on; the standby must not take over


@dataclass(frozen=True)
class Fault:
    name: str
    does: str
    expect: Outcome
    fenced: bool = False  # the drill's config has a fence command that kills the frozen host
    standby_restarts: bool = False  # the standby daemon is started again after the fault
    own_store_fs: bool = False  # the standby's store on a filesystem of its own (to fill it)
    # With the witness (etcd) on: the outcome then (None: the same), and whether the fault
    # needs it (the partitions of the witness drill).
    expect_witness: Outcome | None = None
    needs_witness: bool = False
    reprotects: bool = True  # a primary that stays is protected again by a new session

    def expected(self, witness: bool) -> Outcome:
        return self.expect_witness if witness and self.expect_witness else self.expect

    def describe(self, witness: bool = False) -> str:
        return f"{self.name}: {self.does} → {self.expected(witness).value}"


FREEZE_HEARTBEATS = 3  # a freeze lasts this many heartbeat timeouts: the standby notices it

FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("daemon-kill", "SIGKILL of the primary's daemon (its QEMU dies with it)",
          Outcome.FAILOVER),
    Fault("qemu-crash", "SIGKILL of the primary's QEMU alone (a crash, the OOM killer)",
          Outcome.FAILOVER),
    Fault("operator-stop", "SIGTERM to every process of the primary host (systemctl stop)",
          Outcome.FAILOVER),
    Fault("host-freeze", "SIGSTOP of every process of the primary host past the heartbeat "
          "timeout (with the witness: past its lease), then SIGCONT; no fence command",
          Outcome.PRIMARY_STAYS, expect_witness=Outcome.FAILOVER),
    Fault("host-freeze-fenced", "the same freeze, with a fence command that kills the frozen "
          "host's processes", Outcome.FAILOVER, fenced=True),
    Fault("standby-crash", "SIGKILL of the standby daemon right after a checkpoint, then a "
          "restart of it", Outcome.PRIMARY_STAYS, standby_restarts=True),
    Fault("failover-crash", "SIGKILL of the primary's daemon, then of the standby's in the "
          "middle of its failover; the standby restarted, and failed over again by the "
          "operator ('remusdb failover --force': the primary is known dead)", Outcome.FAILOVER,
          standby_restarts=True),
    Fault("standby-disk-full", "the standby's store filesystem fills up (another file takes "
          "it all); once the primary reports the standby lost, space is freed and the standby "
          "restarted", Outcome.PRIMARY_STAYS, standby_restarts=True, own_store_fs=True),
    # Partitions (the witness on): nftables rules in a lab host, or its uplink down.
    Fault("link-cut", "primary and standby cannot reach each other (clients and the witness "
          "reach both) past the primary's stall timeout, then healed", Outcome.PRIMARY_STAYS,
          needs_witness=True),
    Fault("primary-isolated", "the primary host's uplink down (cut from the standby, the "
          "witness and the clients), healed after the failover", Outcome.FAILOVER,
          needs_witness=True),
    Fault("witness-cut-primary", "the primary cannot reach the witness (the standby and "
          "clients can), then healed", Outcome.FAILOVER, needs_witness=True),
    Fault("witness-cut-standby", "the standby cannot reach the witness, then healed",
          Outcome.PRIMARY_STAYS, needs_witness=True, reprotects=False),
    Fault("witness-cut-both", "the witness unreachable from both hosts (its uplink down), "
          "then healed: no one serves meanwhile, the standby takes over once it returns",
          Outcome.FAILOVER, needs_witness=True),
)}
PARTITIONS = tuple(f.name for f in FAULTS.values() if f.needs_witness)
STORE_FS_BYTES = 7 << 30  # the lab guest's 4 GiB disk, 1 GiB of RAM images, journals: room


def fill(directory: Path) -> Path:
    """A ballast file taking every free byte of `directory`'s filesystem, in chunks that
    shrink to a page: a filesystem that undoes a failed fallocate (tmpfs does) is still left
    full, whatever the store writes meanwhile."""
    ballast = directory / "ballast"
    with open(ballast, "wb") as f:
        size, chunk = 0, 64 << 20
        while chunk >= 4096:
            try:
                os.posix_fallocate(f.fileno(), size, chunk)
                size += chunk
            except OSError:
                chunk //= 16
    return ballast


def parse(text: str, witness: bool = False) -> list[Fault]:
    """"a,b", "partitions" or "all" → faults (all: those the mode can run, in the table's
    order); unknown names are one clear error."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return [f for f in FAULTS.values() if witness or not f.needs_witness]
    unknown = [n for n in names if n not in FAULTS and n != "partitions"]
    if unknown or not names:
        raise RemusError(f"--fault: unknown fault {', '.join(unknown) or '(none)'} (known: "
                         f"{', '.join(FAULTS)}, partitions, or all)")
    names = [p for n in names for p in (PARTITIONS if n == "partitions" else (n,))]
    chosen = [FAULTS[n] for n in dict.fromkeys(names)]
    need = [f.name for f in chosen if f.needs_witness and not witness]
    if need:
        raise RemusError(f"--fault {', '.join(need)}: a partition drill needs --witness")
    return chosen


def as_expected(fault: Fault, failed_over: bool, witness: bool = False) -> bool:
    return failed_over == (fault.expected(witness) is Outcome.FAILOVER)


def freeze_seconds(heartbeat_s: float, witness_ttl_s: float | None) -> float:
    """Long enough for the standby to notice; with the witness, for the lease to end too."""
    base = FREEZE_HEARTBEATS * heartbeat_s
    return base if witness_ttl_s is None else max(base, 2 * witness_ttl_s + 1)


def cut_seconds(fault: Fault, ttl_s: float, stall_s: float) -> float:
    """How long a partition lasts: past the lease (and for link-cut, past the primary's
    stall timeout, so the session ends rather than resumes when the link heals)."""
    if fault.name == "link-cut":
        return stall_s + ttl_s + 3
    return 2 * ttl_s + 3


# Injection
def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """`pid` and every process below it: what one host's daemon runs (its QEMU, helpers)."""
    children: dict[int, list[int]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def freeze(pids: list[int], seconds: float) -> None:
    """SIGSTOP, wait, SIGCONT: what a stalled host (a hypervisor pause, a storage hang) does."""
    signal_all(pids, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        signal_all(pids, signal.SIGCONT)


def fence_command(pid_file: Path) -> str:
    """A fence command for the lab: kill -9 the processes listed in `pid_file` (a frozen
    process dies of SIGKILL too), as a power switch would."""
    return f"kill -9 $(cat {pid_file}) 2>/dev/null; true"
