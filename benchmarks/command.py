"""`remusdb bench tpcc|tpch|tpcw`: argument checks (one line each, before any VM starts), the
run, the summary table, the JSON and the chart.

Only the argument definitions load with the `remusdb` parser; the runner, the drivers, their
database clients and matplotlib load when `remusdb bench` runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from benchmarks.modes import BENCHMARKS, MODES
from remusdb import config as configmod
from remusdb.errors import RemusError


def summary_lines(result: dict) -> list[str]:
    from benchmarks import runner

    lines = [f"{'mode':<12}{'sweep':>10}{'score':>14}{'vs unprot.':>12}{'MB/s sent':>11}"]
    for p in result["points"]:
        sweep = runner.value_label((result.get("sweep") or {}).get("kind"), p["sweep_value"])
        if "score" in p:
            norm = f"{p['normalized']:.3f}" if "normalized" in p else ""
            bw = f"{p['sent_mb_per_s']:.2f}" if p.get("sent_mb_per_s") is not None else ""
            lines.append(f"{p['mode']:<12}{sweep:>10}{p['score']:>10g} {p['unit']:<4}"
                         f"{norm:>11}{bw:>11}" + (f"  {p['error']}" if p.get("error") else ""))
        else:
            na = p.get("available") is False
            why = p.get("reason") if na else p.get("error")
            lines.append(f"{p['mode']:<12}{sweep:>10}  {'n/a' if na else 'failed'}: {why}")
    return lines


def bench(args) -> int:
    from benchmarks import runner

    drv = runner.driver(args.benchmark)
    if args.duration <= 0:
        raise RemusError(f"--duration must be > 0 s, got {args.duration:g}")
    if args.clients is not None and args.clients < 1:
        raise RemusError(f"--clients must be ≥ 1, got {args.clients}")
    cfg = configmod.load(Path(args.config)) if args.config else configmod.Config()
    plan = runner.Plan(name=args.benchmark, db=args.db, duration_s=args.duration,
                       clients=args.clients, scale=args.scale, interval_ms=args.interval,
                       sweep=runner.parse_sweep(args.sweep), cfg=cfg)
    if args.db not in drv.DBS:
        raise RemusError(f"{args.benchmark} runs on {', '.join(drv.DBS)}, not {args.db}")
    runner.check_scale(drv, args.scale if args.scale is not None else drv.DEFAULT_SCALE)
    if args.interval is not None and not 10 <= args.interval <= 10_000:
        raise RemusError(f"--interval: {args.interval} ms is outside 10..10000")
    out_dir = Path(args.out) if args.out else runner.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.at:
        if args.modes or args.sweep:
            raise RemusError("--at runs against a database that is already there: no --modes "
                             "or --sweep (those start their own VMs)")
        target = runner.external_target(args.db, args.at, args.user,
                                        os.environ.get("REMUSDB_BENCH_PASSWORD", args.user),
                                        args.dbname)
        out = out_dir / f"{args.benchmark}-{args.db}-external-{stamp}.json"
        result = runner.external(args.benchmark, target, plan, out, say,
                                 prepare=not args.no_prepare)
    else:
        plan.modes = runner.parse_modes(args.modes or ",".join(MODES))
        if os.geteuid() != 0:
            raise RemusError("bench starts VMs in network namespaces: run it as root (or use "
                             "--at HOST to benchmark a database that is already running)")
        out = out_dir / f"{args.benchmark}-{args.db}-{stamp}.json"
        say(f"{args.benchmark} on {args.db}: modes {', '.join(plan.modes)}"
            + (f", sweep {plan.sweep[0]} {plan.sweep[1]}" if plan.sweep else "")
            + f"; results in {out}")
        result = runner.bench(plan, out, say)
    from benchmarks import plots
    png = plots.chart(result, out.with_suffix(".png"))
    if args.json:
        import json
        print(json.dumps(result, indent=1, default=str))
    else:
        for line in summary_lines(result):
            print(line)
        print(f"saved {out} and {png}")
    failed = [p for p in result["points"] if p.get("error")]
    return 1 if failed else 0


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="TPC-C / TPC-H / TPC-W in each protection mode, "
                       "normalized to unprotected (JSON + PNG)")
    b.add_argument("benchmark", choices=BENCHMARKS)
    b.add_argument("--db", choices=("postgres", "mariadb"), default="postgres")
    b.add_argument("--config", help="a remusdb config: the VM's memory/vcpus/accel, the "
                   "checkpoint interval and page cache (default: built-in defaults)")
    b.add_argument("--modes", help=f"comma list of {', '.join(MODES)} (default all)")
    b.add_argument("--duration", type=float, default=60, metavar="S",
                   help="measured seconds per mode (TPC-C, TPC-W; TPC-H runs its power run)")
    b.add_argument("--clients", type=int, metavar="N", help="terminals / emulated browsers")
    b.add_argument("--scale", type=float, help="TPC-C warehouses, TPC-H scale factor, TPC-W "
                   "items (defaults fit a TCG guest; see docs/benchmarks.md for the paper's)")
    b.add_argument("--interval", type=int, metavar="MS", help="checkpoint interval "
                   "(default: the config's)")
    b.add_argument("--sweep", metavar="KIND=V1,V2", help="interval=25,50,100 | "
                   "buffer-pool=64M,128M | scale=1,2")
    b.add_argument("--out", metavar="DIR", help="where the JSON and PNG go "
                   "(default benchmarks/results)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--at", metavar="HOST[:PORT]", help="no VMs: benchmark this database")
    b.add_argument("--user", default="remusdb", help="with --at (password: "
                   "$REMUSDB_BENCH_PASSWORD, default the user name)")
    b.add_argument("--dbname", default="remusdb", help="with --at")
    b.add_argument("--no-prepare", action="store_true", help="with --at: use the data that is "
                   "there")
    b.set_defaults(func=bench)
