"""The 22 TPC-H queries (spec 2.4, PostgreSQL syntax) and their substitution parameters drawn per
the spec's rules (2.4.x.3) from a seeded generator: pure, so the rules are testable alone."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

NATIONS = (  # (name, region key), by nation key
    ("ALGERIA", 0), ("ARGENTINA", 1), ("BRAZIL", 1), ("CANADA", 1), ("EGYPT", 4),
    ("ETHIOPIA", 0), ("FRANCE", 3), ("GERMANY", 3), ("INDIA", 2), ("INDONESIA", 2),
    ("IRAN", 4), ("IRAQ", 4), ("JAPAN", 2), ("JORDAN", 4), ("KENYA", 0), ("MOROCCO", 0),
    ("MOZAMBIQUE", 0), ("PERU", 1), ("CHINA", 2), ("ROMANIA", 3), ("SAUDI ARABIA", 4),
    ("VIETNAM", 2), ("RUSSIA", 3), ("UNITED KINGDOM", 3), ("UNITED STATES", 1))
REGIONS = ("AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST")
TYPE_S1 = ("STANDARD", "SMALL", "MEDIUM", "LARGE", "ECONOMY", "PROMO")
TYPE_S2 = ("ANODIZED", "BURNISHED", "PLATED", "POLISHED", "BRUSHED")
TYPE_S3 = ("TIN", "NICKEL", "BRASS", "STEEL", "COPPER")
CONTAINER_S1 = ("SM", "LG", "MED", "JUMBO", "WRAP")
CONTAINER_S2 = ("CASE", "BOX", "BAG", "JAR", "PKG", "PACK", "CAN", "DRUM")
SEGMENTS = ("AUTOMOBILE", "BUILDING", "FURNITURE", "MACHINERY", "HOUSEHOLD")
SHIPMODES = ("REG AIR", "AIR", "RAIL", "SHIP", "TRUCK", "MAIL", "FOB")
COLORS = tuple("""almond antique aquamarine azure beige bisque black blanched blue blush brown
burlywood burnished chartreuse chiffon chocolate coral cornflower cornsilk cream cyan dark deep
dim dodger drab firebrick floral forest frosted gainsboro ghost goldenrod green grey honeydew
hot indian ivory khaki lace lavender lawn lemon light lime linen magenta maroon medium metallic
midnight mint misty moccasin navajo navy olive orange orchid pale papaya peach peru pink plum
powder puff purple red rose rosy royal saddle salmon sandy seashell sienna sky slate smoke snow
spring steel tan thistle tomato turquoise violet wheat white yellow""".split())


def _month(r: random.Random, first: tuple[int, int], last: tuple[int, int]) -> dt.date:
    months = (last[0] - first[0]) * 12 + last[1] - first[1]
    k = first[0] * 12 + first[1] - 1 + r.randint(0, months)
    return dt.date(k // 12, k % 12 + 1, 1)


def _brand(r):
    return f"Brand#{r.randint(1, 5)}{r.randint(1, 5)}"


def params(seed: int, scale: float) -> dict[str, dict]:
    r = random.Random(seed)
    nation = lambda: NATIONS[r.randrange(25)][0]  # noqa: E731
    year = lambda: dt.date(r.randint(1993, 1997), 1, 1)  # noqa: E731
    p = {}
    p["Q1"] = {"delta": r.randint(60, 120)}
    p["Q2"] = {"size": r.randint(1, 50), "type": r.choice(TYPE_S3),
               "region": r.choice(REGIONS)}
    p["Q3"] = {"segment": r.choice(SEGMENTS), "date": dt.date(1995, 3, r.randint(1, 31))}
    p["Q4"] = {"date": _month(r, (1993, 1), (1997, 10))}
    p["Q5"] = {"region": r.choice(REGIONS), "date": year()}
    p["Q6"] = {"date": year(), "discount": Decimal(r.randint(2, 9)) / 100,
               "quantity": r.randint(24, 25)}
    n1, n2 = r.sample(range(25), 2)
    p["Q7"] = {"nation1": NATIONS[n1][0], "nation2": NATIONS[n2][0]}
    n = r.randrange(25)
    p["Q8"] = {"nation": NATIONS[n][0], "region": REGIONS[NATIONS[n][1]],
               "type": f"{r.choice(TYPE_S1)} {r.choice(TYPE_S2)} {r.choice(TYPE_S3)}"}
    p["Q9"] = {"color": f"%{r.choice(COLORS)}%"}
    p["Q10"] = {"date": _month(r, (1993, 2), (1995, 1))}
    p["Q11"] = {"nation": nation(), "fraction": Decimal("0.0001") / Decimal(str(scale))}
    m1, m2 = r.sample(SHIPMODES, 2)
    p["Q12"] = {"shipmode1": m1, "shipmode2": m2, "date": year()}
    p["Q13"] = {"words": f"%{r.choice(('special', 'pending', 'unusual', 'express'))}%"
                         f"{r.choice(('packages', 'requests', 'accounts', 'deposits'))}%"}
    p["Q14"] = {"date": _month(r, (1993, 1), (1997, 12))}
    p["Q15"] = {"date": _month(r, (1993, 1), (1997, 10))}
    p["Q16"] = {"brand": _brand(r), "type": f"{r.choice(TYPE_S1)} {r.choice(TYPE_S2)}%",
                "sizes": tuple(r.sample(range(1, 51), 8))}
    p["Q17"] = {"brand": _brand(r),
                "container": f"{r.choice(CONTAINER_S1)} {r.choice(CONTAINER_S2)}"}
    p["Q18"] = {"quantity": r.randint(312, 315)}
    p["Q19"] = {"quantity1": r.randint(1, 10), "quantity2": r.randint(10, 20),
                "quantity3": r.randint(20, 30), "brand1": _brand(r), "brand2": _brand(r),
                "brand3": _brand(r)}
    p["Q20"] = {"color": f"{r.choice(COLORS)}%", "date": year(), "nation": nation()}
    p["Q21"] = {"nation": nation()}
    p["Q22"] = {"codes": tuple(str(c + 10) for c in r.sample(range(25), 7))}
    return p


SQL = {
    "Q1": """SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
  sum(l_extendedprice) AS sum_base_price, sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
  sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, avg(l_quantity) AS avg_qty,
  avg(l_extendedprice) AS avg_price, avg(l_discount) AS avg_disc, count(*) AS count_order
FROM lineitem WHERE l_shipdate <= date '1998-12-01' - %(delta)s * interval '1 day'
GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus""",
    "Q2": """SELECT s_acctbal, s_name, n_name, p_partkey, p_mfgr, s_address, s_phone, s_comment
FROM part, supplier, partsupp, nation, region
WHERE p_partkey = ps_partkey AND s_suppkey = ps_suppkey AND p_size = %(size)s
  AND p_type LIKE '%%' || %(type)s AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey
  AND r_name = %(region)s AND ps_supplycost = (
    SELECT min(ps_supplycost) FROM partsupp, supplier, nation, region
    WHERE p_partkey = ps_partkey AND s_suppkey = ps_suppkey AND s_nationkey = n_nationkey
      AND n_regionkey = r_regionkey AND r_name = %(region)s)
ORDER BY s_acctbal DESC, n_name, s_name, p_partkey LIMIT 100""",
    "Q3": """SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate,
  o_shippriority
FROM customer, orders, lineitem
WHERE c_mktsegment = %(segment)s AND c_custkey = o_custkey AND l_orderkey = o_orderkey
  AND o_orderdate < %(date)s AND l_shipdate > %(date)s
GROUP BY l_orderkey, o_orderdate, o_shippriority
ORDER BY revenue DESC, o_orderdate, l_orderkey LIMIT 10""",
    "Q4": """SELECT o_orderpriority, count(*) AS order_count FROM orders
WHERE o_orderdate >= %(date)s AND o_orderdate < %(date)s + interval '3 month'
  AND EXISTS (SELECT * FROM lineitem WHERE l_orderkey = o_orderkey
              AND l_commitdate < l_receiptdate)
GROUP BY o_orderpriority ORDER BY o_orderpriority""",
    "Q5": """SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue
FROM customer, orders, lineitem, supplier, nation, region
WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey
  AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey AND n_regionkey = r_regionkey
  AND r_name = %(region)s AND o_orderdate >= %(date)s
  AND o_orderdate < %(date)s + interval '1 year'
GROUP BY n_name ORDER BY revenue DESC""",
    "Q6": """SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem
WHERE l_shipdate >= %(date)s AND l_shipdate < %(date)s + interval '1 year'
  AND l_discount BETWEEN %(discount)s - 0.01 AND %(discount)s + 0.01
  AND l_quantity < %(quantity)s""",
    "Q7": """SELECT supp_nation, cust_nation, l_year, sum(volume) AS revenue FROM (
  SELECT n1.n_name AS supp_nation, n2.n_name AS cust_nation,
    extract(year FROM l_shipdate) AS l_year, l_extendedprice * (1 - l_discount) AS volume
  FROM supplier, lineitem, orders, customer, nation n1, nation n2
  WHERE s_suppkey = l_suppkey AND o_orderkey = l_orderkey AND c_custkey = o_custkey
    AND s_nationkey = n1.n_nationkey AND c_nationkey = n2.n_nationkey
    AND ((n1.n_name = %(nation1)s AND n2.n_name = %(nation2)s)
      OR (n1.n_name = %(nation2)s AND n2.n_name = %(nation1)s))
    AND l_shipdate BETWEEN date '1995-01-01' AND date '1996-12-31') AS shipping
GROUP BY supp_nation, cust_nation, l_year ORDER BY supp_nation, cust_nation, l_year""",
    "Q8": """SELECT o_year, sum(CASE WHEN nation = %(nation)s THEN volume ELSE 0 END) / sum(volume)
  AS mkt_share FROM (
  SELECT extract(year FROM o_orderdate) AS o_year,
    l_extendedprice * (1 - l_discount) AS volume, n2.n_name AS nation
  FROM part, supplier, lineitem, orders, customer, nation n1, nation n2, region
  WHERE p_partkey = l_partkey AND s_suppkey = l_suppkey AND l_orderkey = o_orderkey
    AND o_custkey = c_custkey AND c_nationkey = n1.n_nationkey
    AND n1.n_regionkey = r_regionkey AND r_name = %(region)s
    AND s_nationkey = n2.n_nationkey
    AND o_orderdate BETWEEN date '1995-01-01' AND date '1996-12-31'
    AND p_type = %(type)s) AS all_nations
GROUP BY o_year ORDER BY o_year""",
    "Q9": """SELECT nation, o_year, sum(amount) AS sum_profit FROM (
  SELECT n_name AS nation, extract(year FROM o_orderdate) AS o_year,
    l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity AS amount
  FROM part, supplier, lineitem, partsupp, orders, nation
  WHERE s_suppkey = l_suppkey AND ps_suppkey = l_suppkey AND ps_partkey = l_partkey
    AND p_partkey = l_partkey AND o_orderkey = l_orderkey AND s_nationkey = n_nationkey
    AND p_name LIKE %(color)s) AS profit
GROUP BY nation, o_year ORDER BY nation, o_year DESC""",
    "Q10": """SELECT c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) AS revenue,
  c_acctbal, n_name, c_address, c_phone, c_comment
FROM customer, orders, lineitem, nation
WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND o_orderdate >= %(date)s
  AND o_orderdate < %(date)s + interval '3 month' AND l_returnflag = 'R'
  AND c_nationkey = n_nationkey
GROUP BY c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment
ORDER BY revenue DESC, c_custkey LIMIT 20""",
    "Q11": """SELECT ps_partkey, sum(ps_supplycost * ps_availqty) AS value
FROM partsupp, supplier, nation
WHERE ps_suppkey = s_suppkey AND s_nationkey = n_nationkey AND n_name = %(nation)s
GROUP BY ps_partkey HAVING sum(ps_supplycost * ps_availqty) > (
  SELECT sum(ps_supplycost * ps_availqty) * %(fraction)s FROM partsupp, supplier, nation
  WHERE ps_suppkey = s_suppkey AND s_nationkey = n_nationkey AND n_name = %(nation)s)
ORDER BY value DESC, ps_partkey""",
    "Q12": """SELECT l_shipmode,
  sum(CASE WHEN o_orderpriority = '1-URGENT' OR o_orderpriority = '2-HIGH' THEN 1 ELSE 0 END)
    AS high_line_count,
  sum(CASE WHEN o_orderpriority <> '1-URGENT' AND o_orderpriority <> '2-HIGH' THEN 1 ELSE 0
    END) AS low_line_count
FROM orders, lineitem
WHERE o_orderkey = l_orderkey AND l_shipmode IN (%(shipmode1)s, %(shipmode2)s)
  AND l_commitdate < l_receiptdate AND l_shipdate < l_commitdate
  AND l_receiptdate >= %(date)s AND l_receiptdate < %(date)s + interval '1 year'
GROUP BY l_shipmode ORDER BY l_shipmode""",
    "Q13": """SELECT c_count, count(*) AS custdist FROM (
  SELECT c_custkey, count(o_orderkey) AS c_count
  FROM customer LEFT OUTER JOIN orders ON c_custkey = o_custkey
    AND o_comment NOT LIKE %(words)s
  GROUP BY c_custkey) AS c_orders
GROUP BY c_count ORDER BY custdist DESC, c_count DESC""",
    "Q14": """SELECT 100.00 * sum(CASE WHEN p_type LIKE 'PROMO%%'
  THEN l_extendedprice * (1 - l_discount) ELSE 0 END)
  / sum(l_extendedprice * (1 - l_discount)) AS promo_revenue
FROM lineitem, part
WHERE l_partkey = p_partkey AND l_shipdate >= %(date)s
  AND l_shipdate < %(date)s + interval '1 month'""",
    "Q15": """WITH revenue AS (
  SELECT l_suppkey AS supplier_no, sum(l_extendedprice * (1 - l_discount)) AS total_revenue
  FROM lineitem WHERE l_shipdate >= %(date)s AND l_shipdate < %(date)s + interval '3 month'
  GROUP BY l_suppkey)
SELECT s_suppkey, s_name, s_address, s_phone, total_revenue FROM supplier, revenue
WHERE s_suppkey = supplier_no AND total_revenue = (SELECT max(total_revenue) FROM revenue)
ORDER BY s_suppkey""",
    "Q16": """SELECT p_brand, p_type, p_size, count(DISTINCT ps_suppkey) AS supplier_cnt
FROM partsupp, part
WHERE p_partkey = ps_partkey AND p_brand <> %(brand)s AND p_type NOT LIKE %(type)s
  AND p_size IN %(sizes)s
  AND ps_suppkey NOT IN (SELECT s_suppkey FROM supplier
                         WHERE s_comment LIKE '%%Customer%%Complaints%%')
GROUP BY p_brand, p_type, p_size ORDER BY supplier_cnt DESC, p_brand, p_type, p_size""",
    "Q17": """SELECT sum(l_extendedprice) / 7.0 AS avg_yearly FROM lineitem, part
WHERE p_partkey = l_partkey AND p_brand = %(brand)s AND p_container = %(container)s
  AND l_quantity < (SELECT 0.2 * avg(l_quantity) FROM lineitem WHERE l_partkey = p_partkey)""",
    "Q18": """SELECT c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity)
FROM customer, orders, lineitem
WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey
                     HAVING sum(l_quantity) > %(quantity)s)
  AND c_custkey = o_custkey AND o_orderkey = l_orderkey
GROUP BY c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice
ORDER BY o_totalprice DESC, o_orderdate, o_orderkey LIMIT 100""",
    "Q19": """SELECT sum(l_extendedprice * (1 - l_discount)) AS revenue FROM lineitem, part
WHERE (p_partkey = l_partkey AND p_brand = %(brand1)s
    AND p_container IN ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG')
    AND l_quantity >= %(quantity1)s AND l_quantity <= %(quantity1)s + 10
    AND p_size BETWEEN 1 AND 5 AND l_shipmode IN ('AIR', 'AIR REG')
    AND l_shipinstruct = 'DELIVER IN PERSON')
  OR (p_partkey = l_partkey AND p_brand = %(brand2)s
    AND p_container IN ('MED BAG', 'MED BOX', 'MED PKG', 'MED PACK')
    AND l_quantity >= %(quantity2)s AND l_quantity <= %(quantity2)s + 10
    AND p_size BETWEEN 1 AND 10 AND l_shipmode IN ('AIR', 'AIR REG')
    AND l_shipinstruct = 'DELIVER IN PERSON')
  OR (p_partkey = l_partkey AND p_brand = %(brand3)s
    AND p_container IN ('LG CASE', 'LG BOX', 'LG PACK', 'LG PKG')
    AND l_quantity >= %(quantity3)s AND l_quantity <= %(quantity3)s + 10
    AND p_size BETWEEN 1 AND 15 AND l_shipmode IN ('AIR', 'AIR REG')
    AND l_shipinstruct = 'DELIVER IN PERSON')""",
    "Q20": """SELECT s_name, s_address FROM supplier, nation
WHERE s_suppkey IN (
    SELECT ps_suppkey FROM partsupp
    WHERE ps_partkey IN (SELECT p_partkey FROM part WHERE p_name LIKE %(color)s)
      AND ps_availqty > (SELECT 0.5 * sum(l_quantity) FROM lineitem
                         WHERE l_partkey = ps_partkey AND l_suppkey = ps_suppkey
                           AND l_shipdate >= %(date)s
                           AND l_shipdate < %(date)s + interval '1 year'))
  AND s_nationkey = n_nationkey AND n_name = %(nation)s
ORDER BY s_name""",
    "Q21": """SELECT s_name, count(*) AS numwait FROM supplier, lineitem l1, orders, nation
WHERE s_suppkey = l1.l_suppkey AND o_orderkey = l1.l_orderkey AND o_orderstatus = 'F'
  AND l1.l_receiptdate > l1.l_commitdate
  AND EXISTS (SELECT * FROM lineitem l2 WHERE l2.l_orderkey = l1.l_orderkey
              AND l2.l_suppkey <> l1.l_suppkey)
  AND NOT EXISTS (SELECT * FROM lineitem l3 WHERE l3.l_orderkey = l1.l_orderkey
                  AND l3.l_suppkey <> l1.l_suppkey AND l3.l_receiptdate > l3.l_commitdate)
  AND s_nationkey = n_nationkey AND n_name = %(nation)s
GROUP BY s_name ORDER BY numwait DESC, s_name LIMIT 100""",
    "Q22": """SELECT cntrycode, count(*) AS numcust, sum(c_acctbal) AS totacctbal FROM (
  SELECT substring(c_phone FROM 1 FOR 2) AS cntrycode, c_acctbal FROM customer
  WHERE substring(c_phone FROM 1 FOR 2) IN %(codes)s
    AND c_acctbal > (SELECT avg(c_acctbal) FROM customer WHERE c_acctbal > 0.00
                     AND substring(c_phone FROM 1 FOR 2) IN %(codes)s)
    AND NOT EXISTS (SELECT * FROM orders WHERE o_custkey = c_custkey)) AS custsale
GROUP BY cntrycode ORDER BY cntrycode""",
}
