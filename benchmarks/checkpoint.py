"""Checkpoint engine on the real DB guest: pause time, dirty pages, daemon CPU and pgbench -S
throughput at several checkpoint intervals, idle and under load, as ratios to an unprotected VM
measured in the same run. Needs root (namespaces). Run:
    .venv/bin/python benchmarks/checkpoint.py [--intervals 50,100,250] [--seconds 15]
"""

import argparse
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks._common import save
from remusdb import config as configmod
from remusdb.checkpoint.status import read_status
from remusdb.lab.daemons import Daemon, drop_images, wait_status, write_config
from remusdb.lab.layout import RunLayout
from remusdb.lab.load import pgbench_tps
from remusdb.lab.net import Lab
from remusdb.vm import image_for, launch


def pct(v):
    if not len(v):
        return {}
    return {"p50": round(float(np.percentile(v, 50)), 2),
            "p99": round(float(np.percentile(v, 99)), 2), "max": round(float(v.max()), 2)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unprotected(lab, base, seconds):
    cfg = configmod.load(write_config(RunLayout(base).config, lab))
    guest = launch(cfg, image_for(cfg), base / "unprotected", netns=lab.ns("primary"))
    try:
        pgbench_tps(lab, "-i", "-s", "1", "-q", timeout=300)
        return pgbench_tps(lab, "-S", "-c", "4", "-n", "-T", str(seconds), timeout=seconds + 300)
    finally:
        guest.kill()


def full_copy(log: Path) -> dict:
    """Epoch 0 as the primary logged it: MiB of the initial stream from QEMU, MiB on the link
    and the seconds its encoding and send took (the checkpoint stream's own throughput, in
    MiB of guest state per second)."""
    text = log.read_text()
    mib = re.search(r"initial copy: (\d+) MiB", text)
    sent = re.search(r"full copy sent \(([\d.]+) MiB on the link\); the VM waited ([\d.]+) s",
                     text)
    if not (mib and sent):
        return {}
    m, wire_mib, secs = float(mib.group(1)), float(sent.group(1)), float(sent.group(2))
    return {"mib": m, "wire_mib": wire_mib, "send_s": secs,
            "mb_s": round(m * 1.048576 / secs, 1) if secs else None}


def protected(lab, base, interval, seconds, insecure=False, phases=("idle", "pgbench"), tag=""):
    """The full copy, then each phase's pauses and TPS; `phases` () measures the full copy
    alone."""
    run = RunLayout(base / f"i{interval}{'-insecure' if insecure else ''}{tag}")
    run.root.mkdir()
    cfg = write_config(run.config, lab, interval_ms=interval, insecure=insecure)
    sb = Daemon(lab, "standby", ["standby", str(cfg)], run.log("standby"))
    time.sleep(1)
    trace = run.primary_trace
    pr = Daemon(lab, "primary", ["protect", str(cfg), "--trace", str(trace)],
                run.log("primary"))
    status = run.primary_status
    out = {}
    try:
        wait_status(status, lambda s: s["epoch_acked"] >= 1, 300, "protection", [sb, pr])
        out["full_copy"] = full_copy(run.log("primary"))
        for phase in phases:
            time.sleep(2)
            c0, t0 = cpu_seconds(pr.proc.pid), time.monotonic()
            start = read_status(status)["epoch_captured"]
            if phase == "idle":
                time.sleep(seconds)
                tps = None
            else:
                pgbench_tps(lab, "-i", "-s", "1", "-q", timeout=300)
                c0, t0 = cpu_seconds(pr.proc.pid), time.monotonic()
                start = read_status(status)["epoch_captured"]
                tps = pgbench_tps(lab, "-S", "-c", "4", "-n", "-T", str(seconds),
                                  timeout=seconds + 300)
            t_end = time.time()
            time.sleep(1.2)
            st = read_status(status)
            rows = np.loadtxt(trace, delimiter=",", ndmin=2)
            rows = rows[(rows[:, 1] > start) & (rows[:, 0] <= t_end)]
            out[phase] = {"pause_ms": pct(rows[:, 2]), "dirty_pages": pct(rows[:, 3]),
                          "bytes_per_epoch": pct(rows[:, 5]),
                          "epochs": st["epoch_captured"] - start,
                          "daemon_cpu_s_per_s": round((cpu_seconds(pr.proc.pid) - c0)
                                                      / (time.monotonic() - t0), 3),
                          "tps": tps, "guest_clock": st.get("guest_clock")}
    finally:
        pr.kill()
        sb.kill()
        drop_images(run.root)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--intervals", default="50,100,250")
    ap.add_argument("--seconds", type=int, default=15)
    args = ap.parse_args()
    base = Path("/dev/shm") / f"remusdb-bench-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    result = {"intervals": {}}
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            base_tps = unprotected(lab, base, args.seconds)
            result["unprotected_tps"] = base_tps
            print(f"unprotected: pgbench -S {base_tps:.0f} TPS")
            for interval in map(int, args.intervals.split(",")):
                r = protected(lab, base, interval, args.seconds)
                r["tps_vs_unprotected"] = round(r["pgbench"]["tps"] / base_tps, 3)
                result["intervals"][interval] = r
                for phase in ("idle", "pgbench"):
                    p = r[phase]
                    print(f"{interval:4d} ms {phase:8s} pause p50 {p['pause_ms'].get('p50')} "
                          f"p99 {p['pause_ms'].get('p99')} ms, dirty pages p50 "
                          f"{p['dirty_pages'].get('p50')} p99 {p['dirty_pages'].get('p99')}, "
                          f"daemon CPU {p['daemon_cpu_s_per_s']} s/s"
                          + (f", {p['tps']:.0f} TPS ({r['tps_vs_unprotected']}x)"
                             if p["tps"] else ""))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    save("checkpoint", result)


if __name__ == "__main__":
    main()
