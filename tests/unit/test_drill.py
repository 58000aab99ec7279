"""The drill's verdicts without a VM: downtime, connection survival, the ledger checks (which
must catch a lost acknowledged commit, a half-applied transfer, money made), and bad arguments."""

import pytest

from remusdb.drill import command
from remusdb.drill.report import Op, connections, downtime, ledger_check, outage
from remusdb.errors import RemusError

KILL = 100.0


def test_downtime_from_first_hit_to_first_commit_after_the_kill():
    ops = [Op(0, 1, 98.0, 99.0, True, 1),
           Op(0, 1, 99.5, 101.5, False, 2),  # caught by the kill: the first hit (99.5)
           Op(1, 1, 99.8, 102.0, True, 3),  # in flight, then committed after failover
           Op(0, 2, 101.6, 103.0, True, 4)]
    d = downtime(ops, KILL)
    assert d == {"downtime_s": 2.5, "first_hit_s": -0.5, "first_success_s": 2.0}
    assert downtime([Op(0, 1, 90.0, 91.0, True, 1)], KILL)["downtime_s"] is None


def test_an_outage_that_begins_after_the_fault_is_measured():
    # A partition: commits go on for 2 s (the primary's lease), then none until the failover.
    ops = [Op(0, 1, 99.0, 99.4, True, 1), Op(0, 1, 99.5, 100.5, True, 2),
           Op(0, 1, 100.6, 102.0, True, 3), Op(0, 1, 102.1, 109.0, False, 4),
           Op(0, 2, 109.1, 109.6, True, 5), Op(0, 2, 109.7, 109.9, True, 6)]
    assert downtime(ops, KILL)["downtime_s"] == 1.0  # the in-flight op committed: blind to it
    assert outage(ops, KILL) == 7.6  # 102.0 → 109.6
    assert outage([Op(0, 1, 99.0, 99.4, True, 1)], KILL) is None
    assert outage([Op(0, 1, 100.5, 101.0, True, 1)], KILL) == 1.0  # from the fault itself


def test_connections_survived_or_broke():
    ops = [Op(0, 1, 99.0, 99.5, True, 1), Op(0, 1, 99.6, 103.0, True, 2),  # survived
           Op(1, 1, 99.0, 99.2, True, 3), Op(1, 1, 99.3, 101.25, False, 4),  # broke
           Op(1, 2, 102.0, 102.5, True, 5)]
    assert connections(ops, KILL) == {"survived": 1, "broken": 1, "time_to_error_s": [1.25]}
    # an operation in flight at the kill that completes, then the session is aborted: broke
    later = [Op(0, 1, 99.0, 100.5, True, 1), Op(0, 1, 100.6, 103.8, False, 2)]
    assert connections(later, KILL) == {"survived": 0, "broken": 1, "time_to_error_s": [3.8]}


def test_ledger_check_finds_what_a_failover_could_break():
    balances = {0: 990, 1: 1010, 2: 1000}
    ledger = [(7, 0, 1, 10)]
    assert ledger_check({7}, ledger, balances, 1000)["ok"]
    lost = ledger_check({7, 8}, ledger, balances, 1000)
    assert not lost["ok"] and lost["lost"] == 1 and lost["lost_ids"] == [8]
    half = ledger_check({7}, ledger, {0: 990, 1: 1000, 2: 1000}, 1000)  # credit missing
    assert not half["ok"] and not half["total_ok"] and half["partial_accounts"] == [1]
    swapped = ledger_check({7}, ledger, {0: 1000, 1: 1010, 2: 990}, 1000)  # wrong accounts
    assert not swapped["ok"] and swapped["total_ok"] and swapped["partial_accounts"] == [0, 2]
    extra = ledger_check(set(), ledger, balances, 1000)  # committed, never acknowledged: fine
    assert extra["ok"] and extra["unacknowledged_present"] == 1


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(RemusError, match="unknown optimization xyz"):
        command.parse_opts("asc,xyz")
    assert command.parse_opts("none") == set() and command.parse_opts("cp,rt") == {"cp", "rt"}
    with pytest.raises(RemusError, match="--runs"):
        command.failover("postgres", 100, "cp", "random", 0, False)
    with pytest.raises(RemusError, match="--interval"):
        command.failover("postgres", 5, "cp", "random", 1, False)


def test_summary_counts_losses_and_violations():
    r = {"downtime_s": 2.0, "connections": {"survived": 3, "broken": 1},
         "ledger": {"ok": True, "acknowledged": 10, "lost": 0, "total_ok": True,
                    "partial_accounts": []}}
    bad = {**r, "downtime_s": 4.0, "ledger": {**r["ledger"], "ok": False, "lost": 2,
                                              "partial_accounts": [3]}}
    s = command.summarize([r, bad])
    assert (s["passed"], s["lost"], s["invariant_violations"]) == (1, 2, 1)
    assert s["downtime_p50_s"] == 3.0 and s["downtime_max_s"] == 4.0
    stuck = {**r, "downtime_s": None, "window_s": 45.0}  # never committed again
    s = command.summarize([r, stuck, stuck])
    assert s["unrecovered"] == 2 and s["downtime_p50_s"] == 45.0
    assert s["connection_survival"] == 0.75


def test_a_live_read_back_sees_one_snapshot(host_pg):
    """The reprotection drill checks the ledger while clients write: a transfer committed
    between reading the ledger and reading the balances must not look like a half-applied
    one (it did, under READ COMMITTED)."""
    from remusdb.drill import workload
    reader, writer = host_pg.connect(), host_pg.connect()
    try:
        workload.create(writer)

        class Cursor:  # commits a transfer right after the ledger is read
            def __init__(self, cur):
                self.cur = cur

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.cur.close()

            def execute(self, sql, *args):
                self.cur.execute(sql, *args)
                if sql.startswith("SELECT id, src, dst"):
                    with writer.cursor() as w:
                        w.execute("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
                        w.execute("UPDATE accounts SET balance = balance + 5 WHERE id = 2")
                        w.execute("INSERT INTO ledger VALUES (77, 1, 2, 5)")
                    writer.commit()

            def fetchall(self):
                return self.cur.fetchall()

        class Conn:
            def cursor(self):
                return Cursor(reader.cursor())

            def rollback(self):
                reader.rollback()

        ledger, balances = workload.read_back(Conn())
        assert ledger_check(set(), ledger, balances, workload.INITIAL)["ok"]
        ledger, balances = workload.read_back(reader)  # the transfer, seen whole
        assert (77, 1, 2, 5) in ledger and balances[1] == workload.INITIAL - 5
    finally:
        reader.close()
        writer.close()
