"""The real guest: boots, serves PostgreSQL and MariaDB over the tap, answers its agent."""

import psycopg2
import pymysql
import pytest

from remusdb.lab import dbclient
from remusdb.vm import launch


def assert_databases_answer(lab, address):
    with lab.inside("client"):
        assert dbclient.query_one(dbclient.postgres, address, "SELECT 1") == 1
        assert dbclient.query_one(dbclient.mariadb, address, "SELECT 1") == 1
        user = dbclient.query_one(dbclient.postgres, address, "SELECT inet_client_addr()::text")
    assert user == lab.members["client"].address.split("/")[0] + "/32"


def test_databases_answer_from_the_client_host(db_vm, lab, cfg):
    assert_databases_answer(lab, cfg.vm.address)
    db_vm.agent.ping()
    r = db_vm.agent.exec(["ip", "-4", "-o", "addr", "show"])
    assert r.exitcode == 0 and cfg.vm.ip in r.stdout
    assert db_vm.agent.exec(["hostname"]).stdout.strip() == "remusdb-guest"


def test_the_databases_know_only_this_images_application_login(db_vm, lab, cfg, image):
    creds = image.credentials()
    assert creds.password != "remusdb" and len(creds.password) >= 24
    address = cfg.vm.address
    with lab.inside("client"):
        assert dbclient.query_row(dbclient.postgres, address,
                                  "SELECT current_user::text, rolsuper FROM pg_roles "
                                  "WHERE rolname = current_user") == ("remusdb", False)
        grants = dbclient.query_one(dbclient.mariadb, address,
                                    "SELECT GROUP_CONCAT(PRIVILEGE_TYPE) FROM "
                                    "information_schema.USER_PRIVILEGES")
        assert grants == "USAGE"  # no global privilege; ALL on its own database only
        refused = [
            lambda: psycopg2.connect(host=address, user="remusdb", password="remusdb",
                                     dbname="remusdb", connect_timeout=5),
            lambda: psycopg2.connect(host=address, user="postgres", password="",
                                     dbname="postgres", connect_timeout=5),
            lambda: psycopg2.connect(host=address, user="remusdb", password=creds.password,
                                     dbname="postgres", connect_timeout=5),
            lambda: pymysql.connect(host=address, user="root", password="",
                                    connect_timeout=5),
            lambda: pymysql.connect(host=address, user="remusdb", password="remusdb",
                                    connect_timeout=5)]
        for connect in refused:
            with pytest.raises((psycopg2.OperationalError, pymysql.err.OperationalError)):
                connect().close()
    # The commit-protection functions: only the superuser, and a pinned search_path.
    r = db_vm.agent.exec(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "postgres",
                          "-c", "SELECT proname, has_function_privilege('remusdb', p.oid, "
                          "'EXECUTE'), array_to_string(proconfig, ';') FROM pg_proc p "
                          "WHERE proname LIKE 'remusdb_cp_%' ORDER BY 1"])
    assert r.exitcode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines() if line]
    assert rows == [["remusdb_cp_recover", "f", "search_path=pg_catalog, pg_temp"],
                    ["remusdb_cp_sessions", "f", ""]], rows


def test_restored_guest_clock_is_synchronized(db_vm):
    import time
    guest_ns = db_vm.agent.call("guest-get-time")
    assert abs(guest_ns - time.time_ns()) < 5e9


@pytest.mark.parametrize("init", ["fast", "systemd"])
def test_cold_boot(cfg, image, lab, run_dir, init):
    cfg.vm.init = init
    guest = launch(cfg, image, run_dir, netns=lab.ns("primary"), use_snapshot=False)
    try:
        assert_databases_answer(lab, cfg.vm.address)
        pid1 = guest.agent.exec(["cat", "/proc/1/comm"]).stdout.strip()
        assert pid1 == ("remusdb-init" if init == "fast" else "systemd")
        serial = guest.files.serial_log.read_text(errors="replace")
        assert "Linux version" in serial
        assert ("remusdb-init: ready" in serial) == (init == "fast")
    finally:
        guest.kill()
