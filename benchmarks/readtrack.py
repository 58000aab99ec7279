"""Bytes sent with RT and ASC, on the real guest: a TPC-H-like load (full scans read from disk
through PostgreSQL's ring buffer) and pgbench TPC-B. Each configuration — unoptimized, RT, ASC,
ASC+RT — protects a fresh VM and runs the same workload; bytes sent per dirty page and per epoch
are reported as ratios to unoptimized in the same run. Needs root. Run:
    .venv/bin/python benchmarks/readtrack.py [--scale 3] [--rounds 3] [--seconds 20]
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks._common import save
from remusdb.lab.daemons import Protected
from remusdb.lab.load import cold_scans, load_pgbench, pgbench
from remusdb.lab.net import Lab

CONFIGS = {"unoptimized": {"compression": "off", "rt": False},
           "RT": {"compression": "off", "rt": True},
           "ASC": {"compression": "xor-lz4", "rt": False},
           "ASC+RT": {"compression": "xor-lz4", "rt": True}}


def measure(lab, run: Path, opts: dict, workload: str, args) -> dict:
    with Protected(lab, run, optimizations=opts) as p:
        load_pgbench(lab, args.scale)
        before = p.status("primary")["totals"]
        if workload == "scan":
            cold_scans(lab, p.layout.primary_vm.agent, rounds=args.rounds)
        else:
            out = pgbench(lab, "-n", "-c", "4", "-T", str(args.seconds)).communicate()[0]
            if "tps" not in out:
                raise SystemExit(f"pgbench failed: {out[-500:]}")
        st = p.status("primary")
    after = st["totals"]
    d = {k: after[k] - before[k] for k in after}
    return {"epochs": d["epochs"], "dirty_pages": d["dirty_pages"], "sent_bytes": d["sent_bytes"],
            "bytes_per_page": round(d["sent_bytes"] / max(d["dirty_pages"], 1), 1),
            "bytes_per_epoch": round(d["sent_bytes"] / max(d["epochs"], 1)),
            "rt_references": (st["read_tracking"] or {}).get("references")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="cold scans per run")
    ap.add_argument("--seconds", type=int, default=20, help="pgbench TPC-B duration")
    ap.add_argument("--workloads", default="scan,tpcb")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, the VM)")
    base = Path(tempfile.mkdtemp(prefix="remusdb-rtbench-", dir="/dev/shm"))
    result = {}
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            for workload in args.workloads.split(","):
                rows = {name: measure(lab, base / f"{workload}-{k}", opts, workload, args)
                        for k, (name, opts) in enumerate(CONFIGS.items())}
                ref = rows["unoptimized"]["bytes_per_page"]
                print(f"{workload}:")
                for name, r in rows.items():
                    r["vs_unoptimized"] = round(r["bytes_per_page"] / ref, 3)
                    print(f"  {name:12s} {r['bytes_per_page']:8.0f} B/dirty page "
                          f"{r['bytes_per_epoch']:10d} B/epoch  {r['vs_unoptimized']:.3f}x "
                          f"(RT references {r['rt_references']})")
                result[workload] = rows
    finally:
        shutil.rmtree(base, ignore_errors=True)
    save("readtrack", {"scale": args.scale, "rounds": args.rounds, "seconds": args.seconds,
                       "results": result})


if __name__ == "__main__":
    main()
