"""`remusdb drill reprotect`: failover and reprotection, N cycles, the ledger running the whole
time. Each cycle: kill -9 the host that runs the VM (its node and QEMU), the other fails over,
the killed host's node restarts, rejoins as standby and is resynced; RAM and disk are verified
equal, the ledger is checked live; then the next cycle kills the new primary. Thesis figure
5.6's shape: throughput over time with the kills and the reprotections marked."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from remusdb.disk.image import allocated_bytes
from remusdb.drill import workload
from remusdb.errors import RemusError
from remusdb.lab.daemons import Daemon, wait_status, write_config
from remusdb.lab.layout import KeptOnFailure, RunLayout
from remusdb.lab.net import VM_IP, Lab
from remusdb.reprotect.node import other

VERIFY = ["--verify-every", "5", "--verify-count", "2"]


class _Cluster:
    """The two hosts' node daemons of one drill, by host."""

    def __init__(self, lab, run: RunLayout, cfg: Path):
        self.lab, self.run, self.cfg = lab, run, cfg
        self.daemons: dict[str, Daemon] = {}
        self.starts = 0

    def start(self, host: str, how: str) -> None:
        self.starts += 1
        args = {"protect": ["protect", str(self.cfg), *VERIFY],
                "standby": ["standby", str(self.cfg), *VERIFY],
                "node": ["node", str(self.cfg), "--host", host, *VERIFY]}[how]
        self.daemons[host] = Daemon(self.lab, host, args,
                                    self.run.log(f"{host}-{self.starts}"))

    def kill(self, host: str) -> None:
        """kill -9 of the host's node (its QEMU dies with it); no longer watched."""
        self.daemons.pop(host).kill(signal.SIGKILL)

    def node(self, host: str, pred, timeout: float, what: str) -> dict:
        return wait_status(self.run.status_at(host, "node"), pred, timeout, what,
                           list(self.daemons.values()))

    def stop(self) -> None:
        for d in self.daemons.values():
            d.kill()


def drill(db: str = "postgres", cycles: int = 5, interval_ms: int = 100, clients: int = 4,
          out: Path | None = None, say=print) -> dict:
    with KeptOnFailure("remusdb-reprotect-", say) as kept, Lab() as lab:
        lab.add_tap("primary")
        run = RunLayout(kept.base)
        cluster = _Cluster(lab, run, write_config(run.config, lab, interval_ms=interval_ms))
        try:
            result = _cycles(lab, cluster, db, cycles, clients, say)
        finally:
            cluster.stop()
        result["ok"] = kept.ok = all(c["ledger"]["ok"] and c["verify_ok"]
                                     for c in result["cycles"]) and result["final_ledger"]["ok"]
        if out is not None:
            _save(result, out, say)
        return result


def _cycles(lab, cluster: _Cluster, db: str, cycles: int, n_clients: int, say) -> dict:
    say("protecting the VM (node daemons on both hosts) ...")
    cluster.start("standby", "standby")
    wait_status(cluster.run.status_at("standby", "standby"), lambda s: True, 60,
                "standby start", list(cluster.daemons.values()))
    cluster.start("primary", "protect")
    cluster.node("primary", lambda s: s["state"] == "primary-protected", 300, "protection")

    def open_conn():
        with lab.inside("client"):
            return workload.connect(db, VM_IP)

    clients, stop = workload.start(db, VM_IP, open_conn, n_clients)
    t_start = time.monotonic()
    rows: list[dict] = []
    marks: list[tuple[str, float]] = []
    primary = "primary"
    try:
        time.sleep(5)
        for i in range(cycles):
            row = _cycle(cluster, primary, clients, open_conn, marks, t_start)
            row["cycle"] = i + 1
            rows.append(row)
            say(describe(row))
            primary = other(primary)
        time.sleep(3)
    finally:
        stop.set()
        for c in clients:
            c.join(30)
    acked = set().union(*(c.acked for c in clients))
    ops = [o for c in clients for o in c.ops]
    return {"db": db, "cycles": rows, "marks": marks,
            "final_ledger": workload.check(open_conn, acked),
            "timeline": timeline(ops, t_start)}


def _cycle(cluster: _Cluster, victim: str, clients, open_conn, marks, t_start) -> dict:
    survivor = other(victim)
    before = sum(len(c.acked) for c in clients)
    killed = time.monotonic()
    cluster.kill(victim)
    marks.append(("kill", round(killed - t_start, 2)))
    cluster.node(survivor, lambda s: s["state"] == "primary-unprotected", 120, "the failover")
    fo = wait_status(cluster.run.status_at(survivor, "standby"), lambda s: s["failover"],
                     30, "the failover report")["failover"]
    t_failed_over = time.monotonic()
    sessions_before = len(_node(cluster, survivor).get("sessions", []))
    cluster.start(victim, "node")  # the host is back: its node daemon rejoins by itself
    st = cluster.node(survivor, lambda s: s["state"] == "primary-protected"
                      and len(s["sessions"]) > sessions_before, 300, "reprotection")
    protected = time.monotonic()
    marks.append(("protected", round(protected - t_start, 2)))
    session = st["sessions"][-1]
    v = wait_status(cluster.run.status_at(victim, "standby"),
                    lambda s: s["verify"].get("disk_checks", 0) >= 1, 300,
                    "RAM and disk verified", list(cluster.daemons.values()))["verify"]
    acked = set().union(*(c.acked for c in clients))  # before the read: all must be there
    ledger = workload.check(open_conn, acked)
    seed = session["seed"]
    return {"killed": victim, "failover_running_s": fo.get("running_s"),
            "failover_decided_s": round(t_failed_over - killed, 2),
            "kill_to_protected_s": round(protected - killed, 1),
            "seed_to_protected_s": session.get("to_protected_s"),
            "disk_path": seed.get("path"), "resync_sent_bytes": seed.get("sent_bytes"),
            "resync_s": seed.get("seconds"), "changed_bytes": seed.get("changed_bytes"),
            "differing_blocks": seed.get("differing_blocks"),
            "full_copy_bytes": _allocated(cluster, survivor),
            "ram_copy_s": _ram_copy_s(cluster, survivor),
            "verify": v, "verify_ok": v["differing_groups"] == 0
            and v["differing_disk_chunks"] == 0 and v.get("disk_chunks_checked", 0) > 0,
            "acked_before_kill": before,
            "ledger": ledger}


def _node(cluster: _Cluster, host: str) -> dict:
    return wait_status(cluster.run.status_at(host, "node"), lambda s: True, 10, "node status")


def _allocated(cluster: _Cluster, host: str) -> int | None:
    """What a full copy of the new primary's disk would have sent (its allocated bytes)."""
    path = cluster.run.role_dir(host) / "store" / "disk.raw"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return allocated_bytes(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _ram_copy_s(cluster: _Cluster, host: str) -> float | None:
    """QEMU's initial RAM copy of the last session, from the node's log."""
    d = cluster.daemons.get(host)
    for line in reversed(d.text().splitlines() if d else []):
        if "initial copy:" in line and " in " in line:
            try:
                return float(line.split(" in ")[1].split(" s")[0])
            except (IndexError, ValueError):
                return None
    return None


def timeline(ops: list, t0: float) -> list[int]:
    """Committed transfers per second since the drill began."""
    ends = [o.end - t0 for o in ops if o.ok and o.end >= t0]
    if not ends:
        return []
    out = [0] * (int(max(ends)) + 1)
    for e in ends:
        out[int(e)] += 1
    return out


def describe(c: dict) -> str:
    led = c["ledger"]
    return (f"cycle {c['cycle']}: killed {c['killed']}; failover {c['failover_running_s']} s; "
            f"disk {c['disk_path']} {(c['resync_sent_bytes'] or 0) / 2**20:.1f} MiB in "
            f"{c['resync_s']} s (written since failover {(c['changed_bytes'] or 0) / 2**20:.1f}"
            f" MiB; full copy {(c['full_copy_bytes'] or 0) / 2**20:.0f} MiB); RAM copy "
            f"{c['ram_copy_s']} s; kill -> protected {c['kill_to_protected_s']} s; verify "
            f"{'equal' if c['verify_ok'] else 'DIFFERENT'}; ledger "
            f"{'ok' if led['ok'] else 'FAIL'} ({led['acknowledged']} acked, {led['lost']} lost)")


def _save(result: dict, out: Path, say) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    js, png = out / f"drill-reprotect-{stamp}.json", out / f"drill-reprotect-{stamp}.png"
    js.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, png)
    say(f"saved {js} and {png}")


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tps = result["timeline"]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(range(len(tps)), tps, lw=1, color="tab:blue")
    for what, t in result["marks"]:
        ax.axvline(t, color="tab:red" if what == "kill" else "tab:green", lw=1, ls="--")
    ax.set_xlabel("seconds")
    ax.set_ylabel("transfers committed per second")
    ax.set_title(f"remusdb drill reprotect ({result['db']}): red = kill -9 of the primary, "
                 "green = protected again")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(result: dict) -> dict:
    rows = result["cycles"]
    if not rows:
        raise RemusError("no cycle ran")
    return {"cycles": len(rows), "lost": sum(c["ledger"]["lost"] for c in rows)
            + result["final_ledger"]["lost"],
            "violations": sum((not c["ledger"]["total_ok"]) + len(c["ledger"]
                                                                  ["partial_accounts"])
                              for c in rows),
            "verified_equal": sum(c["verify_ok"] for c in rows),
            "kill_to_protected_max_s": max(c["kill_to_protected_s"] for c in rows),
            "ok": result["ok"]}
