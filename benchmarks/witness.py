"""What the witness costs a failover, against no witness in the same run, and what it costs
etcd: drills of one fault alternating witness on and off (daemon-kill by default: the
primary dies, so without a witness the standby fails over at once, with it only once the dead
primary's lease has ended), the VM's resume time after the fault and the clients' outage,
medians per mode and their ratio; and etcd's requests per second per protected VM (its own
grpc_server_handled_total, during each witness drill's warm-up).

Needs root (namespaces). Run:
    .venv/bin/python benchmarks/witness.py [--runs 3] [--fault daemon-kill] [--db postgres]
"""

import argparse
import statistics

from benchmarks._common import save
from remusdb.drill import run as drillrun
from remusdb.drill.faults import FAULTS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fault", default="daemon-kill", choices=[n for n, f in FAULTS.items()
                                                               if not f.needs_witness])
    ap.add_argument("--db", default="postgres", choices=("postgres", "mariadb"))
    args = ap.parse_args()
    fault = FAULTS[args.fault]
    rows: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(args.runs):
        for witness in (False, True):  # alternating: drift on the machine hits both
            r = drillrun.drill(args.db, 100, {"asc", "rt"}, "random", seed=i, fault=fault,
                               witness=witness, say=lambda _m: None)
            rows[witness].append(r)
            print(f"run {i + 1} witness {'on ' if witness else 'off'}: ok {r['ok']}, outcome "
                  f"{r['outcome']}, VM resumed {r['resumed_after_s']} s, outage "
                  f"{r['outage_s']} s, etcd {r.get('witness_requests_per_s')}", flush=True)

    def med(witness: bool, key: str) -> float | None:
        vals = [r[key] for r in rows[witness] if r.get(key) is not None]
        return round(statistics.median(vals), 3) if vals else None

    load: dict[str, list[float]] = {}
    for r in rows[True]:
        for method, rate in (r.get("witness_requests_per_s") or {}).items():
            load.setdefault(method, []).append(rate)
    out = {"fault": args.fault, "db": args.db, "runs": args.runs,
           "passed": {m: sum(r["ok"] for r in rows[w]) for m, w in (("off", False),
                                                                    ("on", True))}}
    for key in ("resumed_after_s", "outage_s", "downtime_s"):
        off, on = med(False, key), med(True, key)
        out[key] = {"off": off, "on": on,
                    "on_over_off": round(on / off, 2) if on and off else None}
    out["etcd_requests_per_s"] = {m: round(statistics.median(v), 2) for m, v in load.items()}
    out["etcd_requests_per_s_total"] = round(sum(out["etcd_requests_per_s"].values()), 2)
    for key in ("resumed_after_s", "outage_s", "downtime_s"):
        print(f"{key:18s} off {out[key]['off']}  on {out[key]['on']}  (on/off "
              f"{out[key]['on_over_off']})")
    print(f"etcd load per protected VM: {out['etcd_requests_per_s_total']} requests/s "
          f"({out['etcd_requests_per_s']})")
    save("witness", out)


if __name__ == "__main__":
    main()
