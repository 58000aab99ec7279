"""Terminals: one thread and one connection each (as the thesis's modified kit), no keying or
think time, the standard mix drawn per transaction. A transaction the database rolled back on
its own is retried; a broken connection is counted and reopened, so a run through a failover
keeps going."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from benchmarks.target import Target, close_quietly, first_line, reconnect, retryable
from benchmarks.tpcc.gen import Rand, Scale
from benchmarks.tpcc.txns import MIX, TRANSACTIONS, UserRollback

_NAMES = [n for n, _ in MIX]
_WEIGHTS = [w for _, w in MIX]


def pick(r: Rand) -> str:
    return r.r.choices(_NAMES, _WEIGHTS)[0]


class _Terminal(threading.Thread):
    def __init__(self, target: Target, scale: Scale, w: int, seed: int, start: threading.Event,
                 deadline: list[float]):
        super().__init__(daemon=True)
        self.target, self.scale, self.w, self.r = target, scale, w, Rand(seed)
        self.start_evt, self.deadline = start, deadline
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.counts, self.retries, self.rollbacks = Counter(), 0, 0
        self.errors: list[str] = []
        self.conn = target.open()

    def _reconnect(self) -> bool:
        self.conn = reconnect(self.target, self.conn, self.deadline[0])
        return self.conn is not None

    def run(self) -> None:
        self.start_evt.wait()
        while time.monotonic() < self.deadline[0]:
            name = pick(self.r)
            t0 = time.monotonic()
            while True:
                try:
                    TRANSACTIONS[name](self.conn, self.r, self.scale, self.w)
                except UserRollback:
                    self.rollbacks += 1
                except Exception as e:  # noqa: BLE001 - classified below
                    try:
                        self.conn.rollback()
                    except Exception:  # noqa: BLE001
                        pass
                    if retryable(self.target.kind, e):
                        self.retries += 1
                        continue
                    self.errors.append(f"{name}: {first_line(e)}")
                    if not self._reconnect():
                        return
                    break
                self.latencies[name].append(time.monotonic() - t0)
                self.counts[name] += 1
                break


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"p50": None, "p95": None, "p99": None}
    p = np.percentile(np.asarray(xs) * 1000, [50, 95, 99])
    return {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2),
            "p99": round(float(p[2]), 2)}


def run(target: Target, scale: Scale, duration_s: float, terminals: int, seed: int = 1,
        say: Callable[[str], None] = print) -> dict:
    start, deadline = threading.Event(), [float("inf")]
    terms = [_Terminal(target, scale, i % scale.warehouses + 1, seed * 7919 + i, start, deadline)
             for i in range(terminals)]
    for t in terms:
        t.start()
    say(f"running TPC-C: {terminals} terminal(s), {duration_s:g} s ...")
    t0 = time.monotonic()
    deadline[0] = t0 + duration_s
    start.set()
    for t in terms:
        t.join(duration_s + 120)
    elapsed = time.monotonic() - t0
    for t in terms:
        if t.conn is not None:
            close_quietly(t.conn)
    counts, lat = Counter(), defaultdict(list)
    for t in terms:
        counts.update(t.counts)
        for k, v in t.latencies.items():
            lat[k] += v
    total = sum(counts.values())
    tpmc = counts["new_order"] * 60 / elapsed
    return {
        "score": round(tpmc, 1), "unit": "tpmC", "higher_is_better": True,
        "elapsed_s": round(elapsed, 1), "transactions": total,
        "mix": {k: round(counts[k] / total, 3) if total else 0 for k in TRANSACTIONS},
        "latency_ms": {k: _percentiles(lat[k]) for k in TRANSACTIONS},
        "latency_all_ms": _percentiles([x for v in lat.values() for x in v]),
        "retries": sum(t.retries for t in terms),
        "user_rollbacks": sum(t.rollbacks for t in terms),
        "errors": [e for t in terms for e in t.errors][:20],
        "error_count": sum(len(t.errors) for t in terms),
    }
