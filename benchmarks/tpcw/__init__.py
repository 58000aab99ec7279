"""TPC-W (PostgreSQL): the bookstore, its browsing mix of web interactions run as database
transactions by emulated browsers (one thread and one connection each, no think time, as the
thesis counted every interaction), scored in WIPS (web interactions per second).

Defaults fit a TCG guest: 1000 items (1 EB's population: 2880 customers, 2592 orders). The
thesis (Table 5.2) used 10,000 items on real hardware: `--scale 10000` (10 EBs' population).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from benchmarks.rand import Rand
from benchmarks.target import (
    Target,
    bulk_insert,
    close_quietly,
    first_line,
    loaded_row,
    reconnect,
    retryable,
)
from benchmarks.tpcw import population as pop
from benchmarks.tpcw.interactions import BROWSING_MIX, INTERACTIONS, Browser, mix
from remusdb.errors import RemusError

NAME = "tpcw"
UNIT = "WIPS"
DBS = ("postgres",)
DEFAULT_SCALE = 1000
PAPER_SCALE = 10000
DEFAULT_CLIENTS = 4
WARMUP_S = 2.0

COLUMNS = {
    "country": "co_id co_name co_exchange co_currency",
    "address": "addr_id addr_street1 addr_street2 addr_city addr_state addr_zip addr_co_id",
    "customer": "c_id c_uname c_passwd c_fname c_lname c_addr_id c_phone c_email c_since "
                "c_last_login c_login c_expiration c_discount c_balance c_ytd_pmt c_birthdate "
                "c_data",
    "author": "a_id a_fname a_lname a_mname a_dob a_bio",
    "item": "i_id i_title i_a_id i_pub_date i_publisher i_subject i_desc i_related1 i_related2 "
            "i_related3 i_related4 i_related5 i_thumbnail i_image i_srp i_cost i_avail i_stock "
            "i_isbn i_page i_backing i_dimensions",
    "orders": "o_id o_c_id o_date o_sub_total o_tax o_total o_ship_type o_ship_date "
              "o_bill_addr_id o_ship_addr_id o_status",
    "order_line": "ol_id ol_o_id ol_i_id ol_qty ol_discount ol_comments",
    "cc_xacts": "cx_o_id cx_type cx_num cx_name cx_expire cx_auth_id cx_xact_amt cx_xact_date "
                "cx_co_id",
}


def check_scale(scale) -> int:
    try:
        f = float(scale)
    except (TypeError, ValueError):
        raise RemusError(f"tpcw: scale is a number of items, got {scale!r}") from None
    if f < 10 or f != int(f):
        raise RemusError(f"tpcw: scale must be a whole number of items ≥ 10, got {scale:g}")
    return int(f)


def prepare(target: Target, scale=DEFAULT_SCALE, say: Callable[[str], None] = print,
            seed: int = 1) -> dict:
    size = pop.Size(check_scale(scale))
    if target.kind != "postgres":
        raise RemusError("tpcw runs on postgres only")
    t0 = time.monotonic()
    r, now = Rand(seed), dt.datetime.now().replace(microsecond=0)
    o_rows, ol_rows, cx_rows = pop.orders(size, r, now)
    tables = {"country": pop.countries(r), "address": pop.addresses(size, r),
              "customer": pop.customers(size, r, now.date()), "author": pop.authors(size, r),
              "item": pop.items(size, r, now.date()), "orders": o_rows, "order_line": ol_rows,
              "cc_xacts": cx_rows}
    say(f"loading TPC-W: {size.items:,} items, {size.customers:,} customers, "
        f"{size.orders:,} orders ...")
    conn = target.open()
    rows = {}
    try:
        with conn.cursor() as cur:
            for t in pop.TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
            for s in ("orders_id", "cart_id", "customer_id", "address_id"):
                cur.execute(f"DROP SEQUENCE IF EXISTS {s}")
            cur.execute(pop.DDL)
            for t, data in tables.items():
                rows[t] = bulk_insert("postgres", conn, t, COLUMNS[t].split(), data)
            for seq, table, col in (("orders_id", "orders", "o_id"),
                                    ("customer_id", "customer", "c_id"),
                                    ("address_id", "address", "addr_id")):
                cur.execute(f"SELECT setval('{seq}', (SELECT max({col}) FROM {table}))")
            conn.commit()
            conn.autocommit = True
            cur.execute("ANALYZE")
    finally:
        conn.close()
    load_s = round(time.monotonic() - t0, 1)
    say(f"  {sum(rows.values()):,} rows in {load_s} s")
    return {"scale": size.items, "rows": rows, "load_s": load_s}


def _loaded_size(target: Target) -> pop.Size:
    items, _ = loaded_row(target, "SELECT (SELECT max(i_id) FROM item), "
                          "(SELECT count(*) FROM customer)", NAME)
    return pop.Size(items)


class _Browser(threading.Thread):
    def __init__(self, target, size, seed, start, stop_at, count_from):
        super().__init__(daemon=True)
        self.target, self.size, self.r = target, size, Rand(seed)
        self.start_evt, self.stop_at, self.count_from = start, stop_at, count_from
        self.b = Browser(c_id=self.r.uniform(1, size.customers))
        self.counts, self.lat, self.errors = Counter(), defaultdict(list), []
        self.retries = 0
        self.conn = target.open()

    def run(self):
        self.start_evt.wait()
        while time.monotonic() < self.stop_at[0]:
            name = mix(self.r)
            t0 = time.monotonic()
            try:
                with self.conn.cursor() as cur:
                    INTERACTIONS[name](cur, self.r, self.size, self.b)
                self.conn.commit()
            except Exception as e:  # noqa: BLE001 - classified below
                try:
                    self.conn.rollback()
                except Exception:  # noqa: BLE001
                    pass
                if retryable("postgres", e):
                    self.retries += 1
                    continue
                self.errors.append(f"{name}: {first_line(e)}")
                if not self._reconnect():
                    return
                continue
            if t0 >= self.count_from[0]:
                self.counts[name] += 1
                self.lat[name].append(time.monotonic() - t0)

    def _reconnect(self) -> bool:
        self.b.cart = None  # a new session: a new cart
        self.conn = reconnect(self.target, self.conn, self.stop_at[0])
        return self.conn is not None


def run(target: Target, duration_s: float = 60, clients: int = DEFAULT_CLIENTS,
        say: Callable[[str], None] = print, seed: int = 1) -> dict:
    if duration_s <= 0 or clients < 1:
        raise RemusError(f"tpcw: need a duration > 0 and ≥ 1 browser, got {duration_s} s, "
                         f"{clients} browser(s)")
    size = _loaded_size(target)
    start, stop_at, count_from = threading.Event(), [float("inf")], [float("inf")]
    ebs = [_Browser(target, size, seed * 7919 + i, start, stop_at, count_from)
           for i in range(clients)]
    for b in ebs:
        b.start()
    say(f"running TPC-W browsing mix: {clients} emulated browser(s), {WARMUP_S:g} s warm-up, "
        f"{duration_s:g} s measured ...")
    t0 = time.monotonic()
    count_from[0] = t0 + WARMUP_S
    stop_at[0] = count_from[0] + duration_s
    start.set()
    for b in ebs:
        b.join(WARMUP_S + duration_s + 120)
    for b in ebs:
        if b.conn is not None:
            close_quietly(b.conn)
    counts, lat = Counter(), []
    for b in ebs:
        counts.update(b.counts)
        for v in b.lat.values():
            lat += v
    n = sum(counts.values())
    p = np.percentile(np.asarray(lat) * 1000, [50, 95, 99]) if lat else [None] * 3
    errors = [e for b in ebs for e in b.errors]
    return {"score": round(n / duration_s, 2), "unit": UNIT, "higher_is_better": True,
            "interactions": n, "by_interaction": {k: counts[k] for k, _ in BROWSING_MIX},
            "latency_ms": {k: (round(float(v), 2) if v is not None else None)
                           for k, v in zip(("p50", "p95", "p99"), p, strict=True)},
            "retries": sum(b.retries for b in ebs), "errors": len(errors),
            "error_samples": errors[:10]}


CHECKS = {
    "an order without lines": "SELECT o_id FROM orders WHERE NOT EXISTS "
    "(SELECT 1 FROM order_line WHERE ol_o_id = o_id)",
    "an order whose card transaction is missing or differs from its total":
    "SELECT o_id FROM orders LEFT JOIN cc_xacts ON cx_o_id = o_id "
    "WHERE cx_xact_amt IS DISTINCT FROM o_total",
    "an order whose total is not sub-total + tax + $3 + $1 per item":
    "SELECT o_id FROM orders JOIN (SELECT ol_o_id, sum(ol_qty) q FROM order_line "
    "GROUP BY ol_o_id) l ON ol_o_id = o_id WHERE o_total <> o_sub_total + o_tax + 3 + q "
    "OR o_tax <> round(o_sub_total * 0.0825, 2)",
    "an order line for an item that does not exist": "SELECT ol_o_id FROM order_line "
    "WHERE NOT EXISTS (SELECT 1 FROM item WHERE i_id = ol_i_id)",
    "an item out of stock (stock is replenished below 10)":
    "SELECT i_id FROM item WHERE i_stock <= 0",
    "an order of a customer that does not exist": "SELECT o_id FROM orders WHERE NOT EXISTS "
    "(SELECT 1 FROM customer WHERE c_id = o_c_id)",
}


def check(target: Target) -> list[str]:
    conn = target.open()
    problems = []
    try:
        with conn.cursor() as cur:
            for what, sql in CHECKS.items():
                cur.execute(sql + " LIMIT 3")
                bad = [str(r[0]) for r in cur.fetchall()]
                if bad:
                    problems.append(f"tpcw: {what}: {', '.join(bad)}")
        conn.rollback()
    finally:
        conn.close()
    return problems
