"""Save a running database VM and restore it in a new QEMU: what was committed before the save is
there, what was committed after it is not (so the restore really is of the saved state)."""

from remusdb.hypervisor.qemu import QemuGuest
from remusdb.lab import dbclient
from remusdb.vm import restore_snapshot, save_snapshot


def write_row(lab, address, table, value):
    with lab.inside("client"):
        pg = dbclient.postgres(address)
        with pg, pg.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (v text)")
            cur.execute(f"INSERT INTO {table} VALUES (%s)", (value,))
        pg.close()
        my = dbclient.mariadb(address, autocommit=True)
        with my.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (v varchar(64))")
            cur.execute(f"INSERT INTO {table} VALUES (%s)", (value,))
        my.close()


def read_rows(lab, address, table):
    with lab.inside("client"):
        pg = dbclient.postgres(address)
        with pg.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} ORDER BY v")
            pg_rows = [r[0] for r in cur.fetchall()]
        pg.close()
        my = dbclient.mariadb(address)
        with my.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} ORDER BY v")
            my_rows = [r[0] for r in cur.fetchall()]
        my.close()
    return pg_rows, my_rows


def test_row_written_before_save_survives_restore(db_vm, lab, cfg, run_dir):
    address = cfg.vm.address
    write_row(lab, address, "ledger", "before-save")
    snap = run_dir / "snap"
    save_snapshot(db_vm, snap)
    write_row(lab, address, "ledger", "after-save")
    assert read_rows(lab, address, "ledger") == (["after-save", "before-save"],) * 2
    db_vm.kill()

    spec = db_vm.spec
    spec.disk = run_dir / "restored.qcow2"
    restored = QemuGuest(spec, run_dir / "restored")
    try:
        restore_snapshot(restored, snap)
        assert restored.monitor.status() == "running"
        assert read_rows(lab, address, "ledger") == (["before-save"], ["before-save"])
    finally:
        restored.kill()
