"""What a second protected VM on the same host pair costs the first, and the dashboard's picture.

Phases, each `--seconds` long, the same rate-limited pgbench select-only load on every running
VM (so each VM asks for the same work throughout): `one` pg1 protected alone; `two` pg1 and pg2
protected at once; `failover` pg1's primary killed (-9), pg1 runs on the standby host,
pg2 still protected. Per phase and VM: the checkpoint pause p50/p99 (from the primary's
per-checkpoint trace), CPU seconds per second of its processes (the primary node with its QEMU,
the standby node), and the load's TPS; every node's /metrics is scraped once a second all along
and drawn as the Grafana dashboard (remusdb/ops/dashboard.py) into --png. Needs root. Run:
    .venv/bin/python benchmarks/two_vms.py [--seconds 60] [--rate 10] [--png docs/dashboard.png]
    .venv/bin/python benchmarks/two_vms.py --redraw benchmarks/results/two_vms-....json
(the scrapes are saved beside the numbers, so the picture can be drawn again without a run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import save
from benchmarks.checkpoint_cost import cpu_per_s, descendants, sample
from remusdb import config as configmod
from remusdb.errors import RemusError
from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.load import TPS_RE, pgbench, pgbench_run
from remusdb.lab.net import Lab
from remusdb.ops import api, dashboard
from remusdb.vm import image_for, launch

SECOND = {"name": "pg2", "vm": {"ip": "10.213.0.11/24", "tap": "tap1"},
          "primary": {"port": 7798, "api_port": 7800},
          "standby": {"port": 7797, "api_port": 7801}}


class Scraper(threading.Thread):
    """Every node's /metrics once a second, from the client host, as dashboard scrapes."""

    def __init__(self, lab: Lab, cfgs: list[configmod.Config]):
        super().__init__(name="scraper", daemon=True)
        self.lab, self.cfgs = lab, cfgs
        self.scrapes: list[dashboard.Scrape] = []
        self.done = threading.Event()

    def run(self) -> None:
        with self.lab.inside("client"):
            while not self.done.wait(1.0):
                t = time.time()
                text = []
                for cfg in list(self.cfgs):
                    for host in ("primary", "standby"):
                        try:
                            code, body = api.get(*cfg.api_address(host), "/metrics", 1.0)
                        except OSError:
                            continue
                        if code == 200:
                            text.append(body.decode())
                if text:
                    t, merged = dashboard.parse(t, "\n".join(text))
                    self.scrapes.append((t, merged))


def pauses(trace: Path, t0: float, t1: float) -> dict:
    ms = []
    for line in trace.read_text().splitlines() if trace.exists() else []:
        f = line.split(",")
        if t0 <= float(f[0]) < t1:
            ms.append(float(f[2]))
    if not ms:
        return {}
    return {"n": len(ms), "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2)}


def load(lab, ip: str, seconds: float, rate: int) -> subprocess.Popen:
    return pgbench(lab, "-S", "-n", "-c", "2", "-R", str(rate), "-T", str(int(seconds)),
                   vm_ip=ip)


def tps(p: subprocess.Popen) -> float | None:
    out = p.communicate(timeout=300)[0]
    m = TPS_RE.search(out)
    return float(m.group(1)) if m else None


def phase(name: str, lab, vms: dict[str, Protected], ips: dict[str, str], seconds: float,
          rate: int, roots: dict[str, int]) -> dict:
    roles = descendants(roots)
    loads = {vm: load(lab, ips[vm], seconds, rate) for vm in vms}
    t0, a = time.time(), sample(roles, None)
    time.sleep(seconds)
    b, t1 = sample(roles, None), time.time()
    cpu = cpu_per_s(a, b)["process"]
    out = {"seconds": round(t1 - t0, 1), "machine_busy": cpu_per_s(a, b)["machine"]}
    for vm, p in vms.items():
        out[vm] = {"pause_ms": pauses(p.layout.primary_trace, t0, t1),
                   "cpu_s_per_s": {k.split("/", 1)[1]: v for k, v in cpu.items()
                                   if k.startswith(vm + "/")},
                   "tps": tps(loads[vm])}
    print(f"{name}: " + "; ".join(
        f"{vm} pause p50 {r['pause_ms'].get('p50')} ms, CPU {r['cpu_s_per_s']}, "
        f"TPS {r['tps']}" for vm, r in out.items() if isinstance(r, dict) and "tps" in r))
    return out


def run(seconds: float, rate: int, png: Path) -> dict:
    """The run's daemons, logs and guest images live in RAM for its length only (kept, and
    named, when it fails or REMUSDB_KEEP_RUN is set)."""
    base = Path(tempfile.mkdtemp(prefix="remusdb-two-", dir="/dev/shm"))
    try:
        result = measure(base, seconds, rate, png)
    except BaseException:
        print(f"kept the run's files: {base}")
        raise
    if os.environ.get("REMUSDB_KEEP_RUN"):
        print(f"kept the run's files: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return result


def measure(base: Path, seconds: float, rate: int, png: Path) -> dict:
    trace = ("--trace",)
    with Lab() as lab:
        lab.add_tap("primary")
        a = Protected(lab, base / "a", interval_ms=100)
        a.protect_args = [*trace, str(a.layout.primary_trace)]
        b = Protected(lab, base / "b", interval_ms=100, **SECOND)  # type: ignore[arg-type]
        b.protect_args = [*trace, str(b.layout.primary_trace)]
        cb = b.config()
        launch(cb, image_for(cb), base / "warm", netns=lab.ns("primary")).kill()
        ips = {"pg1": a.config().vm.address, "pg2": cb.vm.address}
        scraper = Scraper(lab, [a.config()])
        marks: dict[str, float] = {}
        result: dict = {"seconds": seconds, "rate": rate}
        with a:
            pgbench_run(lab, "-i", "-s", "1", "-q", timeout=900)
            scraper.start()
            roots = {"pg1/primary": a.primary.proc.pid, "pg1/standby": a.standby.proc.pid}
            result["one"] = phase("one", lab, {"pg1": a}, ips, seconds, rate, roots)
            with b:
                marks["pg2 protected"] = time.time()
                scraper.cfgs.append(cb)
                p = pgbench(lab, "-i", "-s", "1", "-q", vm_ip=ips["pg2"])
                if p.wait(900) != 0:
                    raise RemusError(f"pgbench -i on pg2 failed: {p.stdout.read()[-500:]}")
                roots.update({"pg2/primary": b.primary.proc.pid,
                              "pg2/standby": b.standby.proc.pid})
                result["two"] = phase("two", lab, {"pg1": a, "pg2": b}, ips, seconds, rate,
                                      roots)
                marks["pg1 primary killed"] = time.time()
                a.primary.kill(signal.SIGKILL)
                wait_status(a.standby_status, lambda s: s["state"] == "active", 60,
                            "pg1 failover", [a.standby])
                del roots["pg1/primary"]
                result["failover"] = phase("after pg1's failover", lab, {"pg2": b}, ips,
                                           seconds / 2, rate, roots)
                time.sleep(3)
        scraper.done.set()
        scraper.join(5)
    result["marks"] = marks
    result["scrapes"] = [[t, [[n, list(labels), v] for (n, labels), v in samples.items()]]
                         for t, samples in scraper.scrapes]
    draw(result, png)
    one, two = result["one"]["pg1"], result["two"]["pg1"]
    result["pg1_second_vm_cost"] = {
        "pause_p50_ratio": round(two["pause_ms"]["p50"] / one["pause_ms"]["p50"], 2)
        if one["pause_ms"] and two["pause_ms"] else None,
        "cpu_ratio": round(sum(two["cpu_s_per_s"].values())
                           / max(1e-9, sum(one["cpu_s_per_s"].values())), 2)}
    print(f"pg1 with a second VM against alone: {result['pg1_second_vm_cost']}")
    return result


def draw(result: dict, png: Path) -> None:
    scrapes = [(t, {(n, tuple(tuple(kv) for kv in labels)): v for n, labels, v in samples})
               for t, samples in result["scrapes"]]
    dashboard.render(scrapes, png, "remusdb dashboard, drawn from a real run: pg1 alone, then "
                     "pg1 + pg2, then pg1's primary killed", result["marks"])
    print(f"dashboard picture: {png} ({len(scrapes)} scrapes)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=int, default=10, help="pgbench -R per VM (TPS asked)")
    ap.add_argument("--png", type=Path, default=Path("docs/dashboard.png"))
    ap.add_argument("--redraw", type=Path, metavar="JSON", help="draw the picture from a "
                    "saved run's scrapes, run nothing")
    args = ap.parse_args(argv)
    if args.redraw:
        draw(json.loads(args.redraw.read_text()), args.png)
        return 0
    save("two_vms", run(args.seconds, args.rate, args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
