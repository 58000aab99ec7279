"""The spec's consistency conditions (clause 3.3.2, 1–10 and 12), each one SQL query that
returns the offending rows: after any run, every one must return none."""

from __future__ import annotations

from benchmarks.target import Target

CONDITIONS = {
    1: ("W_YTD = sum(D_YTD)",
        "SELECT w_id FROM warehouse JOIN (SELECT d_w_id, sum(d_ytd) s FROM district "
        "GROUP BY d_w_id) x ON d_w_id = w_id WHERE w_ytd <> s"),
    2: ("D_NEXT_O_ID - 1 = max(O_ID) = max(NO_O_ID)",
        "SELECT d_w_id, d_id FROM district JOIN (SELECT o_w_id, o_d_id, max(o_id) m FROM orders "
        "GROUP BY o_w_id, o_d_id) o ON o_w_id = d_w_id AND o_d_id = d_id LEFT JOIN "
        "(SELECT no_w_id, no_d_id, max(no_o_id) m FROM new_order GROUP BY no_w_id, no_d_id) n "
        "ON no_w_id = d_w_id AND no_d_id = d_id "
        "WHERE d_next_o_id - 1 <> o.m OR (n.m IS NOT NULL AND n.m <> o.m)"),
    3: ("max(NO_O_ID) - min(NO_O_ID) + 1 = rows in NEW-ORDER",
        "SELECT no_w_id, no_d_id FROM new_order GROUP BY no_w_id, no_d_id "
        "HAVING max(no_o_id) - min(no_o_id) + 1 <> count(*)"),
    4: ("sum(O_OL_CNT) = rows in ORDER-LINE",
        "SELECT o_w_id, o_d_id FROM (SELECT o_w_id, o_d_id, sum(o_ol_cnt) s FROM orders "
        "GROUP BY o_w_id, o_d_id) o LEFT JOIN (SELECT ol_w_id, ol_d_id, count(*) c "
        "FROM order_line GROUP BY ol_w_id, ol_d_id) l ON ol_w_id = o_w_id AND ol_d_id = o_d_id "
        "WHERE l.c IS NULL OR s <> l.c"),
    5: ("O_CARRIER_ID is null exactly when a NEW-ORDER row exists",
        "SELECT o_w_id, o_d_id, o_id FROM orders LEFT JOIN new_order ON no_w_id = o_w_id AND "
        "no_d_id = o_d_id AND no_o_id = o_id "
        "WHERE (o_carrier_id IS NULL) <> (no_o_id IS NOT NULL)"),
    6: ("O_OL_CNT = the order's ORDER-LINE rows",
        "SELECT o_w_id, o_d_id, o_id FROM orders LEFT JOIN (SELECT ol_w_id, ol_d_id, ol_o_id, "
        "count(*) c FROM order_line GROUP BY ol_w_id, ol_d_id, ol_o_id) l ON ol_w_id = o_w_id "
        "AND ol_d_id = o_d_id AND ol_o_id = o_id WHERE l.c IS NULL OR o_ol_cnt <> l.c"),
    7: ("OL_DELIVERY_D is null exactly when O_CARRIER_ID is",
        "SELECT o_w_id, o_d_id, o_id FROM orders JOIN order_line ON ol_w_id = o_w_id AND "
        "ol_d_id = o_d_id AND ol_o_id = o_id "
        "WHERE (ol_delivery_d IS NULL) <> (o_carrier_id IS NULL)"),
    8: ("W_YTD = sum(H_AMOUNT) of its history",
        "SELECT w_id FROM warehouse LEFT JOIN (SELECT h_w_id, sum(h_amount) s FROM history "
        "GROUP BY h_w_id) h ON h_w_id = w_id WHERE h.s IS NULL OR w_ytd <> h.s"),
    9: ("D_YTD = sum(H_AMOUNT) of its history",
        "SELECT d_w_id, d_id FROM district LEFT JOIN (SELECT h_w_id, h_d_id, sum(h_amount) s "
        "FROM history GROUP BY h_w_id, h_d_id) h ON h_w_id = d_w_id AND h_d_id = d_id "
        "WHERE h.s IS NULL OR d_ytd <> h.s"),
    10: ("C_BALANCE = delivered OL_AMOUNT - H_AMOUNT",
         "SELECT c_w_id, c_d_id, c_id FROM customer LEFT JOIN (SELECT o_w_id, o_d_id, o_c_id, "
         "sum(ol_amount) s FROM orders JOIN order_line ON ol_w_id = o_w_id AND "
         "ol_d_id = o_d_id AND ol_o_id = o_id WHERE ol_delivery_d IS NOT NULL "
         "GROUP BY o_w_id, o_d_id, o_c_id) o ON o_w_id = c_w_id AND o_d_id = c_d_id AND "
         "o_c_id = c_id LEFT JOIN (SELECT h_c_w_id, h_c_d_id, h_c_id, sum(h_amount) s "
         "FROM history GROUP BY h_c_w_id, h_c_d_id, h_c_id) h ON h_c_w_id = c_w_id AND "
         "h_c_d_id = c_d_id AND h_c_id = c_id "
         "WHERE c_balance <> coalesce(o.s, 0) - coalesce(h.s, 0)"),
    12: ("C_BALANCE + C_YTD_PAYMENT = delivered OL_AMOUNT",
         "SELECT c_w_id, c_d_id, c_id FROM customer LEFT JOIN (SELECT o_w_id, o_d_id, o_c_id, "
         "sum(ol_amount) s FROM orders JOIN order_line ON ol_w_id = o_w_id AND "
         "ol_d_id = o_d_id AND ol_o_id = o_id WHERE ol_delivery_d IS NOT NULL "
         "GROUP BY o_w_id, o_d_id, o_c_id) o ON o_w_id = c_w_id AND o_d_id = c_d_id AND "
         "o_c_id = c_id WHERE c_balance + c_ytd_payment <> coalesce(o.s, 0)"),
}


def check(target: Target) -> list[str]:
    """One line per violated condition, with up to three offending keys."""
    conn = target.open()
    problems = []
    try:
        with conn.cursor() as cur:
            for n, (what, sql) in CONDITIONS.items():
                cur.execute(sql + " LIMIT 3")
                bad = cur.fetchall()
                if bad:
                    keys = ", ".join(str(tuple(r)) for r in bad)
                    problems.append(f"TPC-C consistency condition {n} ({what}) fails at {keys}")
        conn.rollback()
    finally:
        conn.close()
    return problems
