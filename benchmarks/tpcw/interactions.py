"""The 14 web interactions as database transactions (their SQL after the TPC-W reference
implementation's servlets), and the browsing mix (spec 5.2.1.2, Table 5.3). An emulated browser
draws each interaction independently with the mix's probabilities (the stationary distribution
of the spec's transition matrix), not by walking the matrix: the same frequencies, without
page-to-page state beyond its customer and its shopping cart."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from benchmarks.rand import Rand
from benchmarks.tpcw.population import CC_TYPES, SHIP_TYPES, SUBJECTS, Size, total, uname

BROWSING_MIX = (("home", 29.00), ("new_products", 11.00), ("best_sellers", 11.00),
                ("product_detail", 21.00), ("search_request", 12.00),
                ("search_results", 11.00), ("shopping_cart", 2.00),
                ("customer_registration", 0.82), ("buy_request", 0.75),
                ("buy_confirm", 0.69), ("order_inquiry", 0.30), ("order_display", 0.25),
                ("admin_request", 0.10), ("admin_confirm", 0.09))
_NAMES = [n for n, _ in BROWSING_MIX]
_WEIGHTS = [w for _, w in BROWSING_MIX]


def mix(r: Rand) -> str:
    return r.r.choices(_NAMES, _WEIGHTS)[0]


@dataclass
class Browser:
    """What an emulated browser carries between interactions."""
    c_id: int
    cart: int | None = None


def _all(cur, sql, args=()):
    cur.execute(sql, args)
    return cur.fetchall()


def _promotions(cur, r: Rand, size: Size):
    _all(cur, "SELECT j.i_id, j.i_thumbnail FROM item i, item j WHERE i.i_id = %s AND j.i_id IN "
         "(i.i_related1, i.i_related2, i.i_related3, i.i_related4, i.i_related5)",
         (r.uniform(1, size.items),))


def home(cur, r, size, b):
    _all(cur, "SELECT c_fname, c_lname FROM customer WHERE c_id = %s", (b.c_id,))
    _promotions(cur, r, size)


def new_products(cur, r, size, b):
    _all(cur, "SELECT i_id, i_title, a_fname, a_lname FROM item, author WHERE i_a_id = a_id "
         "AND i_subject = %s ORDER BY i_pub_date DESC, i_title LIMIT 50",
         (SUBJECTS[r.uniform(0, len(SUBJECTS) - 1)],))


def best_sellers(cur, r, size, b):
    _all(cur, "SELECT i_id, i_title, a_fname, a_lname, sum(ol_qty) AS qty "
         "FROM item, author, order_line WHERE i_id = ol_i_id AND i_a_id = a_id "
         "AND ol_o_id > (SELECT max(o_id) - 3333 FROM orders) AND i_subject = %s "
         "GROUP BY i_id, i_title, a_fname, a_lname ORDER BY qty DESC LIMIT 50",
         (SUBJECTS[r.uniform(0, len(SUBJECTS) - 1)],))


def product_detail(cur, r, size, b):
    _all(cur, "SELECT * FROM item, author WHERE i_a_id = a_id AND i_id = %s",
         (r.uniform(1, size.items),))


def search_request(cur, r, size, b):
    _promotions(cur, r, size)


def search_results(cur, r, size, b):
    kind = r.uniform(0, 2)
    if kind == 0:
        _all(cur, "SELECT i_id, i_title, a_fname, a_lname FROM item, author WHERE i_a_id = a_id "
             "AND a_lname LIKE %s ORDER BY i_title LIMIT 50", (r.astring(1, 1) + "%",))
    elif kind == 1:
        _all(cur, "SELECT i_id, i_title, a_fname, a_lname FROM item, author WHERE i_a_id = a_id "
             "AND i_title LIKE %s ORDER BY i_title LIMIT 50", ("%" + r.astring(2, 2) + "%",))
    else:
        _all(cur, "SELECT i_id, i_title, a_fname, a_lname FROM item, author WHERE i_a_id = a_id "
             "AND i_subject = %s ORDER BY i_title LIMIT 50",
             (SUBJECTS[r.uniform(0, len(SUBJECTS) - 1)],))
    _promotions(cur, r, size)


def _add_to_cart(cur, r, size, b):
    if b.cart is None:
        cur.execute("INSERT INTO shopping_cart (sc_id, sc_time) VALUES (nextval('cart_id'), "
                    "now()) RETURNING sc_id")
        b.cart = cur.fetchone()[0]
    item = r.uniform(1, size.items)
    cur.execute("UPDATE shopping_cart_line SET scl_qty = scl_qty + 1 WHERE scl_sc_id = %s AND "
                "scl_i_id = %s", (b.cart, item))
    if cur.rowcount == 0:
        cur.execute("INSERT INTO shopping_cart_line (scl_sc_id, scl_qty, scl_i_id) "
                    "VALUES (%s, %s, %s)", (b.cart, r.uniform(1, 3), item))
    cur.execute("UPDATE shopping_cart SET sc_time = now() WHERE sc_id = %s", (b.cart,))


def _cart(cur, b):
    return _all(cur, "SELECT scl_i_id, scl_qty, i_cost, i_title FROM shopping_cart_line, item "
                "WHERE scl_sc_id = %s AND scl_i_id = i_id ORDER BY scl_i_id", (b.cart,))


def shopping_cart(cur, r, size, b):
    _add_to_cart(cur, r, size, b)
    _cart(cur, b)
    _promotions(cur, r, size)


def customer_registration(cur, r, size, b):
    _all(cur, "SELECT c_uname, c_fname, c_lname FROM customer WHERE c_id = %s", (b.c_id,))


def buy_request(cur, r, size, b):
    """A returning customer logs in (20% of the time a new one registers)."""
    if r.uniform(1, 5) == 1:
        cur.execute("INSERT INTO address (addr_id, addr_street1, addr_street2, addr_city, "
                    "addr_state, addr_zip, addr_co_id) VALUES (nextval('address_id'), %s, %s, "
                    "%s, %s, %s, %s) RETURNING addr_id",
                    (r.astring(15, 40), r.astring(15, 40), r.astring(4, 30), r.astring(2, 20),
                     r.astring(5, 10), r.uniform(1, 92)))
        addr = cur.fetchone()[0]
        cur.execute("SELECT nextval('customer_id')")
        c = cur.fetchone()[0]
        cur.execute("INSERT INTO customer (c_id, c_uname, c_passwd, c_fname, c_lname, "
                    "c_addr_id, c_phone, c_email, c_since, c_last_login, c_login, c_expiration,"
                    " c_discount, c_balance, c_ytd_pmt, c_birthdate, c_data) VALUES (%s, %s, %s,"
                    " %s, %s, %s, %s, %s, current_date, current_date, now(), now() + interval "
                    "'2 hours', %s, 0, 0, %s, %s)",
                    (c, uname(c), uname(c).lower(), r.astring(8, 15), r.astring(8, 15), addr,
                     r.nstring(9, 16), f"{uname(c)}@x.example", r.money(0, 0.5),
                     dt.date(1970, 1, 1), r.astring(100, 500)))
        b.c_id = c
    else:
        _all(cur, "SELECT c_id, c_passwd FROM customer WHERE c_uname = %s", (uname(b.c_id),))
        cur.execute("UPDATE customer SET c_login = now(), c_expiration = now() + interval "
                    "'2 hours' WHERE c_id = %s", (b.c_id,))
    if b.cart is None:
        _add_to_cart(cur, r, size, b)
    _cart(cur, b)


def buy_confirm(cur, r, size, b):
    """The order, its lines, the card transaction and the stock, in one transaction; an empty
    cart is filled first (the browser went through Shopping Cart)."""
    lines = _cart(cur, b) if b.cart is not None else []
    if not lines:
        _add_to_cart(cur, r, size, b)
        lines = _cart(cur, b)
    (disc, addr) = _all(cur, "SELECT c_discount, c_addr_id FROM customer WHERE c_id = %s",
                        (b.c_id,))[0]
    sub = sum((cost * qty for _, qty, cost, _ in lines), Decimal(0))
    sub = (sub * (1 - disc)).quantize(Decimal("0.01"))
    tax, tot = total(sub, sum(q for _, q, _, _ in lines))
    cur.execute("INSERT INTO orders (o_id, o_c_id, o_date, o_sub_total, o_tax, o_total, "
                "o_ship_type, o_ship_date, o_bill_addr_id, o_ship_addr_id, o_status) VALUES "
                "(nextval('orders_id'), %s, now(), %s, %s, %s, %s, now() + interval '3 days', "
                "%s, %s, 'PENDING') RETURNING o_id",
                (b.c_id, sub, tax, tot, SHIP_TYPES[r.uniform(0, 5)], addr, addr))
    o = cur.fetchone()[0]
    for k, (i, qty, _, _) in enumerate(lines, 1):
        cur.execute("INSERT INTO order_line (ol_id, ol_o_id, ol_i_id, ol_qty, ol_discount, "
                    "ol_comments) VALUES (%s, %s, %s, %s, %s, %s)",
                    (k, o, i, qty, disc, r.astring(20, 100)))
        cur.execute("UPDATE item SET i_stock = CASE WHEN i_stock - %s < 10 THEN i_stock - %s + 21"
                    " ELSE i_stock - %s END WHERE i_id = %s", (qty, qty, qty, i))
    cur.execute("INSERT INTO cc_xacts (cx_o_id, cx_type, cx_num, cx_name, cx_expire, cx_auth_id,"
                " cx_xact_amt, cx_xact_date, cx_co_id) VALUES (%s, %s, %s, %s, current_date + "
                "365, %s, %s, now(), %s)",
                (o, CC_TYPES[r.uniform(0, 4)], r.nstring(15, 16), r.astring(14, 30),
                 r.astring(15, 15), tot, r.uniform(1, 92)))
    cur.execute("DELETE FROM shopping_cart_line WHERE scl_sc_id = %s", (b.cart,))


def order_inquiry(cur, r, size, b):
    _all(cur, "SELECT c_uname FROM customer WHERE c_id = %s", (b.c_id,))


def order_display(cur, r, size, b):
    last = _all(cur, "SELECT o_id, o_date, o_total, o_status FROM orders WHERE o_c_id = %s "
                "ORDER BY o_date DESC, o_id DESC LIMIT 1", (b.c_id,))
    if last:
        _all(cur, "SELECT ol_i_id, i_title, ol_qty, ol_discount FROM order_line, item "
             "WHERE ol_o_id = %s AND ol_i_id = i_id", (last[0][0],))


def admin_request(cur, r, size, b):
    product_detail(cur, r, size, b)


def admin_confirm(cur, r, size, b):
    """A new price and pictures, and related items recomputed from recent co-purchases."""
    i = r.uniform(1, size.items)
    related = [x[0] for x in _all(
        cur, "SELECT ol2.ol_i_id FROM order_line ol1, order_line ol2 WHERE ol1.ol_i_id = %s "
        "AND ol2.ol_o_id = ol1.ol_o_id AND ol2.ol_i_id <> %s AND ol1.ol_o_id > "
        "(SELECT max(o_id) - 10000 FROM orders) GROUP BY ol2.ol_i_id "
        "ORDER BY sum(ol2.ol_qty) DESC LIMIT 5", (i, i))]
    related += [r.uniform(1, size.items) for _ in range(5 - len(related))]
    cur.execute("UPDATE item SET i_cost = %s, i_image = %s, i_thumbnail = %s, "
                "i_pub_date = current_date, i_related1 = %s, i_related2 = %s, i_related3 = %s, "
                "i_related4 = %s, i_related5 = %s WHERE i_id = %s",
                (r.money(1, 999), f"img{i % 100}/image_{i}.gif", f"img{i % 100}/thumb_{i}.gif",
                 *related, i))


INTERACTIONS = {n: globals()[n] for n in _NAMES}
