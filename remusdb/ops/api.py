"""Each node's REST API, after Patroni's: status, health checks, metrics, and the acting
requests an operator's tooling makes.

Read-only endpoints are open to whoever reaches the address (the node's state, its peer's
address, its numbers; put the API on a management network if that is too much):
`GET /status`, `/health`, `/primary`, `/standby?max_lag_ms=N`, `/metrics`. Acting endpoints
(`POST /failover[?force=true]`, `/switchover`, `/reprotect`, `/interval?ms=N`) need a request
signed with the token of `api.token_file` (`sign`): an HMAC over the method, the path, the time
and a nonce, so the token never crosses the network, a signed request is good for SKEW_S only
and once; with no token file they are off. The decisions stay the node's (the same ones its
control sockets make); this module only speaks HTTP. Clients are bounded in number (in all and
per address) and each has CLIENT_TIMEOUT to send its request line and headers, bodies are not
read, and a handler's error becomes a 500 with one line, never the server's end.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import socket
import socketserver
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
MAX_PER_ADDRESS = 8  # one address cannot take every slot (a load balancer's check needs one)
CLIENT_TIMEOUT = 5.0  # to send the request line and headers, in all
DOCS_TTL_S = 0.2  # a flood of reads builds the status documents at most 5 times a second
SKEW_S = 30.0  # a signed request is good this long either side of the node's clock
SCHEME = "RemusDB-HMAC"
ACTIONS = ("failover", "switchover", "reprotect", "interval")
_AUTH_RE = re.compile(r"^t=(\d{1,12}),n=([0-9a-f]{16,64}),s=([0-9a-f]{64})$")


class NodeApi(Protocol):
    """What the server asks of the node daemon."""

    def documents(self) -> dict: ...
    def act(self, action: str, params: dict[str, str]) -> ControlReply: ...


def token_path(cfg: Config) -> Path:
    from remusdb.checkpoint.link import key_dir
    return Path(cfg.api.token_file) if cfg.api.token_file else key_dir(cfg) / TOKEN_NAME


def load_token(path: Path) -> bytes | None:
    """The API token, or None (no file: acting over HTTP is off). A token others can read
    is no secret: refused in one line."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RemusError(f"api: cannot read the token file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RemusError(f"api: the token file {path} is readable by others "
                         f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    try:
        token = path.read_bytes().strip()
    except OSError as e:
        raise RemusError(f"api: cannot read the token file {path}: {e.strerror}") from None
    if len(token) < 16:
        raise RemusError(f"api: the token in {path} is shorter than 16 characters")
    return token


def sign(token: bytes, method: str, path: str, now: float | None = None,
         nonce: str | None = None) -> str:
    """The Authorization header of an acting request: good for SKEW_S, once."""
    t = int(time.time() if now is None else now)
    n = nonce or os.urandom(16).hex()
    mac = hmac.new(token, f"{method}\n{path}\n{t}\n{n}".encode(), hashlib.sha256).hexdigest()
    return f"{SCHEME} t={t},n={n},s={mac}"


class Signatures:
    """Checks signed requests: the right token, a time within SKEW_S, a nonce never seen."""

    def __init__(self, token_file: Path | None):
        self.token_file = token_file
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, header: str, method: str, path: str, now: float) -> str:
        """"" when the request may act, else why not (one line)."""
        token = load_token(self.token_file) if self.token_file else None
        if token is None:
            raise PermissionError("acting over HTTP is off: no API token file on this host "
                                  "(remusdb keys init writes one)")
        scheme, _, params = header.partition(" ")
        m = _AUTH_RE.match(params.strip())
        if scheme.lower() != SCHEME.lower() or not m:
            return f"authentication required: Authorization: {SCHEME} t=…,n=…,s=…"
        t, nonce, mac = int(m.group(1)), m.group(2), m.group(3)
        if abs(now - t) > SKEW_S:
            return f"the signed time is {now - t:+.0f} s off this node's clock (±{SKEW_S:g} s)"
        want = sign(token, method, path, t, nonce).rsplit("s=", 1)[1]
        if not hmac.compare_digest(mac, want):
            return "authentication failed: bad signature"
        with self._lock:
            for old in [k for k, at in self._seen.items() if at < now - 2 * SKEW_S]:
                del self._seen[old]
            if nonce in self._seen:
                return "authentication failed: this signed request was used already"
            self._seen[nonce] = now
        return ""


class ApiServer:
    """The HTTP server of one node, in its own threads; `close()` stops it."""

    def __init__(self, address: str, port: int, node: NodeApi, metrics: NodeMetrics,
                 token_file: Path | None):
        self.node, self.metrics = node, metrics
        self.signatures = Signatures(token_file)
        self.acting = token_file is not None and load_token(token_file) is not None
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self._per_address: dict[str, int] = {}
        self._lock = threading.Lock()  # the slots' counts (the accepting thread takes it)
        self._docs_lock = threading.Lock()  # one build of the documents at a time
        self._docs: tuple[float, dict] = (0.0, {})
        self._warned = 0.0
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
                 "need a signed request" if self.acting else "off: no token file")
        return self

    def documents(self) -> dict:
        with self._docs_lock:
            at, docs = self._docs
            if time.monotonic() - at > DOCS_TTL_S:
                docs = self.node.documents()
                self._docs = (time.monotonic(), docs)
            return docs

    def refused(self, what: str, who: str) -> None:
        """Logged at most every 10 s: a client cannot flood the log."""
        if time.monotonic() - self._warned > 10:
            self._warned = time.monotonic()
            log.warning("api: refused %s from %s", what, who)

    def admit(self, address: str) -> bool:
        if not self._slots.acquire(blocking=False):
            return False
        with self._lock:
            if self._per_address.get(address, 0) >= MAX_PER_ADDRESS:
                self._slots.release()
                return False
            self._per_address[address] = self._per_address.get(address, 0) + 1
        return True

    def release(self, address: str) -> None:
        with self._lock:
            left = self._per_address.get(address, 1) - 1
            if left:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)
        self._slots.release()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, api: ApiServer):
        self.api = api
        super().__init__(address, handler)

    def server_bind(self):
        """Without HTTPServer's reverse lookup of its own address: a node must start when
        DNS does not answer."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request, client_address):
        """A client that went away mid-answer: its problem, logged for debugging only."""
        log.debug("api: client %s: error", client_address, exc_info=True)

    def process_request(self, request, client_address):
        if not self.api.admit(client_address[0]):  # too many clients: drop this one
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.api.release(client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT
    server_version = "remusdb"
    sys_version = ""
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's name)
        log.debug("api: %s %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        # The socket timeout bounds each read; this bounds the whole request line and
        # headers, so a client trickling a byte at a time loses its slot too.
        self._deadline = threading.Timer(CLIENT_TIMEOUT, self._expire)
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()
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
        self._deadline.cancel()  # the request is in: answering takes what it takes
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
        docs = api.documents()
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
        api = self.server.api
        try:
            why = api.signatures.check(self.headers.get("Authorization", ""), "POST", self.path,
                                       time.time())
        except (PermissionError, RemusError) as e:
            self._json(403, {"error": str(e)})
            return
        if why:
            api.refused(f"{path} ({why})", self.address_string())
            self._json(401, {"error": why}, {"WWW-Authenticate": SCHEME})
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
    """A signed acting request; (status code, JSON reply)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("POST", path, headers={"Authorization": sign(token, "POST", path)})
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
    tmp.unlink(missing_ok=True)  # a stale one keeps its mode under O_TRUNC
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(24).hex() + "\n")
    os.replace(tmp, path)
    return path
