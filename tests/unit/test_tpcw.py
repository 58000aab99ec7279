"""TPC-W driver: the browsing mix (pure), and against a real PostgreSQL on the host: the
population, a short run with every frequent interaction, the checks, and breakages caught."""

from collections import Counter

import pytest

from benchmarks import tpcw
from benchmarks.rand import Rand
from benchmarks.target import postgres_target
from benchmarks.tpcw import population as pop
from benchmarks.tpcw.interactions import BROWSING_MIX, mix
from remusdb.errors import RemusError
from tests import hostpg


def test_browsing_mix_frequencies():
    r, n = Rand(5), 200_000
    c = Counter(mix(r) for _ in range(n))
    for name, pct in BROWSING_MIX:
        assert abs(c[name] / n * 100 - pct) < max(0.5, pct * 0.1), (name, c[name])


def test_population_totals_follow_the_rule():
    size = pop.Size(200)
    assert (size.ebs, size.customers, size.authors, size.orders) == (1, 2880, 50, 2592)
    o_rows, ol_rows, cx_rows = pop.orders(size, Rand(1), pop.dt.datetime(2026, 1, 1))
    qty = Counter()
    for ol in ol_rows:
        qty[ol[1]] += ol[3]
    for o, cx in zip(o_rows, cx_rows, strict=True):
        tax, tot = pop.total(o[3], qty[o[0]])
        assert (o[4], o[5], cx[6]) == (tax, tot, tot)


def test_bad_arguments():
    t = postgres_target("127.0.0.1", 1, "x", "x", "x")
    for bad in (0, 5, 100.5, "x"):
        with pytest.raises(RemusError, match="tpcw: scale"):
            tpcw.prepare(t, bad)
    with pytest.raises(RemusError, match="browser"):
        tpcw.run(t, 10, 0)
    port = hostpg.closed_port()
    with pytest.raises(RemusError, match="cannot connect to postgres at 127.0.0.1") as e:
        tpcw.prepare(postgres_target("127.0.0.1", port, "x", "x", "x"), 100)
    assert "\n" not in str(e.value)


def test_run_writes_orders_and_keeps_the_checks(host_pg):
    info = tpcw.prepare(host_pg, 200, say=lambda _: None)
    assert info["rows"]["item"] == 200 and info["rows"]["orders"] == 2592
    assert tpcw.check(host_pg) == []
    r = tpcw.run(host_pg, 5, 3, say=lambda _: None)
    assert r["errors"] == 0, r["error_samples"]
    assert r["score"] > 0 and r["interactions"] > 100
    frequent = {k for k, pct in BROWSING_MIX if pct >= 5}
    assert frequent <= {k for k, v in r["by_interaction"].items() if v > 0}
    assert r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
    assert tpcw.check(host_pg) == []
    conn = host_pg.open()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE o_id > 2592")
        new_orders = cur.fetchone()[0]
    conn.close()
    assert new_orders >= r["by_interaction"]["buy_confirm"] > 0  # + the warm-up's


@pytest.mark.parametrize("sql,what", [
    ("DELETE FROM cc_xacts WHERE cx_o_id = 17", "card transaction"),
    ("UPDATE orders SET o_total = o_total + 1 WHERE o_id = 5", "card transaction"),
    ("UPDATE order_line SET ol_qty = ol_qty + 1 WHERE ol_o_id = 9 AND ol_id = 1", "total"),
    ("DELETE FROM order_line WHERE ol_o_id = 11", "without lines"),
    ("UPDATE item SET i_stock = 0 WHERE i_id = 3", "out of stock"),
])
def test_a_broken_invariant_is_detected(host_pg, sql, what):
    tpcw.prepare(host_pg, 100, say=lambda _: None)
    conn = host_pg.open()
    with conn.cursor() as cur:
        cur.execute(sql)
        assert cur.rowcount >= 1
    conn.commit()
    conn.close()
    problems = tpcw.check(host_pg)
    assert len(problems) >= 1 and any(what in p for p in problems), problems
