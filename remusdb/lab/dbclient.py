"""Connections to the guest's databases, the way every client of the protected VM makes them."""

from __future__ import annotations

import time

import psycopg2
import pymysql

from remusdb.errors import RemusError
from remusdb.vm import DB_NAME, DB_USER, MARIADB_PORT, PG_PORT, db_password


def postgres(host: str, timeout: float = 10.0, **kw):
    return psycopg2.connect(host=host, port=PG_PORT, user=DB_USER, password=db_password(),
                            dbname=DB_NAME, connect_timeout=max(1, int(timeout)), **kw)


def mariadb(host: str, timeout: float = 10.0, **kw):
    return pymysql.connect(host=host, port=MARIADB_PORT, user=DB_USER, password=db_password(),
                           database=DB_NAME, connect_timeout=timeout, **kw)


def query_one(connect, host: str, sql: str, timeout: float = 30.0):
    """Connect (retrying until the deadline: the guest may still be bringing its NIC up) and
    return the first column of the first row."""
    return query_row(connect, host, sql, timeout)[0]


def query_row(connect, host: str, sql: str, timeout: float = 30.0) -> tuple:
    """The first row of `sql`, connecting as query_one does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = connect(host, timeout=min(10.0, timeout))
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    return tuple(cur.fetchone())
            finally:
                conn.close()
        except (psycopg2.OperationalError, pymysql.err.OperationalError) as e:
            if time.monotonic() > deadline:
                raise RemusError(f"{connect.__name__} at {host}: {str(e).strip()}") from None
            time.sleep(0.5)
