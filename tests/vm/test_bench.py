"""The benchmark drivers and `remusdb bench` against the real guest: TPC-C on its PostgreSQL,
then the runner end to end on MariaDB (unprotected vs Remus, CP reported unavailable)."""

import json
import subprocess
import sys

import pytest

from benchmarks import tpcc, tpch, tpcw
from benchmarks.target import guest_target, postgres_target
from tests import hostpg


def test_tpcc_on_the_guest_postgres(db_vm, lab):
    target = guest_target(lab, "postgres")
    info = tpcc.prepare(target, 0.02, say=lambda _: None)
    assert info["rows"] > 10000 and info["items"] == 2000
    r = tpcc.run(target, 15, 4, say=lambda _: None)
    assert r["error_count"] == 0, r["errors"]
    assert r["score"] > 0 and r["mix"]["new_order"] > 0 and r["mix"]["payment"] > 0
    assert tpcc.check(target) == []


def test_bench_cli_unprotected_and_remus_on_mariadb(image, base):
    out = base / "results"
    p = subprocess.run([sys.executable, "-m", "remusdb.cli", "bench", "tpcc", "--db", "mariadb",
                        "--modes", "unprotected,remus,cp", "--scale", "0.01", "--duration", "10",
                        "--interval", "50", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout)
    files = sorted(out.iterdir())
    assert [f.suffix for f in files] == [".json", ".png"]
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files[0].read_text()) == json.loads(json.dumps(result))
    pts = {pt["mode"]: pt for pt in result["points"]}
    unprot, remus, cp = pts["unprotected"], pts["remus"], pts["cp"]
    for pt in (unprot, remus):
        assert pt["checks"] == [] and "error" not in pt
        assert pt["run"]["error_count"] == 0 and pt["run"]["transactions"] > 0
    assert unprot["normalized"] == 1.0
    assert remus["normalized"] == round(remus["score"] / unprot["score"], 4)
    assert remus["sent_bytes"] > 0 and "sent_bytes" not in unprot
    assert remus["interval_ms"] == 50
    assert cp["available"] is False and "MariaDB" in cp["reason"]
    assert "[3/3] cp: not available" in p.stderr


def test_tpch_answers_in_the_guest_match_the_hosts(db_vm, lab):
    """The same generated data in the guest's PostgreSQL and a host PostgreSQL: the 22 queries
    with the same parameters give the same rows."""
    if not hostpg.available():
        pytest.skip("needs Debian's postgresql-15 on the host")
    guest = guest_target(lab, "postgres")
    info = tpch.prepare(guest, 0.01, say=lambda _: None)
    assert tpch.check(guest) == []
    r = tpch.run(guest, say=lambda _: None)
    assert r["score"] > 0 and len(r["queries"]) == 22
    in_guest = tpch.answers(guest, seed=3)
    with hostpg.host_postgres() as args:
        host = postgres_target(*args)
        assert tpch.prepare(host, 0.01, say=lambda _: None)["rows"] == info["rows"]
        on_host = tpch.answers(host, seed=3)
    assert sum(len(rows) > 0 for rows in on_host.values()) >= 18
    for q in on_host:
        assert in_guest[q] == on_host[q], q


def test_tpcw_on_the_guest_postgres(db_vm, lab):
    target = guest_target(lab, "postgres")
    tpcw.prepare(target, 500, say=lambda _: None)
    r = tpcw.run(target, 15, 4, say=lambda _: None)
    assert r["errors"] == 0, r["error_samples"]
    assert r["score"] > 0 and r["by_interaction"]["home"] > 0
    assert tpcw.check(target) == []
