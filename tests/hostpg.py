"""A throw-away PostgreSQL server on the host (Debian's postgresql-15), for driver tests that
need a real database but no VM, and as the reference the guest's answers are compared with."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
USER = PASSWORD = DBNAME = "remusdb"


def available() -> bool:
    return (BIN / "initdb").exists() and os.geteuid() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*cmd, **kw):
    r = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)],
                       capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {(r.stderr or r.stdout).strip()}")
    return r


@contextlib.contextmanager
def host_postgres(shared_buffers: str = "128MB"):
    """Yields (host, port, user, password, dbname) of a fresh cluster on 127.0.0.1."""
    d = Path(tempfile.mkdtemp(prefix="remusdb-hostpg-", dir="/dev/shm"))
    shutil.chown(d, "postgres", "postgres")
    data, port = d / "data", _free_port()
    started = False
    try:
        pw = d / "pw"
        pw.write_text("postgres\n")
        shutil.chown(pw, "postgres", "postgres")
        _as_postgres(BIN / "initdb", "-D", data, "-A", "md5", f"--pwfile={pw}", "-U",
                     "postgres")
        _as_postgres(BIN / "pg_ctl", "-D", data, "-l", d / "log", "-w", "start", "-o",
                     f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off "
                     f"-c shared_buffers={shared_buffers}")
        started = True
        sql = (f"CREATE USER {USER} PASSWORD '{PASSWORD}';"
               f"CREATE DATABASE {DBNAME} OWNER {USER};")
        for stmt in sql.split(";")[:-1]:
            _as_postgres(BIN / "psql", "-h", d, "-p", port, "-U", "postgres",
                         "-c", stmt, env=dict(os.environ, PGPASSWORD="postgres"))
        yield "127.0.0.1", port, USER, PASSWORD, DBNAME
    finally:
        if started:
            subprocess.run(["runuser", "-u", "postgres", "--", str(BIN / "pg_ctl"), "-D",
                            str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
