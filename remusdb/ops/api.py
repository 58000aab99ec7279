"""Each node's REST API, after Patroni's: status, health checks, metrics, and the acting
requests an operator's tooling makes.

Read-only endpoints are open to whoever reaches the address (they say nothing a `ps` on the
host would not): `GET /status`, `/health`, `/primary`, `/standby?max_lag_ms=N`, `/metrics`.
Acting endpoints (`POST /failover[?force=true]`, `/switchover`, `/reprotect`,
`/interval?ms=N`) need `Authorization: Bearer <token>` with the token of `api.token_file`; with
no token file they are off. The decisions stay the node's (the same ones its control socket
makes); this module only speaks HTTP. Clients are bounded in number and in time, bodies are
not read, and a handler's error becomes a 500 with one line, never the server's end.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import os
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from remusdb.checkpoint.control import ControlReply
from remusdb.config import Config
from remusdb.errors import RemusError
from remusdb.ops import health
from remusdb.ops.metrics import CONTENT_TYPE, NodeMetrics

log = logging.getLogger(__name__)
TOKEN_NAME = "api.token"
MAX_CLIENTS = 32
CLIENT_TIMEOUT = 5.0  # to send the request line and headers
ACTIONS = ("failover", "switchover", "reprotect", "interval")


class NodeApi(Protocol):
    """What the server asks of the node daemon."""

    def documents(self) -> dict: ...
    def act(self, action: str, params: dict[str, str]) -> ControlReply: ...


def token_path(cfg: Config) -> Path:
    from remusdb.checkpoint.link import key_dir
    return Path(cfg.api.token_file) if cfg.api.token_file else key_dir(cfg) / TOKEN_NAME


def load_token(path: Path) -> bytes | None:
    """The bearer token, or None (no file: acting over HTTP is off). A token others can
    read is no secret: refused in one line."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RemusError(f"api: cannot read the token file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RemusError(f"api: the token file {path} is readable by others "
                         f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    token = path.read_bytes().strip()
    if len(token) < 16:
        raise RemusError(f"api: the token in {path} is shorter than 16 characters")
    return token


class ApiServer:
    """The HTTP server of one node, in its own threads; `close()` stops it."""

    def __init__(self, address: str, port: int, node: NodeApi, metrics: NodeMetrics,
                 token: bytes | None):
        self.node, self.metrics, self.token = node, metrics, token
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        try:
            self.httpd = _Server((address, port), _Handler, self)
        except OSError as e:
            raise RemusError(f"api: cannot listen on {address}:{port}: {e.strerror} (set "
                             "api_port in this host's section, 0 for no API)") from None
        self.address = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.2}, name="api", daemon=True)

    def start(self) -> ApiServer:
        self.thread.start()
        log.info("api: http://%s:%d (acting requests %s)", *self.address,
                 "need the bearer token" if self.token else "off: no token file")
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, api: ApiServer):
        self.api = api
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.api._slots.acquire(blocking=False):  # too many clients: drop this one
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.api._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT
    server_version = "remusdb"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's name)
        log.debug("api: %s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: dict, headers: dict | None = None) -> None:
        self._send(code, (json.dumps(doc, default=str) + "\n").encode(), headers=headers)

    def _route(self) -> tuple[str, dict[str, str]] | None:
        url = urlsplit(self.path)
        try:
            q = parse_qs(url.query, strict_parsing=bool(url.query), max_num_fields=8)
        except ValueError:
            self._json(400, {"error": f"malformed query string {url.query!r}"})
            return None
        return url.path.rstrip("/") or "/", {k: v[-1] for k, v in q.items()}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._safely(self._get)

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        self._safely(self._post)

    def _safely(self, handler) -> None:
        try:
            handler()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        except Exception as e:
            log.exception("api: %s %s", self.command, self.path)
            try:
                self._json(500, {"error": f"{type(e).__name__}: {e}"})
            except OSError:
                pass

    def _get(self) -> None:
        route = self._route()
        if route is None:
            return
        path, q = route
        api, now = self.server.api, time.time()
        if path.lstrip("/") in ACTIONS:
            self._json(405, {"error": f"{path}: POST only"}, {"Allow": "POST"})
            return
        if path == "/metrics":
            self._send(200, api.metrics.text(), CONTENT_TYPE)
            return
        docs = api.node.documents()
        if path in ("/status", "/"):
            self._json(200, {"summary": health.summary(docs, now), "documents": docs})
        elif path == "/health":  # the daemon answers: alive, whatever its role
            self._json(200, {"ok": True, **health.summary(docs, now)})
        elif path in ("/primary", "/leader"):
            self._verdict(health.primary_check(docs), docs)
        elif path in ("/standby", "/replica"):
            try:
                lag = health.parse_lag(q.get("max_lag_ms"))
            except ValueError as e:
                self._json(400, {"error": str(e)})
                return
            self._verdict(health.standby_check(docs, lag, now), docs)
        else:
            self._json(404, {"error": f"no such endpoint: {path} (GET /status, /health, "
                                      "/primary, /standby, /metrics)"})

    def _verdict(self, v: health.Verdict, docs: dict) -> None:
        self._json(v.code, {"ok": v.ok, "why": v.why, "role": health.role_of(docs),
                            "state": (docs.get("node") or {}).get("state")})

    def _post(self) -> None:
        route = self._route()
        if route is None:
            return
        path, q = route
        action = path.lstrip("/")
        if action not in ACTIONS:
            self._json(404, {"error": f"no such action: {path} (POST /"
                                      + ", /".join(ACTIONS) + ")"})
            return
        token = self.server.api.token
        if token is None:
            self._json(403, {"error": "acting over HTTP is off: no API token file on this "
                                      "host (remusdb keys init writes one)"})
            return
        given = self.headers.get("Authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(
                given[7:].strip().encode(), token):
            log.warning("api: refused an unauthenticated %s from %s", path,
                        self.address_string())
            self._json(401, {"error": "authentication required: Authorization: Bearer "
                                      "<api token>"}, {"WWW-Authenticate": "Bearer"})
            return
        try:
            reply = self.server.api.node.act(action, q)
        except ValueError as e:  # a parameter the action cannot take
            self._json(400, {"error": str(e)})
            return
        except RemusError as e:
            reply = ControlReply(False, str(e))
        self._json(200 if reply.ok else 409, reply.to_json())


# The client side: `remusdb status`, `remusdb list`
def get(address: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """(status code, body) of a GET; OSError when nothing answers."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(16 << 20)
    finally:
        conn.close()


def status(address: str, port: int, timeout: float = 3.0) -> dict:
    """A node's `/status`, or RemusError naming why not (one line)."""
    try:
        code, body = get(address, port, "/status", timeout)
        doc = json.loads(body)
    except (OSError, http.client.HTTPException) as e:
        raise RemusError(f"no answer from {address}:{port}: {e}") from None
    except ValueError:
        raise RemusError(f"{address}:{port} answered something that is not JSON") from None
    if code != 200 or not isinstance(doc, dict) or not isinstance(doc.get("documents"), dict):
        raise RemusError(f"{address}:{port} answered {code} without the status documents")
    return doc


def post(address: str, port: int, path: str, token: bytes, timeout: float = 120.0
         ) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {token.decode()}"})
        resp = conn.getresponse()
        body = resp.read(1 << 20)
    finally:
        conn.close()
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {"error": body[:200].decode(errors="replace")}
    return resp.status, doc if isinstance(doc, dict) else {"error": str(doc)}


def write_token(path: Path) -> Path:
    """A new random token, 0600 (`remusdb keys init`)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(24).hex() + "\n")
    os.replace(tmp, path)
    return path
