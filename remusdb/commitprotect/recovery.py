"""Commit protection's second half (thesis Figure 5.3, lemma 2), run by the standby right after
a failover: every transaction that was running but not committing at the checkpoint is aborted
and its session closed, so its client gets an error at once rather than a TCP timeout. The
work is the guest extension's remusdb_cp_recover(); this runs it through the guest agent.
"""

from __future__ import annotations

import time
from pathlib import Path

from remusdb.errors import RemusError
from remusdb.hypervisor.agent import AgentError, GuestAgent

RECOVER = ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "postgres", "-v",
           "ON_ERROR_STOP=1", "-c",
           "SELECT count(*) FILTER (WHERE terminated), count(*) FROM remusdb_cp_recover()"]


def abort_uncommitted(agent_socket: Path, timeout: float = 30.0) -> dict:
    """{"terminated": n, "ms": ...}: the sessions closed. Raises RemusError on failure (the
    caller logs it: the VM runs on, those clients then wait for TCP to give up)."""
    t0 = time.monotonic()
    agent = GuestAgent(agent_socket)
    try:
        agent.sync(timeout=min(10.0, timeout))
        r = agent.exec(RECOVER, timeout=timeout)
    except (AgentError, OSError, TimeoutError, ValueError) as e:
        raise RemusError(f"commit-protection recovery: guest agent: {e}") from None
    finally:
        agent.close()
    if r.exitcode != 0:
        raise RemusError("commit-protection recovery failed in the guest: "
                         f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    terminated, _ = (int(x) for x in r.stdout.strip().split("|"))
    return {"terminated": terminated, "ms": round((time.monotonic() - t0) * 1000, 1)}
