"""ASC in the real pipeline: under a pgbench write load, with compression on, the standby's RAM
equals the primary's at checkpoints, and the pages really went out compressed."""

import pytest

from remusdb.checkpoint.status import read_status
from remusdb.labload import pgbench
from remusdb.labrun import Daemon, wait_status, write_config
from tests.vm.workload import stop

CHECKS = 8


@pytest.mark.parametrize("mode", ["xor-rle", "xor-lz4"])
def test_ram_equality_with_compression_under_write_load(lab, base, mode):
    cfg = write_config(base / "vm.toml", lab, interval_ms=100,
                       optimizations={"compression": mode, "page_cache": 0.05})
    standby = Daemon(lab, "standby", ["standby", str(cfg)], base / "standby.log")
    primary = load = None
    sb_status = base / "pg1/standby/standby.status.json"
    pr_status = base / "pg1/primary/primary.status.json"
    try:
        wait_status(sb_status, lambda s: True, 60, "standby start", [standby])
        primary = Daemon(lab, "primary", ["protect", str(cfg), "--verify-every", "3"],
                         base / "primary.log")
        wait_status(sb_status, lambda s: s["epoch_committed"] >= 1, 300, "first checkpoint",
                    [standby, primary])
        init = pgbench(lab, "-i", "-s", "1", "-q")
        assert init.wait(300) == 0, init.stdout.read()
        load = pgbench(lab, "-c", "4", "-T", "600", "-n")  # TPC-B: updates and inserts
        start = read_status(sb_status)["verify"]["checks"]
        st = wait_status(sb_status, lambda s: s["verify"]["checks"] >= start + CHECKS, 400,
                         f"{CHECKS} RAM equality checks under write load", [standby, primary])
        assert st["verify"]["differing_groups"] == 0, st["verify"]
        comp = wait_status(pr_status, lambda s: s["compression"].get("pages", 0) > 0, 30,
                           "compression statistics", [primary])["compression"]
        assert comp["mode"] == mode
        assert comp["cache"]["hits"] > 0 and comp["cache"]["used_pages"] > 0
        assert comp["cache"]["used_pages"] <= comp["cache"]["capacity_pages"]
        xor = comp["pages_by_codec"]["xor_rle" if mode == "xor-rle" else "xor_lz4"]
        assert xor > 0 and comp["ratio"] < 0.8, comp
        print(f"{mode}: {comp}")
    finally:
        stop(load, primary, standby)
