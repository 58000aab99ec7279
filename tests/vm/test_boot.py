"""The real guest: boots, serves PostgreSQL and MariaDB over the tap, answers its agent."""

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
