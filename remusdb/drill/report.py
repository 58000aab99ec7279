"""Pure: what a drill's clients saw, and whether the database kept its promises.

Clients log every transfer they attempt as an `Op`; after the failover the ledger is read back.
Nothing here does I/O, so the rules (what counts as downtime, as a lost commit, as a partial
transaction) are tested without a VM.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass


@dataclass
class Op:
    client: int
    conn: int  # the client's connection number (a reconnect starts a new one)
    start: float  # monotonic
    end: float
    ok: bool  # the commit was acknowledged
    txid: int  # the ledger id this transfer writes
    error: str = ""


def downtime(ops: list[Op], killed_at: float) -> dict:
    """From the first client operation that failed or was caught in flight by the kill, to the
    first acknowledged commit after the kill (what a user of the database notices)."""
    hit = [o for o in ops if not o.ok or o.start <= killed_at <= o.end]
    if not hit:
        return {"downtime_s": None, "first_hit_s": None, "first_success_s": None}
    t0 = min(o.start for o in hit)
    after = [o.end for o in ops if o.ok and o.end > killed_at and o.end >= t0]
    t1 = min(after) if after else None
    return {"downtime_s": None if t1 is None else round(t1 - t0, 3),
            "first_hit_s": round(t0 - killed_at, 3),
            "first_success_s": None if t1 is None else round(t1 - killed_at, 3)}


def outage(ops: list[Op], killed_at: float) -> float | None:
    """The longest time without any acknowledged commit from the last one before the fault on:
    a partition's outage may begin well after the fault (a primary fences itself at the end of
    its lease), which `downtime` does not see. None: no commit after the fault."""
    ends = sorted(o.end for o in ops if o.ok)
    before = [t for t in ends if t <= killed_at]
    after = [t for t in ends if t > killed_at]
    if not after:
        return None
    marks = ([before[-1]] if before else [killed_at]) + after
    return round(max(b - a for a, b in itertools.pairwise(marks)), 3)


def connections(ops: list[Op], killed_at: float) -> dict:
    """Each client's connection open at the kill: broke if any operation on it failed after the
    kill (and when), survived if it carried on committing, unknown if it was not used again."""
    survived, errors = [], []
    for client in sorted({o.client for o in ops}):
        mine = sorted((o for o in ops if o.client == client), key=lambda o: o.start)
        before = [o for o in mine if o.start <= killed_at]
        if not before:
            continue
        conn = before[-1].conn
        after = [o for o in mine if o.conn == conn and o.end > killed_at]
        failed = [o for o in after if not o.ok]
        if failed:
            errors.append(round(failed[0].end - killed_at, 3))
        elif after:
            survived.append(client)
    return {"survived": len(survived), "broken": len(errors),
            "time_to_error_s": sorted(errors)}


def ledger_check(acked: set[int], ledger: list[tuple[int, int, int, int]],
                 balances: dict[int, int], initial: int) -> dict:
    """Every acknowledged transfer present; money neither made nor lost; every account's
    balance equal to what its ledger rows say (a transfer half applied breaks that)."""
    ids = {row[0] for row in ledger}
    expect = dict.fromkeys(balances, initial)
    for _, src, dst, amount in ledger:
        expect[src] = expect.get(src, initial) - amount
        expect[dst] = expect.get(dst, initial) + amount
    partial = sorted(a for a in balances if balances[a] != expect.get(a))
    lost = sorted(acked - ids)
    return {"acknowledged": len(acked), "rows": len(ids), "lost": len(lost),
            "lost_ids": lost[:20], "unacknowledged_present": len(ids - acked),
            "total_ok": sum(balances.values()) == initial * len(balances),
            "partial_accounts": partial[:20], "ok": not lost and not partial
            and sum(balances.values()) == initial * len(balances)}


def as_dicts(ops: list[Op]) -> list[dict]:
    return [asdict(o) for o in ops]
