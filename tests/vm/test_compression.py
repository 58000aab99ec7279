"""ASC in the real pipeline: under a pgbench write load, with compression on, the standby's RAM
equals the primary's at checkpoints, and the pages really went out compressed."""

import pytest

from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.load import pgbench
from tests.vm.workload import stop

CHECKS = 8


@pytest.mark.parametrize("mode", ["xor-rle", "xor-lz4"])
def test_ram_equality_with_compression_under_write_load(lab, base, mode):
    load = None
    with Protected(lab, base, optimizations={"compression": mode, "page_cache": 0.05},
                   protect_args=("--verify-every", "3")) as p:
        try:
            init = pgbench(lab, "-i", "-s", "1", "-q")
            assert init.wait(300) == 0, init.stdout.read()
            load = pgbench(lab, "-c", "4", "-T", "600", "-n")  # TPC-B: updates and inserts
            start = p.status("standby")["verify"]["checks"]
            st = wait_status(p.standby_status, lambda s: s["verify"]["checks"] >= start + CHECKS,
                             400, f"{CHECKS} RAM equality checks under write load", p.daemons)
            assert st["verify"]["differing_groups"] == 0, st["verify"]
            comp = wait_status(p.primary_status, lambda s: s["compression"].get("pages", 0) > 0,
                               30, "compression statistics", p.daemons)["compression"]
        finally:
            stop(load)
    assert comp["mode"] == mode
    assert comp["cache"]["hits"] > 0 and comp["cache"]["used_pages"] > 0
    assert comp["cache"]["used_pages"] <= comp["cache"]["capacity_pages"]
    xor = comp["pages_by_codec"]["xor_rle" if mode == "xor-rle" else "xor_lz4"]
    assert xor > 0 and comp["ratio"] < 0.8, comp
    print(f"{mode}: {comp}")
