"""RT against the real guest: under a scan that reads the database from disk, the standby's RAM
equals the primary's with RT on as with it off, and RT sends fewer bytes per dirty page."""

import time

from remusdb.checkpoint.status import read_status
from remusdb.hypervisor.agent import GuestAgent
from remusdb.labrun import Daemon, wait_status, write_config
from tests.vm.workload import pgbench, stop

SCAN = "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE filler <> 'x';\n"


def scan_run(lab, base, rt: bool) -> dict:
    run = base / ("rt-on" if rt else "rt-off")
    run.mkdir()
    cfg = write_config(run / "vm.toml", lab, interval_ms=100,
                       optimizations={"compression": "off", "rt": rt})
    standby = Daemon(lab, "standby", ["standby", str(cfg)], run / "standby.log")
    primary = None
    sb_status, pr_status = run / "pg1/standby/standby.status.json", \
        run / "pg1/primary/primary.status.json"
    try:
        wait_status(sb_status, lambda s: True, 60, "standby start", [standby])
        primary = Daemon(lab, "primary", ["protect", str(cfg), "--verify-every", "4"],
                         run / "primary.log")
        wait_status(sb_status, lambda s: s["epoch_committed"] >= 1, 300, "first checkpoint",
                    [standby, primary])
        init = pgbench(lab, "-i", "-s", "3", "-q")
        assert init.wait(300) == 0, init.stdout.read()
        # Hint bits set and on disk: a scan then leaves its buffer copies equal to the blocks.
        prep = run / "prep.sql"
        prep.write_text("VACUUM FREEZE pgbench_accounts;\nCHECKPOINT;\n")
        p = pgbench(lab, "-n", "-t", "1", "-f", str(prep))
        assert p.wait(300) == 0, p.stdout.read()
        time.sleep(1)
        before = read_status(pr_status)["totals"]
        checks = read_status(sb_status)["verify"]["checks"]
        script = run / "scan.sql"
        script.write_text(SCAN)
        agent = GuestAgent(run / "pg1/primary/qga.sock")
        agent.wait_ready(30)
        try:
            for _ in range(3):  # each scan reads the table from disk again
                r = agent.exec(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
                assert r.exitcode == 0, r
                scan = pgbench(lab, "-n", "-c", "1", "-t", "1", "-f", str(script))
                assert scan.wait(300) == 0, scan.stdout.read()
        finally:
            agent.close()
        time.sleep(1)
        st = wait_status(sb_status, lambda s: s["verify"]["checks"] >= checks + 3, 120,
                         "RAM checks during the scan", [standby, primary])
        pst = read_status(pr_status)
        after = pst["totals"]
        pages = after["dirty_pages"] - before["dirty_pages"]
        return {"bytes_per_page": (after["sent_bytes"] - before["sent_bytes"]) / max(pages, 1),
                "pages": pages, "verify": st["verify"], "rt": pst["read_tracking"]}
    finally:
        stop(primary, standby)


def test_rt_on_and_off_same_ram_fewer_bytes(lab, base):
    on = scan_run(lab, base, rt=True)
    off = scan_run(lab, base, rt=False)
    print(f"RT on: {on}\nRT off: {off}")
    for r in (on, off):
        assert r["verify"]["differing_groups"] == 0 and r["verify"]["checks"] > 0, r
    assert off["rt"] == {"enabled": False}
    assert on["rt"]["references"] > 0 and on["rt"]["mismatched"] == 0
    assert on["bytes_per_page"] < 0.9 * off["bytes_per_page"], (on, off)
