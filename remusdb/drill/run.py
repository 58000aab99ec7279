"""One failover drill, end to end, on one machine: three hosts as namespaces, the protected VM on
the primary, the ledger workload from the client, a fault (faults.py) at the chosen point, the
standby's failover or the primary's carrying on, as the fault expects, the second-copy detector
watching throughout, then the ledger read back and checked against what clients were told."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

from remusdb.checkpoint.control import request_failover
from remusdb.checkpoint.primary import STALL_TIMEOUT_S
from remusdb.checkpoint.status import read_status
from remusdb.drill import faults, report, workload
from remusdb.drill.copies import CopyWatch
from remusdb.drill.faults import FAULTS, Fault, Outcome
from remusdb.errors import RemusError
from remusdb.lab import witness as partition
from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.layout import KeptOnFailure, RunLayout
from remusdb.lab.net import VM_IP, Lab
from remusdb.lab.witness import HOST as WITNESS_HOST
from remusdb.lab.witness import LabWitness

KILL_POINTS = ("random", "mid-epoch", "mid-transfer")
PID_FILE = "primary-host.pids"  # what the lab's fence command kills
OPTIMIZATIONS = ("asc", "rt", "cp")


def optimizations(opts: AbstractSet[str]) -> dict:
    return {"compression": "xor-lz4" if "asc" in opts else "off", "rt": "rt" in opts,
            "cp": "cp" in opts}


def _wait_checkpoint(trace: Path, timeout: float = 30.0) -> float:
    """Block until the primary logs its next checkpoint; returns when it did (monotonic)."""
    size = trace.stat().st_size if trace.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if trace.exists() and trace.stat().st_size > size:
            return time.monotonic()
        time.sleep(0.001)
    raise RemusError("no checkpoint in 30 s before the kill")


def _kill_delay(kill_at: str, interval_ms: int, rng: random.Random, trace: Path) -> None:
    if kill_at == "random":
        time.sleep(rng.uniform(0.0, 3.0))
    elif kill_at == "mid-epoch":  # halfway between two checkpoints
        _wait_checkpoint(trace)
        time.sleep(interval_ms / 2000)
    else:  # mid-transfer: right after a checkpoint, while its epoch is on its way
        _wait_checkpoint(trace)
        time.sleep(0.002)


def drill(db: str = "postgres", interval_ms: int = 100,
          opts: AbstractSet[str] = frozenset(OPTIMIZATIONS),
          kill_at: str = "random", clients: int = 4, warmup_s: float = 5.0,
          after_s: float = 45.0, seed: int | None = None, say=print,
          fault: Fault = FAULTS["daemon-kill"], witness: bool = False) -> dict:
    """`after_s`: how long after the fault the clients may take to commit again; longer
    than their TCP timeout (workload.CLIENT_TIMEOUT_S), so a stalled connection is measured.
    Passes when nothing acknowledged is lost, the ledger holds, the outcome is the fault's
    expected one, and no two copies of the VM ever ran at once."""
    rng = random.Random(seed)
    hosts = Lab.hosts + ((WITNESS_HOST,) if witness else ())
    with KeptOnFailure("remusdb-drill-", say) as kept, Lab(hosts=hosts) as lab, \
            contextlib.ExitStack() as stack:
        base = kept.base
        lab.add_tap("primary")
        etcd = stack.enter_context(LabWitness(lab, base)) if witness else None
        trace = RunLayout(base).primary_trace
        fence = {"fence_command": faults.fence_command(base / PID_FILE)} if fault.fenced else {}
        if fault.own_store_fs:
            kept.mount(RunLayout(base).role_dir("standby"), faults.STORE_FS_BYTES)
        say(f"protecting the VM (checkpoint every {interval_ms} ms, "
            f"{', '.join(sorted(opts)) or 'no optimizations'}) ...")
        with Protected(lab, base, interval_ms=interval_ms, optimizations=optimizations(opts),
                       protect_args=("--trace", str(trace)), standby=fence,
                       witness={"endpoints": [etcd.url]} if etcd else None) as p:
            watch = CopyWatch(base)
            watch.start()
            try:
                result = _run(lab, p, db, interval_ms, kill_at, clients, warmup_s, after_s,
                              rng, trace, say, fault, etcd)
            finally:
                result_copies = watch.stop()
        result["resumed_after_s"] = watch.copies.running_since(
            result.pop("_killed_at"), str(RunLayout(base).primary_vm.observer))
        result["copies"] = result_copies
        result["ok"] = kept.ok = (result["ledger"]["ok"] and result["as_expected"]
                                  and result_copies["second_copies"] == 0)
        return result


def _inject(lab, p: Protected, fault: Fault, say) -> None:
    primary = p.primary
    assert primary is not None and p.standby is not None  # started by Protected.__enter__
    host = faults.descendants(primary.proc.pid)
    if fault.name == "daemon-kill":
        primary.kill(signal.SIGKILL)
    elif fault.name == "qemu-crash":
        os.kill(int(p.layout.primary_vm.pid.read_text()), signal.SIGKILL)
    elif fault.name == "operator-stop":
        faults.signal_all(host, signal.SIGTERM)
    elif fault.name in ("host-freeze", "host-freeze-fenced"):
        (p.run / PID_FILE).write_text(" ".join(map(str, host)) + "\n")
        cfg = p.config()
        ttl = cfg.witness.ttl_s if cfg.witness.enabled else None
        faults.freeze(host, faults.freeze_seconds(cfg.standby.heartbeat_timeout_ms / 1000, ttl))
    elif fault.needs_witness:
        _partition(lab, p, fault, say)
    elif fault.name == "standby-crash":
        p.standby.kill(signal.SIGKILL)
        say("   the standby daemon killed; starting it again")
        p.restart_standby()
    elif fault.name == "failover-crash":
        primary.kill(signal.SIGKILL)
        wait_status(p.standby_status, lambda s: s["state"] == "failing-over", 30,
                    "the standby's failover to begin", [p.standby], poll=0.002)
        p.standby.kill(signal.SIGKILL)  # its new QEMU dies with it
        say("   the standby killed in the middle of its failover; starting it again")
        p.restart_standby()
        new = p.standby
        wait_status(p.standby_status, lambda s: s.get("pid") == new.proc.pid, 60,
                    "the restarted standby", [new])
        say("   remusdb failover --force (the operator: the primary is known dead)")
        request_failover(p.layout.role_dir("standby"), force=True)
    elif fault.name == "standby-disk-full":
        ballast = faults.fill(p.layout.role_dir("standby"))
        node = wait_status(p.layout.status_at("primary", "node"),
                           lambda s: s["state"] == "primary-unprotected", 60,
                           "the primary to report the standby lost", [primary])
        say(f"   the standby's store is full; the primary says: {node['state']}")
        ballast.unlink()
        p.standby.kill(signal.SIGKILL)
        say("   space freed; the standby daemon starting again")
        p.restart_standby()
    else:
        raise RemusError(f"no injection for fault {fault.name}")


def _partition(lab, p: Protected, fault: Fault, say) -> None:
    """Cut, wait, heal; for a failover expected meanwhile, heal only after it (or at most
    after a minute: the drill then fails on the outcome)."""
    cfg = p.config()
    hold = faults.cut_seconds(fault, cfg.witness.ttl_s, STALL_TIMEOUT_S)
    if fault.name == "link-cut":
        undo = _cut(lab, "primary", ["standby"])
    elif fault.name == "primary-isolated":
        partition.unplug(lab, "primary")
        undo = lambda: partition.unplug(lab, "primary", up=True)  # noqa: E731
    elif fault.name == "witness-cut-primary":
        undo = _cut(lab, "primary", [WITNESS_HOST])
    elif fault.name == "witness-cut-standby":
        undo = _cut(lab, "standby", [WITNESS_HOST])
    elif fault.name == "witness-cut-both":
        partition.unplug(lab, WITNESS_HOST)
        undo = lambda: partition.unplug(lab, WITNESS_HOST, up=True)  # noqa: E731
    else:
        raise RemusError(f"no injection for fault {fault.name}")
    try:
        time.sleep(hold)
        if fault.expect is Outcome.FAILOVER and fault.name != "witness-cut-both":
            wait_status(p.standby_status, lambda s: s["state"] == "active", 60,
                        "the standby's failover", [p.standby])
    finally:
        undo()
        say(f"   {fault.name} healed after {hold:.0f} s")


def _cut(lab, host: str, others: list[str]):
    partition.cut(lab, host, others)
    return lambda: partition.heal(lab, host)


def _run(lab, p: Protected, db, interval_ms, kill_at, n_clients, warmup_s, after_s, rng,
         trace, say, fault: Fault, etcd: LabWitness | None) -> dict:
    witness = etcd is not None
    def open_conn():
        with lab.inside("client"):
            return workload.connect(db, VM_IP)

    clients, stop = workload.start(db, VM_IP, open_conn, n_clients)
    failover, active_after, load = None, None, None
    try:
        t0, counts = time.monotonic(), etcd.handled() if etcd else {}
        time.sleep(warmup_s)
        if etcd is not None:  # the witness's load while protected
            now, after = time.monotonic(), etcd.handled()
            load = {m: round((n - counts.get(m, 0)) / (now - t0), 2)
                    for m, n in after.items() if n > counts.get(m, 0)}
        before = sum(len(c.acked) for c in clients)
        if before == 0:
            raise RemusError(f"no transfer committed in {warmup_s:.0f} s of warm-up")
        _kill_delay(kill_at, interval_ms, rng, trace)
        last = ((read_status(p.layout.status_at("primary", "node")) or {})
                .get("sessions") or [{}])[-1].get("at")
        killed_at = time.monotonic()
        _inject(lab, p, fault, say)
        say(f"{fault.name} ({kill_at}) after {before} acknowledged transfers")
        if fault.expected(witness) is Outcome.FAILOVER:
            st = wait_status(p.standby_status, lambda s: s["state"] == "active", 120,
                             "the standby's failover", [p.standby])
            failover, active_after = st["failover"], round(time.monotonic() - killed_at, 2)
        deadline = time.monotonic() + after_s
        while time.monotonic() < deadline:  # until every client has committed again
            if all(any(o.ok and o.start > killed_at for o in c.ops) for c in clients):
                break
            time.sleep(0.2)
        if fault.expected(witness) is Outcome.PRIMARY_STAYS:  # and protected (again)
            wait_status(p.layout.status_at("primary", "node"),
                        lambda s: s["state"] == "primary-protected"
                        and (s["sessions"][-1]["at"] != last or not fault.reprotects), 180,
                        "protection again", [d for d in p.daemons if d.proc.poll() is None])
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    ops = [o for c in clients for o in c.ops]
    acked = set().union(*(c.acked for c in clients))
    standby = read_status(p.standby_status) or {}
    failed_over = standby.get("state") == "active"
    return {"db": db, "interval_ms": interval_ms, "kill_at": kill_at, "fault": fault.name,
            "expected": fault.expected(witness).value, "witness": witness,
            "outcome": (Outcome.FAILOVER if failed_over else Outcome.PRIMARY_STAYS).value,
            "as_expected": faults.as_expected(fault, failed_over, witness),
            "failover": failover or standby.get("failover"), "active_after_s": active_after,
            "ledger": workload.check(open_conn, acked),
            **report.downtime(ops, killed_at), "outage_s": report.outage(ops, killed_at),
            "connections": report.connections(ops, killed_at),
            "transfers": {"attempted": len(ops), "acknowledged": len(acked)},
            "window_s": round(time.monotonic() - killed_at, 1), "_killed_at": killed_at,
            "witness_requests_per_s": load}


def describe(r: dict) -> list[str]:
    led, con, fo = r["ledger"], r["connections"], r.get("failover") or {}
    rec = fo.get("cp_recovery") or {}
    copies = r.get("copies") or {}
    lines = [
        f"failover: standby resumed epoch {fo.get('epoch')}, its VM running "
        f"{r.get('resumed_after_s')} s after the fault ({fo.get('running_s')} s after the "
        f"decision), active {r.get('active_after_s')} s after it ({fo.get('reason')})"
        if fo else "no failover: the primary kept the VM",
        f"outcome: {r.get('outcome')} (expected {r.get('expected')}); second copies seen: "
        f"{copies.get('second_copies')} in {copies.get('samples')} samples",
        f"ledger: {led['acknowledged']} transfers acknowledged, {led['lost']} lost; "
        f"{'money conserved' if led['total_ok'] else 'TOTAL CHANGED'}, "
        f"{len(led['partial_accounts'])} accounts out of step with the ledger; "
        f"{led['unacknowledged_present']} unacknowledged transfers committed anyway",
        f"downtime: {r['downtime_s']} s (first hit {r['first_hit_s']} s after the kill, first "
        f"commit after it {r['first_success_s']} s)" if r["downtime_s"] is not None else
        f"downtime: no commit in the {r['window_s']} s after the kill",
        f"outage: {r.get('outage_s')} s (the longest time without a commit, from the last "
        "before the fault)",
        f"connections: {con['survived']} survived, {con['broken']} broke "
        f"(error after {con['time_to_error_s']} s)",
    ]
    if "terminated" in rec:
        lines.append(f"commit protection: {rec['terminated']} session(s) not committing were "
                     f"aborted after failover ({rec['ms']:.0f} ms)")
    lines.append("PASS" if r.get("ok", led["ok"]) else "FAIL")
    return lines
