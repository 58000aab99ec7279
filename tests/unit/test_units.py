"""`make install`'s systemd unit: rendered for this checkout, accepted by systemd's own checker,
its command lines accepted by remusdb's parser (a renamed flag fails here), and the one-shot
start request that the unit's node consumes."""

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from remusdb import cli, protection

ROOT = Path(__file__).resolve().parents[2]
UNIT = "remusdb-node@.service"


@pytest.fixture
def installed(tmp_path):
    r = subprocess.run(["sh", str(ROOT / "scripts/install-units.sh")], capture_output=True,
                       text=True, env=dict(os.environ, DESTDIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert oct((tmp_path / "etc/remusdb").stat().st_mode & 0o777) == "0o700"
    return tmp_path / "etc/systemd/system"


def unit(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(interpolation=None, strict=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    p.read(path)
    return p


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_systemd_accepts_the_unit(installed):
    inst = installed / "remusdb-node@pg1.service"
    shutil.copy(installed / UNIT, inst)
    r = subprocess.run(["systemd-analyze", "verify", str(inst)], capture_output=True,
                       text=True, cwd=installed)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    bad = installed / "remusdb-bad@pg1.service"  # the checker does catch a wrong command
    bad.write_text(inst.read_text().replace("/.venv/bin/remusdb node", "/.venv/bin/nothing node"))
    assert subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True,
                          cwd=installed).returncode != 0


def test_the_unit_runs_real_remusdb_commands(installed):
    svc = unit(installed / UNIT)["Service"]
    # the node must get SIGTERM alone: a protected primary hands the VM over first
    assert svc["KillMode"] == "mixed" and int(svc["TimeoutStopSec"]) >= 60
    assert svc["Restart"] == "on-failure"
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(svc[key].replace("%i", "pg1").replace("${REMUSDB_HOST}", "standby"))
        assert argv[0] == str(ROOT / ".venv/bin/remusdb")
        args = cli.parser().parse_args(argv[1:])
        assert args.config == "/etc/remusdb/pg1.toml"
    assert "@" not in svc["ExecStart"].replace("%i", "")  # every placeholder filled
    assert "Install" in unit(installed / UNIT)


def test_a_start_request_is_taken_once(tmp_path, capsys):
    cfgfile = tmp_path / "pg1.toml"
    cfgfile.write_text(f'[vm]\nname = "pg1"\nrun_dir = "{tmp_path}"\n')
    assert cli.main(["start", str(cfgfile), "--host", "primary"]) == 0
    assert "systemctl restart remusdb-node@pg1" in capsys.readouterr().out
    d = tmp_path / "pg1" / "primary"
    assert protection.take_start_request(d) is True
    assert protection.take_start_request(d) is False  # a restart after it: a standby
