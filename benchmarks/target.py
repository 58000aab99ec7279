"""What a benchmark driver talks to: a database kind and a way to open connections.

psycopg2 and pymysql share the `%s` paramstyle, so drivers write one SQL text; what differs
between the two (bulk load, retryable errors, a few types) lives here and in each driver's small
dialect table.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import pymysql

from remusdb.errors import RemusError

KINDS = ("postgres", "mariadb")
# MariaDB: deadlock found, lock wait timeout, "record has changed since last read".
_MARIADB_RETRY = {1213, 1205, 1020}


@dataclass(frozen=True)
class Target:
    kind: str                       # "postgres" | "mariadb"
    connect: Callable[[], Any]      # a new DB-API connection, autocommit off
    label: str = ""                 # where it is, for messages ("guest <VM_IP>:5432")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RemusError(f"unknown database kind {self.kind!r} (expected one of "
                             f"{', '.join(KINDS)})")

    def open(self):
        """A connection, or one clear line saying why not."""
        try:
            return self.connect()
        except (psycopg2.OperationalError, pymysql.err.OperationalError) as e:
            raise RemusError(f"cannot connect to {self.kind} at {self.label or '?'}: "
                             f"{first_line(e)}") from None


def retryable(kind: str, exc: BaseException) -> bool:
    """A transaction the database rolled back on its own (deadlock, serialization): the spec
    lets the terminal retry it; it is not an error of the benchmark."""
    if kind == "postgres":
        return isinstance(exc, (psycopg2.errors.SerializationFailure,
                                psycopg2.errors.DeadlockDetected,
                                psycopg2.errors.LockNotAvailable))
    return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) \
        and exc.args[0] in _MARIADB_RETRY


def _field(v) -> str:
    if v is None:
        return r"\N"
    s = str(v)
    if "\t" in s or "\n" in s or "\\" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return s


def bulk_insert(kind: str, conn, table: str, columns: Sequence[str],
                rows: Iterable[Sequence]) -> int:
    """Rows into a table the fastest way the client library offers: COPY on PostgreSQL,
    multi-row INSERTs on MariaDB (pymysql batches executemany). Does not commit."""
    n = 0
    with conn.cursor() as cur:
        if kind == "postgres":
            buf = io.StringIO()
            for r in rows:
                buf.write("\t".join(_field(v) for v in r))
                buf.write("\n")
                n += 1
            buf.seek(0)
            cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
        else:
            batch = list(rows)
            n = len(batch)
            sql = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                   f"({', '.join(['%s'] * len(columns))})")
            for i in range(0, n, 2000):
                cur.executemany(sql, batch[i:i + 2000])
    return n


def postgres_target(host: str, port: int, user: str, password: str, dbname: str,
                    label: str = "", wrap: Callable[[Callable], Any] | None = None) -> Target:
    def connect():
        def go():
            return psycopg2.connect(host=host, port=port, user=user, password=password,
                                    dbname=dbname, connect_timeout=10)
        return wrap(go) if wrap else go()
    return Target("postgres", connect, label or f"{host}:{port}")


def mariadb_target(host: str, port: int, user: str, password: str, dbname: str,
                   label: str = "", wrap: Callable[[Callable], Any] | None = None) -> Target:
    def connect():
        def go():
            return pymysql.connect(host=host, port=port, user=user, password=password,
                                   database=dbname, connect_timeout=10, autocommit=False)
        return wrap(go) if wrap else go()
    return Target("mariadb", connect, label or f"{host}:{port}")


def guest_target(lab, kind: str, host: str | None = None) -> Target:
    """The lab guest's database, reached from the client namespace as a real client would."""
    from remusdb.lab.net import VM_IP
    from remusdb.vm import DB_NAME, DB_USER, MARIADB_PORT, PG_PORT, db_password

    def wrap(go):
        with lab.inside("client"):
            return go()
    host = host or VM_IP
    if kind == "postgres":
        return postgres_target(host, PG_PORT, DB_USER, db_password(), DB_NAME,
                               f"guest {host}:{PG_PORT}", wrap)
    if kind == "mariadb":
        return mariadb_target(host, MARIADB_PORT, DB_USER, db_password(), DB_NAME,
                              f"guest {host}:{MARIADB_PORT}", wrap)
    raise RemusError(f"unknown database kind {kind!r} (expected one of {', '.join(KINDS)})")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def loaded_row(target: Target, sql: str, what: str) -> tuple:
    """One row describing the loaded database (its size); a missing schema is the user's
    error ("prepare it first"), said in one line."""
    conn = target.open()
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            row = tuple(cur.fetchone())
        conn.rollback()
    except Exception as e:  # noqa: BLE001 - whatever the driver raises, one line
        raise RemusError(f"{what}: no {what.upper()} database at {target.label} (prepare it "
                         f"first): {first_line(e)}") from None
    finally:
        conn.close()
    if not all(row):
        raise RemusError(f"{what}: the {what.upper()} database at {target.label} is empty")
    return row


def close_quietly(conn) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a dead connection is gone either way
        pass


def reconnect(target: Target, conn, deadline: float):
    """A client whose connection broke (a failover, a restart) opens a new one, retrying
    until `deadline` (monotonic); None when it never came back."""
    close_quietly(conn)
    while time.monotonic() < deadline:
        try:
            return target.connect()
        except Exception:  # noqa: BLE001 - retried until the deadline
            time.sleep(1)
    return None
