"""`remusdb bench`'s pure parts: arguments (one clear line each, before any VM), the order of
points, normalization, the summary and the chart."""

import json
import subprocess
import sys

import pytest

from benchmarks import command, plots, runner, tpcc
from remusdb.errors import RemusError


def test_modes_and_sweeps_parse():
    assert runner.parse_modes("unprotected,remus,all") == ["unprotected", "remus", "all"]
    for bad in ("", "remus,fast", "remus,remus"):
        with pytest.raises(RemusError):
            runner.parse_modes(bad)
    assert runner.parse_sweep("interval=25,50") == ("interval", [25, 50])
    assert runner.parse_sweep("buffer-pool=64M,1G") == ("buffer-pool", [64 << 20, 1 << 30])
    assert runner.parse_sweep("scale=0.5,2") == ("scale", [0.5, 2.0])
    assert runner.parse_sweep(None) is None
    for bad in ("interval", "interval=5", "size=1", "scale=0", "buffer-pool=1M", "interval=x"):
        with pytest.raises(RemusError, match="--sweep"):
            runner.parse_sweep(bad)


def test_scale_checks():
    assert runner.check_scale(tpcc, 3) == 3 and runner.check_scale(tpcc, 0.05) == 0.05
    for bad in (0, -1, 2.5):
        with pytest.raises(RemusError, match="tpcc: scale"):
            runner.check_scale(tpcc, bad)


def test_points_measure_unprotected_once_per_interval_sweep():
    plan = runner.Plan("tpcc", modes=["unprotected", "remus", "cp"],
                       sweep=("interval", [50, 100]))
    assert runner.points(plan) == [(None, "unprotected"), (50, "remus"), (50, "cp"),
                                   (100, "remus"), (100, "cp")]
    plan.sweep = ("scale", [1, 2])
    assert runner.points(plan)[:3] == [(1, "unprotected"), (1, "remus"), (1, "cp")]
    plan.sweep = None
    assert runner.points(plan) == [(None, m) for m in plan.modes]


def test_normalize_against_the_matching_baseline():
    r = {"points": [
        {"mode": "unprotected", "sweep_value": 1, "score": 200.0},
        {"mode": "remus", "sweep_value": 1, "score": 50.0},
        {"mode": "unprotected", "sweep_value": 2, "score": 100.0},
        {"mode": "remus", "sweep_value": 2, "score": 50.0},
        {"mode": "cp", "sweep_value": 2, "available": False},
        {"mode": "asc", "sweep_value": 2, "score": 20.0, "higher_is_better": False},
    ]}
    runner.normalize(r)
    assert [p.get("normalized") for p in r["points"]] == [1.0, 0.25, 1.0, 0.5, None, 5.0]


def test_cp_is_unavailable_on_mariadb_only():
    assert runner.unavailable("mariadb", "cp") and runner.unavailable("mariadb", "all")
    assert runner.unavailable("mariadb", "asc") is None
    assert all(runner.unavailable("postgres", m) is None for m in runner.MODES)


def test_summary_and_chart(tmp_path):
    r = {"benchmark": "tpcc", "db": "postgres", "scale": 1,
         "sweep": {"kind": "buffer-pool", "values": [64 << 20]}, "points": [
             {"mode": "unprotected", "sweep_value": 64 << 20, "score": 800.0, "unit": "tpmC"},
             {"mode": "remus", "sweep_value": 64 << 20, "score": 40.0, "unit": "tpmC",
              "sent_mb_per_s": 30.5},
             {"mode": "cp", "sweep_value": 64 << 20, "available": True, "error": "boom"}]}
    runner.normalize(r)
    lines = command.summary_lines(r)
    assert "64M" in lines[1] and "1.000" in lines[1]
    assert "0.050" in lines[2] and "30.50" in lines[2]
    assert "failed: boom" in lines[3]
    png = plots.chart(r, tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


@pytest.mark.parametrize("args,message", [
    (["tpcc", "--modes", "unprotected,fast"], "unknown mode fast"),
    (["tpcc", "--scale", "0"], "scale must be"),
    (["tpch", "--db", "mariadb"], "tpch"),
    (["tpcc", "--duration", "0"], "--duration"),
    (["tpcc", "--sweep", "interval=1"], "--sweep"),
    (["tpcc", "--interval", "5"], "--interval"),
    (["tpcc", "--at", "127.0.0.1:1"], "cannot connect to postgres at 127.0.0.1:1"),
    (["tpcc", "--at", "127.0.0.1:1", "--modes", "remus"], "--at"),
    (["tpcc", "--config", "/nonexistent.toml"], "not found"),
])
def test_bad_arguments_give_one_line(args, message):
    p = subprocess.run([sys.executable, "-m", "remusdb.cli", "bench", *args],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    err = p.stderr.strip()
    assert "\n" not in err and err.startswith("remusdb: error:") and message in err, err
    assert p.stdout == ""


def test_result_json_is_written_atomically(tmp_path):
    out = tmp_path / "r.json"
    runner.save({"points": [{"mode": "x"}]}, out)
    assert json.loads(out.read_text()) == {"points": [{"mode": "x"}]}
    assert not out.with_suffix(".tmp").exists()
