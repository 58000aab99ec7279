"""`make install`'s systemd units: rendered for this checkout, accepted by systemd's own
checker, and their command lines accepted by remusdb's parser (a renamed flag fails here)."""

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from remusdb import cli

ROOT = Path(__file__).resolve().parents[2]


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
def test_systemd_accepts_the_units(installed):
    for name in ("remusdb-node", "remusdb-protect"):
        inst = installed / f"{name}@pg1.service"
        shutil.copy(installed / f"{name}@.service", inst)
        r = subprocess.run(["systemd-analyze", "verify", str(inst)], capture_output=True,
                           text=True, cwd=installed)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_the_units_run_real_remusdb_commands(installed):
    for name, host in (("remusdb-node@.service", "standby"), ("remusdb-protect@.service", "")):
        svc = unit(installed / name)["Service"]
        # the node must get SIGTERM alone: a protected primary hands the VM over first
        assert svc["KillMode"] == "mixed" and int(svc["TimeoutStopSec"]) >= 60
        for key in ("ExecStartPre", "ExecStart"):
            argv = shlex.split(svc[key].replace("%i", "pg1").replace("${REMUSDB_HOST}", host))
            assert argv[0] == str(ROOT / ".venv/bin/remusdb")
            args = cli.parser().parse_args(argv[1:])
            assert args.config == "/etc/remusdb/pg1.toml"
        assert "@" not in svc["ExecStart"].replace("%i", "")  # every placeholder filled
    node = unit(installed / "remusdb-node@.service")
    assert node["Service"]["Restart"] == "on-failure" and "Install" in node
    # the unit that starts a VM from its image is never enabled at boot
    assert "Install" not in unit(installed / "remusdb-protect@.service")
