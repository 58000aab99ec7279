"""`remusdb demo` (`make demo`): protect a database VM, kill its host, watch the standby take over.

Three hosts as network namespaces (primary, standby, client) on one switch. The primary runs the
VM (PostgreSQL + MariaDB) under `remusdb protect`, the standby runs `remusdb standby`; the client
queries the VM's address. Then the primary daemon and its QEMU get SIGKILL, and the client
queries the same address again, now answered by the VM resumed on the standby.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from remusdb import dbclient
from remusdb.checkpoint.status import read_status
from remusdb.config import Config
from remusdb.hostnet import Lab
from remusdb.image import builder
from remusdb.labrun import Daemon, wait_status, write_config
from remusdb.vm import image_for


def run(interval_ms: int = 100, out=sys.stdout) -> int:
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    image = image_for(Config())
    say(f"guest image: {image.root} (recipe {builder.recipe_key()})")
    base = Path(tempfile.mkdtemp(prefix="remusdb-demo-", dir="/dev/shm"))
    rc = 1
    try:
        with Lab() as lab:
            say("hosts: " + ", ".join(f"{h.name} {h.address}" for h in lab.members.values()))
            lab.add_tap("primary")
            cfg = write_config(base / "vm.toml", lab, interval_ms=interval_ms)
            standby = Daemon(lab, "standby", ["standby", str(cfg)], base / "standby.log")
            primary = Daemon(lab, "primary", ["protect", str(cfg)], base / "primary.log")
            daemons = [standby, primary]
            try:
                rc = _drill(lab, base, daemons, say)
            finally:
                for d in daemons:
                    d.kill()
    finally:
        if rc == 0:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"kept the daemons' logs: {base}/primary.log, {base}/standby.log")
    return rc


def _drill(lab, base: Path, daemons, say) -> int:
    standby, primary = daemons
    pstatus = base / "pg1/primary/primary.status.json"
    sstatus = base / "pg1/standby/standby.status.json"
    t0 = time.monotonic()
    wait_status(pstatus, lambda s: s.get("epoch_acked", -1) >= 1, 300, "protection", daemons)
    say(f"VM pg1 at 10.213.0.10 protected after {time.monotonic() - t0:.1f} s "
        "(boot from snapshot + full RAM copy to the standby)")
    with lab.inside("client"):
        before = dbclient.query_one(dbclient.postgres, "10.213.0.10",
                                    "SELECT pg_postmaster_start_time()::text")
        my = dbclient.query_one(dbclient.mariadb, "10.213.0.10", "SELECT VERSION()")
    say(f"client: PostgreSQL up since {before}; MariaDB {my}")
    time.sleep(3)
    st = read_status(pstatus)
    say(f"checkpoints: epoch {st['epoch_captured']} captured, {st['epoch_acked']} acked; "
        f"pause ms {st['pause_ms']}; dirty pages {st['dirty_pages']}")
    say("kill -9 the primary daemon (its QEMU dies with it) ...")
    primary.kill(signal.SIGKILL)
    killed = time.monotonic()
    st = wait_status(sstatus, lambda s: s["state"] == "active", 60, "failover", [standby])
    fo = st["failover"]
    say(f"standby: failed over to epoch {fo['epoch']}, VM running {fo['running_s']} s after "
        "the decision")
    rec = fo.get("cp_recovery") or {}
    if "terminated" in rec:
        say(f"commit protection: {rec['terminated']} session(s) that were not committing "
            f"aborted and closed in {rec['ms']:.0f} ms")
    with lab.inside("client"):
        after = dbclient.query_one(dbclient.postgres, "10.213.0.10",
                                   "SELECT pg_postmaster_start_time()::text", timeout=60)
        my = dbclient.query_one(dbclient.mariadb, "10.213.0.10", "SELECT 1", timeout=60)
    say(f"client: PostgreSQL answers again {time.monotonic() - killed:.2f} s after the kill, "
        f"same server (up since {after}: {'yes' if after == before else 'NO'}); "
        f"MariaDB answers: {my == 1}")
    return 0 if after == before else 1
