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
