"""The failover drill end to end (the same code as `remusdb drill failover` / `make demo`):
kill -9 of the primary under the ledger workload keeps every acknowledged commit, and without
commit protection every client connection too."""

import pytest

from remusdb.drill import run as drillrun


@pytest.mark.parametrize("db,opts,kill_at", [("postgres", {"asc", "rt"}, "mid-transfer"),
                                             ("postgres", {"asc", "rt", "cp"}, "random"),
                                             ("mariadb", {"asc", "rt"}, "mid-epoch")])
def test_drill_keeps_every_acknowledged_commit(db, opts, kill_at):
    lines = []
    r = drillrun.drill(db, 100, opts, kill_at, warmup_s=4, seed=1,
                       say=lines.append)
    print("\n".join(lines + drillrun.describe(r)))
    led = r["ledger"]
    assert led["acknowledged"] > 0 and led["lost"] == 0, led
    assert led["total_ok"] and not led["partial_accounts"], led
    # the clients committed again after the failover, on the standby
    assert r["first_success_s"] is not None and r["downtime_s"] is not None, r
    if "cp" in opts:
        assert "error" not in r["failover"]["cp_recovery"], r["failover"]
    else:  # output commit alone: the clients' TCP state is the resumed guest's
        assert r["connections"]["broken"] == 0 and r["connections"]["survived"] > 0, r


def test_reprotect_drill_two_cycles(tmp_path):
    """`remusdb drill reprotect --cycles 2`: A -> B -> A, each time the killed host rejoins,
    is resynced (not copied whole), verified equal, and no acknowledged transfer is lost."""
    from remusdb.drill import cycles
    lines = []
    r = cycles.drill("postgres", cycles=2, out=tmp_path, say=lines.append)
    print("\n".join(lines))
    assert len(r["cycles"]) == 2 and [c["killed"] for c in r["cycles"]] == ["primary",
                                                                            "standby"]
    for c in r["cycles"]:
        assert c["ledger"]["ok"] and c["ledger"]["acknowledged"] > 0, c["ledger"]
        assert c["verify_ok"], c["verify"]
        assert c["disk_path"] == "resync", c
        assert c["resync_sent_bytes"] <= 2 * c["changed_bytes"] + (8 << 20), c
        assert c["resync_sent_bytes"] < c["full_copy_bytes"] / 10, c
    assert r["final_ledger"]["ok"] and r["ok"]
    png = list(tmp_path.glob("drill-reprotect-*.png"))
    assert len(png) == 1 and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(r["timeline"]) >= r["final_ledger"]["acknowledged"] * 0.9


def _fault_drill(fault: str, kill_at: str = "random", witness: bool = False) -> dict:
    from remusdb.drill.faults import FAULTS
    lines: list[str] = []
    r = drillrun.drill("postgres", 100, {"asc", "rt"}, kill_at, warmup_s=4, seed=2,
                       say=lines.append, fault=FAULTS[fault], witness=witness)
    print("\n".join(lines + drillrun.describe(r)))
    led = r["ledger"]
    assert led["acknowledged"] > 0 and led["lost"] == 0, led
    assert led["total_ok"] and not led["partial_accounts"], led
    assert r["copies"]["second_copies"] == 0 and r["copies"]["samples"] > 50, r["copies"]
    assert r["first_success_s"] is not None, r
    assert r["as_expected"] and r["ok"], r
    return r


def test_a_qemu_crash_alone_fails_over_within_two_seconds():
    """SIGKILL of the primary's QEMU, its daemon alive: the daemon says VM_LOST (not BYE), the
    standby runs the last checkpoint, the held output never goes out."""
    r = _fault_drill("qemu-crash", "mid-epoch")
    assert r["outcome"] == "failover" and r["resumed_after_s"] <= 2.0, r
    assert "VM is gone" in r["failover"]["reason"], r["failover"]


def test_an_operator_stop_of_the_whole_primary_host_moves_the_vm():
    """SIGTERM to the primary daemon and its QEMU at once (systemctl stop): the VM goes on at
    the standby, from the last checkpoint, nothing acknowledged lost."""
    r = _fault_drill("operator-stop")
    assert r["outcome"] == "failover", r


def test_a_frozen_primary_without_a_fence_keeps_the_vm_and_is_protected_again():
    r = _fault_drill("host-freeze")
    assert r["outcome"] == "primary-stays" and not r["failover"], r


def test_a_standby_crash_leaves_the_primary_running_and_protection_resumes():
    r = _fault_drill("standby-crash", "mid-transfer")
    assert r["outcome"] == "primary-stays", r
    assert r["connections"]["broken"] == 0, r["connections"]


def test_a_full_standby_disk_is_never_a_failover_and_protection_resumes_once_freed():
    r = _fault_drill("standby-disk-full")
    assert r["outcome"] == "primary-stays", r


def test_a_standby_killed_mid_failover_fails_over_again_from_its_checkpoint():
    """Also the manual failover's QEMU outliving the control client's thread."""
    r = _fault_drill("failover-crash")
    assert r["outcome"] == "failover" and r["failover"]["reason"] == "manual failover", r


# With the witness (etcd on a lab host of its own, lease 3 s): partitions never make two copies.
TTL_S = 3


@pytest.mark.parametrize("fault", ["primary-isolated", "host-freeze"])
def test_a_cut_off_or_frozen_primary_is_replaced_within_the_lease_without_an_operator(fault):
    """No fence command: the primary fences itself when it cannot renew its lease, the
    standby fails over once it holds the key (a frozen primary wakes mute and stale)."""
    r = _fault_drill(fault, witness=True)
    assert r["outcome"] == "failover", r
    assert r["resumed_after_s"] <= TTL_S + 2, r
    assert "the witness's key taken" in r["failover"]["reason"], r["failover"]


def test_a_cut_between_the_hosts_keeps_the_primary_that_holds_the_key():
    """Primary and standby cut apart, both reaching the witness: the primary says it runs
    unprotected (so the standby's checkpoint is no longer current) and serves on at once."""
    r = _fault_drill("link-cut", witness=True)
    assert r["outcome"] == "primary-stays" and not r["failover"], r


def test_the_witness_unreachable_from_both_stops_both_and_loses_nothing():
    """Nobody can hold the key: the primary fences itself (its VM killed: the standby holds
    its current checkpoint), nobody serves; once etcd is back the standby takes over."""
    r = _fault_drill("witness-cut-both", witness=True)
    assert r["outcome"] == "failover", r
    assert r["resumed_after_s"] >= 2 * TTL_S, r  # not before the witness came back
