"""Pure: what a node's status documents say to an operator, a load balancer and `remusdb list`.

A node's documents are `{"node": ..., "primary": ..., "standby": ...}` (the status documents'
JSON, `checkpoint/status.py`; the last two only while that role is live). Everything here is a
function of them and the time, so the HTTP server, the CLI and the tests share one reading.
"""

from __future__ import annotations

from dataclasses import dataclass

# The node states in which this host runs the VM, and the one in which it runs it protected.
RUNS_VM = ("primary-unprotected", "primary-seeding", "primary-protected", "handing-over")
PROTECTED = "primary-protected"
SERVES = ("primary-unprotected", "primary-seeding", "primary-protected")  # not handing over
# The standby states in which its checkpoint is being kept current by a live primary.
FOLLOWING = ("receiving",)


@dataclass(frozen=True)
class Verdict:
    """An HTTP health answer: 200 when `ok`, else 503; `why` in the body either way."""

    ok: bool
    why: str

    @property
    def code(self) -> int:
        return 200 if self.ok else 503


def _age(at: object, now: float) -> float | None:
    return round(max(0.0, now - at), 3) if isinstance(at, (int, float)) and at > 0 else None


def role_of(docs: dict) -> str:
    """primary (runs the VM), standby, or stopped: from the node's state."""
    state = (docs.get("node") or {}).get("state", "")
    if state in RUNS_VM:
        return "primary"
    return "standby" if state == "standby" else "stopped"


def summary(docs: dict, now: float) -> dict:
    """The flat view of `GET /status`'s `summary`: the numbers an operator looks at first."""
    node, prim, stby = docs.get("node") or {}, docs.get("primary"), docs.get("standby")
    out: dict = {"vm": node.get("vm"), "host": node.get("host"), "role": role_of(docs),
                 "state": node.get("state"), "term": node.get("term")}
    if role_of(docs) == "primary" and prim:
        comp, net = prim.get("compression") or {}, prim.get("net") or {}
        out.update(
            session=prim.get("state"), interval_ms=prim.get("interval_ms"),
            epoch=prim.get("epoch_acked"), lag_epochs=prim.get("lag_epochs"),
            checkpoint_age_s=_age(prim.get("acked_at"), now),
            pause_ms=prim.get("pause_ms"), dirty_pages=prim.get("dirty_pages"),
            bytes_per_epoch=prim.get("bytes_per_epoch"),
            sent_bytes=(prim.get("totals") or {}).get("sent_bytes"),
            compression_ratio=comp.get("ratio"),
            rt_references=(prim.get("read_tracking") or {}).get("references"),
            output_held=net.get("held_frames"), backpressure=prim.get("backpressure"))
    elif role_of(docs) == "standby" and stby:
        out.update(session=stby.get("state"), epoch=stby.get("epoch_committed"),
                   checkpoint_age_s=_age(stby.get("committed_at"), now),
                   apply_ms=stby.get("apply_ms"), bytes_per_epoch=stby.get("bytes_per_epoch"))
    return out


def primary_check(docs: dict) -> Verdict:
    """`GET /primary`: 200 where the VM runs and may speak (protected or not: it serves the
    database). Not while it hands the VM over, nor when the witness fenced it (its output is
    stopped and the other host may run the VM by now)."""
    node = docs.get("node") or {}
    state = node.get("state", "")
    if state not in SERVES:
        return Verdict(False, f"this host does not serve the VM ({state or 'no node'})")
    hold = (node.get("witness") or {}).get("hold")
    if hold not in (None, "holding"):
        return Verdict(False, f"this host runs the VM but the witness fenced it ({hold})")
    return Verdict(True, f"this host runs the VM ({state})")


def standby_check(docs: dict, max_lag_ms: float | None, now: float) -> Verdict:
    """`GET /standby[?max_lag_ms=N]`: 200 on a standby that follows a live primary and whose
    committed checkpoint is at most N ms old (any age without N)."""
    state = (docs.get("node") or {}).get("state", "")
    if state != "standby":
        return Verdict(False, f"this host is not a standby ({state or 'no node'})")
    stby = docs.get("standby") or {}
    if stby.get("state") not in FOLLOWING:
        return Verdict(False, f"the standby does not follow a primary ({stby.get('state')})")
    age = _age(stby.get("committed_at"), now)
    if age is None:
        return Verdict(False, "no committed checkpoint yet")
    if max_lag_ms is not None and age * 1000 > max_lag_ms:
        return Verdict(False, f"the committed checkpoint is {age * 1000:.0f} ms old "
                              f"(more than {max_lag_ms:g})")
    return Verdict(True, f"following: epoch {stby.get('epoch_committed')} committed "
                         f"{age * 1000:.0f} ms ago")


def parse_lag(text: str | None) -> float | None:
    """max_lag_ms from a query string: a non-negative number, or ValueError."""
    if text is None:
        return None
    v = float(text)
    if not v >= 0 or v == float("inf"):
        raise ValueError(f"max_lag_ms: expected a non-negative number of milliseconds, "
                         f"got {text!r}")
    return v


# `remusdb list`
COLUMNS = ("vm", "primary", "standby", "state", "term", "lag", "last checkpoint")


def list_row(vm: str, answers: dict[str, dict | str], now: float) -> dict:
    """One VM's row from each host's `/status` answer (or the error string for a host that
    did not answer). The host that runs the VM is the primary; the other, the standby."""
    alive = {h: a for h, a in answers.items() if isinstance(a, dict)}
    runs = [h for h, a in alive.items() if role_of(a["documents"]) == "primary"]
    terms = {h: (a["documents"].get("node") or {}).get("term") for h, a in alive.items()}
    row: dict = {"vm": vm, "primary": None, "standby": None, "state": "", "term": None,
                 "lag_epochs": None, "checkpoint_age_s": None,
                 "hosts": {h: (a["summary"] if isinstance(a, dict) else {"error": a})
                           for h, a in answers.items()}}
    if len(runs) > 1:  # never both; if the documents say so, an operator must know
        newest = max(runs, key=lambda h: terms.get(h) or 0)
        row.update(primary=newest, state="TWO PRIMARIES", term=terms.get(newest))
        return row
    if not runs:
        row["state"] = ("no host runs the VM" if alive else "no node answers")
        row["term"] = max((t for t in terms.values() if t is not None), default=None)
        return row
    host = runs[0]
    s = alive[host]["summary"]
    others = [h for h in answers if h != host]
    peer = others[0] if others else None
    row.update(primary=host, term=s.get("term"), lag_epochs=s.get("lag_epochs"),
               checkpoint_age_s=s.get("checkpoint_age_s"))
    peer_ok = peer in alive and role_of(alive[peer]["documents"]) == "standby"
    row["standby"] = peer if peer_ok else None
    state = s.get("state") or ""
    row["state"] = state.removeprefix("primary-") + ("" if peer_ok or peer is None else
                                                     f" ({peer} {_why_not(answers[peer])})")
    return row


def _why_not(answer: dict | str) -> str:
    """Why the other host is no standby, in a few words (the JSON has the whole error)."""
    if isinstance(answer, str):
        return "does not answer"
    return "is " + ((answer["documents"].get("node") or {}).get("state") or "no node")


def list_table(rows: list[dict]) -> str:
    """The rows as an aligned text table, one VM per line."""
    def cell(row: dict, col: str) -> str:
        if col == "lag":
            return "-" if row["lag_epochs"] is None else f"{row['lag_epochs']} epochs"
        if col == "last checkpoint":
            age = row["checkpoint_age_s"]
            return "-" if age is None else f"{age:.1f} s ago"
        v = row.get(col)
        return "-" if v is None or v == "" else str(v)
    cells = [list(COLUMNS)] + [[cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                     for line in cells)
