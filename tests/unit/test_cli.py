import subprocess
import sys

from remusdb import cli, config


def test_config_check_ok_and_bad(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(config.EXAMPLE)
    assert cli.main(["config", "check", str(good)]) == 0
    assert "ok (vm pg1, 1024 MiB, 2 vCPU, interval 100 ms)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[vm]\nvcpus = -1\n")
    assert cli.main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err == "remusdb: error: config error: vm.vcpus = -1: expected an integer from 1 to 64\n"


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "remusdb.cli", "config", "example"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "[checkpoint]" in r.stdout


def test_bad_arguments_exit_2():
    r = subprocess.run([sys.executable, "-m", "remusdb.cli", "image", "frobnicate"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_negative_counts_are_rejected():
    r = subprocess.run([sys.executable, "-m", "remusdb.cli", "protect", "x.toml",
                        "--verify-every", "-5"], capture_output=True, text=True)
    assert r.returncode == 2 and "expected a whole number >= 0, got '-5'" in r.stderr


def test_status_reports_compression_and_back_pressure(tmp_path, capsys):
    import json

    cfgfile = tmp_path / "vm.toml"
    cfgfile.write_text(config.EXAMPLE)
    d = tmp_path / "pg1" / "primary"
    d.mkdir(parents=True)
    (d / "primary.status.json").write_text(json.dumps({
        "state": "protected", "pid": 1, "updated_at": 0, "epoch_captured": 9, "epoch_acked": 8,
        "lag_epochs": 1, "interval_ms": 100, "pause_ms": {}, "dirty_pages": {},
        "bytes_per_epoch": {}, "backpressure": {"waits": 3, "waited_ms": 41.5},
        "read_tracking": {"references": 12, "saved_mib": 0.1,
                          "index": {"entries": 40, "memory_mib": 17.2}},
        "disk": {"writes": 7, "reads": 9, "writes_per_epoch": {"p50": 1.0}},
        "net": {"cp": True, "codepoint": 11, "unprotected": 70, "held": 20, "queued_behind": 2,
                "released": 21, "held_frames": 1, "to_guest": 90},
        "compression": {"mode": "xor-lz4", "sent_mib": 1.5, "raw_mib": 40.0, "ratio": 0.0375,
                        "encode_mb_s": 900.0, "cache": {"used_pages": 10, "capacity_pages": 26214,
                                                        "memory_mib": 103.4, "hit_rate": 0.9}}}))
    assert cli.main(["status", str(cfgfile), "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "compression xor-lz4: sent 1.5 of 40.0 MiB (0.0375)" in out
    assert "page cache 10/26214 pages, 103.4 MiB" in out
    assert "the VM waited 3 times for the link, 41.5 ms in all" in out
    assert "read tracking: 12 pages sent as disk references (0.1 MiB)" in out
    assert "disk: 7 writes, 9 reads" in out
    assert ("net: commit protection on (DSCP 11); out at once 70, held 20 (+2 behind their "
            "flow), released 21, holding 1 frames") in out


def test_protect_takes_no_compression():
    args = cli.parser().parse_args(["protect", "vm.toml", "--no-compression"])
    assert args.no_compression and args.func is cli.cmd_protect


def test_parser_loads_no_benchmark_driver():
    """`remusdb status` builds the whole parser: `bench` must not drag its drivers in."""
    import json
    from pathlib import Path

    code = ("import json, sys; from remusdb import cli; cli.parser(); "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('benchmarks.') "
            "or m.split('.')[0] in ('matplotlib', 'psycopg2', 'pymysql'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=Path(__file__).resolve().parents[2])  # this tree's remusdb
    loaded = set(json.loads(r.stdout))
    for heavy in ("benchmarks.tpcc", "benchmarks.tpch", "benchmarks.tpcw", "benchmarks.runner",
                  "benchmarks.target", "benchmarks.plots", "matplotlib", "psycopg2", "pymysql"):
        assert heavy not in loaded, sorted(loaded)
    assert "benchmarks.command" in loaded  # the test would pass vacuously otherwise
