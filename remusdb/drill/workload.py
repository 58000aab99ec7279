"""The drill's ledger workload: transfers between accounts, each client on its own connection,
every acknowledged commit remembered on the client side (the ground truth after failover)."""

from __future__ import annotations

import random
import threading
import time

import psycopg2
import pymysql

from remusdb.drill.report import Op, ledger_check
from remusdb.errors import RemusError
from remusdb.lab import dbclient

ACCOUNTS, INITIAL = 100, 1000
SCHEMA = ["DROP TABLE IF EXISTS ledger", "DROP TABLE IF EXISTS accounts",
          "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)",
          "CREATE TABLE ledger (id bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL, "
          "amount int NOT NULL)"]
ERRORS = (psycopg2.Error, pymysql.err.Error, OSError)
CLIENT_TIMEOUT_S = 20  # a dead peer noticed after this (libpq tcp_user_timeout, pymysql r/w)


def connect(db: str, host: str, timeout: float = 10.0):
    """A client connection that notices a dead peer in ~20 s rather than TCP's 15 minutes."""
    if db == "postgres":
        return dbclient.postgres(host, timeout=timeout, tcp_user_timeout=CLIENT_TIMEOUT_S * 1000,
                                 keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
    return dbclient.mariadb(host, timeout=timeout, read_timeout=CLIENT_TIMEOUT_S,
                            write_timeout=CLIENT_TIMEOUT_S)


def create(conn) -> None:
    with conn.cursor() as cur:
        for sql in SCHEMA:
            cur.execute(sql)
        cur.execute("INSERT INTO accounts VALUES " +
                    ", ".join(f"({i}, {INITIAL})" for i in range(ACCOUNTS)))
    conn.commit()


def read_back(conn) -> tuple[list, dict]:
    """The ledger and the balances from one snapshot (clients may still be writing)."""
    with conn.cursor() as cur:
        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT"
                    if isinstance(conn, pymysql.connections.Connection)
                    else "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.execute("SELECT id, src, dst, amount FROM ledger")
        ledger = [tuple(int(x) for x in r) for r in cur.fetchall()]
        cur.execute("SELECT id, balance FROM accounts")
        balances = {int(a): int(b) for a, b in cur.fetchall()}
    conn.rollback()
    return ledger, balances


class LedgerClient(threading.Thread):
    def __init__(self, k: int, db: str, host: str, open_conn, stop: threading.Event):
        super().__init__(name=f"ledger-{k}", daemon=True)
        self.k, self.db, self.host, self.open_conn, self.stop = k, db, host, open_conn, stop
        self.ops: list[Op] = []
        self.acked: set[int] = set()
        self.rng = random.Random(k)

    def run(self) -> None:
        conn_no, n, conn = 0, 0, None
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = self.open_conn()
                    conn_no += 1
                except ERRORS:
                    time.sleep(0.2)
                    continue
            n += 1
            txid = (self.k + 1) * 1_000_000_000 + n
            a, b = sorted(self.rng.sample(range(ACCOUNTS), 2))  # in id order: no deadlocks
            amount = self.rng.randint(1, 50)
            if self.rng.random() < 0.5:
                amount = -amount
            t0 = time.monotonic()
            try:
                with conn.cursor() as cur:
                    cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s",
                                (amount, a))
                    cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                                (amount, b))
                    cur.execute("INSERT INTO ledger VALUES (%s, %s, %s, %s)",
                                (txid, a, b, amount))
                conn.commit()
            except ERRORS as e:
                self.ops.append(Op(self.k, conn_no, t0, time.monotonic(), False, txid,
                                   str(e).strip().splitlines()[0][:120] if str(e) else
                                   type(e).__name__))
                try:
                    conn.close()
                except ERRORS:
                    pass
                conn = None
                continue
            self.acked.add(txid)
            self.ops.append(Op(self.k, conn_no, t0, time.monotonic(), True, txid))
        if conn is not None:
            try:
                conn.close()
            except ERRORS:
                pass


def retry_connect(open_conn, timeout: float = 60.0):
    """A connection, retried while the database is unreachable (a failover, a boot)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_conn()
        except ERRORS as e:
            if time.monotonic() > deadline:
                raise RemusError(f"cannot reach the database: {e}") from None
            time.sleep(0.5)


def start(db: str, host: str, open_conn, n: int) -> tuple[list[LedgerClient], threading.Event]:
    """A fresh ledger and `n` clients moving money on it until the event is set."""
    setup = retry_connect(open_conn)
    create(setup)
    setup.close()
    stop = threading.Event()
    clients = [LedgerClient(k, db, host, open_conn, stop) for k in range(n)]
    for c in clients:
        c.start()
    return clients, stop


def check(open_conn, acked: set[int]) -> dict:
    """The ledger read back (one snapshot) against the transfers acknowledged so far."""
    conn = retry_connect(open_conn)
    try:
        ledger, balances = read_back(conn)
    finally:
        conn.close()
    return ledger_check(acked, ledger, balances, INITIAL)
