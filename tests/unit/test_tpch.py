"""TPC-H driver: the substitution parameters follow the spec's rules (pure), and against a real
PostgreSQL on the host: the load has the spec's cardinalities, a broken one is caught, the
22 queries run."""

import datetime as dt
from decimal import Decimal

import pytest

from benchmarks import tpch
from benchmarks.target import postgres_target
from benchmarks.tpch.queries import COLORS, NATIONS, REGIONS, SQL, params
from remusdb.errors import RemusError
from tests import hostpg


@pytest.mark.parametrize("seed", range(20))
def test_parameters_follow_the_spec(seed):
    p = params(seed, 0.01)
    assert p == params(seed, 0.01) and set(p) == set(SQL)
    assert 60 <= p["Q1"]["delta"] <= 120
    assert 1 <= p["Q2"]["size"] <= 50 and p["Q2"]["region"] in REGIONS
    assert dt.date(1995, 3, 1) <= p["Q3"]["date"] <= dt.date(1995, 3, 31)
    assert p["Q4"]["date"].day == 1 and dt.date(1993, 1, 1) <= p["Q4"]["date"] <= \
        dt.date(1997, 10, 1)
    assert p["Q5"]["date"].month == 1 and 1993 <= p["Q5"]["date"].year <= 1997
    assert Decimal("0.02") <= p["Q6"]["discount"] <= Decimal("0.09")
    assert p["Q7"]["nation1"] != p["Q7"]["nation2"]
    nation = dict(NATIONS)[p["Q8"]["nation"]]
    assert p["Q8"]["region"] == REGIONS[nation]
    assert p["Q9"]["color"].strip("%") in COLORS
    assert dt.date(1993, 2, 1) <= p["Q10"]["date"] <= dt.date(1995, 1, 1)
    assert p["Q11"]["fraction"] == Decimal("0.01")
    assert p["Q12"]["shipmode1"] != p["Q12"]["shipmode2"]
    assert len(set(p["Q16"]["sizes"])) == 8 and p["Q16"]["brand"][:6] == "Brand#"
    assert 312 <= p["Q18"]["quantity"] <= 315
    assert 1 <= p["Q19"]["quantity1"] <= 10 <= p["Q19"]["quantity2"] <= 20 <= \
        p["Q19"]["quantity3"] <= 30
    codes = p["Q22"]["codes"]
    assert len(set(codes)) == 7 and all(10 <= int(c) <= 34 for c in codes)
    assert params(seed + 100, 0.01) != p


def test_tbl_rows_lose_their_trailing_delimiter(tmp_path):
    f = tmp_path / "r.tbl"
    f.write_text("0|AFRICA|lar deposits|\n1|AMERICA|hs use ironic|\n")
    assert list(tpch.tbl_lines(f)) == ["0|AFRICA|lar deposits\n", "1|AMERICA|hs use ironic\n"]


def test_bad_arguments():
    t = postgres_target("127.0.0.1", 1, "x", "x", "x")
    for bad in (0, -1, "x"):
        with pytest.raises(RemusError, match="tpch: scale"):
            tpch.prepare(t, bad)
    port = hostpg.closed_port()
    with pytest.raises(RemusError, match="cannot connect to postgres at 127.0.0.1") as e:
        tpch.run(postgres_target("127.0.0.1", port, "x", "x", "x"))
    assert "\n" not in str(e.value)


def test_load_run_and_a_broken_cardinality(host_pg):
    info = tpch.prepare(host_pg, 0.01, say=lambda _: None)
    assert info["rows"]["orders"] == 15000 and info["rows"]["lineitem"] > 50000
    assert tpch.check(host_pg) == []
    r = tpch.run(host_pg, say=lambda _: None)
    assert list(r["queries"]) == [f"Q{i}" for i in range(1, 23)]
    assert r["score"] > 0 and r["total_s"] == pytest.approx(sum(r["queries"].values()), abs=2e-3)
    answers = tpch.answers(host_pg)
    assert answers["Q1"][0][:2] == ("A", "F") and len(answers["Q1"]) == 4
    assert sum(len(v) > 0 for v in answers.values()) >= 18
    conn = host_pg.open()
    with conn.cursor() as cur:
        cur.execute("DELETE FROM partsupp WHERE ps_partkey = 7")
        cur.execute("DELETE FROM lineitem WHERE l_orderkey = 1")
    conn.commit()
    conn.close()
    problems = tpch.check(host_pg)
    assert any("partsupp has 7996 rows" in p for p in problems), problems
    assert any("orders without line items" in p for p in problems), problems
