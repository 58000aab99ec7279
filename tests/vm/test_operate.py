"""Operating it, against real guests: two database VMs protected at once on the lab's host pair,
each node's REST API and metrics read over the lab's network, `remusdb list` of both; one VM's
primary is killed, it fails over, and the other stays protected (its epochs commit, its RAM
stays equal to the standby's), while `/primary` and `/standby` flip for the first only."""

import json
import signal

from prometheus_client.parser import text_string_to_metric_families

from remusdb import config as configmod
from remusdb.checkpoint.status import read_status
from remusdb.lab import dbclient
from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.net import VM_IP
from remusdb.ops import api
from remusdb.vm import image_for, launch
from tests.vm.test_protect import cli

SECOND = {"name": "pg2", "vm": {"ip": "10.213.0.11/24", "tap": "tap1"},
          "primary": {"port": 7798, "api_port": 7800},
          "standby": {"port": 7797, "api_port": 7801}}
VERIFY = ("--verify-every", "10", "--verify-count", "0")  # all along: every 2 s at 200 ms


def ask(lab, cfg, host, path):
    with lab.inside("client"):
        code, body = api.get(*cfg.api_address(host), path, timeout=10)
    return code, body


def metrics(lab, cfg, host) -> dict:
    code, body = ask(lab, cfg, host, "/metrics")
    assert code == 200
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(fams, name, suffix=""):
    return next(s.value for s in fams[name].samples if s.name == name + suffix)


def listed(lab, *cfgs) -> list[dict]:
    r = cli(lab, "client", "list", "--json", *map(str, cfgs))
    assert r.returncode == 0, r.stderr
    table = cli(lab, "client", "list", *map(str, cfgs))
    print(table.stdout)
    return json.loads(r.stdout)


def warm_snapshot(lab, base, cfg_path) -> None:
    """The second VM's booted snapshot (its own IP and MAC): made once, outside the daemons'
    start-up deadline."""
    cfg = configmod.load(cfg_path)
    launch(cfg, image_for(cfg), base / "warm", netns=lab.ns("primary")).kill()


def test_two_vms_on_one_pair_one_fails_over_the_other_stays_protected(lab, base):
    a = Protected(lab, base / "a", interval_ms=200, protect_args=VERIFY, standby_args=VERIFY)
    b = Protected(lab, base / "b", interval_ms=200, protect_args=VERIFY, standby_args=VERIFY,
                  **SECOND)
    warm_snapshot(lab, base, b.cfg)
    with a, b:
        ca, cb = a.config(), b.config()
        for p in (a, b):
            wait_status(p.standby_status, lambda s: s["verify"].get("checks", 0) >= 2, 300,
                        "two RAM checks", p.daemons)
        # Both primaries' metrics, over the network, parsed by Prometheus's parser.
        for cfg in (ca, cb):
            fams = metrics(lab, cfg, "primary")
            assert value(fams, "remusdb_protected") == 1
            assert value(fams, "remusdb_epochs", "_total") >= 5
            assert value(fams, "remusdb_sent_bytes", "_total") > 0
            count = value(fams, "remusdb_checkpoint_pause_seconds", "_count")
            total = value(fams, "remusdb_checkpoint_pause_seconds", "_sum")
            assert count >= 5 and 0 < total / count < 1.0, (count, total)
            assert 0 <= value(fams, "remusdb_checkpoint_age_seconds") < 5
            assert fams["remusdb_node_state"].samples[0].labels["vm"] == cfg.vm.name
            assert ask(lab, cfg, "primary", "/primary")[0] == 200
            assert ask(lab, cfg, "standby", "/primary")[0] == 503
            assert ask(lab, cfg, "standby", "/standby?max_lag_ms=5000")[0] == 200
            assert ask(lab, cfg, "primary", "/standby")[0] == 503
        # Acting needs a signature with the pair's token, even from the lab's own hosts.
        with lab.inside("client"):
            code, _ = api.post(*cb.api_address("primary"), "/switchover", b"not-the-token" * 2)
        assert code == 401
        assert read_status(b.primary_status)["state"] == "protected"
        r = cli(lab, "client", "remote", str(b.cfg), "--host", "primary", "interval",
                "--ms", "150")
        assert r.returncode == 0 and '"interval_ms": 150' in r.stdout, r.stdout + r.stderr
        r = cli(lab, "client", "remote", str(b.cfg), "--host", "standby", "failover")
        assert r.returncode == 1 and "refusing: the primary is still sending" in r.stderr
        rows = {r["vm"]: r for r in listed(lab, a.cfg, b.cfg)}
        for name in ("pg1", "pg2"):
            assert (rows[name]["primary"], rows[name]["standby"], rows[name]["state"]) == (
                "primary/10.213.0.1", "standby/10.213.0.2", "protected"), rows[name]
        pause_both = {p.config().vm.name: read_status(p.primary_status)["pause_ms"]
                      for p in (a, b)}

        # pg1's primary dies; pg1 fails over; pg2 must not notice.
        b_before = read_status(b.standby_status)
        a.primary.kill(signal.SIGKILL)
        wait_status(a.standby_status, lambda s: s["state"] == "active", 60, "pg1 failover",
                    [a.standby])
        assert ask(lab, ca, "standby", "/primary")[0] == 200
        assert ask(lab, ca, "standby", "/standby")[0] == 503
        with lab.inside("client"):
            assert dbclient.query_one(dbclient.postgres, VM_IP, "SELECT 1", timeout=60) == 1
        st = wait_status(b.standby_status,
                         lambda s: s["verify"]["checks"] >= b_before["verify"]["checks"] + 2,
                         120, "pg2's RAM checks after pg1's failover", b.daemons)
        assert st["verify"]["differing_groups"] == 0, st["verify"]
        assert st["state"] == "receiving"
        assert st["epoch_committed"] >= b_before["epoch_committed"] + 10
        assert read_status(b.primary_status)["state"] == "protected"
        assert ask(lab, cb, "primary", "/primary")[0] == 200
        assert ask(lab, cb, "standby", "/standby?max_lag_ms=5000")[0] == 200
        with lab.inside("client"):
            assert dbclient.query_one(dbclient.postgres, "10.213.0.11", "SELECT 1",
                                      timeout=60) == 1
        rows = {r["vm"]: r for r in listed(lab, a.cfg, b.cfg)}
        assert rows["pg1"]["primary"] == "standby/10.213.0.2" and rows["pg1"]["standby"] is None
        assert rows["pg1"]["term"] == 2 and rows["pg1"]["state"].startswith("unprotected")
        assert (rows["pg2"]["primary"], rows["pg2"]["state"]) == ("primary/10.213.0.1",
                                                                  "protected")
        print(f"pause ms with both VMs protected: {pause_both}")
