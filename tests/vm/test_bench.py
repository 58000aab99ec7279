"""The benchmark drivers and `remusdb bench` against the real guest: TPC-C on its PostgreSQL,
then the runner end to end on MariaDB (unprotected vs Remus, CP reported unavailable)."""

import json
import subprocess
import sys

from benchmarks import tpcc
from benchmarks.target import guest_target


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
