"""RT against the real guest: under a scan that reads the database from disk, the standby's RAM
equals the primary's with RT on as with it off, and RT sends fewer bytes per dirty page."""

from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.load import cold_scans, load_pgbench


def scan_run(lab, base, rt: bool) -> dict:
    with Protected(lab, base / f"rt-{rt}", optimizations={"compression": "off", "rt": rt},
                   protect_args=("--verify-every", "4")) as p:
        load_pgbench(lab, scale=3)
        before = p.status("primary")["totals"]
        checks = p.status("standby")["verify"]["checks"]
        cold_scans(lab, p.layout.primary_vm.agent, rounds=3)
        st = wait_status(p.standby_status, lambda s: s["verify"]["checks"] >= checks + 3, 120,
                         "RAM checks during the scans", p.daemons)
        pst = p.status("primary")
        after = pst["totals"]
        pages = after["dirty_pages"] - before["dirty_pages"]
        return {"bytes_per_page": (after["sent_bytes"] - before["sent_bytes"]) / max(pages, 1),
                "pages": pages, "verify": st["verify"], "rt": pst["read_tracking"]}


def test_rt_on_and_off_same_ram_fewer_bytes(lab, base):
    on = scan_run(lab, base, rt=True)
    off = scan_run(lab, base, rt=False)
    print(f"RT on: {on}\nRT off: {off}")
    for r in (on, off):
        assert r["verify"]["differing_groups"] == 0 and r["verify"]["checks"] > 0, r
    assert off["rt"] == {"enabled": False}
    assert on["rt"]["references"] > 0 and on["rt"]["mismatched"] == 0
    assert on["bytes_per_page"] < 0.9 * off["bytes_per_page"], (on, off)
