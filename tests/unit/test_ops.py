"""Operating it: the node's REST API (a real HTTP server on loopback), its Prometheus metrics
(parsed with Prometheus's own text parser), the health answers and `remusdb list`'s rows, the
config's API ports and clashes; and the real NodeDaemon's side of the API."""

import http.client
import json
import os
import socket
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from remusdb import cli
from remusdb import config as configmod
from remusdb.checkpoint.control import ControlReply
from remusdb.config import Config, ConfigError
from remusdb.errors import RemusError
from remusdb.image.builder import GuestImage
from remusdb.ops import api, health, listing
from remusdb.ops.metrics import NodeMetrics
from remusdb.reprotect.node import NodeDaemon
from remusdb.reprotect.roles import Event

NOW = 1_000_000.0


def primary_docs(state="primary-protected", term=3, acked_at=NOW - 0.2, **prim) -> dict:
    return {"node": {"state": state, "vm": "pg1", "host": "primary", "term": term},
            "primary": {"state": "protected", "interval_ms": 100, "epoch_acked": 41,
                        "lag_epochs": 1, "acked_at": acked_at, "pause_ms": {"p50": 5.0},
                        "dirty_pages": {"p50": 900}, "bytes_per_epoch": {"p50": 3e6},
                        "totals": {"sent_bytes": 123}, "compression": {"ratio": 0.2},
                        "read_tracking": {"references": 7},
                        "net": {"held_frames": 2, "unprotected": 10, "held": 5,
                                "released": 3, "to_guest": 9},
                        "backpressure": {"waits": 0}, **prim}}


def standby_docs(state="receiving", committed_at=NOW - 0.15, term=3) -> dict:
    return {"node": {"state": "standby", "vm": "pg1", "host": "standby", "term": term},
            "standby": {"state": state, "epoch_committed": 40, "committed_at": committed_at}}


# The health answers (pure)
def test_the_summary_carries_what_an_operator_looks_at_first():
    s = health.summary(primary_docs(), NOW)
    assert s["role"] == "primary" and s["term"] == 3 and s["epoch"] == 41
    assert s["checkpoint_age_s"] == pytest.approx(0.2) and s["lag_epochs"] == 1
    assert (s["compression_ratio"], s["rt_references"], s["output_held"]) == (0.2, 7, 2)
    s = health.summary(standby_docs(), NOW)
    assert (s["role"], s["epoch"], s["checkpoint_age_s"]) == ("standby", 40, 0.15)
    assert health.summary({"node": {"state": "stopped"}}, NOW)["role"] == "stopped"


def test_primary_answers_200_only_where_the_vm_runs_and_may_speak():
    assert health.primary_check(primary_docs()).code == 200
    assert health.primary_check(primary_docs("primary-unprotected")).code == 200
    assert health.primary_check(standby_docs()).code == 503
    assert health.primary_check({}).code == 503
    assert health.primary_check(primary_docs("handing-over")).code == 503
    fenced = primary_docs()
    fenced["node"]["witness"] = {"hold": "fenced"}
    v = health.primary_check(fenced)
    assert v.code == 503 and "witness fenced it" in v.why
    fenced["node"]["witness"] = {"hold": "holding"}
    assert health.primary_check(fenced).code == 200


def test_standby_answers_200_only_when_following_within_the_lag_asked():
    assert health.standby_check(standby_docs(), None, NOW).code == 200
    assert health.standby_check(standby_docs(), 200, NOW).code == 200
    v = health.standby_check(standby_docs(), 100, NOW)
    assert v.code == 503 and "150 ms old" in v.why
    assert health.standby_check(standby_docs("primary-silent"), None, NOW).code == 503
    assert health.standby_check(standby_docs(committed_at=0), None, NOW).code == 503
    assert health.standby_check(primary_docs(), None, NOW).code == 503
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(ValueError):
            health.parse_lag(bad)
    assert health.parse_lag("250") == 250 and health.parse_lag(None) is None


def answer(docs):
    return {"summary": health.summary(docs, NOW), "documents": docs}


def test_a_list_row_names_where_the_vm_runs_and_its_standby():
    row = health.list_row("pg1", {"primary/a": answer(primary_docs()),
                                  "standby/b": answer(standby_docs())}, NOW)
    assert (row["primary"], row["standby"], row["state"], row["term"]) == \
        ("primary/a", "standby/b", "protected", 3)
    # after a failover: the host named standby runs it; the old primary is down
    after = primary_docs("primary-unprotected", term=4)
    after["node"]["host"] = "standby"
    row = health.list_row("pg1", {"primary/a": "no answer from a:7790: refused",
                                  "standby/b": answer(after)}, NOW)
    assert (row["primary"], row["standby"], row["term"]) == ("standby/b", None, 4)
    assert row["state"] == "unprotected (primary/a does not answer)"
    assert row["hosts"]["primary/a"] == {"error": "no answer from a:7790: refused"}
    row = health.list_row("pg1", {"primary/a": "down", "standby/b": "down"}, NOW)
    assert row["state"] == "no node answers" and row["primary"] is None
    two = health.list_row("pg1", {"primary/a": answer(primary_docs(term=3)),
                                  "standby/b": answer(primary_docs(term=4))}, NOW)
    assert two["state"] == "TWO PRIMARIES" and two["primary"] == "standby/b"
    table = health.list_table([row, two]).splitlines()
    assert table[0].split()[:3] == ["vm", "primary", "standby"] and len(table) == 3


# Metrics
def metric_families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_parse_and_carry_the_checkpoints_and_the_status():
    m = NodeMetrics("pg1", "primary", lambda: primary_docs(acked_at=time.time() - 0.3))
    for pause in (4.0, 6.0, 30.0):
        m.captured(pause, 1000, 4 << 20)
        m.sent(1000, 1 << 20)
    m.acked(12.0)
    m.waited(0.5)
    fams = metric_families(m.text().decode())
    pause = {s.labels.get("le"): s.value for s in fams["remusdb_checkpoint_pause_seconds"].samples
             if s.name.endswith("_bucket")}
    assert pause["0.005"] == 1 and pause["0.01"] == 2 and pause["+Inf"] == 3
    sent = [s for s in fams["remusdb_sent_bytes"].samples if s.name.endswith("_total")]
    assert sent[0].value == 3 << 20 and sent[0].labels == {"vm": "pg1", "host": "primary"}
    assert fams["remusdb_epochs"].samples[0].value == 3
    assert fams["remusdb_backpressure_wait_seconds"].samples[0].value == 0.5
    gauges = {n: fams[n].samples[0].value for n in (
        "remusdb_term", "remusdb_lag_epochs", "remusdb_output_held_frames", "remusdb_protected",
        "remusdb_runs_vm", "remusdb_compression_ratio", "remusdb_interval_seconds")}
    assert gauges == {"remusdb_term": 3, "remusdb_lag_epochs": 1,
                      "remusdb_output_held_frames": 2, "remusdb_protected": 1,
                      "remusdb_runs_vm": 1, "remusdb_compression_ratio": 0.2,
                      "remusdb_interval_seconds": 0.1}
    assert 0.3 <= fams["remusdb_checkpoint_age_seconds"].samples[0].value < 5
    frames = {s.labels["how"]: s.value for s in fams["remusdb_session_net_frames"].samples}
    assert frames == {"unprotected": 10, "held": 5, "released": 3, "to_guest": 9}


def test_a_standbys_metrics_have_no_primary_numbers():
    fams = metric_families(NodeMetrics("pg1", "standby", standby_docs).text().decode())
    assert fams["remusdb_runs_vm"].samples[0].value == 0
    assert "remusdb_session_net_frames" not in fams and "remusdb_lag_epochs" not in fams
    state = fams["remusdb_node_state"].samples[0].labels
    assert (state["state"], state["role"]) == ("standby", "standby")


# The HTTP server
class FakeNode:
    """Stands in for the node's decisions: the server's own behaviour is under test."""

    def __init__(self, docs):
        self.docs, self.acts = docs, []

    def documents(self):
        return self.docs

    def act(self, action, params):
        self.acts.append((action, params))
        if action == "interval" and not params.get("ms", "").isdigit():
            raise ValueError("ms: expected an integer")
        if action == "switchover":
            return ControlReply(False, "switchover needs a protected primary")
        return ControlReply(True, failover={"done": action})


TOKEN = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(docs, token=TOKEN):
        path = tmp_path / "api.token"
        if token:
            path.write_bytes(token + b"\n")
            path.chmod(0o600)
        node = FakeNode(docs)
        s = api.ApiServer("127.0.0.1", 0, node, NodeMetrics("pg1", "primary", node.documents),
                          path).start()
        servers.append(s)
        return s.address[1], node
    yield make
    for s in servers:
        s.close()


def request(port, method, path, token: bytes | None = None, auth: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": auth or api.sign(token, method, path)} if (token or auth) \
        else {}
    conn.request(method, path, headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, r


def test_read_only_endpoints_answer_anyone(server):
    port, _ = server(primary_docs(acked_at=time.time()))
    code, body, _ = request(port, "GET", "/status")
    doc = json.loads(body)
    assert code == 200 and doc["summary"]["role"] == "primary"
    assert doc["documents"]["primary"]["epoch_acked"] == 41
    assert request(port, "GET", "/primary")[0] == 200
    code, body, _ = request(port, "GET", "/standby?max_lag_ms=500")
    assert code == 503 and json.loads(body)["role"] == "primary"
    assert request(port, "GET", "/standby?max_lag_ms=-3")[0] == 400
    assert request(port, "GET", "/health")[0] == 200
    code, body, r = request(port, "GET", "/metrics")
    assert code == 200 and r.getheader("Content-Type").startswith("text/plain")
    assert "remusdb_term" in metric_families(body.decode())
    assert request(port, "GET", "/nothing")[0] == 404
    assert request(port, "GET", "/failover")[0] == 405
    assert api.status("127.0.0.1", port)["summary"]["epoch"] == 41


def test_acting_endpoints_refuse_without_a_valid_signature(server):
    port, node = server(standby_docs())
    for token in (None, b"wrong-token-wrong-token-wrong", TOKEN[:-1]):
        code, body, r = request(port, "POST", "/failover", token)
        assert code == 401 and r.getheader("WWW-Authenticate") == api.SCHEME
        assert "authentication" in json.loads(body)["error"]
    # the token itself as a bearer (it must never cross the network) is no signature
    code, _, _ = request(port, "POST", "/failover", auth=f"Bearer {TOKEN.decode()}")
    assert code == 401
    # signed for another path, too old, or replayed: refused
    assert request(port, "POST", "/failover?force=true",
                   auth=api.sign(TOKEN, "POST", "/failover"))[0] == 401
    code, body, _ = request(port, "POST", "/failover",
                            auth=api.sign(TOKEN, "POST", "/failover", time.time() - 120))
    assert code == 401 and "off this node's clock" in json.loads(body)["error"]
    once = api.sign(TOKEN, "POST", "/reprotect")
    assert request(port, "POST", "/reprotect", auth=once)[0] == 200
    code, body, _ = request(port, "POST", "/reprotect", auth=once)
    assert code == 401 and "used already" in json.loads(body)["error"]
    assert node.acts == [("reprotect", {})]
    node.acts.clear()
    code, body, _ = request(port, "POST", "/failover?force=true", TOKEN)
    assert code == 200 and json.loads(body)["done"] == "failover"
    assert node.acts == [("failover", {"force": "true"})]
    code, body, _ = request(port, "POST", "/switchover", TOKEN)
    assert code == 409 and "protected primary" in json.loads(body)["error"]
    assert request(port, "POST", "/interval?ms=abc", TOKEN)[0] == 400
    assert request(port, "POST", "/shutdown", TOKEN)[0] == 404


def test_no_token_file_means_no_acting_over_http(server, tmp_path):
    port, node = server(standby_docs(), token=None)
    code, body, _ = request(port, "POST", "/reprotect", TOKEN)
    assert code == 403 and "no API token file" in json.loads(body)["error"]
    assert node.acts == []
    api.write_token(tmp_path / "api.token")  # a token put in place later is read at once
    token = api.load_token(tmp_path / "api.token")
    assert request(port, "POST", "/reprotect", token)[0] == 200 and node.acts


def test_a_trickling_or_garbled_client_loses_its_slot(server):
    port, _ = server(standby_docs())
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(api.MAX_PER_ADDRESS)]
    try:
        t0 = time.monotonic()
        closed_at = None
        while time.monotonic() - t0 < api.CLIENT_TIMEOUT + 5:
            try:
                slow[0].send(b"G")  # a byte a second: each read is quick, the whole is not
                slow[0].settimeout(1.0)
                if slow[0].recv(1) == b"":
                    closed_at = time.monotonic() - t0
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_at = time.monotonic() - t0
                break
        assert closed_at is not None and closed_at < api.CLIENT_TIMEOUT + 2, closed_at
        # one address holds at most MAX_PER_ADDRESS slots: the others still get answers
        # from the same address once the trickler is gone
        assert request(port, "GET", "/health")[0] == 200
    finally:
        for s in slow:
            s.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x00\xff garbage \r\n\r\n")
        answer = b"".join(iter(lambda: s.recv(4096), b""))
        assert b"Error code: 400" in answer  # and the server answers the next one
    assert request(port, "GET", "/health")[0] == 200


def test_a_silent_client_holds_nobody_up(server):
    port, _ = server(standby_docs())
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(api.MAX_CLIENTS + 4)]
    try:
        t0 = time.monotonic()  # clients beyond the bound are dropped, the rest time out
        while time.monotonic() - t0 < api.CLIENT_TIMEOUT + 5:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                time.sleep(0.2)
        else:
            pytest.fail("the API never answered again after idle clients")
    finally:
        for s in idle:
            s.close()


def test_the_token_file_must_be_the_owners_and_long_enough(tmp_path):
    (tmp_path / "api.token.tmp").write_text("stale")
    (tmp_path / "api.token.tmp").chmod(0o644)
    p = tmp_path / "api.token"
    assert api.load_token(p) is None
    api.write_token(p)
    assert oct(p.stat().st_mode & 0o777) == "0o600" and len(api.load_token(p)) == 48
    os.chmod(p, 0o644)
    with pytest.raises(RemusError, match="readable by others"):
        api.load_token(p)
    os.chmod(p, 0o600)
    p.write_text("short\n")
    with pytest.raises(RemusError, match="shorter than 16"):
        api.load_token(p)


def test_a_taken_port_is_one_line_naming_the_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RemusError, match=f"cannot listen on 127.0.0.1:{port}.*api_port"):
            api.ApiServer("127.0.0.1", port, FakeNode({}), NodeMetrics("a", "b", dict), None)


def test_a_node_that_answers_for_another_vm_is_not_taken_for_this_one(tmp_path, server):
    port, _ = server(primary_docs(acked_at=time.time()))  # the node of VM pg1
    p = write(tmp_path, "pg2", primary={"api_port": port, "port": 7798},
              standby={"api_port": 0, "port": 7797})
    assert cli.main(["list", "--json", str(p)]) == 1  # nobody answers for pg2
    rows = listing.rows(listing.configs([str(p)]))
    assert "answers for VM pg1 host primary, not pg2 primary" in \
        rows[0]["hosts"]["primary/127.0.0.1"]["error"]


# Config: ports, directories of VMs
def write(d: Path, name: str, **sections) -> Path:
    raw = {"vm": {"name": name}, **sections}
    p = d / f"{name}.toml"
    p.write_text(configmod.dumps(configmod.from_dict(raw)))
    return p


def test_each_host_has_its_api_port_and_two_vms_may_not_share_one(tmp_path):
    cfg = Config()
    assert cfg.api_address("primary") == ("127.0.0.1", 7790)
    assert cfg.api_address("standby") == ("127.0.0.1", 7791)
    with pytest.raises(ConfigError, match="primary.api_port"):
        configmod.from_dict({"primary": {"api_port": 70000}})
    write(tmp_path, "pg1")
    write(tmp_path, "pg2", primary={"port": 7798}, standby={"port": 7797})
    with pytest.raises(ConfigError, match="VM pg2's primary.api_port = 7790 on 127.0.0.1 is "
                                          "also VM pg1's primary.api_port"):
        listing.configs([str(tmp_path)])
    write(tmp_path, "pg2", primary={"port": 7798, "api_port": 7800},
          standby={"port": 7797, "api_port": 7801})
    assert [c.vm.name for c in listing.configs([str(tmp_path)])] == ["pg1", "pg2"]
    with pytest.raises(ConfigError, match="VM pg1 is in both"):
        listing.configs([str(tmp_path), str(tmp_path / "pg1.toml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.toml"):
        listing.configs([str(tmp_path / "empty")])


def test_list_asks_every_host_and_says_who_did_not_answer(tmp_path, server, capsys):
    port, _ = server(primary_docs(acked_at=time.time()))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = write(tmp_path, "pg1", primary={"api_port": port}, standby={"api_port": dead})
    assert cli.main(["list", str(p)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["pg1", "primary/127.0.0.1", "-"]
    assert "standby/127.0.0.1 does not answer" in out[1]
    assert cli.main(["list", "--json", str(p)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["term"] == 3 and rows[0]["hosts"]["primary/127.0.0.1"]["epoch"] == 41


def test_status_asks_the_api_and_falls_back_to_the_files(tmp_path, server, capsys):
    port, _ = server(primary_docs(acked_at=time.time()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = write(tmp_path, "pg1", primary={"api_port": port}, standby={"api_port": dead},
              vm={"name": "pg1", "run_dir": str(tmp_path)})
    d = tmp_path / "pg1" / "standby"  # the standby's last word, on this machine
    d.mkdir(parents=True)
    (d / "standby.status.json").write_text(json.dumps(
        {"state": "receiving", "vm": "pg1", "epoch_committed": 77}))
    assert cli.main(["status", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"[host primary: api 127.0.0.1:{port}]" in out and "epoch captured" in out
    assert f"[host standby: status files in {d} (no answer from 127.0.0.1:{dead}" in out
    assert "epoch committed 77" in out
    (d / "standby.status.json").unlink()
    assert cli.main(["status", str(p)]) == 0
    assert "[host standby: nothing: status files in" in capsys.readouterr().out


# The real node daemon's side
@pytest.fixture
def standby_node(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = configmod.from_dict({"vm": {"name": "pg1", "run_dir": str(tmp_path)},
                               "standby": {"port": port}, "link": {"insecure": True}})
    image = GuestImage(tmp_path / "root.img", tmp_path / "vmlinuz", tmp_path / "initrd", "k")
    node = NodeDaemon(cfg, "standby", tmp_path / "node", image)
    yield node
    node.listener.close()


def test_the_node_serves_its_live_documents_and_decides_acting_requests(standby_node):
    docs = standby_node.documents()
    assert docs["node"]["state"] == "standby" and docs["node"]["pid"] == os.getpid()
    assert docs["standby"]["state"] == "waiting" and "primary" not in docs
    reply = standby_node.act("failover", {})
    assert not reply.ok and "no committed checkpoint" in reply.error
    reply = standby_node.act("switchover", {})
    assert not reply.ok and "needs a protected primary" in reply.error
    reply = standby_node.act("reprotect", {})
    assert not reply.ok and "reprotect runs where the VM runs" in reply.error
    with pytest.raises(ValueError, match="ms: expected an integer in 10..10000"):
        standby_node.act("interval", {"ms": "5"})
    with pytest.raises(ValueError, match="force"):
        standby_node.act("failover", {"force": "yes"})
    with pytest.raises(ValueError, match="takes no parameters"):
        standby_node.act("reprotect", {"now": "1"})
    with pytest.raises(ValueError, match="unknown action"):
        standby_node.act("shutdown", {})
    standby_node.record.apply(Event.STARTED_VM, 0)  # this host runs the VM now
    reply = standby_node.act("failover", {"force": "true"})
    assert not reply.ok and "a failover runs on the standby" in reply.error
    fams = metric_families(standby_node.metrics.text().decode())
    assert fams["remusdb_node_state"].samples[0].labels["state"] == "primary-unprotected"
    assert fams["remusdb_runs_vm"].samples[0].value == 1


def test_remote_signs_the_request_with_the_pairs_token(tmp_path, server, capsys):
    port, node = server(standby_docs())
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "api.token").write_bytes(TOKEN + b"\n")
    (keys / "api.token").chmod(0o600)
    p = write(tmp_path, "pg1", primary={"api_port": port}, link={"keys": str(keys)})
    assert cli.main(["remote", str(p), "--host", "primary", "interval", "--ms", "150"]) == 0
    assert cli.main(["remote", str(p), "--host", "primary", "failover", "--force"]) == 0
    assert node.acts == [("interval", {"ms": "150"}), ("failover", {"force": "true"})]
    capsys.readouterr()
    assert cli.main(["remote", str(p), "--host", "primary", "switchover"]) == 1
    assert "switchover on host primary: switchover needs a protected primary" in \
        capsys.readouterr().err
    (keys / "api.token").write_bytes(b"another-token-another-token\n")  # not the node's
    assert cli.main(["remote", str(p), "--host", "primary", "reprotect"]) == 1
    assert "bad signature" in capsys.readouterr().err
    assert len(node.acts) == 3  # the refused switchover reached the node; nothing since


def test_a_status_that_cannot_be_built_now_is_served_from_its_last_file(standby_node):
    standby_node.standby._publish()  # the file, as the daemon writes it at each change

    def racing():
        raise RuntimeError("dictionary changed size during iteration")

    standby_node.standby.status_doc = racing
    docs = standby_node.documents()
    assert docs["standby"]["state"] == "waiting" and docs["node"]["state"] == "standby"
