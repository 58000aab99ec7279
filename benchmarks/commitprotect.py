"""Output commit's cost and what commit protection wins back, on the real guest: pgbench TPC-B
and select-only through the net relay, unprotected (a plain VM on the tap), Remus (output commit,
cp off), CP on, and checkpoints without output commit (`--unsafe-no-output-commit`: what the
checkpoints alone cost, the most CP could win back), at several checkpoint intervals. TPS and
latency are normalized to the unprotected run of the same invocation; "won back" is
(CP − Remus) / (no output commit − Remus). Needs root. Run:
    .venv/bin/python benchmarks/commitprotect.py [--intervals 25,50,100] [--seconds 20]
"""

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path

from benchmarks._common import save
from remusdb.config import Config
from remusdb.image import builder
from remusdb.lab.daemons import Protected
from remusdb.lab.load import pgbench
from remusdb.lab.net import Lab
from remusdb.vm import launch

WORKLOADS = {"tpcb": ["-c", "4"], "select-only": ["-S", "-c", "4"]}


def run_pgbench(lab, args, extra) -> dict:
    out = pgbench(lab, "-n", "-T", str(args.seconds), *extra).communicate()[0]
    tps = re.search(r"tps = ([\d.]+)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    if not (tps and lat):
        raise SystemExit(f"pgbench failed: {out[-500:]}")
    return {"tps": float(tps.group(1)), "latency_ms": float(lat.group(1))}


def workloads(lab, args) -> dict:
    init = pgbench(lab, "-i", "-s", "1", "-q").communicate()[0]
    if "done" not in init:
        raise SystemExit(f"pgbench -i failed: {init[-500:]}")
    return {name: run_pgbench(lab, args, extra) for name, extra in WORKLOADS.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intervals", default="25,50,100")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, the VM)")
    base = Path(tempfile.mkdtemp(prefix="remusdb-cpbench-", dir="/dev/shm"))
    rows = {}
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            guest = launch(Config(), builder.build(), base / "plain", netns=lab.ns("primary"))
            try:
                rows["unprotected"] = workloads(lab, args)
            finally:
                guest.kill()
            print(f"unprotected: {rows['unprotected']}", flush=True)
            for interval in (int(x) for x in args.intervals.split(",")):
                for mode, cp, extra in (("remus", False, ()), ("cp", True, ()),
                                        ("no-output-commit", False,
                                         ("--unsafe-no-output-commit",))):
                    run = base / f"{mode}-{interval}"
                    with Protected(lab, run, interval_ms=interval, optimizations={"cp": cp},
                                   protect_args=extra):
                        rows[f"{mode}@{interval}ms"] = workloads(lab, args)
                    shutil.rmtree(run, ignore_errors=True)
                    print(f"{mode}@{interval}ms: {rows[f'{mode}@{interval}ms']}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ref = rows["unprotected"]
    print(f"\n{'':16s}" + "".join(f"{w + ' TPS':>22s}{'latency':>10s}" for w in WORKLOADS))
    for name, r in rows.items():
        for w in WORKLOADS:
            r[w]["tps_ratio"] = round(r[w]["tps"] / ref[w]["tps"], 3)
            r[w]["latency_ratio"] = round(r[w]["latency_ms"] / ref[w]["latency_ms"], 2)
        print(f"{name:16s}" + "".join(
            f"{r[w]['tps']:12.1f} ({r[w]['tps_ratio']:.2f}x){r[w]['latency_ratio']:9.2f}x"
            for w in WORKLOADS))
    for interval in (int(x) for x in args.intervals.split(",")):
        for w in WORKLOADS:
            remus, cp, free = (rows[f"{m}@{interval}ms"][w]["tps"]
                               for m in ("remus", "cp", "no-output-commit"))
            won = (cp - remus) / (free - remus) if free > remus else float("nan")
            rows[f"cp@{interval}ms"][w]["won_back"] = round(won, 2)
            print(f"{w} at {interval} ms: CP wins back {won:.0%} of what output commit costs")
    save("commitprotect", {"seconds": args.seconds, "results": rows})


if __name__ == "__main__":
    main()
