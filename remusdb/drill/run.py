"""One failover drill, end to end, on one machine: three hosts as namespaces, the protected VM on
the primary, the ledger workload from the client, kill -9 of the primary at the chosen point,
the standby's failover, then the ledger read back and checked against what clients were told."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

from remusdb.drill import report, workload
from remusdb.errors import RemusError
from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.layout import KeptOnFailure, RunLayout
from remusdb.lab.net import VM_IP, Lab

KILL_POINTS = ("random", "mid-epoch", "mid-transfer")
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
          after_s: float = 45.0, seed: int | None = None, say=print) -> dict:
    """`after_s`: how long after the failover the clients may take to commit again; longer
    than their TCP timeout (workload.CLIENT_TIMEOUT_S), so a stalled connection is measured."""
    rng = random.Random(seed)
    with KeptOnFailure("remusdb-drill-", say) as kept, Lab() as lab:
        base = kept.base
        lab.add_tap("primary")
        trace = RunLayout(base).primary_trace
        say(f"protecting the VM (checkpoint every {interval_ms} ms, "
            f"{', '.join(sorted(opts)) or 'no optimizations'}) ...")
        with Protected(lab, base, interval_ms=interval_ms, optimizations=optimizations(opts),
                       protect_args=("--trace", str(trace))) as p:
            result = _run(lab, p, db, interval_ms, kill_at, clients, warmup_s, after_s,
                          rng, trace, say)
        kept.ok = result["ledger"]["ok"]
        return result


def _run(lab, p: Protected, db, interval_ms, kill_at, n_clients, warmup_s, after_s, rng,
         trace, say) -> dict:
    def open_conn():
        with lab.inside("client"):
            return workload.connect(db, VM_IP)

    clients, stop = workload.start(db, VM_IP, open_conn, n_clients)
    try:
        time.sleep(warmup_s)
        before = sum(len(c.acked) for c in clients)
        if before == 0:
            raise RemusError(f"no transfer committed in {warmup_s:.0f} s of warm-up")
        _kill_delay(kill_at, interval_ms, rng, trace)
        killed_at = time.monotonic()
        primary = p.primary
        assert primary is not None  # started by Protected.__enter__
        primary.kill(signal.SIGKILL)
        say(f"kill -9 of the primary ({kill_at}) after {before} acknowledged transfers")
        st = wait_status(p.standby_status, lambda s: s["state"] == "active", 120,
                         "the standby's failover", [p.standby])
        deadline = time.monotonic() + after_s
        while time.monotonic() < deadline:  # until every client has committed again
            if all(any(o.ok and o.start > killed_at for o in c.ops) for c in clients):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    ops = [o for c in clients for o in c.ops]
    acked = set().union(*(c.acked for c in clients))
    return {"db": db, "interval_ms": interval_ms, "kill_at": kill_at,
            "failover": st["failover"],
            "ledger": workload.check(open_conn, acked),
            **report.downtime(ops, killed_at), "connections": report.connections(ops, killed_at),
            "transfers": {"attempted": len(ops), "acknowledged": len(acked)},
            "window_s": round(time.monotonic() - killed_at, 1)}


def describe(r: dict) -> list[str]:
    led, con, fo = r["ledger"], r["connections"], r["failover"]
    rec = fo.get("cp_recovery") or {}
    lines = [
        f"failover: standby resumed epoch {fo['epoch']}, VM running {fo['running_s']} s after "
        f"the decision ({fo['reason']})",
        f"ledger: {led['acknowledged']} transfers acknowledged, {led['lost']} lost; "
        f"{'money conserved' if led['total_ok'] else 'TOTAL CHANGED'}, "
        f"{len(led['partial_accounts'])} accounts out of step with the ledger; "
        f"{led['unacknowledged_present']} unacknowledged transfers committed anyway",
        f"downtime: {r['downtime_s']} s (first hit {r['first_hit_s']} s after the kill, first "
        f"commit after it {r['first_success_s']} s)" if r["downtime_s"] is not None else
        f"downtime: no commit in the {r['window_s']} s after the kill",
        f"connections: {con['survived']} survived, {con['broken']} broke "
        f"(error after {con['time_to_error_s']} s)",
    ]
    if "terminated" in rec:
        lines.append(f"commit protection: {rec['terminated']} session(s) not committing were "
                     f"aborted after failover ({rec['ms']:.0f} ms)")
    lines.append("PASS" if led["ok"] else "FAIL")
    return lines
