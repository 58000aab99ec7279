"""Where the vCPUs' time goes between checkpoints, from the kernel's scheduler events.

`perf record -e sched:sched_switch,sched:sched_wakeup` on the whole machine, then, per slice
of time since a checkpoint's resume: how much each vCPU thread ran, waited runnable for a host
CPU, or slept (the guest idle, the VM paused, or the thread blocked inside QEMU, e.g. on its big
lock), and who held the host's CPUs meanwhile. A
cheaper guest is not the only way to win: a vCPU that waits runnable lost its CPU to someone.
The parsing and the binning are pure (tested on synthetic lines); `record()` runs perf.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

EVENTS = "sched:sched_switch,sched:sched_wakeup"
BINS_MS = (0, 5, 10, 20, 30, 50, 70, 100)
STATES = ("run", "wait", "sleep")

_LINE = re.compile(r"^\s*\S.*?\s+\d+/\d+\s+\[(\d+)\]\s+([\d.]+):\s+(sched:\w+):\s*(.*)$")
_SWITCH = re.compile(r"prev_comm=(.*) prev_pid=(\d+) prev_prio=-?\d+ prev_state=(\S+) ==> "
                     r"next_comm=(.*) next_pid=(\d+) next_prio=")
_WAKEUP = re.compile(r"comm=(.*) pid=(\d+) prio=")


def is_vcpu(comm: str) -> bool:
    """QEMU names vCPU threads 'CPU n/TCG' or 'CPU n/KVM' (-name ...,debug-threads=on)."""
    return comm.startswith("CPU ") and "/" in comm


def record(out: Path, seconds: float) -> subprocess.Popen:
    """perf on every CPU for `seconds`, on CLOCK_MONOTONIC (this kernel's perf has no
    realtime clock: pass time.time() - time.monotonic() to analyze()); its errors go to
    `<out>.log`."""
    with open(out.with_name(out.name + ".log"), "wb") as err:
        return subprocess.Popen(["perf", "record", "-q", "-a", "-k", "mono", "-e", EVENTS,
                                 "-o", str(out), "--", "sleep", str(seconds)],
                                stdout=subprocess.DEVNULL, stderr=err)


def script(data: Path) -> list[str]:
    return subprocess.run(["perf", "script", "-i", str(data), "-F",
                           "trace:comm,pid,tid,cpu,time,event,trace"],
                          capture_output=True, text=True, check=True).stdout.splitlines()


class Timeline:
    """Intervals per host-CPU occupant (by role) and per vCPU state, from the events."""

    def __init__(self, role_of: dict[int, str], vcpus: set[int] | None = None):
        self.role_of = role_of  # tid -> role; the idle task is 0
        # The measured VM's vCPU threads (another VM's are "other"); None: any thread named so
        self.vcpus = vcpus
        self.held: dict[int, tuple[int, str, float]] = {}  # cpu -> (tid, comm, since)
        self.occupancy: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.vcpu: dict[int, tuple[str, float]] = {}  # tid -> (state, since)
        self.states: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.first = self.last = None

    def ours(self, tid: int, comm: str) -> bool:
        return is_vcpu(comm) and (self.vcpus is None or tid in self.vcpus)

    def role(self, tid: int, comm: str) -> str:
        if tid == 0:
            return "idle"
        if self.ours(tid, comm):
            return "vCPUs"
        return self.role_of.get(tid, "other")

    def _vcpu_to(self, tid: int, state: str, t: float) -> None:
        old = self.vcpu.get(tid)
        if old is not None and old[0] != state:
            self.states[old[0]].append((old[1], t))
        if old is None or old[0] != state:
            self.vcpu[tid] = (state, t)

    def feed(self, line: str) -> None:
        m = _LINE.match(line)
        if not m:
            return
        cpu, t, event, rest = int(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
        self.first = t if self.first is None else self.first
        self.last = t
        if event == "sched:sched_switch" and (s := _SWITCH.search(rest)):
            prev_comm, prev, prev_state, next_comm, nxt = (s.group(1), int(s.group(2)),
                                                           s.group(3), s.group(4),
                                                           int(s.group(5)))
            if cpu in self.held:
                tid, comm, since = self.held[cpu]
                self.occupancy[self.role(tid, comm)].append((since, t))
            self.held[cpu] = (nxt, next_comm, t)
            if self.ours(prev, prev_comm):  # preempted (R) it waits for a CPU; else it sleeps
                self._vcpu_to(prev, "wait" if prev_state.startswith("R") else "sleep", t)
            if self.ours(nxt, next_comm):
                self._vcpu_to(nxt, "run", t)
        elif event == "sched:sched_wakeup" and (w := _WAKEUP.search(rest)):
            tid = int(w.group(2))
            if self.ours(tid, w.group(1)) and self.vcpu.get(tid, ("sleep",))[0] == "sleep":
                self._vcpu_to(tid, "wait", t)

    def close(self) -> None:
        """What still runs or waits when the recording ends counts up to its last event."""
        if self.last is None:
            return
        for tid, comm, since in self.held.values():
            self.occupancy[self.role(tid, comm)].append((since, self.last))
        for state, since in self.vcpu.values():
            self.states[state].append((since, self.last))
        self.held, self.vcpu = {}, {}


def binned(intervals: Iterable[tuple[float, float]], resumes: np.ndarray,
           edges_ms: tuple[int, ...] = BINS_MS) -> np.ndarray:
    """Seconds of the intervals falling in each slice of time since the latest resume."""
    out = np.zeros(len(edges_ms) - 1)
    edges = np.asarray(edges_ms, float) / 1000
    for a, b in intervals:
        i = int(np.searchsorted(resumes, a, side="right")) - 1
        while a < b:
            if i < 0:  # before the first resume: not counted
                a = min(b, float(resumes[0])) if len(resumes) else b
                i = 0
                continue
            end = min(b, float(resumes[i + 1]) if i + 1 < len(resumes) else b)
            lo, hi = a - resumes[i], end - resumes[i]
            out += np.clip(np.minimum(hi, edges[1:]) - np.maximum(lo, edges[:-1]), 0, None)
            a, i = end, i + 1
    return out


def analyze(lines: Iterable[str], role_of: dict[int, str], resumes: np.ndarray | None,
            offset: float, vcpus: set[int] | None = None) -> dict:
    """CPU s/s by occupant and vCPU s/s by state, overall and per slice after a resume
    (`resumes` in time.time(); `offset` = time.time() - time.monotonic() when recorded)."""
    tl = Timeline(role_of, vcpus)
    for line in lines:
        tl.feed(line)
    if tl.first is None or tl.last is None or tl.last <= tl.first:
        return {}
    tl.close()
    span = tl.last - tl.first
    out: dict = {
        "seconds": round(span, 2),
        "cpu_s_per_s": {k: round(sum(b - a for a, b in v) / span, 3)
                        for k, v in sorted(tl.occupancy.items())},
        "vcpu_s_per_s": {k: round(sum(b - a for a, b in tl.states[k]) / span, 3)
                         for k in STATES},
    }
    if resumes is None or not len(resumes):
        return out
    mono = np.sort(np.asarray(resumes, float) - offset)
    # Each slice over the time actually recorded in it: epochs shorter than the last slices
    # (or cut by the recording's ends) must not read as vCPUs that did nothing.
    exposure = binned([(tl.first, tl.last)], mono)
    if not exposure.any():
        return out
    labels = [f"{a}-{b} ms" for a, b in zip(BINS_MS, BINS_MS[1:], strict=False)]

    def per_slice(intervals) -> dict:
        got = binned(intervals, mono)
        return {k: (round(float(g / e), 2) if e > 0 else None)
                for k, g, e in zip(labels, got, exposure, strict=True)}
    out["after_resume"] = {
        "cpu_s_per_s": {k: per_slice(v) for k, v in sorted(tl.occupancy.items())},
        "vcpu_s_per_s": {k: per_slice(tl.states[k]) for k in STATES},
    }
    return out


def show(mode: str, result: dict) -> None:
    if not result.get("cpu_s_per_s"):
        print(f"{mode}: no scheduler events ({result.get('error', 'none recorded')})")
        return
    after = result.get("after_resume")
    print(f"{mode}: host CPU s/s {result.get('cpu_s_per_s')}; vCPU s/s "
          f"{result.get('vcpu_s_per_s')}")
    if not after:
        return
    labels = list(next(iter(after["vcpu_s_per_s"].values())))
    print(f"  {'after resume':22s}" + "".join(f"{x:>10s}" for x in labels))
    for kind in ("vcpu_s_per_s", "cpu_s_per_s"):
        for who, row in after[kind].items():
            name = f"vCPU {who}" if kind == "vcpu_s_per_s" else f"CPU: {who}"
            print(f"  {name:22s}" + "".join(f"{v:10.2f}" if v is not None else f"{'-':>10s}"
                                            for v in row.values()))
