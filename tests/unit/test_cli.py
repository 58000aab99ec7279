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
