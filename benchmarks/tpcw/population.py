"""The bookstore's schema and initial population (TPC-W spec 1.2–1.3, 4.7), pure generators
scaled by the number of items; the population's emulated-browser count is items // 1000 (at
least 1), which fixes customers (2880 each), addresses, orders and credit-card transactions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from benchmarks.rand import Rand

SUBJECTS = ("ARTS", "BIOGRAPHIES", "BUSINESS", "CHILDREN", "COMPUTERS", "COOKING", "HEALTH",
            "HISTORY", "HOME", "HUMOR", "LITERATURE", "MYSTERY", "NON-FICTION", "PARENTING",
            "POLITICS", "REFERENCE", "RELIGION", "ROMANCE", "SELF-HELP", "SCIENCE-NATURE",
            "SCIENCE-FICTION", "SPORTS", "YOUTH", "TRAVEL")
BACKINGS = ("HARDBACK", "PAPERBACK", "USED", "AUDIO", "LIMITED-EDITION")
CC_TYPES = ("VISA", "MASTERCARD", "DISCOVER", "AMEX", "DINERS")
SHIP_TYPES = ("AIR", "UPS", "FEDEX", "SHIP", "COURIER", "MAIL")
STATUSES = ("PROCESSING", "SHIPPED", "PENDING", "DENIED")
COUNTRIES = 92
TAX = "0.0825"

DDL = """
CREATE TABLE country (co_id integer PRIMARY KEY, co_name varchar(50), co_exchange numeric(12,6),
  co_currency varchar(18));
CREATE TABLE address (addr_id integer PRIMARY KEY, addr_street1 varchar(40),
  addr_street2 varchar(40), addr_city varchar(30), addr_state varchar(20), addr_zip varchar(10),
  addr_co_id integer);
CREATE TABLE customer (c_id integer PRIMARY KEY, c_uname varchar(20) UNIQUE, c_passwd varchar(20),
  c_fname varchar(17), c_lname varchar(17), c_addr_id integer, c_phone varchar(18),
  c_email varchar(50), c_since date, c_last_login date, c_login timestamp,
  c_expiration timestamp, c_discount numeric(5,2), c_balance numeric(15,2),
  c_ytd_pmt numeric(15,2), c_birthdate date, c_data varchar(510));
CREATE TABLE author (a_id integer PRIMARY KEY, a_fname varchar(20), a_lname varchar(20),
  a_mname varchar(20), a_dob date, a_bio varchar(500));
CREATE TABLE item (i_id integer PRIMARY KEY, i_title varchar(60), i_a_id integer,
  i_pub_date date, i_publisher varchar(60), i_subject varchar(60), i_desc varchar(500),
  i_related1 integer, i_related2 integer, i_related3 integer, i_related4 integer,
  i_related5 integer, i_thumbnail varchar(40), i_image varchar(40), i_srp numeric(15,2),
  i_cost numeric(15,2), i_avail date, i_stock integer, i_isbn char(13), i_page integer,
  i_backing varchar(15), i_dimensions varchar(25));
CREATE TABLE orders (o_id integer PRIMARY KEY, o_c_id integer, o_date timestamp,
  o_sub_total numeric(15,2), o_tax numeric(15,2), o_total numeric(15,2), o_ship_type varchar(10),
  o_ship_date timestamp, o_bill_addr_id integer, o_ship_addr_id integer, o_status varchar(15));
CREATE TABLE order_line (ol_id integer, ol_o_id integer, ol_i_id integer, ol_qty integer,
  ol_discount numeric(5,2), ol_comments varchar(110), PRIMARY KEY (ol_o_id, ol_id));
CREATE TABLE cc_xacts (cx_o_id integer PRIMARY KEY, cx_type varchar(10), cx_num varchar(20),
  cx_name varchar(31), cx_expire date, cx_auth_id char(15), cx_xact_amt numeric(15,2),
  cx_xact_date timestamp, cx_co_id integer);
CREATE TABLE shopping_cart (sc_id integer PRIMARY KEY, sc_time timestamp);
CREATE TABLE shopping_cart_line (scl_sc_id integer, scl_qty integer, scl_i_id integer,
  PRIMARY KEY (scl_sc_id, scl_i_id));
CREATE INDEX item_subject ON item (i_subject, i_pub_date);
CREATE INDEX item_author ON item (i_a_id);
CREATE INDEX author_lname ON author (a_lname);
CREATE INDEX orders_customer ON orders (o_c_id, o_date);
CREATE INDEX order_line_item ON order_line (ol_i_id);
CREATE SEQUENCE orders_id;
CREATE SEQUENCE cart_id;
CREATE SEQUENCE customer_id;
CREATE SEQUENCE address_id;
"""
TABLES = ("shopping_cart_line", "shopping_cart", "cc_xacts", "order_line", "orders", "item",
          "author", "customer", "address", "country")


@dataclass(frozen=True)
class Size:
    items: int

    @property
    def ebs(self) -> int:
        return max(1, self.items // 1000)

    @property
    def customers(self) -> int:
        return 2880 * self.ebs

    @property
    def authors(self) -> int:
        return max(1, self.items // 4)

    @property
    def orders(self) -> int:
        return self.customers * 9 // 10


def total(sub_total, qty_sum: int):
    """(tax, total) of an order: 8.25% tax, shipping $3.00 + $1.00 per item. Pure, so
    Buy Confirm and the consistency check agree by construction."""
    from decimal import ROUND_HALF_UP, Decimal
    sub = Decimal(sub_total)
    tax = (sub * Decimal(TAX)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return tax, sub + tax + 3 + qty_sum


def uname(c_id: int) -> str:
    return f"UN{c_id:08d}"


def countries(r: Rand):
    for i in range(1, COUNTRIES + 1):
        yield i, f"Country{i:02d}", r.money(0.1, 10), f"Cur{i:02d}"


def addresses(size: Size, r: Rand):
    for i in range(1, 2 * size.customers + 1):
        yield (i, r.astring(15, 40), r.astring(15, 40), r.astring(4, 30), r.astring(2, 20),
               r.astring(5, 10), r.uniform(1, COUNTRIES))


def customers(size: Size, r: Rand, today: dt.date):
    for c in range(1, size.customers + 1):
        since = today - dt.timedelta(days=r.uniform(1, 730))
        login = dt.datetime.combine(since, dt.time()) + dt.timedelta(days=r.uniform(0, 60))
        yield (c, uname(c), uname(c).lower(), r.astring(8, 15), r.astring(8, 15),
               r.uniform(1, 2 * size.customers), r.nstring(9, 16), f"{uname(c)}@x.example",
               since, since, login, login + dt.timedelta(hours=2), r.money(0, 0.5), "0.00",
               r.money(0, 999.99), dt.date(1950, 1, 1) + dt.timedelta(days=r.uniform(0, 18000)),
               r.astring(100, 500))


def authors(size: Size, r: Rand):
    for a in range(1, size.authors + 1):
        yield (a, r.astring(3, 20), r.astring(1, 20), r.astring(1, 20),
               dt.date(1800, 1, 1) + dt.timedelta(days=r.uniform(0, 70000)),
               r.astring(125, 500))


def items(size: Size, r: Rand, today: dt.date):
    n = size.items
    for i in range(1, n + 1):
        related = [r.uniform(1, n) for _ in range(5)]
        srp = r.uniform(100, 99999)
        cost = srp * (100 - r.uniform(0, 50)) // 100
        yield (i, r.astring(14, 60), i if i <= size.authors else r.uniform(1, size.authors),
               dt.date(1930, 1, 1) + dt.timedelta(days=r.uniform(0, 27000)), r.astring(14, 60),
               SUBJECTS[r.uniform(0, len(SUBJECTS) - 1)], r.astring(100, 500), *related,
               f"img{i % 100}/thumb_{i}.gif", f"img{i % 100}/image_{i}.gif",
               f"{srp // 100}.{srp % 100:02d}", f"{cost // 100}.{cost % 100:02d}",
               today + dt.timedelta(days=r.uniform(1, 30)), r.uniform(10, 30), r.nstring(13, 13),
               r.uniform(20, 9999), BACKINGS[r.uniform(0, len(BACKINGS) - 1)],
               f"{r.uniform(1, 99)}x{r.uniform(1, 99)}x{r.uniform(1, 99)}")


def orders(size: Size, r: Rand, now: dt.datetime):
    """(orders, order lines, credit-card transactions): the totals follow `total()`."""
    o_rows, ol_rows, cx_rows = [], [], []
    for o in range(1, size.orders + 1):
        c = r.uniform(1, size.customers)
        lines = [(r.uniform(1, size.items), r.uniform(1, 300), r.money(0, 0.3))
                 for _ in range(r.uniform(1, 5))]
        sub_cents = sum(r.uniform(100, 9999) * q for _, q, _ in lines)
        sub = f"{sub_cents // 100}.{sub_cents % 100:02d}"
        tax, tot = total(sub, sum(q for _, q, _ in lines))
        when = now - dt.timedelta(days=r.uniform(1, 60))
        o_rows.append((o, c, when, sub, tax, tot, SHIP_TYPES[r.uniform(0, 5)],
                       when + dt.timedelta(days=r.uniform(0, 7)), r.uniform(1, 2 * size.customers),
                       r.uniform(1, 2 * size.customers), STATUSES[r.uniform(0, 3)]))
        for k, (i, q, disc) in enumerate(lines, 1):
            ol_rows.append((k, o, i, q, disc, r.astring(20, 100)))
        cx_rows.append((o, CC_TYPES[r.uniform(0, 4)], r.nstring(15, 16), r.astring(14, 30),
                        (now + dt.timedelta(days=r.uniform(10, 730))).date(), r.astring(15, 15),
                        tot, when, r.uniform(1, COUNTRIES)))
    return o_rows, ol_rows, cx_rows
