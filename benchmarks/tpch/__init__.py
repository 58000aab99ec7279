"""TPC-H (PostgreSQL): data from `tpchgen-cli`, COPY, the 22 queries with the spec's
substitution parameters, one warm-up run then one timed power run (queries in order, one
stream). Score: queries per hour of the power run (22 × 3600 / its seconds).

Defaults fit a TCG guest (scale factor 0.1, ~100 MB of data, a power run of about a minute).
The thesis (Table 5.2) ran scale factor 1 (~2.3 GB with indexes) with a 1 GB buffer pool on real
hardware: `--scale 1`. Three ORDER BYs (Q3, Q10, Q18) have a key appended as tie-breaker so that
answers compare exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2

from benchmarks.target import Target, first_line
from benchmarks.tpch.queries import SQL, params
from remusdb.errors import RemusError

NAME = "tpch"
UNIT = "queries/h"
DBS = ("postgres",)
DEFAULT_SCALE = 0.1
PAPER_SCALE = 1.0
DEFAULT_CLIENTS = 1
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "remusdb" / "tpch"

TABLES = {  # table: (columns DDL, primary key)
    "region": ("r_regionkey integer, r_name char(25), r_comment varchar(152)", "r_regionkey"),
    "nation": ("n_nationkey integer, n_name char(25), n_regionkey integer, "
               "n_comment varchar(152)", "n_nationkey"),
    "part": ("p_partkey integer, p_name varchar(55), p_mfgr char(25), p_brand char(10), "
             "p_type varchar(25), p_size integer, p_container char(10), "
             "p_retailprice numeric(15,2), p_comment varchar(23)", "p_partkey"),
    "supplier": ("s_suppkey integer, s_name char(25), s_address varchar(40), "
                 "s_nationkey integer, s_phone char(15), s_acctbal numeric(15,2), "
                 "s_comment varchar(101)", "s_suppkey"),
    "partsupp": ("ps_partkey integer, ps_suppkey integer, ps_availqty integer, "
                 "ps_supplycost numeric(15,2), ps_comment varchar(199)",
                 "ps_partkey, ps_suppkey"),
    "customer": ("c_custkey integer, c_name varchar(25), c_address varchar(40), "
                 "c_nationkey integer, c_phone char(15), c_acctbal numeric(15,2), "
                 "c_mktsegment char(10), c_comment varchar(117)", "c_custkey"),
    "orders": ("o_orderkey integer, o_custkey integer, o_orderstatus char(1), "
               "o_totalprice numeric(15,2), o_orderdate date, o_orderpriority char(15), "
               "o_clerk char(15), o_shippriority integer, o_comment varchar(79)",
               "o_orderkey"),
    "lineitem": ("l_orderkey integer, l_partkey integer, l_suppkey integer, "
                 "l_linenumber integer, l_quantity numeric(15,2), "
                 "l_extendedprice numeric(15,2), l_discount numeric(15,2), "
                 "l_tax numeric(15,2), l_returnflag char(1), l_linestatus char(1), "
                 "l_shipdate date, l_commitdate date, l_receiptdate date, "
                 "l_shipinstruct char(25), l_shipmode char(10), l_comment varchar(44)",
                 "l_orderkey, l_linenumber"),
}
INDEXES = ("CREATE INDEX ON nation (n_regionkey)", "CREATE INDEX ON supplier (s_nationkey)",
           "CREATE INDEX ON partsupp (ps_suppkey)", "CREATE INDEX ON customer (c_nationkey)",
           "CREATE INDEX ON orders (o_custkey)", "CREATE INDEX ON orders (o_orderdate)",
           "CREATE INDEX ON lineitem (l_partkey, l_suppkey)",
           "CREATE INDEX ON lineitem (l_shipdate)")


def expected_rows(scale: float) -> dict[str, int]:
    """Cardinalities per spec 4.2.5 (lineitem varies; about 6,000,000 × SF)."""
    return {"region": 5, "nation": 25, "part": int(200_000 * scale),
            "supplier": int(10_000 * scale), "partsupp": int(800_000 * scale),
            "customer": int(150_000 * scale), "orders": int(1_500_000 * scale)}


def check_scale(scale) -> float:
    try:
        f = float(scale)
    except (TypeError, ValueError):
        raise RemusError(f"tpch: scale is a scale factor, got {scale!r}") from None
    if not 0 < f <= 1000:
        raise RemusError(f"tpch: scale factor must be in (0, 1000], got {scale:g}")
    return f


def tbl_lines(path: Path):
    """A .tbl file as COPY text: tpchgen ends every row with the delimiter."""
    with open(path) as f:
        for line in f:
            yield line[:-2] + "\n" if line.endswith("|\n") else line


def generate(scale: float, say=print) -> Path:
    """The .tbl files for a scale factor, generated once and cached."""
    d = CACHE / f"sf{scale:g}"
    if (d / ".complete").exists():
        return d
    exe = Path(sys.executable).parent / "tpchgen-cli"
    exe = str(exe) if exe.exists() else shutil.which("tpchgen-cli")
    if not exe:
        raise RemusError("tpchgen-cli not found (pip install tpchgen-cli; `make deps` does)")
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    say(f"generating TPC-H data, scale factor {scale:g} ...")
    r = subprocess.run([exe, "-s", f"{scale:g}", f"--output-dir={tmp}"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise RemusError(f"tpchgen-cli failed: {(r.stderr or r.stdout).strip()[-300:]}")
    (tmp / ".complete").touch()
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


class _Lines:
    """A file-like over tbl_lines for copy_expert."""

    def __init__(self, path: Path):
        self.it, self.buf = tbl_lines(path), ""

    def read(self, n=-1):
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.it)
            except StopIteration:
                break
        out, self.buf = (self.buf, "") if n < 0 else (self.buf[:n], self.buf[n:])
        return out

    readline = read


def prepare(target: Target, scale=DEFAULT_SCALE, say: Callable[[str], None] = print) -> dict:
    scale = check_scale(scale)
    if target.kind != "postgres":
        raise RemusError("tpch runs on postgres only")
    data = generate(scale, say)
    t0 = time.monotonic()
    conn = target.open()
    rows = {}
    try:
        with conn.cursor() as cur:
            for t in TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
            for t, (cols, _) in TABLES.items():
                cur.execute(f"CREATE TABLE {t} ({cols})")
            conn.commit()
            for t in TABLES:
                cur.copy_expert(f"COPY {t} FROM STDIN WITH (DELIMITER '|')",
                                _Lines(data / f"{t}.tbl"))
                conn.commit()
                cur.execute(f"SELECT count(*) FROM {t}")
                rows[t] = cur.fetchone()[0]
                say(f"  {t}: {rows[t]:,} rows ({time.monotonic() - t0:.0f} s)")
            say("  primary keys, indexes, ANALYZE ...")
            for t, (_, pk) in TABLES.items():
                cur.execute(f"ALTER TABLE {t} ADD PRIMARY KEY ({pk})")
            for stmt in INDEXES:
                cur.execute(stmt)
            conn.commit()
            conn.autocommit = True
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()
    return {"scale": scale, "rows": rows, "load_s": round(time.monotonic() - t0, 1)}


def _query(cur, name: str, args: dict) -> list[tuple]:
    try:
        cur.execute(SQL[name], args)
        return [tuple(r) for r in cur.fetchall()]
    except psycopg2.Error as e:
        raise RemusError(f"tpch {name} failed: {first_line(e)}") from None


def _loaded_scale(cur) -> float:
    cur.execute("SELECT count(*) FROM orders")
    n = cur.fetchone()[0]
    if not n:
        raise RemusError("tpch: no TPC-H data (prepare first)")
    return n / 1_500_000


def answers(target: Target, seed: int = 1) -> dict[str, list[tuple]]:
    conn = target.open()
    try:
        with conn.cursor() as cur:
            p = params(seed, _loaded_scale(cur))
            return {q: _query(cur, q, p[q]) for q in SQL}
    finally:
        conn.close()


def run(target: Target, duration_s=None, clients=1, say: Callable[[str], None] = print,
        seed: int = 1) -> dict:
    """`duration_s` and `clients` are accepted and ignored: a power run is one stream of the
    22 queries, however long it takes."""
    conn = target.open()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            p = params(seed, _loaded_scale(cur))
            say("TPC-H warm-up run (22 queries) ...")
            t0 = time.monotonic()
            for q in SQL:
                _query(cur, q, p[q])
            warm = time.monotonic() - t0
            say(f"  warm-up {warm:.1f} s; power run ...")
            times = {}
            for q in SQL:
                t = time.monotonic()
                _query(cur, q, p[q])
                times[q] = round(time.monotonic() - t, 4)
    finally:
        conn.close()
    total = sum(times.values())
    slowest = sorted(times, key=times.get, reverse=True)[:3]
    say(f"  power run {total:.1f} s; slowest {', '.join(f'{q} {times[q]:.1f} s' for q in slowest)}")
    return {"score": round(len(SQL) * 3600 / total, 1), "unit": UNIT, "higher_is_better": True,
            "total_s": round(total, 3), "warmup_s": round(warm, 3), "queries": times}


def check(target: Target) -> list[str]:
    """Every table has the spec's cardinality for the scale factor that was loaded; every
    line item belongs to an order and every order has line items."""
    conn = target.open()
    problems = []
    try:
        with conn.cursor() as cur:
            scale = _loaded_scale(cur)
            for t, n in expected_rows(scale).items():
                cur.execute(f"SELECT count(*) FROM {t}")
                got = cur.fetchone()[0]
                if got != n:
                    problems.append(f"tpch: {t} has {got} rows, scale factor {scale:g} needs {n}")
            cur.execute("SELECT count(*) FROM lineitem WHERE NOT EXISTS (SELECT 1 FROM orders "
                        "WHERE o_orderkey = l_orderkey)")
            if cur.fetchone()[0]:
                problems.append("tpch: line items without their order")
            cur.execute("SELECT count(*) FROM orders WHERE NOT EXISTS (SELECT 1 FROM lineitem "
                        "WHERE l_orderkey = o_orderkey)")
            if cur.fetchone()[0]:
                problems.append("tpch: orders without line items")
        conn.rollback()
    finally:
        conn.close()
    return problems
