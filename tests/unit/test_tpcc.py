"""TPC-C driver: the spec's data rules (pure), and against a real PostgreSQL on the host: load,
a short run, the consistency conditions hold after it and catch a broken invariant."""

import random
from collections import Counter

import pytest

from benchmarks import tpcc
from benchmarks.target import postgres_target
from benchmarks.tpcc import load
from benchmarks.tpcc.gen import Rand, Scale, last_name
from benchmarks.tpcc.terminal import pick
from remusdb.errors import RemusError
from tests import hostpg


def test_last_names_and_nurand_ranges():
    assert last_name(0) == "BARBARBAR" and last_name(371) == "PRICALLYOUGHT"
    r = Rand(7)
    s = Scale()
    ids = [r.customer_id(s) for _ in range(20000)]
    assert min(ids) >= 1 and max(ids) <= 3000
    items = Counter(r.item_id(s) for _ in range(50000))
    assert max(items) <= 100000 and min(items) >= 1
    # non-uniform: the most popular ids are drawn far more often than uniform would give
    assert items.most_common(1)[0][1] > 50000 / 100000 * 20


def test_population_rules():
    s = Scale(items=2000, customers=300, orders=300)
    r = Rand(3)
    it = list(load.items(s, r))
    assert len(it) == 2000
    original = sum("ORIGINAL" in row[4] for row in it) / len(it)
    assert 0.07 < original < 0.13
    o_rows, ol_rows, no_rows = load.orders(s, 1, 1, r, "2026-01-01 00:00:00")
    assert sorted(o[3] for o in o_rows) == list(range(1, 301))  # one order per customer
    undelivered = [o for o in o_rows if o[5] is None]
    assert len(undelivered) == len(no_rows) == 90 and s.first_new_order == 211
    assert len(ol_rows) == sum(o[6] for o in o_rows)
    assert all((ol[6] is None) == (ol[0] >= 211) for ol in ol_rows)


def test_mix_frequencies():
    r = Rand(1)
    n = 40000
    c = Counter(pick(r) for _ in range(n))
    for name, pct in (("new_order", 45), ("payment", 43), ("order_status", 4),
                      ("delivery", 4), ("stock_level", 4)):
        assert abs(c[name] / n * 100 - pct) < 1.5, (name, c)


def test_bad_arguments():
    t = postgres_target("127.0.0.1", 1, "x", "x", "x")
    with pytest.raises(RemusError, match="warehouses"):
        tpcc.prepare(t, 0)
    with pytest.raises(RemusError, match="warehouses"):
        tpcc.prepare(t, 1.5)
    with pytest.raises(RemusError, match="warehouses"):
        tpcc.prepare(t, "many")
    with pytest.raises(RemusError, match="client"):
        tpcc.run(t, 10, 0)


def test_unreachable_database_is_one_line():
    port = hostpg.closed_port()
    t = postgres_target("127.0.0.1", port, "x", "x", "x")
    with pytest.raises(RemusError) as e:
        tpcc.prepare(t, 1)
    assert "cannot connect to postgres at 127.0.0.1" in str(e.value)
    assert "\n" not in str(e.value)


def test_run_keeps_the_consistency_conditions(host_pg):
    lines = []
    info = tpcc.prepare(host_pg, 2, say=lines.append)
    assert info["rows"] > 10000 and any("loading TPC-C" in x for x in lines)
    assert tpcc.check(host_pg) == []
    r = tpcc.run(host_pg, 4, 4, say=lines.append)
    assert r["error_count"] == 0, r["errors"]
    assert r["score"] > 0 and r["transactions"] > 100
    assert r["latency_ms"]["new_order"]["p99"] >= r["latency_ms"]["new_order"]["p50"] > 0
    assert set(k for k, v in r["mix"].items() if v > 0) == set(tpcc.txns.TRANSACTIONS)
    assert tpcc.check(host_pg) == []
    conn = host_pg.open()
    with conn.cursor() as cur:  # the run really wrote: deliveries and new orders
        cur.execute("SELECT (SELECT sum(d_next_o_id - 3001) FROM district), "
                    "(SELECT sum(c_delivery_cnt) FROM customer)")
        new_orders, deliveries = cur.fetchone()
    conn.close()
    assert new_orders > 0 and deliveries > 0


BREAKAGES = {
    "UPDATE warehouse SET w_ytd = w_ytd + 1 WHERE w_id = 1": {1, 8},
    "DELETE FROM order_line WHERE ol_w_id = 1 AND ol_d_id = 2 AND ol_o_id = 5 "
    "AND ol_number = 1": {4, 6},
    "DELETE FROM new_order WHERE no_w_id = 1 AND no_d_id = 3 AND no_o_id = 25": {3, 5},
    "UPDATE customer SET c_balance = c_balance - 0.01 WHERE c_w_id = 1 AND c_d_id = 1 "
    "AND c_id = 7": {10, 12},
}


@pytest.mark.parametrize("sql", list(BREAKAGES))
def test_a_broken_invariant_is_detected(host_pg, sql):
    tpcc.prepare(host_pg, 0.01, say=lambda _: None, seed=random.randint(1, 99))
    conn = host_pg.open()
    with conn.cursor() as cur:
        cur.execute(sql)
        assert cur.rowcount == 1
    conn.commit()
    conn.close()
    failed = {int(p.split()[3]) for p in tpcc.check(host_pg)}
    assert failed == BREAKAGES[sql]
