"""The witness's adapter: the two keys of rules.py in etcd, through its v3 JSON gateway (etcd3gw).

Every call is bounded by `timeout` and tries the configured endpoints in turn (the members of
the site's etcd cluster); whatever goes wrong is one `WitnessError`, never proof of anything.
Writes that decide who runs the VM are single etcd transactions: the claim (leader key absent),
the standby's take-over (leader absent and the protection record unchanged since it was read)
and the primary's declarations (only while the leader key is still under its own lease).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import etcd3gw
from etcd3gw.exceptions import ConnectionTimeoutError, Etcd3Exception
from etcd3gw.utils import _encode

from remusdb.witness.rules import Leader, Protection, View, WitnessError, parse_endpoint

log = logging.getLogger(__name__)
T = TypeVar("T")


class EtcdWitness:
    def __init__(self, endpoints: list[str], vm: str, prefix: str = "/remusdb",
                 ttl: int = 3, timeout: float = 1.0):
        if not endpoints:
            raise ValueError("no witness endpoints")
        self.clients = []
        for url in endpoints:
            protocol, host, port = parse_endpoint(url)
            self.clients.append(etcd3gw.client(host=host, port=port, protocol=protocol,
                                               timeout=timeout, api_path="/v3/"))
        self.endpoints = list(endpoints)
        self.leader_key = f"{prefix.rstrip('/')}/{vm}/leader"
        self.protection_key = f"{prefix.rstrip('/')}/{vm}/protection"
        self.ttl = ttl
        self.lease_id: int | None = None  # ours, while we hold (or held) the key
        self._first = 0  # the endpoint that answered last: tried first
        self._lock = threading.Lock()
        self.requests = 0  # sent, for the witness's cost per VM

    def _call(self, fn: Callable[[Any], T]) -> T:
        errors = []
        n = len(self.clients)
        for i in range(n):
            k = (self._first + i) % n
            self.requests += 1
            try:
                out = fn(self.clients[k])
            except (Etcd3Exception, OSError, ValueError, KeyError, TypeError) as e:
                errors.append(f"{self.endpoints[k]}: {_reason(e)}")
                continue
            self._first = k
            return out
        raise WitnessError("witness unreachable (" + "; ".join(errors) + ")")

    # Reading
    def view(self) -> View:
        def read(c) -> View:
            leader = lease_left = protection = None
            revision = 0
            got = c.get(self.leader_key, metadata=True)
            if got:
                value, meta = got[0]
                leader = Leader.decode(value)
                lease = int(meta.get("lease", 0))
                if lease:
                    # Whole seconds; the gateway leaves a 0 out (under a second left, the key
                    # still there), and says -1 only once the lease is gone.
                    ttl = c.post(c.get_url("/kv/lease/timetolive"), json={"ID": lease})
                    lease_left = float(ttl.get("TTL", 0))
            got = c.get(self.protection_key, metadata=True)
            if got:
                value, meta = got[0]
                protection = Protection.decode(value)
                revision = int(meta.get("mod_revision", 0))
            return View(leader, lease_left, protection, revision)
        return self._call(read)

    # The primary
    def claim(self, leader: Leader, protection: Protection | None = None) -> bool:
        """Create the leader key under a new lease of ours if nobody holds it (and write the
        protection record with it). False: someone does."""
        def run(c) -> bool:
            lease = int(c.post(c.get_url("/lease/grant"), json={"TTL": self.ttl})["ID"])
            puts = [_put(self.leader_key, leader.encode(), lease)]
            if protection is not None:
                puts.append(_put(self.protection_key, protection.encode()))
            return self._won(c, lease, leader, _txn(c, [_absent(self.leader_key)], puts))
        with self._lock:
            return self._call(run)

    def renew(self) -> bool:
        """Keep our lease alive. False: it has expired (the key is gone, maybe taken)."""
        lease = self.lease_id
        if lease is None:
            return False

        def run(c) -> bool:
            out = c.post(c.get_url("/lease/keepalive"), json={"ID": lease})
            return int(out.get("result", {}).get("TTL", -1)) > 0
        return self._call(run)

    def declare(self, protection: Protection, leader: Leader | None = None) -> bool:
        """Write the protection record (and the leader's value) while the key is ours."""
        lease = self.lease_id
        if lease is None:
            return False
        puts = [_put(self.protection_key, protection.encode())]
        if leader is not None:
            puts.append(_put(self.leader_key, leader.encode(), lease))
        cond = [{"key": _encode(self.leader_key), "target": "LEASE", "result": "EQUAL",
                 "lease": lease}]
        with self._lock:
            return self._call(lambda c: _txn(c, cond, puts))

    def release(self) -> None:
        """Give the key up at once (the VM stopped here in order)."""
        lease, self.lease_id = self.lease_id, None
        if lease is not None:
            self._call(lambda c: c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease}))

    # The standby
    def take(self, leader: Leader, revision: int, resumed: str = "") -> bool:
        """Take the key for a failover: only if nobody holds it and the protection record is
        the one read at `revision`; the record then says no checkpoint is current (the VM runs
        here unprotected, in the new term, resumed from session `resumed`'s checkpoint)."""
        after = Protection(leader.term, leader.host, None, resumed or None)

        def run(c) -> bool:
            lease = int(c.post(c.get_url("/lease/grant"), json={"TTL": self.ttl})["ID"])
            cond = [_absent(self.leader_key),
                    {"key": _encode(self.protection_key), "target": "MOD", "result": "EQUAL",
                     "mod_revision": revision}]
            ok = _txn(c, cond, [_put(self.leader_key, leader.encode(), lease),
                                _put(self.protection_key, after.encode())])
            return self._won(c, lease, leader, ok)
        with self._lock:
            return self._call(run)

    def _won(self, c, lease: int, leader: Leader, ok: bool) -> bool:
        """After a claim or take: ours under `lease`, or under an earlier try's lease whose
        answer was lost (another endpoint retried it), or not ours (this lease revoked)."""
        if not ok:
            c.post(c.get_url("/kv/lease/revoke"), json={"ID": lease})
            got = c.get(self.leader_key, metadata=True)
            if not got or Leader.decode(got[0][0]) != leader:
                return False
            lease = int(got[0][1].get("lease", 0))
            # Our own value under a lease that has ended (a fenced host's old key, not yet
            # deleted) is no claim: only a live lease is one.
            ttl = c.post(c.get_url("/kv/lease/timetolive"), json={"ID": lease})
            if not lease or float(ttl.get("TTL", 0)) <= 0:
                return False
        self.lease_id = lease
        return True


def _reason(e: Exception) -> str:
    """One short phrase for what went wrong (requests' texts run to hundreds of characters)."""
    text = getattr(e, "detail_text", None) or str(e)
    m = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if m:
        return m.group(0).strip()
    if isinstance(e, ConnectionTimeoutError) or "timed out" in text:
        return "timed out"
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


def _absent(key: str) -> dict:
    return {"key": _encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def _put(key: str, value: str, lease: int | None = None) -> dict:
    put: dict = {"key": _encode(key), "value": _encode(value)}
    if lease:
        put["lease"] = lease
    return {"request_put": put}


def _txn(c, compare: list[dict], success: list[dict]) -> bool:
    out = c.transaction({"compare": compare, "success": success, "failure": []})
    return bool(out.get("succeeded", False))
