"""`remusdb drill failover`: N drills in a row, each report as it ends, then the totals."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from remusdb.drill import faults
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
    """Totals of drill reports; a drill that did not complete counts as failed and its
    commits as unknown, never as passed."""
    done = [r for r in results if "ledger" in r]
    # a drill whose clients never committed again counts as its whole window, not as nothing
    downs = [r["downtime_s"] if r["downtime_s"] is not None else r.get("window_s", float("inf"))
             for r in done]
    con = [r["connections"] for r in done]
    total = sum(c["survived"] + c["broken"] for c in con)
    times = [r["drill_s"] for r in results if r.get("drill_s") is not None]
    return {
        "drills": len(results),
        "passed": sum(bool(r.get("ok", r.get("ledger", {}).get("ok"))) for r in results),
        "incomplete": len(results) - len(done),
        "acknowledged": sum(r["ledger"]["acknowledged"] for r in done),
        "lost": sum(r["ledger"]["lost"] for r in done),
        "invariant_violations": sum((not r["ledger"]["total_ok"])
                                    + len(r["ledger"]["partial_accounts"]) for r in done),
        "second_copies": sum((r.get("copies") or {}).get("second_copies", 0) for r in done),
        "unexpected_outcomes": sum(not r.get("as_expected", True) for r in done),
        "unrecovered": sum(r["downtime_s"] is None for r in done),
        "downtime_p50_s": round(statistics.median(downs), 3) if downs else None,
        "downtime_max_s": max(downs) if downs else None,
        "outage_p50_s": _median([r.get("outage_s") for r in done]),
        "outage_max_s": max((r["outage_s"] for r in done if r.get("outage_s") is not None),
                            default=None),
        "connection_survival": round(sum(c["survived"] for c in con) / total, 3)
        if total else None,
        "drill_s_mean": round(statistics.mean(times), 1) if times else None,
    }


def _median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def _checked(interval_ms: int, runs: int) -> None:
    if runs < 1:
        raise RemusError("--runs: at least 1")
    if interval_ms < 10 or interval_ms > 10_000:
        raise RemusError(f"--interval: {interval_ms} ms is outside 10..10000")


def _say(as_json: bool, out):
    def say(msg: str) -> None:  # with --json, progress goes to stderr: stdout is the JSON
        print(msg, file=sys.stderr if as_json else out, flush=True)
    return say


def failover(db: str, interval_ms: int, opts: str, kill_at: str, runs: int, as_json: bool,
             out=sys.stdout, fault: str = "daemon-kill", witness: bool = False) -> int:
    _checked(interval_ms, runs)
    chosen = parse_opts(opts)
    if fault not in faults.FAULTS:
        raise RemusError(f"--fault: unknown fault {fault!r} (known: {', '.join(faults.FAULTS)})")
    the_fault, = faults.parse(fault, witness)
    say = _say(as_json, out)
    results = []
    for i in range(runs):
        say(f"== drill {i + 1}/{runs}: {db}, {the_fault.describe(witness)}, at {kill_at}"
            f"{', witness on' if witness else ''}")
        r = drillrun.drill(db, interval_ms, chosen, kill_at, say=say, fault=the_fault,
                           witness=witness)
        results.append(r)
        for line in drillrun.describe(r):
            say(f"   {line}")
    summary = summarize(results)
    if as_json:
        print(json.dumps({"summary": summary, "drills": results}, indent=1), file=out)
    elif runs > 1:
        say(f"== {summary['passed']}/{summary['drills']} drills passed: "
            f"{summary['acknowledged']} acknowledged commits, {summary['lost']} lost, "
            f"{summary['invariant_violations']} invariant violations, "
            f"{summary['second_copies']} second copies; "
            f"{summary['unrecovered']} with no commit after the fault; downtime p50 "
            f"{summary['downtime_p50_s']} s, max {summary['downtime_max_s']} s; connections "
            f"survived {summary['connection_survival']}")
    return 0 if summary["passed"] == summary["drills"] else 1


def matrix(db: str, interval_ms: int, opts: str, fault_list: str, points: str,
           runs_per_fault: int, out_dir: str, as_json: bool, out=sys.stdout,
           witness: bool = False) -> int:
    """Every fault × kill point, N runs each; a table per fault and the totals, and a JSON file
    (failed runs keep their directories, as every drill does)."""
    _checked(interval_ms, runs_per_fault)
    chosen, chosen_faults = parse_opts(opts), faults.parse(fault_list, witness)
    kill_points = [k.strip() for k in points.split(",") if k.strip()]
    bad = [k for k in kill_points if k not in drillrun.KILL_POINTS]
    if bad or not kill_points:
        raise RemusError(f"--points: unknown kill point {', '.join(bad) or '(none)'} (known: "
                         f"{', '.join(drillrun.KILL_POINTS)})")
    directory = Path(out_dir)
    if not directory.is_dir():
        raise RemusError(f"--out: {directory} is not a directory")
    say = _say(as_json, out)
    # Round after round, so a matrix cut short still has every fault in it.
    plan = [(f, k) for _ in range(runs_per_fault) for f in chosen_faults for k in kill_points]
    mode = "-witness" if witness else ""
    path = directory / f"drill-matrix-{db}{mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results: list[dict] = []
    t0 = time.monotonic()
    for i, (f, k) in enumerate(plan):
        say(f"== drill {i + 1}/{len(plan)}: {db}, {f.describe(witness)}, at {k}")
        started = time.monotonic()
        try:
            r = drillrun.drill(db, interval_ms, chosen, k, say=say, fault=f, witness=witness)
        except Exception as e:  # a drill that could not even run is a failed drill
            say(f"   drill did not complete: {type(e).__name__}: {e}")
            r = {"fault": f.name, "kill_at": k, "ok": False,
                 "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        r["drill_s"] = round(time.monotonic() - started, 1)
        results.append(r)
        for line in drillrun.describe(r) if "ledger" in r else ["FAIL"]:
            say(f"   {line}")
        doc = _matrix_doc(db, interval_ms, chosen, runs_per_fault, kill_points, chosen_faults,
                          results, time.monotonic() - t0, len(plan))
        path.write_text(json.dumps(doc, indent=1) + "\n")  # after each drill: nothing lost
    total = doc["total"]
    if as_json:
        print(json.dumps(doc, indent=1), file=out)
    else:
        for line in matrix_table(doc):
            say(line)
        say(f"saved {path}")
    return 0 if total["passed"] == total["drills"] else 1


def _matrix_doc(db, interval_ms, chosen, runs_per_fault, kill_points, chosen_faults,
                results, run_s, planned) -> dict:
    return {"db": db, "interval_ms": interval_ms, "opts": sorted(chosen),
            "runs_per_fault": runs_per_fault, "kill_points": kill_points,
            "planned": planned, "total": summarize(results),
            "faults": {f.name: summarize([r for r in results if r["fault"] == f.name])
                       for f in chosen_faults},
            "run_s": round(run_s, 1), "drills": results}


COLUMNS = ("runs", "passed", "acked", "lost", "violations", "2nd copies", "down p50",
           "down max", "outage max", "conn. kept", "drill s")


def matrix_table(doc: dict) -> list[str]:
    """The matrix as a fixed-width table, one row per fault and the totals."""
    def row(name: str, s: dict) -> str:
        cells = [s["drills"], s["passed"], s["acknowledged"], s["lost"],
                 s["invariant_violations"], s["second_copies"], s["downtime_p50_s"],
                 s["downtime_max_s"], s.get("outage_max_s"), s["connection_survival"],
                 s["drill_s_mean"]]
        return f"{name:20s}" + "".join(f"{'-' if c is None else c!s:>12}" for c in cells)
    lines = [f"{'fault':20s}" + "".join(f"{c:>12}" for c in COLUMNS)]
    lines += [row(name, s) for name, s in doc["faults"].items()]
    lines.append(row("total", doc["total"]))
    return lines


def reprotect(db: str, interval_ms: int, cycles: int, out: str, as_json: bool,
              stdout=sys.stdout) -> int:
    """`remusdb drill reprotect`: the cycles, one line each, then the totals (exit 1 unless
    nothing was lost and every reprotection verified equal)."""
    from remusdb.drill import cycles as drillcycles
    if cycles < 1:
        raise RemusError("--cycles: at least 1")
    _checked(interval_ms, 1)
    say = _say(as_json, stdout)
    result = drillcycles.drill(db, cycles, interval_ms, out=Path(out), say=say)
    total = drillcycles.summarize(result)
    if as_json:
        print(json.dumps({"summary": total, **result}, indent=1), file=stdout)
    else:
        say(f"totals: {total}")
    return 0 if total["ok"] else 1
