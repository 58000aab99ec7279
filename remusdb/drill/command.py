"""`remusdb drill failover`: N drills in a row, each report as it ends, then the totals."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from remusdb.drill import run as drillrun
from remusdb.errors import RemusError


def parse_opts(text: str) -> set[str]:
    """"asc,rt,cp" → {"asc", "rt", "cp"}; "none" or "" → no optimizations."""
    opts = {o.strip() for o in text.split(",") if o.strip()} - {"none"}
    unknown = opts - set(drillrun.OPTIMIZATIONS)
    if unknown:
        raise RemusError(f"--opts: unknown optimization {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(drillrun.OPTIMIZATIONS)}, or none)")
    return opts


def summarize(results: list[dict]) -> dict:
    # a drill whose clients never committed again counts as its whole window, not as nothing
    downs = [r["downtime_s"] if r["downtime_s"] is not None else r.get("window_s", float("inf"))
             for r in results]
    con = [r["connections"] for r in results]
    total = sum(c["survived"] + c["broken"] for c in con)
    return {
        "drills": len(results),
        "passed": sum(r["ledger"]["ok"] for r in results),
        "acknowledged": sum(r["ledger"]["acknowledged"] for r in results),
        "lost": sum(r["ledger"]["lost"] for r in results),
        "invariant_violations": sum((not r["ledger"]["total_ok"])
                                    + len(r["ledger"]["partial_accounts"]) for r in results),
        "unrecovered": sum(r["downtime_s"] is None for r in results),
        "downtime_p50_s": round(statistics.median(downs), 3) if downs else None,
        "downtime_max_s": max(downs) if downs else None,
        "connection_survival": round(sum(c["survived"] for c in con) / total, 3)
        if total else None,
    }


def failover(db: str, interval_ms: int, opts: str, kill_at: str, runs: int, as_json: bool,
             out=sys.stdout) -> int:
    if runs < 1:
        raise RemusError("--runs: at least 1")
    if interval_ms < 10 or interval_ms > 10_000:
        raise RemusError(f"--interval: {interval_ms} ms is outside 10..10000")
    chosen = parse_opts(opts)

    def say(msg: str) -> None:  # with --json, progress goes to stderr: stdout is the JSON
        print(msg, file=sys.stderr if as_json else out, flush=True)
    results = []
    for i in range(runs):
        say(f"== drill {i + 1}/{runs}: {db}, kill at {kill_at}")
        r = drillrun.drill(db, interval_ms, chosen, kill_at, say=say)
        results.append(r)
        for line in drillrun.describe(r):
            say(f"   {line}")
    summary = summarize(results)
    if as_json:
        print(json.dumps({"summary": summary, "drills": results}, indent=1), file=out)
    elif runs > 1:
        say(f"== {summary['passed']}/{summary['drills']} drills passed: "
            f"{summary['acknowledged']} acknowledged commits, {summary['lost']} lost, "
            f"{summary['invariant_violations']} invariant violations; "
            f"{summary['unrecovered']} with no commit after the kill; downtime p50 "
            f"{summary['downtime_p50_s']} s, max {summary['downtime_max_s']} s; connections "
            f"survived {summary['connection_survival']}")
    return 0 if summary["passed"] == summary["drills"] else 1


def reprotect(db: str, interval_ms: int, cycles: int, out: str, as_json: bool,
              stdout=sys.stdout) -> int:
    """`remusdb drill reprotect`: the cycles, one line each, then the totals (exit 1 unless
    nothing was lost and every reprotection verified equal)."""
    from remusdb.drill import cycles as drillcycles
    if cycles < 1:
        raise RemusError("--cycles: at least 1")
    if interval_ms < 10 or interval_ms > 10_000:
        raise RemusError(f"--interval: {interval_ms} ms is outside 10..10000")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if as_json else stdout, flush=True)
    result = drillcycles.drill(db, cycles, interval_ms, out=Path(out), say=say)
    total = drillcycles.summarize(result)
    if as_json:
        print(json.dumps({"summary": total, **result}, indent=1), file=stdout)
    else:
        say(f"totals: {total}")
    return 0 if total["ok"] else 1
