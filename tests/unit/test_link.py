"""The checkpoint link's mutual TLS: real sockets on loopback, real certificates."""

import logging
import os
import socket
import ssl
import stat
import threading
import time

import numpy as np
import pytest
import xxhash

from remusdb import cli
from remusdb.checkpoint import handshake, keys, wire
from remusdb.checkpoint.link import AuthError, Link
from remusdb.config import Config
from remusdb.errors import RemusError
from tests.unit.linkpair import dial, secure
from tests.unit.test_standby_control import free_port


def pair(tmp_path):
    cfg = secure(Config(), tmp_path)
    cfg.standby.port = free_port()
    return cfg


def serve_once(cfg, handler):
    """A listener on the standby's port that authenticates one connection as the standby."""
    srv = socket.create_server(("127.0.0.1", cfg.standby.port))
    out: dict = {}

    def run():
        sock, _ = srv.accept()
        try:
            out["conn"] = wire.Connection(Link.for_host(cfg, "standby").accept(sock))
            handler(out["conn"])
        except Exception as e:
            out["error"] = e
        finally:
            srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_keys_init_writes_a_ca_and_both_hosts_private_keys_0600(tmp_path):
    written = keys.init(tmp_path / "k", "pg1")
    names = sorted(p.name for p in written)
    assert names == ["api.token", "ca.crt", "ca.key", "primary.crt", "primary.key",
                     "standby.crt", "standby.key"]
    for p in written:
        mode = stat.S_IMODE(os.stat(p).st_mode)
        assert mode == (0o644 if p.suffix == ".crt" else 0o600), p
    with pytest.raises(RemusError, match="keys already exist"):
        keys.init(tmp_path / "k", "pg1")


def test_keys_init_from_the_command_line(tmp_path, capsys):
    cfgfile = tmp_path / "vm.toml"
    cfgfile.write_text(f'[vm]\nname = "pg1"\n[link]\nkeys = "{tmp_path}/pairkeys"\n')
    assert cli.main(["keys", "init", str(cfgfile)]) == 0
    assert (tmp_path / "pairkeys" / "standby.key").exists()
    assert cli.main(["keys", "init", str(cfgfile)]) == 1
    assert "keys already exist" in capsys.readouterr().err


def test_missing_keys_are_one_clear_error(tmp_path):
    cfg = Config()
    cfg.link.keys = str(tmp_path / "none")
    with pytest.raises(RemusError, match="remusdb keys init"):
        Link.for_host(cfg, "primary")


def test_tls_link_carries_frames_both_ways_at_once(tmp_path):
    """An epoch stream one way while ACKs come the other: the SSL object is never used by
    two threads at once, and nothing is lost or reordered."""
    cfg = pair(tmp_path)
    n, size = 64, 1 << 20
    rng = np.random.default_rng(1)
    blobs = [rng.integers(0, 256, size, np.uint8).tobytes() for _ in range(4)]
    got: list[int] = []

    def standby(conn):
        for i in range(n):
            f = conn.recv()
            assert f.epoch == i
            got.append(xxhash.xxh3_64_intdigest(f.payload))
            conn.send_frame(wire.Kind.ACK, i)

    t, out = serve_once(cfg, standby)
    conn = dial(cfg)
    acks: list[int] = []
    reader = threading.Thread(target=lambda: acks.extend(conn.recv().epoch for _ in range(n)))
    reader.start()
    for i in range(n):
        conn.send(wire.encode(wire.Kind.PAGES, i, blobs[i % 4]))
    reader.join(30)
    t.join(30)
    assert "error" not in out, out.get("error")
    assert acks == list(range(n))
    assert got == [xxhash.xxh3_64_intdigest(blobs[i % 4]) for i in range(n)]
    assert isinstance(conn.sock, object) and type(conn.sock).__name__ == "TlsSocket"


def test_a_certificate_of_another_pair_is_refused(tmp_path):
    cfg = pair(tmp_path)
    other = Config()
    other.standby.port = cfg.standby.port
    secure(other, tmp_path / "elsewhere")
    t, out = serve_once(cfg, lambda conn: conn.recv())
    with pytest.raises(AuthError):
        dial(other)
    t.join(10)
    assert isinstance(out.get("error"), AuthError)


def test_the_standby_key_cannot_act_as_the_primary(tmp_path):
    cfg = pair(tmp_path)
    t, out = serve_once(cfg, lambda conn: conn.recv())
    with pytest.raises(RemusError):
        conn = dial(cfg, host="standby")  # its own CA, but it names the standby
        conn.send_frame(wire.Kind.HEARTBEAT, 0)
        conn.recv()
    t.join(10)
    assert "not the primary" in str(out.get("error"))


def test_a_client_without_a_certificate_is_refused(tmp_path):
    cfg = pair(tmp_path)
    t, out = serve_once(cfg, lambda conn: conn.recv())
    ctx = ssl.create_default_context(cafile=str(tmp_path / "keys" / "ca.crt"))
    ctx.check_hostname = False
    s = socket.create_connection(("127.0.0.1", cfg.standby.port))
    with pytest.raises((ssl.SSLError, OSError)):
        tls = ctx.wrap_socket(s)
        tls.sendall(b"".join(bytes(p) for p in wire.encode_json(wire.Kind.HELLO, 0, {})))
        tls.recv(1)
        raise OSError("no alert")  # reached only if the server said nothing at all
    t.join(10)
    assert isinstance(out.get("error"), AuthError)


def test_insecure_mode_is_plain_tcp_and_says_so(tmp_path, caplog):
    cfg = Config()
    cfg.link.insecure = True
    with caplog.at_level(logging.WARNING):
        link = Link.for_host(cfg, "primary")
    assert link.mode == "insecure" and link.tls is None
    assert "LINK INSECURE" in caplog.text
    a, b = socket.socketpair()
    assert link.client(a) is a


def test_handshake_connect_does_not_retry_a_failed_authentication(tmp_path):
    cfg = pair(tmp_path)
    other = secure(Config(), tmp_path / "elsewhere")
    srv = socket.create_server(("127.0.0.1", cfg.standby.port))

    def refuse():
        for _ in range(3):
            try:
                sock, _ = srv.accept()
            except OSError:  # closed: the client gave up, as it should
                return
            try:
                Link.for_host(cfg, "standby").accept(sock)
            except AuthError:
                sock.close()

    threading.Thread(target=refuse, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(AuthError, match="the standby at 127.0.0.1"):
        handshake.connect(("127.0.0.1", cfg.standby.port), Link.for_host(other, "primary"),
                          wait=20)
    assert time.monotonic() - t0 < 10
    srv.close()
