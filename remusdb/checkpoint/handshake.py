"""The handshake of a protection session, both sides: HELLO is answered by WELCOME (with the
standby's disk digests when it offers a resync) or by REFUSE (a stale term, not a standby); a
QUERY, by ROLE. Kept apart from the daemons so each side's rules read in one place."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from remusdb.checkpoint import wire
from remusdb.checkpoint.link import AuthError, Link
from remusdb.checkpoint.participant import Welcome
from remusdb.checkpoint.store import StandbyStore
from remusdb.errors import RemusError
from remusdb.reprotect import resync

log = logging.getLogger(__name__)


def connect(addr: tuple[str, int], link: Link, wait: float = 30.0) -> wire.Connection:
    """The link to the peer, authenticated, retried for `wait` seconds (0: one try). A peer
    that fails authentication is not retried: that is a key or config mistake."""
    deadline = time.monotonic() + wait
    while True:
        try:
            s = socket.create_connection(addr, timeout=5)
        except OSError as e:
            if time.monotonic() > deadline:
                raise RemusError(f"cannot reach the standby at {addr[0]}:{addr[1]}: "
                                 f"{e.strerror or e}") from None
            time.sleep(0.5)
            continue
        try:
            secured = link.client(s)
        except AuthError as e:
            s.close()
            raise AuthError(f"the {link.peer} at {addr[0]}:{addr[1]}: {e}") from None
        secured.settimeout(None)
        return wire.Connection(secured)


class Quiet(Exception):
    """A connection that was no session (a query, a refused HELLO): nothing to act on."""


class Refused(RemusError):
    """The peer refused our HELLO (it runs the VM, or it has seen a newer term)."""

    def __init__(self, fields: dict):
        self.fields = fields if isinstance(fields, dict) else {}
        super().__init__(f"the peer refused protection: {self.fields.get('reason', '?')}")

    @property
    def peer_term(self) -> int:
        term = self.fields.get("term", 0)
        return term if isinstance(term, int) and not isinstance(term, bool) else 0


MAX_RESUMES = 16  # sessions a HELLO may name as the ones it follows
FENCE_TIMEOUT = 60.0  # the standby's fence command; a silent standby may take this long to act


def judge_replace(store: StandbyStore, hello: dict) -> str:
    """Why the session this HELLO opens may not replace the committed checkpoint held here
    ("": it may). Allowed when there is none, when it is superseded (BYE, the operator), when
    the HELLO follows the session that made it (the same primary, back after losing the
    link), or comes with a newer term (the VM moved on since)."""
    if store.committed < 0 or store.ended:
        return ""
    resumes = hello.get("resumes")
    if isinstance(resumes, list) and store.session in resumes[:MAX_RESUMES]:
        return ""
    term = hello.get("term")
    if isinstance(term, int) and not isinstance(term, bool) and term > store.term:
        return ""
    return (f"this standby holds committed epoch {store.committed} of session "
            f"{store.session[:8]} (term {store.term}); a new session of term {term!r} that does "
            "not follow it may not replace it (release it on the standby: 'remusdb release')")


@dataclass
class DiskPlan:
    digests: np.ndarray | None  # the block digests to offer, or None: a full copy
    why: str


def disk_plan(store: StandbyStore, lineage: str, size: int) -> DiskPlan:
    """A resync if this host's disk descends from the same first copy as the primary's;
    else a full copy, and why."""
    mine, my_size = store.disk_history()
    if not lineage or not size:
        return DiskPlan(None, "the primary's disk has no lineage")
    if not mine:
        return DiskPlan(None, "this host has no disk of this VM")
    if mine != lineage or my_size != size:
        return DiskPlan(None, f"this host's disk (lineage {mine[:8]}, {my_size} bytes) "
                               f"does not descend from the primary's ({lineage[:8]})")
    if size % resync.BLOCK:
        return DiskPlan(None, "the disk is not a whole number of 4 KiB blocks")
    t0 = time.monotonic()
    fd = os.open(store.disk_path, os.O_RDONLY)
    try:
        digests = resync.digests(fd, size)
    finally:
        os.close(fd)
    log.info("disk resync offered: %d block digests in %.1f s", len(digests),
             time.monotonic() - t0)
    return DiskPlan(digests, "this host's disk shares the primary's history")


def welcome_frames(term: int, plan: DiskPlan) -> list[list]:
    """WELCOME, then the digests in DIGESTS frames (each within MAX_PAYLOAD)."""
    d = plan.digests
    n = wire.DIGESTS_PER_FRAME
    digests = [] if d is None else [
        wire.encode(wire.Kind.DIGESTS, 0, wire.pack_digests(d[i:i + n]))
        for i in range(0, len(d), n)]
    return [wire.encode_json(wire.Kind.WELCOME, 0, {
        "committed": -1, "term": term, "why": plan.why,
        "disk": "full" if d is None else "resync", "digest_frames": len(digests)}), *digests]


def read_welcome(conn: wire.Connection, disk_size: int) -> Welcome:
    """The standby's answer to HELLO: WELCOME (and its disk digests), or REFUSE."""
    reply = conn.recv()
    if reply.kind == wire.Kind.REFUSE:
        raise Refused(reply.json())
    if reply.kind != wire.Kind.WELCOME:
        raise RemusError(f"standby answered {reply.kind.name} to HELLO")
    fields = reply.json()
    if not isinstance(fields, dict):
        raise wire.WireError("WELCOME is not a JSON object")
    if fields.get("disk") != "resync":
        return Welcome(fields)
    # Exactly one digest per 4 KiB block of our disk: a standby cannot make us hold more.
    blocks = disk_size // resync.BLOCK
    frames = fields.get("digest_frames")
    if frames != -(-blocks // wire.DIGESTS_PER_FRAME):
        raise wire.WireError(f"WELCOME announces {frames!r} digest frames for {blocks} blocks")
    parts, have = [], 0
    for _ in range(frames):
        f = conn.recv()
        if f.kind != wire.Kind.DIGESTS:
            raise wire.WireError(f"expected DIGESTS, got {f.kind.name}")
        part = wire.unpack_digests(f.payload)
        have += len(part)
        if have > blocks:
            raise wire.WireError(f"more than {blocks} block digests")
        parts.append(part)
    return Welcome(fields, np.concatenate(parts) if parts else np.empty(0, np.uint64))
