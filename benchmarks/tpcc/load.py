"""The initial population (spec clause 4.3.3), loaded in parallel: items, and per warehouse its
stock, its customers (with history) and its orders (with lines and new orders), each job on its
own connection, with a progress line every few seconds."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from benchmarks.target import Target, bulk_insert
from benchmarks.tpcc import schema
from benchmarks.tpcc.gen import Rand, Scale, last_name

BATCH = 20_000  # rows per bulk insert: bounded memory, progress that moves


class Progress:
    def __init__(self, total: int, say: Callable[[str], None], every_s: float = 5.0):
        self.total, self.say, self.every = total, say, every_s
        self.done, self.lock = 0, threading.Lock()
        self.t0 = self.last = time.monotonic()

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if now - self.last >= self.every:
                self.last = now
                rate = self.done / max(now - self.t0, 1e-9)
                self.say(f"  loaded {self.done:,} of ~{self.total:,} rows "
                         f"({min(100, 100 * self.done // self.total)}%, {rate:,.0f} rows/s)")


def _address(r: Rand) -> tuple:
    return (r.astring(10, 20), r.astring(10, 20), r.astring(10, 20), r.astring(2, 2).upper(),
            r.zip())


def items(scale: Scale, r: Rand) -> Iterator[tuple]:
    for i in range(1, scale.items + 1):
        yield i, r.uniform(1, 10000), r.astring(14, 24), r.money(1, 100), r.data()


def warehouse_rows(scale: Scale, w: int, r: Rand):
    ytd = f"{scale.districts * scale.customers * 10}.00"
    yield "warehouse", [(w, r.astring(6, 10), *_address(r), r.money(0, 0.2), ytd)]
    yield "district", [(d, w, r.astring(6, 10), *_address(r), r.money(0, 0.2),
                        f"{scale.customers * 10}.00", scale.orders + 1)
                       for d in range(1, scale.districts + 1)]


def stock(scale: Scale, w: int, r: Rand) -> Iterator[tuple]:
    for i in range(1, scale.items + 1):
        yield (i, w, r.uniform(10, 100), *(r.astring(24, 24) for _ in range(10)), 0, 0, 0,
               r.data())


def customers(scale: Scale, w: int, d: int, r: Rand, now: dt.datetime) -> Iterator[tuple]:
    for c in range(1, scale.customers + 1):
        last = last_name(c - 1 if c <= scale.last_names else
                         r.nurand(255, 0, scale.last_names - 1))
        yield (c, d, w, r.astring(8, 16), "OE", last, *_address(r), r.nstring(16, 16), now,
               "BC" if r.r.random() < 0.1 else "GC", "50000.00", r.money(0, 0.5), "-10.00",
               "10.00", 1, 0, r.astring(300, 500))


def history(scale: Scale, w: int, d: int, r: Rand, now: dt.datetime) -> Iterator[tuple]:
    for c in range(1, scale.customers + 1):
        yield c, d, w, d, w, now, "10.00", r.astring(12, 24)


def orders(scale: Scale, w: int, d: int, r: Rand, now: dt.datetime):
    """(orders, order lines, new orders) of one district."""
    perm = list(range(1, scale.customers + 1))
    r.r.shuffle(perm)
    o_rows, ol_rows = [], []
    for o in range(1, scale.orders + 1):
        delivered = o < scale.first_new_order
        n = r.uniform(5, 15)
        o_rows.append((o, d, w, perm[(o - 1) % len(perm)], now,
                       r.uniform(1, 10) if delivered else None, n, 1))
        for ol in range(1, n + 1):
            ol_rows.append((o, d, w, ol, r.uniform(1, scale.items), w, now if delivered else None,
                            5, "0.00" if delivered else r.money(0.01, 9999.99),
                            r.astring(24, 24)))
    no_rows = [(o, d, w) for o in range(scale.first_new_order, scale.orders + 1)]
    return o_rows, ol_rows, no_rows


COLUMNS = {
    "warehouse": "w_id w_name w_street_1 w_street_2 w_city w_state w_zip w_tax w_ytd",
    "district": "d_id d_w_id d_name d_street_1 d_street_2 d_city d_state d_zip d_tax d_ytd "
                "d_next_o_id",
    "customer": "c_id c_d_id c_w_id c_first c_middle c_last c_street_1 c_street_2 c_city "
                "c_state c_zip c_phone c_since c_credit c_credit_lim c_discount c_balance "
                "c_ytd_payment c_payment_cnt c_delivery_cnt c_data",
    "history": "h_c_id h_c_d_id h_c_w_id h_d_id h_w_id h_date h_amount h_data",
    "new_order": "no_o_id no_d_id no_w_id",
    "orders": "o_id o_d_id o_w_id o_c_id o_entry_d o_carrier_id o_ol_cnt o_all_local",
    "order_line": "ol_o_id ol_d_id ol_w_id ol_number ol_i_id ol_supply_w_id ol_delivery_d "
                  "ol_quantity ol_amount ol_dist_info",
    "item": "i_id i_im_id i_name i_price i_data",
    "stock": "s_i_id s_w_id s_quantity s_dist_01 s_dist_02 s_dist_03 s_dist_04 s_dist_05 "
             "s_dist_06 s_dist_07 s_dist_08 s_dist_09 s_dist_10 s_ytd s_order_cnt s_remote_cnt "
             "s_data",
}


class _Writer:
    """Bulk inserts in batches on one connection, committed per batch."""

    def __init__(self, target: Target, progress: Progress):
        self.kind, self.conn, self.progress = target.kind, target.open(), progress

    def put(self, table: str, rows) -> None:
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                self._flush(table, batch)
                batch = []
        if batch:
            self._flush(table, batch)

    def _flush(self, table, batch) -> None:
        bulk_insert(self.kind, self.conn, table, COLUMNS[table].split(), batch)
        self.conn.commit()
        self.progress.add(len(batch))

    def close(self) -> None:
        self.conn.close()


def _jobs(scale: Scale, seed: int, now: dt.datetime) -> list[Callable[[_Writer], None]]:
    def item_job(wr):
        wr.put("item", items(scale, Rand(seed)))

    def stock_job(w):
        def job(wr):
            r = Rand(seed * 1000 + w)
            for table, rows in warehouse_rows(scale, w, r):
                wr.put(table, rows)
            wr.put("stock", stock(scale, w, r))
        return job

    def customer_job(w):
        def job(wr):
            r = Rand(seed * 1000 + 100 + w)
            for d in range(1, scale.districts + 1):
                wr.put("customer", customers(scale, w, d, r, now))
                wr.put("history", history(scale, w, d, r, now))
        return job

    def order_job(w):
        def job(wr):
            r = Rand(seed * 1000 + 200 + w)
            for d in range(1, scale.districts + 1):
                o_rows, ol_rows, no_rows = orders(scale, w, d, r, now)
                wr.put("orders", o_rows)
                wr.put("order_line", ol_rows)
                wr.put("new_order", no_rows)
        return job

    jobs = [item_job]
    for w in range(1, scale.warehouses + 1):
        jobs += [stock_job(w), customer_job(w), order_job(w)]
    return jobs


def load(target: Target, scale: Scale, workers: int = 4, seed: int = 1,
         say: Callable[[str], None] = print) -> dict:
    t0 = time.monotonic()
    conn = target.open()
    try:
        with conn.cursor() as cur:
            for stmt in schema.create_statements(target.kind):
                cur.execute(stmt)
        conn.commit()
        progress = Progress(scale.rows(), say)
        say(f"loading TPC-C: {scale.warehouses} warehouse(s), ~{scale.rows():,} rows, "
            f"{workers} loaders ...")
        now = dt.datetime.now().replace(microsecond=0)

        def run(job):
            wr = _Writer(target, progress)
            try:
                job(wr)
            finally:
                wr.close()

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(run, j) for j in _jobs(scale, seed, now)]:
                f.result()
        say(f"  {progress.done:,} rows in {time.monotonic() - t0:.1f} s; building indexes ...")
        with conn.cursor() as cur:
            for stmt in schema.INDEXES:
                cur.execute(stmt)
            conn.commit()
            if target.kind == "postgres":
                conn.autocommit = True
            for stmt in schema.analyze_statements(target.kind):
                cur.execute(stmt)
                if target.kind == "mariadb":
                    cur.fetchall()
        return {"rows": progress.done, "load_s": round(time.monotonic() - t0, 1)}
    finally:
        conn.close()
