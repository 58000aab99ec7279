"""Where a checkpointed VM's throughput goes: the same pgbench workloads on a fresh VM in each
mode, with the CPU seconds per second of every process (and of every QEMU thread: vCPUs, main
loop, migration), the time the VM stood still, the standby's ACK after a resume (`ack`, p50
from the trace) and TPS, normalized to the unprotected run of the same invocation. Needs
root. Run:
    .venv/bin/python benchmarks/checkpoint_cost.py [--modes unprotected,served,nooc:10000,
        nooc:25,nooc:100,nooc:250,cp:100,remus:100] [--seconds 20]
        [--workloads tpcb,select-only] [--repeat N] [--perf DIR] [--rtt] [--sched]

Modes: `unprotected` a plain VM on the tap; `served` the VM through the disk server and the
net relay, no standby (so no checkpoint); `nooc:MS` checkpoints every MS without output commit
(what the checkpoints alone cost); `cp:MS` commit protection; `remus:MS` output commit, cp off.
`--perf DIR` profiles QEMU (perf record -e cpu-clock -g at 250 Hz) and both daemons (py-spy)
during the first workload of every mode: the profilers cost the guest (more under checkpoints),
so take TPS from a run without them. `--rtt` pings the guest every 5 ms during the first
workload and bins the echo RTT by the time since the last checkpoint's resume.
`--sched` records the scheduler's events in the first 10 s of the first workload and says, by
time since the last resume, how long the vCPU threads ran, waited runnable for a host CPU, or
slept, and who held the host's CPUs (benchmarks/_sched.py).
`--ab MS` compares within one VM: in each `nooc:` mode the interval switches between the
mode's own and MS every `--ab-period` seconds (`remusdb interval`) during the first workload,
and the row `ab` gives the mean TPS of the seconds each interval ran and their ratio
(benchmarks/_ab.py): same VM, same minute. The first 0.5 s after each switch count for
neither; the switch to the short interval ships the long epoch's pages first, which may take
longer than that here, so the ratio errs against the short interval if anything.
`--repeat N` runs the modes N times, interleaved (all modes, then all again): the unprotected
TPC-B baseline alone varies by more than a factor of two from one VM to the next here (65-146
TPS), so a ratio from one pair of runs can mislead either way; each row is then the run with
the median TPS (the lower middle one for an even N), and the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import _ab, _sched
from benchmarks._common import save
from remusdb.checkpoint.participants import acks_path
from remusdb.checkpoint.status import read_status
from remusdb.config import INTERVAL_BOUNDS, Config, interval_ok
from remusdb.errors import RemusError
from remusdb.hypervisor.agent import GuestAgent
from remusdb.image import builder
from remusdb.lab.daemons import Daemon, Protected, drop_images, wait_status, write_config
from remusdb.lab.layout import RunLayout
from remusdb.lab.load import pgbench_run
from remusdb.lab.net import VM_IP, Lab
from remusdb.reprotect import control
from remusdb.vm import launch

WORKLOADS = {"tpcb": ["-c", "4"], "select-only": ["-S", "-c", "4"]}
TICK = os.sysconf("SC_CLK_TCK")
DEFAULT_MODES = "unprotected,served,nooc:10000,nooc:25,nooc:100,nooc:250,cp:100,remus:100"


# CPU accounting: processes by role, QEMU threads by job
def _stat(path: Path) -> tuple[str, int, int] | None:
    """(comm, ppid, utime+stime ticks) of /proc/<pid>[/task/<tid>]/stat."""
    try:
        raw = path.read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw.rsplit(")", 1)[1].split()
    return comm, int(f[1]), int(f[11]) + int(f[12])


def descendants(roots: dict[str, int]) -> dict[int, str]:
    """pid → role for every process under the role's root pid (its own tree)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(d / "stat")
            if st:
                parent[int(d.name)] = st[1]
    role_of = {pid: role for role, pid in roots.items()}
    out = {}
    for pid in parent:
        p = pid
        while p > 1 and p not in role_of:
            p = parent.get(p, 0)
        if p in role_of:
            out[pid] = role_of[p]
    return out


def thread_job(comm: str) -> str:
    if _sched.is_vcpu(comm):
        return "vcpus"
    return {"qemu-system-x86": "main loop", "live_migration": "migration",
            "colo compare": "migration"}.get(comm, "other")


@dataclass
class CpuSample:
    at: float
    procs: dict[int, tuple[str, int]]  # pid → (role, ticks)
    qemu_threads: dict[int, tuple[str, int]]  # tid → (job, ticks)
    machine: list[int]  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal


def machine_ticks() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def sample(roles: dict[int, str], qemu: int | None) -> CpuSample:
    procs = {}
    for pid, role in roles.items():
        st = _stat(Path(f"/proc/{pid}/stat"))
        if st:
            procs[pid] = (role, st[2])
    threads = {}
    if qemu:
        for t in Path(f"/proc/{qemu}/task").glob("*"):
            st = _stat(t / "stat")
            if st:
                threads[int(t.name)] = (thread_job(st[0]), st[2])
    return CpuSample(time.monotonic(), procs, threads, machine_ticks())


def cpu_per_s(a: CpuSample, b: CpuSample) -> dict:
    dt = b.at - a.at
    out: dict[str, dict[str, float]] = {"process": {}, "qemu_thread": {}}
    for key, before, after in (("process", a.procs, b.procs),
                               ("qemu_thread", a.qemu_threads, b.qemu_threads)):
        for pid, (name, ticks) in after.items():
            used = (ticks - before.get(pid, (name, 0))[1]) / TICK / dt
            out[key][name] = round(out[key].get(name, 0.0) + used, 3)
    d = [y - x for x, y in zip(a.machine, b.machine, strict=True)]
    out["machine"] = {"busy": round((sum(d) - d[3] - d[4] - d[7]) / TICK / dt, 3),
                      "steal": round(d[7] / TICK / dt, 3)}
    return out


GUEST_CPU = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")


def guest_cpu(agent_socket: Path) -> np.ndarray | None:
    """The guest's own /proc/stat jiffies (all CPUs): what its vCPUs spent their time on. The
    agent serves one client at a time (the clock keeper is another): try a few times."""
    for _ in range(20):
        agent = GuestAgent(agent_socket)
        try:
            agent.sync(timeout=2.0)
            out = agent.exec(["head", "-1", "/proc/stat"], timeout=10).stdout.split()
            return np.array([int(x) for x in out[1 : 1 + len(GUEST_CPU)]], np.int64)
        except (RemusError, OSError, ValueError):
            time.sleep(0.2)
        finally:
            agent.close()
    return None


def guest_share(a: np.ndarray | None, b: np.ndarray | None) -> dict:
    if a is None or b is None or (b - a).sum() <= 0:
        return {}
    d = (b - a) / (b - a).sum()
    return {k: round(float(v), 3) for k, v in zip(GUEST_CPU, d, strict=True)}


# The modes
@dataclass
class Target:
    """What one mode measures: the processes by role, QEMU's pid, the guest agent's socket,
    where its trace and status are (checkpointed modes)."""

    roles: dict[str, int]
    qemu: int | None
    agent: Path
    trace: Path | None = None
    status: Path | None = None
    node: Path | None = None  # the primary node's directory (its control socket)
    interval_ms: int | None = None


class IntervalSwitcher(threading.Thread):
    """--ab: the protected VM's interval switched between its own and `other` every `period`
    seconds through the node's control socket, each switch's time noted after QEMU took it."""

    def __init__(self, node: Path, own: int, other: int, period: float):
        super().__init__(name="ab", daemon=True)
        self.node, self.own, self.other, self.period = node, own, other, period
        self.switches: list[tuple[float, int]] = [(time.time(), own)]
        self.error: str | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        ms = self.other
        while not self.halt.wait(self.period):
            try:
                control.request(self.node, "interval", interval_ms=ms)
            except (RemusError, OSError) as e:  # the session ended, the socket went away
                self.error = str(e) or type(e).__name__
                return
            self.switches.append((time.time(), ms))
            ms = self.own if ms == self.other else self.other

    def finish(self) -> None:
        """Stop switching; the mode's own interval again for what follows."""
        self.halt.set()
        self.join()
        if self.switches[-1][1] != self.own:
            try:
                control.request(self.node, "interval", interval_ms=self.own)
            except (RemusError, OSError) as e:
                self.error = self.error or str(e) or type(e).__name__


def ack_after_resume(trace: Path, rows: np.ndarray, t0: float, t1: float) -> float | None:
    """p50 ms from an epoch's resume (the trace) to its ACK (`<trace>.acks`), for the epochs
    resumed in [t0, t1]; an ACK that came before the resume counts as 0."""
    path = acks_path(trace)
    if not len(rows) or not path.exists():
        return None
    acks = np.loadtxt(path, delimiter=",", ndmin=2)
    if not acks.size:
        return None
    acked_at = dict(zip(acks[:, 1].astype(int).tolist(), acks[:, 0].tolist(), strict=True))
    waits = [max(0.0, acked_at[e] - t) * 1000
             for t, e in zip(rows[:, 0].tolist(), rows[:, 1].astype(int).tolist(), strict=True)
             if e in acked_at and t0 <= t <= t1]
    return round(float(np.median(waits)), 2) if waits else None


def stall(target: Target, t0: float, t1: float, clock0: dict | None) -> dict:
    """How long the VM stood still in [t0, t1] (wall time): from the primary's per-checkpoint
    trace, and as the guest saw it (the clock keeper's steps: its clock stops with the VM)."""
    out: dict = {}
    if target.trace is None or not target.trace.exists():
        return out
    rows = np.loadtxt(target.trace, delimiter=",", ndmin=2)
    if rows.size:
        rows = rows[(rows[:, 0] >= t0) & (rows[:, 0] <= t1)]
    if len(rows):
        out.update(epochs=len(rows), pause_ms_p50=round(float(np.median(rows[:, 2])), 2),
                   pause_ms_p99=round(float(np.percentile(rows[:, 2], 99)), 2),
                   stall_s_per_s=round(float(rows[:, 2].sum()) / 1000 / (t1 - t0), 3),
                   dirty_pages_p50=int(np.median(rows[:, 3])))
        if rows.shape[1] > 7:
            out["stopping_ms_p50"] = round(float(np.median(rows[:, 6])), 2)
            out["reading_ms_p50"] = round(float(np.median(rows[:, 7])), 2)
    ack = ack_after_resume(target.trace, rows, t0, t1)
    if ack is not None:
        out["ack_ms_p50"] = ack
    clock1 = (read_status(target.status) or {}).get("guest_clock") if target.status else None
    if clock0 and clock1 and "stepped_s" in clock1:
        lost = (clock1["stepped_s"] + (clock1["offset_s"] or 0)
                - clock0["stepped_s"] - (clock0["offset_s"] or 0))
        out["guest_clock_lost_s_per_s"] = round(lost / (t1 - t0), 3)
    return out


RTT_BINS_MS = (0, 10, 20, 30, 50, 70, 90, 10_000)


def start_ping(lab, seconds: int) -> subprocess.Popen:
    """ICMP echo to the guest every 5 ms from the client host, timestamped (-D)."""
    return subprocess.Popen(["ip", "netns", "exec", lab.ns("client"), "ping", "-D", "-i",
                             "0.005", "-w", str(seconds), VM_IP],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def resume_times(trace: Path | None) -> np.ndarray | None:
    """Wall time of each checkpoint's resume (the trace's first column)."""
    if trace is None or not trace.exists():
        return None
    return np.loadtxt(trace, delimiter=",", ndmin=2)[:, 0]


def rtt_after_resume(ping_out: str, trace: Path | None) -> dict:
    """Echo RTT p50 by how long after a checkpoint's resume the echo was sent: how far past
    the pause a checkpoint slows the guest's answers."""
    pings = np.array([(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r"\[([\d.]+)\].*time=([\d.]+) ms", ping_out)]).reshape(-1, 2)
    if not len(pings):
        return {}
    resumed = resume_times(trace)
    if resumed is None:
        return {"all": round(float(np.median(pings[:, 1])), 2)}
    sent = pings[:, 0] - pings[:, 1] / 1000
    idx = np.searchsorted(resumed, sent) - 1
    since, rtt = (sent - resumed[np.maximum(idx, 0)])[idx >= 0] * 1000, pings[idx >= 0, 1]
    out = {}
    for a, b in zip(RTT_BINS_MS, RTT_BINS_MS[1:], strict=False):
        sel = (since >= a) & (since < b)
        if sel.any():
            out[f"{a}-{b} ms"] = round(float(np.median(rtt[sel])), 2)
    return out


def run_workloads(lab, target: Target, args, perf_dir: Path | None, mode: str) -> dict:
    pgbench_run(lab, "-i", "-s", str(args.scale), "-q", timeout=900)
    out = {}
    chosen = [(name, extra) for name, extra in WORKLOADS.items() if name in args.workloads]
    for i, (name, extra) in enumerate(chosen):
        roles = descendants(target.roles)
        profilers = start_profilers(perf_dir, target, mode, name) if perf_dir and i == 0 \
            else []
        clock0 = (read_status(target.status) or {}).get("guest_clock") \
            if target.status else None
        g0 = guest_cpu(target.agent)
        ping = start_ping(lab, args.seconds) if args.rtt and i == 0 else None
        sched = start_sched(args, target, i)
        ab = IntervalSwitcher(target.node, target.interval_ms, args.ab, args.ab_period) \
            if args.ab and i == 0 and target.node and target.interval_ms and mode.startswith(
                "nooc:") else None
        a, w0 = sample(roles, target.qemu), time.time()
        if ab is not None:
            ab.start()
        try:
            report = pgbench_run(lab, "-n", "-T", str(args.seconds), *extra,
                                 *(("-P", "1", "--progress-timestamp") if ab else ()),
                                 timeout=args.seconds + 600)
        finally:
            if ab is not None:
                ab.finish()
        b, w1 = sample(roles, target.qemu), time.time()
        g1 = guest_cpu(target.agent)
        rtt = rtt_after_resume(ping.communicate()[0], target.trace) if ping else None
        time.sleep(1.5)  # the status is published every 10 epochs
        for p in profilers:
            p.wait()
        tps = re.search(r"tps = ([\d.]+)", report)
        lat = re.search(r"latency average = ([\d.]+) ms", report)
        out[name] = {"tps": float(tps.group(1)) if tps else None,
                     "latency_ms": float(lat.group(1)) if lat else None,
                     "cpu_s_per_s": cpu_per_s(a, b), "guest_cpu": guest_share(g0, g1),
                     **stall(target, w0, w1, clock0)}
        if ab is not None:
            assert target.interval_ms is not None  # an IntervalSwitcher needs it
            out[name]["ab"] = {**_ab.summary(_ab.phases(_ab.seconds(report), ab.switches),
                                             target.interval_ms, args.ab),
                               "switches": len(ab.switches) - 1, "error": ab.error}
            print(f"{mode} {name}: A/B in one VM: {out[name]['ab']}")
        if rtt is not None:
            out[name]["echo_rtt_p50_ms_after_resume"] = rtt
            print(f"{mode} {name}: echo RTT p50 (ms) by time after a resume: {rtt}")
        if sched is not None:
            vcpus = {tid for tid, (job, _) in b.qemu_threads.items() if job == "vcpus"}
            out[name]["scheduler"] = finish_sched(sched, roles, vcpus, target.trace)
            _sched.show(f"{mode} {name}", out[name]["scheduler"])
    return out


@dataclass
class SchedRecording:
    proc: subprocess.Popen
    data: Path
    offset: float  # time.time() - time.monotonic(): perf records on CLOCK_MONOTONIC


def start_sched(args, target: Target, i: int) -> SchedRecording | None:
    """Scheduler events on every CPU during the first workload (--sched)."""
    if not args.sched or i != 0:
        return None
    data = Path(tempfile.mkdtemp(prefix="remusdb-sched-")) / "sched.data"
    offset = time.time() - time.monotonic()
    return SchedRecording(_sched.record(data, min(10, args.seconds)), data, offset)


def finish_sched(rec: SchedRecording, roles: dict[int, str], vcpus: set[int],
                 trace: Path | None) -> dict:
    """`vcpus`: this VM's vCPU threads (another VM's on the machine count as "other")."""
    rec.proc.wait()
    try:
        role_of = {}
        for pid, role in roles.items():  # every thread of every process, by its role
            try:
                role_of.update(dict.fromkeys(map(int, os.listdir(f"/proc/{pid}/task")), role))
            except FileNotFoundError:
                continue
        resumes = resume_times(trace)
        if rec.proc.returncode:
            log = rec.data.with_name(rec.data.name + ".log")
            tail = log.read_text(errors="replace").strip()[-300:] if log.exists() else ""
            return {"error": f"perf record exited {rec.proc.returncode}: {tail}"}
        try:
            lines = _sched.script(rec.data)
        except subprocess.CalledProcessError as e:  # a long run's other numbers still count
            return {"error": f"perf script: {(e.stderr or '').strip()[-300:]}"}
        return _sched.analyze(lines, role_of, resumes, rec.offset, vcpus)
    finally:
        shutil.rmtree(rec.data.parent, ignore_errors=True)


def start_profilers(perf_dir: Path, target: Target, mode: str, name: str) -> list:
    """perf on QEMU, py-spy on both daemons, for the first part of the workload."""
    secs = "10"
    procs = []
    tag = f"{mode.replace(':', '-')}-{name}"
    if target.qemu and shutil.which("perf"):
        procs.append(subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", "250", "-g", "-p",
             str(target.qemu), "-o", str(perf_dir / f"{tag}.perf.data"), "--", "sleep", secs],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for role in ("primary daemon", "standby daemon"):
        daemon = target.roles.get(role)
        if daemon and Path(spy).exists():
            procs.append(subprocess.Popen(
                [spy, "record", "-d", secs, "-r", "100", "-p", str(daemon), "-f", "raw", "-o",
                 str(perf_dir / f"{tag}.{role.split()[0]}.pyspy.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def qemu_pid(run_dir: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    pid_file = RunLayout(run_dir).primary_vm.pid
    while not pid_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no QEMU pid file at {pid_file}")
        time.sleep(0.2)
    return int(pid_file.read_text())


def measure(lab, base: Path, mode: str, args, perf_dir: Path | None) -> dict:
    run = base / mode.replace(":", "-")
    if mode == "unprotected":
        guest = launch(Config(), builder.build(), run, netns=lab.ns("primary"))
        try:
            return run_workloads(lab, Target({"qemu": guest.pid or 0}, guest.pid,
                                             guest.files.agent), args, perf_dir, mode)
        finally:
            guest.kill()
            shutil.rmtree(run, ignore_errors=True)
    if mode == "served":  # no standby: the VM runs served and unprotected, retrying
        layout = RunLayout(run)
        run.mkdir(parents=True)
        cfg = write_config(layout.config, lab)
        primary = Daemon(lab, "primary", ["protect", str(cfg)], layout.log("primary"))
        try:
            wait_status(layout.status_at("primary", "node"),
                        lambda s: s.get("state") == "primary-unprotected", 300, "a served VM",
                        [primary])
            pid = qemu_pid(run)
            return run_workloads(lab, Target({"primary daemon": primary.proc.pid, "qemu": pid},
                                             pid, layout.primary_vm.agent), args, perf_dir,
                                 mode)
        finally:
            primary.kill()
            drop_images(run)
    kind, interval = mode.split(":")
    protect_args: tuple = ("--trace", str(RunLayout(run).primary_trace))
    if kind == "nooc":
        protect_args += ("--unsafe-no-output-commit",)
    with Protected(lab, run, interval_ms=int(interval), optimizations={"cp": kind == "cp"},
                   protect_args=protect_args) as p:
        assert p.primary is not None and p.standby is not None
        pid = qemu_pid(run)
        target = Target({"primary daemon": p.primary.proc.pid,
                         "standby daemon": p.standby.proc.pid, "qemu": pid}, pid,
                        p.layout.primary_vm.agent, p.layout.primary_trace, p.primary_status,
                        p.layout.role_dir("primary"), int(interval))
        return run_workloads(lab, target, args, perf_dir, mode)


def show(rows: dict, ref: dict) -> None:
    print(f"\n{'mode':13s}{'workload':13s}{'TPS':>8s}{'ratio':>7s}{'host':>6s}{'steal':>6s}"
          f"{'QEMU':>6s}{'vCPUs':>7s}"
          f"{'main':>6s}{'migr':>6s}{'prim':>6s}{'stby':>6s}{'stall':>7s}{'clock':>7s}"
          f"{'pause':>7s}{'stop':>6s}{'read':>6s}{'ack':>6s}  guest CPU")
    for mode, r in rows.items():
        for w, m in r.items():
            proc, th = m["cpu_s_per_s"]["process"], m["cpu_s_per_s"]["qemu_thread"]
            ratio = m["tps"] / ref[w]["tps"] if m.get("tps") and ref.get(w, {}).get("tps") \
                else float("nan")
            m["tps_ratio"] = round(ratio, 3)
            host = m["cpu_s_per_s"].get("machine", {})
            print(f"{mode:13s}{w:13s}{m['tps'] or 0:8.1f}{ratio:7.2f}"
                  f"{host.get('busy', 0):6.2f}{host.get('steal', 0):6.2f}"
                  f"{proc.get('qemu', 0):6.2f}{th.get('vcpus', 0):7.2f}"
                  f"{th.get('main loop', 0):6.2f}{th.get('migration', 0):6.2f}"
                  f"{proc.get('primary daemon', 0):6.2f}{proc.get('standby daemon', 0):6.2f}"
                  f"{m.get('stall_s_per_s', 0):7.3f}{m.get('guest_clock_lost_s_per_s', 0):7.3f}"
                  f"{m.get('pause_ms_p50', 0):7.1f}{m.get('stopping_ms_p50', 0):6.1f}"
                  f"{m.get('reading_ms_p50', 0):6.1f}{m.get('ack_ms_p50') or 0:6.1f}  "
                  + " ".join(f"{k} {v:.2f}" for k, v in m.get("guest_cpu", {}).items() if v))
            if "ab" in m:  # this row's TPS mixes both intervals: the A/B is the measure
                ab = m["ab"]
                print(f"{'':26s}A/B in this VM (the row mixes both intervals): " + ", ".join(
                    f"{k} {v['tps_mean']} TPS ({v['seconds']} s)" for k, v in ab.items()
                    if isinstance(v, dict)) + f", ratio {ab['ratio']}"
                    + (f"; switching stopped: {ab['error']}" if ab.get("error") else ""))
            if len(m.get("tps_runs", ())) > 1:
                print(f"{'':26s}TPS of each run: "
                      + ", ".join(f"{t:.1f}" for t in m["tps_runs"] if t is not None))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default=DEFAULT_MODES)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1, help="run the modes N times, interleaved")
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--perf", metavar="DIR", help="profile QEMU and both daemons")
    ap.add_argument("--sched", action="store_true",
                    help="scheduler events during the first workload: where the vCPUs' time "
                         "goes by time after a resume (perf, sched_switch)")
    ap.add_argument("--ab", type=int, metavar="MS",
                    help="in each nooc: mode, switch its interval with MS every --ab-period "
                         "seconds in the same VM and compare the two (with output commit, a "
                         "long interval holds every reply: no reference)")
    ap.add_argument("--ab-period", type=float, default=4.0, metavar="S")
    ap.add_argument("--rtt", action="store_true",
                    help="ping the guest during the first workload: RTT by time after a resume")
    args = ap.parse_args()
    args.workloads = args.workloads.split(",")
    if args.repeat < 1 or args.seconds < 1:
        ap.error("--repeat and --seconds must be at least 1")
    if args.ab is not None and not interval_ok(args.ab):
        ap.error(f"--ab: an interval in {INTERVAL_BOUNDS} ms")
    if args.ab_period < 2:
        ap.error("--ab-period: at least 2 s (each switch checkpoints and settles)")
    if args.ab and args.seconds < 4 * args.ab_period:
        ap.error("--ab needs --seconds of at least four periods")
    if args.perf and args.repeat > 1:
        ap.error("--perf slows the runs it profiles: measure TPS with --repeat, profile apart")
    if args.sched and not shutil.which("perf"):
        ap.error("--sched needs perf (scripts/install-deps.sh installs linux-perf)")
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, the VM)")
    perf_dir = Path(args.perf) if args.perf else None
    if perf_dir:
        perf_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="remusdb-cost-", dir="/dev/shm"))
    runs: dict[str, list[dict]] = {}
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            for r in range(args.repeat):
                (base / str(r)).mkdir()
                for mode in args.modes.split(","):
                    got = measure(lab, base / str(r), mode, args, perf_dir if r == 0 else None)
                    runs.setdefault(mode, []).append(got)
                    print(f"{mode} (run {r + 1}/{args.repeat}): " + ", ".join(
                        f"{w} {m['tps']} TPS" for w, m in got.items()), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = {mode: median_runs(got) for mode, got in runs.items()}
    show(rows, rows.get("unprotected", {}))
    save("checkpoint_cost", {"seconds": args.seconds, "scale": args.scale,
                             "repeat": args.repeat, "modes": rows})


def median_runs(runs: list[dict]) -> dict:
    """Per workload, the run with the median TPS, and every run's TPS beside it."""
    out = {}
    for w in runs[0]:
        ranked = sorted((r[w] for r in runs), key=lambda m: m.get("tps") or 0)
        out[w] = {**ranked[(len(ranked) - 1) // 2],
                  "tps_runs": [r[w].get("tps") for r in runs]}
    return out


if __name__ == "__main__":
    main()
