"""The five TPC-C transactions (spec clauses 2.4–2.8), each one database transaction on the
terminal's own connection. Rows are locked in a fixed order (items sorted) so terminals do not
deadlock each other; what the database still rolls back is retried by the caller."""

from __future__ import annotations

from decimal import Decimal

from benchmarks.tpcc.gen import Rand, Scale

MIX = (("new_order", 45), ("payment", 43), ("order_status", 4), ("delivery", 4),
       ("stock_level", 4))


class UserRollback(Exception):
    """New-Order's 1% with an unused item id: rolled back by design, still a completed
    transaction (spec 2.4.2.3)."""


def _one(cur, sql, args=()):
    cur.execute(sql, args)
    return cur.fetchone()


def _customer_by_name(cur, w, d, last):
    """Spec 2.5.2.2: of the customers with that last name sorted by first name, the one at
    position ceil(n/2)."""
    cur.execute("SELECT c_id FROM customer WHERE c_w_id = %s AND c_d_id = %s AND c_last = %s "
                "ORDER BY c_first", (w, d, last))
    ids = [r[0] for r in cur.fetchall()]
    return ids[(len(ids) + 1) // 2 - 1] if ids else None


def _pick_customer(cur, r: Rand, scale: Scale, w, d):
    if r.uniform(1, 100) <= 60:
        c = _customer_by_name(cur, w, d, r.customer_last(scale))
        if c is not None:
            return c
    return r.customer_id(scale)


def new_order(conn, r: Rand, scale: Scale, w: int) -> None:
    d = r.uniform(1, scale.districts)
    c = r.customer_id(scale)
    lines = []
    for _ in range(r.uniform(5, 15)):
        supply = w
        if scale.warehouses > 1 and r.uniform(1, 100) == 1:
            supply = r.uniform(1, scale.warehouses - 1)
            supply += supply >= w
        lines.append((r.item_id(scale), supply, r.uniform(1, 10)))
    if r.uniform(1, 100) == 1:
        lines[-1] = (scale.items + 1, *lines[-1][1:])  # unused: the transaction rolls back
    all_local = int(all(s == w for _, s, _ in lines))
    with conn.cursor() as cur:
        (w_tax,) = _one(cur, "SELECT w_tax FROM warehouse WHERE w_id = %s", (w,))
        d_tax, o = _one(cur, "SELECT d_tax, d_next_o_id FROM district WHERE d_w_id = %s AND "
                        "d_id = %s FOR UPDATE", (w, d))
        cur.execute("UPDATE district SET d_next_o_id = d_next_o_id + 1 WHERE d_w_id = %s AND "
                    "d_id = %s", (w, d))
        disc, _last, _credit = _one(cur, "SELECT c_discount, c_last, c_credit FROM customer "
                                    "WHERE c_w_id = %s AND c_d_id = %s AND c_id = %s", (w, d, c))
        cur.execute("INSERT INTO orders (o_id, o_d_id, o_w_id, o_c_id, o_entry_d, o_carrier_id, "
                    "o_ol_cnt, o_all_local) VALUES (%s, %s, %s, %s, now(), NULL, %s, %s)",
                    (o, d, w, c, len(lines), all_local))
        cur.execute("INSERT INTO new_order (no_o_id, no_d_id, no_w_id) VALUES (%s, %s, %s)",
                    (o, d, w))
        total = Decimal(0)
        for number, (i, supply, qty) in sorted(enumerate(lines, 1), key=lambda x: x[1][:2]):
            item = _one(cur, "SELECT i_price, i_name, i_data FROM item WHERE i_id = %s", (i,))
            if item is None:
                conn.rollback()
                raise UserRollback()
            price = item[0]
            s_qty, dist = _one(cur, f"SELECT s_quantity, s_dist_{d:02d} FROM stock WHERE "
                               "s_w_id = %s AND s_i_id = %s FOR UPDATE", (supply, i))
            new_qty = s_qty - qty if s_qty - qty >= 10 else s_qty - qty + 91
            cur.execute("UPDATE stock SET s_quantity = %s, s_ytd = s_ytd + %s, "
                        "s_order_cnt = s_order_cnt + 1, s_remote_cnt = s_remote_cnt + %s "
                        "WHERE s_w_id = %s AND s_i_id = %s",
                        (new_qty, qty, int(supply != w), supply, i))
            amount = (price * qty).quantize(Decimal("0.01"))
            total += amount
            cur.execute("INSERT INTO order_line (ol_o_id, ol_d_id, ol_w_id, ol_number, ol_i_id, "
                        "ol_supply_w_id, ol_delivery_d, ol_quantity, ol_amount, ol_dist_info) "
                        "VALUES (%s, %s, %s, %s, %s, %s, NULL, %s, %s, %s)",
                        (o, d, w, number, i, supply, qty, amount, dist))
        _ = total * (1 - disc) * (1 + w_tax + d_tax)  # the total the terminal would display
    conn.commit()


def payment(conn, r: Rand, scale: Scale, w: int) -> None:
    d = r.uniform(1, scale.districts)
    c_w, c_d = w, d
    if scale.warehouses > 1 and r.uniform(1, 100) > 85:
        c_w = r.uniform(1, scale.warehouses - 1)
        c_w += c_w >= w
        c_d = r.uniform(1, scale.districts)
    amount = Decimal(r.money(1, 5000))
    with conn.cursor() as cur:
        c = _pick_customer(cur, r, scale, c_w, c_d)
        cur.execute("UPDATE warehouse SET w_ytd = w_ytd + %s WHERE w_id = %s", (amount, w))
        (w_name,) = _one(cur, "SELECT w_name FROM warehouse WHERE w_id = %s", (w,))
        cur.execute("UPDATE district SET d_ytd = d_ytd + %s WHERE d_w_id = %s AND d_id = %s",
                    (amount, w, d))
        (d_name,) = _one(cur, "SELECT d_name FROM district WHERE d_w_id = %s AND d_id = %s",
                         (w, d))
        (credit,) = _one(cur, "SELECT c_credit FROM customer WHERE c_w_id = %s AND c_d_id = %s "
                         "AND c_id = %s FOR UPDATE", (c_w, c_d, c))
        cur.execute("UPDATE customer SET c_balance = c_balance - %s, "
                    "c_ytd_payment = c_ytd_payment + %s, c_payment_cnt = c_payment_cnt + 1 "
                    "WHERE c_w_id = %s AND c_d_id = %s AND c_id = %s",
                    (amount, amount, c_w, c_d, c))
        if credit == "BC":
            (data,) = _one(cur, "SELECT c_data FROM customer WHERE c_w_id = %s AND c_d_id = %s "
                           "AND c_id = %s", (c_w, c_d, c))
            data = f"{c} {c_d} {c_w} {d} {w} {amount} | {data}"[:500]
            cur.execute("UPDATE customer SET c_data = %s WHERE c_w_id = %s AND c_d_id = %s AND "
                        "c_id = %s", (data, c_w, c_d, c))
        cur.execute("INSERT INTO history (h_c_id, h_c_d_id, h_c_w_id, h_d_id, h_w_id, h_date, "
                    "h_amount, h_data) VALUES (%s, %s, %s, %s, %s, now(), %s, %s)",
                    (c, c_d, c_w, d, w, amount, f"{w_name}    {d_name}"[:24]))
    conn.commit()


def order_status(conn, r: Rand, scale: Scale, w: int) -> None:
    d = r.uniform(1, scale.districts)
    with conn.cursor() as cur:
        c = _pick_customer(cur, r, scale, w, d)
        _one(cur, "SELECT c_balance, c_first, c_middle, c_last FROM customer WHERE c_w_id = %s "
             "AND c_d_id = %s AND c_id = %s", (w, d, c))
        last = _one(cur, "SELECT o_id, o_entry_d, o_carrier_id FROM orders WHERE o_w_id = %s "
                    "AND o_d_id = %s AND o_c_id = %s ORDER BY o_id DESC LIMIT 1", (w, d, c))
        if last:
            cur.execute("SELECT ol_i_id, ol_supply_w_id, ol_quantity, ol_amount, ol_delivery_d "
                        "FROM order_line WHERE ol_w_id = %s AND ol_d_id = %s AND ol_o_id = %s",
                        (w, d, last[0]))
            cur.fetchall()
    conn.commit()


def delivery(conn, r: Rand, scale: Scale, w: int) -> None:
    """All ten districts in one transaction; a district with no undelivered order is skipped
    (spec 2.7.4.2)."""
    carrier = r.uniform(1, 10)
    with conn.cursor() as cur:
        for d in range(1, scale.districts + 1):
            row = _one(cur, "SELECT no_o_id FROM new_order WHERE no_w_id = %s AND no_d_id = %s "
                       "ORDER BY no_o_id LIMIT 1 FOR UPDATE", (w, d))
            if row is None:
                continue
            (o,) = row
            cur.execute("DELETE FROM new_order WHERE no_w_id = %s AND no_d_id = %s AND "
                        "no_o_id = %s", (w, d, o))
            if cur.rowcount != 1:
                continue
            (c,) = _one(cur, "SELECT o_c_id FROM orders WHERE o_w_id = %s AND o_d_id = %s AND "
                        "o_id = %s", (w, d, o))
            cur.execute("UPDATE orders SET o_carrier_id = %s WHERE o_w_id = %s AND o_d_id = %s "
                        "AND o_id = %s", (carrier, w, d, o))
            cur.execute("UPDATE order_line SET ol_delivery_d = now() WHERE ol_w_id = %s AND "
                        "ol_d_id = %s AND ol_o_id = %s", (w, d, o))
            (total,) = _one(cur, "SELECT sum(ol_amount) FROM order_line WHERE ol_w_id = %s AND "
                            "ol_d_id = %s AND ol_o_id = %s", (w, d, o))
            cur.execute("UPDATE customer SET c_balance = c_balance + %s, "
                        "c_delivery_cnt = c_delivery_cnt + 1 WHERE c_w_id = %s AND c_d_id = %s "
                        "AND c_id = %s", (total or 0, w, d, c))
    conn.commit()


def stock_level(conn, r: Rand, scale: Scale, w: int) -> None:
    d = r.uniform(1, scale.districts)
    threshold = r.uniform(10, 20)
    with conn.cursor() as cur:
        (o,) = _one(cur, "SELECT d_next_o_id FROM district WHERE d_w_id = %s AND d_id = %s",
                    (w, d))
        _one(cur, "SELECT count(DISTINCT s_i_id) FROM order_line JOIN stock ON "
             "s_w_id = ol_w_id AND s_i_id = ol_i_id WHERE ol_w_id = %s AND ol_d_id = %s AND "
             "ol_o_id >= %s AND ol_o_id < %s AND s_quantity < %s", (w, d, o - 20, o, threshold))
    conn.commit()


TRANSACTIONS = {"new_order": new_order, "payment": payment, "order_status": order_status,
                "delivery": delivery, "stock_level": stock_level}
